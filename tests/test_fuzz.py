"""Property-based fuzzing of every backend against torch.nn (hypothesis).

Each example draws a whole configuration: cell, num_layers, bidirectional, batch_first,
bias, proj_size, sizes (1 and odd primes favoured), dtype, input format (padded, unbatched,
or packed with unsorted lengths), hx given or not, strided inputs and states (transposed,
sliced, broadcast), non-contiguous weights, training-mode dropout, sizes across the CPU
kernels' 64-wide tiles, and a NaN or infinity in the input. Outputs, final states and the
gradients of the input, the states and every parameter must match torch.nn run in
float64 on the same values (in the same dtype for non-finite inputs): float64 to 1e-10
and float32 to 1e-5, relative to the largest magnitude (the parity suite's tolerances),
with NaN and infinities in the same places.

Example counts come from the hypothesis profile (conftest.py): 'ci' is derandomised (the
same examples every run, ~50 per backend), FASTRNN_FUZZ_PROFILE=long explores far more.
An interpreter-backed backend runs a tenth of them. Every bug found here gets a named
test in test_regressions.py.
"""
import warnings

import pytest
import torch
from hypothesis import given, note, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn
from conftest import SAMPLED_BACKENDS

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
LAYER_CLASSES = {"RNN_TANH": (nn.RNN, fastrnn.FusedRNN, {}),
                 "RNN_RELU": (nn.RNN, fastrnn.FusedRNN, {"nonlinearity": "relu"}),
                 "GRU": (nn.GRU, fastrnn.FusedGRU, {}),
                 "LSTM": (nn.LSTM, fastrnn.FusedLSTM, {})}
CELL_CLASSES = {"RNN_TANH": (nn.RNNCell, fastrnn.FusedRNNCell, {}),
                "RNN_RELU": (nn.RNNCell, fastrnn.FusedRNNCell, {"nonlinearity": "relu"}),
                "GRU": (nn.GRUCell, fastrnn.FusedGRUCell, {}),
                "LSTM": (nn.LSTMCell, fastrnn.FusedLSTMCell, {})}

# 1, odd primes, and anything small: kernels tile by powers of two, so primes leave
# ragged edges in every tile.
SIZES = st.one_of(st.sampled_from([1, 2, 3, 5, 7, 11, 13, 17, 31, 37]), st.integers(1, 24))
TILE_EDGES = (15, 16, 17, 63, 64, 65, 129)
# How a tensor of the wanted logical shape is laid out in memory.
LAYOUTS = ("contiguous", "transposed", "sliced", "broadcast")


def examples_for(backend):
    """The active profile's example count; a tenth for interpreter-backed backends."""
    count = settings.default.max_examples
    return max(4, count // 10) if backend in SAMPLED_BACKENDS else count


@st.composite
def layer_cases(draw):
    mode = draw(st.sampled_from(sorted(LAYER_CLASSES)))
    # One case in eight crosses the kernels' tile edges (64 rows or units on CPU) and is
    # big enough for the CPU kernels to split work across threads; it is kept short.
    big = draw(st.integers(0, 7)) == 0
    hidden = draw(st.sampled_from(TILE_EDGES) if big else SIZES)
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    num_layers = draw(st.integers(1, 2 if big else 3))
    fmt = draw(st.sampled_from(["padded", "padded", "unbatched", "packed"]))
    return dict(
        mode=mode, hidden=hidden, input_size=draw(SIZES),
        steps=draw(st.integers(1, 3 if big else 9)),
        batch=draw(st.sampled_from(TILE_EDGES) if big else st.integers(0, 6)),
        num_layers=num_layers, dtype=dtype,
        bidirectional=draw(st.booleans()), batch_first=draw(st.booleans()),
        bias=draw(st.booleans()),
        proj_size=(draw(st.integers(0, hidden - 1)) if mode == "LSTM" and hidden > 1 else 0),
        format=fmt,
        hx_given=draw(st.booleans()),
        input_layout=draw(st.sampled_from(LAYOUTS)),
        hx_layout=draw(st.sampled_from(LAYOUTS[:2])),
        noncontiguous_weights=draw(st.booleans()),
        # A NaN or an infinity at one input position (one case in three).
        nonfinite=draw(st.sampled_from([None] * 6 + ["nan", "inf", "-inf"])),
        # Dropout masks are drawn in the module's dtype: only float64 runs can compare
        # against the float64 reference mask for mask.
        dropout=(draw(st.sampled_from([0.0, 0.0, 0.3]))
                 if num_layers > 1 and dtype == torch.float64 else 0.0),
        seed=draw(st.integers(0, 2**31 - 1)))


@st.composite
def cell_cases(draw):
    return dict(mode=draw(st.sampled_from(sorted(CELL_CLASSES))), hidden=draw(SIZES),
                input_size=draw(SIZES), batch=draw(st.integers(0, 6)),
                dtype=draw(st.sampled_from([torch.float64, torch.float32])),
                bias=draw(st.booleans()), hx_given=draw(st.booleans()),
                input_layout=draw(st.sampled_from(LAYOUTS[:3])),
                seed=draw(st.integers(0, 2**31 - 1)))


def laid_out(values, layout, leaf_dtype, device, batch_axis=1):
    """(leaf, view): `view` has values' shape and content, laid out as `layout` says,
    and is differentiable back to `leaf`, the tensor whose gradient is compared."""
    values = values.to(leaf_dtype)
    if layout == "transposed" and values.dim() >= 2:
        leaf = values.transpose(0, -1).contiguous().to(device).requires_grad_()
        return leaf, leaf.transpose(0, -1)
    if layout == "sliced":
        # Every other element of a twice-as-wide buffer: the last stride is 2.
        wide = torch.stack([values, torch.full_like(values, float("nan"))], dim=-1)
        leaf = wide.flatten(-2).to(device).requires_grad_()
        return leaf, leaf[..., ::2]
    if layout == "broadcast" and values.dim() == 3 and values.shape[batch_axis] > 0:
        # One row repeated over the batch axis (stride 0).
        leaf = values.narrow(batch_axis, 0, 1).contiguous().to(device).requires_grad_()
        return leaf, leaf.expand(values.shape)
    leaf = values.contiguous().to(device).requires_grad_()
    return leaf, leaf


def weighted_sum(outputs, seed):
    """A loss whose gradient reaches every output element with a different weight."""
    generator = torch.Generator().manual_seed(seed)
    return sum((out * torch.randn(out.shape, dtype=torch.float64, generator=generator)
                .to(out.device, out.dtype)).sum() for out in outputs)


def assert_close(name, actual, expected, tolerance, context="", exact_nonfinite=True):
    """Parity-suite comparison: max error relative to the largest expected magnitude, on
    the elements torch.nn gives finite; the others must be NaN and infinite in the same
    places (exact_nonfinite) or at least non-finite in the same places (gradients of
    non-finite inputs, where 0 * inf and tiny * inf legitimately split NaN from inf)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != " \
                                           f"{tuple(expected.shape)} {context}"
    actual = actual.detach().to("cpu", torch.float64)
    expected = expected.detach().to("cpu", torch.float64)
    finite = expected.isfinite()
    assert torch.equal(actual.isfinite(), finite), f"{name}: non-finite positions {context}"
    if exact_nonfinite:
        assert torch.equal(actual.isnan(), expected.isnan()), f"{name}: NaN positions {context}"
        infinite = expected.isinf()
        assert torch.equal(actual[infinite], expected[infinite]), \
            f"{name}: infinities {context}"
    if not finite.any():
        return
    scale = max(expected[finite].abs().max().item(), 1.0)
    error = (actual[finite] - expected[finite]).abs().max().item()
    assert error <= tolerance * scale, (
        f"{name}: max error {error:.3e} > {tolerance:.0e} x {scale:.3g} {context}")


def flat_outputs(result):
    output, hidden = result
    if isinstance(output, PackedSequence):
        output = output.data
    return [output] + (list(hidden) if isinstance(hidden, tuple) else [hidden])


def reference_dtype(case):
    """torch.nn runs in float64 (the truth), except for non-finite inputs: where an infinity
    meets a saturated gate, whether a gradient is NaN or infinite depends on the dtype's
    saturation, so those runs compare like with like."""
    return case["dtype"] if case.get("nonfinite") else torch.float64


def build_layer_pair(case, backend, device):
    """(fused module in case dtype, torch.nn module in float64 with the same weights)."""
    torch_class, fused_class, extra = LAYER_CLASSES[case["mode"]]
    options = dict(num_layers=case["num_layers"], bias=case["bias"],
                   batch_first=case["batch_first"], dropout=case["dropout"],
                   bidirectional=case["bidirectional"], **extra)
    if case["proj_size"]:
        options["proj_size"] = case["proj_size"]
    torch.manual_seed(case["seed"])
    fused = fused_class(case["input_size"], case["hidden"], backend=backend,
                        dtype=case["dtype"], **options).to(device)
    expected = torch_class(case["input_size"], case["hidden"], dtype=reference_dtype(case),
                           **options).to(device)
    expected.load_state_dict(fused.state_dict())
    if case.get("noncontiguous_weights"):
        for name, param in list(fused.named_parameters()):
            if param.dim() == 2:
                strided = param.detach().t().contiguous().t()
                setattr(fused, name, nn.Parameter(strided))
    return fused, expected


def layer_inputs(case, leaf_dtype, device):
    """(module input, hx, leaves) built from the case's seed; the same values for every
    leaf_dtype, so float32 and float64 runs see identical (float32-representable) data."""
    generator = torch.Generator().manual_seed(case["seed"] + 1)
    randn = lambda *shape: torch.randn(*shape, generator=generator).to(torch.float64)
    steps, batch, fmt = case["steps"], case["batch"], case["format"]
    directions = 2 if case["bidirectional"] else 1
    state_size = case["proj_size"] or case["hidden"]
    if fmt == "unbatched" or (fmt == "packed" and batch == 0):
        batch = 1  # (an empty batch only exists padded)
    time_major = randn(steps, batch, case["input_size"])
    if case.get("nonfinite") and time_major.numel():
        position = torch.randint(0, time_major.numel(), (1,), generator=generator)
        time_major.view(-1)[position] = float(case["nonfinite"])
    if fmt == "packed":
        lengths = torch.randint(1, steps + 1, (batch,), generator=generator)
        lengths[torch.randint(0, batch, (1,), generator=generator)] = steps
        leaf, padded = laid_out(time_major, case["input_layout"], leaf_dtype, device)
        module_input = pack_padded_sequence(padded, lengths, enforce_sorted=False)
    elif fmt == "unbatched":
        leaf, module_input = laid_out(time_major[:, 0], case["input_layout"], leaf_dtype,
                                      device)
    elif case["batch_first"]:
        leaf, module_input = laid_out(time_major.transpose(0, 1), case["input_layout"],
                                      leaf_dtype, device, batch_axis=0)
    else:
        leaf, module_input = laid_out(time_major, case["input_layout"], leaf_dtype, device)
    leaves, hx = [leaf], None
    if case["hx_given"]:
        lead = (case["num_layers"] * directions,) + (() if fmt == "unbatched" else (batch,))
        states = [randn(*lead, state_size)]
        if case["mode"] == "LSTM":
            states.append(randn(*lead, case["hidden"]))
        laid = [laid_out(s, case["hx_layout"], leaf_dtype, device) for s in states]
        leaves += [leaf for leaf, _ in laid]
        hx = tuple(view for _, view in laid) if case["mode"] == "LSTM" else laid[0][1]
    return module_input, hx, leaves


def run(module, module_input, hx, leaves, seed):
    torch.manual_seed(seed)  # the same dropout masks for both modules
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn's non-contiguous-weights warning
        outputs = flat_outputs(module(module_input, hx))
    grads = torch.autograd.grad(weighted_sum(outputs, seed), leaves + list(module.parameters()))
    return outputs, grads


def exceeds_documented_limit(case, backend):
    """Triton keeps W_hh on chip and rejects hidden sizes past its MAX_HIDDEN with a clear
    ValueError (an empty batch never reaches a kernel, so it still runs)."""
    if backend != "triton" or (case["batch"] == 0 and case["format"] == "padded"):
        return False
    from fastrnn.triton import _common
    return case["hidden"] > _common.MAX_HIDDEN


def check_layer_case(case, backend, device):
    """The fuzz property, also called by the named regression tests."""
    if exceeds_documented_limit(case, backend):
        fused, _ = build_layer_pair(case, backend, device)
        with pytest.raises(ValueError, match="supports hidden_size and proj_size up to"):
            run(fused, *layer_inputs(case, case["dtype"], device), case["seed"])
        return
    fused, expected_module = build_layer_pair(case, backend, device)
    train = case["dropout"] > 0
    fused.train(train)
    expected_module.train(train)
    expected_outputs, expected_grads = run(expected_module,
                                           *layer_inputs(case, reference_dtype(case), device),
                                           case["seed"])
    fused_outputs, fused_grads = run(fused, *layer_inputs(case, case["dtype"], device),
                                     case["seed"])
    tolerance = TOLERANCE[case["dtype"]]
    for name, actual, expected in zip(["output", "h_n", "c_n"], fused_outputs,
                                      expected_outputs):
        assert actual.dtype == case["dtype"], f"{name} dtype {actual.dtype}"
        assert_close(name, actual, expected, tolerance, repr(case))
    state_leaves = len(fused_grads) - len(list(fused.parameters())) - 1
    names = (["grad input"] + [f"grad hx[{i}]" for i in range(state_leaves)]
             + [f"grad {name}" for name, _ in fused.named_parameters()])
    for name, actual, expected in zip(names, fused_grads, expected_grads):
        assert_close(name, actual, expected, tolerance, repr(case),
                     exact_nonfinite=not case.get("nonfinite"))


def check_cell_case(case, backend, device):
    torch_class, fused_class, extra = CELL_CLASSES[case["mode"]]
    torch.manual_seed(case["seed"])
    fused = fused_class(case["input_size"], case["hidden"], bias=case["bias"],
                        backend=backend, dtype=case["dtype"], **extra).to(device)
    expected_module = torch_class(case["input_size"], case["hidden"], bias=case["bias"],
                                  dtype=torch.float64, **extra).to(device)
    expected_module.load_state_dict({k: v.double() for k, v in fused.state_dict().items()})

    def inputs(leaf_dtype):
        generator = torch.Generator().manual_seed(case["seed"] + 1)
        randn = lambda *shape: torch.randn(*shape, generator=generator).to(torch.float64)
        batched = case["batch"] > 0
        lead = (case["batch"],) if batched else ()
        leaf, x = laid_out(randn(*lead, case["input_size"]), case["input_layout"],
                           leaf_dtype, device)
        leaves, hx = [leaf], None
        if case["hx_given"]:
            states = [randn(*lead, case["hidden"]) for _ in
                      range(2 if case["mode"] == "LSTM" else 1)]
            leaves += [s.to(device, leaf_dtype).requires_grad_() for s in states]
            hx = tuple(leaves[1:]) if case["mode"] == "LSTM" else leaves[1]
        return x, hx, leaves

    def run_cell(module, leaf_dtype):
        x, hx, leaves = inputs(leaf_dtype)
        result = module(x, hx)
        outputs = list(result) if isinstance(result, tuple) else [result]
        return outputs, torch.autograd.grad(weighted_sum(outputs, case["seed"]),
                                            leaves + list(module.parameters()))

    expected_outputs, expected_grads = run_cell(expected_module, torch.float64)
    fused_outputs, fused_grads = run_cell(fused, case["dtype"])
    tolerance = TOLERANCE[case["dtype"]]
    for index, (actual, expected) in enumerate(zip(fused_outputs, expected_outputs)):
        assert_close(f"cell output {index}", actual, expected, tolerance, repr(case))
    for index, (actual, expected) in enumerate(zip(fused_grads, expected_grads)):
        assert_close(f"cell grad {index}", actual, expected, tolerance, repr(case))


def test_fuzz_layers_match_torch_nn(backend, device):
    @settings(max_examples=examples_for(backend))
    @given(case=layer_cases())
    def check(case):
        note(repr(case))
        check_layer_case(case, backend, device)

    check()


def test_fuzz_cells_match_torch_nn(backend, device):
    @settings(max_examples=examples_for(backend))
    @given(case=cell_cases())
    def check(case):
        note(repr(case))
        check_cell_case(case, backend, device)

    check()
