"""One trainer per task: the seeds' training loops, each owning one model's optimizer and
carried hidden state. A trainer's train_epoch() returns the mean training loss; test()
returns (test loss, prediction arrays for the plots).

sequence  seeds 000/002: one Adam update per training window, in order, the detached final
          hidden state carried into the next window; tested by an autoregressive rollout
          over the test part from the last window's final state.
batched   the same data and rollout, but every update sees every training window in one
          batch, each window starting from a zero state. An epoch keeps the sequence
          task's number of updates (one per window), so its time compares update for
          update: the per-window loop cannot batch (each window's state feeds the next),
          while here the fused kernel gets all windows in one call.
sincos    seed 003: sin -> cos regression on consecutive half-period windows
          linspace(k*pi, (k+1)*pi, seq_len, endpoint=False), batch_first, hidden 32,
          lr 0.02, the state repacked (detached) between windows. An epoch is 10 windows,
          so the seed's 100 steps are 10 epochs; the test runs the next 10 windows from a
          copy of the state, without updates.
window    seed 001: next-step training on random windows linspace(s, s+10, seq_len+1),
          s drawn from {0, 1, 2}, batch_first, recurrent weights drawn from N(0, 0.001),
          lr 0.01, state carried across windows. An epoch is 100 windows (the seed
          prints every 100 of its 6000); the test is its rollout on the window s = 1.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.sine import data
from benchmarks.sine.models import detach_state, last_sequence_state


@dataclass(frozen=True)
class TaskSpec:
    """The seed's own settings for a task; the command line may override each."""
    seed_text: str
    seq_len: int
    hidden: int
    lr: float
    full_epochs: int  # the seed's training length, in this task's epochs
    batch_first: bool
    uses_series: bool  # trains on the CSV series (else on generated windows)
    init_std: float = None


def _one_sequence(values, device):
    """[1, T, 1] float32: one batch_first sequence of scalars."""
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1)


def rollout(model, first_input, hidden, steps, step_shape):
    """The seeds' autoregressive test: each prediction is the next step's input.
    Runs without a graph (the seeds detach every prediction anyway)."""
    predictions = []
    step_input = first_input.reshape(step_shape)
    with torch.no_grad():
        for _ in range(steps):
            prediction, hidden = model(step_input, hidden)
            predictions.append(prediction.reshape(1))
            step_input = prediction.reshape(step_shape)
    return torch.cat(predictions)


class _Trainer:
    def __init__(self, model, lr):
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.hidden = None

    def _update(self, x, y):
        """One Adam step on one batch; keeps the new hidden state, returns the loss."""
        prediction, hidden = self.model(x, detach_state(self.hidden))
        loss = F.mse_loss(prediction, y)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.hidden = hidden
        return loss.item()


class SequenceTrainer(_Trainer):
    def __init__(self, model, lr, series_windows):
        super().__init__(model, lr)
        self.x_train, self.y_train, self.x_test, self.y_test = series_windows

    def train_epoch(self):
        total = sum(self._update(x[None], y[None]) for x, y in zip(self.x_train, self.y_train))
        return total / len(self.x_train)

    def test(self):
        predictions = rollout(self.model, self.x_test[0], last_sequence_state(self.hidden),
                              len(self.y_test), step_shape=(1, 1))
        loss = F.mse_loss(predictions, self.y_test).item()
        return loss, {"predictions": predictions.cpu().numpy()}


class BatchedTrainer(SequenceTrainer):
    def train_epoch(self):
        total = 0.0
        for _ in range(len(self.x_train)):
            self.hidden = None
            total += self._update(self.x_train, self.y_train)
        return total / len(self.x_train)


class SinCosTrainer(_Trainer):
    WINDOWS_PER_EPOCH = 10
    TEST_WINDOWS = 10

    def __init__(self, model, lr, seq_len, device):
        super().__init__(model, lr)
        self.seq_len = seq_len
        self.device = device
        self.next_window = 0

    def _window(self, k):
        t = np.linspace(k * math.pi, (k + 1) * math.pi, self.seq_len, endpoint=False)
        return t, _one_sequence(np.sin(t), self.device), _one_sequence(np.cos(t), self.device)

    def train_epoch(self):
        losses = []
        for k in range(self.next_window, self.next_window + self.WINDOWS_PER_EPOCH):
            _, x, y = self._window(k)
            losses.append(self._update(x, y))
        self.next_window += self.WINDOWS_PER_EPOCH
        return sum(losses) / len(losses)

    def test(self):
        hidden = self.hidden
        times, targets, predictions = [], [], []
        with torch.no_grad():
            for k in range(self.next_window, self.next_window + self.TEST_WINDOWS):
                t, x, y = self._window(k)
                prediction, hidden = self.model(x, hidden)
                times.append(t)
                targets.append(y.view(-1))
                predictions.append(prediction.view(-1))
        targets, predictions = torch.cat(targets), torch.cat(predictions)
        loss = F.mse_loss(predictions, targets).item()
        return loss, {"t": np.concatenate(times), "target": targets.cpu().numpy(),
                      "predictions": predictions.cpu().numpy()}


class RandomWindowTrainer(_Trainer):
    WINDOWS_PER_EPOCH = 100
    TEST_START = 1.0

    def __init__(self, model, lr, seq_len, device, seed):
        super().__init__(model, lr)
        self.seq_len = seq_len
        self.device = device
        # Each trainer draws its own starts from the same seed, so twins see the same windows.
        self.rng = np.random.RandomState(seed)

    def _window(self, start):
        t = np.linspace(start, start + 10, self.seq_len + 1)
        values = torch.tensor(np.sin(t), dtype=torch.float32, device=self.device)
        return t, values[:-1].view(1, -1, 1), values[1:].view(1, -1, 1)

    def train_epoch(self):
        losses = []
        for _ in range(self.WINDOWS_PER_EPOCH):
            _, x, y = self._window(self.rng.randint(3))
            losses.append(self._update(x, y))
        return sum(losses) / len(losses)

    def test(self):
        t, x, y = self._window(self.TEST_START)
        predictions = rollout(self.model, x[:, 0], self.hidden, self.seq_len,
                              step_shape=(1, 1, 1))
        loss = F.mse_loss(predictions, y.view(-1)).item()
        return loss, {"t": t, "input": x.view(-1).cpu().numpy(),
                      "predictions": predictions.cpu().numpy()}


TASKS = {
    "sequence": TaskSpec("seeds 000/002 (textbook ch07 GRU, exercises 5-6)", seq_len=20,
                         hidden=16, lr=5e-4, full_epochs=150, batch_first=False,
                         uses_series=True),
    "batched": TaskSpec("seeds 000/002 data, all windows in one batch per step", seq_len=20,
                        hidden=16, lr=5e-4, full_epochs=150, batch_first=False,
                        uses_series=True),
    "sincos": TaskSpec("seed 003 (sin -> cos regression)", seq_len=10, hidden=32, lr=0.02,
                       full_epochs=10, batch_first=True, uses_series=False),
    "window": TaskSpec("seed 001 (random-window next-step training)", seq_len=49,
                       hidden=16, lr=0.01, full_epochs=60, batch_first=True,
                       uses_series=False, init_std=1e-3),
}


def make_trainer(task, model, *, lr, seq_len, series, device, seed):
    """The task's trainer for one model (series is the CSV series, used by the seeds'
    protocol tasks)."""
    if task in ("sequence", "batched"):
        windows = tuple(t.to(device) for t in data.seed_windows(series, seq_len))
        trainer_class = SequenceTrainer if task == "sequence" else BatchedTrainer
        return trainer_class(model, lr, windows)
    if task == "sincos":
        return SinCosTrainer(model, lr, seq_len, device)
    if task == "window":
        return RandomWindowTrainer(model, lr, seq_len, device, seed)
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
