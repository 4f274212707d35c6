"""The *Cell classes' C++ step for plain calls (csrc/plain_cell.cpp): it gives the Python
step's results bit for bit, gradients included, and hands every call that is not plain to
the Python step, which then answers as it did without the C++ path. (Parity with
torch.nn through it is test_cells.py's job.)"""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import fastrnn
from fastrnn import modules, ops
from plain_calls import Marked, assert_declined, under_mode, with_backend

pytestmark = pytest.mark.skipif(ops.LOAD_ERROR is not None, reason="fastrnn._C not built")

CASES = {  # id: (fused class, constructor kwargs)
    "rnn-tanh": (fastrnn.FusedRNNCell, {}),
    "rnn-relu-nobias": (fastrnn.FusedRNNCell, dict(nonlinearity="relu", bias=False)),
    "gru": (fastrnn.FusedGRUCell, {}),
    "lstm": (fastrnn.FusedLSTMCell, {}),
    "lstm-nobias": (fastrnn.FusedLSTMCell, dict(bias=False)),
}
N, C, H = 3, 5, 4


def make_cell(case, dtype=torch.float64):
    cls, kwargs = CASES[case]
    torch.manual_seed(0)
    return cls(C, H, dtype=dtype, backend="cpu", **kwargs)


def is_lstm(cell):
    return isinstance(cell, nn.LSTMCell)


def random_state(cell, batch=N, dtype=torch.float64):
    h = torch.randn(batch, H, dtype=dtype)
    return (h, torch.randn(batch, H, dtype=dtype)) if is_lstm(cell) else h


def as_list(result):
    return list(result) if isinstance(result, tuple) else [result]


def results_and_grads(call, cell, x, hx):
    """call(cell, x, hx)'s new state(s), and the gradients of a seeded random projection of
    them with respect to x, hx and the parameters, on fresh leaves."""
    x = x.detach().clone().requires_grad_()
    states = [] if hx is None else [s.detach().clone().requires_grad_() for s in as_list(hx)]
    hx = None if not states else tuple(states) if is_lstm(cell) else states[0]
    results = as_list(call(cell, x, hx))
    torch.manual_seed(2)
    loss = sum((r * torch.randn_like(r)).sum() for r in results)
    grads = torch.autograd.grad(loss, [x, *states, *cell.parameters()])
    return [r.detach() for r in results] + list(grads)


def python_step(cell, x, hx):
    h, c = cell._uncast_step(x, hx)
    return (h, c) if is_lstm(cell) else h


def module_call(cell, x, hx):
    return cell(x, hx)


def refuse_python_step(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a plain call went through the Python step")
    monkeypatch.setattr(modules._FusedCell, "_uncast_step", refuse)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("given_state", (False, True), ids=("zeros", "hx"))
@pytest.mark.parametrize("strided", (False, True), ids=("contiguous", "strided"))
def test_plain_calls_match_the_python_step(case, given_state, strided, monkeypatch):
    cell = make_cell(case)
    x = torch.randn(N, C, 2, dtype=torch.float64)[..., 0] if strided else \
        torch.randn(N, C, dtype=torch.float64)
    hx = random_state(cell) if given_state else None
    expected = results_and_grads(python_step, cell, x, hx)
    refuse_python_step(monkeypatch)
    actual = results_and_grads(module_call, cell, x, hx)
    assert len(actual) == len(expected)
    for index, (a, e) in enumerate(zip(actual, expected)):
        assert torch.equal(a, e), f"result {index} differs from the Python step's"


@pytest.mark.parametrize("case", ("rnn-tanh", "gru", "lstm"))
@pytest.mark.parametrize("mode", ("enable_grad", "no_grad", "inference_mode"))
def test_plain_calls_in_every_grad_mode(case, mode, monkeypatch):
    """float32 (the benchmarks' dtype) against torch.nn, with an LSTM state given as a list."""
    cell = make_cell(case, dtype=torch.float32)
    reference = getattr(nn, type(cell).__name__.replace("Fused", ""))(
        C, H, **CASES[case][1])
    reference.load_state_dict(cell.state_dict())
    x = torch.randn(N, C)
    hx = random_state(cell, dtype=torch.float32)
    refuse_python_step(monkeypatch)
    with getattr(torch, mode)():
        actual = as_list(cell(x, list(hx) if is_lstm(cell) else hx))
        expected = as_list(reference(x, hx))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)
        assert a.requires_grad == (mode == "enable_grad")


class Doubled(nn.Module):
    def forward(self, weight):
        return 2 * weight


def parametrized(cell, x, hx):
    parametrize.register_parametrization(cell, "weight_hh", Doubled())
    return cell(x, hx)


def weight_registered_as_none(cell, x, hx):
    cell.register_parameter("weight_hh", None)
    return cell(x, hx)


def each_state(hx, change):
    return tuple(change(s) for s in hx) if isinstance(hx, tuple) else change(hx)


# id: call(cell, x, hx) for a plain cell, x [N, C] and hx, for calls the C++ path declines.
# Some raise; the Python step must raise (or return) what it does without the C++ path.
IRREGULAR = {
    "unbatched": lambda m, x, hx: m(x[0], each_state(hx, lambda s: s[0])),
    "three_dims": lambda m, x, hx: m(x[None], hx),
    "not_a_tensor": lambda m, x, hx: m(x.tolist(), hx),
    "wrong_features": lambda m, x, hx: m(torch.cat([x, x], -1), hx),
    "wrong_dtype": lambda m, x, hx: m(x.float(), hx),
    "empty_batch": lambda m, x, hx: m(x[:0]),
    "hx_wrong_batch": lambda m, x, hx: m(x[:1], hx),
    "hx_wrong_width": lambda m, x, hx: m(x, each_state(hx, lambda s: s[:, :1])),
    "hx_wrong_dtype": lambda m, x, hx: m(x, each_state(hx, lambda s: s.float())),
    "hx_wrong_type": lambda m, x, hx: m(x, [hx[0]] if isinstance(hx, tuple) else (hx, hx)),
    "input_subclass": lambda m, x, hx: m(x.as_subclass(Marked), hx),
    "hx_subclass": lambda m, x, hx: m(x, each_state(hx, lambda s: s.as_subclass(Marked))),
    "torch_function_mode": under_mode,
    "parametrized_weight": parametrized,
    "weight_registered_as_none": weight_registered_as_none,
    "reference_backend": with_backend("reference"),
    # Wrong twice: the input size error comes first, as without the C++ path.
    "unavailable_backend_and_wrong_features": lambda m, x, hx: with_backend("cuda")(
        m, torch.cat([x, x], -1), hx),
}


def outcome(call, case):
    """(results, None) or (None, (exception type, message)) of a fresh cell's call."""
    cell = make_cell(case)
    torch.manual_seed(3)
    x = torch.randn(N, C, dtype=torch.float64)
    hx = random_state(cell)
    try:
        return [r.detach() for r in as_list(call(cell, x, hx))], None
    except Exception as error:  # compared below, type and message
        return None, (type(error), str(error))


@pytest.mark.parametrize("case", ("rnn-tanh", "lstm"))
@pytest.mark.parametrize("name", IRREGULAR)
def test_irregular_calls_take_the_python_step(case, name, monkeypatch):
    if name == "unavailable_backend_and_wrong_features" and \
            fastrnn.backends.unavailable_reason("cuda") is None:
        pytest.skip("needs the cuda backend unavailable, as it is on CPU-only machines")
    assert_declined(monkeypatch, "plain_cell", modules._FusedCell, "_uncast_step",
                    lambda: outcome(IRREGULAR[name], case))
