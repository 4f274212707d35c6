"""benchmarks/layers_gpu.py's pure-Python parts on fake rows (no GPU needed): argument
parsing, the markdown/JSON writer with its target check, and the speed-up plot."""
import json

import pytest

from benchmarks import layers_gpu

HEAD = {"device": "Fake GPU 80GB", "sm_count": 132, "torch": "x", "date": "today"}


def fake_rows():
    def row(case, kind, pass_, ms, H=512, mode="GRU", dtype="fp32"):
        return {"case": case, "kind": kind, "B": 64, "T": 100, "I": H, "H": H, "layers": 1,
                "bidirectional": False, "mode": mode, "dtype": dtype, "pass": pass_, "ms": ms,
                "plan": "fwd: cooperative 1x64 nb=64 hj=8 kc=512 thr=256; bwd: step"}
    return [
        row("h512", "layer", "fwd", {"cudnn": 1.0, "fastrnn-cuda": 0.5}),
        row("h512", "layer", "fwd+bwd", {"cudnn": 2.0, "fastrnn-cuda": 2.5}),        # 0.8x: MISS
        row("h1024", "layer", "fwd+bwd", {"cudnn": 2.0, "fastrnn-cuda": 2.1}, H=1024),  # 0.95x: PASS
        row("step16", "step", "step", {"cudnn": 0.1, "fastrnn-cuda": 0.05, "fastrnn-cuda-graph": 0.01},
            H=16, dtype="bf16"),                                                      # 10x: PASS
        row("packed256", "packed", "fwd", {"cudnn": 1.0, "fastrnn-cuda": 0.6, "fastrnn-cuda-padded": 0.5},
            H=256),                                                                   # 1.2: MISS
    ]


def test_parse_args_selects_cases_and_rejects_unknown():
    args = layers_gpu.parse_args(["--cases", "h512,step16", "--modes", "GRU", "--dtypes", "bf16"])
    assert [c[0] for c in args.cases] == ["h512", "step16"] and args.modes == ["GRU"]
    assert args.backends == ["cuda", "triton"] and args.budget == 1.5
    args = layers_gpu.parse_args(["--backends", "cuda", "--budget", "0.3"])
    assert args.backends == ["cuda"] and args.budget == 0.3
    for bad in (["--cases", "nope"], ["--backends", "cudnn"]):
        with pytest.raises(SystemExit):
            layers_gpu.parse_args(bad)


def test_write_results_tables_and_targets(tmp_path):
    json_path, md_path = layers_gpu.write_results(fake_rows(), HEAD, str(tmp_path))
    assert json_path.endswith("gpu-fake-gpu-80gb.json")
    data = json.loads(open(json_path).read())
    assert data["header"] == HEAD and len(data["results"]) == 5
    md = open(md_path).read()
    assert "| h512 | 64 | 100 | 512 | 1 | GRU | fp32 | fwd | 1000.0 (1.00x) | 500.0 (2.00x) |" in md
    assert "- MISS h512 GRU fp32 fwd+bwd: fastrnn-cuda 0.80x cuDNN (target >= 1.0x)" in md
    assert "- PASS h1024 GRU fp32 fwd+bwd: fastrnn-cuda 0.95x cuDNN (target >= 0.9x)" in md
    assert "- PASS step16 GRU bf16 step: fastrnn-cuda-graph 10.00x cuDNN (target >= 3.0x)" in md
    assert "- MISS packed256 GRU fp32 fwd: fastrnn-cuda packed/padded 1.20 (target <= 1.1)" in md


def test_plot_speedups(tmp_path):
    pytest.importorskip("matplotlib")
    path = layers_gpu.plot_speedups(fake_rows(), HEAD, str(tmp_path))
    assert path.endswith("gpu-fake-gpu-80gb-speedup.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
