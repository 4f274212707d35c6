// fastrnn._C, the Python module: importing it loads this library, which runs every
// TORCH_LIBRARY registration linked into it (csrc/fastrnn.cpp and the kernels).
//
// It exports one function, layer_stack: the same call as torch.ops.fastrnn.layer_stack,
// made through the op's typed dispatcher handle. torch.ops converts every argument to a
// boxed IValue and back, which at the sine-wave shape is ~3 us of an ~11 us call; the typed
// call goes through the same dispatcher (autograd, autocast, profiler, dispatch modes and
// fake tensors all see the op), so only the Python-side conversion is saved. What it does
// not do is torch.ops' own __torch_function__ handling and Dynamo tracing: fastrnn/ops.py
// calls it only outside torch.compile and when no argument or mode overrides torch
// functions.
#include <torch/extension.h>

#include "op_handle.h"

namespace fastrnn {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using LayerStackSig = std::tuple<Tensor, Tensor, Tensor>(
    c10::string_view, const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
    at::TensorList, int64_t, bool, bool, bool, bool, double, bool);

std::tuple<Tensor, Tensor, Tensor> layer_stack(
    const std::string& mode, const Tensor& input, const OptTensor& batch_sizes,
    const OptTensor& h0, const OptTensor& c0, const std::vector<Tensor>& weights,
    int64_t num_layers, bool bidirectional, bool batch_first, bool has_bias, bool has_proj,
    double dropout, bool train) {
  static const auto& op = op_handle<LayerStackSig>("fastrnn::layer_stack");
  return op.call(mode, input, batch_sizes, h0, c0, weights, num_layers, bidirectional,
                 batch_first, has_bias, has_proj, dropout, train);
}

}  // namespace
}  // namespace fastrnn

PYBIND11_MODULE(_C, m) {
  // torch.ops releases the GIL for an op call too.
  m.def("layer_stack", &fastrnn::layer_stack,
        pybind11::call_guard<pybind11::gil_scoped_release>());
}
