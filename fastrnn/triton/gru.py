"""GRU layer, torch.nn's gate rows (r, z, n):
r = sig(x_r + W_hr h + b_hr), z = sig(x_z + W_hz h + b_hz),
n = tanh(x_n + r * (W_hn h + b_hn)), h' = (1 - z) n + z h, with x_* = W_i* x + b_i*.

Kernel -> launcher -> autograd.Function -> gru_layer. See _common.py for the step layout.
b_hr and b_hz fold into the input GEMM; b_hn cannot (it sits inside the r product), so
the kernel adds it. The forward saves workspace [S,4H] = (r, z, n, W_hn h + b_hn).
"""
import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from . import _common as c
from ._common import _matmul, _step_rows, _load_weight, _load_weight_t, _tanh


@triton.jit
def _gru_fwd_kernel(
    xg_ptr,       # [S,3H] x @ W_ih^T + b_ih + (b_hr, b_hz, 0), input dtype
    b_hn_ptr,     # [H] (HAS_BIAS only)
    h0_ptr,       # [N,H]
    w_hh_ptr,     # [3H,H]
    out_ptr,      # [S,H]
    hn_ptr,       # [N,H]
    ws_ptr,       # [S,4H] ACC dtype (STORE_WS only)
    offsets_ptr, sizes_ptr,
    T, N, H,
    HAS_BIAS: tl.constexpr, STORE_WS: tl.constexpr, REVERSE: tl.constexpr,
    PACKED: tl.constexpr, ACC: tl.constexpr, OPERAND: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols[None, :] < H
    tile = (rows[:, None] < N) & col_ok
    w_r = _load_weight_t(w_hh_ptr, 0, H, H, BLOCK_H, BLOCK_H).to(OPERAND)
    w_z = _load_weight_t(w_hh_ptr, 1, H, H, BLOCK_H, BLOCK_H).to(OPERAND)
    w_n = _load_weight_t(w_hh_ptr, 2, H, H, BLOCK_H, BLOCK_H).to(OPERAND)
    if HAS_BIAS:
        b_hn = tl.load(b_hn_ptr + cols, mask=cols < H, other=0.0).to(ACC)[None, :]
    h = tl.load(h0_ptr + rows[:, None] * H + cols[None, :], mask=tile, other=0.0).to(ACC)
    for i in range(T):
        t = T - 1 - i if REVERSE else i
        offset, active = _step_rows(t, offsets_ptr, sizes_ptr, rows, N, PACKED)
        live = active[:, None] & col_ok
        row_at = (offset + rows[:, None])
        xg = xg_ptr + row_at * (3 * H) + cols[None, :]
        x_r = tl.load(xg, mask=live, other=0.0).to(ACC)
        x_z = tl.load(xg + H, mask=live, other=0.0).to(ACC)
        x_n = tl.load(xg + 2 * H, mask=live, other=0.0).to(ACC)
        h_n = _matmul(h, w_n, ACC, OPERAND)
        if HAS_BIAS:
            h_n += b_hn
        r = tl.sigmoid(x_r + _matmul(h, w_r, ACC, OPERAND))
        z = tl.sigmoid(x_z + _matmul(h, w_z, ACC, OPERAND))
        n = _tanh(x_n + r * h_n)
        h = tl.where(active[:, None], (1.0 - z) * n + z * h, h)
        tl.store(out_ptr + row_at * H + cols[None, :], h.to(out_ptr.dtype.element_ty), mask=live)
        if STORE_WS:
            ws = ws_ptr + row_at * (4 * H) + cols[None, :]
            tl.store(ws, r, mask=live)
            tl.store(ws + H, z, mask=live)
            tl.store(ws + 2 * H, n, mask=live)
            tl.store(ws + 3 * H, h_n, mask=live)
    tl.store(hn_ptr + rows[:, None] * H + cols[None, :], h.to(hn_ptr.dtype.element_ty), mask=tile)


@triton.jit
def _gru_bwd_kernel(
    grad_out_ptr,  # [S,H]
    grad_hn_ptr,   # [N,H]
    h_prev_ptr,    # [S,H]  state each row started its step from
    ws_ptr,        # [S,4H] forward workspace (r, z, n, W_hn h + b_hn)
    w_hh_ptr,      # [3H,H]
    dgi_ptr,       # [S,3H] out: gradient of the input-side pre-activations, ACC dtype
    dgh_ptr,       # [S,3H] out: gradient of W_hh h + b_hh, ACC dtype
    grad_h0_ptr,   # [N,H]  out
    offsets_ptr, sizes_ptr,
    T, N, H,
    REVERSE: tl.constexpr, PACKED: tl.constexpr, ACC: tl.constexpr, OPERAND: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols[None, :] < H
    tile = (rows[:, None] < N) & col_ok
    w_r = _load_weight(w_hh_ptr, 0, H, H, BLOCK_H, BLOCK_H).to(OPERAND)
    w_z = _load_weight(w_hh_ptr, 1, H, H, BLOCK_H, BLOCK_H).to(OPERAND)
    w_n = _load_weight(w_hh_ptr, 2, H, H, BLOCK_H, BLOCK_H).to(OPERAND)
    dh = tl.load(grad_hn_ptr + rows[:, None] * H + cols[None, :], mask=tile, other=0.0).to(ACC)
    for i in range(T):
        t = i if REVERSE else T - 1 - i
        offset, active = _step_rows(t, offsets_ptr, sizes_ptr, rows, N, PACKED)
        live = active[:, None] & col_ok
        row_at = (offset + rows[:, None])
        at = row_at * H + cols[None, :]
        dh += tl.load(grad_out_ptr + at, mask=live, other=0.0).to(ACC)
        h_prev = tl.load(h_prev_ptr + at, mask=live, other=0.0).to(ACC)
        ws = ws_ptr + row_at * (4 * H) + cols[None, :]
        r = tl.load(ws, mask=live, other=0.0)
        z = tl.load(ws + H, mask=live, other=0.0)
        n = tl.load(ws + 2 * H, mask=live, other=0.0)
        h_n = tl.load(ws + 3 * H, mask=live, other=0.0)
        dn = dh * (1.0 - z) * (1.0 - n * n)
        dz = dh * (h_prev - n) * z * (1.0 - z)
        dr = dn * h_n * r * (1.0 - r)
        dh_n = dn * r
        gi = dgi_ptr + row_at * (3 * H) + cols[None, :]
        tl.store(gi, dr, mask=live)
        tl.store(gi + H, dz, mask=live)
        tl.store(gi + 2 * H, dn, mask=live)
        gh = dgh_ptr + row_at * (3 * H) + cols[None, :]
        tl.store(gh, dr, mask=live)
        tl.store(gh + H, dz, mask=live)
        tl.store(gh + 2 * H, dh_n, mask=live)
        dh_prev = (dh * z + _matmul(dr, w_r, ACC, OPERAND) + _matmul(dz, w_z, ACC, OPERAND)
                   + _matmul(dh_n, w_n, ACC, OPERAND))
        dh = tl.where(active[:, None], dh_prev, dh)
    tl.store(grad_h0_ptr + rows[:, None] * H + cols[None, :],
             dh.to(grad_h0_ptr.dtype.element_ty), mask=tile)


def gru_fwd(x, steps, h0, w_ih, w_hh, b_ih, b_hh, need_workspace):
    """x [S,C] rows -> (out [S,H], h_n [N,H], workspace [S,4H] or None)."""
    H = w_hh.shape[1]
    has_bias = b_ih is not None
    bias = None
    if has_bias:
        bias = b_ih.clone()
        bias[: 2 * H] += b_hh[: 2 * H]
    xg = c.input_gates(x, w_ih, bias)
    out = torch.empty(steps.S, H, dtype=x.dtype, device=x.device)
    h_n = torch.empty_like(h0)
    ws = (torch.empty(steps.S, 4 * H, dtype=c.acc_dtype(x.dtype), device=x.device)
          if need_workspace else None)
    acc, operand = c.dtypes(x.dtype)
    BLOCK_H = c.block(H)
    _gru_fwd_kernel[steps.grid()](
        xg, b_hh[2 * H:] if has_bias else xg, h0, w_hh, out, h_n,
        ws if need_workspace else out, steps.offsets, steps.sizes, steps.T, steps.N, H,
        HAS_BIAS=has_bias, STORE_WS=need_workspace, REVERSE=steps.reverse,
        PACKED=steps.packed, ACC=acc, OPERAND=operand,
        BLOCK_N=c.BLOCK_N, BLOCK_H=BLOCK_H, num_warps=c.num_warps(BLOCK_H))
    return out, h_n, ws


def gru_bwd(grad_out, grad_h_n, h_prev, ws, steps, h0, w_hh):
    """-> (dgi [S,3H], dgh [S,3H] in the accumulation dtype, grad_h0 [N,H])."""
    H = w_hh.shape[1]
    acc_dtype = c.acc_dtype(grad_out.dtype)
    dgi = torch.empty(steps.S, 3 * H, dtype=acc_dtype, device=ws.device)
    dgh = torch.empty_like(dgi)
    grad_h0 = torch.empty_like(h0)
    acc, operand = c.dtypes(grad_out.dtype)
    BLOCK_H = c.block(H)
    _gru_bwd_kernel[steps.grid()](
        grad_out, grad_h_n, h_prev, ws, w_hh, dgi, dgh, grad_h0, steps.offsets, steps.sizes,
        steps.T, steps.N, H,
        REVERSE=steps.reverse, PACKED=steps.packed, ACC=acc, OPERAND=operand,
        BLOCK_N=c.BLOCK_N, BLOCK_H=BLOCK_H, num_warps=c.num_warps(BLOCK_H))
    return dgi, dgh, grad_h0


class _GRUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, steps):
        out, h_n, ws = gru_fwd(x, steps, h0, w_ih, w_hh, b_ih, b_hh,
                               need_workspace=any(ctx.needs_input_grad))
        ctx.save_for_backward(x, h0, w_ih, w_hh, out, ws)
        ctx.steps, ctx.has_bias = steps, b_ih is not None
        return out, h_n

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_h_n):
        x, h0, w_ih, w_hh, out, ws = ctx.saved_tensors
        steps, need = ctx.steps, ctx.needs_input_grad
        h_prev = steps.previous(out, h0)
        dgi, dgh, grad_h0 = gru_bwd(grad_out.contiguous(), grad_h_n.contiguous(), h_prev, ws,
                                    steps, h0, w_hh)
        grad_x, grad_w_ih, grad_b_ih = c.input_weight_grads(
            dgi, x, w_ih, need[0], need[2], ctx.has_bias and need[4])
        grad_w_hh = c.recurrent_weight_grad(dgh, h_prev, x.dtype) if need[3] else None
        grad_b_hh = dgh.sum(0).to(x.dtype) if ctx.has_bias and need[5] else None
        return grad_x, grad_h0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, None


def gru_layer(x, steps, h0, w_ih, w_hh, b_ih, b_hh):
    """x [S,C] rows (see _common.Steps) -> (out [S,H], h_n [N,H])."""
    if not torch.is_grad_enabled():
        # No graph to record. _GRUFunction would still see the parameters' requires_grad
        # and compute the workspace only a backward reads.
        return gru_fwd(x, steps, h0, w_ih, w_hh, b_ih, b_hh, need_workspace=False)[:2]
    return _GRUFunction.apply(x, h0, w_ih, w_hh, b_ih, b_hh, steps)
