"""fastrnn._C's functions, the entry eager calls take to the public ops (fastrnn/ops.py,
csrc/python_entry.cpp): the same results as torch.ops bit for bit, autograd through them,
and torch.ops kept wherever only it does the right thing."""
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence
from torch.overrides import TorchFunctionMode

from fastrnn import FusedGRU, FusedLSTMCell, ops

from test_layer_stack import CASES, initial_state, module_and_input, stack_args

pytestmark = pytest.mark.skipif(ops.LOAD_ERROR is not None, reason="fastrnn._C not built")


def outputs_and_grads(call, args, leaves):
    """call(*args)'s non-empty outputs and the gradients of a random projection of them
    with respect to `leaves` (the same projection for every call: seeded)."""
    outputs = [o for o in call(*args) if o.numel()]
    torch.manual_seed(2)
    loss = sum((o * torch.randn_like(o)).sum() for o in outputs)
    return [o.detach() for o in outputs] + list(torch.autograd.grad(loss, leaves))


def assert_same_as_torch_ops(name, make_args):
    """make_args() -> (args, leaves), fresh leaves on every call."""
    eager = outputs_and_grads(getattr(ops._C, name), *make_args())
    boxed = outputs_and_grads(getattr(torch.ops.fastrnn, name).default, *make_args())
    assert len(eager) == len(boxed)
    for index, (a, e) in enumerate(zip(eager, boxed)):
        assert torch.equal(a, e), f"{name}: result {index} differs from torch.ops'"


def leaf(tensor):
    return tensor.detach().clone().requires_grad_()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch_first", (False, True), ids=("time_major", "batch_first"))
def test_layer_stack(case, batch_first):
    module, x = module_and_input(case, batch_first)
    hx = initial_state(module, x.shape[0 if batch_first else 1])

    def make_args():
        states = [leaf(s) for s in (hx if isinstance(hx, tuple) else (hx,))]
        args = stack_args(module, leaf(x), tuple(states) if len(states) == 2 else states[0],
                          batch_first)
        args[5] = [leaf(w) for w in args[5]]
        return args, [args[1], *states, *args[5]]

    assert_same_as_torch_ops("layer_stack", make_args)


@pytest.mark.parametrize("packed", (False, True), ids=("padded", "packed"))
@pytest.mark.parametrize("name", ("rnn_layer", "gru_layer", "lstm_layer"))
def test_layer_ops(name, packed):
    """One layer-direction (the *Cell classes' path), reversed, LSTM with a projection."""
    gates = {"rnn_layer": 1, "gru_layer": 3, "lstm_layer": 4}[name]
    H, P, C, N = 5, (3 if name == "lstm_layer" else 5), 2, 3
    torch.manual_seed(0)
    x = torch.randn(4, N, C, dtype=torch.float64)
    batch_sizes = None
    if packed:
        packed_x = pack_padded_sequence(x, torch.tensor([4, 3, 1]))
        x, batch_sizes = packed_x.data, packed_x.batch_sizes
    tensors = dict(h0=torch.randn(N, P), c0=torch.randn(N, H), w_ih=torch.randn(gates * H, C),
                   w_hh=torch.randn(gates * H, P), b_ih=torch.randn(gates * H),
                   b_hh=torch.randn(gates * H), w_hr=torch.randn(P, H))
    tensors = {k: v.double() for k, v in tensors.items()}

    def make_args():
        t = {k: leaf(v) for k, v in tensors.items()}
        x_leaf = leaf(x)
        common = (t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"])
        if name == "lstm_layer":
            args = (x_leaf, batch_sizes, t["h0"], t["c0"], *common, t["w_hr"], True, False)
            return args, [x_leaf, *t.values()]
        # relu, reverse, batch_first (fastrnn._C's entries take every argument)
        flags = (False, True, False) if name == "rnn_layer" else (True, False)
        args = (x_leaf, batch_sizes, t["h0"], *common, *flags)
        return args, [x_leaf, t["h0"], *common]

    assert_same_as_torch_ops(name, make_args)


def test_eager_module_calls_skip_torch_ops(monkeypatch):
    """Parameters (a Tensor subclass with __torch_function__ disabled) must not send
    plain eager calls back to the boxed path."""
    def boxed(*args):
        raise AssertionError("an eager call went through torch.ops")

    for name in ("layer_stack", "lstm_layer"):
        monkeypatch.setattr(ops._BoxedOps, name, boxed)
    FusedGRU(1, 4, backend="cpu")(torch.randn(3, 2, 1))
    FusedLSTMCell(1, 4, backend="cpu")(torch.randn(2, 1))


class RecordingMode(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(func)
        return func(*args, **(kwargs or {}))


def test_torch_function_modes_see_the_ops():
    """Under a torch function mode (torch.export's non-strict tracing is one) the calls
    must go through torch.ops, the only entry that honours __torch_function__."""
    with RecordingMode() as mode:
        FusedGRU(1, 4, backend="cpu")(torch.randn(3, 2, 1))
        FusedLSTMCell(1, 4, backend="cpu")(torch.randn(2, 1))
    assert torch.ops.fastrnn.layer_stack.default in mode.seen
    assert torch.ops.fastrnn.lstm_layer.default in mode.seen


def test_the_profiler_sees_eager_calls():
    """The eager entry calls the ops through the dispatcher, so profiles name them."""
    module = FusedGRU(1, 4, backend="cpu")
    x = torch.randn(3, 2, 1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        module(x)
    names = {event.name for event in prof.events()}
    assert {"fastrnn::layer_stack", "fastrnn::gru_layer"} <= names, sorted(names)
