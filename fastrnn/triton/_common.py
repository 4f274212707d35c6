"""Pieces shared by the per-cell Triton files: step layout, checks, jit helpers, GEMMs.

Shape letters as in csrc/fastrnn.cpp: T time, N batch, C input, H hidden, P recurrent
state (H, or proj_size), G gates, S = sum(batch_sizes) rows of (packed) data.

Every kernel runs one program per tile of BLOCK_N batch rows over ALL time steps, with
the recurrent weights loaded once into registers before the time loop. Rows of a tile
are independent, so programs never talk to each other and the kernels need no grid sync.
Data is always addressed as packed rows: step t owns rows [offset[t], offset[t] +
size[t]) and batch row n of step t is row offset[t] + n. Padded input is the special case
size[t] = N, offset[t] = t * N, computed in the kernel (PACKED=False) so that the padded
path copies nothing to the device and stays capturable in CUDA graphs.
"""
import os

import torch
import triton
import triton.language as tl

# tl.dot needs every block dimension >= 16.
MIN_BLOCK = 16
# The one-program path keeps W_hh (and W_hr) in registers for the whole sequence; a
# 4 x 128 x 128 LSTM W_hh already fills an SM's register file, beyond that it would spill.
MAX_HIDDEN = 128
BLOCK_N = 16

_ACC_DTYPES = {
    torch.float16: tl.float32,
    torch.bfloat16: tl.float32,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}
_TORCH_ACC = {tl.float32: torch.float32, tl.float64: torch.float64}


def interpreting():
    return os.environ.get("TRITON_INTERPRET") == "1"


def check_inputs(mode, input, hidden_size, state_size):
    if input.dtype not in _ACC_DTYPES:
        raise ValueError(
            f"fastrnn's Triton backend supports float16, bfloat16, float32 and float64, "
            f"got {input.dtype}")
    if input.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"fastrnn's Triton backend needs CUDA tensors (got {input.device}); CPU tensors "
            f"run only under the Triton interpreter (TRITON_INTERPRET=1)")
    if max(hidden_size, state_size) > MAX_HIDDEN:
        raise ValueError(
            f"fastrnn's Triton backend keeps the recurrent weights on chip and supports "
            f"hidden_size and proj_size up to {MAX_HIDDEN} for {mode}, got hidden_size="
            f"{hidden_size}, state size {state_size}; use the 'cuda' backend")


def block(size):
    return max(MIN_BLOCK, triton.next_power_of_2(size))


def num_warps(block_h, block_p=MIN_BLOCK):
    """Two elements of a [BLOCK_N, max(BLOCK_H, BLOCK_P)] state tile per thread.

    More warps spread the on-chip weights over more registers; and with 4 or more
    elements per thread, LLVM's SLP vectorizer in Triton 3.9 crashes the process (an
    assertion in BoUpSLP::scheduleBlock) on the fp32 LSTM backward for sm_90.
    """
    return max(4, BLOCK_N * max(block_h, block_p) // 64)


def dtypes(dtype):
    """(ACC, OPERAND) constexprs: the accumulation dtype, and the dtype of tl.dot operands.

    Half types feed tl.dot in their own dtype (tensor cores, fp32 accumulation), except
    bfloat16 under the interpreter, whose numpy dot reads bfloat16 operands as raw integer
    bits and returns garbage; there they are widened to float32 first.
    """
    acc = _ACC_DTYPES[dtype]
    if dtype == torch.float16 or (dtype == torch.bfloat16 and not interpreting()):
        return acc, tl.float16 if dtype == torch.float16 else tl.bfloat16
    return acc, acc


def acc_dtype(dtype):
    return _TORCH_ACC[_ACC_DTYPES[dtype]]


class Steps:
    """Where each time step's rows live, for padded ([T,N,C]) or packed ([S,C]) input."""

    def __init__(self, input, batch_sizes, reverse):
        self.reverse = reverse
        self.packed = batch_sizes is not None
        if self.packed:
            self.sizes_cpu = batch_sizes.to(torch.int64)
            self.T = self.sizes_cpu.numel()
            self.N = int(self.sizes_cpu[0])
            self.S = input.shape[0]
            self.offsets_cpu = torch.cumsum(self.sizes_cpu, 0) - self.sizes_cpu
            self.offsets = self.offsets_cpu.to(input.device)
            self.sizes = self.sizes_cpu.to(input.device)
        else:
            self.T, self.N = input.shape[0], input.shape[1]
            self.S = self.T * self.N
            # Never read by the kernels (PACKED=False), but they need a pointer argument.
            self.offsets = self.sizes = torch.empty(1, dtype=torch.int64, device=input.device)

    def grid(self):
        return (triton.cdiv(self.N, BLOCK_N),)

    def previous(self, seq, init):
        """[S,X] state every row started its step from: seq is the per-step state [S,X]
        written by the forward, init the initial state [N,X].

        A row's previous state is its row in the previously processed step if it was
        active there, else its initial state (first step, or in reverse direction the
        first step a shorter sequence is active).
        """
        if not self.packed:
            n = self.N
            if self.reverse:
                return torch.cat([seq[n:], init])
            return torch.cat([init, seq[: self.S - n]])
        return torch.cat([seq, init])[self._previous_index(seq.device)]

    def _previous_index(self, device):
        # Index into cat([seq, init]): row r of step t maps to the same batch row of the
        # previous step when that step has it, else to init's row (S + n).
        sizes, offsets = self.sizes_cpu, self.offsets_cpu
        step = torch.repeat_interleave(torch.arange(self.T), sizes)
        n = torch.arange(self.S) - offsets[step]
        prev = step + 1 if self.reverse else step - 1
        valid = (prev >= 0) & (prev < self.T)
        prev = prev.clamp(0, self.T - 1)
        has_prev = valid & (n < sizes[prev])
        index = torch.where(has_prev, offsets[prev] + n, self.S + n)
        return index.to(device)


def input_gates(x, w_ih, bias):
    """[S,G*H] input projection of every step in one GEMM: x @ W_ih^T + bias."""
    if bias is None:
        return x @ w_ih.t()
    return torch.addmm(bias, x, w_ih.t())


def input_weight_grads(dgates, x, w_ih, need_input, need_weight, need_bias):
    """(grad_x, grad_w_ih, grad_b) from [S,G*H] pre-activation gate gradients, as GEMMs
    over all steps in the input dtype (fp32 accumulation on the GPU)."""
    d = dgates.to(x.dtype)
    grad_x = d @ w_ih if need_input else None
    grad_w = d.t() @ x if need_weight else None
    grad_b = dgates.sum(0).to(x.dtype) if need_bias else None
    return grad_x, grad_w, grad_b


def recurrent_weight_grad(dgates, h_prev, dtype):
    return dgates.to(dtype).t() @ h_prev.to(dtype)


@triton.jit
def _matmul(a, b, ACC: tl.constexpr, OPERAND: tl.constexpr):
    # "ieee": fp32 and fp64 stay exact (no TF32 unless the user opts in, per the design).
    return tl.dot(a.to(OPERAND), b.to(OPERAND), input_precision="ieee", out_dtype=ACC)


@triton.jit
def _tanh(x):
    # tl has no tanh that works in both the interpreter and compiled code for fp64.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _step_rows(t, offsets_ptr, sizes_ptr, rows, N, PACKED: tl.constexpr):
    """(first data row of step t as int64, mask of the tile's rows active at step t)."""
    if PACKED:
        offset = tl.load(offsets_ptr + t)
        size = tl.load(sizes_ptr + t)
    else:
        offset = t.to(tl.int64) * N
        size = N
    return offset, rows < size


@triton.jit
def _load_weight_t(w_ptr, gate, H, K, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr):
    """Gate `gate` of a [G*H,K] weight, transposed to [BLOCK_K,BLOCK_H] (zero padded),
    so that state [BN,K] @ it = the gate's [BN,H] contribution."""
    k = tl.arange(0, BLOCK_K)
    j = tl.arange(0, BLOCK_H)
    mask = (k[:, None] < K) & (j[None, :] < H)
    return tl.load(w_ptr + (gate * H + j[None, :]) * K + k[:, None], mask=mask, other=0.0)


@triton.jit
def _load_weight(w_ptr, gate, H, K, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """Gate `gate` of a [G*H,K] weight as [BLOCK_H,BLOCK_K] (zero padded), so that a gate
    gradient [BN,H] @ it = the gradient into the [BN,K] state."""
    j = tl.arange(0, BLOCK_H)
    k = tl.arange(0, BLOCK_K)
    mask = (j[:, None] < H) & (k[None, :] < K)
    return tl.load(w_ptr + (gate * H + j[:, None]) * K + k[None, :], mask=mask, other=0.0)
