"""Numbers from the runs: per-run summaries, fastrnn-vs-torch.nn comparisons, the
markdown tables, and the results JSON."""
import json
import statistics

from benchmarks.sine.protocols import TASKS

# The CPU targets, at the task's seed sequence length (fastrnn over torch.nn, time
# per epoch); the other cells' ratios are reported without one.
CPU_TARGET_SPEEDUPS = {("sequence", "gru"): 6.0, ("batched", "gru"): 10.0}


def median_epoch_ms(times):
    """Median over the epochs after the first: the first pays one-time warm-up costs
    (allocator, lazy initialisation) that a longer run amortises."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def max_relative_difference(values, reference):
    return max(abs(v - r) / abs(r) if r else abs(v) for v, r in zip(values, reference))


def summarize(runs):
    """One row per (task, seq_len, cell): final losses and ms/epoch of each implementation,
    the speedup torch.nn / fastrnn and how far apart their loss curves are."""
    rows = {}
    for run in runs:
        key = (run["task"], run["seq_len"], run["cell"])
        row = rows.setdefault(key, {"task": run["task"], "seq_len": run["seq_len"],
                                    "cell": run["cell"], "epochs": len(run["train_loss"])})
        row[run["impl"]] = {
            "backend": run["backend"],
            "final_train_loss": run["train_loss"][-1],
            "final_test_loss": run["test_loss"][-1],
            "min_test_loss": min(run["test_loss"]),
            "median_epoch_ms": median_epoch_ms(run["epoch_ms"]),
            "median_test_ms": median_epoch_ms(run["test_ms"]),
        }
        row.setdefault("_curves", {})[run["impl"]] = (run["train_loss"], run["test_loss"])
    for row in rows.values():
        curves = row.pop("_curves")
        if "fastrnn" in row and "torch" in row:
            row["speedup"] = (row["torch"]["median_epoch_ms"]
                              / row["fastrnn"]["median_epoch_ms"])
            (fused_train, fused_test), (torch_train, torch_test) = (curves["fastrnn"],
                                                                    curves["torch"])
            row["max_rel_diff_train_loss"] = max_relative_difference(fused_train, torch_train)
            row["max_rel_diff_test_loss"] = max_relative_difference(fused_test, torch_test)
    return list(rows.values())


def target_notes(summary, device):
    """One line per CPU target: measured speedup against the target, met or not."""
    if device.type != "cpu":
        return []
    notes = []
    for row in summary:
        target = CPU_TARGET_SPEEDUPS.get((row["task"], row["cell"]))
        if target is not None and "speedup" in row and row["seq_len"] == TASKS[row["task"]].seq_len:
            verdict = "met" if row["speedup"] >= target else "NOT met"
            notes.append(f"target: {row['task']} {row['cell'].upper()} fastrnn >= {target:g}x "
                         f"torch.nn per epoch: measured {row['speedup']:.2f}x, {verdict}")
    return notes


def _format(value, spec):
    return "-" if value is None else format(value, spec)


def summary_table(rows):
    """Markdown: one line per (task, seq_len, cell, implementation)."""
    lines = ["| task | seq_len | cell | impl | backend | epochs | final train loss | "
             "final test loss | ms/epoch (median) | rollout ms | speedup vs torch.nn | "
             "max rel. diff train loss | max rel. diff test loss |",
             "|" + "---|" * 13]
    for row in rows:
        for impl in ("torch", "fastrnn"):
            if impl not in row:
                continue
            result = row[impl]
            compared = impl == "fastrnn" and "speedup" in row
            lines.append(
                f"| {row['task']} | {row['seq_len']} | {row['cell']} | {impl} | "
                f"{result['backend']} | {row['epochs']} | "
                f"{result['final_train_loss']:.5f} | {result['final_test_loss']:.5f} | "
                f"{result['median_epoch_ms']:.2f} | {result['median_test_ms']:.2f} | "
                f"{format(row['speedup'], '.2f') + 'x' if compared else '-'} | "
                f"{_format(row['max_rel_diff_train_loss'] if compared else None, '.1e')} | "
                f"{_format(row['max_rel_diff_test_loss'] if compared else None, '.1e')} |")
    return "\n".join(lines)


def sweep_table(rows):
    """Markdown: final and best test loss and ms/epoch for each seq_len and cell."""
    lines = ["| seq_len | cell | impl | windows/epoch | final train loss | final test loss | "
             "best test loss | ms/epoch (median) |",
             "|" + "---|" * 8]
    for row in rows:
        for impl in ("torch", "fastrnn"):
            if impl in row:
                result = row[impl]
                lines.append(
                    f"| {row['seq_len']} | {row['cell']} | {impl} | {row['windows']} | "
                    f"{result['final_train_loss']:.5f} | {result['final_test_loss']:.5f} | "
                    f"{result['min_test_loss']:.5f} | {result['median_epoch_ms']:.2f} |")
    return "\n".join(lines)


def header_lines(header):
    backends = ", ".join(f"{name}: {state}" for name, state in
                         header["fastrnn_backends"].items())
    return [f"- device: {header['device']} ({header.get('gpu') or header['cpu']}, "
            f"{header['cpu_count']} CPUs)",
            f"- torch {header['torch']}, CUDA {header['cuda']}, cuDNN {header['cudnn']}, "
            f"threads {header['threads']}, python {header['python']}",
            f"- date: {header['date']}, load average (1/5/15 min) at the start: "
            f"{header.get('loadavg_1_5_15')}",
            f"- fastrnn backends: {backends}"]


def markdown(header, command, summary, sweep, notes):
    parts = ["# Sine forecasting: fastrnn vs torch.nn", "", *header_lines(header),
             f"- command: `{command}`", ""]
    parts += [f"> - {note}" for note in notes]
    parts += ["", summary_table(summary), "",
              "Loss differences are relative, max over epochs, fastrnn against torch.nn from "
              "the same initial weights (float32). The test loss scores an autoregressive "
              "rollout, which feeds each prediction back in and so magnifies rounding "
              "differences; the train loss is the like-for-like comparison.", ""]
    if sweep:
        parts += ["## Sequence-length sweep (seed 002, exercises 5 and 6)", "",
                  sweep_table(sweep), ""]
    return "\n".join(parts)


def write_json(path, header, command, settings, notes, runs, summary, sweep):
    with open(path, "w") as handle:
        json.dump({"header": header, "command": command, "settings": settings,
                   "notes": notes, "summary": summary, "sweep": sweep, "runs": runs},
                  handle, indent=1)
