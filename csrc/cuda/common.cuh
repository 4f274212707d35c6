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

// The persistent kernels are compiled for at most this many threads, so that one CTA
// per SM always fits the register file (255 regs x 256 threads < 64K).
constexpr int kMaxThreads = 256;

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
  int ldw;            // shared-memory row stride of the transposed W_hh slice
};

// ---------------------------------------------------------------------------------------
// Persistent forward: one launch for the whole sequence. CTA (x, y) owns hidden units
// [x*hj, x*hj + hj) of every gate for batch rows [y*nb, y*nb + nb); its slice of W_hh
// stays in shared memory for all T steps, and so does h (in acc_t precision). With one
// slice (MULTI false) h never leaves the CTA; with several, each step's new h goes
// through the double-buffered `hx` and a barrier among the tile's CTAs.
// ---------------------------------------------------------------------------------------
template <typename T, typename Cell>
struct FwdSmem {
  // Batch rows are padded to a multiple of 4 because the matvec computes 4 rows at a time.
  static size_t bytes(int nb, int hj, int H, int ldw) {
    const size_t nb4 = (nb + 3) / 4 * 4;
    return sizeof(acc_t<T>) * (nb4 * H + nb4 * Cell::G * hj + (Cell::HAS_C ? nb * hj : 0)) +
           sizeof(T) * static_cast<size_t>(Cell::G) * hj * ldw;
  }
};

template <typename T, typename Cell, bool HAS_BIAS, bool SAVE, bool REVERSE, bool MULTI>
__global__ void __launch_bounds__(kMaxThreads)
persistent_fwd_kernel(const FwdArgs<T> a) {
  using A = acc_t<T>;
  constexpr int G = Cell::G;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int H = a.H, hj = a.hj, nb = a.nb, ldw = a.ldw, N = a.N;
  const int GH = G * H, R = G * hj;
  const int nb4 = (nb + 3) / 4 * 4;
  const int j0 = blockIdx.x * hj, hjn = min(hj, H - j0);
  const int b0 = blockIdx.y * nb, nbt = min(nb, N - b0);
  const int tid = threadIdx.x, nthr = blockDim.x;

  A* h_s = reinterpret_cast<A*>(smem_raw);            // [nb4][H]
  A* gate_s = h_s + nb4 * H;                          // [nb4][R]  h W_hh^T for the slice
  A* c_s = gate_s + nb4 * R;                          // [nb][hj]  (LSTM)
  T* w_s = reinterpret_cast<T*>(c_s + (Cell::HAS_C ? nb * hj : 0));  // [R][ldw]

  for (int i = tid; i < R * H; i += nthr) {
    const int r = i / H, k = i % H, g = r / hj, jj = r % hj;
    w_s[r * ldw + k] = jj < hjn ? a.w_hh[static_cast<size_t>(g * H + j0 + jj) * H + k] : T(0.0f);
  }
  for (int i = tid; i < nb4 * H; i += nthr) {
    const int b = i / H;
    h_s[i] = b < nbt ? to_acc(a.h0[static_cast<size_t>(b0) * H + i]) : A(0);
  }
  if (Cell::HAS_C)
    for (int i = tid; i < nbt * hjn; i += nthr) {
      const int b = i / hjn, jj = i % hjn;
      c_s[b * hj + jj] = to_acc(a.c0[static_cast<size_t>(b0 + b) * H + j0 + jj]);
    }
  __syncthreads();

  for (int s = 0; s < a.nsteps; ++s) {
    const int t = REVERSE ? a.nsteps - 1 - s : s;
    const int nact = max(0, min(step_bs(a.steps, t, N) - b0, nbt));
    const size_t off = step_off(a.steps, t, a.nsteps, N) + b0;

    // gate_s[b][r] = sum_k W[r][k] h[b][k]: consecutive threads take consecutive rows
    // (odd-word row stride ldw: conflict-free) and share h (broadcast); 4 batch rows each.
    const int nbg = (nact + 3) / 4;
    for (int item = tid; item < R * nbg; item += nthr) {
      const int r = item % R, bb = (item / R) * 4;
      const T* wr = w_s + r * ldw;
      const A* hb = h_s + bb * H;
      A acc[4] = {A(0), A(0), A(0), A(0)};
#pragma unroll 4
      for (int k = 0; k < H; ++k) {
        const A w = to_acc(wr[k]);
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[q] += w * hb[q * H + k];
      }
#pragma unroll
      for (int q = 0; q < 4; ++q)
        if (bb + q < nact) gate_s[(bb + q) * R + r] = acc[q];
    }
    __syncthreads();

    // Each (row, unit) is owned by one thread, so h_s can be updated in place: the
    // matvec that read it is behind the barrier above.
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
      const A h = Cell::forward(gx, hh, h_s[b * H + j], c, saved);
      a.out[row * H + j] = from_acc<T>(h);
      if (SAVE)
#pragma unroll
        for (int w = 0; w < Cell::WS; ++w) a.ws[(row * Cell::WS + w) * H + j] = from_acc<T>(saved[w]);
      if (Cell::HAS_C) c_s[b * hj + jj] = c;
      if (MULTI)
        __stcg(a.hx + (static_cast<size_t>(s & 1) * N + b0 + b) * H + j, h);
      else
        h_s[b * H + j] = h;
    }
    if (MULTI) {
      group_barrier(a.barrier + blockIdx.y, gridDim.x * (s + 1));
      const A* src = a.hx + (static_cast<size_t>(s & 1) * N + b0) * H;
      for (int i = tid; i < nact * H; i += nthr) h_s[i] = __ldcg(src + i);
    }
    __syncthreads();
  }

  for (int i = tid; i < nbt * hjn; i += nthr) {
    const int b = i / hjn, j = j0 + i % hjn;
    a.h_n[static_cast<size_t>(b0 + b) * H + j] = from_acc<T>(h_s[b * H + j]);
    if (Cell::HAS_C) a.c_n[static_cast<size_t>(b0 + b) * H + j] = from_acc<T>(c_s[b * hj + j - j0]);
  }
}

// ---------------------------------------------------------------------------------------
// Persistent backward (BPTT): one launch, steps in the opposite order of the forward.
// CTA (x, y) owns hidden units J = [x*hj, x*hj + hj) of batch tile y and keeps dh[.,J]
// (and dc) in shared memory. Per step: pointwise gate gradients for J; then
// dh_prev[., J] = sum_r dgh[., r] W_hh[r, J] needs the gate gradients of ALL units, so
// with several slices they go through the double-buffered `xch` and a tile barrier.
// The transposed W_hh[:, J] slice stays in shared memory. Sums run in a fixed order:
// results are bitwise reproducible.
// ---------------------------------------------------------------------------------------
template <typename T, typename Cell>
struct BwdSmem {
  static size_t bytes(int nb, int hj, int H, int ldw) {
    const size_t nb4 = (nb + 3) / 4 * 4;
    const size_t per_unit = 1 + (Cell::HAS_DIRECT ? 1 : 0) + (Cell::HAS_C ? 1 : 0);
    return sizeof(acc_t<T>) * (nb4 * Cell::G * H + per_unit * nb * hj) +
           sizeof(T) * static_cast<size_t>(hj) * ldw;
  }
};

template <typename T, typename Cell, bool REVERSE, bool MULTI>
__global__ void __launch_bounds__(kMaxThreads)
persistent_bwd_kernel(const BwdArgs<T> a) {
  using A = acc_t<T>;
  constexpr int G = Cell::G;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int H = a.H, hj = a.hj, nb = a.nb, ldw = a.ldw, N = a.N;
  const int GH = G * H;
  const int nb4 = (nb + 3) / 4 * 4;
  const int j0 = blockIdx.x * hj, hjn = min(hj, H - j0);
  const int b0 = blockIdx.y * nb, nbt = min(nb, N - b0);
  const int tid = threadIdx.x, nthr = blockDim.x;

  A* dg_s = reinterpret_cast<A*>(smem_raw);           // [nb4][GH] gate grads, all units
  A* dh_s = dg_s + nb4 * GH;                           // [nb][hj]
  A* dir_s = dh_s + nb * hj;                           // [nb][hj]  (GRU: dh * z)
  A* dc_s = dir_s + (Cell::HAS_DIRECT ? nb * hj : 0);  // [nb][hj]  (LSTM)
  T* wt_s = reinterpret_cast<T*>(dc_s + (Cell::HAS_C ? nb * hj : 0));  // [hj][ldw] = W^T

  // Consecutive threads read consecutive units of one W row (coalesced) and write
  // column-wise into wt_s (odd-word stride: conflict-free).
  for (int i = tid; i < GH * hj; i += nthr) {
    const int r = i / hj, jj = i % hj;
    wt_s[jj * ldw + r] = jj < hjn ? a.w_hh[static_cast<size_t>(r) * H + j0 + jj] : T(0.0f);
  }
  for (int i = tid; i < nb4 * GH; i += nthr) dg_s[i] = A(0);
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
    if (MULTI) {
      group_barrier(a.barrier + blockIdx.y, gridDim.x * (s + 1));
      const A* src = a.xch + (static_cast<size_t>(s & 1) * N + b0) * GH;
      for (int i = tid; i < nact * GH; i += nthr) dg_s[i] = __ldcg(src + i);
    }
    __syncthreads();

    // dh[b][jj] = direct + sum_r W[r][j] dg[b][r]: consecutive threads take consecutive
    // units (rows of wt_s) and share dg (broadcast); 4 batch rows each.
    const int nbg = (nact + 3) / 4;
    for (int item = tid; item < hjn * nbg; item += nthr) {
      const int jj = item % hjn, bb = (item / hjn) * 4;
      const T* wr = wt_s + jj * ldw;
      const A* db = dg_s + bb * GH;
      A acc[4] = {A(0), A(0), A(0), A(0)};
#pragma unroll 4
      for (int r = 0; r < GH; ++r) {
        const A w = to_acc(wr[r]);
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[q] += w * db[q * GH + r];
      }
#pragma unroll
      for (int q = 0; q < 4; ++q)
        if (bb + q < nact)
          dh_s[(bb + q) * hj + jj] = acc[q] + (Cell::HAS_DIRECT ? dir_s[(bb + q) * hj + jj] : A(0));
    }
    __syncthreads();
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
// Host side, still torch-free: tile planning and the launches. Every function returns the
// launch's cudaError_t (cudaGetLastError after the launch) so the caller can check it.
// ---------------------------------------------------------------------------------------
struct DeviceLimits {
  int sm_count;
  size_t smem_optin;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
};

struct Plan {
  bool ok = false;  // false: no tile fits; use the per-step fallback
  int nb = 0, hj = 0, threads = 0, tiles = 0, slices = 0, ldw = 0;
  size_t smem = 0;
};

// Shared-memory row stride (elements) whose size in 4-byte words is odd, so that 32
// threads reading one element each from 32 consecutive rows hit 32 different banks.
template <typename T> inline int odd_word_stride(int n) {
  if (sizeof(T) == 2) return (n + 1) / 2 * 2 + ((n + 1) / 2 % 2 == 0 ? 2 : 0);
  return n % 2 == 1 ? n : n + 1;
}

// Picks (nb, hj) to minimise a per-step cost estimate in cycles: matvec FMAs per thread
// (times waves of CTAs) plus ~2000 cycles per cross-CTA barrier. A plan with several
// slices must fit one CTA per SM (cooperative launch). nb_force / hj_force > 0 pin the
// tile (FASTRNN_CUDA_TILE), which is how the tests reach the multi-CTA path at small H.
// The constants are first guesses, to be tuned against cuDNN on a GPU.
template <typename T, typename Cell, bool BWD>
Plan plan_persistent(int N, int H, const DeviceLimits& dev, int nb_force, int hj_force) {
  Plan best;
  double best_cost = 0;
  const int nb_all[] = {1, 2, 4, 8, 16, 32};
  const int hj_all[] = {H, 256, 128, 64, 32, 16, 8};
  const int* nbs = nb_force > 0 ? &nb_force : nb_all;
  const int* hjs = hj_force > 0 ? &hj_force : hj_all;
  const int n_nb = nb_force > 0 ? 1 : 6, n_hj = hj_force > 0 ? 1 : 7;
  for (int in = 0; in < n_nb; ++in) {
    const int nb = nbs[in];
    if (nb_force <= 0 && nb > 1 && nb / 2 >= N) continue;  // a tile at least half full
    for (int ih = 0; ih < n_hj; ++ih) {
      const int hj = hjs[ih];
      if (hj > H || hj < 1) continue;
      const int slices = (H + hj - 1) / hj, tiles = (N + nb - 1) / nb;
      if (tiles > 65535) continue;
      if (slices > 1 && static_cast<long>(slices) * tiles > dev.sm_count) continue;
      const int ldw = odd_word_stride<T>(BWD ? Cell::G * H : H);
      const size_t smem = BWD ? BwdSmem<T, Cell>::bytes(nb, hj, H, ldw)
                              : FwdSmem<T, Cell>::bytes(nb, hj, H, ldw);
      if (smem > dev.smem_optin) continue;
      const int nb4 = (nb + 3) / 4 * 4;
      // Work items of the two phases of a step: (row, 4 batch rows) matvec items and
      // (batch row, unit) pointwise items; threads cover the larger, within [64, 256].
      const long mv_items = BWD ? static_cast<long>(hj) * nb4 / 4 : static_cast<long>(Cell::G) * hj * nb4 / 4;
      const long items = mv_items > static_cast<long>(nb) * hj ? mv_items : static_cast<long>(nb) * hj;
      const long rounded = (items + 31) / 32 * 32;
      const int threads = static_cast<int>(rounded < 64 ? 64 : (rounded > kMaxThreads ? kMaxThreads : rounded));
      const double fma_per_thread = static_cast<double>(Cell::G) * hj * H * nb4 / threads;
      const long waves = (static_cast<long>(slices) * tiles + dev.sm_count - 1) / dev.sm_count;
      const double cost = waves * (1.5 * fma_per_thread + 300.0) + (slices > 1 ? 2000.0 : 0.0);
      if (!best.ok || cost < best_cost) {
        best.ok = true;
        best.nb = nb; best.hj = hj; best.threads = threads; best.tiles = tiles;
        best.slices = slices; best.ldw = ldw; best.smem = smem;
        best_cost = cost;
      }
    }
  }
  return best;
}

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
  static Plan plan_fwd(int N, int H, const DeviceLimits& d, int nb, int hj) {
    return plan_persistent<T, Cell, false>(N, H, d, nb, hj);
  }
  static Plan plan_bwd(int N, int H, const DeviceLimits& d, int nb, int hj) {
    return plan_persistent<T, Cell, true>(N, H, d, nb, hj);
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
