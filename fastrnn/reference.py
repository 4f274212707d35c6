"""The specification backend: one layer-direction as a plain per-step PyTorch loop.

Written from torch.nn's documented equations, not for speed. Tests hold every compiled
backend to it, and it is what runs when no compiled backend is available. Every backend
exposes `layer` with exactly this signature (see csrc/fastrnn.cpp for the shape legend:
T time, N batch, C input, H hidden, P recurrent state size, S packed rows).
"""
import torch
import torch.nn.functional as F


def rnn_step(gates_x, h, w_hh, b_hh, relu):
    """h' = act(W_ih x + b_ih + W_hh h + b_hh); gates_x already holds W_ih x + b_ih."""
    pre = gates_x + F.linear(h, w_hh, b_hh)
    return torch.relu(pre) if relu else torch.tanh(pre)


def gru_step(gates_x, h, w_hh, b_hh):
    """torch.nn.GRU, gate rows (r, z, n):
    r = sig(x_r + h_r), z = sig(x_z + h_z), n = tanh(x_n + r * h_n), h' = (1-z) n + z h,
    where x_* include b_ih and h_* = W_h* h + b_h* (so b_hn sits inside the r product)."""
    x_r, x_z, x_n = gates_x.chunk(3, dim=1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def lstm_step(gates_x, h, c, w_hh, b_hh, w_hr):
    """torch.nn.LSTM, gate rows (i, f, g, o): c' = f c + i g, h' = o tanh(c'),
    then h' = W_hr h' when the layer has a projection."""
    gates = gates_x + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    if w_hr is not None:
        h_new = F.linear(h_new, w_hr)
    return h_new, c_new


def layer(mode, input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """Runs one layer in one direction over the whole sequence.

    input [T,N,C] (batch_sizes None) or packed [S,C] with batch_sizes [T]; h0 [N,P];
    c0 [N,H] for LSTM. Returns (output [T,N,P] or [S,P], h_n [N,P], c_n [N,H] or None).

    Packed rows follow torch.nn: at step t only the first batch_sizes[t] sequences are
    active. Rows past that keep their state untouched, which makes a finished sequence
    keep its last hidden (forward) and a not-yet-started one keep its h0 (reverse).
    """
    if batch_sizes is None:
        steps_x = F.linear(input, w_ih, b_ih).unbind(0)
    else:
        steps_x = F.linear(input, w_ih, b_ih).split(batch_sizes.tolist())
    order = range(len(steps_x) - 1, -1, -1) if reverse else range(len(steps_x))

    h, c = h0, c0
    outputs = [None] * len(steps_x)
    for t in order:
        gates_x = steps_x[t]
        active = gates_x.shape[0]
        h_active = h[:active]
        if mode == "LSTM":
            h_new, c_new = lstm_step(gates_x, h_active, c[:active], w_hh, b_hh, w_hr)
            c = torch.cat([c_new, c[active:]])
        elif mode == "GRU":
            h_new = gru_step(gates_x, h_active, w_hh, b_hh)
        else:
            h_new = rnn_step(gates_x, h_active, w_hh, b_hh, relu=(mode == "RNN_RELU"))
        h = torch.cat([h_new, h[active:]])
        outputs[t] = h_new

    output = torch.stack(outputs) if batch_sizes is None else torch.cat(outputs)
    return output, h, (c if mode == "LSTM" else None)
