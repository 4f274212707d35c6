"""The seeds' 1000-point sine series: deterministic generation, CSV in and out, windows.

The textbook reads ./data/ch07/sindata_1000.csv, which it does not ship; generate_series
stands in for it (same length, same kind of noisy sine; see its docstring).
"""
import csv
from pathlib import Path

import numpy as np
import torch

CSV_NAME = "sindata_1000.csv"
SERIES_LENGTH = 1000
NOISE_STD = 0.05
PERIODS = 10


def generate_series(length=SERIES_LENGTH, seed=0):
    """x_i = sin(t_i) + 0.05 * e_i, with t = linspace(0, 20*pi, length) (10 periods, so
    ~100 points a period at the default length) and e_i standard normal drawn from
    numpy.random.default_rng(seed). Same seed, same series, on every machine."""
    t = np.linspace(0.0, 2.0 * np.pi * PERIODS, length)
    noise = np.random.default_rng(seed).standard_normal(length)
    return np.sin(t) + NOISE_STD * noise


def write_csv(series, path):
    """One value per line, as np.loadtxt(path, delimiter=',') in the seeds reads it."""
    np.savetxt(path, series, fmt="%.17g")
    return Path(path)


def read_csv(path):
    """A one-column CSV as float64. Raises SystemExit naming the file (and the row,
    1-based) when the file is missing or empty, or a row has more than one column or a
    value that is not a finite number. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"--data {path}: no such file")
    values = []
    with path.open(newline="") as handle:
        for row_number, row in enumerate(csv.reader(handle), start=1):
            if not row or not row[0].strip():
                continue
            if len(row) > 1:
                raise SystemExit(f"--data {path}: row {row_number} has {len(row)} columns, "
                                 "expected one value per row")
            try:
                value = float(row[0])
            except ValueError:
                value = None
            if value is None or not np.isfinite(value):
                raise SystemExit(f"--data {path}: row {row_number} is not a finite number: "
                                 f"{row[0]!r}")
            values.append(value)
    if not values:
        raise SystemExit(f"--data {path}: no values")
    return np.asarray(values, dtype=np.float64)


def split_series(series):
    """The seeds' 80/20 split: (train, test, split index)."""
    split = int(0.8 * len(series))
    return series[:split], series[split:], split


def check_long_enough(series, seq_len, source):
    """The protocol needs one training window of seq_len+1 points and two test points."""
    train, test, _ = split_series(series)
    if len(train) < seq_len + 1 or len(test) < 2:
        raise SystemExit(
            f"{source}: {len(series)} values are too few for windows of seq_len+1 = "
            f"{seq_len + 1}: the 80% training part has {len(train)}, it needs at least "
            f"{seq_len + 1}, and the 20% test part needs at least 2")


def seed_windows(series, seq_len):
    """The seeds' tensors: non-overlapping training windows of seq_len+1 points (the
    remainder dropped), x = window[:-1], y = window[1:], each [num_windows, seq_len, 1];
    the test part as a next-step pair x_test = test[:-1], y_test = test[1:], float32."""
    train, test, _ = split_series(series)
    usable = len(train) // (seq_len + 1) * (seq_len + 1)
    windows = np.asarray(train[:usable]).reshape(-1, seq_len + 1, 1)
    return (_float32(windows[:, :seq_len]), _float32(windows[:, 1:]),
            _float32(test[:-1]), _float32(test[1:]))


def _float32(array):
    return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32)
