// LSTM cell for the CUDA kernels in common.cuh (torch-free). Gate rows (i, f, g, o), as torch.nn:
//
//   i, f, o = sigmoid(gx + hh)   g = tanh(gx_g + hh_g)   (G = 4, hh = h W_hh^T + b_hh)
//   c' = f * c + i * g           m = o * tanh(c')        h' = m, or m W_hr^T when projected
//
// Forward, one launch per layer-direction (Launch<T, LstmCell>::persistent_fwd, P == H):
//   gx      [S, 4H]   x W_ih^T + b_ih for every row, one GEMM by the launcher
//   w_hh    [4H, H]   b_hh [4H] (optional)
//   h0      [N, H]    c0 [N, H]    out [S, H]    h_n [N, H]    c_n [N, H]
//   ws      [S, 5H]   per row: i | f | g | o | c' (activated gates), when need_workspace
// Backward, one launch (persistent_bwd):
//   grad_out [S, H]   grad_h_n [N, H]   grad_c_n [N, H]   ws [S, 5H]
//   dgx      [S, 4H]  d loss / d pre-activations (gx and hh alike): grad_input, grad_w_ih,
//                     grad_w_hh = dgx^T hprev, both bias grads = sum(dgx)
//   hprev    [S, H]   written by the backward: the h each row started from
//   grad_h0  [N, H]   grad_c0 [N, H]
// Projected LSTM (w_hr [P, H], P < H) runs on the per-step path only: step_fwd writes m
// to `out` and the launcher applies W_hr by GEMM; step_bwd takes dm = dh W_hr and writes
// m [S, H] again for grad_w_hr. c_prev of a row is the c' slot of the forward's previous
// step in ws, or c0.
// T is float, double, __half or __nv_bfloat16; math in acc_t<T> (float, or double).
#pragma once

#include "common.cuh"

namespace fastrnn {
namespace cuda {

struct LstmCell {
  static constexpr int G = 4;
  static constexpr int WS = 5;
  static constexpr int C_SLOT = 4;
  static constexpr bool HAS_C = true;
  static constexpr bool HAS_DIRECT = false;
  static constexpr bool SPLIT_DGH = false;
  static constexpr bool NEEDS_OUT = false;

  template <typename A>
  __device__ __forceinline__ static A forward(const A* gx, const A* hh, A /*h_prev*/, A& c,
                                              A* saved) {
    const A i = sigmoid_(gx[0] + hh[0]);
    const A f = sigmoid_(gx[1] + hh[1]);
    const A g = tanh_(gx[2] + hh[2]);
    const A o = sigmoid_(gx[3] + hh[3]);
    c = f * c + i * g;
    saved[0] = i;
    saved[1] = f;
    saved[2] = g;
    saved[3] = o;
    saved[4] = c;
    return o * tanh_(c);
  }

  template <typename A>
  __device__ __forceinline__ static A m_from_saved(const A* saved) {
    return saved[3] * tanh_(saved[4]);
  }

  // dc: in, the gradient reaching c' from the later step; out, the gradient for c_prev.
  template <typename A>
  __device__ __forceinline__ static void backward(A dh, A& dc, A /*h_prev*/, A c_prev, A /*h*/,
                                                  const A* saved, A* dgx, A* dgh, A& direct) {
    const A i = saved[0], f = saved[1], g = saved[2], o = saved[3];
    const A tc = tanh_(saved[4]);
    const A dct = dc + dh * o * (A(1) - tc * tc);
    dgx[0] = dct * g * i * (A(1) - i);
    dgx[1] = dct * c_prev * f * (A(1) - f);
    dgx[2] = dct * i * (A(1) - g * g);
    dgx[3] = dh * tc * o * (A(1) - o);
#pragma unroll
    for (int k = 0; k < G; ++k) dgh[k] = dgx[k];
    dc = dct * f;
    direct = A(0);
  }
};

}  // namespace cuda
}  // namespace fastrnn
