"""fastrnn.graphs on the CPU: the eager rollout (the reference GraphedRollout is checked
against in tests/test_cuda.py) and GraphedRollout's argument checks."""
import pytest
import torch

from fastrnn import FusedGRU
from fastrnn.graphs import GraphedRollout, rollout


class Seed(torch.nn.Module):
    """The seeds' model: a GRU (hidden 16) with a Linear head, called one step at a time."""

    def __init__(self):
        super().__init__()
        self.gru = FusedGRU(input_size=1, hidden_size=16)
        self.linear = torch.nn.Linear(16, 1)

    def forward(self, x, hidden):
        out, hidden = self.gru(x, hidden)
        return self.linear(out.view(-1, 16)), hidden


def test_rollout_is_the_seeds_loop():
    torch.manual_seed(0)
    model = Seed()
    x0, h0 = torch.randn(1, 1), torch.zeros(1, 16)
    with torch.no_grad():
        preds, h = rollout(model, x0, h0, steps=7)
        inp, hidden, expect = x0, h0, []
        for _ in range(7):
            pred, hidden = model(inp, hidden)
            expect.append(pred)
            inp = pred
    assert preds.shape == (7, 1, 1)
    torch.testing.assert_close(preds, torch.stack(expect), rtol=0, atol=0)
    torch.testing.assert_close(h, hidden, rtol=0, atol=0)


def test_rollout_feedback_and_steps():
    step = lambda x, h: (x + h, h * 2)  # noqa: E731
    ys, h = rollout(step, torch.ones(2), torch.ones(2), steps=3, feedback=lambda y: -y)
    torch.testing.assert_close(ys, torch.tensor([[2.0, 2.0], [0.0, 0.0], [4.0, 4.0]]))
    torch.testing.assert_close(h, torch.full((2,), 8.0))
    with pytest.raises(ValueError, match="steps"):
        rollout(step, torch.ones(2), torch.ones(2), steps=0)


def test_graphed_rollout_refuses_cpu_tensors_clearly():
    model = Seed()
    with pytest.raises(ValueError, match=r"needs CUDA tensors.*example_input is on cpu.*rollout"):
        GraphedRollout(model, torch.zeros(1, 1), torch.zeros(1, 16))
    lstm_step = lambda x, hc: (x, hc)  # noqa: E731
    if torch.cuda.is_available():
        x = torch.zeros(1, 1, device="cuda")
        with pytest.raises(ValueError, match="example_hidden is on cpu"):
            GraphedRollout(lstm_step, x, (torch.zeros(1, 4, device="cuda"), torch.zeros(1, 4)))


def test_graphed_rollout_argument_types():
    with pytest.raises(TypeError, match="example_input"):
        GraphedRollout(Seed(), [0.0], torch.zeros(1, 16))
    with pytest.raises(TypeError, match="example_hidden"):
        GraphedRollout(Seed(), torch.zeros(1, 1), None)
    with pytest.raises(ValueError, match="unroll"):
        GraphedRollout(Seed(), torch.zeros(1, 1), torch.zeros(1, 16), unroll=0)
