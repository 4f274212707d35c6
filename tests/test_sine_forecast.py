"""The sine forecasting benchmark (benchmarks/sine_forecast.py): fastrnn and torch.nn
train to the same loss curves from the same weights, the CSV input fails loudly, and the
command line writes every output. Small series and one or two epochs keep it fast."""
import json

import numpy as np
import pytest
import torch

from benchmarks import sine_forecast
from benchmarks.sine import data
from benchmarks.sine.report import max_relative_difference
from benchmarks.sine.runner import run_task

SHORT_SERIES_LENGTH = 300  # 11 training windows of 21 and a 60-point test rollout


@pytest.fixture(autouse=True)
def one_thread():
    # These tests check numbers, not speed. With 2+ threads on a busy machine (parallel
    # builds or test runs), OpenMP's spinning workers slow small GEMMs 10-100x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_twins(task, cell, epochs, seq_len):
    runs = run_task(task, cells=[cell], impls=["torch", "fastrnn"], epochs=epochs,
                    seq_len=seq_len, hidden=16, lr=5e-3,
                    series=data.generate_series(SHORT_SERIES_LENGTH), device=torch.device("cpu"),
                    backend="auto", seed=0, show_progress=False)
    return {run["impl"]: run for run in runs}


@pytest.mark.parametrize("task, cell, seq_len", [
    ("sequence", "rnn", 20), ("sequence", "gru", 20), ("sequence", "lstm", 20),
    ("batched", "gru", 20), ("sincos", "lstm", 10), ("window", "rnn", 12)])
def test_fastrnn_and_torch_loss_curves_agree(task, cell, seq_len):
    runs = train_twins(task, cell, epochs=2, seq_len=seq_len)
    for curve in ("train_loss", "test_loss"):
        fused, reference = runs["fastrnn"][curve], runs["torch"][curve]
        assert len(fused) == 2
        assert max_relative_difference(fused, reference) <= 1e-4, (curve, fused, reference)


def test_generated_series_is_deterministic_and_round_trips_through_csv(tmp_path):
    series = data.generate_series(seed=3)
    assert series.shape == (data.SERIES_LENGTH,)
    np.testing.assert_array_equal(series, data.generate_series(seed=3))
    assert not np.array_equal(series, data.generate_series(seed=4))
    path = data.write_csv(series, tmp_path / data.CSV_NAME)
    np.testing.assert_array_equal(data.read_csv(path), series)
    np.testing.assert_array_equal(np.loadtxt(path, delimiter=","), series)  # the seeds' reader


@pytest.mark.parametrize("content, message", [
    ("0.1\n0.2\nabc\n0.4\n", "row 3 is not a finite number: 'abc'"),
    ("0.1\nnan\n", "row 2 is not a finite number"),
    ("0.1\n0.2,0.3\n", "row 2 has 2 columns"),
    ("\n\n", "no values"),
])
def test_bad_csv_names_the_file_and_row(tmp_path, content, message):
    path = tmp_path / "series.csv"
    path.write_text(content)
    with pytest.raises(SystemExit, match=str(path)) as error:
        data.read_csv(path)
    assert message in str(error.value)


def test_missing_csv_names_the_file(tmp_path):
    with pytest.raises(SystemExit, match="no_such.csv: no such file"):
        data.read_csv(tmp_path / "no_such.csv")


def test_series_too_short_for_the_window_is_refused_by_the_cli(tmp_path):
    path = data.write_csv(np.sin(np.arange(20.0)), tmp_path / "short.csv")
    with pytest.raises(SystemExit, match="short.csv: 20 values are too few for windows of "
                                         "seq_len\\+1 = 21"):
        sine_forecast.main(["--data", str(path), "--out", str(tmp_path / "out")])


def test_cli_writes_the_generated_series_when_no_csv_is_given(tmp_path):
    out = tmp_path / "out"
    sine_forecast.main(["--epochs", "1", "--cells", "rnn", "--impl", "torch", "--task",
                        "sincos", "--threads", "1", "--out", str(out)])
    np.testing.assert_array_equal(np.loadtxt(out / data.CSV_NAME, delimiter=","),
                                  data.generate_series())


def test_cli_tiny_run_writes_every_output(tmp_path, capsys):
    path = data.write_csv(data.generate_series(SHORT_SERIES_LENGTH), tmp_path / "series.csv")
    out = tmp_path / "out"
    sine_forecast.main(["--data", str(path), "--epochs", "2", "--cells", "gru,mlp",
                        "--task", "sequence,batched", "--threads", "1", "--out", str(out)])
    expected = {"results.json", "summary.md", "epoch_times.png",
                "loss_curves_sequence.png", "predictions_sequence.png",
                "loss_curves_batched.png", "predictions_batched.png"}
    assert expected <= {path.name for path in out.iterdir()}
    results = json.loads((out / "results.json").read_text())
    assert {"device", "cpu", "torch", "threads", "date"} <= set(results["header"])
    assert results["header"]["threads"] == 1
    runs = {(run["task"], run["cell"], run["impl"]) for run in results["runs"]}
    assert runs == {(task, cell, impl) for task in ("sequence", "batched")
                    for cell, impl in (("gru", "torch"), ("gru", "fastrnn"), ("mlp", "torch"))}
    gru_rows = [row for row in results["summary"] if row["cell"] == "gru"]
    assert all(row["speedup"] > 0 and row["max_rel_diff_train_loss"] <= 1e-4
               for row in gru_rows)
    printed = capsys.readouterr().out
    assert "| sequence | 20 | gru | fastrnn |" in printed
    assert printed.strip() == (out / "summary.md").read_text().strip()


def test_cli_sweep_on_a_csv_series(tmp_path):
    path = data.write_csv(data.generate_series(SHORT_SERIES_LENGTH), tmp_path / "series.csv")
    out = tmp_path / "out"
    sine_forecast.main(["--data", str(path), "--epochs", "1", "--cells", "gru",
                        "--impl", "fastrnn", "--task", "sincos", "--sweep", "--threads", "1",
                        "--out", str(out)])
    assert not (out / data.CSV_NAME).exists()
    assert (out / "sweep.png").is_file()
    sweep = json.loads((out / "results.json").read_text())["sweep"]
    assert [row["seq_len"] for row in sweep] == [10, 20, 30, 50]
    assert "## Sequence-length sweep" in (out / "summary.md").read_text()
