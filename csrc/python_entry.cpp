// fastrnn._C, the Python module: importing it loads this library, which runs every
// TORCH_LIBRARY registration linked into it (csrc/fastrnn.cpp and the kernels).
//
// It exports the public ops (rnn_layer, gru_layer, lstm_layer, layer_stack) as plain
// functions that call them through their typed dispatcher handles, and the modules'
// forward for plain calls (plain_forward, csrc/plain_forward.cpp, for the layers;
// plain_cell, csrc/plain_cell.cpp, for the *Cell classes). torch.ops converts every
// argument to a boxed IValue and back, which at the sine-wave shape is ~3 us of an ~11 us
// layer_stack call; the typed call goes through the same dispatcher (autograd, autocast,
// profiler, dispatch modes and fake tensors all see the op), so only the Python-side
// conversion is saved. What these functions do not do is torch.ops' __torch_function__
// handling and Dynamo tracing: they are called only outside torch.compile and when no
// argument or mode overrides torch functions (fastrnn/ops.py checks that for the ops,
// plain_forward and plain_cell for themselves).
#include <torch/extension.h>

#include <type_traits>

#include "op_handle.h"
#include "plain_cell.h"
#include "plain_forward.h"

namespace fastrnn {
namespace {

using at::Tensor;

// The Python arguments arrive as owned values (pybind11 casts to these types), which the
// handle's const-reference parameters then borrow for the call. torch.ops releases the GIL
// for an op call too.
template <class Return, class... Args>
void def_layer_op(pybind11::module_& m, const char* name,
                  const c10::TypedOperatorHandle<Return(Args...)>& op) {
  m.def(name, [&op](std::decay_t<Args>... args) { return op.call(args...); },
        pybind11::call_guard<pybind11::gil_scoped_release>());
}

// layer_stack's string and tensor-list parameters are views, so it needs owning types.
std::tuple<Tensor, Tensor, Tensor> layer_stack(
    const std::string& mode, const Tensor& input, const OptTensor& batch_sizes,
    const OptTensor& h0, const OptTensor& c0, const std::vector<Tensor>& weights,
    int64_t num_layers, bool bidirectional, bool batch_first, bool has_bias, bool has_proj,
    double dropout, bool train) {
  return layer_stack_op().call(mode, input, batch_sizes, h0, c0, weights, num_layers,
                               bidirectional, batch_first, has_bias, has_proj, dropout, train);
}

}  // namespace
}  // namespace fastrnn

PYBIND11_MODULE(_C, m) {
  fastrnn::def_layer_op(m, "rnn_layer", fastrnn::rnn_layer_op());
  fastrnn::def_layer_op(m, "gru_layer", fastrnn::gru_layer_op());
  fastrnn::def_layer_op(m, "lstm_layer", fastrnn::lstm_layer_op());
  m.def("layer_stack", &fastrnn::layer_stack,
        pybind11::call_guard<pybind11::gil_scoped_release>());
  fastrnn::def_plain_forward(m);
  fastrnn::def_plain_cell(m);
}
