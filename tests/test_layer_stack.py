"""fastrnn::layer_stack (csrc/stack.cpp), the one-call layer loop of the compiled
backends: torch.library.opcheck, equality with the Python loop of fastrnn/stack.py that
the other backends run, and its own argument errors. (The modules' parity with torch.nn
through it is test_parity.py's job.)"""
import pytest
import torch
from torch import nn

from fastrnn import ops, reference, stack

pytestmark = pytest.mark.skipif(ops.LOAD_ERROR is not None, reason="fastrnn._C not built")

CASES = {  # id: (torch.nn class, constructor kwargs)
    "gru-2layer-bidir": (nn.GRU, dict(num_layers=2, bidirectional=True)),
    "lstm-proj-bidir": (nn.LSTM, dict(num_layers=2, bidirectional=True, proj_size=2)),
    "rnn-relu-nobias": (nn.RNN, dict(nonlinearity="relu", bias=False)),
    "lstm-1layer": (nn.LSTM, {}),  # single final states: handed out without a copy
}


def module_and_input(case, batch_first):
    cls, kwargs = CASES[case]
    torch.manual_seed(0)
    module = cls(3, 4, batch_first=batch_first, dtype=torch.float64, **kwargs)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    return module, x


def stack_args(module, x, hx, batch_first):
    mode = module.mode if not isinstance(module, nn.RNN) else (
        "RNN_RELU" if module.nonlinearity == "relu" else "RNN_TANH")
    h, c = hx if isinstance(hx, tuple) else (hx, None)
    return [mode, x, None, h, c, list(module._flat_weights), module.num_layers,
            module.bidirectional, batch_first, module.bias, module.proj_size > 0, 0.0, False]


def initial_state(module, batch):
    states = module.num_layers * (2 if module.bidirectional else 1)
    size = module.proj_size or module.hidden_size
    h = torch.randn(states, batch, size, dtype=torch.float64)
    if isinstance(module, nn.LSTM):
        return h, torch.randn(states, batch, module.hidden_size, dtype=torch.float64)
    return h


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch_first", (False, True), ids=("time_major", "batch_first"))
@pytest.mark.parametrize("given_state", (False, True), ids=("zeros", "hx"))
def test_opcheck(case, batch_first, given_state):
    module, x = module_and_input(case, batch_first)
    hx = initial_state(module, x.shape[0 if batch_first else 1]) if given_state else None
    args = stack_args(module, x.requires_grad_(), hx, batch_first)
    torch.library.opcheck(torch.ops.fastrnn.layer_stack.default, args)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch_first", (False, True), ids=("time_major", "batch_first"))
def test_matches_the_python_loop_with_dropout_masks(case, batch_first):
    """Same outputs and final states as fastrnn/stack.py's loop over the same kernels,
    including a seeded training-mode dropout between layers."""
    module, x = module_and_input(case, batch_first)
    hx = initial_state(module, x.shape[0 if batch_first else 1])
    args = stack_args(module, x, hx, batch_first)
    args[-2:] = [0.4, True]
    h, c = hx if isinstance(hx, tuple) else (hx, None)
    torch.manual_seed(1)
    expected = stack.run(reference.layer, args[0], x, None, h, c, args[5], batch=h.shape[1],
                         num_layers=module.num_layers, bidirectional=module.bidirectional,
                         batch_first=batch_first, has_bias=module.bias,
                         has_proj=module.proj_size > 0, dropout=0.4, training=True)
    torch.manual_seed(1)
    actual = ops.layer_stack(*args)
    for name, a, e in zip(("output", "h_n", "c_n"), actual, expected):
        if e is None:
            assert a.numel() == 0, f"{name}: expected an empty tensor for this cell"
            continue
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12, msg=name)


def test_rejects_bad_arguments_with_clear_errors():
    module, x = module_and_input("gru-2layer-bidir", False)
    args = stack_args(module, x, None, False)
    with pytest.raises(ValueError, match="unknown mode 'LSTMX'"):
        ops.layer_stack("LSTMX", *args[1:])
    with pytest.raises(ValueError, match="expected 16 weights"):
        ops.layer_stack(*args[:5], args[5][:-1], *args[6:])
    packed = [args[0], x.reshape(-1, 3), torch.tensor([2] * 5)] + args[3:]
    with pytest.raises(RuntimeError, match="h0 is required for packed input"):
        ops.layer_stack(*packed)
    with pytest.raises(RuntimeError, match="padded input must be 3-D, got 2-D"):
        ops.layer_stack(args[0], x[0], *args[2:])
    with pytest.raises(RuntimeError, match=r"h0 must be \[4, N, 4\]"):
        ops.layer_stack(*args[:3], torch.zeros(2, 2, 4, dtype=torch.float64), *args[4:])
    with pytest.raises(RuntimeError, match="h0 must have the input's dtype and device"):
        ops.layer_stack(*args[:3], torch.zeros(4, 2, 4), *args[4:])
    with pytest.raises(ValueError, match="c0 is for LSTM only"):
        ops.layer_stack(*args[:4], torch.zeros(4, 2, 4, dtype=torch.float64), *args[5:])
    with pytest.raises(RuntimeError, match="every weight must have the input's dtype"):
        ops.layer_stack(args[0], x.float(), *args[2:])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("grad_mode", ("no_grad", "inference_mode"))
def test_batch_first_output_without_a_graph_is_no_view(case, grad_mode):
    """With no graph recorded the stack transposes below autograd (csrc/stack.cpp): the
    output is then a [N,T,P] tensor with torch.nn's values and strides that is no view (as
    nn.GRU's and nn.RNN's are not; nn.LSTM's oneDNN path returns a view), and stays usable
    in place and in a later graph."""
    module, x = module_and_input(case, batch_first=True)
    with getattr(torch, grad_mode)():
        expected = module(x)[0]
        output = ops.layer_stack(*stack_args(module, x, None, True))[0]
        torch.testing.assert_close(output, expected)
        assert output.stride() == expected.stride()
        assert not output._is_view()
        output.add_(1)  # in place, as on torch.nn's output
        torch.testing.assert_close(output, expected + 1)
    if grad_mode == "no_grad":  # inference tensors stay out of graphs, as torch.nn's do
        weight = torch.ones(output.shape[-1], dtype=output.dtype, requires_grad=True)
        output.mul_(weight).sum().backward()
        torch.testing.assert_close(weight.grad, expected.add(1).sum((0, 1)))
