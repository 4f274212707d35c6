"""The only Python file that touches torch.ops.fastrnn.

Loads the compiled library (fastrnn._C), registers a fake (meta) implementation for every
op so torch.compile and torch.export can trace them, and exposes `layer`, the backend
function of the compiled 'cpu' and 'cuda' backends (signature: fastrnn/reference.py), and
`layer_stack`, their whole-stack op; eager calls reach both through fastrnn._C.
"""
import importlib
import warnings

import torch

try:
    _C = importlib.import_module("fastrnn._C")  # loading the library registers the ops
except ImportError as error:
    LOAD_ERROR = f"fastrnn._C could not be imported ({error})"
    warnings.warn(
        f"{LOAD_ERROR}; only the 'reference' backend (pure PyTorch, slow) is available. "
        "Build the kernels with: pip install --no-build-isolation -e .",
        RuntimeWarning,
        stacklevel=2,
    )
else:
    LOAD_ERROR = None


def has_kernel(device_type):
    """Whether the compiled library has kernels for this dispatch key ('CPU', 'CUDA')."""
    if LOAD_ERROR is not None:
        return False
    # A plain dict lookup, so torch.compile traces the modules' backend choice without a
    # graph break (Dynamo cannot trace the dispatcher query itself).
    if device_type not in _HAS_KERNEL:
        _HAS_KERNEL[device_type] = torch._C._dispatch_has_kernel_for_dispatch_key(
            "fastrnn::gru_layer_fwd", device_type)
    return _HAS_KERNEL[device_type]


_HAS_KERNEL = {}
if LOAD_ERROR is None:
    for _key in ("CPU", "CUDA"):
        has_kernel(_key)


def _fake_layer_outputs(input, batch_sizes, h0):
    """output [T,N,P] for padded input, [S,P] for packed input."""
    if batch_sizes is None:
        return input.new_empty(input.shape[0], input.shape[1], h0.shape[-1])
    return input.new_empty(input.shape[0], h0.shape[-1])


def _fake_workspace(input, batch_sizes, need_workspace, width):
    """The workspace every backend's *_layer_fwd returns: [S, width] rows (S = packed rows,
    T*N padded) when need_workspace and the cell keeps one, else an empty [0] tensor.
    width: GRU 4H (r, z, n, W_hn h + b_hn), LSTM 5H (i, f, g, o, c'), RNN 0 (none).
    The layout inside a row is the backend's own; the shape is shared so one fake serves
    every backend."""
    if not need_workspace or width == 0:
        return input.new_empty(0)
    rows = input.shape[0] if batch_sizes is not None else input.shape[0] * input.shape[1]
    return input.new_empty(rows, width)


def _register_fakes():
    lib = "fastrnn::"

    @torch.library.register_fake(lib + "rnn_layer_fwd")
    def _(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse, need_workspace):
        return (_fake_layer_outputs(input, batch_sizes, h0), torch.empty_like(h0),
                _fake_workspace(input, batch_sizes, need_workspace, 0))

    @torch.library.register_fake(lib + "gru_layer_fwd")
    def _(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reverse, need_workspace):
        return (_fake_layer_outputs(input, batch_sizes, h0), torch.empty_like(h0),
                _fake_workspace(input, batch_sizes, need_workspace, 4 * w_hh.shape[1]))

    @torch.library.register_fake(lib + "lstm_layer_fwd")
    def _(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse, need_workspace):
        return (_fake_layer_outputs(input, batch_sizes, h0), torch.empty_like(h0),
                torch.empty_like(c0),
                _fake_workspace(input, batch_sizes, need_workspace, 5 * c0.shape[-1]))

    # *_layer_bwd returns an empty tensor for each gradient it was not asked for.
    def grad_result(wanted, like, shape=None):
        return like.new_empty(like.shape if shape is None else shape) if wanted \
            else like.new_empty(0)

    def weight_grads(wanted, w_ih, w_hh):
        gh = w_hh.shape[0]
        return (grad_result(wanted, w_ih), grad_result(wanted, w_hh),
                grad_result(wanted, w_hh, gh), grad_result(wanted, w_hh, gh))

    @torch.library.register_fake(lib + "rnn_layer_bwd")
    def _(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, output,
          workspace, relu, reverse, need_grad_input, need_grad_weights, need_grad_state):
        return (grad_result(need_grad_input, input), grad_result(need_grad_state, h0),
                *weight_grads(need_grad_weights, w_ih, w_hh))

    @torch.library.register_fake(lib + "gru_layer_bwd")
    def _(grad_output, grad_h_n, input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, output,
          workspace, reverse, need_grad_input, need_grad_weights, need_grad_state):
        return (grad_result(need_grad_input, input), grad_result(need_grad_state, h0),
                *weight_grads(need_grad_weights, w_ih, w_hh))

    @torch.library.register_fake(lib + "lstm_layer_bwd")
    def _(grad_output, grad_h_n, grad_c_n, input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh,
          w_hr, output, workspace, reverse, need_grad_input, need_grad_weights,
          need_grad_state):
        grad_w_hr = grad_result(need_grad_weights, w_hr) if w_hr is not None \
            else w_hh.new_empty(0)
        return (grad_result(need_grad_input, input), grad_result(need_grad_state, h0),
                grad_result(need_grad_state, c0),
                *weight_grads(need_grad_weights, w_ih, w_hh), grad_w_hr)


if LOAD_ERROR is None:
    _register_fakes()


class _BoxedOps:
    """The public ops through torch.ops, under the names fastrnn._C gives them."""
    if LOAD_ERROR is None:
        rnn_layer = torch.ops.fastrnn.rnn_layer.default
        gru_layer = torch.ops.fastrnn.gru_layer.default
        lstm_layer = torch.ops.fastrnn.lstm_layer.default
        layer_stack = torch.ops.fastrnn.layer_stack.default


def _entry(tensors):
    """Where to call the public ops with these tensor arguments from.

    Eager calls take fastrnn._C: the same ops through their typed dispatcher handles,
    which skips torch.ops' boxing of every argument (~3 of ~11 us of a layer_stack call
    at the sine-wave shape; see csrc/python_entry.cpp). Dynamo traces only torch.ops, and
    only torch.ops honours __torch_function__ (tensor subclasses, torch function modes
    such as torch.export's), so those calls keep it."""
    if torch.compiler.is_compiling() or torch._C._has_torch_function(tensors):
        return _BoxedOps
    return _C


# FusedRNN/GRU/LSTM.forward's plain call (csrc/plain_forward.cpp), None without the library.
plain_forward = _C.plain_forward if LOAD_ERROR is None else None
# The *Cell classes' plain step (csrc/plain_cell.cpp), None without the library.
plain_cell = _C.plain_cell if LOAD_ERROR is None else None


def layer_stack(mode, input, batch_sizes, h0, c0, weights, num_layers, bidirectional,
                batch_first, has_bias, has_proj, dropout, train):
    """The whole layer stack in one op call (csrc/stack.cpp); fastrnn/stack.py uses it for
    the backends whose layer is `layer` below. weights: a list of Tensors."""
    return _entry((input, batch_sizes, h0, c0, *weights)).layer_stack(
        mode, input, batch_sizes, h0, c0, weights, num_layers, bidirectional, batch_first,
        has_bias, has_proj, dropout, train)


def layer(mode, input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse):
    """One layer-direction through the compiled kernels; see fastrnn/reference.py. The
    ops' last argument, batch_first, is for layer_stack: always False here."""
    entry = _entry((input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr))
    if mode == "GRU":
        output, h_n = entry.gru_layer(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reverse,
                                      False)
        return output, h_n, None
    if mode == "LSTM":
        return entry.lstm_layer(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                reverse, False)
    output, h_n = entry.rnn_layer(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh,
                                  mode == "RNN_RELU", reverse, False)
    return output, h_n, None
