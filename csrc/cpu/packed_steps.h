// Time-step bookkeeping and fixed-tile parallelism shared by the CPU cells.
//
// Padded input [T,N,C] is handled as packed input [S,C] with batch_sizes all N, so one
// code path serves both: step t owns rows off[t] .. off[t]+bs[t] of every [S,...] matrix
// (input, output, workspace, gradients), and only the first bs[t] batch rows are active.
//
// Determinism: work is split into tiles whose bounds depend on the shapes only (kRowTile,
// kUnitBlock, kGemmRowTile), each tile is computed by one thread in a fixed order, and
// at::parallel_for only decides which thread runs which tile. Results are therefore
// bitwise identical for any torch.get_num_threads().
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "cell_math.h"

namespace fastrnn {
namespace cpu {

// Batch rows per tile of a time step.
constexpr int64_t kRowTile = 64;
// Hidden units per tile of a time step: a tile computes all G gates of its units, so its
// gate math needs nothing from other tiles. Block k of W_hh^T ([P, G*64] floats for
// H=512 is 384-512 KiB) stays in the per-core L2 across the steps.
constexpr int64_t kUnitBlock = 64;
// Rows per tile of the whole-sequence GEMMs (input projection, weight gradients).
constexpr int64_t kGemmRowTile = 256;
// Below this many multiply-adds per parallel region, waking the other threads costs more
// than it saves (measured ~2 us per region on the 2-core CI machines).
constexpr int64_t kMinParallelFmas = int64_t(1) << 17;

inline int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Runs f(tile) for tile in [0, ntiles); work = multiply-adds per tile, used to keep small
// steps on the calling thread.
template <class F>
inline void parallel_tiles(int64_t ntiles, int64_t work, const F& f) {
  if (ntiles == 1) {
    f(int64_t(0));
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kMinParallelFmas / std::max<int64_t>(1, work));
  at::parallel_for(0, ntiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) f(i);
  });
}

// gemm_rm over fixed row tiles of C, in parallel. Same argument meaning as gemm_rm.
template <typename T>
inline void tiled_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a,
                       int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  parallel_tiles(div_up(m, kGemmRowTile), std::min(m, kGemmRowTile) * n * k, [&](int64_t i) {
    const int64_t r0 = i * kGemmRowTile;
    gemm_rm(trans_a, trans_b, std::min(kGemmRowTile, m - r0), n, k,
            trans_a ? a + r0 : a + r0 * lda, lda, b, ldb, beta, c + r0 * ldc, ldc);
  });
}

// xp[S, GH] = bias[GH] + x[S, C] @ w_ih[GH, C]^T: the input projection of every step.
// Small products take the loop GEMM, which wants w_ih^T stored [C, GH]: wt (scratch
// [C, GH]) receives it.
template <typename T>
inline void input_projection(int64_t S, int64_t GH, int64_t C, const T* x, const T* w_ih,
                             const T* bias, T* xp, T* wt) {
  for (int64_t s = 0; s < S; ++s) std::copy(bias, bias + GH, xp + s * GH);
  if (std::min(S, kGemmRowTile) * GH * C > kLoopGemmMaxFmas) {
    tiled_gemm(false, true, S, GH, C, x, C, w_ih, C, T(1), xp, GH);
    return;
  }
  for (int64_t j = 0; j < GH; ++j)
    for (int64_t c = 0; c < C; ++c) wt[c * GH + j] = w_ih[j * C + c];
  tiled_gemm(false, false, S, GH, C, x, C, wt, GH, T(1), xp, GH);
}

// out[j] = sum_r x[r*ldx + j] for j < w, rows summed in order (bias gradients).
template <typename T>
inline void column_sums(const T* x, int64_t rows, int64_t w, int64_t ldx, T* out) {
  constexpr int64_t kCols = 256;
  parallel_tiles(div_up(w, kCols), std::min(w, kCols) * rows, [&](int64_t i) {
    const int64_t j0 = i * kCols, j1 = std::min(w, j0 + kCols);
    T* __restrict__ o = out;
    for (int64_t j = j0; j < j1; ++j) o[j] = T(0);
    for (int64_t r = 0; r < rows; ++r) {
      const T* __restrict__ xr = x + r * ldx;
      for (int64_t j = j0; j < j1; ++j) o[j] += xr[j];
    }
  });
}

struct Steps {
  int64_t T = 0, N = 0, S = 0;
  bool reverse = false;
  c10::SmallVector<int64_t, 128> bs, off;  // [T] rows and first row of each time step
  // Time step processed i-th (the recurrence walks i = 0..T-1).
  int64_t time(int64_t i) const { return reverse ? T - 1 - i : i; }
  // Rows of step time(i) whose previous state is row r of step time(i-1) (the rest start
  // from h0/c0): torch.nn's packed semantics for both directions.
  int64_t carried(int64_t i) const {
    return i == 0 ? 0 : std::min(bs[time(i)], bs[time(i - 1)]);
  }
};

// Validates input/batch_sizes against h0 [N,P] and lays out the steps.
inline Steps make_steps(const at::Tensor& input, const std::optional<at::Tensor>& batch_sizes,
                        const at::Tensor& h0, bool reverse) {
  Steps st;
  st.reverse = reverse;
  TORCH_CHECK(h0.dim() == 2, "fastrnn: h0 must be [N,P], got ", h0.sizes());
  st.N = h0.size(0);
  if (batch_sizes.has_value()) {
    const at::Tensor& b = *batch_sizes;
    TORCH_CHECK(b.dim() == 1 && b.scalar_type() == at::kLong && b.device().is_cpu(),
                "fastrnn: batch_sizes must be a 1-D int64 CPU tensor, got ", b.scalar_type(),
                " ", b.sizes(), " on ", b.device());
    TORCH_CHECK(input.dim() == 2, "fastrnn: packed input must be [S,C], got ", input.sizes());
    const at::Tensor bc = b.contiguous();
    const int64_t* p = bc.const_data_ptr<int64_t>();
    st.T = bc.numel();
    st.bs.assign(p, p + st.T);
  } else {
    TORCH_CHECK(input.dim() == 3, "fastrnn: padded input must be [T,N,C], got ", input.sizes());
    TORCH_CHECK(input.size(1) == st.N, "fastrnn: input batch ", input.size(1),
                " does not match h0 batch ", st.N);
    st.T = input.size(0);
    st.bs.assign(st.T, st.N);
  }
  TORCH_CHECK(st.T > 0, "fastrnn: the sequence must have at least one time step");
  TORCH_CHECK(st.bs[0] == st.N, "fastrnn: batch_sizes[0] (", st.bs[0],
              ") must equal the batch of h0 (", st.N, ")");
  st.off.resize(st.T);
  for (int64_t t = 0; t < st.T; ++t) {
    TORCH_CHECK(st.bs[t] > 0 && (t == 0 || st.bs[t] <= st.bs[t - 1]),
                "fastrnn: batch_sizes must be positive and non-increasing");
    st.off[t] = st.S;
    st.S += st.bs[t];
  }
  TORCH_CHECK(!batch_sizes.has_value() || input.size(0) == st.S, "fastrnn: packed input has ",
              input.size(0), " rows but batch_sizes sum to ", st.S);
  return st;
}

// dst[S,w] = the state each row of each step starts from: row r of the previous step's
// seq rows (seq [S,...], row stride ld_seq) if it was active there, else init[r]
// (init [N,...], row stride ld_init). Used to rebuild h_{t-1} / c_{t-1} for backward.
template <typename T>
inline void gather_prev(const Steps& st, const T* init, int64_t ld_init, const T* seq,
                        int64_t ld_seq, int64_t w, T* dst) {
  for (int64_t i = 0; i < st.T; ++i) {
    const int64_t t = st.time(i), bt = st.bs[t], nc = st.carried(i);
    T* d = dst + st.off[t] * w;
    const T* prev = i == 0 ? nullptr : seq + st.off[st.time(i - 1)] * ld_seq;
    for (int64_t r = 0; r < bt; ++r) {
      const T* s = r < nc ? prev + r * ld_seq : init + r * ld_init;
      std::copy(s, s + w, d + r * w);
    }
  }
}

// dst[N,w] = each row's value at the last step that row was active in (h_n from the
// output rows seq [S,w]).
template <typename T>
inline void gather_last(const Steps& st, const T* seq, int64_t w, T* dst) {
  for (int64_t i = 0; i < st.T; ++i) {
    const int64_t t = st.time(i), bt = st.bs[t];
    const int64_t ends_from = i + 1 < st.T ? std::min(bt, st.bs[st.time(i + 1)]) : 0;
    for (int64_t r = ends_from; r < bt; ++r) {
      const T* s = seq + (st.off[t] + r) * w;
      std::copy(s, s + w, dst + r * w);
    }
  }
}

// W [G*H, P] row-major -> W^T cut into unit blocks: block k ([P, G*ub], ub = its unit
// count, stored from k*P*G*kUnitBlock) holds columns g*ub + j = row g*H + k*kUnitBlock + j
// of W, so one GEMM per block yields every gate of the block's units.
template <typename T>
inline void pack_unit_blocks(const T* w, int64_t G, int64_t H, int64_t P, T* out) {
  for (int64_t k = 0; k * kUnitBlock < H; ++k) {
    const int64_t u0 = k * kUnitBlock, ub = std::min(kUnitBlock, H - u0);
    T* blk = out + k * P * G * kUnitBlock;
    for (int64_t g = 0; g < G; ++g)
      for (int64_t j = 0; j < ub; ++j) {
        const T* row = w + (g * H + u0 + j) * P;
        for (int64_t p = 0; p < P; ++p) blk[p * G * ub + g * ub + j] = row[p];
      }
  }
}

inline void check_dtype(const at::Tensor& input, const char* op) {
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "fastrnn::", op, " (CPU) supports float32 and float64, got ",
              input.scalar_type());
}

// Contiguous tensor, or a zero vector of length n when the optional bias is absent.
inline at::Tensor bias_or_zeros(const std::optional<at::Tensor>& b, int64_t n,
                                const at::Tensor& like) {
  return b.has_value() && b->defined() ? b->contiguous() : at::zeros({n}, like.options());
}

// Validates the tensors one layer call shares across cells: every dtype equal to the
// input's, w_ih [G*H,C], w_hh [G*H,P], h0 [N,P], biases [G*H].
inline void check_layer(const char* op, const at::Tensor& input, const at::Tensor& h0,
                        const at::Tensor& w_ih, const at::Tensor& w_hh,
                        const std::optional<at::Tensor>& b_ih,
                        const std::optional<at::Tensor>& b_hh, int64_t G, int64_t H,
                        int64_t P) {
  check_dtype(input, op);
  const int64_t C = input.size(-1);
  for (const at::Tensor* t : {&h0, &w_ih, &w_hh})
    TORCH_CHECK(t->scalar_type() == input.scalar_type(), "fastrnn::", op,
                ": every tensor must have the input's dtype ", input.scalar_type(), ", got ",
                t->scalar_type());
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == G * H && w_ih.size(1) == C, "fastrnn::", op,
              ": w_ih must be [", G * H, ",", C, "], got ", w_ih.sizes());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == G * H && w_hh.size(1) == P, "fastrnn::", op,
              ": w_hh must be [", G * H, ",", P, "], got ", w_hh.sizes());
  TORCH_CHECK(h0.size(1) == P, "fastrnn::", op, ": h0 must be [N,", P, "], got ", h0.sizes());
  for (const auto* b : {&b_ih, &b_hh})
    TORCH_CHECK(!b->has_value() || !(*b)->defined() ||
                    ((*b)->numel() == G * H && (*b)->scalar_type() == input.scalar_type()),
                "fastrnn::", op, ": biases must be [", G * H, "] of the input's dtype");
}

// dh_state[r,:] += dh_out[r,:] for the bt active rows: the gradient reaching h_t is the
// output's gradient plus what flowed back from step t+1. dh_out is the step's rows of
// the [S,P] gradient buffer, which keeps the sum for the weight-gradient GEMMs.
template <typename T>
inline void add_state_grad(T* __restrict__ dh_out, const T* __restrict__ dh_state,
                           int64_t n) {
  for (int64_t j = 0; j < n; ++j) dh_out[j] += dh_state[j];
}

// dh[r, :] = direct[r, :] + dg[r, :] @ w_hh for the bt active rows of one step:
//   dg [bt, G*H] (row stride G*H) gate pre-activation gradients on the hidden side,
//   w_hh [G*H, P], dh [N, P] the recurrent gradient state (rows >= bt untouched),
//   direct(r, p0, p1, out) writes the gradient reaching h_{t-1} outside W_hh (GRU's z*dh)
//   into out[p0:p1] and returns true, or returns false when there is none.
// Tiles are (row tile, kUnitBlock columns of P).
template <typename T, class Direct>
inline void grad_to_prev_state(int64_t bt, int64_t GH, int64_t P, const T* dg, const T* w_hh,
                               T* dh, const Direct& direct) {
  const int64_t nrt = div_up(bt, kRowTile), ncb = div_up(P, kUnitBlock);
  parallel_tiles(nrt * ncb, std::min(bt, kRowTile) * std::min(P, kUnitBlock) * GH,
                 [&](int64_t tile) {
    const int64_t r0 = (tile % nrt) * kRowTile, rows = std::min(kRowTile, bt - r0);
    const int64_t p0 = (tile / nrt) * kUnitBlock, pc = std::min(kUnitBlock, P - p0);
    bool acc = false;
    for (int64_t r = r0; r < r0 + rows; ++r) acc = direct(r, p0, p0 + pc, dh + r * P);
    gemm_rm(false, false, rows, pc, GH, dg + r0 * GH, GH, w_hh + p0, P, acc ? T(1) : T(0),
            dh + r0 * P + p0, P);
  });
}

}  // namespace cpu
}  // namespace fastrnn
