"""GPU layer benchmark: fastrnn's CUDA kernels (and Triton when available) against
torch.nn.RNN/GRU/LSTM (cuDNN), all in the same run, same weights.

Cases (``--cases``; kinds):
  layer   one layer, one direction, padded time-major input, at the op level
          (torch.ops.fastrnn.*_layer with the torch.nn module's own parameters; Triton
          through fastrnn.triton.layer): the kernels plus their autograd, no module glue.
  module  the Fused* module against the torch.nn module (multi-layer, bidirectional).
  step    single-step inference latency, the seeds' autoregressive step (T=1, B=1, a
          Linear head): module calls, and fastrnn.graphs.GraphedRollout per step
          (provider fastrnn-cuda-graph, 16 steps per graph replay).
  packed  variable-length batches as a PackedSequence through the modules, plus
          fastrnn on the padded batch of the same shape (fastrnn-cuda-padded): the
          packed path should cost at most 1.1x the padded one.
Times are medians of per-call CUDA-event timings after warm-up, for the forward alone
(no_grad) and forward + backward, in float32 (TF32 off) and bfloat16. Each row also
records the CUDA path fastrnn's plan takes (fastrnn.cuda_paths.cuda_path).

    python benchmarks/layers_gpu.py --out DIR    # DIR/gpu-<device>.{json,md}, -speedup.png
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time

import torch

# (name, kind, batch, time steps, input features, hidden, layers, bidirectional)
CASES = [
    ("sine", "layer", 1, 20, 1, 16, 1, False),
    ("small", "layer", 64, 20, 16, 16, 1, False),
    ("h128", "layer", 64, 100, 128, 128, 1, False),
    ("h256", "layer", 64, 100, 256, 256, 1, False),
    ("h512", "layer", 64, 100, 512, 512, 1, False),
    ("h1024", "layer", 64, 100, 1024, 1024, 1, False),
    ("long768", "layer", 16, 1024, 768, 768, 1, False),
    ("bi2x256", "module", 64, 100, 256, 256, 2, True),
    ("step16", "step", 1, 1, 1, 16, 1, False),
    ("step256", "step", 1, 1, 256, 256, 1, False),
    ("packed256", "packed", 64, 100, 256, 256, 1, False),
]
MODES = {"RNN": "RNN_TANH", "GRU": "GRU", "LSTM": "LSTM"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ROLLOUT_STEPS, ROLLOUT_UNROLL = 64, 16

# Issue 8's targets: (case names, provider, minimum speed-up over cuDNN). fwd+bwd rows
# for the layer cases, forward (inference) rows for the step cases.
TARGETS = [
    (("h512",), "fwd+bwd", 1.0),
    (("h1024", "long768"), "fwd+bwd", 0.9),
    (("step16", "step256"), "step", 3.0),
]
PACKED_OVER_PADDED_MAX = 1.1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of RNN,GRU,LSTM")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated subset of fp32,bf16")
    p.add_argument("--cases", default=",".join(c[0] for c in CASES))
    p.add_argument("--warmup", type=int, default=25, help="untimed iterations first")
    p.add_argument("--rep", type=int, default=200, help="timed iterations (median reported)")
    p.add_argument("--budget", type=float, default=1.5,
                   help="seconds of timed calls per timing at most (fewer reps for long calls)")
    p.add_argument("--backends", default="cuda,triton",
                   help="fastrnn backends to time, where available (comma-separated)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    args.backends = [b for b in args.backends.split(",") if b]
    args.modes = [m for m in args.modes.split(",") if m]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    wanted = [c for c in args.cases.split(",") if c]
    known = {c[0]: c for c in CASES}
    for b in args.backends:
        if b not in ("cuda", "triton"):
            p.error(f"unknown backend {b!r}; known: cuda, triton")
    for m in args.modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}")
    for d in args.dtypes:
        if d not in DTYPES:
            p.error(f"unknown dtype {d!r}")
    for c in wanted:
        if c not in known:
            p.error(f"unknown case {c!r}; known: {', '.join(known)}")
    args.cases = [known[c] for c in wanted]
    return args


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def header():
    props = torch.cuda.get_device_properties(0)
    return {
        "device": props.name,
        "capability": f"{props.major}.{props.minor}",
        "sm_count": props.multi_processor_count,
        "smem_per_block_optin": getattr(props, "shared_memory_per_block_optin", None),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "tf32": torch.backends.cuda.matmul.allow_tf32,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def median_ms(fn, warmup, rep, budget_s):
    """Median of per-call CUDA-event times. The events sit on the stream around each call,
    so host-side launch gaps inside a call count, as they do for a user at small shapes.
    Long calls get fewer repetitions (at least 10): about budget_s seconds per timing."""
    start = time.perf_counter()
    for i in range(warmup):
        fn()
        if i == 0:
            torch.cuda.synchronize()
            start = time.perf_counter()  # the first call may compile or allocate
    torch.cuda.synchronize()
    per_call = (time.perf_counter() - start) / max(warmup - 1, 1)
    rep = max(10, min(rep, int(budget_s / max(per_call, 1e-9))))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def fastrnn_backends():
    """The fastrnn backends to time: 'cuda' when fastrnn._C has CUDA kernels, 'triton'
    when fastrnn.triton is usable."""
    import fastrnn.ops
    out = []
    if fastrnn.ops.has_kernel("CUDA"):
        out.append("cuda")
    try:
        import fastrnn.triton as ft
        if ft.unavailable_reason() is None:
            out.append("triton")
    except ImportError:
        pass
    return out


def plan_of(mode, H, B, dtype):
    from fastrnn.cuda_paths import cuda_path

    def fmt(p):
        if p.path == "step":
            return "step"
        return f"{p.path} {p.tiles}x{p.slices} nb={p.nb} hj={p.hj} kc={p.kc} thr={p.threads}"
    return (f"fwd: {fmt(cuda_path(MODES[mode], H, B, dtype))}; "
            f"bwd: {fmt(cuda_path(MODES[mode], H, B, dtype, backward=True))}")


def timed(forward, backward_pass):
    """A callable running forward() under no_grad, or forward().backward(seeded grad)."""
    if not backward_pass:
        def run():
            with torch.no_grad():
                forward()
        return run
    grad = torch.randn_like(forward())

    def run():
        forward().backward(grad)
    return run


def layer_fns(mode, module, x, h0, c0, backends):
    params = list(module.parameters())
    state = (h0.unsqueeze(0), c0.unsqueeze(0)) if mode == "LSTM" else h0.unsqueeze(0)
    fns = {"cudnn": lambda: module(x, state)[0]}
    ops = torch.ops.fastrnn
    if "cuda" in backends:
        def cuda_forward():
            if mode == "GRU":
                return ops.gru_layer(x, None, h0, *params, False)[0]
            if mode == "LSTM":
                return ops.lstm_layer(x, None, h0, c0, *params, None, False)[0]
            return ops.rnn_layer(x, None, h0, *params, False, False)[0]
        fns["fastrnn-cuda"] = cuda_forward
    if "triton" in backends:
        import fastrnn.triton as ft
        fns["fastrnn-triton"] = lambda: ft.layer(MODES[mode], x, None, h0, c0 if mode == "LSTM" else None,
                                                 *params, None, False)[0]
    return fns


def fused_twin(mode, module, backend):
    import fastrnn
    cls = {"RNN": fastrnn.FusedRNN, "GRU": fastrnn.FusedGRU, "LSTM": fastrnn.FusedLSTM}[mode]
    fused = cls(module.input_size, module.hidden_size, num_layers=module.num_layers,
                bidirectional=module.bidirectional, backend=backend)
    fused.load_state_dict(module.state_dict())
    p = next(module.parameters())
    return fused.to(p.device, p.dtype)


def module_fns(mode, module, x, backends):
    fns = {"cudnn": lambda: module(x)[0]}
    for backend in backends:
        fused = fused_twin(mode, module, backend)
        fns[f"fastrnn-{backend}"] = lambda fused=fused: fused(x)[0]
    return fns


def packed_fns(mode, module, x, lengths, backends):
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence
    # Packed once, outside the timed calls, as a leaf (a user's data loader packs).
    p = pack_padded_sequence(x.detach(), lengths, enforce_sorted=False)
    packed = PackedSequence(p.data.requires_grad_(x.requires_grad), p.batch_sizes, p.sorted_indices,
                            p.unsorted_indices)
    fns = {"cudnn": lambda: module(packed)[0].data}
    for backend in backends:
        fused = fused_twin(mode, module, backend)
        fns[f"fastrnn-{backend}"] = lambda fused=fused: fused(packed)[0].data
        fns[f"fastrnn-{backend}-padded"] = lambda fused=fused: fused(x)[0]
    return fns


def step_fns(mode, module, I, H, dtype, backends):
    """Per-step callables of the seeds' rollout step (rnn + Linear head, T=1, B=1), and
    how many steps one call runs."""
    from fastrnn.graphs import GraphedRollout
    head = torch.nn.Linear(H, I).to("cuda", dtype)
    x0 = torch.randn(1, I, device="cuda", dtype=dtype)

    def state():
        h = torch.zeros(1, H, device="cuda", dtype=dtype)
        return (h, h.clone()) if mode == "LSTM" else h

    def make_step(rnn):
        def step(x, hidden):
            out, hidden = rnn(x, hidden)
            return head(out), hidden
        return step

    h0 = state()
    cudnn = make_step(module)
    fns = {"cudnn": (lambda: cudnn(x0, h0), 1)}
    for backend in backends:
        step = make_step(fused_twin(mode, module, backend))
        fns[f"fastrnn-{backend}"] = (lambda step=step: step(x0, h0), 1)
        if backend == "cuda":
            with torch.no_grad():
                graphed = GraphedRollout(step, x0, h0, unroll=ROLLOUT_UNROLL)
            fns["fastrnn-cuda-graph"] = (lambda g=graphed: g(x0, h0, ROLLOUT_STEPS), ROLLOUT_STEPS)
    return fns


def bench(args, on_row):
    """Times every case; on_row(rows) runs after each row, so a run cut short keeps its
    results."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    backends = [b for b in fastrnn_backends() if b in args.backends]
    rows = []
    for name, kind, B, T, I, H, layers, bidir in args.cases:
        for mode in args.modes:
            for dname in args.dtypes:
                dtype = DTYPES[dname]
                torch.manual_seed(0)
                cls = {"RNN": torch.nn.RNN, "GRU": torch.nn.GRU, "LSTM": torch.nn.LSTM}[mode]
                module = cls(I, H, num_layers=layers, bidirectional=bidir).to("cuda", dtype)
                base = {"case": name, "kind": kind, "B": B, "T": T, "I": I, "H": H, "layers": layers,
                        "bidirectional": bidir, "mode": mode, "dtype": dname, "plan": plan_of(mode, H, B, dtype)}
                if kind == "step":
                    times = {}
                    for prov, (fn, per_call) in step_fns(mode, module, I, H, dtype, backends).items():
                        def run(fn=fn):
                            with torch.no_grad():
                                fn()
                        times[prov] = median_ms(run, args.warmup, args.rep, args.budget) / per_call
                    rows.append(dict(base, **{"pass": "step", "ms": times}))
                    print(format_row(rows[-1]), flush=True)
                    on_row(rows)
                    continue
                x = torch.randn(T, B, I, device="cuda", dtype=dtype, requires_grad=True)
                if kind == "layer":
                    h0 = torch.randn(B, H, device="cuda", dtype=dtype, requires_grad=True)
                    c0 = torch.randn(B, H, device="cuda", dtype=dtype, requires_grad=True)
                    fns = layer_fns(mode, module, x, h0, c0, backends)
                elif kind == "module":
                    fns = module_fns(mode, module, x, backends)
                else:
                    gen = torch.Generator().manual_seed(0)
                    lengths = torch.randint(T // 4, T + 1, (B,), generator=gen)
                    lengths[0] = T
                    fns = packed_fns(mode, module, x, lengths, backends)
                for backward in (False, True):
                    times = {prov: median_ms(timed(fn, backward), args.warmup, args.rep, args.budget)
                             for prov, fn in fns.items()}
                    rows.append(dict(base, **{"pass": "fwd+bwd" if backward else "fwd", "ms": times}))
                    print(format_row(rows[-1]), flush=True)
                    on_row(rows)
    return rows


def format_row(row):
    base = row["ms"]["cudnn"]
    cells = [f"{p} {ms * 1e3:8.1f} us ({base / ms:4.2f}x)" for p, ms in row["ms"].items()]
    return f"{row['case']:9} {row['mode']:4} {row['dtype']:4} {row['pass']:7} " + " | ".join(cells)


def best_fastrnn(row):
    """(provider, speed-up over cuDNN) of the fastest fastrnn provider of a row (padded
    stand-ins of packed rows excluded)."""
    cands = [(p, row["ms"]["cudnn"] / ms) for p, ms in row["ms"].items()
             if p != "cudnn" and not p.endswith("-padded")]
    return max(cands, key=lambda c: c[1]) if cands else (None, float("nan"))


def check_targets(rows):
    """Lines saying, per target, whether each matching row meets it."""
    lines = []
    for cases, pass_, minimum in TARGETS:
        for r in rows:
            if r["case"] in cases and r["pass"] == pass_:
                prov, speedup = best_fastrnn(r)
                ok = speedup >= minimum
                lines.append(f"- {'PASS' if ok else 'MISS'} {r['case']} {r['mode']} {r['dtype']} {pass_}: "
                             f"{prov} {speedup:.2f}x cuDNN (target >= {minimum}x)")
    for r in rows:
        if r["kind"] == "packed":
            for prov in r["ms"]:
                padded = r["ms"].get(prov + "-padded")
                if padded:
                    ratio = r["ms"][prov] / padded
                    ok = ratio <= PACKED_OVER_PADDED_MAX
                    lines.append(f"- {'PASS' if ok else 'MISS'} {r['case']} {r['mode']} {r['dtype']} {r['pass']}: "
                                 f"{prov} packed/padded {ratio:.2f} (target <= {PACKED_OVER_PADDED_MAX})")
    return lines


def write_results(rows, head, out_dir):
    """Writes gpu-<device>.json and .md; returns their paths. Speed-ups are cuDNN time /
    provider time (> 1 means faster than cuDNN)."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, "gpu-" + slug(head["device"]))
    with open(base + ".json", "w") as f:
        json.dump({"header": head, "results": rows}, f, indent=1)
    provs = []
    for r in rows:
        provs += [p for p in r["ms"] if p not in provs]
    lines = [f"# fastrnn GPU layer benchmark: {head['device']}", ""]
    lines += [f"- {k}: {v}" for k, v in head.items()]
    lines += ["", "Median time per call in microseconds (step rows: per step); in brackets, "
              "speed-up over cuDNN (torch.nn). Plan: the CUDA path fastrnn takes "
              "(tiles x slices CTAs).", ""]
    lines.append("| case | B | T | H | layers | mode | dtype | pass | " + " | ".join(provs) + " | plan |")
    lines.append("|" + "---|" * (9 + len(provs)))
    for r in rows:
        base_ms = r["ms"]["cudnn"]
        cells = [f"{r['ms'][p] * 1e3:.1f} ({base_ms / r['ms'][p]:.2f}x)" if p in r["ms"] else "" for p in provs]
        layers = f"{r['layers']}{' bi' if r['bidirectional'] else ''}"
        lines.append(f"| {r['case']} | {r['B']} | {r['T']} | {r['H']} | {layers} | {r['mode']} | {r['dtype']} | "
                     f"{r['pass']} | " + " | ".join(cells) + f" | {r.get('plan', '')} |")
    lines += ["", "## Targets (issue 8)", ""] + (check_targets(rows) or ["- no target rows in this run"])
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return base + ".json", base + ".md"


def plot_speedups(rows, head, out_dir):
    """gpu-<device>-speedup.png: speed-up over cuDNN per case and mode, one panel per
    (dtype, pass), one bar per fastrnn provider. Returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for r in rows:
        key = (r["dtype"], r["pass"])
        if key not in panels:
            panels.append(key)
    provs = []
    for r in rows:
        provs += [p for p in r["ms"] if p != "cudnn" and p not in provs]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 3.2 * len(panels)), squeeze=False)
    for ax, (dname, pass_) in zip(axes[:, 0], panels):
        sel = [r for r in rows if r["dtype"] == dname and r["pass"] == pass_]
        labels = [f"{r['case']}\n{r['mode']}" for r in sel]
        width = 0.8 / max(len(provs), 1)
        for i, prov in enumerate(provs):
            xs = [j + (i - (len(provs) - 1) / 2) * width for j in range(len(sel))]
            ys = [r["ms"]["cudnn"] / r["ms"][prov] if prov in r["ms"] else 0.0 for r in sel]
            ax.bar(xs, ys, width, label=prov)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(sel)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel("speed-up over cuDNN")
        ax.set_title(f"{head['device']}: {dname}, {pass_}", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out_dir, "gpu-" + slug(head["device"]) + "-speedup.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("layers_gpu.py needs a CUDA GPU")
    head = header()
    rows = bench(args, on_row=lambda rows: write_results(rows, head, args.out))
    paths = list(write_results(rows, head, args.out))
    if not args.no_plot:
        paths.append(plot_speedups(rows, head, args.out))
    for path in paths:
        print("wrote", path)


if __name__ == "__main__":
    main()
