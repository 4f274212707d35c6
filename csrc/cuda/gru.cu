// CUDA kernels of gru_layer_fwd / gru_layer_bwd (schemas in csrc/fastrnn.cpp). The math
// is in gru_kernels.cuh, the shared launcher logic in launcher.h.
#include <torch/library.h>

#include "gru_kernels.cuh"
#include "launcher.h"

namespace fastrnn {
namespace cuda {
namespace {

std::tuple<Tensor, Tensor, Tensor> gru_layer_fwd_cuda(
    const Tensor& input, const c10::optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& w_ih,
    const Tensor& w_hh, const c10::optional<Tensor>& b_ih, const c10::optional<Tensor>& b_hh, bool reverse,
    bool need_workspace) {
  const FwdResult r = layer_fwd<GruCell>("fastrnn::gru_layer_fwd", input, batch_sizes, h0, Tensor(), w_ih,
                                         w_hh, b_ih, b_hh, Tensor(), reverse, need_workspace);
  return {r.out, r.h_n, r.ws};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_layer_bwd_cuda(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
    const c10::optional<Tensor>& batch_sizes, const Tensor& h0, const Tensor& w_ih, const Tensor& w_hh,
    const c10::optional<Tensor>& b_ih, const c10::optional<Tensor>& b_hh, const Tensor& output,
    const Tensor& workspace, bool reverse, bool need_grad_input, bool need_grad_weights,
    bool need_grad_state) {
  const BwdResult r = layer_bwd<GruCell>("fastrnn::gru_layer_bwd", grad_output, grad_h_n, Tensor(), input,
                                         batch_sizes, h0, Tensor(), w_ih, w_hh, b_ih, b_hh, Tensor(), output,
                                         workspace, reverse, need_grad_input, need_grad_weights,
                                         need_grad_state);
  return {r.grad_input, r.grad_h0, r.grad_w_ih, r.grad_w_hh, r.grad_b_ih, r.grad_b_hh};
}

}  // namespace
}  // namespace cuda
}  // namespace fastrnn

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("gru_layer_fwd", &fastrnn::cuda::gru_layer_fwd_cuda);
  m.impl("gru_layer_bwd", &fastrnn::cuda::gru_layer_bwd_cuda);
}
