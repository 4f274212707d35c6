// InputProjection: xp = b_ih + x @ w_ih^T, the input side of every gate, computed a chunk
// of steps at a time just before the recurrence reaches them, in the recurrence's unit
// blocks (packed_steps.h: block k holds every gate of hidden units k*64 .. k*64+63).
//
// Why chunks: one [S, G*H] buffer for the whole sequence is 13-52 MiB at B=64, T=100,
// H=128-512. Blocks that large go back to the OS when freed, so every call faulted in fresh
// pages that the kernel zeroed first: ~10% of an LSTM forward at H=128. A chunk of about
// kChunkRows rows is reused from chunk to chunk and is still in cache when its steps read it.
//
// Why unit blocks: the chunk is split into tiles exactly as the steps' regions are (row
// tile x unit block, same tile count), so with at::parallel_for's static split the thread
// that runs block k of a step has projected block k of that step itself. Projected by
// whole rows instead, half of every step's xp sat in the other core's cache: two-thread
// step tiles ran ~25% slower than one-thread ones (LSTM, H=128).
//
// Where the steps go by rows (step_share.h), there are no chunks: each row group projects
// its own rows of a step just before the step needs them, in the thread that reads them.
//
// Results do not depend on the chunking or the tiling: packed_gemm sums each element in a
// fixed order whatever its row count, and every bound comes from the shapes alone.
#pragma once

#include "packed_steps.h"

namespace fastrnn {
namespace cpu {

// Where the forward reads the layer input: row r of step t at
// data + t * time_stride + r * row_stride for padded input read in place, or at
// data + (off[t] + r) * row_stride in Steps' own [S, C] layout (packed or contiguous input).
template <typename T>
struct InputRows {
  const T* data;
  bool steps_layout;
  int64_t time_stride, row_stride;
  const T* row(const Steps& st, int64_t t, int64_t r) const {
    return data + (steps_layout ? st.off[t] * row_stride : t * time_stride) + r * row_stride;
  }
};

// The layer input as the forward reads it. Padded input whose features are contiguous is
// read in place: batch_first input arrives as a transposed view, and copying it time-major
// was ~2% of an LSTM forward at H=128. Rows closer than C apart (an expanded batch, say) or
// any other layout are made contiguous first: BLAS wants a leading dimension >= C.
inline at::Tensor forward_input(const at::Tensor& input, bool packed) {
  const bool in_place = !packed && input.dim() == 3 && input.stride(2) == 1 &&
                        input.stride(1) >= input.size(2);
  return in_place ? input : input.contiguous();
}

// Rows of forward_input's result.
template <typename T>
InputRows<T> input_rows(const at::Tensor& x) {
  const int64_t C = x.size(-1);
  if (x.is_contiguous()) return {x.const_data_ptr<T>(), true, 0, C};
  return {x.const_data_ptr<T>(), false, x.stride(0), x.stride(1)};
}

// The layer input as the backward's weight gradient reads it: where the forward reads it
// (forward_input: padded input in place, batch_first included) when packed_gemm packs it,
// contiguous for gemm_rm, which needs that. A contiguous copy of a batch_first input took
// ~1-4% of a forward+backward at H=128 with two threads (ad hoc: RNN 7.98-8.29 ms with
// it, 7.63-7.86 without; LSTM 26.8-27.2 and 26.1-26.6).
inline at::Tensor weight_grad_input(const at::Tensor& input, bool packed) {
  return input.scalar_type() == at::kFloat && packed_gemm_available()
             ? forward_input(input, packed)
             : input.contiguous();
}

// Rows of weight_grad_input's result (S rows; N a step when padded).
template <typename T>
Rows<T> weight_grad_rows(const at::Tensor& x, const Steps& st) {
  if (x.is_contiguous()) return contiguous_rows(x.const_data_ptr<T>(), st.S, x.size(-1));
  return {x.const_data_ptr<T>(), st.N, x.stride(0), x.stride(1)};
}

// Rows per packed_gemm call of a projection (see project()).
constexpr int64_t kProjectionRows = 64;

// Rows of x projected per chunk (whole steps: a chunk ends at the first step that reaches
// this many rows). 256 rows of 4H floats at H=128 are 512 KiB: in L2 until read.
constexpr int64_t kChunkRows = 256;

// Rows a chunk can hold: it stops adding steps (of at most N rows) once it has kChunkRows.
// At least N (S >= N): by rows, the chunk space holds one step's rows.
inline int64_t chunk_capacity(const Steps& st) {
  return std::min(st.S, kChunkRows + st.N - 1);
}

// Scratch elements an InputProjection of G gates x H units over C input features needs.
inline int64_t input_projection_scratch(const Steps& st, int64_t G, int64_t H, int64_t C) {
  return div_up(H, kUnitBlock) * G * kUnitBlock * (C + 1 + chunk_capacity(st));
}

template <typename T>
class InputProjection {
 public:
  // x the layer input's rows, w_ih [G*H, C], bias [G*H]; scratch of
  // input_projection_scratch(st, G, H, C) elements; by_rows: whether the steps go by rows.
  InputProjection(const Steps& st, int64_t G, int64_t H, int64_t C, InputRows<T> x,
                  const T* w_ih, const T* bias, T* scratch, bool by_rows)
      : st_(st), G_(G), H_(H), C_(C), nblk_(div_up(H, kUnitBlock)), by_rows_(by_rows), x_(x),
        block_(G * kUnitBlock), wblk_(scratch), bias_(wblk_ + nblk_ * block_ * C),
        xp_(bias_ + nblk_ * block_), capacity_(chunk_capacity(st)) {
    pack_unit_blocks(w_ih, G, H, C, wblk_);
    // The bias as a [G*H, 1] matrix: its one row per block is that block's bias row.
    pack_unit_blocks(bias, G, H, int64_t(1), bias_);
  }

  // Projects the chunk that starts at step i (processing order) when i starts one. Call
  // it before step i's region, outside any parallel region: it runs its own. Steps by
  // units only.
  void before_step(int64_t i) {
    if (i == chunk_end_) project_chunk_from(i);
  }

  // Step i's rows of unit block k: [bs[time(i)], G*ub] with row stride G*ub, gate g of the
  // block's unit j at column g*ub + j (the layout of the step's W_hh h block); of them,
  // the caller reads rows r0 .. r1-1, which by rows are projected now.
  const T* block(int64_t i, int64_t k, int64_t r0, int64_t r1) {
    const int64_t ub = std::min(kUnitBlock, H_ - k * kUnitBlock);
    T* rows_of_block = xp_ + k * capacity_ * block_;
    if (by_rows_) {  // row r of every step at row r of the block's chunk space
      project(r1 - r0, k, x_.row(st_, st_.time(i), r0), x_.row_stride,
              rows_of_block + r0 * G_ * ub);
      return rows_of_block;
    }
    return rows_of_block + (st_.off[st_.time(i)] - chunk_row0_) * G_ * ub;
  }

 private:
  void project_chunk_from(int64_t i) {
    int64_t rows = 0, widest = 0, j = i;
    while (j < st_.T && rows < kChunkRows) {
      widest = std::max(widest, st_.bs[st_.time(j)]);
      rows += st_.bs[st_.time(j++)];
    }
    chunk_end_ = j;
    // Steps i..j-1 hold consecutive rows of x in either direction.
    chunk_row0_ = std::min(st_.off[st_.time(i)], st_.off[st_.time(j - 1)]);
    const int64_t nrt = div_up(widest, kRowTile);
    parallel_tiles(nrt * nblk_, std::min(widest, kRowTile) * block_ * C_ * (j - i),
                   [&](int64_t tile) {
      const int64_t rt = tile % nrt, k = tile / nrt;
      // Where sequence row `row` goes in block k of the chunk.
      const int64_t cols = G_ * std::min(kUnitBlock, H_ - k * kUnitBlock);
      auto chunk_row = [&](int64_t row) {
        return xp_ + k * capacity_ * block_ + (row - chunk_row0_) * cols;
      };
      // The tile's rows are the whole chunk, consecutive in x: one product.
      if (nrt == 1 && x_.steps_layout) {
        project(rows, k, x_.data + chunk_row0_ * C_, C_, chunk_row(chunk_row0_));
        return;
      }
      for (int64_t s = i; s < j; ++s) {
        const int64_t t = st_.time(s), r0 = rt * kRowTile;
        if (r0 < st_.bs[t])
          project(std::min(kRowTile, st_.bs[t] - r0), k, x_.row(st_, t, r0), x_.row_stride,
                  chunk_row(st_.off[t] + r0));
      }
    });
  }

  // Block k of `rows` input rows (from x, row stride ldx) into out (row stride G*ub).
  void project(int64_t rows, int64_t k, const T* x, int64_t ldx, T* out) const {
    const int64_t cols = G_ * std::min(kUnitBlock, H_ - k * kUnitBlock);
    const T* w = wblk_ + k * C_ * block_;
    const T* b = bias_ + k * block_;
    if constexpr (std::is_same_v<T, float>) {
      if (use_packed_gemm<T>()) {
        // In kProjectionRows pieces: packed_gemm streams its A rows once per 32-column
        // panel, and a 64-row piece stays in L1 at C=128 (32 KiB) and in L2 at C=512.
        // Pieces of 128 rows made a packed or time-major RNN forward at H=128 ~4% slower.
        for (int64_t r = 0; r < rows; r += kProjectionRows)
          packed_gemm(std::min(kProjectionRows, rows - r), cols, C_,
                      rows_operand(x + r * ldx, ldx), w, b, 0, out + r * cols, cols);
        return;
      }
    }
    for (int64_t r = 0; r < rows; ++r) std::copy(b, b + cols, out + r * cols);
    gemm_rm(false, false, rows, cols, C_, x, ldx, w, cols, T(1), out, cols);
  }

  const Steps& st_;
  const int64_t G_, H_, C_, nblk_;
  const bool by_rows_;
  const InputRows<T> x_;
  const int64_t block_;  // elements per row of a full unit block: G * kUnitBlock
  T* const wblk_;        // w_ih^T in unit blocks (pack_unit_blocks)
  T* const bias_;        // bias in unit blocks: [nblk][G*ub]
  T* const xp_;          // the chunk: [nblk][capacity_][G*ub]
  const int64_t capacity_;
  int64_t chunk_end_ = 0, chunk_row0_ = 0;
};

}  // namespace cpu
}  // namespace fastrnn
