// Torch-free machinery shared by the three cells: dtype helpers, the grid-group barrier,
// and the generic kernels that a cell (RnnCell / GruCell / LstmCell, in the *_kernels.cuh
// headers) plugs its pointwise math into. Launchers (csrc/cuda/*.cu) reach the kernels only
// through Launch<T, Cell> at the bottom of this file.
//
// Shape letters as in csrc/fastrnn.cpp: T time, N batch, C input, H hidden, G gates,
// S = rows of the flattened sequence (T*N padded, sum(batch_sizes) packed).
//
// Memory rules common to every kernel here:
//  * every tensor is contiguous row-major; a "row" is one (time step, batch entry) pair;
//    the rows of step t are [off(t), off(t) + bs(t)) and a row's batch index is its
//    position within its step.
//  * `steps` is either null (padded: bs(t) = N, off(t) = t*N) or a device int32 [2*T]
//    array: steps[t] = bs(t), steps[T + t] = off(t). The launcher builds it on the host
//    from the CPU batch_sizes tensor, so no kernel ever needs a prefix sum or a host sync.
//  * nothing allocates; scratch comes from the launcher. Every output element is written
//    exactly once, so outputs may be poisoned (NaN-filled) beforehand.
//  * accumulation is in float for float/__half/__nv_bfloat16 and in double for double.
#pragma once

#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <cstddef>

#include "path_choice.h"

namespace fastrnn {
namespace cuda {

// Turns a runtime bool into a constexpr one for the lambda body, so that the kernels
// see bias / workspace / direction / multi-CTA as template arguments (no branches).
#define FASTRNN_BOOL_SWITCH(COND, CONST_NAME, ...) \
  [&] {                                            \
    if (COND) {                                    \
      constexpr static bool CONST_NAME = true;     \
      return __VA_ARGS__();                        \
    } else {                                       \
      constexpr static bool CONST_NAME = false;    \
      return __VA_ARGS__();                        \
    }                                              \
  }()

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <typename T> using acc_t = typename AccType<T>::type;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_acc(acc_t<T> x);
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float sigmoid_(float x) { return 1.f / (1.f + expf(-x)); }
__device__ __forceinline__ double sigmoid_(double x) { return 1.0 / (1.0 + exp(-x)); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }

__device__ __forceinline__ int step_bs(const int* steps, int t, int N) { return steps ? steps[t] : N; }
__device__ __forceinline__ size_t step_off(const int* steps, int t, int T, int N) {
  return steps ? static_cast<size_t>(steps[T + t]) : static_cast<size_t>(t) * N;
}

// Barrier among the gridDim.x CTAs that share one batch tile (one counter per tile).
// The counter only grows (zeroed by the launcher before the launch), so `target` is
// gridDim.x * (number of barriers passed so far + 1) and no reset race exists. Data
// exchanged across it must be read with __ldcg: L1 is not coherent across SMs.
// Co-residency of the group is guaranteed by the cooperative launch (see Launch).
__device__ __forceinline__ void group_barrier(unsigned* counter, unsigned target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    atomicAdd(counter, 1u);
    unsigned seen;
    do {
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(counter) : "memory");
    } while (seen < target);
    __threadfence();
  }
  __syncthreads();
}

// ---------------------------------------------------------------------------------------
// Arguments. Pointers not used by a cell or a switch may be null.
// ---------------------------------------------------------------------------------------
template <typename T> struct FwdArgs {
  const T* gx;        // [S, G*H]  input projection x W_ih^T + b_ih, all steps (one GEMM)
  const T* w_hh;      // [G*H, H]
  const T* b_hh;      // [G*H]     (HAS_BIAS)
  const T* h0;        // [N, H]
  const T* c0;        // [N, H]    (LSTM)
  const int* steps;   // [2*T] int32 or null, see top of file
  T* out;             // [S, H]
  T* h_n;             // [N, H]
  T* c_n;             // [N, H]    (LSTM)
  T* ws;              // [S, Cell::WS*H] saved activations (SAVE)
  acc_t<T>* hx;       // [2, N, H] h exchange between the CTAs of a tile (MULTI)
  unsigned* barrier;  // [gridDim.y] zeroed counters (MULTI)
  int nsteps, N, H;  // nsteps = T
  int nb;             // batch rows per CTA tile   (gridDim.y = ceil(N / nb))
  int hj;             // hidden units per CTA slice (gridDim.x = ceil(H / hj))
  int kc;             // columns of h per shared-memory chunk (H unless MULTI)
  int ldw;            // shared-memory row stride of the W_hh slice, in elements
};

template <typename T> struct BwdArgs {
  const T* grad_out;  // [S, H]
  const T* grad_h_n;  // [N, H]
  const T* grad_c_n;  // [N, H]    (LSTM)
  const T* w_hh;      // [G*H, H]
  const T* h0;        // [N, H]
  const T* c0;        // [N, H]    (LSTM)
  const T* out;       // [S, H]    forward output
  const T* ws;        // [S, Cell::WS*H] forward's saved activations
  const int* steps;
  T* dgx;             // [S, G*H]  d loss / d (gx) : feeds grad_input, grad_w_ih, grad_b_ih
  T* dgh;             // [S, G*H]  d loss / d (h W_hh^T + b_hh); only when Cell::SPLIT_DGH,
                      //           otherwise identical to dgx and not written
  T* hprev;           // [S, H]    the h each row started its step from (for grad_w_hh)
  T* grad_h0;         // [N, H]
  T* grad_c0;         // [N, H]    (LSTM)
  acc_t<T>* xch;      // [2, N, G*H] gate-gradient exchange between the CTAs of a tile (MULTI)
  unsigned* barrier;  // [gridDim.y] zeroed counters (MULTI)
  int nsteps, N, H;  // nsteps = T
  int nb, hj;
  int kc;             // gate-gradient columns per shared-memory chunk (G*H unless MULTI)
  int ldw;            // shared-memory row stride of the transposed W_hh slice
};

// ---------------------------------------------------------------------------------------
// Persistent kernels: one launch per layer-direction for the whole sequence. Which tile
// (nb batch rows x hj hidden units per CTA), how many CTAs and the chunk width kc come
// from path_choice.h (choose_path), which also states the shared-memory layouts below.
// ---------------------------------------------------------------------------------------

// out_s[b][r] (+)= sum_{k < kw} w_s[r][k0 + k] * v_s[b][k] for the first `nact` batch rows
// and `rows` weight rows: consecutive threads take consecutive weight rows (odd-word row
// stride ldw: conflict-free) and share v (broadcast); 4 batch rows each. The first chunk
// (`first`) starts the sums and later chunks add to them; `add_s` (same layout as out_s,
// or null) is added once, with the last chunk. A (b, r) sum belongs to one thread in every
// chunk, so chunks need no synchronisation between a read and the write of out_s.
template <typename T, typename A>
__device__ __forceinline__ void matvec_rows(const T* w_s, int ldw, int k0, const A* v_s, int ldv, int kw,
                                            A* out_s, int rows, int ld_out, int nact, bool first,
                                            const A* add_s) {
  const int nbg = (nact + 3) / 4;
  for (int item = threadIdx.x; item < rows * nbg; item += blockDim.x) {
    const int r = item % rows, bb = (item / rows) * 4;
    const T* wr = w_s + r * ldw + k0;
    const A* vb = v_s + bb * ldv;
    A acc[4] = {A(0), A(0), A(0), A(0)};
#pragma unroll 4
    for (int k = 0; k < kw; ++k) {
      const A w = to_acc(wr[k]);
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[q] += w * vb[q * ldv + k];
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      if (bb + q < nact) {
        const int o = (bb + q) * ld_out + r;
        // One expression: ptxas (nvcc 13.0) spilled a few bytes with an if around add_s.
        out_s[o] = (first ? A(0) : out_s[o]) + acc[q] + (add_s ? add_s[o] : A(0));
      }
    }
  }
}

// v_s[b][k] = src[b * ld_src + k0 + k] for b < nact, k < kw: a chunk of the vector the
// tile's CTAs exchange through L2 (__ldcg: L1 is not coherent across SMs).
template <typename A>
__device__ __forceinline__ void load_chunk(A* v_s, int ldv, const A* src, size_t ld_src, int k0, int kw,
                                           int nact) {
  for (int i = threadIdx.x; i < nact * kw; i += blockDim.x) {
    const int b = i / kw, k = i % kw;
    v_s[b * ldv + k] = __ldcg(src + b * ld_src + k0 + k);
  }
}

// ---------------------------------------------------------------------------------------
// Persistent forward. CTA (x, y) owns hidden units [x*hj, x*hj + hj) of every gate for
// batch rows [y*nb, y*nb + nb); its slice of W_hh stays in shared memory for all T steps.
//  * One slice (MULTI false, path kPersistent): h [nb][H] lives in shared memory (acc_t
//    precision) and never leaves the CTA.
//  * Several slices (MULTI, path kCooperative): each step's new h goes to the
//    double-buffered `hx` (step s writes buffer s&1), a barrier among the tile's CTAs
//    follows, and the next step's matvec streams h back through shared memory kc columns
//    at a time. The CTA's own units of h (GRU's z*h term, h_n) stay in hown_s. Both hx
//    buffers start as h0, so a row that first becomes active late (reverse direction of
//    packed input) reads its h0 row.
// ---------------------------------------------------------------------------------------
template <typename T, typename Cell, bool HAS_BIAS, bool SAVE, bool REVERSE, bool MULTI>
__global__ void __launch_bounds__(kMaxThreads, 1)
persistent_fwd_kernel(const FwdArgs<T> a) {
  using A = acc_t<T>;
  constexpr int G = Cell::G;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int H = a.H, hj = a.hj, nb = a.nb, ldw = a.ldw, N = a.N;
  const int kc = MULTI ? a.kc : H;
  const int GH = G * H, R = G * hj;
  const int nb4 = (nb + 3) / 4 * 4;
  const int j0 = blockIdx.x * hj, hjn = min(hj, H - j0);
  const int b0 = blockIdx.y * nb, nbt = min(nb, N - b0);
  const int tid = threadIdx.x, nthr = blockDim.x;

  // path_choice.h fwd_smem_bytes
  A* h_s = reinterpret_cast<A*>(smem_raw);            // [nb4][kc]  h, or a chunk of it
  A* gate_s = h_s + nb4 * kc;                         // [nb4][R]   h W_hh^T for the slice
  A* c_s = gate_s + nb4 * R;                          // [nb][hj]   (LSTM)
  A* hown_s = c_s + (Cell::HAS_C ? nb * hj : 0);      // [nb][hj]   (MULTI)
  T* w_s = reinterpret_cast<T*>(hown_s + (MULTI ? nb * hj : 0));  // [R][ldw]

  for (int i = tid; i < R * H; i += nthr) {
    const int r = i / H, k = i % H, g = r / hj, jj = r % hj;
    w_s[r * ldw + k] = jj < hjn ? a.w_hh[static_cast<size_t>(g * H + j0 + jj) * H + k] : from_acc<T>(A(0));
  }
  if (MULTI) {
    for (int i = tid; i < nbt * hjn; i += nthr) {
      const int b = i / hjn, jj = i % hjn;
      const size_t src = static_cast<size_t>(b0 + b) * H + j0 + jj;
      const A h = to_acc(a.h0[src]);
      hown_s[b * hj + jj] = h;
      __stcg(a.hx + src, h);
      __stcg(a.hx + static_cast<size_t>(N) * H + src, h);
    }
  } else {
    for (int i = tid; i < nb4 * H; i += nthr) {
      const int b = i / H;
      h_s[i] = b < nbt ? to_acc(a.h0[static_cast<size_t>(b0) * H + i]) : A(0);
    }
  }
  if (Cell::HAS_C)
    for (int i = tid; i < nbt * hjn; i += nthr) {
      const int b = i / hjn, jj = i % hjn;
      c_s[b * hj + jj] = to_acc(a.c0[static_cast<size_t>(b0 + b) * H + j0 + jj]);
    }
  if (MULTI) group_barrier(a.barrier + blockIdx.y, gridDim.x);  // both hx buffers hold h0
  __syncthreads();

  for (int s = 0; s < a.nsteps; ++s) {
    const int t = REVERSE ? a.nsteps - 1 - s : s;
    const int nact = max(0, min(step_bs(a.steps, t, N) - b0, nbt));
    const size_t off = step_off(a.steps, t, a.nsteps, N) + b0;

    if (MULTI) {
      const A* src = a.hx + (static_cast<size_t>((s + 1) & 1) * N + b0) * H;  // previous h
      for (int k0 = 0; k0 < H; k0 += kc) {
        const int kw = min(kc, H - k0);
        load_chunk(h_s, kc, src, H, k0, kw, nact);
        __syncthreads();
        matvec_rows(w_s, ldw, k0, h_s, kc, kw, gate_s, R, R, nact, k0 == 0, static_cast<const A*>(nullptr));
        __syncthreads();
      }
    } else {
      matvec_rows(w_s, ldw, 0, h_s, H, H, gate_s, R, R, nact, true, static_cast<const A*>(nullptr));
      __syncthreads();
    }

    // Each (row, unit) is owned by one thread, so h_s / hown_s can be updated in place:
    // the matvec that read them is behind the barrier above.
    for (int item = tid; item < nact * hjn; item += nthr) {
      const int b = item / hjn, jj = item % hjn, j = j0 + jj;
      const size_t row = off + b;
      A gx[G], hh[G], saved[Cell::WS > 0 ? Cell::WS : 1];
#pragma unroll
      for (int g = 0; g < G; ++g) {
        gx[g] = to_acc(a.gx[row * GH + g * H + j]);
        hh[g] = gate_s[b * R + g * hj + jj];
        if (HAS_BIAS) hh[g] += to_acc(a.b_hh[g * H + j]);
      }
      A c = Cell::HAS_C ? c_s[b * hj + jj] : A(0);
      const A h = Cell::forward(gx, hh, MULTI ? hown_s[b * hj + jj] : h_s[b * H + j], c, saved);
      a.out[row * H + j] = from_acc<T>(h);
      if (SAVE)
#pragma unroll
        for (int w = 0; w < Cell::WS; ++w) a.ws[(row * Cell::WS + w) * H + j] = from_acc<T>(saved[w]);
      if (Cell::HAS_C) c_s[b * hj + jj] = c;
      if (MULTI) {
        hown_s[b * hj + jj] = h;
        __stcg(a.hx + (static_cast<size_t>(s & 1) * N + b0 + b) * H + j, h);
      } else {
        h_s[b * H + j] = h;
      }
    }
    if (MULTI) group_barrier(a.barrier + blockIdx.y, gridDim.x * (s + 2));
    __syncthreads();
  }

  for (int i = tid; i < nbt * hjn; i += nthr) {
    const int b = i / hjn, jj = i % hjn, j = j0 + jj;
    a.h_n[static_cast<size_t>(b0 + b) * H + j] = from_acc<T>(MULTI ? hown_s[b * hj + jj] : h_s[b * H + j]);
    if (Cell::HAS_C) a.c_n[static_cast<size_t>(b0 + b) * H + j] = from_acc<T>(c_s[b * hj + jj]);
  }
}

// ---------------------------------------------------------------------------------------
// Persistent backward (BPTT): one launch, steps in the opposite order of the forward.
// CTA (x, y) owns hidden units J = [x*hj, x*hj + hj) of batch tile y and keeps dh[.,J]
// (and dc) in shared memory. Per step: pointwise gate gradients for J; then
// dh_prev[., J] = sum_r dgh[., r] W_hh[r, J] needs the gate gradients of ALL units, so
// with several slices (MULTI) they go through the double-buffered `xch` and a tile
// barrier, and come back through shared memory kc columns at a time. The transposed
// W_hh[:, J] slice stays in shared memory. Sums run in a fixed order: results are bitwise
// reproducible.
// ---------------------------------------------------------------------------------------
template <typename T, typename Cell, bool REVERSE, bool MULTI>
__global__ void __launch_bounds__(kMaxThreads, 1)
persistent_bwd_kernel(const BwdArgs<T> a) {
  using A = acc_t<T>;
  constexpr int G = Cell::G;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int H = a.H, hj = a.hj, nb = a.nb, ldw = a.ldw, N = a.N;
  const int GH = G * H;
  const int kc = MULTI ? a.kc : GH;
  const int nb4 = (nb + 3) / 4 * 4;
  const int j0 = blockIdx.x * hj, hjn = min(hj, H - j0);
  const int b0 = blockIdx.y * nb, nbt = min(nb, N - b0);
  const int tid = threadIdx.x, nthr = blockDim.x;

  // path_choice.h bwd_smem_bytes
  A* dg_s = reinterpret_cast<A*>(smem_raw);           // [nb4][kc] gate grads (a chunk if MULTI)
  A* dh_s = dg_s + nb4 * kc;                           // [nb][hj]
  A* dir_s = dh_s + nb * hj;                           // [nb][hj]  (GRU: dh * z)
  A* dc_s = dir_s + (Cell::HAS_DIRECT ? nb * hj : 0);  // [nb][hj]  (LSTM)
  T* wt_s = reinterpret_cast<T*>(dc_s + (Cell::HAS_C ? nb * hj : 0));  // [hj][ldw] = W^T

  // Consecutive threads read consecutive units of one W row (coalesced) and write
  // column-wise into wt_s (odd-word stride: conflict-free).
  for (int i = tid; i < GH * hj; i += nthr) {
    const int r = i / hj, jj = i % hj;
    wt_s[jj * ldw + r] = jj < hjn ? a.w_hh[static_cast<size_t>(r) * H + j0 + jj] : from_acc<T>(A(0));
  }
  for (int i = tid; i < nb4 * kc; i += nthr) dg_s[i] = A(0);
  for (int i = tid; i < nbt * hjn; i += nthr) {
    const int b = i / hjn, jj = i % hjn;
    const size_t src = static_cast<size_t>(b0 + b) * H + j0 + jj;
    dh_s[b * hj + jj] = to_acc(a.grad_h_n[src]);
    if (Cell::HAS_C) dc_s[b * hj + jj] = to_acc(a.grad_c_n[src]);
  }
  __syncthreads();

  for (int s = 0; s < a.nsteps; ++s) {
    const int t = REVERSE ? s : a.nsteps - 1 - s;
    const int nact = max(0, min(step_bs(a.steps, t, N) - b0, nbt));
    const size_t off = step_off(a.steps, t, a.nsteps, N) + b0;
    // The step the forward ran just before t; rows it did not cover started from h0/c0.
    const int tp = REVERSE ? t + 1 : t - 1;
    const bool tp_ok = tp >= 0 && tp < a.nsteps;
    const int bsp = tp_ok ? step_bs(a.steps, tp, N) : 0;
    const size_t offp = tp_ok ? step_off(a.steps, tp, a.nsteps, N) : 0;

    for (int item = tid; item < nact * hjn; item += nthr) {
      const int b = item / hjn, jj = item % hjn, j = j0 + jj, bg = b0 + b;
      const size_t row = off + b;
      const bool has_prev = bg < bsp;
      const T hp = has_prev ? a.out[(offp + bg) * H + j] : a.h0[static_cast<size_t>(bg) * H + j];
      a.hprev[row * H + j] = hp;
      A cp = A(0);
      if (Cell::HAS_C)
        cp = has_prev ? to_acc(a.ws[((offp + bg) * Cell::WS + Cell::C_SLOT) * H + j])
                      : to_acc(a.c0[static_cast<size_t>(bg) * H + j]);
      A saved[Cell::WS > 0 ? Cell::WS : 1];
#pragma unroll
      for (int w = 0; w < Cell::WS; ++w) saved[w] = to_acc(a.ws[(row * Cell::WS + w) * H + j]);
      const A h_out = Cell::NEEDS_OUT ? to_acc(a.out[row * H + j]) : A(0);
      const A dh = dh_s[b * hj + jj] + to_acc(a.grad_out[row * H + j]);
      A dc = Cell::HAS_C ? dc_s[b * hj + jj] : A(0);
      A dgx[G], dgh[G], direct;
      Cell::backward(dh, dc, to_acc(hp), cp, h_out, saved, dgx, dgh, direct);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        a.dgx[row * GH + g * H + j] = from_acc<T>(dgx[g]);
        if (Cell::SPLIT_DGH) a.dgh[row * GH + g * H + j] = from_acc<T>(dgh[g]);
        if (MULTI)
          __stcg(a.xch + (static_cast<size_t>(s & 1) * N + bg) * GH + g * H + j, dgh[g]);
        else
          dg_s[b * GH + g * H + j] = dgh[g];
      }
      if (Cell::HAS_DIRECT) dir_s[b * hj + jj] = direct;
      if (Cell::HAS_C) dc_s[b * hj + jj] = dc;
    }

    // dh[b][jj] = direct + sum_r W[r][j] dg[b][r] over the wt_s rows of the own units.
    const A* direct_s = Cell::HAS_DIRECT ? dir_s : nullptr;
    if (MULTI) {
      group_barrier(a.barrier + blockIdx.y, gridDim.x * (s + 1));
      const A* src = a.xch + (static_cast<size_t>(s & 1) * N + b0) * GH;
      for (int k0 = 0; k0 < GH; k0 += kc) {
        const int kw = min(kc, GH - k0);
        load_chunk(dg_s, kc, src, GH, k0, kw, nact);
        __syncthreads();
        matvec_rows(wt_s, ldw, k0, dg_s, kc, kw, dh_s, hjn, hj, nact, k0 == 0,
                    k0 + kw >= GH ? direct_s : nullptr);
        __syncthreads();
      }
    } else {
      __syncthreads();
      matvec_rows(wt_s, ldw, 0, dg_s, GH, GH, dh_s, hjn, hj, nact, true, direct_s);
      __syncthreads();
    }
  }

  for (int i = tid; i < nbt * hjn; i += nthr) {
    const int b = i / hjn, jj = i % hjn;
    const size_t dst = static_cast<size_t>(b0 + b) * H + j0 + jj;
    a.grad_h0[dst] = from_acc<T>(dh_s[b * hj + jj]);
    if (Cell::HAS_C) a.grad_c0[dst] = from_acc<T>(dc_s[b * hj + jj]);
  }
}

// ---------------------------------------------------------------------------------------
// Fallback path (H too large for shared memory, projected LSTM): the launcher runs one
// cuBLAS GEMM per step (h W_hh^T into `hh`) and then one of these pointwise kernels over
// the bs active rows of that step. Pointers are already offset to the step's rows.
// ---------------------------------------------------------------------------------------
template <typename T> struct StepFwdArgs {
  const T* gx;        // [bs, G*H] this step's rows of the input projection
  const T* hh;        // [bs, G*H] h_prev W_hh^T (no bias)
  const T* b_hh;      // [G*H]     (HAS_BIAS)
  T* hstate;          // [N, H]    h_prev in, h out (rows < bs); untouched when PROJ
  acc_t<T>* cstate;   // [N, H]    c in/out (LSTM)
  T* out;             // [bs, H]   this step's output rows (PROJ: o*tanh(c), before W_hr)
  T* ws;              // [bs, Cell::WS*H] (SAVE)
  int bs, H;
};

template <typename T, typename Cell, bool HAS_BIAS, bool SAVE, bool PROJ>
__global__ void step_fwd_kernel(const StepFwdArgs<T> a) {
  using A = acc_t<T>;
  constexpr int G = Cell::G;
  const int H = a.H, GH = G * H;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < a.bs * H; i += gridDim.x * blockDim.x) {
    const size_t b = i / H;
    const int j = i % H;
    A gx[G], hh[G], saved[Cell::WS > 0 ? Cell::WS : 1];
#pragma unroll
    for (int g = 0; g < G; ++g) {
      gx[g] = to_acc(a.gx[b * GH + g * H + j]);
      hh[g] = to_acc(a.hh[b * GH + g * H + j]);
      if (HAS_BIAS) hh[g] += to_acc(a.b_hh[g * H + j]);
    }
    A c = Cell::HAS_C ? a.cstate[b * H + j] : A(0);
    const A h = Cell::forward(gx, hh, PROJ ? A(0) : to_acc(a.hstate[b * H + j]), c, saved);
    a.out[b * H + j] = from_acc<T>(h);
    if (!PROJ) a.hstate[b * H + j] = from_acc<T>(h);
    if (Cell::HAS_C) a.cstate[b * H + j] = c;
    if (SAVE)
#pragma unroll
      for (int w = 0; w < Cell::WS; ++w) a.ws[(b * Cell::WS + w) * H + j] = from_acc<T>(saved[w]);
  }
}

template <typename T> struct StepBwdArgs {
  const T* dh;        // PROJ: [bs, H] d loss / d m for this step;
                      // else [N, H] dh carried from the later step (rows < bs used)
  const T* grad_out;  // [bs, H] this step's grad_output rows (not PROJ)
  acc_t<T>* dcstate;  // [N, H]  dc in/out (LSTM)
  const T* ws;        // [bs, Cell::WS*H] this step's saved activations
  const T* ws_prev;   // [bsp, Cell::WS*H] the forward's previous step (LSTM c_prev), or null
  const T* out;       // [bs, H] this step's output rows (RNN derivative)
  const T* out_prev;  // [bsp, H] the forward's previous step output rows, or null
  const T* h0;        // [N, H]
  const T* c0;        // [N, H]  (LSTM)
  T* dgx;             // [bs, G*H]
  T* dgh;             // [bs, G*H] (Cell::SPLIT_DGH)
  T* direct;          // [N, H]  the part of dh_prev that bypasses W_hh (Cell::HAS_DIRECT)
  T* hprev;           // [bs, H] (not PROJ)
  T* m;               // [bs, H] o*tanh(c), input of grad_w_hr (PROJ)
  int bs, bsp, H;
};

template <typename T, typename Cell, bool PROJ>
__global__ void step_bwd_kernel(const StepBwdArgs<T> a) {
  using A = acc_t<T>;
  constexpr int G = Cell::G;
  const int H = a.H, GH = G * H;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < a.bs * H; i += gridDim.x * blockDim.x) {
    const size_t b = i / H;
    const int j = i % H;
    const bool has_prev = static_cast<int>(b) < a.bsp;
    A hp = A(0);
    if (!PROJ) {
      const T hpt = has_prev ? a.out_prev[b * H + j] : a.h0[b * H + j];
      a.hprev[b * H + j] = hpt;
      hp = to_acc(hpt);
    }
    A cp = A(0);
    if (Cell::HAS_C)
      cp = has_prev ? to_acc(a.ws_prev[(b * Cell::WS + Cell::C_SLOT) * H + j]) : to_acc(a.c0[b * H + j]);
    A saved[Cell::WS > 0 ? Cell::WS : 1];
#pragma unroll
    for (int w = 0; w < Cell::WS; ++w) saved[w] = to_acc(a.ws[(b * Cell::WS + w) * H + j]);
    const A h_out = Cell::NEEDS_OUT ? to_acc(a.out[b * H + j]) : A(0);
    const A dh = PROJ ? to_acc(a.dh[b * H + j]) : to_acc(a.dh[b * H + j]) + to_acc(a.grad_out[b * H + j]);
    A dc = Cell::HAS_C ? a.dcstate[b * H + j] : A(0);
    A dgx[G], dgh[G], direct;
    Cell::backward(dh, dc, hp, cp, h_out, saved, dgx, dgh, direct);
#pragma unroll
    for (int g = 0; g < G; ++g) {
      a.dgx[b * GH + g * H + j] = from_acc<T>(dgx[g]);
      if (Cell::SPLIT_DGH) a.dgh[b * GH + g * H + j] = from_acc<T>(dgh[g]);
    }
    if (Cell::HAS_DIRECT) a.direct[b * H + j] = from_acc<T>(direct);
    if (Cell::HAS_C) a.dcstate[b * H + j] = dc;
    if constexpr (PROJ) a.m[b * H + j] = from_acc<T>(Cell::m_from_saved(saved));
  }
}

// hprev[row] = the h row `row` started from: the previous forward step's output row of the
// same batch entry, or h0 when that entry was not active there. Only the projected LSTM
// needs it (P != H); every other path writes hprev inside its backward kernel.
template <typename T>
__global__ void build_hprev_kernel(const T* out, const T* h0, const int* steps, T* hprev,
                                   int T_, int N, int P, bool reverse) {
  const int t = blockIdx.x;
  const int bs = step_bs(steps, t, N);
  const size_t off = step_off(steps, t, T_, N);
  const int tp = reverse ? t + 1 : t - 1;
  const bool tp_ok = tp >= 0 && tp < T_;
  const int bsp = tp_ok ? step_bs(steps, tp, N) : 0;
  const size_t offp = tp_ok ? step_off(steps, tp, T_, N) : 0;
  for (int i = threadIdx.x; i < bs * P; i += blockDim.x) {
    const int b = i / P, k = i % P;
    hprev[(off + b) * P + k] = b < bsp ? out[(offp + b) * P + k] : h0[static_cast<size_t>(b) * P + k];
  }
}

// ---------------------------------------------------------------------------------------
// Host side, still torch-free: the launches (the plan comes from path_choice.h). Every
// function returns the launch's cudaError_t (cudaGetLastError after it) for the caller.
// ---------------------------------------------------------------------------------------
template <typename Kernel, typename Args>
cudaError_t launch_persistent(Kernel kernel, const Args& args, const Plan& p, bool cooperative,
                              cudaStream_t stream) {
  // Above 48 KB a kernel must opt in to dynamic shared memory; the attribute is host-side
  // state (no stream work), so it is safe during graph capture.
  if (p.smem > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(p.smem));
    if (e != cudaSuccess) return e;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(p.slices, p.tiles);
  cfg.blockDim = dim3(p.threads);
  cfg.dynamicSmemBytes = p.smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;
  attr[0].val.cooperative = 1;
  cfg.attrs = attr;
  cfg.numAttrs = cooperative ? 1 : 0;
  const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, args);
  return e != cudaSuccess ? e : cudaGetLastError();
}

inline int grid_for(long items, int threads) {
  const long blocks = (items + threads - 1) / threads;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks));
}

// Everything a launcher may call for one (dtype, cell). Explicitly instantiating this
// struct (tests/test_cuda_compile.py does) instantiates every kernel variant.
template <typename T, typename Cell>
struct Launch {
  static constexpr CellShape kShape{Cell::G, Cell::HAS_C, Cell::HAS_DIRECT};

  // P != H (projected LSTM) and force_step give the per-step path.
  static Plan plan(bool backward, int N, int H, int P, const DeviceLimits& d, int nb, int hj, int kc,
                   bool force_step) {
    return choose_path(PathQuery{kShape, H, P, N, static_cast<int>(sizeof(T)), backward}, d, nb, hj, kc,
                       force_step);
  }

  static cudaError_t persistent_fwd(const FwdArgs<T>& a, const Plan& p, bool bias, bool save,
                                    bool reverse, cudaStream_t stream) {
    return FASTRNN_BOOL_SWITCH(bias, HAS_BIAS, [&] {
      return FASTRNN_BOOL_SWITCH(save, SAVE, [&] {
        return FASTRNN_BOOL_SWITCH(reverse, REVERSE, [&] {
          return FASTRNN_BOOL_SWITCH(p.slices > 1, MULTI, [&] {
            return launch_persistent(persistent_fwd_kernel<T, Cell, HAS_BIAS, SAVE, REVERSE, MULTI>,
                                     a, p, MULTI, stream);
          });
        });
      });
    });
  }

  static cudaError_t persistent_bwd(const BwdArgs<T>& a, const Plan& p, bool reverse,
                                    cudaStream_t stream) {
    return FASTRNN_BOOL_SWITCH(reverse, REVERSE, [&] {
      return FASTRNN_BOOL_SWITCH(p.slices > 1, MULTI, [&] {
        return launch_persistent(persistent_bwd_kernel<T, Cell, REVERSE, MULTI>, a, p, MULTI, stream);
      });
    });
  }

  static cudaError_t step_fwd(const StepFwdArgs<T>& a, bool bias, bool save, bool proj,
                              cudaStream_t stream) {
    const int grid = grid_for(static_cast<long>(a.bs) * a.H, 256);
    return FASTRNN_BOOL_SWITCH(bias, HAS_BIAS, [&] {
      return FASTRNN_BOOL_SWITCH(save, SAVE, [&] {
        if constexpr (Cell::HAS_C) {
          return FASTRNN_BOOL_SWITCH(proj, PROJ, [&] {
            step_fwd_kernel<T, Cell, HAS_BIAS, SAVE, PROJ><<<grid, 256, 0, stream>>>(a);
            return cudaGetLastError();
          });
        } else {
          step_fwd_kernel<T, Cell, HAS_BIAS, SAVE, false><<<grid, 256, 0, stream>>>(a);
          return cudaGetLastError();
        }
      });
    });
  }

  static cudaError_t step_bwd(const StepBwdArgs<T>& a, bool proj, cudaStream_t stream) {
    const int grid = grid_for(static_cast<long>(a.bs) * a.H, 256);
    if constexpr (Cell::HAS_C) {
      return FASTRNN_BOOL_SWITCH(proj, PROJ, [&] {
        step_bwd_kernel<T, Cell, PROJ><<<grid, 256, 0, stream>>>(a);
        return cudaGetLastError();
      });
    } else {
      step_bwd_kernel<T, Cell, false><<<grid, 256, 0, stream>>>(a);
      return cudaGetLastError();
    }
  }

  static cudaError_t build_hprev(const T* out, const T* h0, const int* steps, T* hprev, int T_,
                                 int N, int P, bool reverse, cudaStream_t stream) {
    build_hprev_kernel<T><<<T_, 256, 0, stream>>>(out, h0, steps, hprev, T_, N, P, reverse);
    return cudaGetLastError();
  }
};

}  // namespace cuda
}  // namespace fastrnn
