// InputProjection: xp = b_ih + x @ w_ih^T, the input side of every gate, computed a chunk
// of steps at a time just before the recurrence reaches them.
//
// Why chunks: one [S, G*H] buffer for the whole sequence is 13-52 MiB at B=64, T=100,
// H=128-512. Blocks that large go back to the OS when freed, so every call faulted in fresh
// pages that the kernel zeroed first: ~10% of an LSTM forward at H=128. A chunk of about
// kChunkRows rows is reused from chunk to chunk and is still in cache when its steps read it.
//
// Results do not depend on the chunking: packed_gemm sums each element in a fixed order
// whatever the row count, and the chunk bounds (like every tile bound) come from the
// shapes alone, never from the thread count.
#pragma once

#include "packed_steps.h"

namespace fastrnn {
namespace cpu {

// Rows of x projected per chunk (whole steps: a chunk ends at the first step that reaches
// this many rows). 256 rows of 4H floats at H=128 are 512 KiB: in L2 until read.
constexpr int64_t kChunkRows = 256;

// Scratch elements an InputProjection of width GH over C input features needs.
inline int64_t input_projection_scratch(const Steps& st, int64_t GH, int64_t C) {
  return std::min(st.S, kChunkRows + st.N - 1) * GH + packed_size(C, GH);
}

template <typename T>
class InputProjection {
 public:
  // x [S, C] (the layer input in Steps' row layout), w_ih [GH, C], bias [GH]; scratch of
  // input_projection_scratch(st, GH, C) elements.
  InputProjection(const Steps& st, int64_t GH, int64_t C, const T* x, const T* w_ih,
                  const T* bias, T* scratch)
      : st_(st), GH_(GH), C_(C), x_(x), bias_(bias), xp_(scratch),
        wt_(scratch + std::min(st.S, kChunkRows + st.N - 1) * GH) {
    // w_ih^T [C, GH]: packed into panels for packed_gemm, else row-major for gemm_rm.
    if (packed()) {
      if constexpr (std::is_same_v<T, float>) pack_panels(C, GH, w_ih, 1, C, wt_);
    } else {
      for (int64_t j = 0; j < GH; ++j)
        for (int64_t c = 0; c < C; ++c) wt_[c * GH + j] = w_ih[j * C + c];
    }
  }

  // xp of step i's rows ([bs[time(i)], GH], row stride GH), for i = 0, 1, ... in the
  // recurrence's order. Call it outside parallel regions: a new chunk runs one.
  const T* step(int64_t i) {
    if (i == chunk_end_) project_chunk_from(i);
    return xp_ + (st_.off[st_.time(i)] - chunk_row0_) * GH_;
  }

 private:
  static bool packed() { return use_packed_gemm<T>(); }

  void project_chunk_from(int64_t i) {
    int64_t rows = 0, j = i;
    while (j < st_.T && rows < kChunkRows) rows += st_.bs[st_.time(j++)];
    chunk_end_ = j;
    // Steps i..j-1 hold consecutive rows of x in either direction.
    chunk_row0_ = std::min(st_.off[st_.time(i)], st_.off[st_.time(j - 1)]);
    const T* x = x_ + chunk_row0_ * C_;
    if constexpr (std::is_same_v<T, float>) {
      if (packed()) {
        tiled_packed_gemm(rows, GH_, C_, rows_operand(x, C_), wt_, bias_, 0, xp_, GH_);
        return;
      }
    }
    for (int64_t r = 0; r < rows; ++r) std::copy(bias_, bias_ + GH_, xp_ + r * GH_);
    tiled_gemm(false, false, rows, GH_, C_, x, C_, wt_, GH_, T(1), xp_, GH_);
  }

  const Steps& st_;
  const int64_t GH_, C_;
  const T* const x_;
  const T* const bias_;
  T* const xp_;  // the current chunk: rows chunk_row0_ .. of x, projected
  T* const wt_;
  int64_t chunk_end_ = 0, chunk_row0_ = 0;
};

}  // namespace cpu
}  // namespace fastrnn
