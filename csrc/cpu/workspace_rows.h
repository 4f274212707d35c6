// Stores of the workspace rows that the LSTM and GRU forwards save for their backward.
//
// A workspace is written once, by the forward, and read back by the backward only after
// the whole sequence: 16 MiB for an LSTM at B=64, T=100, H=128, 65 MiB at H=512. A plain
// store first reads the line it writes (read for ownership); a streaming store writes whole
// lines without reading them. With streaming stores, forward+backward with two threads
// went from 24.4-25.3 to 22.8-23.5 ms for a GRU at H=128, from 28.4-29.2 to 27.6-28.1 ms
// for an LSTM at H=128 and from 278-281 to 275-278 ms at H=512 (Intel machine kind, ad
// hoc, separate processes alternated, medians; one thread gains less, 0-1%).
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "packed_gemm.h"

namespace fastrnn {
namespace cpu {

// Floats per streaming store (and per 64-byte line).
constexpr int64_t kStreamFloats = 16;

// Whether a workspace at `base` with rows of `row_floats` takes streaming stores: float32 on
// AVX-512 (where packed_gemm runs), with every row, gate segment (H floats) and unit block
// (kUnitBlock = 64 floats) starting on a 64-byte line. `h` is the hidden size.
template <typename T>
bool streams_workspace(const T* base, int64_t row_floats, int64_t h) {
  if constexpr (std::is_same_v<T, float>) {
    return packed_gemm_available() && reinterpret_cast<uintptr_t>(base) % 64 == 0 &&
           row_floats % kStreamFloats == 0 && h % kStreamFloats == 0;
  }
  return false;
}

#if defined(__x86_64__)
[[gnu::target("avx512f")]] inline void stream_floats(const float* src, float* dst, int64_t n) {
  for (int64_t j = 0; j < n; j += kStreamFloats)
    _mm512_stream_ps(dst + j, _mm512_loadu_ps(src + j));
}
#endif

// One row's saved values of one unit block into its workspace row:
// dst[s * dst_stride + j] = src[s * src_stride + j] for s < segments, j < n. stream: from
// streams_workspace for this workspace (n is then a multiple of kStreamFloats).
template <typename T>
inline void save_workspace_row(const T* src, int64_t src_stride, int64_t segments, int64_t n,
                               T* dst, int64_t dst_stride, bool stream) {
#if defined(__x86_64__)
  if constexpr (std::is_same_v<T, float>) {
    if (stream) {
      for (int64_t s = 0; s < segments; ++s)
        stream_floats(src + s * src_stride, dst + s * dst_stride, n);
      return;
    }
  }
#endif
  for (int64_t s = 0; s < segments; ++s)
    std::copy(src + s * src_stride, src + s * src_stride + n, dst + s * dst_stride);
}

// Orders a thread's streaming stores before its later stores, such as the end of a
// parallel region that other threads wait on: streaming stores are weakly ordered.
inline void finish_streaming_stores(bool stream) {
#if defined(__x86_64__)
  if (stream) _mm_sfence();
#endif
}

}  // namespace cpu
}  // namespace fastrnn
