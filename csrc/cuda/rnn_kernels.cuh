// Elman RNN cell for the CUDA kernels in common.cuh (torch-free).
//
//   h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh),  act = tanh or relu     (G = 1)
//
// Forward, one launch per layer-direction (Launch<T, RnnCell<RELU>>::persistent_fwd):
//   gx      [S, H]    x W_ih^T + b_ih for every row, one GEMM by the launcher
//   w_hh    [H, H]    b_hh [H] (optional)
//   h0      [N, H]    out [S, H]    h_n [N, H]
//   ws      not used: the RNN saves nothing (WS = 0); its backward reads `out`.
// Backward, one launch (persistent_bwd):
//   grad_out [S, H]   grad_h_n [N, H]   out [S, H] (forward output)
//   dgx      [S, H]   d loss / d pre-activation; grad_input = dgx W_ih,
//                     grad_w_ih = dgx^T x, grad_w_hh = dgx^T hprev, grad_b = sum(dgx)
//   hprev    [S, H]   written by the backward: the h each row started from
//   grad_h0  [N, H]
// T is float, double, __half or __nv_bfloat16; math in acc_t<T> (float, or double).
#pragma once

#include "common.cuh"

namespace fastrnn {
namespace cuda {

template <bool RELU>
struct RnnCell {
  static constexpr int G = 1;
  static constexpr int WS = 0;
  static constexpr int C_SLOT = 0;
  static constexpr bool HAS_C = false;
  static constexpr bool HAS_DIRECT = false;
  static constexpr bool SPLIT_DGH = false;
  static constexpr bool NEEDS_OUT = true;

  template <typename A>
  __device__ __forceinline__ static A forward(const A* gx, const A* hh, A /*h_prev*/, A& /*c*/,
                                              A* /*saved*/) {
    const A pre = gx[0] + hh[0];
    // `pre < 0 ? 0 : pre` rather than fmax: relu(NaN) must stay NaN, as in torch.
    return RELU ? (pre < A(0) ? A(0) : pre) : tanh_(pre);
  }

  // torch's relu backward (threshold_backward) passes the gradient unless the output is
  // <= 0, so a NaN output passes it too; tanh's uses 1 - h^2.
  template <typename A>
  __device__ __forceinline__ static void backward(A dh, A& /*dc*/, A /*h_prev*/, A /*c_prev*/,
                                                  A h, const A* /*saved*/, A* dgx, A* dgh,
                                                  A& direct) {
    const A d = RELU ? (!(h <= A(0)) ? dh : A(0)) : dh * (A(1) - h * h);
    dgx[0] = d;
    dgh[0] = d;
    direct = A(0);
  }
};

}  // namespace cuda
}  // namespace fastrnn
