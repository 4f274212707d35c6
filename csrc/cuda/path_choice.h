// Which CUDA path one layer-direction takes, and with which tile: a pure function of the
// layer's shape and the device's properties. Plain C++ (no CUDA, no torch), so that
//   * the launchers (launcher.h) call it with the properties read off the device,
//   * tests/path_choice_dump.cpp (compiled with g++, no GPU) prints its decisions for a
//     grid of shapes, and
//   * fastrnn/cuda_paths.py, its Python mirror behind `fastrnn.cuda_paths.cuda_path`, is
//     checked against that print-out by tests/test_cuda_paths.py.
// Change this file and fastrnn/cuda_paths.py together; the test says where they disagree.
//
// The three paths (kernels in common.cuh):
//   kPersistent   one CTA per batch tile holds the whole W_hh (transposed for the
//                 backward) in shared memory for all T steps; no inter-CTA traffic.
//   kCooperative  `slices` CTAs per batch tile split the hidden units; each keeps its
//                 W_hh slice in shared memory and the per-step vector they all need (h in
//                 the forward, the gate gradients in the backward) goes through L2 with a
//                 barrier per step. Every CTA of the grid must be resident at once
//                 (cooperative launch, one CTA per SM), so slices * tiles <= SM count.
//                 The exchanged vector is streamed through shared memory in chunks of
//                 `kc` elements, so the batch tile is not capped by H * nb fitting beside
//                 the weights: that is what puts H = 512..1024 at batch 16..64 on this
//                 path (fp32 and bf16, forward and backward, on an H100).
//   kStep         one cuBLAS GEMM + one pointwise kernel per step: anything whose W_hh
//                 slices do not fit, projected LSTMs (P != H), FASTRNN_CUDA_PATH=step.
//
// Shared-memory layouts (elements of A = accumulation type, T = storage type):
//   forward   A h_s[nb4][kc]    A gate_s[nb4][G*hj]    A c_s[nb][hj] (LSTM)
//             A hown_s[nb][hj] (cooperative)            T w_s[G*hj][ldw]  (ldw >= H)
//   backward  A dg_s[nb4][kc]   A dh_s, dir_s (GRU), dc_s (LSTM) [nb][hj]
//             T wt_s[hj][ldw]   (ldw >= G*H)
// with nb4 = nb rounded up to 4, and kc = H (forward) / G*H (backward) on the
// single-CTA path, where h_s / dg_s is the whole vector and never leaves the CTA.
#pragma once

#include <cstddef>
#include <cstring>

namespace fastrnn {
namespace cuda {

// Threads per persistent CTA at most: __launch_bounds__(kMaxThreads, 1) of the persistent
// kernels (one CTA per SM is all they need). With 512, or without the ", 1", ptxas (nvcc
// 13.0) spilled a few bytes in the double backward kernels.
constexpr int kMaxThreads = 256;

enum class Path : int { kPersistent = 0, kCooperative = 1, kStep = 2 };

inline const char* path_name(Path p) {
  return p == Path::kPersistent ? "persistent" : p == Path::kCooperative ? "cooperative" : "step";
}

// What the planner needs to know of a cell: gates, and the per-unit state arrays.
struct CellShape {
  int G;
  bool has_c;       // LSTM: c in the forward, dc in the backward
  bool has_direct;  // GRU: the dh * z term of the backward
};

// torch.nn's mode strings; false for an unknown one.
inline bool cell_shape_of(const char* mode, CellShape* out) {
  if (std::strcmp(mode, "RNN_TANH") == 0 || std::strcmp(mode, "RNN_RELU") == 0) {
    *out = CellShape{1, false, false};
  } else if (std::strcmp(mode, "GRU") == 0) {
    *out = CellShape{3, false, true};
  } else if (std::strcmp(mode, "LSTM") == 0) {
    *out = CellShape{4, true, false};
  } else {
    return false;
  }
  return true;
}

struct DeviceLimits {
  int sm_count;        // cudaDevAttrMultiProcessorCount
  size_t smem_optin;   // cudaDevAttrMaxSharedMemoryPerBlockOptin (H100: 232448 = 227 KiB)
  bool cooperative;    // cudaDevAttrCooperativeLaunch
};

struct PathQuery {
  CellShape cell;
  int H;          // hidden size
  int P;          // state size (proj_size, or H)
  int N;          // batch (the largest batch_sizes entry for packed input)
  int elem;       // bytes per element: 2 (fp16/bf16), 4, 8
  bool backward;  // plan the backward kernel (the forward otherwise)
};

struct Plan {
  Path path = Path::kStep;
  bool ok = false;  // true: a persistent kernel (either flavour); false: per-step
  int nb = 0;       // batch rows per tile          (tiles  = ceil(N / nb) = gridDim.y)
  int hj = 0;       // hidden units per CTA         (slices = ceil(H / hj) = gridDim.x)
  int kc = 0;       // chunk of the exchanged vector held in shared memory at once
  int threads = 0, tiles = 0, slices = 0;
  int ldw = 0;      // shared-memory row stride of the weight slice, in elements
  size_t smem = 0;  // dynamic shared memory per CTA, bytes
  double cost = 0;  // the estimate that won (cycles per step), for FASTRNN tuning only
};

inline int acc_bytes(int elem) { return elem == 8 ? 8 : 4; }

// Row stride (elements) whose size in 4-byte words is odd, so that 32 threads reading one
// element each from 32 consecutive rows hit 32 different banks.
inline int odd_word_stride(int n, int elem) {
  if (elem == 2) return (n + 1) / 2 * 2 + ((n + 1) / 2 % 2 == 0 ? 2 : 0);
  return n % 2 == 1 ? n : n + 1;
}

inline int round4(int nb) { return (nb + 3) / 4 * 4; }

inline size_t fwd_smem_bytes(const CellShape& c, int elem, int nb, int hj, int ldw, int kc, bool multi) {
  const size_t nb4 = round4(nb);
  const size_t acc_elems = nb4 * kc + nb4 * c.G * hj + (c.has_c ? nb * hj : 0) + (multi ? nb * hj : 0);
  return acc_bytes(elem) * acc_elems + static_cast<size_t>(elem) * c.G * hj * ldw;
}

inline size_t bwd_smem_bytes(const CellShape& c, int elem, int nb, int hj, int ldw, int kc) {
  const size_t nb4 = round4(nb);
  const size_t per_unit = 1 + (c.has_direct ? 1 : 0) + (c.has_c ? 1 : 0);
  return acc_bytes(elem) * (nb4 * kc + per_unit * nb * hj) + static_cast<size_t>(elem) * hj * ldw;
}

// The decision. nb_force / hj_force > 0 pin the tile and kc_force > 0 caps the chunk
// (FASTRNN_CUDA_TILE=nb,hj[,kc]: how the tests reach the cooperative path and its chunked
// exchange at small H); force_step is FASTRNN_CUDA_PATH=step.
//
// Among the tiles that fit, the cheapest by a per-step cycle estimate (constants are first
// guesses, to be tuned against cuDNN on a GPU; benchmarks/layers_gpu.py prints the plan):
//   matvec    the inner loop issues ~5 shared loads per 4 FMAs, so it is bound by the
//             SM's one warp-wide shared load per cycle (5 cycles per warp-item and k),
//             or by one thread's FMA chain (1.5 cycles per FMA) when there are few warps;
//   pointwise ~200 cycles per round of (row, unit) items (global loads);
//   cooperative: ~2000 cycles per grid barrier, the exchanged vector read from L2 at
//             ~64 B per cycle per SM, and ~150 cycles per extra chunk (two CTA barriers).
// Batch tiles beyond one wave of SMs multiply the estimate.
inline Plan choose_path(const PathQuery& q, const DeviceLimits& dev, int nb_force, int hj_force, int kc_force,
                        bool force_step) {
  Plan best;
  if (force_step || q.P != q.H || q.H < 1 || q.N < 1 || dev.sm_count < 1) return best;
  const int G = q.cell.G, H = q.H, N = q.N, elem = q.elem, acc = acc_bytes(elem);
  const int K = q.backward ? G * H : H;  // length of the matvec's dot products
  const int nb_all[] = {1, 2, 4, 8, 16, 32, 64};
  const int hj_all[] = {0, 256, 128, 96, 64, 48, 32, 24, 16, 12, 8, 4};  // 0: all of H
  const int n_nb = nb_force > 0 ? 1 : 7, n_hj = hj_force > 0 ? 1 : 12;
  for (int in = 0; in < n_nb; ++in) {
    const int nb = nb_force > 0 ? nb_force : nb_all[in];
    if (nb_force <= 0 && nb > 1 && nb / 2 >= N) continue;  // a tile at least half full
    for (int ih = 0; ih < n_hj; ++ih) {
      const int hj = hj_force > 0 ? hj_force : (hj_all[ih] == 0 ? H : hj_all[ih]);
      if (hj > H || (hj_force <= 0 && ih > 0 && hj == H)) continue;
      const int slices = (H + hj - 1) / hj, tiles = (N + nb - 1) / nb;
      const bool multi = slices > 1;
      if (tiles > 65535) continue;
      if (multi && (!dev.cooperative || static_cast<long>(slices) * tiles > dev.sm_count)) continue;
      const int ldw = odd_word_stride(K, elem);
      const int nb4 = round4(nb);
      int kc = K;
      if (multi) {
        // The largest chunk that fits (a multiple of 32 below K), given the rest.
        const size_t rest = q.backward ? bwd_smem_bytes(q.cell, elem, nb, hj, ldw, 0)
                                       : fwd_smem_bytes(q.cell, elem, nb, hj, ldw, 0, true);
        if (rest >= dev.smem_optin) continue;
        const size_t fit = (dev.smem_optin - rest) / (static_cast<size_t>(acc) * nb4);
        if (fit < static_cast<size_t>(K)) {
          kc = static_cast<int>(fit / 32 * 32);
          if (kc < 32) continue;
        }
        if (kc_force > 0 && kc_force < kc) kc = kc_force;
      }
      const size_t smem = q.backward ? bwd_smem_bytes(q.cell, elem, nb, hj, ldw, kc)
                                     : fwd_smem_bytes(q.cell, elem, nb, hj, ldw, kc, multi);
      if (smem > dev.smem_optin) continue;
      // Work items of a step: matvec items (one weight row x 4 batch rows) and pointwise
      // (batch row, unit) items; the threads cover the larger, within [64, kMaxThreads].
      const long mv_items = static_cast<long>(q.backward ? 1 : G) * hj * (nb4 / 4);
      const long pw_items = static_cast<long>(nb) * hj;
      const long items = mv_items > pw_items ? mv_items : pw_items;
      const long rounded = (items + 31) / 32 * 32;
      const int threads = static_cast<int>(rounded < 64 ? 64 : (rounded > kMaxThreads ? kMaxThreads : rounded));
      const long mv_rounds = (mv_items + threads - 1) / threads;
      const long pw_rounds = (pw_items + threads - 1) / threads;
      const double lds_bound = 5.0 * mv_rounds * (threads / 32) * K;
      const double fma_bound = 1.5 * mv_rounds * 4.0 * K;
      double step = (lds_bound > fma_bound ? lds_bound : fma_bound) + 200.0 * pw_rounds + 300.0;
      if (multi) {
        const long chunks = (K + kc - 1) / kc;
        step += 2000.0 + static_cast<double>(nb) * K * acc / 64.0 + 150.0 * (chunks - 1);
      }
      const long waves = (static_cast<long>(slices) * tiles + dev.sm_count - 1) / dev.sm_count;
      const double cost = static_cast<double>(waves) * step;
      if (!best.ok || cost < best.cost) {
        best.ok = true;
        best.path = multi ? Path::kCooperative : Path::kPersistent;
        best.nb = nb; best.hj = hj; best.kc = kc; best.threads = threads; best.tiles = tiles;
        best.slices = slices; best.ldw = ldw; best.smem = smem; best.cost = cost;
      }
    }
  }
  return best;
}

}  // namespace cuda
}  // namespace fastrnn
