// Autograd and inference kernels of the public ops rnn_layer / gru_layer / lstm_layer,
// for every device: they only call the *_layer_fwd / *_layer_bwd kernel ops through the
// dispatcher, so a backend registers those two per cell and inherits this file.
//
// Why C++: at the sine-wave shape (N=1, T=20, H=16) the whole layer computes in ~2 us,
// while a Python autograd.Function costs ~20 us and a Python custom_op with
// register_autograd ~50 us per call. A C++ torch::autograd::Function costs ~2-3 us.
//
//   CompositeExplicitAutograd: *_fwd(need_workspace=false), workspace dropped. Runs
//     under inference_mode and whenever the Autograd kernel redispatches below itself.
//   Autograd: when no input needs a gradient (no_grad, frozen weights and inputs) it
//     takes the same path; otherwise a torch::autograd::Function runs *_fwd with
//     need_workspace=true and its backward calls *_bwd (undefined incoming gradients
//     become zeros; no gradient for batch_sizes, flags, or absent biases / w_hr), asking
//     only for the input, state and weight gradients the graph needs (grads_wanted).
//
// The Functions never save the final states h_n and c_n: csrc/stack.cpp hands a single
// layer's final states to the user as _unsafe_view (own version counter, same memory), so
// an in-place change by the user would go unnoticed by a saved copy of them.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/library.h>

#include "op_handle.h"

namespace fastrnn {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensor4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using Tensor6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using Tensor8 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

const auto& rnn_fwd() {
  static const auto& op = op_handle<Tensor3(const Tensor&, const OptTensor&, const Tensor&,
                                            const Tensor&, const Tensor&, const OptTensor&,
                                            const OptTensor&, bool, bool, bool)>(
      "fastrnn::rnn_layer_fwd");
  return op;
}
const auto& rnn_bwd() {
  static const auto& op = op_handle<Tensor6(
      const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
      const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, const Tensor&,
      const Tensor&, bool, bool, bool, bool, bool)>("fastrnn::rnn_layer_bwd");
  return op;
}
const auto& gru_fwd() {
  static const auto& op = op_handle<Tensor3(const Tensor&, const OptTensor&, const Tensor&,
                                            const Tensor&, const Tensor&, const OptTensor&,
                                            const OptTensor&, bool, bool)>(
      "fastrnn::gru_layer_fwd");
  return op;
}
const auto& gru_bwd() {
  static const auto& op = op_handle<Tensor6(
      const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const Tensor&,
      const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, const Tensor&,
      const Tensor&, bool, bool, bool, bool)>("fastrnn::gru_layer_bwd");
  return op;
}
const auto& lstm_fwd() {
  static const auto& op = op_handle<Tensor4(
      const Tensor&, const OptTensor&, const Tensor&, const Tensor&, const Tensor&,
      const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&, bool, bool)>(
      "fastrnn::lstm_layer_fwd");
  return op;
}
const auto& lstm_bwd() {
  static const auto& op = op_handle<Tensor8(
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
      const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
      const OptTensor&, const OptTensor&, const Tensor&, const Tensor&, bool, bool, bool,
      bool)>("fastrnn::lstm_layer_bwd");
  return op;
}

// Runs a *_bwd kernel op. They have no Autograd kernel: with the Autograd keys live, as
// they are while backward() runs, the call would go through torch's boxed "autograd not
// implemented" fallback, which costs more than the sine-shape kernel itself.
template <class F>
auto below_autograd(const F& kernel_call) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return kernel_call();
}

// The gradients a backward() returns, made once-differentiable as Triton's
// @once_differentiable makes them: with create_graph=True each defined gradient gets an
// Error node, so differentiating it again raises instead of silently treating it as a
// constant (no double backward exists for the fused kernels).
variable_list once_differentiable(variable_list grads) {
  if (!at::GradMode::is_enabled()) return grads;
  for (Tensor& g : grads)
    if (g.defined()) g = g.detach().requires_grad_(true);
  return torch::autograd::DelayedError(
             "fastrnn: the fused RNN kernels have no double backward (their gradients "
             "were computed with create_graph=True and are being differentiated again)",
             int64_t(grads.size()))
      .apply(std::move(grads));
}

bool requires_grad(const Tensor& t) { return t.requires_grad(); }
bool requires_grad(const OptTensor& t) { return t.has_value() && t->requires_grad(); }

// Whether autograd must record this call: grad mode is on and some tensor argument
// (optional ones included) requires grad. Under no_grad the parameters still require
// grad, and a forward run for the graph would compute a workspace nothing reads.
template <class... Ts>
bool needs_graph(const Ts&... ts) {
  return at::GradMode::is_enabled() && (requires_grad(ts) || ...);
}

OptTensor opt(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }
// A gradient only where one was computed and is wanted; the others are undefined.
Tensor grad_if(bool wanted, const Tensor& grad) { return wanted ? grad : Tensor(); }

// The public ops' batch_first: padded input [N,T,C] goes to the kernels as the time-major
// view [T,N,C], and their output [T,N,P] comes back as the view [N,T,P] (the same swap).
// The swaps happen below autograd, inside the op, so the graph holds no transpose nodes:
// a batch_first layer_stack call that transposed around the op spent ~4 us of a ~58 us
// forward+backward at the sine-wave shape on them (RNN, two threads, ad hoc). A view made
// below autograd does not share its base's version counter, so the Functions save the
// swapped output that the caller receives (an in-place change of it must reach the saved
// tensor), never the kernels' time-major one.
Tensor swapped_if(bool batch_first, const Tensor& t) {
  return batch_first ? t.transpose(0, 1) : t;
}

void check_batch_first(const char* op, bool batch_first, const Tensor& input,
                       const OptTensor& batch_sizes) {
  TORCH_CHECK_VALUE(!batch_first || (!batch_sizes.has_value() && input.dim() == 3),
                    "fastrnn::", op, ": batch_first takes padded input [N, T, C] (no "
                    "batch_sizes), got a ", input.dim(), "-D input",
                    batch_sizes.has_value() ? " with batch_sizes" : "");
}

// The gradients this backward() call must compute, from its graph edges: one per defined
// tensor argument of forward(), in order. input is edge 0, then batch_sizes (if given),
// h0 and c0, then the weights: w_ih, w_hh and whichever of b_ih, b_hh, w_hr were given.
// A first layer's input (data) needs no gradient, nor do frozen weights, nor zero initial
// states (the stack's, or a cell's called without hx), nor inputs left out of
// torch.autograd.grad(inputs=...): the kernels skip those GEMMs.
struct GradsWanted {
  bool input, states, weights;
};
// saved: the saved variables, which keep forward()'s argument order with an undefined
// tensor for each absent optional one (batch_sizes is saved[1]); the states (h0, and c0
// for the LSTM) are saved[2, first_weight), the weights saved[first_weight,
// first_weight + n_weights).
GradsWanted grads_wanted(AutogradContext* ctx, const variable_list& saved, size_t first_weight,
                         size_t n_weights) {
  const size_t shift = saved[1].defined() ? 0 : 1;  // saved[i]'s edge is i - shift, i >= 2
  const size_t first_edge = first_weight - shift;
  size_t edges = 0;
  for (size_t i = first_weight; i < first_weight + n_weights; ++i) edges += saved[i].defined();
  return {ctx->needs_input_grad(0), ctx->needs_input_grad({{2 - shift, first_edge}}),
          ctx->needs_input_grad({{first_edge, first_edge + edges}})};
}

struct RNNFunction : public torch::autograd::Function<RNNFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input,
                               const OptTensor& batch_sizes, const Tensor& h0,
                               const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                               const OptTensor& b_hh, bool relu, bool reverse,
                               bool batch_first) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, h_n, ws] = rnn_fwd().call(swapped_if(batch_first, input), batch_sizes, h0,
                                            w_ih, w_hh, b_ih, b_hh, relu, reverse, true);
    output = swapped_if(batch_first, output);
    ctx->save_for_backward({input, batch_sizes.value_or(Tensor()), h0, w_ih, w_hh,
                            b_ih.value_or(Tensor()), b_hh.value_or(Tensor()), output, ws});
    ctx->saved_data["flags"] =
        int64_t(relu) | (int64_t(reverse) << 1) | (int64_t(batch_first) << 2);
    return {output, h_n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const int64_t flags = ctx->saved_data["flags"].toInt();
    const bool bf = flags & 4;
    const GradsWanted want = grads_wanted(ctx, s, 3, 4);
    auto [dx, dh0, dw_ih, dw_hh, db_ih, db_hh] = below_autograd([&] {
      auto r = rnn_bwd().call(swapped_if(bf, grads[0]), grads[1], swapped_if(bf, s[0]),
                              opt(s[1]), s[2], s[3], s[4], opt(s[5]), opt(s[6]),
                              swapped_if(bf, s[7]), s[8], flags & 1, flags & 2, want.input,
                              want.weights, want.states);
      if (want.input) std::get<0>(r) = swapped_if(bf, std::get<0>(r));
      return r;
    });
    return once_differentiable({grad_if(want.input, dx), Tensor(), grad_if(want.states, dh0),
                                grad_if(want.weights, dw_ih), grad_if(want.weights, dw_hh),
                                grad_if(want.weights && s[5].defined(), db_ih),
                                grad_if(want.weights && s[6].defined(), db_hh), Tensor(),
                                Tensor(), Tensor()});
  }
};

struct GRUFunction : public torch::autograd::Function<GRUFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input,
                               const OptTensor& batch_sizes, const Tensor& h0,
                               const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                               const OptTensor& b_hh, bool reverse, bool batch_first) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, h_n, ws] = gru_fwd().call(swapped_if(batch_first, input), batch_sizes, h0,
                                            w_ih, w_hh, b_ih, b_hh, reverse, true);
    output = swapped_if(batch_first, output);
    ctx->save_for_backward({input, batch_sizes.value_or(Tensor()), h0, w_ih, w_hh,
                            b_ih.value_or(Tensor()), b_hh.value_or(Tensor()), output, ws});
    ctx->saved_data["flags"] = int64_t(reverse) | (int64_t(batch_first) << 1);
    return {output, h_n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const int64_t flags = ctx->saved_data["flags"].toInt();
    const bool bf = flags & 2;
    const GradsWanted want = grads_wanted(ctx, s, 3, 4);
    auto [dx, dh0, dw_ih, dw_hh, db_ih, db_hh] = below_autograd([&] {
      auto r = gru_bwd().call(swapped_if(bf, grads[0]), grads[1], swapped_if(bf, s[0]),
                              opt(s[1]), s[2], s[3], s[4], opt(s[5]), opt(s[6]),
                              swapped_if(bf, s[7]), s[8], flags & 1, want.input, want.weights,
                              want.states);
      if (want.input) std::get<0>(r) = swapped_if(bf, std::get<0>(r));
      return r;
    });
    return once_differentiable({grad_if(want.input, dx), Tensor(), grad_if(want.states, dh0),
                                grad_if(want.weights, dw_ih), grad_if(want.weights, dw_hh),
                                grad_if(want.weights && s[5].defined(), db_ih),
                                grad_if(want.weights && s[6].defined(), db_hh), Tensor(),
                                Tensor()});
  }
};

struct LSTMFunction : public torch::autograd::Function<LSTMFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& input,
                               const OptTensor& batch_sizes, const Tensor& h0, const Tensor& c0,
                               const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                               const OptTensor& b_hh, const OptTensor& w_hr, bool reverse,
                               bool batch_first) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [output, h_n, c_n, ws] =
        lstm_fwd().call(swapped_if(batch_first, input), batch_sizes, h0, c0, w_ih, w_hh, b_ih,
                        b_hh, w_hr, reverse, true);
    output = swapped_if(batch_first, output);
    ctx->save_for_backward({input, batch_sizes.value_or(Tensor()), h0, c0, w_ih, w_hh,
                            b_ih.value_or(Tensor()), b_hh.value_or(Tensor()),
                            w_hr.value_or(Tensor()), output, ws});
    ctx->saved_data["flags"] = int64_t(reverse) | (int64_t(batch_first) << 1);
    return {output, h_n, c_n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const int64_t flags = ctx->saved_data["flags"].toInt();
    const bool bf = flags & 2;
    const GradsWanted want = grads_wanted(ctx, s, 4, 5);
    auto [dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_hr] = below_autograd([&] {
      auto r = lstm_bwd().call(swapped_if(bf, grads[0]), grads[1], grads[2],
                               swapped_if(bf, s[0]), opt(s[1]), s[2], s[3], s[4], s[5],
                               opt(s[6]), opt(s[7]), opt(s[8]), swapped_if(bf, s[9]), s[10],
                               flags & 1, want.input, want.weights, want.states);
      if (want.input) std::get<0>(r) = swapped_if(bf, std::get<0>(r));
      return r;
    });
    return once_differentiable({grad_if(want.input, dx), Tensor(), grad_if(want.states, dh0),
                                grad_if(want.states, dc0),
                                grad_if(want.weights, dw_ih), grad_if(want.weights, dw_hh),
                                grad_if(want.weights && s[6].defined(), db_ih),
                                grad_if(want.weights && s[7].defined(), db_hh),
                                grad_if(want.weights && s[8].defined(), dw_hr), Tensor(),
                                Tensor()});
  }
};

// ---- CompositeExplicitAutograd: plain forward, no workspace.

std::tuple<Tensor, Tensor> rnn_layer_plain(const Tensor& input, const OptTensor& batch_sizes,
                                           const Tensor& h0, const Tensor& w_ih,
                                           const Tensor& w_hh, const OptTensor& b_ih,
                                           const OptTensor& b_hh, bool relu, bool reverse,
                                           bool batch_first) {
  check_batch_first("rnn_layer", batch_first, input, batch_sizes);
  auto r = rnn_fwd().call(swapped_if(batch_first, input), batch_sizes, h0, w_ih, w_hh, b_ih,
                          b_hh, relu, reverse, false);
  return {swapped_if(batch_first, std::get<0>(r)), std::get<1>(r)};
}

std::tuple<Tensor, Tensor> gru_layer_plain(const Tensor& input, const OptTensor& batch_sizes,
                                           const Tensor& h0, const Tensor& w_ih,
                                           const Tensor& w_hh, const OptTensor& b_ih,
                                           const OptTensor& b_hh, bool reverse,
                                           bool batch_first) {
  check_batch_first("gru_layer", batch_first, input, batch_sizes);
  auto r = gru_fwd().call(swapped_if(batch_first, input), batch_sizes, h0, w_ih, w_hh, b_ih,
                          b_hh, reverse, false);
  return {swapped_if(batch_first, std::get<0>(r)), std::get<1>(r)};
}

Tensor3 lstm_layer_plain(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0,
                         const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                         const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                         bool reverse, bool batch_first) {
  check_batch_first("lstm_layer", batch_first, input, batch_sizes);
  auto r = lstm_fwd().call(swapped_if(batch_first, input), batch_sizes, h0, c0, w_ih, w_hh,
                           b_ih, b_hh, w_hr, reverse, false);
  return {swapped_if(batch_first, std::get<0>(r)), std::get<1>(r), std::get<2>(r)};
}

// ---- Autograd.

std::tuple<Tensor, Tensor> rnn_layer_autograd(const Tensor& input, const OptTensor& batch_sizes,
                                              const Tensor& h0, const Tensor& w_ih,
                                              const Tensor& w_hh, const OptTensor& b_ih,
                                              const OptTensor& b_hh, bool relu, bool reverse,
                                              bool batch_first) {
  if (!needs_graph(input, h0, w_ih, w_hh, b_ih, b_hh)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return rnn_layer_plain(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse,
                           batch_first);
  }
  check_batch_first("rnn_layer", batch_first, input, batch_sizes);
  auto out = RNNFunction::apply(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, relu, reverse,
                                batch_first);
  return {out[0], out[1]};
}

std::tuple<Tensor, Tensor> gru_layer_autograd(const Tensor& input, const OptTensor& batch_sizes,
                                              const Tensor& h0, const Tensor& w_ih,
                                              const Tensor& w_hh, const OptTensor& b_ih,
                                              const OptTensor& b_hh, bool reverse,
                                              bool batch_first) {
  if (!needs_graph(input, h0, w_ih, w_hh, b_ih, b_hh)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return gru_layer_plain(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reverse,
                           batch_first);
  }
  check_batch_first("gru_layer", batch_first, input, batch_sizes);
  auto out = GRUFunction::apply(input, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, reverse,
                                batch_first);
  return {out[0], out[1]};
}

Tensor3 lstm_layer_autograd(const Tensor& input, const OptTensor& batch_sizes, const Tensor& h0,
                            const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                            const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
                            bool reverse, bool batch_first) {
  if (!needs_graph(input, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return lstm_layer_plain(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse,
                            batch_first);
  }
  check_batch_first("lstm_layer", batch_first, input, batch_sizes);
  auto out = LSTMFunction::apply(input, batch_sizes, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                 reverse, batch_first);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CompositeExplicitAutograd, m) {
  m.impl("rnn_layer", TORCH_FN(rnn_layer_plain));
  m.impl("gru_layer", TORCH_FN(gru_layer_plain));
  m.impl("lstm_layer", TORCH_FN(lstm_layer_plain));
}

TORCH_LIBRARY_IMPL(fastrnn, Autograd, m) {
  m.impl("rnn_layer", TORCH_FN(rnn_layer_autograd));
  m.impl("gru_layer", TORCH_FN(gru_layer_autograd));
  m.impl("lstm_layer", TORCH_FN(lstm_layer_autograd));
}

}  // namespace fastrnn
