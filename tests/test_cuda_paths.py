"""The CUDA path choice, checked without a GPU.

csrc/cuda/path_choice.h (what the launchers run) is compiled with g++ into
tests/path_choice_dump.cpp's little program, which prints its decisions for a grid of
shapes and device properties; fastrnn/cuda_paths.py (its Python mirror, behind
`cuda_path`) must print the same. Then what the issue asks of the rule on an H100's
properties, and cuda_path's argument handling.
"""
import itertools
import os
import shutil
import subprocess

import pytest
import torch

from fastrnn import cuda_paths
from fastrnn.cuda_paths import KNOWN_DEVICES, cuda_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = shutil.which("g++") or shutil.which("c++")

MODES = ("RNN_TANH", "RNN_RELU", "GRU", "LSTM")
DEVICES = [  # (sm_count, smem opt-in bytes, cooperative launch)
    (132, 232448, 1),  # H100
    (108, 166912, 1),  # A100
    (58, 101376, 1),   # L4
    (132, 232448, 0),  # no cooperative launch: the single-CTA path or per-step only
    (4, 49152, 1),     # tiny
]


def grid():
    """Queries: mode H P N elem backward sm smem coop nb_force hj_force kc_force force_step."""
    rows = []
    for mode, H, N, elem, bwd, dev in itertools.product(
            MODES, (1, 7, 16, 33, 100, 256, 500, 768, 1024, 2048), (1, 3, 16, 64, 300),
            (2, 4, 8), (0, 1), DEVICES):
        rows.append((mode, H, H, N, elem, bwd, *dev, 0, 0, 0, 0))
    for mode, (nbf, hjf, kcf), bwd in itertools.product(
            MODES, ((2, 8, 0), (2, 8, 32), (1, 16, 0), (64, 4, 0), (3, 5, 7)), (0, 1)):
        rows.append((mode, 33, 33, 9, 4, bwd, 132, 232448, 1, nbf, hjf, kcf, 0))
        rows.append((mode, 1024, 1024, 64, 2, bwd, 132, 232448, 1, nbf, hjf, kcf, 0))
    for bwd in (0, 1):
        rows.append(("LSTM", 64, 32, 8, 4, bwd, 132, 232448, 1, 0, 0, 0, 0))  # projected
        rows.append(("GRU", 64, 64, 8, 4, bwd, 132, 232448, 1, 0, 0, 0, 1))   # forced step
    return rows


def python_rule(q):
    mode, H, P, N, elem, bwd, sm, smem, coop, nbf, hjf, kcf, fs = q
    p = cuda_paths.choose_path(mode, H, P, N, elem, bool(bwd), sm, smem, bool(coop), nbf, hjf, kcf, bool(fs))
    return f"{p.path} {p.nb} {p.hj} {p.kc} {p.threads} {p.tiles} {p.slices} {p.ldw} {p.smem}"


@pytest.fixture(scope="module")
def cpp_rule(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path_factory.mktemp("path_choice") / "dump"
    cmd = [CXX, "-std=c++17", "-O1", "-Wall", "-Werror", "-I", os.path.join(ROOT, "csrc", "cuda"),
           os.path.join(ROOT, "tests", "path_choice_dump.cpp"), "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    def run(queries):
        text = "".join(" ".join(str(v) for v in q) + "\n" for q in queries)
        out = subprocess.run([str(exe)], input=text, capture_output=True, text=True, check=True)
        return out.stdout.splitlines()
    return run


def test_python_mirror_matches_cpp(cpp_rule):
    queries = grid()
    cpp = cpp_rule(queries)
    assert len(cpp) == len(queries)
    bad = [(q, c, p) for q, c in zip(queries, cpp) if c != (p := python_rule(q))]
    assert not bad, f"{len(bad)} of {len(queries)} differ (query, C++, Python); first: {bad[:5]}"


def test_plans_respect_the_device():
    for q in grid():
        mode, H, P, N, elem, bwd, sm, smem, coop, nbf, hjf, kcf, fs = q
        p = cuda_paths.choose_path(mode, H, P, N, elem, bool(bwd), sm, smem, bool(coop), nbf, hjf, kcf, bool(fs))
        if p.path == "step":
            continue
        assert p.smem <= smem and 64 <= p.threads <= 256, (q, p)
        assert p.slices == -(-H // p.hj) and p.tiles == -(-N // p.nb), (q, p)
        if p.path == "cooperative":
            assert coop and p.slices > 1 and p.slices * p.tiles <= sm, (q, p)
            K = cuda_paths._CELLS[mode][0] * H if bwd else H
            assert p.kc == min(kcf or K, K) or (32 <= p.kc < K and p.kc % 32 == 0), (q, p)
        else:
            assert p.slices == 1, (q, p)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hidden", [256, 512, 768, 1024])
@pytest.mark.parametrize("batch", [16, 64])
@pytest.mark.parametrize("backward", [False, True])
def test_h100_runs_large_hidden_on_the_cooperative_path(mode, dtype, hidden, batch, backward):
    p = cuda_path(mode, hidden, batch, dtype, backward=backward, **KNOWN_DEVICES["H100"])
    assert p.path == "cooperative", p


def test_what_does_not_fit_takes_the_step_path():
    assert cuda_path("LSTM", 2048, 64, torch.float32, **KNOWN_DEVICES["H100"]).path == "step"
    assert cuda_path("LSTM", 64, 8, torch.float32, proj_size=32, **KNOWN_DEVICES["H100"]).path == "step"


def test_small_layers_stay_on_one_cta():
    p = cuda_path("GRU", 16, 1, torch.float32, **KNOWN_DEVICES["H100"])  # the seeds' shape
    assert (p.path, p.slices, p.tiles) == ("persistent", 1, 1)


def test_module_argument_and_env_knobs(monkeypatch):
    monkeypatch.delenv("FASTRNN_CUDA_PATH", raising=False)
    monkeypatch.delenv("FASTRNN_CUDA_TILE", raising=False)
    lstm = torch.nn.LSTM(8, 64, proj_size=16)
    assert cuda_path(lstm, None, 4, **KNOWN_DEVICES["H100"]).path == "step"
    monkeypatch.setenv("FASTRNN_CUDA_TILE", "2,8")
    p = cuda_path("GRU", 33, 5, **KNOWN_DEVICES["H100"])
    assert (p.path, p.nb, p.hj, p.slices, p.tiles) == ("cooperative", 2, 8, 5, 3)
    monkeypatch.setenv("FASTRNN_CUDA_TILE", "2,8,32")
    p = cuda_path("GRU", 33, 5, **KNOWN_DEVICES["H100"], backward=True)
    assert (p.path, p.kc) == ("cooperative", 32)  # 4 chunks of the 99 gate gradients
    monkeypatch.setenv("FASTRNN_CUDA_PATH", "step")
    assert cuda_path("GRU", 33, 5, **KNOWN_DEVICES["H100"]).path == "step"
    monkeypatch.setenv("FASTRNN_CUDA_TILE", "2")
    with pytest.raises(ValueError, match="FASTRNN_CUDA_TILE"):
        cuda_path("GRU", 33, 5, **KNOWN_DEVICES["H100"])


def test_argument_errors():
    with pytest.raises(ValueError, match="mode"):
        cuda_path("gru", 16, 1, **KNOWN_DEVICES["H100"])
    with pytest.raises(ValueError, match="float16"):
        cuda_path("GRU", 16, 1, torch.int32, **KNOWN_DEVICES["H100"])
    with pytest.raises(ValueError, match="both"):
        cuda_path("GRU", 16, 1, sm_count=132)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="sm_count=132, smem_per_block=232448"):
            cuda_path("GRU", 16, 1)
