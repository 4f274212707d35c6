// SavedRow: where a forward cell row writes the values its backward reads back: one unit
// block (kUnitBlock units at most) of one workspace row, each value's units contiguous.
//
// A workspace much larger than the caches is written with non-temporal (streaming) stores.
// With ordinary stores every workspace line is first read in (write-allocate), and it then
// pushes out of cache what the next steps read: the input projection chunk, W_hh's packed
// blocks. The LSTM's workspace holds 5 floats per unit and row, 65 MiB at B=64, T=100,
// H=512; streaming it took the LSTM forward with grad there from ~98.1 to ~94.5 ms and the
// forward+backward from ~267.3 to ~264.2 ms; the GRU's (4 floats, 52 MiB): ~74.4 to ~71.0
// and ~210.3 to ~206.8 ms (two threads, ad hoc, medians of three alternated processes).
// At H=128 (16 MiB) streaming made no difference either way, and streaming the sine
// shape's tiny rows cost ~1 us per call: hence the threshold below.
//
// The row's values go to a buffer on the stack first and are streamed out whole when the
// row is done, so the gate loops stay plain loops that GCC vectorises.
#pragma once

#include <cstdint>
#include <type_traits>

#include "packed_gemm.h"
#include "step_share.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace fastrnn {
namespace cpu {

// Workspaces of at least this many bytes are streamed (see above: 16 MiB gained nothing,
// 52 and 65 MiB gained).
constexpr int64_t kStreamedWorkspaceBytes = int64_t(32) << 20;

// Whether a forward streams a workspace of `elements` T. The stores are AVX-512, so only
// where packed_gemm runs (which needs AVX-512F), and only for float: double is the
// precision path, not the fast one.
template <typename T>
inline bool streams_workspace(int64_t elements) {
  if constexpr (std::is_same_v<T, float>) {
    return elements * int64_t(sizeof(T)) >= kStreamedWorkspaceBytes && packed_gemm_available();
  } else {
    return false;
  }
}

#if defined(__x86_64__)
// dst[v * dst_stride + j] = src[v * kUnitBlock + j], v < values, j < n, with streaming
// stores where dst is 64-byte aligned. Streaming stores are weakly ordered: the thread
// must run fence_streamed_rows before another thread may read them.
[[gnu::target("avx512f")]] inline void stream_rows(int64_t values, int64_t n,
                                                   const float* __restrict__ src,
                                                   float* __restrict__ dst,
                                                   int64_t dst_stride) {
  for (int64_t v = 0; v < values; ++v) {
    const float* s = src + v * kUnitBlock;
    float* d = dst + v * dst_stride;
    int64_t j = 0;
    for (; j < n && reinterpret_cast<uintptr_t>(d + j) % 64 != 0; ++j) d[j] = s[j];
    for (; j + 16 <= n; j += 16) _mm512_stream_ps(d + j, _mm512_loadu_ps(s + j));
    for (; j < n; ++j) d[j] = s[j];
  }
}
#endif

// Orders this thread's streamed rows before its later stores (a store fence), so that the
// parallel region's closing barrier publishes them. Once per tile of rows, not per row: a
// fence per row cost the whole gain (LSTM, H=512).
inline void fence_streamed_rows(bool stream) {
#if defined(__x86_64__)
  if (stream) _mm_sfence();
#endif
}

template <typename T, int64_t kValues>
class SavedRow {
 public:
  // ws: the workspace row at the block's first unit, value v of unit j at ws[v * H + j]
  // (null where the forward saves nothing); stream: streams_workspace's answer.
  SavedRow(T* ws, int64_t H, bool stream) : ws_(ws), H_(H), stream_(stream) {}

  // Where the cell writes value v of unit j: dst()[v * stride() + j].
  T* dst() { return stream_ ? buffer_ : ws_; }
  int64_t stride() const { return stream_ ? kUnitBlock : H_; }

  // Writes the row's n units out (streamed rows only; the others are written in place).
  // The tile's rows then need fence_streamed_rows.
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
