"""torch.compile(fullgraph=True) traces models built on the fused layers, forward and
backward, and gives eager's numbers (torch.nn's own RNNs graph-break here)."""
import pytest
import torch
from torch import nn

import fastrnn
from conftest import skip_untraceable


class Forecaster(nn.Module):
    def __init__(self, layer_class, backend):
        super().__init__()
        self.rnn = layer_class(1, 16, num_layers=2, backend=backend)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        output, _ = self.rnn(x)
        return self.head(output)


@pytest.mark.parametrize("layer_class", [fastrnn.FusedGRU, fastrnn.FusedLSTM, fastrnn.FusedRNN])
def test_fullgraph_compile_matches_eager(backend, device, layer_class):
    skip_untraceable(backend)
    torch.manual_seed(0)
    model = Forecaster(layer_class, backend).to(device=device, dtype=torch.float64)
    x = torch.randn(6, 3, 1, dtype=torch.float64, device=device)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")

    def loss_and_grads(run):
        model.zero_grad()
        loss = run(x).square().sum()
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in model.parameters()]

    torch._dynamo.reset()
    for actual, expected in zip(loss_and_grads(compiled), loss_and_grads(model)):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layer_class", [fastrnn.FusedGRU, fastrnn.FusedLSTM])
def test_compiled_single_layer_final_states_are_not_views(backend, device, layer_class):
    """csrc/stack.cpp hands a single layer's final states out without a copy; under
    torch.compile they must still be tensors of their own, as eager's are, since users
    (the seeds among them) call hidden.detach_(), which views refuse."""
    skip_untraceable(backend)
    layer = layer_class(3, 4, backend=backend).to(device)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(5, 2, 3, device=device)
    torch._dynamo.reset()
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode):
            _, hidden = compiled(x)
        for state in hidden if isinstance(hidden, tuple) else (hidden,):
            assert state._base is None
            state.detach_()
