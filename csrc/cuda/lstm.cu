// CUDA kernels of lstm_layer_fwd / lstm_layer_bwd (schemas in csrc/fastrnn.cpp). The math
// is in lstm_kernels.cuh, the shared launcher logic in launcher.h. A projected LSTM
// (w_hr given) always takes the per-step path.
#include <torch/library.h>

#include "launcher.h"
#include "lstm_kernels.cuh"

namespace fastrnn {
namespace cuda {
namespace {

Tensor opt(const c10::optional<Tensor>& t) { return t.has_value() ? *t : Tensor(); }

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_layer_fwd_cuda(
    const Tensor& input, const c10::optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& c0,
    const Tensor& w_ih, const Tensor& w_hh, const c10::optional<Tensor>& b_ih,
    const c10::optional<Tensor>& b_hh, const c10::optional<Tensor>& w_hr, bool reverse, bool need_workspace) {
  const FwdResult r = layer_fwd<LstmCell>("fastrnn::lstm_layer_fwd", input, batch_sizes, h0, c0, w_ih, w_hh,
                                          b_ih, b_hh, opt(w_hr), reverse, need_workspace);
  return {r.out, r.h_n, r.c_n, r.ws};
}

// grad_w_hr is an empty tensor when the layer has no projection (as on the CPU).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_layer_bwd_cuda(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n, const Tensor& input,
    const c10::optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
    const Tensor& w_hh, const c10::optional<Tensor>& b_ih, const c10::optional<Tensor>& b_hh,
    const c10::optional<Tensor>& w_hr, const Tensor& output, const Tensor& workspace,
    bool reverse, bool need_grad_input, bool need_grad_weights, bool need_grad_state) {
  const BwdResult r = layer_bwd<LstmCell>("fastrnn::lstm_layer_bwd", grad_output, grad_h_n, grad_c_n, input,
                                          batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, opt(w_hr), output,
                                          workspace, reverse, need_grad_input, need_grad_weights,
                                          need_grad_state);
  return {r.grad_input, r.grad_h0, r.grad_c0, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_b_hh, r.grad_w_hr};
}

}  // namespace
}  // namespace cuda
}  // namespace fastrnn

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("lstm_layer_fwd", &fastrnn::cuda::lstm_layer_fwd_cuda);
  m.impl("lstm_layer_bwd", &fastrnn::cuda::lstm_layer_bwd_cuda);
}
