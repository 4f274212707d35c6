"""FusedRNNCell/GRUCell/LSTMCell against torch.nn's cells, on every backend."""
import itertools

import pytest
import torch
from torch import nn

import fastrnn

CELLS = {
    "rnn_tanh": (nn.RNNCell, fastrnn.FusedRNNCell, {}),
    "rnn_relu": (nn.RNNCell, fastrnn.FusedRNNCell, {"nonlinearity": "relu"}),
    "gru": (nn.GRUCell, fastrnn.FusedGRUCell, {}),
    "lstm": (nn.LSTMCell, fastrnn.FusedLSTMCell, {}),
}
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.mark.parametrize("cell,bias,batched,hx_given,dtype", list(itertools.product(
    CELLS, (True, False), (True, False), (True, False), (torch.float64, torch.float32))))
def test_cell_matches_torch_nn(backend, device, cell, bias, batched, hx_given, dtype):
    torch_class, fused_class, kwargs = CELLS[cell]
    hidden = 33 if batched else 7
    torch.manual_seed(0)
    expected_cell = torch_class(5, hidden, bias=bias, dtype=dtype, **kwargs).to(device)
    fused_cell = fused_class(5, hidden, bias=bias, dtype=dtype, backend=backend, **kwargs)
    fused_cell.load_state_dict(expected_cell.state_dict())
    lead = (3,) if batched else ()
    x = torch.randn(*lead, 5, dtype=dtype, device=device, requires_grad=True)
    leaves = [x]
    hx = None
    if hx_given:
        states = [torch.randn(*lead, hidden, dtype=dtype, device=device, requires_grad=True)
                  for _ in range(2 if cell == "lstm" else 1)]
        leaves += states
        hx = tuple(states) if cell == "lstm" else states[0]

    def outputs_and_grads(module):
        out = module(x, hx)
        outs = list(out) if isinstance(out, tuple) else [out]
        loss = sum((o * torch.arange(o.numel(), dtype=dtype, device=device).view(o.shape).cos())
                   .sum() for o in outs)
        return outs, torch.autograd.grad(loss, leaves + list(module.parameters()))

    expected_outs, expected_grads = outputs_and_grads(expected_cell)
    fused_outs, fused_grads = outputs_and_grads(fused_cell)
    for actual, expected in zip(fused_outs + list(fused_grads),
                                expected_outs + list(expected_grads)):
        assert actual.shape == expected.shape
        scale = max(expected.abs().max().item(), 1.0)
        assert (actual - expected).abs().max().item() <= TOLERANCE[dtype] * scale
