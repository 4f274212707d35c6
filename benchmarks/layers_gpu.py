"""GPU layer benchmark: fastrnn's CUDA kernels (and Triton when available) against
torch.nn.RNN/GRU/LSTM (cuDNN), all in the same run.

One layer, one direction, time-major padded input. fastrnn is timed at the op level
(torch.ops.fastrnn.*_layer with the torch.nn module's own parameters; Triton through
fastrnn.triton.layer), i.e. the fused kernels plus their autograd, without the module's
Python glue. Times are medians of per-iteration CUDA-event timings after warm-up,
for the forward alone and for
forward + backward, in float32 (TF32 off) and bfloat16.

    python benchmarks/layers_gpu.py --out DIR     # writes DIR/gpu-<device>.{json,md}
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys

import torch

# (name, batch, time steps, input features, hidden)
SHAPES = [
    ("sine", 1, 20, 1, 16),
    ("small", 64, 20, 16, 16),
    ("h128", 64, 100, 128, 128),
    ("h256", 64, 100, 256, 256),
]
MODES = {"RNN": "RNN_TANH", "GRU": "GRU", "LSTM": "LSTM"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of RNN,GRU,LSTM")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated subset of fp32,bf16")
    p.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    p.add_argument("--warmup", type=int, default=25, help="untimed iterations first")
    p.add_argument("--rep", type=int, default=200, help="timed iterations (median reported)")
    args = p.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    args.shapes = [s for s in SHAPES if s[0] in args.shapes.split(",")]
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}")
    for d in args.dtypes:
        if d not in DTYPES:
            p.error(f"unknown dtype {d!r}")
    return args


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def header():
    props = torch.cuda.get_device_properties(0)
    return {
        "device": props.name,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "tf32": torch.backends.cuda.matmul.allow_tf32,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def median_ms(fn, warmup, rep):
    """Median of per-call CUDA-event times. The events sit on the stream around each call,
    so host-side launch gaps inside a call count, as they do for a user at small shapes."""
    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def providers():
    out = {"cudnn": None}
    import fastrnn.ops  # noqa: F401  loads fastrnn._C
    if torch._C._dispatch_has_kernel_for_dispatch_key("fastrnn::gru_layer_fwd", "CUDA"):
        out["fastrnn-cuda"] = None
    try:
        import fastrnn.triton as ft
        if ft.unavailable_reason() is None:
            out["fastrnn-triton"] = ft.layer
    except ImportError:
        pass
    return out


def make_step(provider, impl, mode, module, x, h0, c0, backward):
    params = list(module.parameters())
    if provider == "cudnn":
        state = (h0.unsqueeze(0), c0.unsqueeze(0)) if mode == "LSTM" else h0.unsqueeze(0)

        def forward():
            return module(x, state)[0]
    elif provider == "fastrnn-cuda":
        ops = torch.ops.fastrnn

        def forward():
            if mode == "GRU":
                return ops.gru_layer(x, None, h0, *params, False)[0]
            if mode == "LSTM":
                return ops.lstm_layer(x, None, h0, c0, *params, None, False)[0]
            return ops.rnn_layer(x, None, h0, *params, False, False)[0]
    else:
        def forward():
            return impl(MODES[mode], x, None, h0, c0 if mode == "LSTM" else None, *params, None, False)[0]

    if not backward:
        def run():
            with torch.no_grad():
                forward()
        return run
    grad = torch.randn_like(forward())

    def run():
        forward().backward(grad)
    return run


def bench(args):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    provs = providers()
    rows = []
    for name, B, T, I, H in args.shapes:
        for mode in args.modes:
            for dname in args.dtypes:
                dtype = DTYPES[dname]
                torch.manual_seed(0)
                cls = {"RNN": torch.nn.RNN, "GRU": torch.nn.GRU, "LSTM": torch.nn.LSTM}[mode]
                module = cls(I, H).to("cuda", dtype)
                x = torch.randn(T, B, I, device="cuda", dtype=dtype, requires_grad=True)
                h0 = torch.randn(B, H, device="cuda", dtype=dtype, requires_grad=True)
                c0 = torch.randn(B, H, device="cuda", dtype=dtype, requires_grad=True)
                for backward in (False, True):
                    times = {}
                    for prov, impl in provs.items():
                        step = make_step(prov, impl, mode, module, x, h0, c0, backward)
                        times[prov] = median_ms(step, args.warmup, args.rep)
                    row = {"shape": name, "B": B, "T": T, "I": I, "H": H, "mode": mode, "dtype": dname,
                           "pass": "fwd+bwd" if backward else "fwd", "ms": times}
                    rows.append(row)
                    print(format_row(row), flush=True)
    return rows


def format_row(row):
    base = row["ms"]["cudnn"]
    cells = [f"{p} {ms * 1e3:8.1f} us ({base / ms:4.2f}x)" for p, ms in row["ms"].items()]
    return f"{row['shape']:6} {row['mode']:4} {row['dtype']:4} {row['pass']:7} " + " | ".join(cells)


def write_results(rows, head, out_dir):
    """Writes gpu-<device>.json and .md; returns their paths. Speed-ups are cuDNN time /
    provider time (> 1 means faster than cuDNN)."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, "gpu-" + slug(head["device"]))
    with open(base + ".json", "w") as f:
        json.dump({"header": head, "results": rows}, f, indent=1)
    provs = list(rows[0]["ms"]) if rows else []
    lines = [f"# fastrnn GPU layer benchmark: {head['device']}", ""]
    lines += [f"- {k}: {v}" for k, v in head.items()]
    lines += ["", "Median time per call in microseconds; in brackets, speed-up over cuDNN (torch.nn).", ""]
    lines.append("| shape | B | T | H | mode | dtype | pass | " + " | ".join(provs) + " |")
    lines.append("|" + "---|" * (7 + len(provs)))
    for r in rows:
        base_ms = r["ms"]["cudnn"]
        cells = [f"{r['ms'][p] * 1e3:.1f} ({base_ms / r['ms'][p]:.2f}x)" for p in provs]
        lines.append(f"| {r['shape']} | {r['B']} | {r['T']} | {r['H']} | {r['mode']} | {r['dtype']} | "
                     f"{r['pass']} | " + " | ".join(cells) + " |")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return base + ".json", base + ".md"


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("layers_gpu.py needs a CUDA GPU")
    head = header()
    rows = bench(args)
    for path in write_results(rows, head, args.out):
        print("wrote", path)


if __name__ == "__main__":
    main()
