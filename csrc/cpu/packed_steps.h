// Time-step bookkeeping and fixed-tile parallelism shared by the CPU cells.
//
// Padded input [T,N,C] is handled as packed input [S,C] with batch_sizes all N, so one
// code path serves both: step t owns rows off[t] .. off[t]+bs[t] of every [S,...] matrix
// (input, output, workspace, gradients), and only the first bs[t] batch rows are active.
//
// Determinism: work is split into tiles whose bounds depend on the shapes only
// (kGemmRowTile, ...; the steps' split: step_share.h), each tile is computed by one thread
// in a fixed order, and at::parallel_for only decides which thread runs which tile.
// Results are therefore bitwise identical for any torch.get_num_threads().
//
// GEMM engines: float32 on a CPU with AVX-512 runs every product of the recurrence and the
// whole-sequence GEMMs on packed_gemm, with each B operand packed once per op call;
// otherwise (float64, or no AVX-512) products go through gemm_rm (loops or BLAS). The
// helpers below take that branch so the cells do not.
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
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <type_traits>

#include "buffers.h"
#include "cell_math.h"
#include "packed_gemm.h"
#include "row_loop.h"
#include "step_share.h"
#include "streamed_stores.h"

namespace fastrnn {
namespace cpu {

// Rows per tile of the whole-sequence gemm_rm products (input and weight gradients).
constexpr int64_t kGemmRowTile = 256;
// Tile of the whole-sequence GEMMs on packed_gemm. Its results do not depend on the
// tiling, so the tiles are chosen for balance and cache only: 2-D so that narrow products
// (a [3H, H] weight gradient at H=128) still split across threads.
constexpr int64_t kPackedRowTile = 128;
constexpr int64_t kPackedColTile = 256;
// What the backward gate math of one unit in one row costs, in multiply-adds of the GEMM
// kernel's time, for parallel_tiles' work estimates. LSTM at B=64, H=128: ~4.6 ns per
// unit (the row's workspace comes from memory), what the kernel does in ~260 multiply-adds.
// Counted as 16, it kept every step's gate math at H=128 on one thread: with two threads
// the LSTM backward's gate math took 1.7-2.6 ms of a ~9 ms packed backward, 1.1-1.3 ms
// with this cost (ad hoc, instrumented build).
constexpr int64_t kGateGradCost = 256;

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

// Whether T's products run on packed_gemm (see the top of this file).
template <typename T>
inline bool use_packed_gemm() {
  if constexpr (std::is_same_v<T, float>) return packed_gemm_available();
  return false;
}

// Where row p of a [k, n] operand lies: at data + p / per_step * step_stride +
// p % per_step * row_stride, each row's n elements contiguous. Padded layer input is read
// in place at its own strides (per_step = N rows a time step); a contiguous matrix is one
// step of k rows (contiguous_rows). Or, from prev_state_rows (starts_of set), row p is the
// state its row of its step starts from: a row of the previous step's rows at data, or of
// init, row_stride apart in both.
template <typename T>
struct Rows {
  const T* data;
  int64_t per_step, step_stride, row_stride;
  const Steps* starts_of = nullptr;
  const T* init = nullptr;

  // Row p of the first form.
  const T* row(int64_t p) const {
    return data + p / per_step * step_stride + p % per_step * row_stride;
  }
  // Rows p .. p + *count - 1 (1 <= *count <= p1 - p) lie row_stride apart from the one
  // returned.
  const T* run(int64_t p, int64_t p1, int64_t* count) const {
    if (starts_of == nullptr) {
      *count = std::min(p1, (p / per_step + 1) * per_step) - p;
      return row(p);
    }
    const Steps& st = *starts_of;
    const int64_t t = std::upper_bound(st.off.begin(), st.off.end(), p) - st.off.begin() - 1;
    const int64_t i = st.reverse ? st.T - 1 - t : t, r = p - st.off[t], nc = st.carried(i);
    if (r < nc) {
      *count = std::min(p1 - p, nc - r);
      return data + (st.off[st.time(i - 1)] + r) * row_stride;
    }
    *count = std::min(p1 - p, st.bs[t] - r);
    return init + r * row_stride;
  }
  // Whether row p lies at data + p * n for every p < k.
  bool contiguous(int64_t k, int64_t n) const {
    return starts_of == nullptr && row_stride == n &&
           (per_step >= k || step_stride == per_step * n);
  }
};

template <typename T>
Rows<T> contiguous_rows(const T* data, int64_t k, int64_t n) {
  return {data, std::max<int64_t>(k, 1), 0, n};
}

// The rows gather_prev(st, init, w, seq, w, w, dst) copies into dst, where they lie: the
// state each row of each step starts from (seq [S, w], init [N, w]). For packed_gemm's
// packing only (not contiguous).
template <typename T>
Rows<T> prev_state_rows(const Steps& st, const T* init, const T* seq, int64_t w) {
  return {seq, 1, 0, w, &st, init};
}

// pack_panels of a [k, n] matrix in parallel, over tiles of one panel by kRows rows: the
// activations packed for the weight gradients are [S, C] or [S, P], a few panels wide but
// thousands of rows deep. The weights packed for the backward's products ([G*H, P] or
// [G*H, C], 4 MiB for an LSTM at H=512) were packed on the calling thread while the
// others waited, as the forward's were (its two such packs took ~1.6 ms of an LSTM
// forward at H=512 with two threads, instrumented build).
inline void parallel_pack(int64_t k, int64_t n, const Rows<float>& b, float* out) {
  constexpr int64_t kRows = 512;
  const int64_t chunks = div_up(k, kRows);
  parallel_tiles(div_up(n, kPanel) * chunks, kRows * kPanel, [&](int64_t tile) {
    const int64_t j0 = tile / chunks * kPanel, p1 = std::min(k, (tile % chunks + 1) * kRows);
    // One pack_panels per run of evenly spaced rows.
    for (int64_t p = tile % chunks * kRows; p < p1;) {
      int64_t run;
      const float* first = b.run(p, p1, &run);
      pack_panels(run, std::min(kPanel, n - j0), first + j0, b.row_stride, 1,
                  out + j0 * k + p * kPanel);
      p += run;
    }
  });
}

// packed_gemm over (row tile x kPackedColTile) tiles of C, in parallel; arguments as
// packed_gemm. Column tiles vary fastest so that consecutive tiles share their A rows.
inline void tiled_packed_gemm(int64_t m, int64_t n, int64_t k, AOperand a, const float* bp,
                              const float* init, int64_t init_ld, float* c, int64_t ldc) {
  const int64_t nct = div_up(n, kPackedColTile);
  // Half-height tiles where kPackedRowTile gives fewer than 8: the weight gradients at
  // H = 128 ([G*128, 128]) made 1 (RNN), 3 (GRU) or 4 (LSTM) tiles, so the RNN's ran on one
  // thread and the GRU's split 2:1 between two.
  const int64_t row_tile = div_up(m, kPackedRowTile) * nct < 8 ? kPackedRowTile / 2
                                                                : kPackedRowTile;
  parallel_tiles(div_up(m, row_tile) * nct,
                 std::min(m, row_tile) * std::min(n, kPackedColTile) * k,
                 [&](int64_t tile) {
    const int64_t r0 = (tile / nct) * row_tile, j0 = (tile % nct) * kPackedColTile;
    packed_gemm(std::min(row_tile, m - r0), std::min(kPackedColTile, n - j0), k,
                a.from_row(r0), bp + j0 * k, init ? init + r0 * init_ld + j0 : nullptr, init_ld,
                c + r0 * ldc + j0, ldc);
  });
}

// The packed operands of a backward call, in backward_pack_scratch (where packed_gemm does
// not run, it is empty and nothing is packed):
//   gate_grads: dg^T as weight_grads' A operand ([dg_cols, S] in pack_row_blocks' layout;
//     dg_cols: G*H, or more where a cell packs more than one dg), from a 64-byte line on:
//     a large one is streamed (pack_gate_grads), and streaming needs aligned lines;
//   operands: the B operands, one use after another: W_hh for grad_to_prev_state, W_ih
//     for input_grad, the activations for weight_grads.
template <typename T>
struct BackwardPanels {
  BackwardPanels(T* scratch, int64_t S, int64_t dg_cols)
      : gate_grads(use_packed_gemm<T>() ? line_aligned(scratch) : scratch),
        operands(gate_grads +
                 (use_packed_gemm<T>() ? S * div_up(dg_cols, kBlockRows) * kBlockRows : 0)) {}
  T* const gate_grads;
  T* const operands;
};

// Floats of backward_pack_scratch for a backward of S rows, G*H gates, C inputs and P
// hidden-state features, with dg_cols columns of dg^T packed (BackwardPanels): 0 where
// packed_gemm does not apply.
inline int64_t backward_pack_scratch(const at::Tensor& like, int64_t S, int64_t dg_cols,
                                     int64_t GH, int64_t C, int64_t P) {
  if (like.scalar_type() != at::kFloat || !packed_gemm_available()) return 0;
  return kLineBytes / int64_t(sizeof(float)) + S * div_up(dg_cols, kBlockRows) * kBlockRows +
         std::max({packed_size(GH, P), packed_size(GH, C), packed_size(S, std::max(C, P))});
}

// Sequence rows p0 .. p1-1, columns j0 .. j0+width-1 of dg [S, GH] into dst, the place of
// column j0 in a BackwardPanels' gate_grads (gate_grads + j0 * S for weight_grads). j0 a
// multiple of kBlockRows, and width too unless the columns reach GH. Only where
// packed_gemm runs. The whole pack ([S, GH]) is read only by the weight gradients after
// the recurrence, so a large one is streamed (streamed_stores.h).
template <typename T>
inline void pack_gate_grads(int64_t S, int64_t GH, int64_t p0, int64_t p1, int64_t j0,
                            int64_t width, const T* dg, T* dst) {
  if constexpr (std::is_same_v<T, float>) {
    if (width % kBlockRows == 0 && streams<T>(S * GH))
      pack_row_blocks_streamed(width, S, p0, p1, dg + j0, GH, dst);
    else
      pack_row_blocks(width, S, p0, p1, dg + j0, GH, dst);
  }
}

// Whether a backward's gate tiles pack dg^T for the weight gradients right after computing
// their rows, while they are in cache (pack_gate_grads), rather than weight_grads in one
// pass after the recurrence: where packed_gemm runs, the weight gradients are wanted,
// every gate starts a kBlockRows block (H a multiple of it), and the steps go by units.
// With two threads at B=64, T=100 (ad hoc, alternated processes, medians of 3), at H=512
// (by units; dg 39-52 MB) forward+backward went from ~267.7 to ~264.9 ms (LSTM) and from
// ~216.5 to ~208.7 (GRU, where the pass after the recurrence was ~5% of the time, perf);
// by rows at H=128 it was slower: GRU 17.03 -> 17.43 ms, packed 8.30 -> 8.56; RNN 5.86 ->
// 6.04.
template <typename T>
inline bool tiles_pack_gate_grads(const RowGroups& groups, int64_t H, bool weights_wanted) {
  return weights_wanted && use_packed_gemm<T>() && H % kBlockRows == 0 && !groups.by_rows();
}

// dx[S, C] = dg[S, GH] @ w_ih[GH, C].
template <typename T>
inline void input_grad(int64_t S, int64_t GH, int64_t C, const T* dg, const T* w_ih,
                       const BackwardPanels<T>& panels, T* dx) {
  if constexpr (std::is_same_v<T, float>) {
    if (packed_gemm_available()) {
      parallel_pack(GH, C, contiguous_rows(w_ih, GH, C), panels.operands);
      tiled_packed_gemm(S, C, GH, rows_operand(dg, GH), panels.operands, nullptr, 0, dx, C);
      return;
    }
  }
  tiled_gemm(false, false, S, C, GH, dg, GH, w_ih, C, T(0), dx, C);
}

// One weight gradient of weight_grads: dw[GH, n] for a weight applied to the rows of
// b [S, n] (contiguous where packed_gemm does not run).
template <typename T>
struct WeightGrad {
  Rows<T> b;
  int64_t n;
  T* dw;
};

// dw = dg[S, GH]^T @ b for each term: the gradients of the weights that multiply b's rows
// into the gates whose pre-activation gradients are dg. Where packed_gemm runs, dg^T is
// packed once for all terms into panels.gate_grads (unless gate_grads_packed: the
// recurrence did, pack_gate_grads), then each b in turn into panels.operands.
template <typename T>
inline void weight_grads(int64_t S, int64_t GH, const T* dg,
                         std::initializer_list<WeightGrad<T>> terms,
                         const BackwardPanels<T>& panels, bool gate_grads_packed) {
  if constexpr (std::is_same_v<T, float>) {
    if (packed_gemm_available()) {
      // dg^T packed in chunks of steps: each chunk's rows are read once, contiguously.
      constexpr int64_t kChunk = 64;
      if (!gate_grads_packed)
        parallel_tiles(div_up(S, kChunk), kChunk * GH, [&](int64_t i) {
          pack_gate_grads(S, GH, i * kChunk, std::min(S, (i + 1) * kChunk), 0, GH, dg,
                          panels.gate_grads);
        });
      for (const WeightGrad<T>& t : terms) {
        parallel_pack(S, t.n, t.b, panels.operands);
        tiled_packed_gemm(GH, t.n, S, blocks_operand(panels.gate_grads, S), panels.operands,
                          nullptr, 0, t.dw, t.n);
      }
      return;
    }
  }
  for (const WeightGrad<T>& t : terms) {
    TORCH_INTERNAL_ASSERT(t.b.contiguous(S, t.n), "fastrnn: gemm_rm needs contiguous rows");
    tiled_gemm(true, false, GH, t.n, S, dg, GH, t.b.data, t.n, T(0), t.dw, t.n);
  }
}

// Bias gradients db[j] = sum over all S rows of dg[row, j], summed by the recurrence while
// each step's dg rows are still in cache: a separate pass over the whole [S, w] matrix
// re-read it from memory, ~3% of an LSTM backward at H=128 with two threads.
// The rows add into partial sums, one per kBlockRows rows of each row group (the whole
// batch where the steps go by units), so no two tiles or groups share a sum: every tile
// split by units starts at a multiple of kBlockRows, and the partial of row r is
// r / kBlockRows + (its group's index), which no row of another group or block shares.
// finish() adds the partials in row order: the order of every sum depends on the shapes
// only.
template <typename T>
class BiasGradSums {
 public:
  static int64_t scratch_size(int64_t N, int64_t w) {
    return (div_up(N, kBlockRows) + RowGroups::max_count(N)) * w;
  }

  // Sums of width w over steps of at most N rows split as `groups`, into db [w] (null: no
  // bias gradient is wanted, and add() and finish() do nothing); scratch of
  // scratch_size(N, w) elements.
  BiasGradSums(const RowGroups& groups, int64_t N, int64_t w, T* db, T* scratch)
      : groups_(groups), w_(w), partials_(div_up(N, kBlockRows) + groups.count()), db_(db),
        sums_(scratch) {
    if (db_) std::fill(sums_, sums_ + partials_ * w_, T(0));
  }

  // Adds rows r0 .. r0+rows-1 (of one row group) of a step's gradients dg (its first row;
  // row stride w), columns j0 .. j0+width-1.
  void add(int64_t r0, int64_t rows, const T* dg, int64_t j0, int64_t width) const {
    if (!db_) return;
    const int64_t group = groups_.group_of(r0);
    for (int64_t r = r0; r < r0 + rows; ++r) {
      T* __restrict__ acc = sums_ + (r / kBlockRows + group) * w_ + j0;
      const T* __restrict__ g = dg + r * w_ + j0;
      for (int64_t j = 0; j < width; ++j) acc[j] += g[j];
    }
  }

  void finish() const {
    if (!db_) return;
    std::copy(sums_, sums_ + w_, db_);
    for (int64_t k = 1; k < partials_; ++k)
      for (int64_t j = 0; j < w_; ++j) db_[j] += sums_[k * w_ + j];
  }

 private:
  const RowGroups& groups_;
  const int64_t w_, partials_;
  T* const db_;
  T* const sums_;
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
// (init [N,...], row stride ld_init). Used for the W_hh gradient on gemm_rm, which needs
// the rows contiguous (prev_states_operand); packed_gemm packs them where they lie.
template <typename T>
inline void gather_prev(const Steps& st, const T* init, int64_t ld_init, const T* seq,
                        int64_t ld_seq, int64_t w, T* dst) {
  // Steps in parallel: at B=64, T=100, H=128 this is 1.6 MiB, and with two threads set one
  // thread took 0.7-0.8 ms to copy it (the rows sit in the other core's cache) while the
  // other waited; 0.1-0.15 ms now.
  parallel_tiles(st.T, st.S / st.T * w, [&](int64_t i) {
    const int64_t t = st.time(i), bt = st.bs[t], nc = st.carried(i);
    T* d = dst + st.off[t] * w;
    const T* prev = i == 0 ? nullptr : seq + st.off[st.time(i - 1)] * ld_seq;
    for (int64_t r = 0; r < bt; ++r) {
      const T* s = r < nc ? prev + r * ld_seq : init + r * ld_init;
      std::copy(s, s + w, d + r * w);
    }
  });
}

// Elements of the [S, w] copy of the previous states that a backward's W_hh gradient reads
// on gemm_rm; packed_gemm packs them where they lie instead (a 13 MB copy at B=64, T=100,
// H=512).
template <typename T>
inline int64_t gathered_prev_size(int64_t S, int64_t w) {
  return use_packed_gemm<T>() ? 0 : S * w;
}

// The previous states h_{t-1} of every row (from init [N, w] and seq [S, w]) as the W_hh
// gradient's operand: where they lie on packed_gemm, else gathered into dst
// (gathered_prev_size elements) when `wanted`.
template <typename T>
inline Rows<T> prev_states_operand(const Steps& st, const T* init, const T* seq, int64_t w,
                                   bool wanted, T* dst) {
  if (use_packed_gemm<T>()) return prev_state_rows(st, init, seq, w);
  if (wanted) gather_prev(st, init, w, seq, w, w, dst);
  return contiguous_rows(dst, st.S, w);
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
// of W, so one GEMM per block yields every gate of the block's units. A block is stored
// for step_product: in panels for packed_gemm (at most P*G*kUnitBlock floats, as G*64 is
// a whole number of panels), else row-major.
//
// Blocks are packed in parallel, split over the threads as a step of one row tile split by
// units (StepShare::tiles) splits its tiles, so each block lands in the cache of the thread
// that multiplies by it (by rows, every thread multiplies by every block). Packed
// on the calling thread, the two 4 MiB packs of an LSTM forward at H=512 took ~3 ms of
// ~180 (one thread) while any other thread waited.
template <typename T>
inline void pack_unit_blocks(const T* w, int64_t G, int64_t H, int64_t P, T* out) {
  parallel_tiles(div_up(H, kUnitBlock), P * G * kUnitBlock, [&](int64_t k) {
    const int64_t u0 = k * kUnitBlock, ub = std::min(kUnitBlock, H - u0);
    const int64_t cols = G * ub, nr = use_packed_gemm<T>() ? kPanel : cols;
    T* blk = out + k * P * G * kUnitBlock;
    if (cols % nr != 0)  // zero the padding columns of the last panel
      std::fill(blk + (cols / nr) * P * nr, blk + div_up(cols, nr) * P * nr, T(0));
    if constexpr (std::is_same_v<T, float>) {
      // Gate g's columns g*ub + j are rows g*H + u0 + j of W, a transposed source: blocks
      // of whole strips (any H % 16 == 0, the sine-wave shape's H=16 among them) pack
      // 16x16 at a time in registers.
      if (use_packed_gemm<T>() && ub % kStrip == 0) {
        for (int64_t g = 0; g < G; ++g)
          for (int64_t j = 0; j < ub; j += kStrip)
            pack_transposed_strip(P, w + (g * H + u0 + j) * P, P, g * ub + j, blk);
        return;
      }
    }
    for (int64_t g = 0; g < G; ++g)
      for (int64_t j = 0; j < ub; ++j) {
        const int64_t col = g * ub + j;
        const T* row = w + (g * H + u0 + j) * P;
        T* dst = blk + (col / nr) * P * nr + col % nr;
        for (int64_t p = 0; p < P; ++p) dst[p * nr] = row[p];
      }
  });
}

// g[rows, cols] = h[rows, P] @ blk[P, cols], blk one block from pack_unit_blocks.
template <typename T>
inline void step_product(int64_t rows, int64_t cols, int64_t P, const T* h, const T* blk,
                         T* g) {
  if constexpr (std::is_same_v<T, float>) {
    if (packed_gemm_available()) {
      packed_gemm(rows, cols, P, rows_operand(h, P), blk, nullptr, 0, g, cols);
      return;
    }
  }
  gemm_rm(false, false, rows, cols, P, h, P, blk, cols, T(0), g, cols);
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

// w_hh [G*H, P] packed for grad_to_prev_state into wp (BackwardPanels::operands), when
// packed_gemm runs it; the BLAS path reads w_hh as it is.
template <typename T>
inline void pack_prev_state_weight(int64_t GH, int64_t P, const T* w_hh, T* wp) {
  if constexpr (std::is_same_v<T, float>) {
    if (packed_gemm_available()) parallel_pack(GH, P, contiguous_rows(w_hh, GH, P), wp);
  }
}

// dh[r, :] = direct[r, :] + dg[r, :] @ w_hh for the share's active rows of one step of bt
// rows:
//   dg [bt, G*H] (row stride G*H) gate pre-activation gradients on the hidden side,
//   w_hh [G*H, P], wp: w_hh from pack_prev_state_weight, dh [N, P] the recurrent gradient
//   state (rows >= bt untouched),
//   direct(r, p0, p1, out) writes the gradient reaching h_{t-1} outside W_hh (GRU's z*dh)
//   into out[p0:p1] and returns true, or returns false when there is none.
template <typename T, class Direct>
inline void grad_to_prev_state(const StepShare& share, int64_t bt, int64_t GH, int64_t P,
                               const T* dg, const T* w_hh, const T* wp, T* dh,
                               const Direct& direct) {
  share.tiles(bt, P, GH, [&](int64_t r0, int64_t r1, int64_t k0, int64_t k1) {
    const int64_t rows = r1 - r0, p0 = k0 * kUnitBlock;
    const int64_t pc = std::min(k1 * kUnitBlock, P) - p0;
    bool acc = false;
    for (int64_t r = r0; r < r1; ++r) acc = direct(r, p0, p0 + pc, dh + r * P);
    T* out = dh + r0 * P + p0;
    if constexpr (std::is_same_v<T, float>) {
      if (packed_gemm_available()) {
        packed_gemm(rows, pc, GH, rows_operand(dg + r0 * GH, GH), wp + p0 * GH,
                    acc ? out : nullptr, P, out, P);
        return;
      }
    }
    gemm_rm(false, false, rows, pc, GH, dg + r0 * GH, GH, w_hh + p0, P, acc ? T(1) : T(0),
            out, P);
  });
}

// h_{t-1} for the rows r0 .. r1-1 of step i (r1 <= its active rows), as a pointer p with
// row r at p + r * P: h0, or the previous step's rows of out ([S, P]), or, where a reverse
// packed step starts rows that the previous step did not have, those rows of hbuf
// ([N, P]) filled from both.
template <typename T>
inline const T* prev_state(const Steps& st, int64_t i, int64_t r0, int64_t r1, const T* h0,
                           const T* out, int64_t P, T* hbuf) {
  if (i == 0) return h0;
  const int64_t nc = st.carried(i);
  const T* prev = out + st.off[st.time(i - 1)] * P;
  if (r1 <= nc) return prev;
  const int64_t split = std::clamp(nc, r0, r1);
  std::copy(prev + r0 * P, prev + split * P, hbuf + r0 * P);
  std::copy(h0 + split * P, h0 + r1 * P, hbuf + split * P);
  return hbuf;
}

}  // namespace cpu
}  // namespace fastrnn
