// Typed dispatcher handles for calling fastrnn's own ops from C++.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace fastrnn {

// The typed handle of op `name` (overload ""), looked up once per call site: callers keep
// the reference in a function-local static. The handle is never freed, like the
// dispatcher's own registrations.
template <class Sig>
const c10::TypedOperatorHandle<Sig>& op_handle(const char* name) {
  return *new c10::TypedOperatorHandle<Sig>(
      c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>());
}

// The public ops (schemas in csrc/fastrnn.cpp), for the stack (csrc/stack.cpp) and the
// Python entries (csrc/python_entry.cpp, csrc/plain_forward.cpp).
using OptTensor = std::optional<at::Tensor>;
using RnnLayerSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& input, const OptTensor& batch_sizes, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
    const OptTensor& b_hh, bool relu, bool reverse, bool batch_first);
using GruLayerSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& input, const OptTensor& batch_sizes, const at::Tensor& h0,
    const at::Tensor& w_ih, const at::Tensor& w_hh, const OptTensor& b_ih,
    const OptTensor& b_hh, bool reverse, bool batch_first);
using LstmLayerSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor& input, const OptTensor& batch_sizes, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, bool reverse,
    bool batch_first);

using LayerStackSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    c10::string_view mode, const at::Tensor& input, const OptTensor& batch_sizes,
    const OptTensor& h0, const OptTensor& c0, at::TensorList weights, int64_t num_layers,
    bool bidirectional, bool batch_first, bool has_bias, bool has_proj, double dropout,
    bool train);

inline const auto& rnn_layer_op() {
  static const auto& op = op_handle<RnnLayerSig>("fastrnn::rnn_layer");
  return op;
}
inline const auto& gru_layer_op() {
  static const auto& op = op_handle<GruLayerSig>("fastrnn::gru_layer");
  return op;
}
inline const auto& lstm_layer_op() {
  static const auto& op = op_handle<LstmLayerSig>("fastrnn::lstm_layer");
  return op;
}

inline const auto& layer_stack_op() {
  static const auto& op = op_handle<LayerStackSig>("fastrnn::layer_stack");
  return op;
}

}  // namespace fastrnn
