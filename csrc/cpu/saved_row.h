// SavedRow: where a forward cell row writes the values its backward reads back: one unit
// block (kUnitBlock units at most) of one workspace row, each value's units contiguous.
//
// A workspace that streams (streamed_stores.h) has the row's values go to a buffer on the
// stack first, streamed out whole when the row is done, so the gate loops stay plain
// loops that GCC vectorises.
#pragma once

#include <cstdint>
#include <type_traits>

#include "step_share.h"
#include "streamed_stores.h"

namespace fastrnn {
namespace cpu {

#if defined(__x86_64__)
// dst[v * dst_stride + j] = src[v * kUnitBlock + j], v < values, j < n, with streaming
// stores where dst is 64-byte aligned (then fence_streamed_stores).
[[gnu::target("avx512f")]] inline void stream_rows(int64_t values, int64_t n,
                                                   const float* __restrict__ src,
                                                   float* __restrict__ dst,
                                                   int64_t dst_stride) {
  for (int64_t v = 0; v < values; ++v) {
    const float* s = src + v * kUnitBlock;
    float* d = dst + v * dst_stride;
    int64_t j = 0;
    for (; j < n && reinterpret_cast<uintptr_t>(d + j) % kLineBytes != 0; ++j) d[j] = s[j];
    for (; j + 16 <= n; j += 16) _mm512_stream_ps(d + j, _mm512_loadu_ps(s + j));
    for (; j < n; ++j) d[j] = s[j];
  }
}
#endif

template <typename T, int64_t kValues>
class SavedRow {
 public:
  // ws: the workspace row at the block's first unit, value v of unit j at ws[v * H + j]
  // (null where the forward saves nothing); stream: whether the workspace streams.
  SavedRow(T* ws, int64_t H, bool stream) : ws_(ws), H_(H), stream_(stream) {}

  // Where the cell writes value v of unit j: dst()[v * stride() + j].
  T* dst() { return stream_ ? buffer_ : ws_; }
  int64_t stride() const { return stream_ ? kUnitBlock : H_; }

  // Writes the row's n units out (streamed rows only; the others are written in place).
  // The tile's rows then need fence_streamed_stores.
  void finish(int64_t n) {
#if defined(__x86_64__)
    if constexpr (std::is_same_v<T, float>) {
      if (stream_) stream_rows(kValues, n, buffer_, ws_, H_);
    }
#endif
  }

 private:
  T* ws_;
  int64_t H_;
  bool stream_;
  alignas(64) T buffer_[kValues * kUnitBlock];
};

}  // namespace cpu
}  // namespace fastrnn
