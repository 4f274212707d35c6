"""One named test per bug the fuzzer (test_fuzz.py) or the robustness tests found, on
every backend, so a bug that was fixed stays fixed whatever examples the fuzzer draws.

Each test says where the bug was found, what went wrong and where it was (or is to be)
fixed. The cases are the fuzzer's own falsifying examples, shrunk by hypothesis and then
by hand.
"""
import pytest
import torch
from torch import nn

import fastrnn
from test_fuzz import assert_close, check_layer_case


def test_relu_backward_passes_gradient_through_nan_like_torch_nn(backend, device):
    """Found by test_fuzz (RNN_RELU with a NaN input). torch.nn's relu backward is
    threshold_backward: the gradient passes wherever NOT (y <= 0), so a NaN output passes
    it on; kernels that pass it only where y > 0 zero it there, and every gradient
    upstream of that step comes out finite but wrong (input grads off by ~1).
    Fix: the relu mask `y > 0` -> `!(y <= 0)` in csrc/cpu/rnn.cpp (backward row),
    fastrnn/triton/rnn.py (rnn backward kernel) and csrc/cuda/rnn_kernels.cuh."""
    torch.manual_seed(0)
    expected_module = nn.RNN(2, 3, nonlinearity="relu", dtype=torch.float64).to(device)
    fused = fastrnn.FusedRNN(2, 3, nonlinearity="relu", dtype=torch.float64,
                             backend=backend).to(device)
    fused.load_state_dict(expected_module.state_dict())
    x = torch.randn(3, 1, 2, dtype=torch.float64, device=device)
    x[1, 0, 0] = float("nan")

    def outputs_and_grads(module):
        leaf = x.clone().requires_grad_()
        output, h_n = module(leaf)
        grads = torch.autograd.grad(output.sum() + h_n.sum(), [leaf, *module.parameters()])
        return [output, h_n], grads

    expected_outputs, expected_grads = outputs_and_grads(expected_module)
    outputs, grads = outputs_and_grads(fused)
    for name, actual, expected in zip(["output", "h_n"], outputs, expected_outputs):
        assert_close(name, actual, expected, 1e-10)
    names = ["grad input"] + [f"grad {name}" for name, _ in fused.named_parameters()]
    for name, actual, expected in zip(names, grads, expected_grads):
        assert_close(name, actual, expected, 1e-10)


def test_relu_nan_input_fuzz_case(backend, device):
    """The fuzzer's shrunk example for the bug above, through the whole fuzz property
    (padded batch of 15, so several rows stay finite beside the NaN one)."""
    check_layer_case(dict(
        mode="RNN_RELU", hidden=15, input_size=1, steps=1, batch=15, num_layers=1,
        dtype=torch.float64, bidirectional=False, batch_first=False, bias=False,
        proj_size=0, format="padded", hx_given=False, input_layout="contiguous",
        hx_layout="contiguous", noncontiguous_weights=False, nonfinite="nan", dropout=0.0,
        seed=0), backend, device)


def test_relu_forward_keeps_nan_like_torch_nn(backend, device):
    """Found by test_fuzz on triton (RNN_RELU with an infinite input: inf - inf in the
    next step's W_hh h makes a NaN pre-activation). torch.relu(NaN) is NaN; a relu written
    as max(pre, 0) with NaN-ignoring max (tl.maximum's default, fmax) silently turns it
    into 0, and the sequence carries on as if the input were finite.
    Fix: fastrnn/triton/rnn.py forward, `tl.maximum(pre, 0.0)` ->
    `tl.where(pre < 0.0, 0.0, pre)` (csrc/cpu and csrc/cuda already use `pre < 0 ? 0 : pre`)."""
    torch.manual_seed(0)
    expected_module = nn.RNN(2, 3, nonlinearity="relu", dtype=torch.float64).to(device)
    fused = fastrnn.FusedRNN(2, 3, nonlinearity="relu", dtype=torch.float64,
                             backend=backend).to(device)
    fused.load_state_dict(expected_module.state_dict())
    for special in (float("nan"), float("inf")):
        x = torch.randn(3, 1, 2, dtype=torch.float64, device=device)
        x[0, 0, 0] = special
        with torch.no_grad():
            expected_output, expected_h_n = expected_module(x)
            output, h_n = fused(x)
        assert expected_output.isnan().any()  # the case really makes a NaN
        assert_close("output", output, expected_output, 1e-10)
        assert_close("h_n", h_n, expected_h_n, 1e-10)


def test_relu_infinite_input_fuzz_case(backend, device):
    """The fuzzer's example for the bug above, through the whole fuzz property (its
    gradients also trip the relu backward bug, so it needs both fixes)."""
    check_layer_case(dict(
        mode="RNN_RELU", hidden=37, input_size=3, steps=5, batch=2, num_layers=3,
        dtype=torch.float64, bidirectional=True, batch_first=False, bias=False, proj_size=0,
        format="unbatched", hx_given=True, input_layout="transposed",
        hx_layout="transposed", noncontiguous_weights=True, nonfinite="inf", dropout=0.0,
        seed=609), backend, device)


def test_single_layer_final_states_are_fresh_tensors(backend, device):
    """Found by test_robustness (long-sequence and repeated-call tests, cpu LSTM) while the
    single-layer fast path in fastrnn/stack.py returned `c.unsqueeze_(0)`: the in-place
    unsqueeze bumped the version of a tensor the C++ LSTM autograd had saved, so backward
    raised "modified by an inplace operation". Fixed in stack.py (torch.stack copies).
    The final states must also stay non-views, since users call hidden.detach_(), also
    where the compiled backends hand them out without a copy (csrc/stack.cpp)."""
    for module_class in (fastrnn.FusedLSTM, fastrnn.FusedGRU, fastrnn.FusedRNN):
        module = module_class(3, 4, backend=backend, dtype=torch.float64).to(device)
        x = torch.randn(5, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
        output, hidden = module(x)
        states = hidden if isinstance(hidden, tuple) else (hidden,)
        (output.sum() + sum(s.sum() for s in states)).backward()
        assert x.grad is not None and x.grad.isfinite().all()
        with torch.no_grad():
            _, hidden = module(x)
        for state in states + (hidden if isinstance(hidden, tuple) else (hidden,)):
            assert state._base is None
            state.detach_()


def test_double_backward_raises_instead_of_silently_dropping_terms(backend, device):
    """Found reviewing the C++ autograd glue (csrc/autograd.cpp). With
    create_graph=True, the fused kernels' gradients came back attached to torch's
    "autograd not implemented" fallback, which only warns: differentiating them again gave
    a finite, wrong second derivative. The fused kernels have no double backward, so the
    second differentiation must raise (as Triton's @once_differentiable does).
    torch.nn's CPU layers do support it, as does the pure-PyTorch reference backend."""
    x = torch.randn(4, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    for cls in (fastrnn.FusedRNN, fastrnn.FusedGRU, fastrnn.FusedLSTM):
        module = cls(3, 5, dtype=torch.float64, backend=backend).to(device)
        output, _ = module(x)
        (grad_input,) = torch.autograd.grad(output.pow(2).sum(), x, create_graph=True)
        if backend == "reference":
            grad_input.sum().backward()  # a real second derivative
            continue
        with pytest.raises(RuntimeError, match="no double backward|differentiate twice"):
            grad_input.sum().backward()
