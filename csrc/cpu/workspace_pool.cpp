#include "workspace_pool.h"

#include <ATen/Context.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace fastrnn {
namespace cpu {
namespace {

// Blocks are whole 2 MiB stretches, marked for transparent huge pages (see empty_large).
constexpr size_t kBlockAlign = size_t(2) << 20;

struct Block {
  void* data;
  size_t bytes;
};

class Pool {
 public:
  Block take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto best = free_.end();
      for (auto it = free_.begin(); it != free_.end(); ++it)
        if (it->bytes >= bytes && (best == free_.end() || it->bytes < best->bytes)) best = it;
      if (best != free_.end()) {
        const Block b = *best;
        free_.erase(best);
        return b;
      }
      for (const Block& b : free_) std::free(b.data);
      free_.clear();
    }
    const size_t rounded = (bytes + kBlockAlign - 1) / kBlockAlign * kBlockAlign;
    void* data = std::aligned_alloc(kBlockAlign, rounded);
    TORCH_CHECK_WITH(OutOfMemoryError, data != nullptr, "fastrnn: cannot allocate a ",
                     rounded, "-byte workspace");
#ifdef __linux__
    madvise(data, rounded, MADV_HUGEPAGE);
#endif
    return {data, rounded};
  }

  void give_back(Block b) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(b);
  }

 private:
  std::mutex mutex_;
  std::vector<Block> free_;
};

// Never destroyed: tensors holding pool memory may be freed during interpreter shutdown.
Pool& pool() {
  static Pool* const instance = new Pool();
  return *instance;
}

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t bytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  // Small ones (the sine-wave shape's are kilobytes) come from the heap's reused chunks.
  if (bytes < kBlockAlign / 2) return at::empty(sizes, options);
  const Block block = pool().take(bytes);
  at::Tensor t = at::from_blob(
      block.data, sizes, [block](void*) { pool().give_back(block); }, options);
  const auto& ctx = at::globalContext();
  if (ctx.deterministicAlgorithms() && ctx.deterministicFillUninitializedMemory())
    t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

}  // namespace cpu
}  // namespace fastrnn
