"""Trains every (cell, implementation) model of one task in lockstep, epoch by epoch,
recording per-epoch train loss, test loss and times.

Lockstep (each epoch: every model trains once, then tests) puts torch.nn and fastrnn
under the same machine conditions throughout the run, so their time ratio is not skewed
by whatever else the machine did during one of them.
"""
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from fastrnn import backends
from benchmarks.sine.machine import timed_ms
from benchmarks.sine.models import build_twins
from benchmarks.sine.protocols import TASKS, make_trainer


def backend_name(impl, device, requested):
    """What actually runs the recurrence: fastrnn's resolved backend, or torch.nn's."""
    if impl == "fastrnn":
        return backends.resolve(requested, device, torch.float32)
    return "cudnn" if device.type == "cuda" else "aten"


@dataclass
class Run:
    task: str
    cell: str
    impl: str
    backend: str
    seq_len: int
    trainer: object
    train_loss: list = field(default_factory=list)
    test_loss: list = field(default_factory=list)
    epoch_ms: list = field(default_factory=list)
    test_ms: list = field(default_factory=list)
    predictions: dict = field(default_factory=dict)

    def epoch(self, device):
        train_loss, train_ms = timed_ms(self.trainer.train_epoch, device)
        (test_loss, predictions), test_ms = timed_ms(self.trainer.test, device)
        self.train_loss.append(train_loss)
        self.test_loss.append(test_loss)
        self.epoch_ms.append(train_ms)
        self.test_ms.append(test_ms)
        self.predictions = predictions

    def as_dict(self):
        return {"task": self.task, "cell": self.cell, "impl": self.impl,
                "backend": self.backend, "seq_len": self.seq_len,
                "train_loss": self.train_loss, "test_loss": self.test_loss,
                "epoch_ms": self.epoch_ms, "test_ms": self.test_ms,
                "predictions": {k: v.tolist() for k, v in self.predictions.items()}}


def run_task(task, *, cells, impls, epochs, seq_len, hidden, lr, series, device, backend,
             seed, label=None, show_progress=True):
    """Returns one dict per (cell, impl) run: settings, per-epoch curves, last predictions."""
    spec = TASKS[task]
    runs = []
    for cell in cells:
        twins = build_twins(cell, impls, seed=seed, hidden_size=hidden,
                            batch_first=spec.batch_first, backend=backend,
                            init_std=spec.init_std)
        for impl, model in twins.items():
            model.to(device)
            trainer = make_trainer(task, model, lr=lr, seq_len=seq_len, series=series,
                                   device=device, seed=seed)
            runs.append(Run(task, cell, impl, backend_name(impl, device, backend), seq_len,
                            trainer))
    progress = tqdm(range(epochs), desc=label or task, disable=not show_progress,
                    dynamic_ncols=True)
    for epoch in progress:
        # Alternating the order cancels any first-or-second-in-the-epoch effect on times.
        for run in (runs if epoch % 2 == 0 else reversed(runs)):
            run.epoch(device)
        progress.set_postfix({f"{run.cell}/{run.impl} test": f"{run.test_loss[-1]:.4f}"
                              for run in runs})
    return [run.as_dict() for run in runs]
