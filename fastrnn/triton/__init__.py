"""Triton backend: one fused kernel per layer-direction for the whole sequence.

triton is an optional dependency, so nothing here imports it at module import time;
the per-cell files (rnn.py, gru.py, lstm.py) import it and are loaded by `layer`.
"""
import importlib.util
import os

import torch

_MODES = ("RNN_TANH", "RNN_RELU", "GRU", "LSTM")


def unavailable_reason():
    """None when the Triton backend can run here, else a sentence saying why not."""
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed (pip install 'fastrnn[triton]')"
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        return ("Triton kernels need a CUDA GPU (torch.cuda.is_available() is False); set "
                "TRITON_INTERPRET=1 to run them on CPU tensors with the Triton interpreter")
    return None


def layer(mode, input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """One layer in one direction over the whole sequence; contract in csrc/fastrnn.cpp.

    input [T,N,C] padded or [S,C] packed with batch_sizes [T] -> (output, h_n, c_n),
    c_n None unless mode == "LSTM".
    """
    if mode not in _MODES:
        raise ValueError(f"unknown RNN mode {mode!r}, expected one of {_MODES}")
    from . import _common

    # w_hh is [G*H,P]; w_hr, when present, is [P,H].
    hidden_size = w_hh.shape[1] if w_hr is None else w_hr.shape[1]
    _common.check_inputs(mode, input, hidden_size, h0.shape[-1])
    steps = _common.Steps(input, batch_sizes, reverse)
    x = input.reshape(steps.S, input.shape[-1])
    w_ih, w_hh = w_ih.contiguous(), w_hh.contiguous()
    h0 = h0.contiguous()
    if mode == "LSTM":
        from .lstm import lstm_layer

        out, h_n, c_n = lstm_layer(x, steps, h0, c0.contiguous(), w_ih, w_hh, b_ih, b_hh,
                                   None if w_hr is None else w_hr.contiguous())
    elif mode == "GRU":
        from .gru import gru_layer

        out, h_n = gru_layer(x, steps, h0, w_ih, w_hh, b_ih, b_hh)
        c_n = None
    else:
        from .rnn import rnn_layer

        out, h_n = rnn_layer(x, steps, h0, w_ih, w_hh, b_ih, b_hh, mode == "RNN_RELU")
        c_n = None
    if batch_sizes is None:
        out = out.view(steps.T, steps.N, out.shape[-1])
    return out, h_n, c_n
