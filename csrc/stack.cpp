// fastrnn::layer_stack: torch.nn's layer loop (ATen's apply_layer_stack) in C++.
//
//   mode         "RNN_TANH", "RNN_RELU", "GRU" or "LSTM"
//   input        [T,N,C] ([N,T,C] when batch_first) or packed [S,C] with batch_sizes
//   h0, c0       [L*D,N,P] and [L*D,N,H] (c0: LSTM only); None means zeros, which
//                padded input only allows (packed input gives no batch size to read
//                without touching batch_sizes' data, which tracing cannot)
//   weights      RNNBase._flat_weights: per layer-direction w_ih, w_hh[, b_ih, b_hh][, w_hr]
// Returns output in the input's layout ([T,N,D*P], [N,T,D*P] or [S,D*P]), h_n [L*D,N,P]
// and c_n [L*D,N,H] (an empty tensor for the other cells).
//
// Each layer-direction is one call of the public *_layer op, so autograd, the device's
// kernels and torch.compile's fakes are theirs; this op is CompositeImplicitAutograd and
// only saves the per-call Python of fastrnn/stack.py (zeros, transposes, the loop, the
// final stack), which at the sine-wave shape cost as much as the layer itself.
// Dropout between layers is at::dropout, the op F.dropout calls, so a seeded training
// run draws torch.nn's masks.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string_view>

#include "op_handle.h"

namespace fastrnn {
namespace {

using at::Tensor;

enum class Cell { kRnnTanh, kRnnRelu, kGru, kLstm };

Cell parse_mode(std::string_view mode) {
  if (mode == "GRU") return Cell::kGru;
  if (mode == "LSTM") return Cell::kLstm;
  if (mode == "RNN_TANH") return Cell::kRnnTanh;
  if (mode == "RNN_RELU") return Cell::kRnnRelu;
  TORCH_CHECK_VALUE(false, "fastrnn::layer_stack: unknown mode '", mode,
                    "'; expected RNN_TANH, RNN_RELU, GRU or LSTM");
}

// One layer-direction: (output, h_n, c_n or undefined); batch_first as the *_layer ops
// take it.
std::tuple<Tensor, Tensor, Tensor> run_layer(Cell cell, const Tensor& input,
                                             const OptTensor& batch_sizes, const Tensor& h0,
                                             const Tensor& c0, at::TensorList w, bool has_bias,
                                             bool has_proj, bool reverse, bool batch_first) {
  const OptTensor b_ih = has_bias ? OptTensor(w[2]) : std::nullopt;
  const OptTensor b_hh = has_bias ? OptTensor(w[3]) : std::nullopt;
  switch (cell) {
    case Cell::kGru: {
      auto [output, h_n] =
          gru_layer_op().call(input, batch_sizes, h0, w[0], w[1], b_ih, b_hh, reverse,
                              batch_first);
      return {output, h_n, Tensor()};
    }
    case Cell::kLstm: {
      const OptTensor w_hr = has_proj ? OptTensor(w.back()) : std::nullopt;
      return lstm_layer_op().call(input, batch_sizes, h0, c0, w[0], w[1], b_ih, b_hh, w_hr,
                                  reverse, batch_first);
    }
    default: {
      auto [output, h_n] = rnn_layer_op().call(input, batch_sizes, h0, w[0], w[1], b_ih,
                                               b_hh, cell == Cell::kRnnRelu, reverse,
                                               batch_first);
      return {output, h_n, Tensor()};
    }
  }
}

// The given initial states, checked to be [L*D, N, width] like the input; an undefined
// tensor when absent (zeros, which padded input only allows).
Tensor checked_states(const OptTensor& state, int64_t states, const Tensor& input,
                      int64_t width, const char* name) {
  if (!state.has_value()) {
    TORCH_CHECK(input.dim() == 3, "fastrnn::layer_stack: ", name,
                " is required for packed input");
    return Tensor();
  }
  TORCH_CHECK(state->dim() == 3 && state->sym_size(0) == states &&
                  state->sym_size(2) == width,
              "fastrnn::layer_stack: ", name, " must be [", states, ", N, ", width,
              "] (num_layers * directions, batch, size), got ", state->sym_sizes());
  TORCH_CHECK(state->scalar_type() == input.scalar_type() && state->device() == input.device(),
              "fastrnn::layer_stack: ", name, " must have the input's dtype and device (",
              input.scalar_type(), " on ", input.device(), "), got ",
              state->scalar_type(), " on ", state->device());
  return *state;
}

// Zeros [N, width] like the input, the initial state of layer-directions given none.
// batch: a SymInt, as under torch.export with a dynamic batch an int would specialise it.
Tensor zero_state(const Tensor& input, const c10::SymInt& batch, int64_t width) {
  // empty + zero_ rather than at::zeros, which dispatches to the same two ops through one
  // more level.
  return at::empty_symint({batch, width}, input.options()).zero_();
}

// Layer-direction `index`'s initial state: its row of `states` (from checked_states), or
// `zeros` when no states were given.
Tensor initial_state(const Tensor& states, int64_t index, const Tensor& zeros) {
  return states.defined() ? states[index] : zeros;
}

// t.transpose(0, 1): batch_first input to time-major, and the output back. When no graph
// is recorded (no_grad, inference_mode), below the autograd and view-tracking layers: a
// transpose through them dispatches twice more and records view metadata; below them the
// two a batch_first call makes cost ~0.3-0.6 us less of a ~9-12 us module call at the
// sine-wave shape (ad hoc, one thread). The view made below them shares the storage but
// has no autograd history, which is only right when none is recorded.
Tensor swap_time_and_batch(const Tensor& t) {
  if (at::GradMode::is_enabled()) return t.transpose(0, 1);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return t.transpose(0, 1);
}

// Input [T,N,C] (or [N,T,C]) padded, [S,C] packed; every weight of its dtype and device.
void check_input_and_weights(const Tensor& input, bool packed, at::TensorList weights) {
  TORCH_CHECK(input.dim() == (packed ? 2 : 3), "fastrnn::layer_stack: ",
              packed ? "packed input must be [S, C]" : "padded input must be 3-D",
              ", got ", input.dim(), "-D");
  for (const Tensor& w : weights)
    TORCH_CHECK(w.scalar_type() == input.scalar_type() && w.device() == input.device(),
                "fastrnn::layer_stack: every weight must have the input's dtype and device (",
                input.scalar_type(), " on ", input.device(), "), got ", w.scalar_type(),
                " on ", w.device());
}

// The final states [L*D, N, width] from each layer-direction's [N, width]. They must not
// be views (users, the seeds among them, call hidden.detach_(), which views refuse), nor
// share a version counter with a tensor some layer's autograd saved (an in-place change
// would then go unnoticed). at::stack, a copy, is both. A single state is handed out as
// _unsafe_view instead: a new tensor, not a view, with its own version counter, on the
// state's memory, which saves the copy (~0.7 us of a ~7 us call at the sine-wave shape).
// That is safe because the layer ops return h_n and c_n fresh and their autograd saves
// neither (csrc/autograd.cpp).
Tensor final_states(const std::vector<Tensor>& states) {
  if (states.size() != 1) return at::stack(states);
  const Tensor& state = states[0];
  return at::_unsafe_view_symint(state, {1, state.sym_size(0), state.sym_size(1)});
}

std::tuple<Tensor, Tensor, Tensor> layer_stack(
    c10::string_view mode, const Tensor& input, const OptTensor& batch_sizes,
    const OptTensor& h0_, const OptTensor& c0_, at::TensorList weights, int64_t num_layers,
    bool bidirectional, bool batch_first, bool has_bias, bool has_proj, double dropout,
    bool train) {
  const Cell cell = parse_mode(std::string_view(mode.data(), mode.size()));
  const bool is_lstm = cell == Cell::kLstm;
  const int64_t directions = bidirectional ? 2 : 1, states = num_layers * directions;
  const int64_t stride = 2 + 2 * int64_t(has_bias) + int64_t(has_proj);
  TORCH_CHECK_VALUE(num_layers >= 1 && int64_t(weights.size()) == states * stride,
                    "fastrnn::layer_stack: expected ", states * stride,
                    " weights for num_layers=", num_layers, ", bidirectional=",
                    bidirectional, ", bias=", has_bias, ", proj=", has_proj, "; got ",
                    weights.size());
  TORCH_CHECK_VALUE(!has_proj || is_lstm, "fastrnn::layer_stack: only LSTM has a projection");
  const bool packed = batch_sizes.has_value();
  check_input_and_weights(input, packed, weights);
  TORCH_CHECK_VALUE(is_lstm || !c0_.has_value(), "fastrnn::layer_stack: c0 is for LSTM only");
  // A single layer-direction takes batch_first input and gives batch_first output itself
  // (see the *_layer ops); a deeper stack swaps time and batch at its two ends.
  const bool padded_batch_first = batch_first && !packed;
  const bool layer_batch_first = padded_batch_first && states == 1;
  const bool stack_swaps = padded_batch_first && !layer_batch_first;
  const int64_t hidden = weights[1].size(0) / (is_lstm ? 4 : cell == Cell::kGru ? 3 : 1);
  const int64_t state_width = weights[1].size(1);
  const Tensor h0 = checked_states(h0_, states, input, state_width, "h0");
  const Tensor c0 = is_lstm ? checked_states(c0_, states, input, hidden, "c0") : Tensor();
  // One zeros tensor per width, read by every layer-direction that starts from zeros (no
  // backend writes its initial states), rather than one per layer-direction and state: an
  // LSTM module call at the sine-wave shape went from ~11.6 to ~10.6 us (one thread,
  // no_grad, ad hoc). Rows of a [L*D, N, width] zeros tensor would cost a select each.
  // Zeros only for padded input (checked_states): its batch is dimension 1, or 0.
  const c10::SymInt batch = input.sym_size(padded_batch_first ? 0 : 1);
  const Tensor h_zeros = h0.defined() ? Tensor() : zero_state(input, batch, state_width);
  Tensor c_zeros;
  if (is_lstm && !c0.defined())
    c_zeros = h_zeros.defined() && hidden == state_width ? h_zeros
                                                         : zero_state(input, batch, hidden);

  std::vector<Tensor> h_n, c_n;
  h_n.reserve(states);
  c_n.reserve(is_lstm ? states : 0);
  Tensor layer_input = stack_swaps ? swap_time_and_batch(input) : input;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    Tensor outputs[2];
    for (int64_t direction = 0; direction < directions; ++direction) {
      const int64_t index = layer * directions + direction;
      auto [output, h, c] =
          run_layer(cell, layer_input, batch_sizes,
                    initial_state(h0, index, h_zeros),
                    is_lstm ? initial_state(c0, index, c_zeros) : Tensor(),
                    weights.slice(index * stride, stride), has_bias, has_proj, direction == 1,
                    layer_batch_first);
      outputs[direction] = output;
      h_n.push_back(h);
      if (is_lstm) c_n.push_back(c);
    }
    layer_input = directions == 1 ? outputs[0] : at::cat({outputs[0], outputs[1]}, -1);
    if (dropout > 0 && train && layer + 1 < num_layers)
      layer_input = at::dropout(layer_input, dropout, /*train=*/true);
  }
  return {stack_swaps ? swap_time_and_batch(layer_input) : layer_input,
          final_states(h_n), is_lstm ? final_states(c_n) : at::empty({0}, input.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CompositeImplicitAutograd, m) {
  m.impl("layer_stack", TORCH_FN(layer_stack));
}

}  // namespace fastrnn
