"""FusedRNN, FusedGRU, FusedLSTM and the *Cell classes.

Each subclasses its torch.nn twin, so construction, parameters, initialisation, repr and
state_dict are torch.nn's own; only forward changes: it checks the call as torch.nn does
(same messages, same exception types where torch.nn raises on purpose), then runs the
layer stack on the chosen backend instead of ATen's per-step loop. Plain calls make those
checks in C++ (csrc/plain_forward.cpp for the layers, csrc/plain_cell.cpp for the cells),
and the rest here.
"""
import operator

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from fastrnn import autocast, backends, ops, stack

# Dynamo refuses every isinstance(module, (nn.RNN, nn.GRU, nn.LSTM)) unless allow_rnn is
# set, which our subclasses cannot dodge; torch.export sets the same flag for itself.
# With it, torch.compile(fullgraph=True) traces the fused layers (plain torch.nn RNNs in
# the same program are then traced too instead of graph-breaking; see README).
torch._dynamo.config.allow_rnn = True


def _check_device_and_dtype(input, states, weight):
    """The checks ATen does deep inside _VF.* (where they surface as matmul errors), made
    up front with messages that name the argument."""
    for state in states:
        if state.device != input.device:
            raise RuntimeError(
                "Input and hidden tensors are not at the same device, found input tensor "
                f"at {input.device} and hidden tensor at {state.device}")
        if state.dtype != input.dtype:
            raise RuntimeError(
                f"hidden state dtype ({state.dtype}) does not match input dtype "
                f"({input.dtype})")
    if weight.device != input.device:
        raise RuntimeError(
            "Input and parameter tensors are not at the same device, found input tensor "
            f"at {input.device} and parameter tensor at {weight.device}")


class _FusedLayer:
    """forward() shared by FusedRNN, FusedGRU and FusedLSTM (mixed in before nn.*)."""

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backends.check_name(backend)

    def _split_hx(self, hx, is_batched):
        """(h, c or None) from the user's hx, unsqueezed to 3-D for unbatched input."""
        if self.mode != "LSTM":
            if not isinstance(hx, torch.Tensor):
                raise TypeError(f"{type(self).__name__}: hx must be a Tensor, got "
                                f"{type(hx).__name__}")
            if hx.dim() != (3 if is_batched else 2):
                raise RuntimeError(
                    f"For {'batched 3-D' if is_batched else 'unbatched 2-D'} input, hx should "
                    f"also be {3 if is_batched else 2}-D but got {hx.dim()}-D tensor")
            return (hx if is_batched else hx.unsqueeze(1)), None
        if not (isinstance(hx, (tuple, list)) and len(hx) == 2
                and all(isinstance(s, torch.Tensor) for s in hx)):
            raise TypeError("FusedLSTM: hx must be a tuple (h_0, c_0) of two Tensors, got "
                            f"{type(hx).__name__}")
        h, c = hx
        if is_batched and (h.dim() != 3 or c.dim() != 3):
            raise RuntimeError("For batched 3-D input, hx and cx should also be 3-D but got "
                               f"({h.dim()}-D, {c.dim()}-D) tensors")
        if not is_batched:
            if h.dim() != 2 or c.dim() != 2:
                raise RuntimeError("For unbatched 2-D input, hx and cx should also be 2-D but "
                                   f"got ({h.dim()}-D, {c.dim()}-D) tensors")
            h, c = h.unsqueeze(1), c.unsqueeze(1)
        return h, c

    def _current_flat_weights(self):
        """self._flat_weights, refreshed (torch.nn's way) only when a parameter object was
        swapped behind RNNBase.__setattr__'s back. torch.nn walks getattr for every weight
        on every call, which at the sine shape costs more than our whole kernel."""
        current = map(self._parameters.get, self._flat_weights_names)
        if not all(map(operator.is_, current, self._flat_weights)):
            self._update_flat_weights()
        return self._flat_weights

    def _check_input(self, dtype, shape, packed, weight):
        """torch.nn's check_input, same messages, without its per-call overhead."""
        if dtype != weight.dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(
                f"RNN input dtype ({dtype}) does not match weight dtype ({weight.dtype}). "
                f"Convert input: input.to({weight.dtype}), or convert model: "
                f"model.to({dtype})")
        expected_dim = 2 if packed else 3
        if len(shape) != expected_dim:
            raise RuntimeError(f"input must have {expected_dim} dimensions, got {len(shape)}")
        if shape[-1] != self.input_size:
            raise RuntimeError("input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {shape[-1]}")

    def forward(self, input, hx=None):
        if torch._C._is_any_autocast_enabled():  # torch.nn's result dtypes under autocast
            return autocast.call(self._forward, self.mode, input, hx,
                                 self._current_flat_weights()[0], self.proj_size > 0)
        # The plain call in C++ (csrc/plain_forward.cpp); None for anything else. Dynamo
        # traces the Python forward below instead.
        if ops.plain_forward is not None and not torch.compiler.is_compiling():
            result = ops.plain_forward(self, input, hx, backends.layer_for, ops.layer)
            if result is not None:
                return result
        return self._forward(input, hx)

    def _forward(self, input, hx=None):
        # Every tensor attribute is read once: at the sine-wave shape each read costs a
        # hundredth of the layer.
        flat_weights = self._current_flat_weights()
        weight = flat_weights[0]
        is_lstm = self.mode == "LSTM"
        packed = isinstance(input, PackedSequence)
        if packed:
            input, batch_sizes, sorted_indices, unsorted_indices = input
            is_batched = True
            batch = int(batch_sizes[0])
            shape = input.shape
        else:
            if not isinstance(input, torch.Tensor):
                raise TypeError(f"{self._get_name()}: input must be a Tensor or "
                                f"PackedSequence, got {type(input).__name__}")
            shape = input.shape
            if len(shape) != 3 and len(shape) != 2:
                prefix = "LSTM" if is_lstm else self._get_name().replace("Fused", "")
                raise ValueError(f"{prefix}: Expected input to be 2D or 3D, got "
                                 f"{len(shape)}D instead")
            batch_sizes = sorted_indices = unsorted_indices = None
            is_batched = len(shape) == 3
            batch_dim = 0 if self.batch_first else 1
            if not is_batched:
                input = input.unsqueeze(batch_dim)
                shape = input.shape
            batch = shape[batch_dim]
        dtype, device = input.dtype, input.device
        self._check_input(dtype, shape, packed, weight)

        if hx is None:
            h = c = None  # zeros, made where the stack runs
        else:
            states = self.num_layers * (2 if self.bidirectional else 1)
            state_size = self.proj_size if self.proj_size > 0 else self.hidden_size
            h, c = self._split_hx(hx, is_batched)
            expected = (states, batch, state_size)
            if h.shape != expected:
                raise RuntimeError(f"Expected hidden{'[0]' if is_lstm else ''} size "
                                   f"{expected}, got {list(h.shape)}")
            if is_lstm and c.shape != (states, batch, self.hidden_size):
                raise RuntimeError(f"Expected hidden[1] size {(states, batch, self.hidden_size)}"
                                   f", got {list(c.shape)}")
            _check_device_and_dtype(input, (h,) if c is None else (h, c), weight)
        if device != weight.device:
            _check_device_and_dtype(input, (), weight)
        if not packed and shape[1 - batch_dim] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        if sorted_indices is not None and h is not None:
            h = h.index_select(1, sorted_indices)
            c = None if c is None else c.index_select(1, sorted_indices)

        output, h_n, c_n = stack.run(
            backends.layer_for(self.backend, device, dtype), self.mode, input, batch_sizes, h,
            c, flat_weights, batch=batch, num_layers=self.num_layers,
            bidirectional=self.bidirectional, batch_first=self.batch_first and not packed,
            has_bias=self.bias, has_proj=self.proj_size > 0, dropout=self.dropout,
            training=self.training)

        if unsorted_indices is not None:
            h_n = h_n.index_select(1, unsorted_indices)
            c_n = None if c_n is None else c_n.index_select(1, unsorted_indices)
        hidden = h_n if c_n is None else (h_n, c_n)
        if packed:
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), hidden
        if not is_batched:
            output = output.squeeze(batch_dim)
            hidden = h_n.squeeze(1) if c_n is None else (h_n.squeeze(1), c_n.squeeze(1))
        return output, hidden


class FusedRNN(_FusedLayer, nn.RNN):
    """nn.RNN (tanh or relu) with fused kernels. Extra keyword: backend='auto'."""


class FusedGRU(_FusedLayer, nn.GRU):
    """nn.GRU with fused kernels. Extra keyword: backend='auto'."""


class FusedLSTM(_FusedLayer, nn.LSTM):
    """nn.LSTM (optionally with proj_size) with fused kernels. Extra keyword: backend='auto'."""


class _FusedCell:
    """forward() shared by the *Cell classes: one step is a layer call with T=1."""

    def __init__(self, *args, backend="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backends.check_name(backend)

    def _cell_mode(self):
        raise NotImplementedError

    def _weights(self):
        """(weight_ih, weight_hh, bias_ih, bias_hh). Read from _parameters when they are all
        there: nn.Module.__getattr__ costs ~0.6 us per access here, together a fifth of a
        step at the sine-wave shape. A weight under a parametrization (weight_norm,
        parametrize) is not there, and getattr computes it."""
        parameters = self._parameters
        try:
            return (parameters["weight_ih"], parameters["weight_hh"], parameters["bias_ih"],
                    parameters["bias_hh"])
        except KeyError:
            return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    def _check_cell_state(self, state, input, is_batched, name):
        if not isinstance(state, torch.Tensor):
            raise TypeError(f"{self._get_name()}: {name} must be a Tensor, got "
                            f"{type(state).__name__}")
        if state.dim() != (2 if is_batched else 1):
            raise ValueError(f"{self._get_name()}: Expected {name} to be "
                             f"{2 if is_batched else 1}D for {2 if is_batched else 1}D input, "
                             f"got {state.dim()}D instead")
        state = state if is_batched else state.unsqueeze(0)
        if state.size(0) != input.size(0):
            raise RuntimeError(f"Input batch size {input.size(0)} doesn't match {name} batch "
                               f"size {state.size(0)}")
        if state.size(1) != self.hidden_size:
            raise RuntimeError(f"{name} has inconsistent hidden_size: got {state.size(1)}, "
                               f"expected {self.hidden_size}")
        return state

    def _step(self, input, hx):
        """Returns the new (h, c or None), squeezed back for unbatched input."""
        if torch._C._is_any_autocast_enabled():  # torch.nn's result dtypes under autocast
            return autocast.call(self._uncast_step, self._cell_mode(), input, hx,
                                 self.weight_ih, layer=False)
        # The plain step in C++ (csrc/plain_cell.cpp); None for anything else. Dynamo
        # traces the Python step below instead.
        if ops.plain_cell is not None and not torch.compiler.is_compiling():
            result = ops.plain_cell(self, self._cell_mode(), input, hx, backends.layer_for,
                                    ops.layer)
            if result is not None:
                return result
        return self._uncast_step(input, hx)

    def _uncast_step(self, input, hx):
        is_lstm = self._cell_mode() == "LSTM"
        w_ih, w_hh, b_ih, b_hh = self._weights()
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"{self._get_name()}: input must be a Tensor, got "
                            f"{type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{self._get_name()}: Expected input to be 1D or 2D, got "
                             f"{input.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} "
                               f"expected {self.input_size}")
        if input.dtype != w_ih.dtype:
            raise RuntimeError(f"{self._get_name()}: input dtype ({input.dtype}) does not match "
                             f"weight dtype ({w_ih.dtype})")
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype,
                                device=input.device)
            h, c = zeros, (zeros if is_lstm else None)
        elif is_lstm:
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise TypeError("FusedLSTMCell: hx must be a tuple (h_0, c_0) of two Tensors, "
                                f"got {type(hx).__name__}")
            h = self._check_cell_state(hx[0], input, is_batched, "hx[0]")
            c = self._check_cell_state(hx[1], input, is_batched, "hx[1]")
        else:
            h, c = self._check_cell_state(hx, input, is_batched, "hx"), None
        _check_device_and_dtype(input, (h,) if c is None else (h, c), w_ih)

        _, h_new, c_new = backends.layer_for(self.backend, input.device, input.dtype)(
            self._cell_mode(), input.unsqueeze(0), None, h, c, w_ih, w_hh, b_ih, b_hh, None,
            False)
        if not is_batched:
            h_new = h_new.squeeze(0)
            c_new = None if c_new is None else c_new.squeeze(0)
        return h_new, c_new


class FusedRNNCell(_FusedCell, nn.RNNCell):
    """nn.RNNCell with a fused step. Extra keyword: backend='auto'."""

    def _cell_mode(self):
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        return "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"

    def forward(self, input, hx=None):
        return self._step(input, hx)[0]


class FusedGRUCell(_FusedCell, nn.GRUCell):
    """nn.GRUCell with a fused step. Extra keyword: backend='auto'."""

    def _cell_mode(self):
        return "GRU"

    def forward(self, input, hx=None):
        return self._step(input, hx)[0]


class FusedLSTMCell(_FusedCell, nn.LSTMCell):
    """nn.LSTMCell with a fused step. Extra keyword: backend='auto'."""

    def _cell_mode(self):
        return "LSTM"

    def forward(self, input, hx=None):
        return self._step(input, hx)


FUSED_CLASS_OF = {nn.RNN: FusedRNN, nn.GRU: FusedGRU, nn.LSTM: FusedLSTM,
                  nn.RNNCell: FusedRNNCell, nn.GRUCell: FusedGRUCell,
                  nn.LSTMCell: FusedLSTMCell}


def convert(model, backend="auto"):
    """Turns every nn.RNN/GRU/LSTM/*Cell in `model` (the model itself included) into its
    fused class, in place, and returns the model.

    The modules keep their identity, parameters (the same tensors), hooks and state; only
    their class changes. Subclasses of the torch.nn classes are left alone: their forward
    may be their own.
    """
    backends.check_name(backend)
    for module in model.modules():
        fused_class = FUSED_CLASS_OF.get(type(module))
        if fused_class is not None:
            module.__class__ = fused_class
            module.backend = backend
    return model
