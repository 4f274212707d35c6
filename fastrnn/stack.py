"""Runs a stack of recurrent layers (num_layers x directions) on one backend.

This is torch.nn's layer loop (ATen's apply_layer_stack): each layer-direction is one
backend `layer` call, both directions read the same layer input, their outputs are
concatenated on the feature axis, and dropout is applied between layers (not after the
last) with F.dropout, so a seeded training run draws exactly torch.nn's masks.

The compiled backends run the same loop in C++ (fastrnn::layer_stack, csrc/stack.cpp):
at the sine-wave shape this file's Python costs as much as the layer itself. The Python
loop below serves the Triton and reference backends.
"""
import torch
import torch.nn.functional as F

from fastrnn import ops, reference


def weights_of(flat_weights, index, has_bias, has_proj):
    """(w_ih, w_hh, b_ih, b_hh, w_hr) of layer-direction `index` in RNNBase._flat_weights,
    which holds per layer-direction: w_ih, w_hh[, b_ih, b_hh][, w_hr]."""
    stride = 2 + 2 * has_bias + has_proj
    w = flat_weights[index * stride:(index + 1) * stride]
    b_ih, b_hh = (w[2], w[3]) if has_bias else (None, None)
    return w[0], w[1], b_ih, b_hh, (w[-1] if has_proj else None)


def run(layer, mode, input, batch_sizes, hx, cx, flat_weights, *, batch, num_layers,
        bidirectional, batch_first, has_bias, has_proj, dropout, training):
    """input [T,N,C] ([N,T,C] when batch_first, never set for packed input) or packed
    [S,C]; hx [L*D,N,P] and
    cx [L*D,N,H] (LSTM), or None for zeros; batch = N.

    Returns (output in the input's layout with D*P features, h_n [L*D,N,P],
    c_n [L*D,N,H] or None).
    """
    is_lstm = mode == "LSTM"
    if batch == 0:
        # An empty batch has nothing to compute; the spec backend returns torch.nn's
        # empty (but autograd-connected) results without asking kernels to handle N=0.
        layer = reference.layer
    # layer_stack makes padded input's zero states itself; it cannot size packed ones.
    if hx is None and (batch_sizes is not None or layer is not ops.layer):
        states = num_layers * (2 if bidirectional else 1)
        hx = input.new_zeros(states, batch, flat_weights[1].shape[1])
        cx = input.new_zeros(states, batch, flat_weights[1].shape[0] // 4) if is_lstm else None
    if layer is ops.layer:
        output, h_n, c_n = ops.layer_stack(mode, input, batch_sizes, hx, cx, flat_weights,
                                           num_layers, bidirectional, batch_first, has_bias,
                                           has_proj, dropout, training)
        return output, h_n, (c_n if is_lstm else None)
    output, h_n, c_n = _python_loop(layer, mode, input.transpose(0, 1) if batch_first else input,
                                    batch_sizes, hx, cx, flat_weights, num_layers,
                                    bidirectional, has_bias, has_proj, dropout, training)
    return (output.transpose(0, 1) if batch_first else output), h_n, c_n


def _python_loop(layer, mode, input, batch_sizes, hx, cx, flat_weights, num_layers,
                 bidirectional, has_bias, has_proj, dropout, training):
    """The layer loop on time-major or packed input; see run()."""
    directions = 2 if bidirectional else 1
    h_n, c_n = [], []
    layer_input = input
    for layer_index in range(num_layers):
        outputs = []
        for direction in range(directions):
            index = layer_index * directions + direction
            output, h, c = layer(mode, layer_input, batch_sizes, hx[index],
                                 None if cx is None else cx[index],
                                 *weights_of(flat_weights, index, has_bias, has_proj),
                                 direction == 1)
            outputs.append(output)
            h_n.append(h)
            c_n.append(c)
        layer_input = outputs[0] if directions == 1 else torch.cat(outputs, dim=-1)
        if dropout and training and layer_index < num_layers - 1:
            layer_input = F.dropout(layer_input, dropout, training=True)
    # torch.stack copies: final states must not be views (users, the seeds among them,
    # call hidden.detach_(), which views refuse), and a backend's outputs must not be
    # modified in place (its autograd may have saved them).
    return layer_input, torch.stack(h_n), (None if cx is None else torch.stack(c_n))
