"""The Triton kernels against fastrnn.reference (the pure-PyTorch spec), one layer-direction
at a time: every mode, padded and packed, both directions, with and without bias and
projection, edge sizes, forward outputs and every gradient.

Without a GPU the kernels run under the Triton interpreter on CPU tensors (tests/conftest.py
sets TRITON_INTERPRET=1 there); with one they run on CUDA tensors. Shapes stay small because
the interpreter executes every block operation in numpy.
"""
import importlib.util
import os

import pytest
import torch

from fastrnn import reference
import fastrnn.triton as triton_backend

_HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(
    triton_backend.unavailable_reason() is not None,
    reason=f"Triton backend unavailable: {triton_backend.unavailable_reason()}")

_INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = torch.device("cuda" if torch.cuda.is_available() and not _INTERPRETING else "cpu")
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "GRU": 3, "LSTM": 4}


@pytest.fixture(autouse=True)
def poisoned_empty(monkeypatch):
    """NaN-filled torch.empty / empty_like, so an element a kernel forgets to write fails."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(tensor):
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor

    monkeypatch.setattr(torch, "empty", lambda *a, **k: poison(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: poison(empty_like(*a, **k)))


def make_case(mode, T, N, C, H, dtype, *, lengths=None, bias=True, proj=0, seed=0):
    """(args for layer() minus mode/reverse, list of tensors that need gradients)."""
    gen = torch.Generator().manual_seed(seed)
    G, P = GATES[mode], proj or H

    def rand(*shape, scale=1.0):
        values = (torch.rand(*shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale
        return values.to(DEVICE, dtype).requires_grad_()

    k = H ** -0.5
    if lengths is None:
        batch_sizes = None
        x = rand(T, N, C)
    else:
        lengths = torch.tensor(lengths)
        batch_sizes = torch.stack([(lengths > t).sum() for t in range(T)])
        x = rand(int(batch_sizes.sum()), C)
    h0 = rand(N, P)
    c0 = rand(N, H) if mode == "LSTM" else None
    w_ih, w_hh = rand(G * H, C, scale=k), rand(G * H, P, scale=k)
    b_ih, b_hh = (rand(G * H, scale=k), rand(G * H, scale=k)) if bias else (None, None)
    w_hr = rand(P, H, scale=k) if proj else None
    args = (x, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    return args, [t for t in args if isinstance(t, torch.Tensor) and t.requires_grad]


def run_with_grads(fn, mode, args, leaves, reverse, seed=1):
    """Outputs of fn and the gradients of every leaf for fixed random output gradients."""
    outputs = [t for t in fn(mode, *args, reverse) if t is not None]
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in outputs]
    loss = sum((o * w).sum() for o, w in zip(outputs, weights))
    return [o.detach() for o in outputs] + list(torch.autograd.grad(loss, leaves))


def assert_close(actual, expected, tolerance, names):
    for name, a, e in zip(names, actual, expected):
        assert a.shape == e.shape and a.dtype == e.dtype, name
        assert not torch.isnan(a).any(), f"{name}: NaN"
        scale = e.abs().max().clamp_min(1e-6)
        error = (a - e).abs().max()
        assert error <= tolerance * scale, f"{name}: error {error:.3g} vs scale {scale:.3g}"


def check_against_reference(mode, reverse, dtype, **case):
    args, leaves = make_case(mode, dtype=dtype, **case)
    expected = run_with_grads(reference.layer, mode, args, leaves, reverse)
    actual = run_with_grads(triton_backend.layer, mode, args, leaves, reverse)
    names = ["output", "h_n"] + (["c_n"] if mode == "LSTM" else [])
    names += [f"grad {i}" for i in range(len(leaves))]
    assert_close(actual, expected, TOLERANCE[dtype], names)


MODES = ["RNN_TANH", "RNN_RELU", "GRU", "LSTM"]
PACKED_LENGTHS = [5, 5, 3, 2, 1]


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference(mode, packed, reverse, bias, dtype):
    lengths = PACKED_LENGTHS if packed else None
    check_against_reference(mode, reverse, dtype, T=5, N=5, C=3, H=7, lengths=lengths,
                            bias=bias)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("proj", [3, 18], ids=["proj<H", "proj>16"])
def test_lstm_projection(proj, packed, reverse, dtype):
    lengths = PACKED_LENGTHS if packed else None
    check_against_reference("LSTM", reverse, dtype, T=5, N=5, C=3, H=7, lengths=lengths,
                            proj=proj)


EDGE_SHAPES = {
    "T=1": dict(T=1, N=3, C=2, H=7),
    "B=1": dict(T=4, N=1, C=2, H=7),
    "H=1": dict(T=3, N=2, C=1, H=1),
    "H=33,two_blocks": dict(T=3, N=2, C=5, H=33),
    "N=19,two_tiles": dict(T=3, N=19, C=2, H=5),
    "N=19,packed": dict(T=4, N=19, C=2, H=5, lengths=[4] * 7 + [3] * 5 + [1] * 7),
}


@needs_triton
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("shape", list(EDGE_SHAPES), ids=list(EDGE_SHAPES))
@pytest.mark.parametrize("mode", MODES)
def test_edge_shapes(mode, shape, reverse):
    check_against_reference(mode, reverse, torch.float64, **EDGE_SHAPES[shape])


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_half_precision_no_worse_than_torch(mode, dtype):
    """Error against float64 at most 2x that of the same math done in `dtype` by torch."""
    case = dict(T=6, N=3, C=4, H=16, lengths=[6, 4, 2], proj=0)
    args, leaves = make_case(mode, dtype=torch.float64, **case)
    exact = run_with_grads(reference.layer, mode, args, leaves, False)
    low_args, low_leaves = make_case(mode, dtype=dtype, **case)
    torch_low = run_with_grads(reference.layer, mode, low_args, low_leaves, False)
    ours = run_with_grads(triton_backend.layer, mode, low_args, low_leaves, False)
    for i, (e, t, o) in enumerate(zip(exact, torch_low, ours)):
        assert o.dtype == dtype and not torch.isnan(o).any(), i
        torch_error = (t.double() - e).abs().max()
        our_error = (o.double() - e).abs().max()
        # The floor covers outputs torch happens to get exactly right in low precision.
        floor = torch.finfo(dtype).eps * e.abs().max()
        assert our_error <= 2 * torch_error + floor, f"tensor {i}: {our_error} vs {torch_error}"


@needs_triton
@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_no_grad_forward_skips_workspace(mode, monkeypatch):
    """Under no_grad the forward kernel is asked for no workspace, although the weights
    require grad (an autograd.Function would still see their requires_grad)."""
    from fastrnn.triton import gru, lstm
    module, name = (gru, "gru_fwd") if mode == "GRU" else (lstm, "lstm_fwd")
    forward, asked = getattr(module, name), []

    def recording(*args, need_workspace):
        asked.append(need_workspace)
        return forward(*args, need_workspace=need_workspace)

    monkeypatch.setattr(module, name, recording)
    args, _ = make_case(mode, T=3, N=2, C=2, H=4, dtype=torch.float64)
    count = 3 if mode == "LSTM" else 2
    with torch.no_grad():
        out = triton_backend.layer(mode, *args, False)
        expected = reference.layer(mode, *args, False)
    assert not out[0].requires_grad and asked == [False]
    assert_close(out[:count], expected[:count], 1e-10, ["output", "h_n", "c_n"])
    triton_backend.layer(mode, *args, False)
    assert asked == [False, True]


@needs_triton
def test_rejects_unsupported_dtype_and_size():
    args, _ = make_case("GRU", T=2, N=2, C=2, H=4, dtype=torch.float64)
    as_int = [a.detach().to(torch.int32) if isinstance(a, torch.Tensor) and a.is_floating_point()
              else a for a in args]
    with pytest.raises(ValueError, match="int32"):
        triton_backend.layer("GRU", *as_int, False)
    big, _ = make_case("RNN_TANH", T=1, N=1, C=1, H=129, dtype=torch.float32)
    with pytest.raises(ValueError, match="hidden_size"):
        triton_backend.layer("RNN_TANH", *big, False)
    with pytest.raises(ValueError, match="mode"):
        triton_backend.layer("LSTM2", *args, False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_unavailable_without_interpreter_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = triton_backend.unavailable_reason()
    assert isinstance(reason, str)
    assert ("TRITON_INTERPRET" in reason) if _HAS_TRITON else ("not installed" in reason)
    if _HAS_TRITON:
        args, _ = make_case("RNN_TANH", T=1, N=1, C=1, H=2, dtype=torch.float32)
        with pytest.raises(RuntimeError, match="CUDA tensors"):
            triton_backend.layer("RNN_TANH", *args, False)
