// Memory of the CPU op calls: the buffers they return, the gradients they may skip, and
// the scratch they keep from call to call.
#pragma once

#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cstddef>
#include <cstdint>
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

// NaN-fills reused memory wherever ATen NaN-fills a new at::empty buffer
// (torch.use_deterministic_algorithms with torch.utils.deterministic.
// fill_uninitialized_memory), so tests still catch reads of memory no one wrote: stale
// values from a previous call would hide them.
inline void fill_like_new_memory(const at::Tensor& t) {
  const auto& ctx = at::globalContext();
  if (ctx.deterministicAlgorithms() && ctx.deterministicFillUninitializedMemory())
    t.fill_(std::numeric_limits<double>::quiet_NaN());
}

// at::empty for the large buffers of an op call (output, workspace, scratch), marked for
// huge pages: the allocator hands back fresh pages on every call at these sizes.
inline at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  advise_huge_pages(t.data_ptr(), t.nbytes());
  return t;
}

// `numel` elements of scratch for one op call, from a buffer the calling thread keeps for
// its next calls (grown when a call needs more; freed when the thread exits). Scratch
// never leaves the op, and an op call runs to completion on its thread before the next
// starts, so a thread never has two users of its buffer at once.
//
// Why keep it: fresh memory costs far more than its zeroing on a VM, whose hypervisor
// faults every page in again after the guest handed it back. On the 2-core measurement
// VM an LSTM backward at H=512 (~150 MiB of scratch) took ~730-790 ms per call after
// torch.nn had run in the same process, against ~410-420 ms with memory kept.
// NaN-filled like new memory under deterministic fill (fill_like_new_memory).
inline at::Tensor thread_scratch(int64_t numel, const at::TensorOptions& options) {
  thread_local at::Tensor kept;  // bytes
  const int64_t bytes = numel * static_cast<int64_t>(options.dtype().itemsize());
  if (!kept.defined() || kept.numel() < bytes) {
    kept = at::Tensor();  // let go of the old buffer before taking the larger one
    kept = empty_large({bytes}, options.dtype(at::kByte));
  }
  at::Tensor scratch = kept.narrow(0, 0, bytes).view(options.dtype().toScalarType());
  fill_like_new_memory(scratch);
  return scratch;
}

// A backward call's thread_scratch: a copy of grad_output (dout, which the recurrence
// accumulates dL/dh_t into) followed by `numel` elements for the kernel.
struct BackwardScratch {
  at::Tensor dout, rest;
};
inline BackwardScratch backward_scratch(const at::Tensor& grad_output, int64_t numel,
                                        const at::TensorOptions& options) {
  const int64_t n = grad_output.numel();
  const at::Tensor buffer = thread_scratch(n + numel, options);
  BackwardScratch s{buffer.narrow(0, 0, n).view(grad_output.sizes()), buffer.narrow(0, n, numel)};
  s.dout.copy_(grad_output);
  return s;
}

// A gradient *_layer_bwd returns: a buffer when the caller asked for it (need_grad_input,
// need_grad_weights), an empty tensor in its place otherwise.
inline at::Tensor grad_result(bool wanted, at::IntArrayRef sizes,
                              const at::TensorOptions& options) {
  return wanted ? empty_large(sizes, options) : at::empty({0}, options);
}

// The data a backward kernel writes a gradient into; null when it was not asked for,
// which tells the kernel to skip that product.
template <typename T>
T* data_if(bool wanted, at::Tensor& t) {
  return wanted ? t.mutable_data_ptr<T>() : nullptr;
}

}  // namespace cpu
}  // namespace fastrnn
