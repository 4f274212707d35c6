// Float32 GEMM on a B operand packed once per op call, with an AVX-512 register-blocked
// micro-kernel (packed_gemm.cpp).
//
// Why not MKL: sgemm repacks its B operand on every call, and our calls are many and small
// (a 64-row tile of one time step against a block of W_hh, every step): on the 2-core Zen4
// CI machines MKL's packing copies took ~17% of an LSTM forward and its kernel ran at
// ~85 GFLOP/s, this kernel at ~105-115 on the same shapes.
//
// Packed layout ("panels"): B [k, n] is cut into column panels of kPanel columns; panel q
// holds columns q*kPanel .. q*kPanel+31 as [k][kPanel] (row p of the panel is B[p, cols]),
// stored from q*k*kPanel; columns past n are zero.
//
// Determinism: every element of C is init + sum over p = 0..k-1 of A[i,p]*B[p,j], one
// fused multiply-add per p in increasing p, whatever m, n or the caller's tiling. Results
// therefore depend on the shapes only, never on how callers split the work into threads.
#pragma once

#include <cstdint>

namespace fastrnn {
namespace cpu {

constexpr int64_t kPanel = 32;

inline int64_t panel_cols(int64_t n) { return (n + kPanel - 1) / kPanel * kPanel; }

// Floats of the packed form of a [k, n] operand.
inline int64_t packed_size(int64_t k, int64_t n) { return k * panel_cols(n); }

// True when this CPU runs packed_gemm (AVX-512F) and FASTRNN_NO_AVX512 is not set;
// otherwise callers use gemm_rm.
bool packed_gemm_available();

// Packs B(p, j) = b[p * row_stride + j * col_stride], p < k, j < n, into panels at out
// (packed_size(k, n) floats). Fast for whole rows of a row-major matrix (col_stride 1);
// a transposed source goes faster through pack_transposed_strip.
void pack_panels(int64_t k, int64_t n, const float* b, int64_t row_stride, int64_t col_stride,
                 float* out);

// Columns per pack_transposed_strip call.
constexpr int64_t kStrip = 16;

// Columns j0 .. j0 + kStrip - 1 (j0 a multiple of kStrip) of a packed [k, n] operand from a
// transposed source: B(p, j0 + j) = bt[j * ld + p]. The other columns are left as they
// are. Only where packed_gemm_available().
void pack_transposed_strip(int64_t k, const float* bt, int64_t ld, int64_t j0, float* out);

// Rows of A (and C) per micro-kernel call.
constexpr int64_t kBlockRows = 8;

// The A operand of packed_gemm: rows kBlockRows*b .. kBlockRows*b + 7 start at
// data + b * block_stride, and within that block A(i, p) = [i * row_stride + p * k_stride].
struct AOperand {
  const float* data;
  int64_t block_stride, row_stride, k_stride;
  // The operand from row r0 (a multiple of kBlockRows) on.
  AOperand from_row(int64_t r0) const {
    return {data + r0 / kBlockRows * block_stride, block_stride, row_stride, k_stride};
  }
};

// Row-major A with row stride lda.
inline AOperand rows_operand(const float* a, int64_t lda) {
  return {a, kBlockRows * lda, lda, 1};
}

// A of depth k as packed by pack_row_blocks.
inline AOperand blocks_operand(const float* a, int64_t k) {
  return {a, kBlockRows * k, 1, kBlockRows};
}

// Packed A for a transposed matrix: A = at^T, at [K, m] row-major (row stride ld), goes
// to out as row blocks [K][kBlockRows] (ceil(m/8)*8*K floats; blocks_operand(out, K)).
// Packs the depth range p0 <= p < p1 only, so callers can split the work.
void pack_row_blocks(int64_t m, int64_t K, int64_t p0, int64_t p1, const float* at,
                     int64_t ld, float* out);

// pack_row_blocks with streaming stores (streamed_stores.h), ending in a store fence; m a
// multiple of kBlockRows. Only where packed_gemm_available().
void pack_row_blocks_streamed(int64_t m, int64_t K, int64_t p0, int64_t p1, const float* at,
                              int64_t ld, float* out);

// C[m, n] = init + A[m, k] @ B[k, n]: bp is B packed by pack_panels, c has row stride
// ldc; init row i = init + i * init_ld (init_ld 0: one row for all, e.g. a bias; init == c,
// init_ld == ldc: accumulate into C), or zeros when init is null. Runs on the calling
// thread; callers tile and parallelise.
void packed_gemm(int64_t m, int64_t n, int64_t k, AOperand a, const float* bp,
                 const float* init, int64_t init_ld, float* c, int64_t ldc);

}  // namespace cpu
}  // namespace fastrnn
