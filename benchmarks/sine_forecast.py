"""The sine forecasting task (the seeds' main job), torch.nn and fastrnn side by side.

    python benchmarks/sine_forecast.py            # or: python -m benchmarks.sine_forecast

Command line and orchestration only; the work lives in benchmarks/sine/.
"""
import argparse
import shlex
import sys
from pathlib import Path

if not __package__:
    # Run as a script: make the repository root importable so `benchmarks.sine` resolves.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from fastrnn import backends  # noqa: E402
from benchmarks.sine import data, machine, plots, report  # noqa: E402
from benchmarks.sine.models import CELLS, IMPLS  # noqa: E402
from benchmarks.sine.protocols import TASKS  # noqa: E402
from benchmarks.sine.runner import run_task  # noqa: E402
from benchmarks.sine.sweep import SEQ_LENS, run_sweep  # noqa: E402

QUICK_EPOCHS = 10
# Above this 1-minute load average other work competes for the cores being timed.
BUSY_LOAD = 1.0
DEFAULT_TASKS = ("sequence", "batched")


def comma_list(choices):
    def parse(text):
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"{text!r}: choose from {', '.join(choices)} (comma-separated)")
        return list(dict.fromkeys(names))
    return parse


def parse_args(argv):
    tasks = "\n".join(f"  {name:9s} {spec.seed_text}: seq_len {spec.seq_len}, hidden "
                      f"{spec.hidden}, lr {spec.lr:g}, full protocol {spec.full_epochs} epochs"
                      for name, spec in TASKS.items())
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sine_forecast",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.splitlines()[0] + "\n\nTasks (--task):\n" + tasks,
        epilog=f"The default run ({QUICK_EPOCHS} epochs of {', '.join(DEFAULT_TASKS)}, every "
               "cell, both implementations) is sized to take under 2 minutes on an idle "
               "2-core CPU with the fastrnn CPU kernels built; other load on the cores "
               "slows 2-thread runs several-fold. --full runs each task's whole seed "
               "protocol (150 epochs for the seeds' GRU/LSTM chapter).")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--cells", type=comma_list(CELLS), default=",".join(CELLS),
                        help="recurrent cells and the MLP baseline (default: %(default)s); "
                             "the MLP has no recurrent layer and runs once, as torch")
    parser.add_argument("--impl", type=comma_list(IMPLS), default=",".join(IMPLS),
                        help="implementations of the recurrent layer (default: %(default)s)")
    parser.add_argument("--backend", choices=backends.CHOICES, default="auto",
                        help="fastrnn backend (default: %(default)s, the fastest available)")
    parser.add_argument("--task", type=comma_list(tuple(TASKS)), default=",".join(DEFAULT_TASKS),
                        help="tasks to run (default: %(default)s)")
    parser.add_argument("--epochs", type=int,
                        help=f"epochs per task (default: {QUICK_EPOCHS}, or each task's full "
                             "protocol with --full)")
    parser.add_argument("--full", action="store_true",
                        help="run each task's full seed protocol length")
    parser.add_argument("--seq-len", type=int, help="window length (default: the task's seed)")
    parser.add_argument("--hidden", type=int, help="hidden size (default: the task's seed)")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default: the task's seed)")
    parser.add_argument("--data", type=Path,
                        help="one-column CSV series to use instead of the generated "
                             f"{data.CSV_NAME}")
    parser.add_argument("--out", type=Path, default=Path("out/sine"),
                        help="directory for the CSV, figures, JSON and markdown "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the generated series and of the initial weights")
    parser.add_argument("--sweep", action="store_true",
                        help="also run the seeds' protocol at seq_len "
                             f"{'/'.join(map(str, SEQ_LENS))} for every cell, for --epochs "
                             "(or 150 with --full) epochs (seed 002 exercises 5 and 6)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch.set_num_threads for both implementations (default: 2)")
    args = parser.parse_args(argv)
    for name in ("epochs", "seq_len", "hidden", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch.cuda.is_available() is False")
    return args


def load_series(args):
    if args.data is not None:
        return data.read_csv(args.data), str(args.data)
    path = data.write_csv(data.generate_series(seed=args.seed), args.out / data.CSV_NAME)
    return data.read_csv(path), str(path)


def task_settings(args, task):
    spec = TASKS[task]
    epochs = args.epochs or (spec.full_epochs if args.full else min(QUICK_EPOCHS,
                                                                    spec.full_epochs))
    return {"epochs": epochs, "seq_len": args.seq_len or spec.seq_len,
            "hidden": args.hidden or spec.hidden, "lr": args.lr or spec.lr}


def timing_notes(runs, header):
    notes = []
    load = header.get("loadavg_1_5_15", [0.0])[0]
    if load > BUSY_LOAD:
        notes.append(f"the machine was busy when the run started (1-minute load average "
                     f"{load:.1f} on {header['cpu_count']} CPUs): times are inflated and "
                     "their ratios less reliable.")
    if any(run["backend"] == "reference" for run in runs):
        notes.append("fastrnn ran on its 'reference' backend (pure PyTorch per-step loops, "
                     "the spec, not a fast path): its losses are meaningful, its times are "
                     "not. Build the CPU kernels (fastrnn._C) for the timings that matter.")
    return notes


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    header = machine.header(device)  # before training, so its load average is the machine's
    args.out.mkdir(parents=True, exist_ok=True)
    series, source = load_series(args)
    options = dict(cells=args.cells, impls=args.impl, device=device, backend=args.backend,
                   seed=args.seed)

    runs, settings = [], {"data": source, "threads": args.threads, "tasks": {}}
    for task in args.task:
        task_options = task_settings(args, task)
        settings["tasks"][task] = task_options
        if TASKS[task].uses_series:
            data.check_long_enough(series, task_options["seq_len"], source)
        task_runs = run_task(task, series=series, **task_options, **options)
        runs += task_runs
        title = f"{task}: {TASKS[task].seed_text}"
        plots.loss_curves(task_runs, args.out / f"loss_curves_{task}.png", title)
        plots.predictions(task_runs, task, series, args.out / f"predictions_{task}.png", title)

    sweep_runs, sweep_rows = [], []
    if args.sweep:
        sweep_settings = task_settings(args, "sequence")
        del sweep_settings["seq_len"]
        settings["sweep"] = {**sweep_settings, "seq_lens": SEQ_LENS}
        sweep_runs, sweep_rows = run_sweep(series=series, **sweep_settings, **options)
        plots.sweep(sweep_rows, args.out / "sweep.png",
                    f"seeds' protocol, {sweep_settings['epochs']} epochs, by sequence length")

    summary = report.summarize(runs)
    if any("speedup" in row for row in summary):
        plots.epoch_times(summary, args.out / "epoch_times.png",
                          f"time per training epoch, {args.device}, "
                          f"torch.set_num_threads({args.threads})")
    command = " ".join(["python -m benchmarks.sine_forecast",
                        shlex.join(sys.argv[1:] if argv is None else argv)]).strip()
    notes = timing_notes(runs + sweep_runs, header) + report.target_notes(summary, device)
    report.write_json(args.out / "results.json", header, command, settings, notes,
                      runs + sweep_runs, summary, sweep_rows)
    text = report.markdown(header, command, summary, sweep_rows, notes)
    (args.out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
