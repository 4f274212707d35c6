// Memory of the CPU op calls: the buffers they return, the gradients they may skip, and
// the scratch they keep from call to call.
#pragma once

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace fastrnn {
namespace cpu {

constexpr size_t kHugePage = size_t(2) << 20;

// Marks the whole 2 MiB stretches of [data, data + bytes) for transparent huge pages
// (Linux; a no-op elsewhere), before first touch: faulting in tens of MiB 4 KiB at a time
// cost ~10% of an LSTM forward at H=512.
inline void advise_huge_pages(void* data, size_t bytes) {
#ifdef __linux__
  const auto begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + bytes) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

// Whether reused memory must be NaN-filled: wherever ATen NaN-fills a new at::empty buffer
// (torch.use_deterministic_algorithms with torch.utils.deterministic.
// fill_uninitialized_memory), so tests still catch reads of memory no one wrote: stale
// values from a previous call would hide them.
inline bool fills_new_memory() {
  const auto& ctx = at::globalContext();
  return ctx.deterministicAlgorithms() && ctx.deterministicFillUninitializedMemory();
}
inline void fill_like_new_memory(const at::Tensor& t) {
  if (fills_new_memory()) t.fill_(std::numeric_limits<double>::quiet_NaN());
}

// at::empty for the large buffers of an op call (output, workspace, scratch), marked for
// huge pages: the allocator hands back fresh pages on every call at these sizes.
inline at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  advise_huge_pages(t.data_ptr(), t.nbytes());
  return t;
}

// At least `bytes` of scratch for one op call, from a buffer the calling thread keeps for
// its next calls (grown when a call needs more; freed when the thread exits). Scratch
// never leaves the op, and an op call runs to completion on its thread before the next
// starts, so a thread never has two users of its buffer at once.
//
// Why keep it: fresh memory costs far more than its zeroing on a VM, whose hypervisor
// faults every page in again after the guest handed it back. On the 2-core measurement
// VM an LSTM backward at H=512 (~150 MiB of scratch) took ~730-790 ms per call after
// torch.nn had run in the same process, against ~410-420 ms with memory kept.
inline void* kept_thread_buffer(int64_t bytes) {
  thread_local at::Tensor kept;  // bytes
  if (!kept.defined() || kept.numel() < bytes) {
    kept = at::Tensor();  // let go of the old buffer before taking the larger one
    kept = empty_large({bytes}, at::TensorOptions(at::kByte));
  }
  return kept.data_ptr();
}

// `numel` elements of T from kept_thread_buffer, NaN-filled like new memory under
// deterministic fill. A raw pointer, not a Tensor: viewing the buffer as one costs two
// dispatched view ops per call, ~1 us of a ~15 us sine-shape layer call.
template <typename T>
T* thread_scratch(int64_t numel) {
  T* data = static_cast<T*>(kept_thread_buffer(numel * int64_t(sizeof(T))));
  if (fills_new_memory()) std::fill_n(data, numel, std::numeric_limits<T>::quiet_NaN());
  return data;
}

// A backward call's thread_scratch: a copy of grad_output (dout, which the recurrence
// accumulates dL/dh_t into) followed by `numel` elements for the kernel.
template <typename T>
struct BackwardScratch {
  T* dout;
  T* rest;
};
template <typename T>
BackwardScratch<T> backward_scratch(const at::Tensor& grad_output, int64_t numel) {
  const int64_t n = grad_output.numel();
  T* buffer = thread_scratch<T>(n + numel);
  const int64_t d = grad_output.dim();
  if (grad_output.scalar_type() != c10::CppTypeToScalarType<T>() || (d != 2 && d != 3)) {
    // Another dtype, or a shape other than the output's [T,N,H] or [S,H] (the ops check
    // only the element count): ATen copies and converts, in row-major order.
    at::from_blob(buffer, grad_output.sizes(), grad_output.options().dtype(
                      c10::CppTypeToScalarType<T>())).copy_(grad_output);
    return {buffer, buffer + n};
  }
  // Row by row, whatever the strides: the gradient of a batch_first output arrives
  // transposed, and that of output.sum() expanded (stride 0). ATen's copy_ took ~1 us more
  // to set up at the sine-wave shape.
  const int64_t width = grad_output.size(d - 1);
  const int64_t rows = width == 0 ? 0 : n / width, inner = grad_output.size(d - 2);
  const int64_t outer_stride = d == 3 ? grad_output.stride(0) : 0;
  const int64_t row_stride = grad_output.stride(d - 2), column_stride = grad_output.stride(d - 1);
  const T* src = grad_output.const_data_ptr<T>();
  // In parallel, as ATen's copy is: a few MiB at B=64, T=100.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, width));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* row = src + r / inner * outer_stride + r % inner * row_stride;
      T* out = buffer + r * width;
      if (column_stride == 1) {
        std::copy(row, row + width, out);
      } else {
        for (int64_t j = 0; j < width; ++j) out[j] = row[j * column_stride];
      }
    }
  });
  return {buffer, buffer + n};
}

// A contiguous copy of t that the caller may change in place: the incoming state
// gradients and c0, which the recurrences update, and the second of two equal bias
// gradients (autograd must not receive one tensor twice). For the few elements of the
// sine shape (N=1, H=16) at::clone's dispatched copy cost ~0.8 us more than a memcpy:
// forward+backward took 59.5 -> 57.9 us (RNN), 64.1 -> 62.5 (GRU), 70.8 -> 68.4 (LSTM;
// two state gradients and c0), ad hoc, two threads, medians of 3 alternated processes.
inline at::Tensor fresh_copy(const at::Tensor& t) {
  at::Tensor out = at::empty(t.sizes(), t.options());
  if (!t.is_contiguous()) {
    out.copy_(t);  // e.g. an expanded gradient (stride 0)
  } else if (t.numel() > 0) {
    std::memcpy(out.data_ptr(), t.const_data_ptr(), t.nbytes());
  }
  return out;
}

// A gradient *_layer_bwd returns: a buffer when the caller asked for it (need_grad_input,
// need_grad_weights), an empty tensor in its place otherwise.
inline at::Tensor grad_result(bool wanted, at::IntArrayRef sizes,
                              const at::TensorOptions& options) {
  return wanted ? empty_large(sizes, options) : at::empty({0}, options);
}

// grad_h0 (or grad_c0) from the recurrent gradient buffer that ends holding it, shaped
// like the state; an empty tensor when it was not asked for (need_grad_state).
inline at::Tensor state_grad(bool wanted, const at::Tensor& buffer, const at::Tensor& state) {
  return wanted ? buffer.view(state.sizes()) : at::empty({0}, buffer.options());
}

// The data a backward kernel writes a gradient into; null when it was not asked for,
// which tells the kernel to skip that product.
template <typename T>
T* data_if(bool wanted, at::Tensor& t) {
  return wanted ? t.mutable_data_ptr<T>() : nullptr;
}

}  // namespace cpu
}  // namespace fastrnn
