"""Elman RNN layer: h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu.

Kernel -> launcher -> autograd.Function -> rnn_layer. See _common.py for the step layout.
The backward needs no workspace: act'(.) follows from the output h' itself.
"""
import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from . import _common as c
from ._common import _matmul, _step_rows, _load_weight, _load_weight_t, _tanh


@triton.jit
def _rnn_fwd_kernel(
    xg_ptr,       # [S,H]  x @ W_ih^T + b_ih + b_hh, input dtype
    h0_ptr,       # [N,H]
    w_hh_ptr,     # [H,H]
    out_ptr,      # [S,H]
    hn_ptr,       # [N,H]
    offsets_ptr,  # [T] int64, first row of each step (PACKED only)
    sizes_ptr,    # [T] int64, active rows of each step (PACKED only)
    T, N, H,
    RELU: tl.constexpr, REVERSE: tl.constexpr, PACKED: tl.constexpr,
    ACC: tl.constexpr, OPERAND: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols[None, :] < H
    tile = (rows[:, None] < N) & col_ok
    w_t = _load_weight_t(w_hh_ptr, 0, H, H, BLOCK_H, BLOCK_H).to(OPERAND)
    h = tl.load(h0_ptr + rows[:, None] * H + cols[None, :], mask=tile, other=0.0).to(ACC)
    for i in range(T):
        t = T - 1 - i if REVERSE else i
        offset, active = _step_rows(t, offsets_ptr, sizes_ptr, rows, N, PACKED)
        live = active[:, None] & col_ok
        at = (offset + rows[:, None]) * H + cols[None, :]
        pre = tl.load(xg_ptr + at, mask=live, other=0.0).to(ACC) + _matmul(h, w_t, ACC, OPERAND)
        if RELU:
            h_new = tl.where(pre < 0.0, 0.0, pre)  # tl.maximum would turn NaN into 0
        else:
            h_new = _tanh(pre)
        # Rows past their sequence's end keep their state (packed semantics), and padding
        # columns stay 0: relu(inf * 0 padding weights) would be NaN there and leak into
        # real columns through the next step's matmul.
        h = tl.where(live, h_new, h)
        tl.store(out_ptr + at, h.to(out_ptr.dtype.element_ty), mask=live)
    tl.store(hn_ptr + rows[:, None] * H + cols[None, :], h.to(hn_ptr.dtype.element_ty), mask=tile)


@triton.jit
def _rnn_bwd_kernel(
    grad_out_ptr,  # [S,H]
    grad_hn_ptr,   # [N,H]
    out_ptr,       # [S,H]  forward output h'
    w_hh_ptr,      # [H,H]
    dpre_ptr,      # [S,H]  out: gradient of the pre-activation, ACC dtype
    grad_h0_ptr,   # [N,H]  out
    offsets_ptr, sizes_ptr,
    T, N, H,
    RELU: tl.constexpr, REVERSE: tl.constexpr, PACKED: tl.constexpr,
    ACC: tl.constexpr, OPERAND: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols[None, :] < H
    tile = (rows[:, None] < N) & col_ok
    w = _load_weight(w_hh_ptr, 0, H, H, BLOCK_H, BLOCK_H).to(OPERAND)
    dh = tl.load(grad_hn_ptr + rows[:, None] * H + cols[None, :], mask=tile, other=0.0).to(ACC)
    # Steps in the opposite order of the forward.
    for i in range(T):
        t = i if REVERSE else T - 1 - i
        offset, active = _step_rows(t, offsets_ptr, sizes_ptr, rows, N, PACKED)
        live = active[:, None] & col_ok
        at = (offset + rows[:, None]) * H + cols[None, :]
        dh += tl.load(grad_out_ptr + at, mask=live, other=0.0).to(ACC)
        h = tl.load(out_ptr + at, mask=live, other=0.0).to(ACC)
        if RELU:
            dpre = tl.where(h <= 0.0, 0.0, dh)  # NaN passes its gradient, as in torch
        else:
            dpre = dh * (1.0 - h * h)
        tl.store(dpre_ptr + at, dpre, mask=live)
        dh = tl.where(live, _matmul(dpre, w, ACC, OPERAND), dh)
    tl.store(grad_h0_ptr + rows[:, None] * H + cols[None, :],
             dh.to(grad_h0_ptr.dtype.element_ty), mask=tile)


def rnn_fwd(x, steps, h0, w_ih, w_hh, b_ih, b_hh, relu):
    """x [S,C] rows -> (out [S,H], h_n [N,H])."""
    H = w_hh.shape[0]
    bias = None if b_ih is None else b_ih + b_hh
    xg = c.input_gates(x, w_ih, bias)
    out = torch.empty(steps.S, H, dtype=x.dtype, device=x.device)
    h_n = torch.empty_like(h0)
    acc, operand = c.dtypes(x.dtype)
    BLOCK_H = c.block(H)
    _rnn_fwd_kernel[steps.grid()](
        xg, h0, w_hh, out, h_n, steps.offsets, steps.sizes, steps.T, steps.N, H,
        RELU=relu, REVERSE=steps.reverse, PACKED=steps.packed, ACC=acc, OPERAND=operand,
        BLOCK_N=c.BLOCK_N, BLOCK_H=BLOCK_H, num_warps=c.num_warps(BLOCK_H))
    return out, h_n


def rnn_bwd(grad_out, grad_h_n, out, steps, h0, w_hh, relu):
    """-> (dpre [S,H] in the accumulation dtype, grad_h0 [N,H])."""
    H = w_hh.shape[0]
    dpre = torch.empty(steps.S, H, dtype=c.acc_dtype(out.dtype), device=out.device)
    grad_h0 = torch.empty_like(h0)
    acc, operand = c.dtypes(out.dtype)
    BLOCK_H = c.block(H)
    _rnn_bwd_kernel[steps.grid()](
        grad_out, grad_h_n, out, w_hh, dpre, grad_h0, steps.offsets, steps.sizes,
        steps.T, steps.N, H,
        RELU=relu, REVERSE=steps.reverse, PACKED=steps.packed, ACC=acc, OPERAND=operand,
        BLOCK_N=c.BLOCK_N, BLOCK_H=BLOCK_H, num_warps=c.num_warps(BLOCK_H))
    return dpre, grad_h0


class _RNNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, steps, relu):
        out, h_n = rnn_fwd(x, steps, h0, w_ih, w_hh, b_ih, b_hh, relu)
        ctx.save_for_backward(x, h0, w_ih, w_hh, out)
        ctx.steps, ctx.relu, ctx.has_bias = steps, relu, b_ih is not None
        return out, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_h_n):
        x, h0, w_ih, w_hh, out = ctx.saved_tensors
        steps, need = ctx.steps, ctx.needs_input_grad
        dpre, grad_h0 = rnn_bwd(grad_out.contiguous(), grad_h_n.contiguous(), out, steps,
                                h0, w_hh, ctx.relu)
        grad_x, grad_w_ih, grad_b = c.input_weight_grads(
            dpre, x, w_ih, need[0], need[2], ctx.has_bias and (need[4] or need[5]))
        grad_w_hh = c.recurrent_weight_grad(dpre, steps.previous(out, h0), x.dtype) if need[3] else None
        return grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b, grad_b, None, None


def rnn_layer(x, steps, h0, w_ih, w_hh, b_ih, b_hh, relu):
    """x [S,C] rows (see _common.Steps) -> (out [S,H], h_n [N,H])."""
    return _RNNFunction.apply(x, h0, w_ih, w_hh, b_ih, b_hh, steps, relu)
