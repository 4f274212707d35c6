// Prints csrc/cuda/path_choice.h's decisions, one line per query, for
// tests/test_cuda_paths.py to compare with fastrnn/cuda_paths.py. Host-only C++ (g++):
//   in  (stdin, one query a line): mode H P N elem backward sm_count smem_optin cooperative
//                                  nb_force hj_force kc_force force_step
//   out (stdout, one line each):   path nb hj kc threads tiles slices ldw smem
#include <cstdio>

#include "path_choice.h"

int main() {
  using namespace fastrnn::cuda;
  char mode[32];
  int H, P, N, elem, backward, sm, coop, nbf, hjf, kcf, fs;
  unsigned long smem;
  while (std::scanf("%31s %d %d %d %d %d %d %lu %d %d %d %d %d", mode, &H, &P, &N, &elem, &backward, &sm,
                    &smem, &coop, &nbf, &hjf, &kcf, &fs) == 13) {
    CellShape cell;
    if (!cell_shape_of(mode, &cell)) return 2;
    const Plan p = choose_path(PathQuery{cell, H, P, N, elem, backward != 0},
                               DeviceLimits{sm, static_cast<size_t>(smem), coop != 0}, nbf, hjf, kcf,
                               fs != 0);
    std::printf("%s %d %d %d %d %d %d %d %zu\n", path_name(p.path), p.nb, p.hj, p.kc, p.threads, p.tiles,
                p.slices, p.ldw, p.smem);
  }
  return 0;
}
