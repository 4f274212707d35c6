#include "workspace_pool.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>

#include <cstdlib>
#include <mutex>
#include <vector>

#include "buffers.h"

namespace fastrnn {
namespace cpu {
namespace {

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
    // Whole 2 MiB stretches, marked for transparent huge pages.
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* data = std::aligned_alloc(kHugePage, rounded);
    TORCH_CHECK_WITH(OutOfMemoryError, data != nullptr, "fastrnn: cannot allocate a ",
                     rounded, "-byte workspace");
    advise_huge_pages(data, rounded);
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
  if (bytes < kHugePage / 2) return at::empty(sizes, options);
  const Block block = pool().take(bytes);
  at::Tensor t = at::from_blob(
      block.data, sizes, [block](void*) { pool().give_back(block); }, options);
  fill_like_new_memory(t);
  return t;
}

}  // namespace cpu
}  // namespace fastrnn
