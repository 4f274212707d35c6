"""The CPU kernel ops directly (torch.ops.fastrnn.*), below the modules.

Each case builds one layer-direction's tensors (padded or packed, forward or reverse, with
or without biases / projection) and checks the ops against fastrnn/reference.py, then the
properties the parity suite cannot see from the modules: opcheck of every op (fake
kernels, schema, autograd registration, torch.compile tracing), gradcheck through the
public ops, bitwise equality across thread counts and runs, and that no uninitialised
memory reaches an output (torch.empty is NaN-filled while the kernels run).
"""
import os
import random
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastrnn import ops, reference

pytestmark = pytest.mark.skipif(
    not ops.has_kernel("CPU"),
    reason=f"the CPU kernels are not built ({ops.LOAD_ERROR or 'no CPU kernel registered'}); "
           "build with: python setup.py build_ext --inplace")

MODES = ("RNN_TANH", "RNN_RELU", "GRU", "LSTM", "LSTM_PROJ")
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "GRU": 3, "LSTM": 4, "LSTM_PROJ": 4}
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
# (T, N, C, H): T=1, N=1 and odd hidden sizes; the last two cross the kernels' tile
# bounds (steps by rows in four row groups, cut inside 8-row blocks; 64 units) and their
# BLAS threshold.
SIZES = ((1, 1, 3, 7), (5, 3, 4, 33), (20, 1, 1, 16), (3, 70, 5, 130), (4, 66, 9, 65))


def make_case(mode, T, N, C, H, dtype, packed, reverse, bias, seed):
    """kwargs of reference.layer (mode normalised) for one random layer-direction, weights
    scaled like torch.nn's initialisation so float32 stays well conditioned at H=130."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, dtype=dtype, generator=gen) * 0.5
    G = GATES[mode]
    P = max(1, H // 2) if mode == "LSTM_PROJ" else H
    if packed:
        rng = random.Random(seed)  # one generator: a fresh one per draw repeats one length
        lengths = sorted((rng.randint(1, T) for _ in range(N)), reverse=True)
        lengths[0] = T
        batch_sizes = torch.tensor([sum(L > t for L in lengths) for t in range(T)])
        x = randn(int(batch_sizes.sum()), C)
    else:
        batch_sizes = None
        x = randn(T, N, C)
    lstm = mode.startswith("LSTM")
    return dict(
        mode="LSTM" if lstm else mode, input=x, batch_sizes=batch_sizes, h0=randn(N, P),
        c0=randn(N, H) if lstm else None, w_ih=randn(G * H, C) / C**0.5,
        w_hh=randn(G * H, P) / P**0.5, b_ih=randn(G * H) if bias else None,
        b_hh=randn(G * H) if bias else None,
        w_hr=randn(P, H) / H**0.5 if mode == "LSTM_PROJ" else None, reverse=reverse)


def public_op(case):
    """The public op's callable and its positional arguments (tensors in case)."""
    c = case
    if c["mode"] == "GRU":
        return torch.ops.fastrnn.gru_layer.default, [c["input"], c["batch_sizes"], c["h0"], c["w_ih"],
                                             c["w_hh"], c["b_ih"], c["b_hh"], c["reverse"]]
    if c["mode"] == "LSTM":
        return torch.ops.fastrnn.lstm_layer.default, [c["input"], c["batch_sizes"], c["h0"], c["c0"],
                                              c["w_ih"], c["w_hh"], c["b_ih"], c["b_hh"],
                                              c["w_hr"], c["reverse"]]
    return torch.ops.fastrnn.rnn_layer.default, [c["input"], c["batch_sizes"], c["h0"], c["w_ih"],
                                         c["w_hh"], c["b_ih"], c["b_hh"],
                                         c["mode"] == "RNN_RELU", c["reverse"]]


GRAD_NAMES = ("input", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr")
WEIGHT_NAMES = ("w_ih", "w_hh", "b_ih", "b_hh", "w_hr")


def grad_tensors(case, names=GRAD_NAMES):
    return [case[n] for n in names if case[n] is not None]


def run_with_grads(fn, case, seed, requiring=GRAD_NAMES, asked=None):
    """Outputs and gradients for a random upstream gradient: the tensors named in
    `requiring` require grad, and the gradients of those in `asked` (default: all of
    them) are returned."""
    case = {k: (v.detach().clone().requires_grad_(k in requiring)
                if isinstance(v, torch.Tensor) and k != "batch_sizes" else v)
            for k, v in case.items()}
    outs = [o for o in fn(case) if o is not None]
    gen = torch.Generator().manual_seed(seed + 1)
    loss = sum((o * torch.randn(o.shape, dtype=torch.float64, generator=gen).to(o.dtype)).sum()
               for o in outs)
    grads = torch.autograd.grad(loss, grad_tensors(case, asked or requiring))
    return [o.detach() for o in outs], list(grads)


def fastrnn_layer(case):
    op, args = public_op(case)
    return op(*args)


def reference_layer(case):
    return reference.layer(**case)


def max_error(actual, expected):
    return (actual.double() - expected).abs().max().item() if expected.numel() else 0.0


def assert_close(actual, expected, dtype, what, own_error=0.0):
    """actual (computed in dtype) against the float64 expected, within TOLERANCE[dtype].
    own_error: what the reference itself loses when run in dtype. Where that alone breaks
    the tolerance, the case is ill-conditioned in dtype and up to twice that error is
    allowed on top: a float32 pre-activation that rounds across zero flips a relu's
    derivative in any implementation (CI met one: RNN_RELU, seed 232332550, 0.085 off in
    float32 for the reference and the kernel alike). Elsewhere the tolerance is unchanged."""
    scale = max(1.0, expected.abs().max().item()) if expected.numel() else 1.0
    err = max_error(actual, expected)
    allowed = TOLERANCE[dtype] * scale
    if own_error > allowed:
        allowed += 2 * own_error
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert err <= allowed, \
        f"{what}: max error {err:.3g} (scale {scale:.3g}, the reference's own {own_error:.3g})"


def assert_close_all(actual, expected, own, dtype, what):
    """assert_close for each of the lists actual and expected, own being the reference's
    results in dtype."""
    for i, (a, e, o) in enumerate(zip(actual, expected, own)):
        assert_close(a, e, dtype, f"{what} {i}", own_error=max_error(o, e))


def cases(limit_sizes=SIZES):
    out = []
    for mode in MODES:
        for i, size in enumerate(limit_sizes):
            for packed in (False, True):
                out.append(pytest.param(mode, size, packed, bool(i % 2), i % 3 != 2,
                                        id=f"{mode}-{'x'.join(map(str, size))}-"
                                           f"{'packed' if packed else 'padded'}-"
                                           f"{'rev' if i % 2 else 'fwd'}"))
    return out


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=("f64", "f32"))
@pytest.mark.parametrize("mode,size,packed,reverse,bias", cases())
def test_matches_reference(mode, size, packed, reverse, bias, dtype):
    seed = random.randrange(2**31)
    case = make_case(mode, *size, torch.float64, packed, reverse, bias, seed)
    ref_out, ref_grads = run_with_grads(reference_layer, case, seed)
    low = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
           for k, v in case.items()}
    out, grads = run_with_grads(fastrnn_layer, low, seed)
    own_out, own_grads = run_with_grads(reference_layer, low, seed)
    assert_close_all(out, ref_out, own_out, dtype, f"(seed {seed}) output")
    assert_close_all(grads, ref_grads, own_grads, dtype, f"(seed {seed}) gradient")


@pytest.mark.parametrize("mode", MODES)
def test_matches_reference_past_one_gemm_pass(mode):
    """float32 products deeper than one pass of the packed GEMM (128): the input projection
    (C=600) and the weight gradients (S=585 rows) carry their sums across passes, the last
    one partial, while each pass prefetches the next pass's B slice."""
    test_matches_reference(mode, (45, 13, 600, 20), True, False, True, torch.float32)


@pytest.mark.parametrize("hidden", (96, 80))
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference_with_whole_weight_strips(mode, hidden):
    """float32 weights whose unit blocks are whole 16-column strips are packed 16x16 blocks
    at a time (csrc/cpu/packed_gemm.cpp): H=96 (blocks of 64 and 32 units, whole panels) and
    H=80 (a last block of 16 units, half a panel for the RNN), with depths of whole blocks
    and a remainder (C=35; P=H, or H/2 with a projection)."""
    test_matches_reference(mode, (3, 5, 35, hidden), False, False, True, torch.float32)


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=("f64", "f32"))
@pytest.mark.parametrize("reverse", (False, True), ids=("fwd", "rev"))
@pytest.mark.parametrize("size", ((40, 30, 6, 20), (12, 70, 6, 70)), ids=("N30", "N70"))
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference_across_projection_chunks(mode, size, reverse, dtype):
    """The forward projects the input a chunk of steps at a time (~256 rows, see
    csrc/cpu/input_projection.h): packed steps cross several chunk bounds in both
    directions, with one row tile per step (N=30: a product per chunk) or two (N=70: a
    product per step and row tile), and a partial unit block (H=70)."""
    test_matches_reference(mode, size, True, reverse, True, dtype)


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=("f64", "f32"))
@pytest.mark.parametrize("reverse", (False, True), ids=("fwd", "rev"))
@pytest.mark.parametrize("size", ((5, 3, 4, 33), (6, 70, 40, 130)), ids=("N3", "N70"))
@pytest.mark.parametrize("mode", MODES)
def test_strided_padded_input(mode, size, reverse, dtype):
    """The forward, and the backward's input weight gradient, read padded input in place
    when its features are contiguous, whatever its step and row strides (batch_first input
    reaches the ops as a transposed view), and copy input whose rows overlap (an expanded
    batch) first. Both against the reference: the transposed view forward and backward
    (bitwise equal to the contiguous input's results too), the expanded input forward."""
    seed = random.randrange(2**31)
    case = make_case(mode, *size, torch.float64, False, reverse, True, seed)
    low = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
           for k, v in case.items()}
    batch_first_view = low["input"].transpose(0, 1).contiguous().transpose(0, 1)
    assert not batch_first_view.is_contiguous()
    ref_out, ref_grads = run_with_grads(reference_layer, case, seed)
    # run_with_grads clones the input, and clone keeps a transposed view's strides.
    out, grads = run_with_grads(fastrnn_layer, dict(low, input=batch_first_view), seed)
    own_out, own_grads = run_with_grads(reference_layer, low, seed)
    assert_close_all(out + grads, ref_out + ref_grads, own_out + own_grads, dtype,
                     f"(seed {seed}) transposed view, result")
    contiguous_out, contiguous_grads = run_with_grads(fastrnn_layer, low, seed)
    for index, (a, b) in enumerate(zip(out + grads, contiguous_out + contiguous_grads)):
        assert torch.equal(a, b), f"(seed {seed}) transposed view, result {index} differs"

    expanded = low["input"][:, :1].expand(low["input"].shape)
    with torch.no_grad():
        out = [o for o in fastrnn_layer(dict(low, input=expanded)) if o is not None]
        ref_out = [o for o in reference_layer(dict(case, input=expanded.double().contiguous()))
                   if o is not None]
        own_out = [o for o in reference_layer(dict(low, input=expanded.contiguous()))
                   if o is not None]
    assert_close_all(out, ref_out, own_out, dtype, f"(seed {seed}) expanded input, output")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("packed,reverse", ((False, False), (True, True), (True, False)))
def test_gradcheck(mode, packed, reverse):
    case = make_case(mode, 4, 3, 2, 5, torch.float64, packed, reverse, True, 7)
    present = [n for n in GRAD_NAMES if case[n] is not None]

    def fn(*tensors):
        c = dict(case, **dict(zip(present, tensors)))
        return tuple(o for o in fastrnn_layer(c) if o is not None)

    inputs = [case[n].clone().requires_grad_(True) for n in present]
    assert torch.autograd.gradcheck(fn, inputs)


class KernelFlags(TorchDispatchMode):
    """Records the flags the kernels are asked for: need_workspace of every *_layer_fwd
    call, (need_grad_input, need_grad_weights, need_grad_state) of every *_layer_bwd call."""

    def __init__(self):
        super().__init__()
        self.workspaces, self.masks = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.name().endswith("_layer_fwd"):
            self.workspaces.append(args[-1])
        if func.name().endswith("_layer_bwd"):
            self.masks.append(tuple(args[-3:]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", MODES)
def test_workspace_only_for_a_graph(mode):
    """Under no_grad the forward kernel is asked for no workspace, although the weights
    (biases and w_hr included) require grad; with grad mode on, for one."""
    case = make_case(mode, 3, 2, 3, 5, torch.float32, False, False, True, 1)
    for name in WEIGHT_NAMES:
        if case[name] is not None:
            case[name].requires_grad_(True)
    for grad_mode in (False, True):
        with torch.set_grad_enabled(grad_mode), KernelFlags() as recorded:
            fastrnn_layer(case)
        assert recorded.workspaces == [grad_mode]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("packed", (False, True), ids=("padded", "packed"))
@pytest.mark.parametrize("requiring,asked,mask", (
    ("all but input", "all", (False, True, True)),   # a first layer: its input is data
    ("input h0 c0", "all", (True, False, True)),     # frozen weights
    ("h0 c0", "all", (False, False, True)),
    ("all but states", "all", (True, True, False)),  # zero initial states, made for the call
    ("all", "input", (True, False, False)),          # torch.autograd.grad(inputs=...)
    ("all", "h0", (False, False, True)),
    ("all", "w_ih", (False, True, False)),
    ("all", "last weight", (False, True, False)),    # the last edge of the node
), ids=("data-input", "frozen-weights", "states-only", "zero-states", "grad-of-input",
        "grad-of-h0", "grad-of-w_ih", "grad-of-last-weight"))
def test_backward_computes_only_wanted_gradients(mode, packed, requiring, asked, mask):
    """The backward kernel is asked only for the input, state and weight gradients the
    graph needs, and the ones it returns are bitwise those of a full backward."""
    case = make_case(mode, 4, 3, 5, 6, torch.float32, packed, False, True, 17)
    present = [n for n in GRAD_NAMES if case[n] is not None]
    names = {"all": present, "all but input": present[1:],
             "all but states": [n for n in present if n not in ("h0", "c0")],
             "last weight": [n for n in present if n in WEIGHT_NAMES][-1:]}
    requiring = names.get(requiring, requiring.split())
    asked = names.get(asked, asked.split())
    asked = [n for n in asked if n in requiring and case[n] is not None]
    _, full = run_with_grads(fastrnn_layer, case, 17)
    full = dict(zip(present, full))
    with KernelFlags() as recorded:
        _, grads = run_with_grads(fastrnn_layer, case, 17, requiring, asked)
    assert recorded.masks == [mask]
    for name, grad in zip(asked, grads):
        assert torch.equal(grad, full[name]), name


def kernel_calls(case):
    """(op, args) for the public op, *_fwd (with workspace) and *_bwd of one case."""
    public, args = public_op(case)
    name = public.name().split("::")[1]
    fwd = getattr(torch.ops.fastrnn, name + "_fwd").default
    bwd = getattr(torch.ops.fastrnn, name + "_bwd").default
    fwd_out = fwd(*args, True)
    gen = torch.Generator().manual_seed(3)
    like = lambda t: torch.randn(t.shape, dtype=t.dtype, generator=gen)
    c = case
    if case["mode"] == "LSTM":
        output, h_n, c_n, ws = fwd_out
        bwd_args = [like(output), like(h_n), like(c_n), c["input"], c["batch_sizes"], c["h0"],
                    c["c0"], c["w_ih"], c["w_hh"], c["b_ih"], c["b_hh"], c["w_hr"], output,
                    ws, c["reverse"]]
    else:
        output, h_n, ws = fwd_out
        bwd_args = [like(output), like(h_n), c["input"], c["batch_sizes"], c["h0"], c["w_ih"],
                    c["w_hh"], c["b_ih"], c["b_hh"], output, ws]
        bwd_args += ([c["mode"] == "RNN_RELU"] if c["mode"] != "GRU" else []) + [c["reverse"]]
    return [(public, args), (fwd, args + [True]), (fwd, args + [False])] + [
        (bwd, bwd_args + list(needs))
        for needs in ((True, True, True), (True, False, False), (False, True, False),
                      (False, False, True))]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("packed", (False, True), ids=("padded", "packed"))
def test_opcheck(mode, packed):
    case = make_case(mode, 3, 2, 3, 5, torch.float64, packed, packed, True, 11)
    for op, args in kernel_calls(case):
        if op.name().endswith("_layer"):
            args = [a.clone().requires_grad_(True)
                    if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("mode", MODES)
def test_public_op_batch_first(mode):
    """batch_first=True: [N,T,C] input gives the time-major call's results and gradients,
    transposed, with no transpose node in the graph (the op swaps inside its own node), and
    the op's node still notices an in-place change of the output it saved. Packed input
    has no batch_first."""
    case = make_case(mode, 5, 3, 4, 6, torch.float64, False, False, True, 31)
    op, args = public_op(case)
    args = [a.clone().requires_grad_() if isinstance(a, torch.Tensor) else a for a in args]
    x_bf = args[0].detach().transpose(0, 1).contiguous().requires_grad_()
    leaves = [a for a in args[1:] if isinstance(a, torch.Tensor)]
    time_major = op(*args)
    batch_first = op(x_bf, *args[1:], True)
    assert batch_first[0].shape == time_major[0].transpose(0, 1).shape
    assert "Transpose" not in batch_first[0].grad_fn.name()
    gen = torch.Generator().manual_seed(7)
    upstream = [torch.randn(o.shape, dtype=o.dtype, generator=gen) for o in time_major]
    expected = torch.autograd.grad(time_major, [args[0]] + leaves, upstream)
    actual = torch.autograd.grad(batch_first, [x_bf] + leaves,
                                 [upstream[0].transpose(0, 1)] + upstream[1:])
    torch.testing.assert_close(batch_first[0], time_major[0].transpose(0, 1))
    torch.testing.assert_close(actual[0], expected[0].transpose(0, 1))
    for a, e in zip(list(batch_first[1:]) + list(actual[1:]),
                    list(time_major[1:]) + list(expected[1:])):
        torch.testing.assert_close(a, e)
    with torch.no_grad():
        torch.testing.assert_close(op(x_bf, *args[1:], True)[0], time_major[0].transpose(0, 1))
    torch.library.opcheck(op, [x_bf] + args[1:] + [True])

    output = op(x_bf, *args[1:], True)[0]
    output.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        output.sum().backward()

    op, packed_args = public_op(make_case(mode, 5, 3, 4, 6, torch.float64, True, False, True, 31))
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode), pytest.raises(ValueError, match="batch_first"):
            op(*packed_args, True)


def grad_output_layouts(g):
    """{name: a gradient in that layout}, holding g's values except "expanded", which
    holds g's first element everywhere. Autograd hands a batch_first output's gradient over
    transposed and output.sum()'s expanded; the ops check only the element count, so a
    flat or float64 gradient must read the same too."""
    every_other = torch.empty(*g.shape[:-1], 2 * g.shape[-1], dtype=g.dtype)[..., ::2]
    every_other.copy_(g)
    layouts = {"contiguous": g, "columns_strided": every_other, "flat": g.reshape(-1),
               "float64": g.double(),
               "expanded": g.reshape(-1)[:1].reshape([1] * g.dim()).expand(g.shape)}
    if g.dim() == 3:
        layouts["transposed"] = g.transpose(0, 1).contiguous().transpose(0, 1)
    return layouts


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("packed", (False, True), ids=("padded", "packed"))
def test_backward_reads_grad_output_in_any_layout(mode, packed):
    case = make_case(mode, 5, 3, 4, 6, torch.float32, packed, packed, True, 23)
    bwd, args = kernel_calls(case)[3]  # every gradient wanted
    for name, g in grad_output_layouts(args[0]).items():
        assert g.is_contiguous() == (name in ("contiguous", "flat", "float64")), name
        expected = bwd(g.to(args[0].dtype).contiguous(), *args[1:])
        actual = bwd(g, *args[1:])
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert torch.equal(a, e), f"{name} grad_output: result {index} differs"


def all_results(mode, size, packed, reverse):
    case = make_case(mode, *size, torch.float32, packed, reverse, True, 5)
    out, grads = run_with_grads(fastrnn_layer, case, 5)
    return out + grads


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("packed", (False, True), ids=("padded", "packed"))
def test_bitwise_across_threads_and_runs(mode, packed):
    size = (6, 70, 40, 130)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = all_results(mode, size, packed, packed)
        torch.set_num_threads(2)
        two = all_results(mode, size, packed, packed)
        again = all_results(mode, size, packed, packed)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(one, two, again):
        assert torch.equal(a, b), "1 thread and 2 threads differ"
        assert torch.equal(b, c), "two runs differ"


@pytest.mark.parametrize("packed", (False, True), ids=("padded", "packed"))
@pytest.mark.parametrize("mode", MODES)
def test_large_weights_split_units(mode, packed):
    """Above 1 MiB of W_hh (H=520 for every cell) the steps go by units rather than by
    rows, in two row tiles at N=70, and the weights are packed by both threads
    (csrc/cpu/step_share.h). H=520 being a multiple of 8, the LSTM's and GRU's backward
    tiles pack dg^T for the weight gradients as they compute it, and the GRU's W_hh
    gradient takes its r and z rows from dgi's pack (csrc/cpu/gru.cpp). Against the
    reference with two threads, packed input in reverse too, and bitwise with one. The
    smaller SIZES go by rows."""
    size = (4, 70, 24, 520)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        test_matches_reference(mode, size, packed, packed, True, torch.float32)
        two = all_results(mode, size, packed, packed)
        torch.set_num_threads(1)
        one = all_results(mode, size, packed, packed)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two):
        assert torch.equal(a, b), "1 thread and 2 threads differ"


def avx512_kernel_runs():
    """Whether float32 products run on packed_gemm's AVX-512 kernel (csrc/cpu/packed_gemm.h)
    in this process."""
    if os.environ.get("FASTRNN_NO_AVX512"):
        return False
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return " avx512f" in cpuinfo.read()
    except OSError:
        return False


@pytest.mark.skipif(not avx512_kernel_runs(), reason="float32 products are not on the AVX-512 "
                                                      "kernel here (no AVX-512F, or "
                                                      "FASTRNN_NO_AVX512 set)")
@pytest.mark.parametrize("hidden", (40, 70, 130))
# Not LSTM_PROJ: its h_t @ W_hr^T goes through gemm_rm, whose BLAS may round differently for
# different row counts.
@pytest.mark.parametrize("mode", [mode for mode in MODES if mode != "LSTM_PROJ"])
def test_leading_rows_alone_match_the_whole_batch(mode, hidden):
    """On the AVX-512 kernel every element of a product is the same multiply-adds in the
    same order whatever the row count, so the first r rows of a batch of 16 (two whole
    8-row blocks) run alone give exactly their results in the batch, for r = 1..15. Their
    last r % 8 rows go through the partial-block kernels, two panels at a time up to four
    rows: a wrong column, mask or panel there changes the bits. hidden=40 makes G*H columns
    that end in a partial panel, in odd and even panel counts; 70 adds a unit block of 6
    units (G*6 columns); 130 a second pass over the depth of the recurrence's products."""
    case = make_case(mode, 5, 16, 7, hidden, torch.float32, False, False, True, 11)
    whole = fastrnn_layer(case)
    for rows in range(1, 16):
        part = dict(case, input=case["input"][:, :rows], h0=case["h0"][:rows],
                    c0=None if case["c0"] is None else case["c0"][:rows])
        for name, alone, batch in zip(("output", "h_n", "c_n"), fastrnn_layer(part), whole):
            in_batch = batch[:, :rows] if name == "output" else batch[:rows]
            assert torch.equal(alone, in_batch), f"first {rows} rows alone: {name} differs"


@pytest.fixture
def nan_filled_empty():
    """torch.empty (and at::empty in the kernels) returns NaN-filled memory."""
    from torch.utils import deterministic
    was_det, was_fill = torch.are_deterministic_algorithms_enabled(), \
        deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(was_det)
    deterministic.fill_uninitialized_memory = was_fill


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=("f64", "f32"))
@pytest.mark.parametrize("mode,size,packed,reverse,bias", cases(SIZES[:2] + SIZES[3:4]))
def test_no_unwritten_memory(nan_filled_empty, mode, size, packed, reverse, bias, dtype):
    assert_every_result_written(make_case(mode, *size, dtype, packed, reverse, bias, 13))


def assert_every_result_written(case):
    """No NaN in any result of the kernel calls of `case` (run under nan_filled_empty)."""
    for op, args in kernel_calls(case):
        for i, r in enumerate(op(*args)):
            assert not r.isnan().any(), f"{op.name()} result {i} has NaN"


@pytest.mark.parametrize("mode", ("GRU", "LSTM"))
def test_no_unwritten_memory_in_pooled_workspaces(nan_filled_empty, mode):
    """Workspaces of 1 MiB and more come from a pool (csrc/cpu/workspace_pool.h); a block
    taken back holds the previous call's values unless refilled with NaN, so the second
    round here would hide a workspace row the kernel forgot to write."""
    case = make_case(mode, 8, 70, 5, 130, torch.float32, True, True, True, 13)
    for _ in range(2):
        assert_every_result_written(case)


# (T, N, C, H) whose float32 buffers reach the 32 MiB from which the kernels write them
# with streaming stores (csrc/cpu/streamed_stores.h): the forward's workspace (S*5H floats
# for the LSTM, S*4H for the GRU) and the backward's pack of dg^T (S*4H, S*3H), packed by
# the recurrence's tiles where the steps go by units (W_hh above 1 MiB: H=264 and 296,
# multiples of 8), after it where they go by rows (H=288 and 250, and the LSTM with a
# projection; its columns, 3H or 4H, a multiple of 8). LSTM workspace rows 5280 or 5000
# bytes apart and GRU ones 4736 apart are mostly not 64-byte aligned, the last unit block
# is partial, and at N=63 the steps start at odd rows: the streamed copies' heads and
# tails run too.
STREAMED_CASES = [
    pytest.param(mode, size, id=f"{mode}-{'x'.join(map(str, size))}")
    for mode, size in (("GRU", (150, 63, 5, 296)), ("GRU", (152, 64, 5, 288)),
                       ("LSTM", (127, 63, 5, 264)), ("LSTM", (132, 64, 5, 250)),
                       ("LSTM_PROJ", (127, 63, 5, 264)))]


@pytest.mark.parametrize("mode,size", STREAMED_CASES)
def test_matches_reference_with_streamed_buffers(mode, size):
    test_matches_reference(mode, size, False, size[1] % 2 == 0, True, torch.float32)


@pytest.mark.parametrize("mode,size", STREAMED_CASES)
def test_no_unwritten_memory_in_streamed_buffers(nan_filled_empty, mode, size):
    assert_every_result_written(make_case(mode, *size, torch.float32, False, False, True, 13))


WORKSPACE_REUSE_CHILD = """
import torch
from tests.test_cpu_kernels import kernel_calls, make_case
for mode in ("GRU", "LSTM"):
    op, args = kernel_calls(make_case(mode, 8, 70, 5, 130, torch.float32, False, False, True, 3))[1]
    op_large, args_large = kernel_calls(make_case(mode, 16, 70, 5, 130, torch.float32, False,
                                                  False, True, 3))[1]
    first = op(*args)
    address = first[-1].data_ptr()
    del first
    again = op(*args)
    assert again[-1].data_ptr() == address, "the freed workspace was not reused"
    larger = op_large(*args_large)
    start, end = larger[-1].data_ptr(), larger[-1].data_ptr() + larger[-1].nbytes
    assert not start <= address < end, "a workspace in use was handed out again"
    for a, b in zip(again, op(*args)):
        assert torch.equal(a, b)
print("ok")
"""


def test_workspace_memory_is_reused():
    """A freed workspace's memory serves the next forward, memory still in use is never
    handed out again, and results do not depend on which memory they got. In a child
    process, whose pool holds nothing from other tests. (That reuse saves time is the
    benchmarks' business: see csrc/cpu/workspace_pool.h.)"""
    child = subprocess.run([sys.executable, "-c", WORKSPACE_REUSE_CHILD],
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0 and child.stdout.strip() == "ok", child.stderr[-3000:]


def test_nan_propagates():
    case = make_case("GRU", 3, 2, 3, 5, torch.float32, False, False, True, 1)
    case["input"][1, 0, 0] = float("nan")
    output, h_n = fastrnn_layer(case)
    assert output[1:, 0].isnan().all() and not output[:, 1].isnan().any()


def test_rejects_other_dtypes():
    case = make_case("GRU", 2, 1, 2, 3, torch.float32, False, False, True, 1)
    case = {k: (v.half() if isinstance(v, torch.Tensor) else v) for k, v in case.items()}
    with pytest.raises(RuntimeError, match="float32 and float64, got Half"):
        fastrnn_layer(case)


SERIAL_PROBE_SOURCE = r"""
#include <ATen/Parallel.h>
#include <vector>

#include "cpu/step_share.h"

// The thread that ran each of ntiles parallel_tiles tiles, inside the scopes of
// SerialIfSmall(outer) and then SerialIfSmall(inner) (a negative count: no such scope).
std::vector<int64_t> tile_threads(int64_t outer, int64_t inner, int64_t ntiles) {
  using fastrnn::cpu::SerialIfSmall;
  std::vector<int64_t> threads(ntiles, -1);
  auto run = [&] {
    fastrnn::cpu::parallel_tiles(ntiles, int64_t(1) << 30,
                                 [&](int64_t i) { threads[i] = at::get_thread_num(); });
  };
  auto in_inner = [&] {
    if (inner < 0) return run();
    const SerialIfSmall scope(inner);
    run();
  };
  if (outer < 0) {
    in_inner();
  } else {
    const SerialIfSmall scope(outer);
    in_inner();
  }
  return threads;
}
"""


@pytest.fixture(scope="module")
def serial_probe(tmp_path_factory):
    """csrc/cpu/step_share.h's parallel_tiles and SerialIfSmall, built into a small
    extension of their own (~20 s)."""
    from torch.utils.cpp_extension import load_inline
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return load_inline("fastrnn_serial_probe", cpp_sources=[SERIAL_PROBE_SOURCE],
                       functions=["tile_threads"],
                       extra_include_paths=[os.path.join(root, "csrc")],
                       extra_cflags=["-O1", "-fopenmp"],
                       build_directory=str(tmp_path_factory.mktemp("serial_probe")))


def test_small_calls_run_on_the_calling_thread(serial_probe):
    """A layer call whose forward products total under 2^22 multiply-adds runs every
    parallel_tiles tile on the calling thread (SerialIfSmall); a larger one, a call
    nested in a small one's scope aside, spreads them over both threads, and so does the
    next call once the small one's scope has ended."""
    threads = torch.get_num_threads()
    small, large, none = (1 << 22) - 1, 1 << 22, -1
    try:
        torch.set_num_threads(2)
        used = lambda outer, inner: set(serial_probe.tile_threads(outer, inner, 4))
        assert used(none, none) == {0, 1}
        assert used(small, none) == {0}
        assert used(large, none) == {0, 1}
        assert used(small, large) == {0}, "a call inside a small one's scope went parallel"
        assert used(large, small) == {0}
        assert used(none, none) == {0, 1}, "the serial state outlived its scope"
    finally:
        torch.set_num_threads(threads)


def test_portable_float32_path_without_avx512():
    """The float32 GEMMs run on an AVX-512 kernel where the CPU has one (CI's does), so the
    portable path (loops and BLAS) that other CPUs take is tested here with the kernel
    switched off (FASTRNN_NO_AVX512, read once per process): reference agreement and
    bitwise determinism across threads, in a child process."""
    env = dict(os.environ, FASTRNN_NO_AVX512="1", FASTRNN_TEST_BACKENDS="cpu")
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "(matches_reference and f32) or past_one_gemm_pass or bitwise"],
        env=env, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    assert " passed" in child.stdout
