"""LSTM layer, torch.nn's gate rows (i, f, g, o), optional projection W_hr:
i, f, o = sig(.), g = tanh(.) of W_ih x + b_ih + W_hh r + b_hh;
c' = f c + i g, h' = o tanh(c'), r' = W_hr h' (or h' without projection).
The recurrent state is r [N,P] (P = proj_size, or H); the cell state c is [N,H].

Kernel -> launcher -> autograd.Function -> lstm_layer. See _common.py for the step layout.
Both biases fold into the input GEMM. The forward saves workspace [S,5H] = (i, f, g, o
after their activations, c').
"""
import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from . import _common as c
from ._common import _matmul, _step_rows, _load_weight, _load_weight_t, _tanh


@triton.jit
def _lstm_fwd_kernel(
    xg_ptr,       # [S,4H] x @ W_ih^T + b_ih + b_hh, input dtype
    h0_ptr,       # [N,P]
    c0_ptr,       # [N,H]
    w_hh_ptr,     # [4H,P]
    w_hr_ptr,     # [P,H] (PROJ only)
    out_ptr,      # [S,P]
    hn_ptr,       # [N,P]
    cn_ptr,       # [N,H]
    ws_ptr,       # [S,5H] ACC dtype (STORE_WS only)
    offsets_ptr, sizes_ptr,
    T, N, H, P,
    PROJ: tl.constexpr, STORE_WS: tl.constexpr, REVERSE: tl.constexpr,
    PACKED: tl.constexpr, ACC: tl.constexpr, OPERAND: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols_h = tl.arange(0, BLOCK_H)
    cols_p = tl.arange(0, BLOCK_P)
    h_ok = cols_h[None, :] < H
    p_ok = cols_p[None, :] < P
    row_ok = rows[:, None] < N
    w_i = _load_weight_t(w_hh_ptr, 0, H, P, BLOCK_P, BLOCK_H).to(OPERAND)
    w_f = _load_weight_t(w_hh_ptr, 1, H, P, BLOCK_P, BLOCK_H).to(OPERAND)
    w_g = _load_weight_t(w_hh_ptr, 2, H, P, BLOCK_P, BLOCK_H).to(OPERAND)
    w_o = _load_weight_t(w_hh_ptr, 3, H, P, BLOCK_P, BLOCK_H).to(OPERAND)
    if PROJ:
        w_r = _load_weight_t(w_hr_ptr, 0, P, H, BLOCK_H, BLOCK_P).to(OPERAND)
    r = tl.load(h0_ptr + rows[:, None] * P + cols_p[None, :], mask=row_ok & p_ok,
                other=0.0).to(ACC)
    cell = tl.load(c0_ptr + rows[:, None] * H + cols_h[None, :], mask=row_ok & h_ok,
                   other=0.0).to(ACC)
    for i in range(T):
        t = T - 1 - i if REVERSE else i
        offset, active = _step_rows(t, offsets_ptr, sizes_ptr, rows, N, PACKED)
        live_h = active[:, None] & h_ok
        row_at = (offset + rows[:, None])
        xg = xg_ptr + row_at * (4 * H) + cols_h[None, :]
        g_i = tl.sigmoid(tl.load(xg, mask=live_h, other=0.0).to(ACC)
                         + _matmul(r, w_i, ACC, OPERAND))
        g_f = tl.sigmoid(tl.load(xg + H, mask=live_h, other=0.0).to(ACC)
                         + _matmul(r, w_f, ACC, OPERAND))
        g_g = _tanh(tl.load(xg + 2 * H, mask=live_h, other=0.0).to(ACC)
                    + _matmul(r, w_g, ACC, OPERAND))
        g_o = tl.sigmoid(tl.load(xg + 3 * H, mask=live_h, other=0.0).to(ACC)
                         + _matmul(r, w_o, ACC, OPERAND))
        c_new = g_f * cell + g_i * g_g
        h_new = g_o * _tanh(c_new)
        if PROJ:
            h_new = _matmul(h_new, w_r, ACC, OPERAND)
        cell = tl.where(active[:, None], c_new, cell)
        r = tl.where(active[:, None], h_new, r)
        tl.store(out_ptr + row_at * P + cols_p[None, :], r.to(out_ptr.dtype.element_ty),
                 mask=active[:, None] & p_ok)
        if STORE_WS:
            ws = ws_ptr + row_at * (5 * H) + cols_h[None, :]
            tl.store(ws, g_i, mask=live_h)
            tl.store(ws + H, g_f, mask=live_h)
            tl.store(ws + 2 * H, g_g, mask=live_h)
            tl.store(ws + 3 * H, g_o, mask=live_h)
            tl.store(ws + 4 * H, c_new, mask=live_h)
    tl.store(hn_ptr + rows[:, None] * P + cols_p[None, :], r.to(hn_ptr.dtype.element_ty),
             mask=row_ok & p_ok)
    tl.store(cn_ptr + rows[:, None] * H + cols_h[None, :], cell.to(cn_ptr.dtype.element_ty),
             mask=row_ok & h_ok)


@triton.jit
def _lstm_bwd_kernel(
    grad_out_ptr,  # [S,P]
    grad_hn_ptr,   # [N,P]
    grad_cn_ptr,   # [N,H]
    c_prev_ptr,    # [S,H]  cell state each row started its step from
    ws_ptr,        # [S,5H] forward workspace (i, f, g, o, c')
    w_hh_ptr,      # [4H,P]
    w_hr_ptr,      # [P,H] (PROJ only)
    dgates_ptr,    # [S,4H] out: gradient of the gate pre-activations, ACC dtype
    dr_ptr,        # [S,P]  out (PROJ only): gradient into each step's r', ACC dtype
    grad_h0_ptr,   # [N,P]  out
    grad_c0_ptr,   # [N,H]  out
    offsets_ptr, sizes_ptr,
    T, N, H, P,
    PROJ: tl.constexpr, REVERSE: tl.constexpr, PACKED: tl.constexpr,
    ACC: tl.constexpr, OPERAND: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols_h = tl.arange(0, BLOCK_H)
    cols_p = tl.arange(0, BLOCK_P)
    h_ok = cols_h[None, :] < H
    p_ok = cols_p[None, :] < P
    row_ok = rows[:, None] < N
    w_i = _load_weight(w_hh_ptr, 0, H, P, BLOCK_H, BLOCK_P).to(OPERAND)
    w_f = _load_weight(w_hh_ptr, 1, H, P, BLOCK_H, BLOCK_P).to(OPERAND)
    w_g = _load_weight(w_hh_ptr, 2, H, P, BLOCK_H, BLOCK_P).to(OPERAND)
    w_o = _load_weight(w_hh_ptr, 3, H, P, BLOCK_H, BLOCK_P).to(OPERAND)
    if PROJ:
        w_r = _load_weight(w_hr_ptr, 0, P, H, BLOCK_P, BLOCK_H).to(OPERAND)
    dr = tl.load(grad_hn_ptr + rows[:, None] * P + cols_p[None, :], mask=row_ok & p_ok,
                 other=0.0).to(ACC)
    dc = tl.load(grad_cn_ptr + rows[:, None] * H + cols_h[None, :], mask=row_ok & h_ok,
                 other=0.0).to(ACC)
    for i in range(T):
        t = i if REVERSE else T - 1 - i
        offset, active = _step_rows(t, offsets_ptr, sizes_ptr, rows, N, PACKED)
        live_h = active[:, None] & h_ok
        live_p = active[:, None] & p_ok
        row_at = (offset + rows[:, None])
        dr += tl.load(grad_out_ptr + row_at * P + cols_p[None, :], mask=live_p,
                      other=0.0).to(ACC)
        if PROJ:
            tl.store(dr_ptr + row_at * P + cols_p[None, :], dr, mask=live_p)
            dh = _matmul(dr, w_r, ACC, OPERAND)
        else:
            dh = dr
        ws = ws_ptr + row_at * (5 * H) + cols_h[None, :]
        g_i = tl.load(ws, mask=live_h, other=0.0)
        g_f = tl.load(ws + H, mask=live_h, other=0.0)
        g_g = tl.load(ws + 2 * H, mask=live_h, other=0.0)
        g_o = tl.load(ws + 3 * H, mask=live_h, other=0.0)
        tanh_c = _tanh(tl.load(ws + 4 * H, mask=live_h, other=0.0))
        c_prev = tl.load(c_prev_ptr + row_at * H + cols_h[None, :], mask=live_h,
                         other=0.0).to(ACC)
        dc_step = dc + dh * g_o * (1.0 - tanh_c * tanh_c)
        d_i = dc_step * g_g * g_i * (1.0 - g_i)
        d_f = dc_step * c_prev * g_f * (1.0 - g_f)
        d_g = dc_step * g_i * (1.0 - g_g * g_g)
        d_o = dh * tanh_c * g_o * (1.0 - g_o)
        dg = dgates_ptr + row_at * (4 * H) + cols_h[None, :]
        tl.store(dg, d_i, mask=live_h)
        tl.store(dg + H, d_f, mask=live_h)
        tl.store(dg + 2 * H, d_g, mask=live_h)
        tl.store(dg + 3 * H, d_o, mask=live_h)
        dr_prev = (_matmul(d_i, w_i, ACC, OPERAND) + _matmul(d_f, w_f, ACC, OPERAND)
                   + _matmul(d_g, w_g, ACC, OPERAND) + _matmul(d_o, w_o, ACC, OPERAND))
        dr = tl.where(active[:, None], dr_prev, dr)
        dc = tl.where(active[:, None], dc_step * g_f, dc)
    tl.store(grad_h0_ptr + rows[:, None] * P + cols_p[None, :],
             dr.to(grad_h0_ptr.dtype.element_ty), mask=row_ok & p_ok)
    tl.store(grad_c0_ptr + rows[:, None] * H + cols_h[None, :],
             dc.to(grad_c0_ptr.dtype.element_ty), mask=row_ok & h_ok)


def _blocks(H, P):
    BLOCK_H, BLOCK_P = c.block(H), c.block(P)
    return BLOCK_H, BLOCK_P, c.num_warps(BLOCK_H, BLOCK_P)


def lstm_fwd(x, steps, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, need_workspace):
    """x [S,C] rows -> (out [S,P], h_n [N,P], c_n [N,H], workspace [S,5H] or None)."""
    H, P = c0.shape[1], h0.shape[1]
    xg = c.input_gates(x, w_ih, None if b_ih is None else b_ih + b_hh)
    out = torch.empty(steps.S, P, dtype=x.dtype, device=x.device)
    h_n, c_n = torch.empty_like(h0), torch.empty_like(c0)
    ws = (torch.empty(steps.S, 5 * H, dtype=c.acc_dtype(x.dtype), device=x.device)
          if need_workspace else None)
    acc, operand = c.dtypes(x.dtype)
    BLOCK_H, BLOCK_P, warps = _blocks(H, P)
    _lstm_fwd_kernel[steps.grid()](
        xg, h0, c0, w_hh, w_hh if w_hr is None else w_hr, out, h_n, c_n,
        ws if need_workspace else out, steps.offsets, steps.sizes, steps.T, steps.N, H, P,
        PROJ=w_hr is not None, STORE_WS=need_workspace, REVERSE=steps.reverse,
        PACKED=steps.packed, ACC=acc, OPERAND=operand,
        BLOCK_N=c.BLOCK_N, BLOCK_H=BLOCK_H, BLOCK_P=BLOCK_P, num_warps=warps)
    return out, h_n, c_n, ws


def lstm_bwd(grad_out, grad_h_n, grad_c_n, c_prev, ws, steps, h0, c0, w_hh, w_hr):
    """-> (dgates [S,4H], dr [S,P] or None, both in the accumulation dtype, grad_h0 [N,P],
    grad_c0 [N,H])."""
    H, P = c0.shape[1], h0.shape[1]
    acc_dtype = c.acc_dtype(grad_out.dtype)
    dgates = torch.empty(steps.S, 4 * H, dtype=acc_dtype, device=ws.device)
    dr = (torch.empty(steps.S, P, dtype=acc_dtype, device=ws.device)
          if w_hr is not None else None)
    grad_h0, grad_c0 = torch.empty_like(h0), torch.empty_like(c0)
    acc, operand = c.dtypes(grad_out.dtype)
    BLOCK_H, BLOCK_P, warps = _blocks(H, P)
    _lstm_bwd_kernel[steps.grid()](
        grad_out, grad_h_n, grad_c_n, c_prev, ws, w_hh, w_hh if w_hr is None else w_hr,
        dgates, dgates if dr is None else dr, grad_h0, grad_c0, steps.offsets, steps.sizes,
        steps.T, steps.N, H, P,
        PROJ=w_hr is not None, REVERSE=steps.reverse, PACKED=steps.packed,
        ACC=acc, OPERAND=operand,
        BLOCK_N=c.BLOCK_N, BLOCK_H=BLOCK_H, BLOCK_P=BLOCK_P, num_warps=warps)
    return dgates, dr, grad_h0, grad_c0


class _LSTMFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, steps):
        out, h_n, c_n, ws = lstm_fwd(x, steps, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                     need_workspace=any(ctx.needs_input_grad))
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, w_hr, out, ws)
        ctx.steps, ctx.has_bias = steps, b_ih is not None
        return out, h_n, c_n

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_h_n, grad_c_n):
        x, h0, c0, w_ih, w_hh, w_hr, out, ws = ctx.saved_tensors
        steps, need = ctx.steps, ctx.needs_input_grad
        H = c0.shape[1]
        c_prev = steps.previous(ws[:, 4 * H:], c0.to(ws.dtype))
        dgates, dr, grad_h0, grad_c0 = lstm_bwd(
            grad_out.contiguous(), grad_h_n.contiguous(), grad_c_n.contiguous(), c_prev, ws,
            steps, h0, c0, w_hh, w_hr)
        grad_x, grad_w_ih, grad_b = c.input_weight_grads(
            dgates, x, w_ih, need[0], need[3], ctx.has_bias and (need[5] or need[6]))
        grad_w_hh = (c.recurrent_weight_grad(dgates, steps.previous(out, h0), x.dtype)
                     if need[4] else None)
        grad_w_hr = None
        if w_hr is not None and need[7]:
            h = ws[:, 3 * H:4 * H] * torch.tanh(ws[:, 4 * H:])
            grad_w_hr = c.recurrent_weight_grad(dr, h, x.dtype)
        return (grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b, grad_b, grad_w_hr,
                None)


def lstm_layer(x, steps, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr):
    """x [S,C] rows (see _common.Steps) -> (out [S,P], h_n [N,P], c_n [N,H])."""
    if not torch.is_grad_enabled():
        # No graph to record. _LSTMFunction would still see the parameters' requires_grad
        # and compute the workspace only a backward reads.
        return lstm_fwd(x, steps, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                        need_workspace=False)[:3]
    return _LSTMFunction.apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, steps)
