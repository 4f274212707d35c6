"""FusedRNN/GRU/LSTM.forward's C++ path for plain calls (csrc/plain_forward.cpp): it gives
the Python forward's results bit for bit, gradients and dropout masks included, and hands
every call that is not plain to the Python forward, which then answers as it did without
the C++ path. (Parity with torch.nn through it is test_parity.py's job.)"""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn
from fastrnn import modules, ops

from plain_calls import Marked, assert_declined, under_mode, with_backend
from test_layer_stack import initial_state

pytestmark = pytest.mark.skipif(ops.LOAD_ERROR is not None, reason="fastrnn._C not built")

CASES = {  # id: (fused class, constructor kwargs)
    "rnn-tanh": (fastrnn.FusedRNN, {}),
    "rnn-relu-nobias": (fastrnn.FusedRNN, dict(nonlinearity="relu", bias=False)),
    "gru-2layer-bidir-dropout": (fastrnn.FusedGRU,
                                 dict(num_layers=2, bidirectional=True, dropout=0.5)),
    "lstm-1layer": (fastrnn.FusedLSTM, {}),
    "lstm-proj-2layer-dropout": (fastrnn.FusedLSTM,
                                 dict(num_layers=2, proj_size=2, dropout=0.5)),
}
N, T, C, H = 2, 5, 3, 4


def make_module(case, batch_first=False, dtype=torch.float64):
    cls, kwargs = CASES[case]
    torch.manual_seed(0)
    return cls(C, H, batch_first=batch_first, dtype=dtype, backend="cpu", **kwargs)


def leaves(tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def results_and_grads(call, module, x, hx):
    """call(module, x, hx)'s output and final states, and the gradients of a seeded random
    projection of them with respect to x, hx and the parameters. Fresh leaves each time,
    the same dropout masks (seeded)."""
    x, *states = leaves([x] + ([] if hx is None else list(hx) if isinstance(hx, tuple)
                               else [hx]))
    hx = None if not states else tuple(states) if len(states) == 2 else states[0]
    torch.manual_seed(1)
    output, hidden = call(module, x, hx)
    results = [output] + (list(hidden) if isinstance(hidden, tuple) else [hidden])
    torch.manual_seed(2)
    loss = sum((r * torch.randn_like(r)).sum() for r in results)
    grads = torch.autograd.grad(loss, [x, *states, *module.parameters()])
    return [r.detach() for r in results] + list(grads)


def python_forward(module, x, hx):
    return module._forward(x, hx)


def module_call(module, x, hx):
    return module(x, hx)


def refuse_python_forward(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a plain call went through the Python forward")
    monkeypatch.setattr(modules._FusedLayer, "_forward", refuse)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch_first", (False, True), ids=("time_major", "batch_first"))
@pytest.mark.parametrize("given_state", (False, True), ids=("zeros", "hx"))
@pytest.mark.parametrize("strided", (False, True), ids=("contiguous", "strided"))
def test_plain_calls_match_the_python_forward(case, batch_first, given_state, strided,
                                              monkeypatch):
    """Training mode: the stacked cases draw dropout masks between layers."""
    module = make_module(case, batch_first)
    shape = (N, T, C) if batch_first else (T, N, C)
    x = torch.randn(*shape, 2, dtype=torch.float64)[..., 0] if strided else \
        torch.randn(*shape, dtype=torch.float64)
    hx = initial_state(module, N) if given_state else None
    expected = results_and_grads(python_forward, module, x, hx)
    refuse_python_forward(monkeypatch)
    actual = results_and_grads(module_call, module, x, hx)
    assert len(actual) == len(expected)
    for index, (a, e) in enumerate(zip(actual, expected)):
        assert torch.equal(a, e), f"result {index} differs from the Python forward's"


def packed_call(call, lengths):
    """call(module, x, hx) on x packed with `lengths` (sorted, time-major), with the output's
    data for the output; checks the output's PackedSequence form on the way."""
    def packed(module, x, hx):
        input = pack_padded_sequence(x, lengths)
        output, hidden = call(module, input, hx)
        assert type(output) is PackedSequence
        assert output.batch_sizes is input.batch_sizes
        assert output.sorted_indices is None and output.unsorted_indices is None
        return output.data, hidden
    return packed


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("given_state", (False, True), ids=("zeros", "hx"))
def test_plain_packed_calls_match_the_python_forward(case, given_state, monkeypatch):
    """Sorted packed input, the default of pack_padded_sequence and pack_sequence."""
    module = make_module(case)
    x = torch.randn(T, N, C, dtype=torch.float64)
    hx = initial_state(module, N) if given_state else None
    lengths = [T, T - 2]
    expected = results_and_grads(packed_call(python_forward, lengths), module, x, hx)
    refuse_python_forward(monkeypatch)
    actual = results_and_grads(packed_call(module_call, lengths), module, x, hx)
    assert len(actual) == len(expected)
    for index, (a, e) in enumerate(zip(actual, expected)):
        assert torch.equal(a, e), f"result {index} differs from the Python forward's"


class PackedSubclass(PackedSequence):
    """A PackedSequence of another class, which the C++ path leaves to the Python one."""


@pytest.mark.parametrize("mode", ("enable_grad", "no_grad", "inference_mode"))
def test_plain_calls_in_every_grad_mode(mode, monkeypatch):
    """float32 (the benchmarks' dtype) against torch.nn, in eval mode."""
    module = make_module("gru-2layer-bidir-dropout", dtype=torch.float32).eval()
    reference = nn.GRU(C, H, num_layers=2, bidirectional=True, dropout=0.5).eval()
    reference.load_state_dict(module.state_dict())
    x = torch.randn(T, N, C)
    refuse_python_forward(monkeypatch)
    with getattr(torch, mode)():
        output, h_n = module(x)
        expected_output, expected_h_n = reference(x)
    torch.testing.assert_close(output, expected_output)
    torch.testing.assert_close(h_n, expected_h_n)
    assert output.requires_grad == (mode == "enable_grad")


def swap_parameter_behind_setattr(module, x, hx):
    module._parameters["weight_hh_l0"] = nn.Parameter(torch.randn_like(module.weight_hh_l0))
    return module(x, hx)


# id: (call(module, x, hx) for a plain module, x and hx), for calls the C++ path declines.
# Some raise; the Python forward must raise (or return) what it does without the C++ path.
IRREGULAR = {
    "packed_unsorted": lambda m, x, hx: m(pack_padded_sequence(x, [T - 2, T],
                                                               enforce_sorted=False), hx),
    "packed_subclass": lambda m, x, hx: m(PackedSubclass(*pack_padded_sequence(x, [T, T - 2])),
                                          hx),
    "packed_data_subclass": lambda m, x, hx: m(
        pack_padded_sequence(x.as_subclass(Marked), [T, T - 2]), hx),
    "packed_wrong_features": lambda m, x, hx: m(
        pack_padded_sequence(torch.cat([x, x], -1), [T, T - 2]), hx),
    "packed_wrong_dtype": lambda m, x, hx: m(pack_padded_sequence(x.float(), [T, T - 2]), hx),
    "packed_hx_wrong_batch": lambda m, x, hx: m(pack_padded_sequence(x[:, :1], [T]), hx),
    "unbatched": lambda m, x, hx: m(x[:, 0]),
    "wrong_features": lambda m, x, hx: m(torch.cat([x, x], -1), hx),
    "wrong_dtype": lambda m, x, hx: m(x.float(), hx),
    "empty_batch": lambda m, x, hx: m(x[:, :0]),
    "empty_sequence": lambda m, x, hx: m(x[:0]),
    "hx_wrong_batch": lambda m, x, hx: m(x[:, :1], hx),
    "hx_wrong_dtype": lambda m, x, hx: m(x, tuple(s.float() for s in hx)
                                         if isinstance(hx, tuple) else hx.float()),
    "hx_wrong_type": lambda m, x, hx: m(x, [hx[0]] if isinstance(hx, tuple) else (hx, hx)),
    "input_subclass": lambda m, x, hx: m(x.as_subclass(Marked), hx),
    "hx_subclass": lambda m, x, hx: m(x, tuple(s.as_subclass(Marked) for s in hx)
                                      if isinstance(hx, tuple) else hx.as_subclass(Marked)),
    "torch_function_mode": under_mode,
    "swapped_parameter": swap_parameter_behind_setattr,
    "reference_backend": with_backend("reference"),
    # Wrong twice: the input size error comes first, as without the C++ path.
    "unavailable_backend_and_wrong_features": lambda m, x, hx: with_backend("cuda")(
        m, torch.cat([x, x], -1), hx),
}


def outcome(call, case):
    """(results, None) or (None, (exception type, message)) of a fresh module's call."""
    module = make_module(case)
    torch.manual_seed(3)
    x = torch.randn(T, N, C, dtype=torch.float64)
    hx = initial_state(module, N)
    torch.manual_seed(4)
    try:
        output, hidden = call(module, x, hx)
    except Exception as error:  # compared below, type and message
        return None, (type(error), str(error))
    output = output.data if hasattr(output, "batch_sizes") else output
    return [output] + list(hidden if isinstance(hidden, tuple) else (hidden,)), None


@pytest.mark.parametrize("case", ("rnn-tanh", "lstm-proj-2layer-dropout"))
@pytest.mark.parametrize("name", IRREGULAR)
def test_irregular_calls_take_the_python_forward(case, name, monkeypatch):
    if name == "unavailable_backend_and_wrong_features" and \
            fastrnn.backends.unavailable_reason("cuda") is None:
        pytest.skip("needs the cuda backend unavailable, as it is on CPU-only machines")
    assert_declined(monkeypatch, "plain_forward", modules._FusedLayer, "_forward",
                    lambda: outcome(IRREGULAR[name], case))
