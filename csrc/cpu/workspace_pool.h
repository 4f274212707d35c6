// Memory for the workspaces the CPU forwards save for their backward.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastrnn {
namespace cpu {

// An uninitialised tensor like at::empty, whose memory goes back to a process-wide pool
// when its last user frees it, for the next call to take. Meant for the workspaces: the
// largest buffers that outlive an op call (65 MiB for an LSTM at B=64, T=100, H=512),
// freed by autograd after each backward and needed again by the next forward. Fresh
// pages cost far more than their zeroing on a VM (see thread_scratch in buffers.h): with
// the pool, an LSTM forward at H=512 (2 threads, training mode) took ~135-155 ms per call
// after torch.nn had run in the same process, against ~145-195 ms without.
//
// Requests under 1 MiB are plain at::empty. The pool keeps what was freed until a request
// fits none of its blocks; then it lets them all go before mapping a new one, so it holds
// no more than the workspaces that were alive at once. NaN-filled like at::empty under
// torch.use_deterministic_algorithms with fill_uninitialized_memory.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace cpu
}  // namespace fastrnn
