"""The figures: loss curves, data with test predictions (drawn as the seeds draw them),
time per epoch fastrnn vs torch.nn, and the sequence-length sweep. Each writes one PNG."""
import matplotlib

matplotlib.use("Agg")  # files only; no display on benchmark machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from benchmarks.sine.data import split_series  # noqa: E402

# torch.nn thick and pale underneath, fastrnn thin and dashed on top: where the two
# implementations agree, one curve shows through the other.
IMPL_STYLE = {"torch": dict(lw=3.0, alpha=0.4), "fastrnn": dict(lw=1.2, ls=(0, (4, 2)))}
CURVE_COLOR = {"train_loss": "tab:blue", "test_loss": "tab:red"}
IMPL_COLOR = {"torch": "tab:blue", "fastrnn": "tab:orange"}
# The seeds' prediction markers: GRU green stars, the MLP violet crosses.
PREDICTION_STYLE = {"gru": dict(color="green", marker="*"),
                    "mlp": dict(color="violet", marker="x"),
                    "lstm": dict(color="crimson", marker="^"),
                    "rnn": dict(color="teal", marker="o")}


def _panels(count, width=5.5, height=4.0):
    """count axes in a grid two wide, the unused grid cells hidden."""
    columns = min(count, 2)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows),
                                squeeze=False)
    axes = axes.ravel()
    for unused in axes[count:]:
        unused.set_visible(False)
    return figure, axes[:count]


def _save(figure, path):
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def loss_curves(runs, path, title):
    """One panel per cell: train and test loss per epoch of each implementation."""
    cells = list(dict.fromkeys(run["cell"] for run in runs))
    figure, axes = _panels(len(cells))
    for axis, cell in zip(axes, cells):
        for run in (r for r in runs if r["cell"] == cell):
            epochs = np.arange(1, len(run["train_loss"]) + 1)
            for curve, color in CURVE_COLOR.items():
                axis.plot(epochs, run[curve], color=color, **IMPL_STYLE[run["impl"]],
                          label=f"{curve.split('_')[0]}, {run['impl']}")
        axis.set_yscale("log")
        axis.set_title(f"{cell.upper()}")
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_ylabel("MSE loss")
        axis.legend(fontsize=8)
    figure.suptitle(title)
    return _save(figure, path)


def _preferred_run(runs, cell):
    """The fastrnn run of a cell when there is one (its predictions equal torch.nn's)."""
    cell_runs = [run for run in runs if run["cell"] == cell]
    return next((run for run in cell_runs if run["impl"] == "fastrnn"), cell_runs[0])


def predictions(runs, task, series, path, title):
    """One panel per cell with the last epoch's test predictions, in the task's seed's
    picture: the series with its test rollout (000/002), cos target vs prediction (003),
    the input window and its rollout (001)."""
    cells = list(dict.fromkeys(run["cell"] for run in runs))
    figure, axes = _panels(len(cells))
    for axis, cell in zip(axes, cells):
        run = _preferred_run(runs, cell)
        shown = run["predictions"]
        label = f"{cell.upper()} preds ({run['impl']})"
        if task in ("sequence", "batched"):
            train, test, split = split_series(series)
            axis.scatter(np.arange(split), train, color="blue", s=10, label="training set")
            axis.scatter(np.arange(split, len(series)), test, color="none",
                         edgecolor="orange", s=10, label="test set")
            axis.scatter(np.arange(split, len(series) - 1), shown["predictions"], alpha=0.4,
                         s=20, label=label, **PREDICTION_STYLE[cell])
            axis.set_xlabel("X axis")
            axis.set_ylabel("Y axis")
        elif task == "sincos":
            axis.plot(shown["t"], shown["target"], "r-", label="target (cos)")
            axis.plot(shown["t"], shown["predictions"], "b-", label=label)
            axis.set_xlabel("t")
        else:
            t = np.asarray(shown["t"])
            axis.scatter(t[:-1], shown["input"], s=90, label="input (sin)")
            axis.plot(t[:-1], shown["input"])
            axis.scatter(t[1:], shown["predictions"], label=label)
            axis.set_xlabel("t")
        axis.set_title(f"{cell.upper()}, test MSE {run['test_loss'][-1]:.4f}")
        # The seeds put the legend lower left; the other tasks' curves fill that corner.
        axis.legend(loc="lower left" if task in ("sequence", "batched") else "best",
                    fontsize=8)
    figure.suptitle(title)
    return _save(figure, path)


def epoch_times(summary, path, title):
    """Median ms per training epoch, torch.nn and fastrnn side by side for each task and
    cell, each pair labelled with its speedup."""
    rows = [row for row in summary if "speedup" in row]
    figure, axis = plt.subplots(figsize=(max(5.0, 1.3 * len(rows) + 2), 4.2))
    positions = np.arange(len(rows))
    for offset, impl in ((-0.2, "torch"), (0.2, "fastrnn")):
        heights = [row[impl]["median_epoch_ms"] for row in rows]
        axis.bar(positions + offset, heights, width=0.4, color=IMPL_COLOR[impl],
                 label=impl if impl == "fastrnn" else "torch.nn")
    for position, row in zip(positions, rows):
        axis.annotate(f"{row['speedup']:.1f}x", (position, row["torch"]["median_epoch_ms"]),
                      ha="center", va="bottom", fontsize=9)
    axis.set_xticks(positions, [f"{row['cell'].upper()}\n{row['task']}" for row in rows],
                    fontsize=8)
    axis.set_yscale("log")
    axis.set_ylabel("ms per training epoch (median)")
    axis.legend()
    axis.set_title(title)
    return _save(figure, path)


def sweep(rows, path, title):
    """Final test loss (left) and ms per epoch (right) against sequence length, per cell."""
    figure, (loss_axis, time_axis) = _panels(2)
    for cell in dict.fromkeys(row["cell"] for row in rows):
        cell_rows = sorted((r for r in rows if r["cell"] == cell), key=lambda r: r["seq_len"])
        lengths = [row["seq_len"] for row in cell_rows]
        color = PREDICTION_STYLE[cell]["color"]
        shown_impl = "fastrnn" if "fastrnn" in cell_rows[0] else "torch"
        loss_axis.plot(lengths, [row[shown_impl]["final_test_loss"] for row in cell_rows],
                       marker="o", color=color, label=cell.upper())
        for impl in ("torch", "fastrnn"):
            if impl in cell_rows[0]:
                time_axis.plot(lengths, [row[impl]["median_epoch_ms"] for row in cell_rows],
                               marker="o", color=color, ls="-" if impl == "torch" else "--",
                               label=f"{cell.upper()} {impl}")
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("sequence length")
    loss_axis.set_ylabel("final test MSE (rollout)")
    loss_axis.legend()
    time_axis.set_yscale("log")
    time_axis.set_xlabel("sequence length")
    time_axis.set_ylabel("ms per training epoch (median)")
    time_axis.legend(fontsize=8)
    figure.suptitle(title)
    return _save(figure, path)
