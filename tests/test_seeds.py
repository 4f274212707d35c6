"""The first users' code, unchanged but for the class: the textbook's GRU sine model
(seeds/000, ch07) trains to the same losses with FusedGRU as with nn.GRU.

The model, the per-sequence loop with `hidden.detach_()`, and the unbatched test rollout
fed `hidden[:, -1]` are the seed's own lines; only `nn.GRU` is a parameter.
"""
import numpy as np
import pytest
import torch
import torch.nn as nn

import fastrnn

input_size, output_size, hidden_size, seq_len, learning_rate = 1, 1, 16, 20, 5e-4


def sine_series():
    rng = np.random.default_rng(0)
    x = np.linspace(0, 20 * np.pi, 1000)
    return np.sin(x) + 0.05 * rng.standard_normal(1000)


class GRU(nn.Module):
    def __init__(self, input_size, output_size, hidden_size, gru_class):
        super().__init__()
        self.gru = gru_class(input_size=input_size, hidden_size=hidden_size)
        self.linear = nn.Linear(hidden_size, output_size)

    def forward(self, x, hidden):
        out, hidden = self.gru(torch.transpose(x, 0, 1), hidden)
        out = self.linear(out.view(-1, hidden_size))
        return out, hidden


def test_gru(gru, x, hidden, pred_steps):
    pred = []
    inp = x.view(-1, input_size)
    for i in range(pred_steps):
        gru_pred, hidden = gru(inp, hidden)
        pred.append(gru_pred.detach())
        inp = gru_pred
    return torch.concat(pred).reshape(-1)


test_gru.__test__ = False  # the seed's name for its rollout, not a pytest test


def train_like_the_seed(gru_class, max_epoch):
    data = sine_series()
    split = int(0.8 * len(data))
    train_data, test_data = np.array(data[:split]), np.array(data[split:])
    train_num = len(train_data) // (seq_len + 1) * (seq_len + 1)
    train_data = np.array(train_data[:train_num]).reshape(-1, seq_len + 1, 1)
    torch.manual_seed(0)
    x_train = torch.from_numpy(train_data[:, :seq_len]).to(torch.float32)
    y_train = torch.from_numpy(train_data[:, 1:seq_len + 1]).to(torch.float32)
    x_test = torch.from_numpy(test_data[:-1]).to(torch.float32)
    y_test = torch.from_numpy(test_data[1:]).to(torch.float32)

    gru = GRU(input_size, output_size, hidden_size, gru_class)
    gru_optim = torch.optim.Adam(gru.parameters(), lr=learning_rate)
    criterion = nn.functional.mse_loss
    hidden = None
    gru_losses, gru_test_losses = [], []
    for epoch in range(max_epoch):
        gru_loss = 0.0
        for X, y in zip(x_train, y_train):
            if hidden is not None:
                hidden.detach_()
            gru_pred, hidden = gru(X[None, ...], hidden)
            gru_train_loss = criterion(gru_pred.view(y.shape), y)
            gru_optim.zero_grad()
            gru_train_loss.backward()
            gru_optim.step()
            gru_loss += gru_train_loss.item()
        gru_losses.append(gru_loss / len(x_train))
        gru_pred = test_gru(gru, x_test[0], hidden[:, -1], len(y_test))
        gru_test_losses.append(criterion(gru_pred, y_test).item())
    return np.array(gru_losses), np.array(gru_test_losses)


def test_textbook_gru_sine_model_trains_to_the_same_losses(backend, device):
    if device.type != "cpu":
        pytest.skip("the seed's code runs on CPU tensors")
    expected_train, expected_test = train_like_the_seed(nn.GRU, max_epoch=2)
    fused_train, fused_test = train_like_the_seed(
        lambda **kw: fastrnn.FusedGRU(backend=backend, **kw), max_epoch=2)
    np.testing.assert_allclose(fused_train, expected_train, rtol=1e-5)
    np.testing.assert_allclose(fused_test, expected_test, rtol=1e-5)
