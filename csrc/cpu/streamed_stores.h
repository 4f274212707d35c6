// Streaming (non-temporal) stores for the large buffers a layer call writes once and reads
// back only much later: the forward's workspace (saved_row.h) and the backward's pack of
// dg^T for the weight gradients (pack_gate_grads in packed_steps.h).
//
// An ordinary store first reads its cache line in (write-allocate), and tens of MiB
// written that way push out of cache what the next steps read: the input projection
// chunk, the packed weight blocks. Streaming stores skip both. Ad hoc, two threads,
// B=64, T=100, H=512, medians of three alternated processes:
// - workspace (LSTM 65 MiB, GRU 52 MiB): LSTM forward with grad ~98.1 -> ~94.5 ms,
//   forward+backward ~267.3 -> ~264.2; GRU ~74.4 -> ~71.0 and ~210.3 -> ~206.8;
// - dg^T pack on top of that (LSTM 52 MiB, GRU 39 MiB): forward+backward LSTM
//   ~262.6 -> ~260.6 ms, GRU ~205.1 -> ~201.6.
// At H=128 (a 16 MiB workspace) streaming made no difference either way, and streaming
// the sine shape's tiny workspace rows cost ~1 us per call: hence a threshold.
#pragma once

#include <cstdint>
#include <type_traits>

#include "packed_gemm.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace fastrnn {
namespace cpu {

// Buffers of at least this many bytes are written with streaming stores (see above: 16 MiB
// gained nothing, 39 to 65 MiB gained).
constexpr int64_t kStreamedBytes = int64_t(32) << 20;

// Whether a buffer of `elements` T is written with streaming stores. The stores are
// AVX-512, so only where packed_gemm runs (it needs AVX-512F), and only for float: double
// is the precision path, not the fast one.
template <typename T>
inline bool streams(int64_t elements) {
  if constexpr (std::is_same_v<T, float>) {
    return elements * int64_t(sizeof(T)) >= kStreamedBytes && packed_gemm_available();
  } else {
    return false;
  }
}

// Streaming stores write whole 64-byte lines: a buffer meant for them starts on one.
constexpr int64_t kLineBytes = 64;
template <typename T>
inline T* line_aligned(T* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  return reinterpret_cast<T*>((address + kLineBytes - 1) / kLineBytes * kLineBytes);
}

// Streaming stores are weakly ordered: before another thread may read what this thread
// streamed, the thread runs this store fence (the parallel region's closing barrier then
// publishes the data). Once per tile or call, not per row: a fence per workspace row cost
// the whole gain (LSTM, H=512).
inline void fence_streamed_stores(bool streamed) {
#if defined(__x86_64__)
  if (streamed) _mm_sfence();
#endif
}

}  // namespace cpu
}  // namespace fastrnn
