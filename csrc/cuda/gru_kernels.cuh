// GRU cell for the CUDA kernels in common.cuh (torch-free). Gate rows (r, z, n), as torch.nn:
//
//   r = sigmoid(gx_r + hh_r)   z = sigmoid(gx_z + hh_z)   (G = 3, hh = h W_hh^T + b_hh)
//   n = tanh(gx_n + r * hh_n)  h' = (1 - z) * n + z * h
//
// Forward, one launch per layer-direction (Launch<T, GruCell>::persistent_fwd):
//   gx      [S, 3H]   x W_ih^T + b_ih for every row, one GEMM by the launcher
//   w_hh    [3H, H]   b_hh [3H] (optional; kept apart from b_ih because r scales hh_n + b_hn)
//   h0      [N, H]    out [S, H]    h_n [N, H]
//   ws      [S, 4H]   per row: r | z | n | hh_n (hh_n includes b_hn), when need_workspace
// Backward, one launch (persistent_bwd):
//   grad_out [S, H]   grad_h_n [N, H]   out [S, H]   ws [S, 4H]
//   dgx      [S, 3H]  d loss / d gx      -> grad_input, grad_w_ih, grad_b_ih
//   dgh      [S, 3H]  d loss / d hh      -> grad_w_hh = dgh^T hprev, grad_b_hh = sum(dgh);
//                     equals dgx except in the n block (scaled by r)
//   hprev    [S, H]   written by the backward: the h each row started from
//   grad_h0  [N, H]
// T is float, double, __half or __nv_bfloat16; math in acc_t<T> (float, or double).
#pragma once

#include "common.cuh"

namespace fastrnn {
namespace cuda {

struct GruCell {
  static constexpr int G = 3;
  static constexpr int WS = 4;
  static constexpr int C_SLOT = 0;
  static constexpr bool HAS_C = false;
  static constexpr bool HAS_DIRECT = true;  // dh_prev gets dh * z besides the W_hh path
  static constexpr bool SPLIT_DGH = true;
  static constexpr bool NEEDS_OUT = false;

  template <typename A>
  __device__ __forceinline__ static A forward(const A* gx, const A* hh, A h_prev, A& /*c*/,
                                              A* saved) {
    const A r = sigmoid_(gx[0] + hh[0]);
    const A z = sigmoid_(gx[1] + hh[1]);
    const A n = tanh_(gx[2] + r * hh[2]);
    saved[0] = r;
    saved[1] = z;
    saved[2] = n;
    saved[3] = hh[2];
    return (A(1) - z) * n + z * h_prev;
  }

  template <typename A>
  __device__ __forceinline__ static void backward(A dh, A& /*dc*/, A h_prev, A /*c_prev*/,
                                                  A /*h*/, const A* saved, A* dgx, A* dgh,
                                                  A& direct) {
    const A r = saved[0], z = saved[1], n = saved[2], hn = saved[3];
    const A dn = dh * (A(1) - z) * (A(1) - n * n);
    const A dz = dh * (h_prev - n) * z * (A(1) - z);
    const A dr = dn * hn * r * (A(1) - r);
    dgx[0] = dr;
    dgx[1] = dz;
    dgx[2] = dn;
    dgh[0] = dr;
    dgh[1] = dz;
    dgh[2] = dn * r;
    direct = dh * z;
  }
};

}  // namespace cuda
}  // namespace fastrnn
