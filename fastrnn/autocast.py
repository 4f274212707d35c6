"""torch.autocast for the fused layers, with torch.nn's result dtypes.

torch.nn has no autocast rule for its RNNs on CPU (aten::gru, lstm, rnn_* and the *_cell
ops are not autocast-listed there); its result dtypes come from ATen's per-op casting
inside the layer: matmuls run in the autocast dtype, the elementwise state update promotes
with the incoming state. fastrnn computes in the weights' dtype (float32; autocast off
inside) and casts its results to the dtypes torch.nn returns.
"""
import torch
from torch.nn.utils.rnn import PackedSequence


def _onednn_lstm(input, packed, has_proj):
    """Whether torch.nn runs this LSTM as oneDNN layers (ATen's use_mkldnn in RNN.cpp), which
    are autocast-listed: then every result is in the autocast dtype."""
    if packed or has_proj or input.numel() == 0 or not (
            torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    if input.dtype == torch.bfloat16:
        return torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if input.dtype == torch.float16:
        return not torch.is_grad_enabled() and torch.ops.mkldnn._is_mkldnn_fp16_supported()
    return input.dtype == torch.float32


def _autocast_dtypes(mode, input, state, onednn_lstm, has_proj):
    """(dtype of output and h, dtype of c) of torch.nn's result under autocast. `state` is
    the incoming state the update promotes with (h for RNN/GRU, c for LSTM) or None."""
    low = torch.get_autocast_dtype(input.device.type)
    if input.device.type != "cpu" or mode.startswith("RNN") or onednn_lstm:
        return low, low  # CUDA: cuDNN's RNN and the cells are autocast-listed
    promoted = torch.promote_types(low, input.dtype if state is None else state.dtype)
    return (low if has_proj else promoted), promoted


def call(run, mode, input, hx, weight, has_proj=False, layer=True):
    """run(input, hx) under torch.autocast with torch.nn's casting: inputs and states go to
    the weights' dtype, run computes with autocast off, results take torch.nn's dtypes."""
    packed = isinstance(input, PackedSequence)
    data = input.data if packed else input
    states = tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)
    if (not isinstance(data, torch.Tensor) or not data.is_floating_point()
            or weight.dtype != torch.float32 or not torch.is_autocast_enabled(data.device.type)
            or (hx is not None and not all(isinstance(s, torch.Tensor) for s in states))):
        return run(input, hx)  # autocast leaves these alone (or run raises on them)
    h_dtype, c_dtype = _autocast_dtypes(
        mode, data, None if hx is None else states[-1],
        layer and mode == "LSTM" and _onednn_lstm(data, packed, has_proj), has_proj)
    cast = weight.dtype
    input = PackedSequence(data.to(cast), *input[1:]) if packed else data.to(cast)
    if hx is not None:
        hx = tuple(s.to(cast) for s in states) if mode == "LSTM" else hx.to(cast)
    with torch.autocast(data.device.type, enabled=False):
        output, hidden = run(input, hx)
    if isinstance(output, PackedSequence):
        output = PackedSequence(output.data.to(h_dtype), *output[1:])
    elif output is not None:
        output = output.to(h_dtype)
    if isinstance(hidden, tuple):
        return output, (hidden[0].to(h_dtype), hidden[1].to(c_dtype))
    return output, (None if hidden is None else hidden.to(c_dtype if layer else h_dtype))
