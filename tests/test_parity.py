"""The parity suite: every backend against torch.nn, forward and backward.

The matrix is cell x num_layers x bidirectional x bias x input format x hx given x
dropout; each case compares outputs, final states and the gradients of the input, the
initial states and every parameter with torch.nn run on the same weights and inputs.
float64 must agree to 1e-10 and float32 to 1e-5, relative to the largest magnitude.
Inputs are fresh random numbers on every run (the seed is in each failure message).
"""
import itertools
import random
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from conftest import SAMPLED_BACKENDS, backends_under_test

CELLS = {
    "rnn_tanh": (nn.RNN, fastrnn.FusedRNN, {}),
    "rnn_relu": (nn.RNN, fastrnn.FusedRNN, {"nonlinearity": "relu"}),
    "gru": (nn.GRU, fastrnn.FusedGRU, {}),
    "lstm": (nn.LSTM, fastrnn.FusedLSTM, {}),
    "lstm_proj": (nn.LSTM, fastrnn.FusedLSTM, {"proj_size": 3}),
}
# padded time-major, padded batch-first, unbatched (2-D), unbatched batch-first, packed
# with unsorted lengths (enforce_sorted=False).
FORMATS = ("time_major", "batch_first", "unbatched", "unbatched_batch_first", "packed")
DROPOUTS = ("none", "eval", "train")
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
# (T, N, H) cycled over the cases so every size appears across the matrix: T=1, N=1,
# odd hidden sizes 7 and 33.
SIZES = ((1, 3, 7), (5, 1, 33), (6, 4, 7), (4, 3, 33), (1, 1, 7), (7, 2, 7))
INPUT_SIZE = 5

CASES = [
    dict(cell=cell, num_layers=layers, bidirectional=bidirectional, bias=bias, format=fmt,
         hx_given=hx_given, dropout=dropout)
    for cell, layers, bidirectional, bias, fmt, hx_given, dropout in itertools.product(
        CELLS, (1, 2, 3), (False, True), (True, False), FORMATS, (False, True), DROPOUTS)
]
for index, case in enumerate(CASES):
    case["sizes"] = SIZES[index % len(SIZES)]
    case["id"] = "-".join([case["cell"], f"L{case['num_layers']}",
                           "bi" if case["bidirectional"] else "uni",
                           "bias" if case["bias"] else "nobias", case["format"],
                           "hx" if case["hx_given"] else "nohx", f"drop_{case['dropout']}"])

# float32 runs a quarter of the matrix (every case class appears across it).
FLOAT32_CASES = CASES[::4]
# An interpreter-backed backend runs every 37th case: all cells, formats and flags still
# appear, within minutes.
SAMPLED_CASES = CASES[::37]


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    params = []
    for backend in backends_under_test():
        for dtype in (torch.float64, torch.float32):
            cases = CASES if dtype == torch.float64 else FLOAT32_CASES
            if backend in SAMPLED_BACKENDS:
                cases = SAMPLED_CASES
            params += [pytest.param(backend, dtype, case,
                                    id=f"{backend}-{str(dtype)[6:]}-{case['id']}")
                       for case in cases]
    metafunc.parametrize("backend,dtype,case", params)


def make_inputs(case, dtype, device, seed):
    """(input for the module, hx for the module or None, tensors whose grads we compare)."""
    generator = torch.Generator().manual_seed(seed)
    steps, batch, hidden = case["sizes"]
    _, _, kwargs = CELLS[case["cell"]]
    fmt = case["format"]
    randn = lambda *shape: torch.randn(*shape, dtype=dtype, generator=generator).to(device)
    unbatched = fmt.startswith("unbatched")
    if unbatched:
        batch = 1
    if fmt == "packed":
        rng = random.Random(seed)
        lengths = [steps] + [rng.randint(1, steps) for _ in range(batch - 1)]
        rng.shuffle(lengths)
        padded = randn(steps, batch, INPUT_SIZE).requires_grad_()
        module_input = pack_padded_sequence(padded, lengths, enforce_sorted=False)
        leaf = padded
    elif unbatched:
        leaf = randn(steps, INPUT_SIZE).requires_grad_()
        module_input = leaf
    else:
        shape = (batch, steps) if fmt == "batch_first" else (steps, batch)
        leaf = randn(*shape, INPUT_SIZE).requires_grad_()
        module_input = leaf
    leaves = [leaf]
    hx = None
    if case["hx_given"]:
        directions = 2 if case["bidirectional"] else 1
        state = kwargs.get("proj_size") or hidden
        lead = (case["num_layers"] * directions,) + (() if unbatched else (batch,))
        h = randn(*lead, state).requires_grad_()
        leaves.append(h)
        hx = h
        if case["cell"].startswith("lstm"):
            c = randn(*lead, hidden).requires_grad_()
            leaves.append(c)
            hx = (h, c)
    return module_input, hx, leaves


def flatten_outputs(result):
    output, hidden = result
    output = output.data if isinstance(output, torch.nn.utils.rnn.PackedSequence) else output
    return [output] + (list(hidden) if isinstance(hidden, tuple) else [hidden])


def run_and_differentiate(module, module_input, hx, leaves, seed, generator_seed):
    torch.manual_seed(seed)  # dropout masks: both modules draw the same ones
    outputs = flatten_outputs(module(module_input, hx))
    weights = torch.Generator().manual_seed(generator_seed)
    loss = sum((out * torch.randn(out.shape, dtype=out.dtype, generator=weights)
                .to(out.device)).sum() for out in outputs)
    # retain_graph: a packed input (and its packing graph) is shared by both runs.
    grads = torch.autograd.grad(loss, leaves + list(module.parameters()), retain_graph=True)
    return outputs, grads


def assert_close(name, actual, expected, tolerance, seed):
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert not torch.isnan(actual).any() or torch.isnan(expected).any(), f"{name}: NaN"
    scale = max(expected.abs().max().item(), 1.0) if expected.numel() else 1.0
    error = (actual - expected).abs().max().item() if expected.numel() else 0.0
    assert error <= tolerance * scale, (
        f"{name}: max error {error:.3e} > {tolerance:.0e} x {scale:.3g} (seed {seed})")


def test_layer_matches_torch_nn(backend, dtype, case, device):
    seed = random.randrange(2**31)
    torch_class, fused_class, kwargs = CELLS[case["cell"]]
    _, _, hidden = case["sizes"]
    batch_first = "batch_first" in case["format"]
    dropout = 0.0 if case["dropout"] == "none" else 0.4
    options = dict(num_layers=case["num_layers"], bias=case["bias"], batch_first=batch_first,
                   dropout=dropout, bidirectional=case["bidirectional"], dtype=dtype, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.nn warns about dropout with one layer
        torch.manual_seed(seed)
        expected_module = torch_class(INPUT_SIZE, hidden, **options).to(device)
        torch.manual_seed(seed)
        fused_module = fused_class(INPUT_SIZE, hidden, backend=backend, **options).to(device)
    for module in (expected_module, fused_module):
        module.train(case["dropout"] == "train")
    module_input, hx, leaves = make_inputs(case, dtype, device, seed)

    # torch.nn's native kernels, not cuDNN: cuDNN cannot differentiate in eval mode and
    # draws its own dropout masks between layers (no-op on the CPU).
    with torch.backends.cudnn.flags(enabled=False):
        expected_outputs, expected_grads = run_and_differentiate(
            expected_module, module_input, hx, leaves, seed, seed + 1)
    fused_outputs, fused_grads = run_and_differentiate(
        fused_module, module_input, hx, leaves, seed, seed + 1)

    tolerance = TOLERANCE[dtype]
    for index, (actual, expected) in enumerate(zip(fused_outputs, expected_outputs)):
        assert_close(["output", "h_n", "c_n"][index], actual, expected, tolerance, seed)
    names = [f"input/state grad {i}" for i in range(len(leaves))] + [
        f"grad {name}" for name, _ in fused_module.named_parameters()]
    for name, actual, expected in zip(names, fused_grads, expected_grads):
        assert_close(name, actual, expected, tolerance, seed)
