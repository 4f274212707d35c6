"""The fused classes are their torch.nn twins in everything but forward."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import backends

PAIRS = [
    (nn.RNN, fastrnn.FusedRNN, dict(nonlinearity="relu", num_layers=2, bidirectional=True)),
    (nn.GRU, fastrnn.FusedGRU, dict(num_layers=3, batch_first=True, dropout=0.2)),
    (nn.LSTM, fastrnn.FusedLSTM, dict(proj_size=2, bias=False, bidirectional=True)),
    (nn.RNNCell, fastrnn.FusedRNNCell, dict(nonlinearity="tanh")),
    (nn.GRUCell, fastrnn.FusedGRUCell, dict(bias=False)),
    (nn.LSTMCell, fastrnn.FusedLSTMCell, dict()),
]


@pytest.mark.parametrize("torch_class,fused_class,kwargs", PAIRS)
def test_same_construction_initialisation_repr_and_state_dict(torch_class, fused_class, kwargs):
    torch.manual_seed(3)
    expected = torch_class(4, 6, **kwargs)
    torch.manual_seed(3)
    fused = fused_class(4, 6, **kwargs)
    assert isinstance(fused, torch_class)
    assert repr(fused) == repr(expected).replace(torch_class.__name__, fused_class.__name__, 1)
    assert list(fused.state_dict()) == list(expected.state_dict())
    for (name, a), (_, b) in zip(fused.named_parameters(), expected.named_parameters()):
        assert torch.equal(a, b), name

    other = torch_class(4, 6, **kwargs)
    fused.load_state_dict(other.state_dict())
    expected.load_state_dict(fused_class(4, 6, **kwargs).state_dict())
    for a, b in zip(fused.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_constructor_takes_device_and_dtype():
    layer = fastrnn.FusedGRU(3, 5, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in layer.parameters())


@pytest.mark.parametrize("name", ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell"])
def test_unknown_backend_name_is_rejected(name):
    with pytest.raises(ValueError, match="unknown fastrnn backend 'fast'"):
        getattr(fastrnn, "Fused" + name)(3, 4, backend="fast")


def test_available_backends_lists_every_backend_with_a_reason():
    listing = fastrnn.available_backends()
    assert set(listing) == {"cpu", "cuda", "triton", "reference"}
    assert listing["reference"] is None
    for name, reason in listing.items():
        assert reason is None or (isinstance(reason, str) and reason), name


def test_unavailable_backend_raises_when_requested():
    missing = [name for name, reason in fastrnn.available_backends().items() if reason]
    assert "cuda" in missing or torch.cuda.is_available()
    for name in missing:
        layer = fastrnn.FusedGRU(3, 4, backend=name)
        with pytest.raises(RuntimeError, match=f"backend '{name}' is not available"):
            layer(torch.randn(2, 1, 3))


def test_backend_that_cannot_run_the_device_raises():
    if fastrnn.available_backends()["cuda"] is None:
        with pytest.raises(RuntimeError, match="cannot run tensors on device 'cpu'"):
            fastrnn.FusedGRU(3, 4, backend="cuda")(torch.randn(2, 1, 3))
    assert backends.resolve("auto", torch.device("meta"), torch.float32) == "reference"


def test_auto_picks_the_fastest_available_backend_for_cpu_tensors():
    expected = "cpu" if fastrnn.available_backends()["cpu"] is None else "reference"
    assert backends.resolve("auto", torch.device("cpu"), torch.float32) == expected
    # The CPU kernels cover float32/float64 only: 'auto' takes the spec path for others.
    assert backends.resolve("auto", torch.device("cpu"), torch.bfloat16) == "reference"


def run_with_backend_variable(value, code):
    """Runs `code` in a fresh interpreter (FASTRNN_BACKEND is read at import)."""
    env = dict(os.environ, FASTRNN_BACKEND=value)
    return subprocess.run([sys.executable, "-c", "import fastrnn, torch\n" + code], env=env,
                          capture_output=True, text=True, timeout=120)


def test_environment_variable_overrides_auto():
    resolve = "print(fastrnn.backends.resolve('auto', torch.device('cpu'), torch.float32))"
    done = run_with_backend_variable("reference", resolve)
    assert done.returncode == 0 and done.stdout.strip() == "reference", done.stderr
    # An explicit backend is not overridden.
    explicit = "print(fastrnn.backends.resolve('reference', torch.device('cpu'), torch.float64))"
    assert run_with_backend_variable("cpu", explicit).stdout.strip() == "reference"
    done = run_with_backend_variable("nonsense", resolve)
    assert done.returncode != 0 and "unknown fastrnn backend 'nonsense'" in done.stderr
    if fastrnn.available_backends()["cuda"] is not None:
        done = run_with_backend_variable(
            "cuda", "fastrnn.FusedGRU(3, 4)(torch.randn(2, 1, 3))")
        assert done.returncode != 0 and "from FASTRNN_BACKEND" in done.stderr


class Forecaster(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.LSTM(2, 8, num_layers=2)
        self.cell = nn.GRUCell(8, 8)
        self.head = nn.Sequential(nn.Linear(8, 1))


def test_convert_swaps_every_recurrent_module_in_place_keeping_parameters():
    model = Forecaster()
    encoder, cell = model.encoder, model.cell
    parameters = {name: p for name, p in model.named_parameters()}
    assert fastrnn.convert(model, backend="reference") is model
    assert model.encoder is encoder and type(encoder) is fastrnn.FusedLSTM
    assert type(model.cell) is fastrnn.FusedGRUCell and model.cell.backend == "reference"
    assert type(model.head[0]) is nn.Linear
    for name, p in model.named_parameters():
        assert p is parameters[name], name
    output, _ = model.encoder(torch.randn(3, 2, 2))
    assert output.shape == (3, 2, 8)


def test_convert_handles_a_bare_layer_and_leaves_subclasses_alone():
    class CustomGRU(nn.GRU):
        pass

    bare = fastrnn.convert(nn.RNN(2, 3))
    assert type(bare) is fastrnn.FusedRNN and bare.backend == "auto"
    custom = CustomGRU(2, 3)
    assert type(fastrnn.convert(custom)) is CustomGRU
    with pytest.raises(ValueError, match="unknown fastrnn backend"):
        fastrnn.convert(nn.RNN(2, 3), backend="gpu")
