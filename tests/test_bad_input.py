"""Bad calls raise a Python exception that names the problem, on every backend.

Where torch.nn raises on purpose, the exception type is torch.nn's (checked by calling
torch.nn the same way); where torch.nn fails by accident deep in ATen, fastrnn raises
earlier with a clearer message.
"""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn

LAYERS = {"RNN": (nn.RNN, fastrnn.FusedRNN), "GRU": (nn.GRU, fastrnn.FusedGRU),
          "LSTM": (nn.LSTM, fastrnn.FusedLSTM)}


def state(name, *shape, **options):
    """hx for a layer: a tensor, or an (h, c) pair for LSTM (c shaped like h)."""
    h = torch.randn(*shape, **options)
    return (h, torch.randn(*shape, **options)) if name == "LSTM" else h


def packed_input():
    return pack_padded_sequence(torch.randn(4, 3, 3), [4, 2, 3], enforce_sorted=False)


# (case id, call(module, name), exception type, message pattern, torch.nn raises the same)
LAYER_CASES = [
    ("1d_input", lambda m, n: m(torch.randn(4)), ValueError, "Expected input to be 2D or 3D",
     True),
    ("4d_input", lambda m, n: m(torch.randn(4, 2, 3, 1)), ValueError,
     "Expected input to be 2D or 3D", True),
    ("wrong_features", lambda m, n: m(torch.randn(4, 2, 7)), RuntimeError,
     "input_size. Expected 3, got 7", True),
    ("hx_wrong_batch", lambda m, n: m(torch.randn(4, 2, 3), state(n, 1, 5, 5)), RuntimeError,
     r"Expected hidden(\[0\])? size \(1, 2, 5\), got \[1, 5, 5\]", True),
    ("hx_wrong_ndim", lambda m, n: m(torch.randn(4, 2, 3), state(n, 2, 5)), RuntimeError,
     "should also be 3-D", True),
    ("unbatched_hx_3d", lambda m, n: m(torch.randn(4, 3), state(n, 1, 1, 5)), RuntimeError,
     "should also be 2-D", True),
    ("hx_wrong_dtype", lambda m, n: m(torch.randn(4, 2, 3),
                                      state(n, 1, 2, 5, dtype=torch.float64)),
     RuntimeError, "hidden state dtype \\(torch.float64\\) does not match input dtype", True),
    ("hx_wrong_device", lambda m, n: m(torch.randn(4, 2, 3), state(n, 1, 2, 5, device="meta")),
     RuntimeError, "not at the same device, found input tensor at cpu and hidden tensor at meta",
     True),
    ("input_wrong_device", lambda m, n: m(torch.randn(4, 2, 3, device="meta")), RuntimeError,
     "parameter tensor", False),
    ("input_weight_dtype", lambda m, n: m(torch.randn(4, 2, 3, dtype=torch.float64)),
     ValueError, r"input dtype \(torch.float64\) does not match weight dtype", True),
    ("integer_input", lambda m, n: m(torch.ones(4, 2, 3, dtype=torch.long)), ValueError,
     r"input dtype \(torch.int64\) does not match weight dtype", True),
    ("zero_steps", lambda m, n: m(torch.randn(0, 2, 3)), RuntimeError,
     "sequence length to be larger than 0", True),
    ("packed_hx_wrong_batch", lambda m, n: m(packed_input(), state(n, 1, 2, 5)), RuntimeError,
     r"Expected hidden(\[0\])? size \(1, 3, 5\), got \[1, 2, 5\]", True),
    ("input_not_tensor", lambda m, n: m([[1.0, 2.0, 3.0]]), TypeError,
     "input must be a Tensor or PackedSequence", False),
]


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("case_id,call,error,pattern,same_as_torch", LAYER_CASES,
                         ids=[case[0] for case in LAYER_CASES])
def test_layer_rejects_bad_input(backend, name, case_id, call, error, pattern, same_as_torch):
    torch_class, fused_class = LAYERS[name]
    with pytest.raises(error, match=pattern):
        call(fused_class(3, 5, backend=backend), name)
    if same_as_torch:
        with pytest.raises(error):
            call(torch_class(3, 5), name)


def test_lstm_state_must_be_a_pair(backend):
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\)"):
        fastrnn.FusedLSTM(3, 5, backend=backend)(torch.randn(4, 2, 3), torch.randn(1, 2, 5))
    with pytest.raises(RuntimeError, match=r"Expected hidden\[1\] size \(1, 2, 5\)"):
        fastrnn.FusedLSTM(3, 5, backend=backend)(
            torch.randn(4, 2, 3), (torch.randn(1, 2, 5), torch.randn(1, 2, 4)))


@pytest.mark.parametrize("name", LAYERS)
def test_empty_batch_gives_torch_nn_empty_results(backend, name):
    """torch.nn accepts a batch of 0 and returns empty tensors; so does fastrnn."""
    torch_class, fused_class = LAYERS[name]
    x = torch.randn(4, 0, 3)
    expected_output, expected_hidden = torch_class(3, 5)(x)
    output, hidden = fused_class(3, 5, backend=backend)(x)
    assert output.shape == expected_output.shape == (4, 0, 5)
    expected_hidden = expected_hidden if name == "LSTM" else (expected_hidden,)
    hidden = hidden if name == "LSTM" else (hidden,)
    assert [h.shape for h in hidden] == [h.shape for h in expected_hidden]


CONSTRUCTOR_CASES = [
    (dict(input_size=0, hidden_size=4), "input_size must be greater than zero"),
    (dict(input_size=3, hidden_size=0), "hidden_size must be greater than zero"),
    (dict(input_size=3, hidden_size=-2), "hidden_size must be greater than zero"),
    (dict(input_size=3, hidden_size=4, num_layers=0), "num_layers must be greater than zero"),
    (dict(input_size=3, hidden_size=4, dropout=1.5), "dropout should be a number in range"),
]


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("kwargs,pattern", CONSTRUCTOR_CASES)
def test_constructor_rejects_bad_sizes(name, kwargs, pattern):
    torch_class, fused_class = LAYERS[name]
    with pytest.raises(ValueError, match=pattern):
        fused_class(**kwargs)
    with pytest.raises(ValueError):
        torch_class(**kwargs)


def test_constructor_rejects_bad_nonlinearity_and_projection():
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        fastrnn.FusedRNN(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="proj_size has to be smaller than hidden_size"):
        fastrnn.FusedLSTM(3, 4, proj_size=4)
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        fastrnn.FusedGRU(3, 4, proj_size=2)


CELLS = {"RNNCell": (nn.RNNCell, fastrnn.FusedRNNCell),
         "GRUCell": (nn.GRUCell, fastrnn.FusedGRUCell),
         "LSTMCell": (nn.LSTMCell, fastrnn.FusedLSTMCell)}


def cell_state(name, *shape, **options):
    h = torch.randn(*shape, **options)
    return (h, torch.randn(*shape, **options)) if name == "LSTMCell" else h


CELL_CASES = [
    ("3d_input", lambda m, n: m(torch.randn(2, 2, 3)), ValueError,
     "Expected input to be 1D or 2D", True),
    ("wrong_features", lambda m, n: m(torch.randn(2, 4)), RuntimeError,
     "input has inconsistent input_size: got 4 expected 3", True),
    ("hx_wrong_batch", lambda m, n: m(torch.randn(2, 3), cell_state(n, 3, 5)), RuntimeError,
     "Input batch size 2 doesn't match", True),
    ("hx_wrong_hidden", lambda m, n: m(torch.randn(2, 3), cell_state(n, 2, 4)), RuntimeError,
     "inconsistent hidden_size: got 4, expected 5", True),
    ("hx_3d", lambda m, n: m(torch.randn(2, 3), cell_state(n, 1, 2, 5)), ValueError,
     "to be 2D for 2D input", True),
    ("integer_input", lambda m, n: m(torch.ones(2, 3, dtype=torch.long)), RuntimeError,
     r"input dtype \(torch.int64\) does not match weight dtype", True),
    ("hx_wrong_dtype", lambda m, n: m(torch.randn(2, 3), cell_state(n, 2, 5, dtype=torch.float64)),
     RuntimeError, "hidden state dtype", True),
    ("hx_wrong_device", lambda m, n: m(torch.randn(2, 3), cell_state(n, 2, 5, device="meta")),
     RuntimeError, "not at the same device", False),
]


@pytest.mark.parametrize("name", CELLS)
@pytest.mark.parametrize("case_id,call,error,pattern,same_as_torch", CELL_CASES,
                         ids=[case[0] for case in CELL_CASES])
def test_cell_rejects_bad_input(backend, name, case_id, call, error, pattern, same_as_torch):
    torch_class, fused_class = CELLS[name]
    with pytest.raises(error, match=pattern):
        call(fused_class(3, 5, backend=backend), name)
    if same_as_torch:
        with pytest.raises(error):
            call(torch_class(3, 5), name)
