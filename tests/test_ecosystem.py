"""The fused layers inside the rest of PyTorch, on every backend: torch.autocast,
torch.compile(fullgraph=True), torch.export, torch.save/load, copy.deepcopy, weight
parametrizations, DistributedDataParallel (gloo, two local processes) and fastrnn.convert
round trips.

Autocast: torch.nn's RNNs are not autocast-listed on CPU; their result dtypes fall out of
ATen's per-op casting inside the layer (see fastrnn/modules.py, _autocast_dtypes). These
tests run torch.nn under the same autocast and demand the same dtypes, and an error (against
a float64 run) at most twice torch.nn's own plus one rounding to the autocast dtype.
"""
import copy
import io
import itertools
import os
import socket
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from conftest import SAMPLED_BACKENDS, _device_of, backends_under_test, skip_untraceable

HERE = os.path.dirname(os.path.abspath(__file__))
LAYERS = {"RNN": (nn.RNN, fastrnn.FusedRNN, {}), "GRU": (nn.GRU, fastrnn.FusedGRU, {}),
          "LSTM": (nn.LSTM, fastrnn.FusedLSTM, {}),
          "LSTM_proj": (nn.LSTM, fastrnn.FusedLSTM, {"proj_size": 3})}
CELLS = {"RNN": (nn.RNNCell, fastrnn.FusedRNNCell), "GRU": (nn.GRUCell, fastrnn.FusedGRUCell),
         "LSTM": (nn.LSTMCell, fastrnn.FusedLSTMCell)}


# CPU autocast's float16 is rarely used, but torch.nn accepts it, so fastrnn must too.
LOW_PRECISION = (torch.bfloat16, torch.float16)


def flat(result):
    """Every tensor of a layer's or cell's result, in order (packed data unpacked)."""
    if isinstance(result, torch.Tensor):
        return [result]
    out = []
    for item in result:
        out += flat(item.data if isinstance(item, nn.utils.rnn.PackedSequence) else item)
    return out


def error_against(actual, truth):
    return max(((a.double() - t).abs().max().item() if t.numel() else 0.0)
               for a, t in zip(actual, truth))


def grads_of(module, call):
    """(result tensors, parameter grads) of call(module) under a fixed weighted-sum loss."""
    outputs = flat(call(module))
    generator = torch.Generator().manual_seed(7)
    loss = sum((o.double() * torch.randn(o.shape, dtype=torch.float64, generator=generator)
                .to(o.device)).sum() for o in outputs)
    grads = torch.autograd.grad(loss, list(module.parameters()))
    return outputs, list(grads)


def check_autocast_against_torch_nn(torch_module, fused_module, call, device, low):
    """Same result dtypes as torch.nn under autocast(low); errors against float64 at most
    2x torch.nn's plus one rounding to `low`, for results and parameter gradients."""
    with torch.autocast(device.type, dtype=low):
        try:
            expected, expected_grads = grads_of(torch_module, call)
        except RuntimeError as error:
            # torch.nn's oneDNN LSTM has no fp16 kernel on CPUs without AVX512-FP16.
            return f"torch.nn fails: {str(error)[:60]}"
        actual, actual_grads = grads_of(fused_module, call)
    assert [a.dtype for a in actual] == [e.dtype for e in expected]
    truth_module = copy.deepcopy(torch_module).double()
    truth, truth_grads = grads_of(truth_module, lambda m: call(m, truth=True))
    scale = max(t.abs().max().item() for t in truth if t.numel())
    rounding = torch.finfo(low).eps * max(scale, 1.0)
    assert error_against(actual, truth) <= 2 * error_against(expected, truth) + rounding
    grad_scale = max(g.abs().max().item() for g in truth_grads)
    assert all(g.dtype == p.dtype for g, p in zip(actual_grads, fused_module.parameters()))
    assert (error_against(actual_grads, truth_grads)
            <= 2 * error_against(expected_grads, truth_grads)
            + torch.finfo(low).eps * max(grad_scale, 1.0))
    return None


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_autocast_layer_follows_torch_nn(backend, device, name, packed):
    torch_class, fused_class, extra = LAYERS[name]
    torch.manual_seed(0)
    expected_module = torch_class(3, 5, num_layers=2, bidirectional=True, **extra).to(device)
    fused_module = fused_class(3, 5, num_layers=2, bidirectional=True, backend=backend,
                               **extra).to(device)
    fused_module.load_state_dict(expected_module.state_dict())
    x = torch.randn(4, 3, 3)
    h = torch.randn(4, 3, extra.get("proj_size", 5))
    c = torch.randn(4, 3, 5)
    combos = list(itertools.product(LOW_PRECISION, ("float32", "low"),
                                    (None, "float32", "low")))
    if backend in SAMPLED_BACKENDS:
        combos = combos[::5]
    for low, input_dtype, state_dtype in combos:
        def call(module, truth=False, input_dtype=input_dtype, state_dtype=state_dtype,
                 low=low):
            # The float64 truth sees the same (rounded) values as the autocast runs.
            cast = lambda t, kind: t.to(device, torch.float32 if kind == "float32" else low
                                        ).to(torch.float64 if truth else None)
            data = cast(x, input_dtype)
            module_input = pack_padded_sequence(data, [4, 2, 3], enforce_sorted=False) \
                if packed else data
            if state_dtype is None:
                return module(module_input)
            hx = cast(h, state_dtype)
            if name.startswith("LSTM"):
                hx = (hx, cast(c, state_dtype))
            return module(module_input, hx)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.nn: "LSTM with projections ... oneDNN"
            check_autocast_against_torch_nn(expected_module, fused_module, call, device, low)


@pytest.mark.parametrize("name", CELLS)
def test_autocast_cell_follows_torch_nn(backend, device, name):
    torch_class, fused_class = CELLS[name]
    torch.manual_seed(0)
    expected_module = torch_class(3, 5).to(device)
    fused_module = fused_class(3, 5, backend=backend).to(device)
    fused_module.load_state_dict(expected_module.state_dict())
    x, h, c = torch.randn(2, 3), torch.randn(2, 5), torch.randn(2, 5)
    for low, input_dtype, state_dtype in itertools.product(
            LOW_PRECISION, ("float32", "low"), (None, "float32", "low")):
        def call(module, truth=False, input_dtype=input_dtype, state_dtype=state_dtype,
                 low=low):
            cast = lambda t, kind: t.to(device, torch.float32 if kind == "float32" else low
                                        ).to(torch.float64 if truth else None)
            if state_dtype is None:
                return module(cast(x, input_dtype))
            hx = cast(h, state_dtype)
            if name == "LSTM":
                hx = (hx, cast(c, state_dtype))
            return module(cast(x, input_dtype), hx)

        check_autocast_against_torch_nn(expected_module, fused_module, call, device, low)


def test_autocast_off_inside_does_not_leak(backend, device):
    """The layer turns autocast off only for itself: ops after it are still autocast."""
    layer = fastrnn.FusedGRU(3, 4, backend=backend).to(device)
    head = nn.Linear(4, 2).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        output, _ = layer(torch.randn(5, 2, 3, device=device))
        assert torch.is_autocast_enabled(device.type)
        assert head(output).dtype == torch.bfloat16


class Tagger(nn.Module):
    """Bidirectional LSTM with projection and given states, a batch-first GRU, and a
    GRUCell loop: the argument patterns a traced program has to carry."""

    def __init__(self, backend):
        super().__init__()
        self.lstm = fastrnn.FusedLSTM(3, 6, num_layers=2, bidirectional=True, proj_size=2,
                                      backend=backend)
        self.gru = fastrnn.FusedGRU(4, 5, batch_first=True, backend=backend)
        self.cell = fastrnn.FusedGRUCell(5, 5, backend=backend)
        self.head = nn.Linear(5, 1)

    def forward(self, x, h0, c0):
        out, (h_n, c_n) = self.lstm(x, (h0, c0))
        out, _ = self.gru(out.transpose(0, 1))
        state = out[:, -1]
        for _ in range(2):
            state = self.cell(out[:, 0], state)
        return self.head(state), h_n, c_n


def tagger_inputs(device, batch=3):
    generator = torch.Generator().manual_seed(1)
    shapes = [(5, batch, 3), (4, batch, 2), (4, batch, 6)]
    return [torch.randn(*s, dtype=torch.float64, generator=generator).to(device)
            for s in shapes]


def results_and_grads(model, inputs):
    inputs = [i.detach().requires_grad_() for i in inputs]
    outputs = model(*inputs)
    loss = sum((o * (1 + torch.arange(o.numel(), device=o.device).view(o.shape))).sum()
               for o in outputs)
    return list(outputs) + list(torch.autograd.grad(loss, inputs + list(model.parameters())))


def test_compile_fullgraph_traces_every_argument_pattern(backend, device):
    skip_untraceable(backend)
    torch.manual_seed(0)
    model = Tagger(backend).to(device, torch.float64)
    inputs = tagger_inputs(device)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    for actual, expected in zip(results_and_grads(compiled, inputs),
                                results_and_grads(model, inputs)):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_export_with_dynamic_batch_matches_eager(backend, device):
    skip_untraceable(backend)
    torch.manual_seed(0)
    model = Tagger(backend).to(device, torch.float64)
    batch = torch.export.Dim("batch", min=2, max=64)
    exported = torch.export.export(
        model, tuple(tagger_inputs(device)),
        dynamic_shapes={"x": {1: batch}, "h0": {1: batch}, "c0": {1: batch}})
    if backend in ("cpu", "cuda"):
        targets = {str(node.target) for node in exported.graph.nodes}
        # The layers stay whole fused ops in the graph (layer_stack; the cell's single
        # step is a gru_layer call), not traced through into ATen.
        assert {"fastrnn.layer_stack.default", "fastrnn.gru_layer.default"} <= targets
    other_batch = tagger_inputs(device, batch=7)
    for actual, expected in zip(exported.module()(*other_batch), model(*other_batch)):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_save_load_and_deepcopy(backend, device):
    torch.manual_seed(0)
    model = Tagger(backend).to(device, torch.float64)
    inputs = tagger_inputs(device)
    expected = model(*inputs)

    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded.lstm) is fastrnn.FusedLSTM and loaded.lstm.backend == backend
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = Tagger(backend).to(device, torch.float64)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))

    duplicate = copy.deepcopy(model)
    for other in (loaded, fresh, duplicate):
        for actual, wanted in zip(other(*inputs), expected):
            assert torch.equal(actual, wanted)
    # The copy computes with its own parameters (RNNBase._flat_weights is deep-copied
    # with them), so changing the copy leaves the original alone, and vice versa.
    assert all(a is not b for a, b in zip(duplicate.parameters(), model.parameters()))
    with torch.no_grad():
        for parameter in duplicate.parameters():
            parameter.mul_(0.5)
    assert not torch.equal(duplicate(*inputs)[0], expected[0])
    assert torch.equal(model(*inputs)[0], expected[0])


@pytest.mark.parametrize("name", ["GRU", "LSTM"])
@pytest.mark.parametrize("kind", ["layer", "cell"])
def test_parametrized_weights_follow_torch_nn(backend, device, name, kind):
    """A parametrization (weight_norm here) takes a weight out of the module's parameters
    and computes it on access; results and the gradients of what it keeps as parameters
    match torch.nn's."""
    torch_class, fused_class = (LAYERS[name][:2] if kind == "layer" else CELLS[name])
    weight = "weight_hh_l0" if kind == "layer" else "weight_hh"
    torch.manual_seed(0)
    expected_module = torch_class(3, 4).to(device, torch.float64)
    fused_module = fused_class(3, 4, backend=backend).to(device, torch.float64)
    fused_module.load_state_dict(expected_module.state_dict())
    for module in (expected_module, fused_module):
        nn.utils.parametrizations.weight_norm(module, weight)
    x = torch.randn(*((5,) if kind == "layer" else ()), 2, 3, dtype=torch.float64,
                    device=device)
    expected, expected_grads = grads_of(expected_module, lambda m: m(x))
    actual, actual_grads = grads_of(fused_module, lambda m: m(x))
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(actual_grads, expected_grads)


class Forecaster(nn.Module):
    """The seeds' shape of model: a recurrent layer and a linear head (torch.nn classes)."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(1, 16, num_layers=2)
        self.cell = nn.GRUCell(16, 16)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(self.cell(out[-1], out[-2]))


def test_convert_train_then_load_into_torch_nn(backend, device):
    torch.manual_seed(0)
    original = Forecaster().to(device, torch.float64)
    trained_by_torch = copy.deepcopy(original)
    fused = fastrnn.convert(copy.deepcopy(original), backend=backend)
    assert type(fused.rnn) is fastrnn.FusedLSTM and type(fused.cell) is fastrnn.FusedGRUCell
    generator = torch.Generator().manual_seed(2)
    batches = [(torch.randn(6, 4, 1, dtype=torch.float64, generator=generator).to(device),
                torch.randn(4, 1, dtype=torch.float64, generator=generator).to(device))
               for _ in range(4)]
    for model in (fused, trained_by_torch):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        for x, y in batches:
            optimizer.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            optimizer.step()
    buffer = io.BytesIO()
    torch.save(fused.state_dict(), buffer)
    buffer.seek(0)
    original.load_state_dict(torch.load(buffer, weights_only=True))
    assert type(original.rnn) is nn.LSTM
    x = batches[0][0]
    torch.testing.assert_close(original(x), fused(x), rtol=1e-10, atol=1e-10)
    # Training with the fused layers followed torch.nn's own training.
    for (name, a), b in zip(original.named_parameters(), trained_by_torch.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9, msg=name)


# --- DistributedDataParallel: the worker (tests/ddp_worker.py) imports these two.

class Regressor(nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.rnn = fastrnn.FusedGRU(3, 8, num_layers=2, bidirectional=True, backend=backend,
                                    dtype=torch.float64)
        self.head = nn.Linear(16, 1, dtype=torch.float64)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def ddp_model_and_batch(backend):
    torch.manual_seed(0)
    model = Regressor(backend)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(5, 4, 3, dtype=torch.float64, generator=generator)
    targets = torch.randn(5, 4, 1, dtype=torch.float64, generator=generator)
    return model, inputs, targets


def ddp_loss(model, inputs, targets):
    return ((model(inputs) - targets) ** 2).mean()


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# A rank still running after this long dumps its Python stacks and exits (ddp_worker.py);
# a normal run takes 10 to 20 s on two busy cores.
DDP_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def ddp_gradients(tmp_path_factory):
    """{backend: [rank 0 grads, rank 1 grads]} from two gloo processes on loopback, run
    once for every CPU backend under test."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    names = [name for name in backends_under_test() if _device_of(name).type == "cpu"]
    out_dir = tmp_path_factory.mktemp("ddp")
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    logs = [out_dir / f"rank{rank}.log" for rank in range(2)]
    workers = []
    # Output goes to files, not pipes: a pipe left undrained while we wait on the other
    # rank would block a rank that writes much.
    for rank, log in enumerate(logs):
        with open(log, "wb") as stream:
            workers.append(subprocess.Popen(
                [sys.executable, os.path.join(HERE, "ddp_worker.py"), str(rank), "2",
                 str(port), ",".join(names), str(out_dir), str(DDP_TIMEOUT_S)],
                env=env, stdout=stream, stderr=subprocess.STDOUT))
    try:
        for worker in workers:
            # A backstop: each rank exits on its own after DDP_TIMEOUT_S.
            worker.wait(timeout=DDP_TIMEOUT_S + 30)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    if any(worker.returncode != 0 for worker in workers):
        pytest.fail("DDP workers failed or hung:\n" + "\n".join(
            f"--- rank {rank}, exit status {worker.returncode}:\n"
            + log.read_text(errors="replace")[-5000:]
            for rank, (worker, log) in enumerate(zip(workers, logs))))
    return {name: [torch.load(out_dir / f"{name}-rank{rank}.pt", weights_only=True)
                   for rank in range(2)] for name in names}


def test_ddp_gloo_two_processes_match_one_process(backend, device, ddp_gradients):
    if device.type != "cpu":
        pytest.skip("the gloo check runs CPU tensors; CUDA DDP needs one GPU per rank")
    model, inputs, targets = ddp_model_and_batch(backend)
    ddp_loss(model, inputs, targets).backward()
    for name, parameter in model.named_parameters():
        for rank, grads in enumerate(ddp_gradients[backend]):
            torch.testing.assert_close(grads[name], parameter.grad, rtol=1e-10, atol=1e-12,
                                       msg=f"rank {rank} {name}")
