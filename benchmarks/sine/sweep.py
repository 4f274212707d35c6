"""Seed 002's exercises 5 and 6 as one sweep: the seeds' protocol at sequence lengths
10/20/30/50 (exercise 5: how the window length changes RNN/GRU quality) for every asked
cell, so GRU against LSTM (exercise 6) is read off the same table."""
from benchmarks.sine import data
from benchmarks.sine.report import summarize
from benchmarks.sine.runner import run_task

SEQ_LENS = (10, 20, 30, 50)


def run_sweep(*, series, show_progress=True, **task_options):
    """(runs, rows): every run of the sweep, and one summary row per (seq_len, cell) with
    the number of training windows an epoch holds at that length."""
    runs = []
    for seq_len in SEQ_LENS:
        data.check_long_enough(series, seq_len, "the sweep")
        runs += run_task("sequence", seq_len=seq_len, series=series,
                         label=f"sweep seq_len={seq_len}", show_progress=show_progress,
                         **task_options)
    rows = summarize(runs)
    for row in rows:
        row["windows"] = len(data.seed_windows(series, row["seq_len"])[0])
    return runs, rows
