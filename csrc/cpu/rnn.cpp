// CPU Elman RNN layer, forward and backward (torch.nn.RNN):
//   h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu.
//
// No workspace (an empty tensor): act' is a function of the output alone (1 - h'^2 for
// tanh, h' > 0 for relu) and h_{t-1} is rebuilt from output and h0.
#include "input_projection.h"

namespace fastrnn {
namespace cpu {
namespace {

// One row's units [u0, u0+ub) of one step, pointers pre-offset to u0:
//   xp [ub] input projection block (b_ih included), gh [ub] W_hh h block, bhh [ub],
//   h [ub] out.
template <typename T, bool kRelu>
inline void fwd_row(int64_t ub, const T* __restrict__ xp, const T* __restrict__ gh,
                    const T* __restrict__ bhh, T* __restrict__ h) {
  for (int64_t j = 0; j < ub; ++j) {
    const T a = xp[j] + gh[j] + bhh[j];
    h[j] = kRelu ? relu_(a) : tanh_(a);
  }
}

template <typename T, bool kRelu>
void forward(const Steps& st, int64_t C, int64_t H, InputRows<T> x, const T* w_ih,
             const T* w_hh, const T* bih, const T* bhh, const T* h0, T* out, T* hn, T* scratch) {
  const int64_t N = st.N, nblk = div_up(H, kUnitBlock);
  const RowGroups groups(st, nblk, H * H * int64_t(sizeof(T)));
  InputProjection<T> xproj(st, 1, H, C, x, w_ih, bih, scratch, groups.by_rows());
  T* wblk = scratch + input_projection_scratch(st, 1, H, C);  // [nblk][H][kUnitBlock]
  T* gh = wblk + nblk * H * kUnitBlock;     // [nblk][N][kUnitBlock]
  T* hbuf = gh + nblk * N * kUnitBlock;     // [N, H]

  pack_unit_blocks(w_hh, 1, H, H, wblk);

  run_steps(st, groups, false, H * (H + C), [&](int64_t i) { xproj.before_step(i); },
            [&](int64_t i, const StepShare& share) {
    const int64_t t = st.time(i), bt = st.bs[t], off = st.off[t];
    const T* hp = prev_state(st, i, share.first_row(), share.end_row(bt), h0, out, H, hbuf);
    share.tiles(bt, H, H, [&](int64_t r0, int64_t r1, int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t u0 = k * kUnitBlock, ub = std::min(kUnitBlock, H - u0);
        T* g = gh + k * N * kUnitBlock + r0 * ub;
        step_product(r1 - r0, ub, H, hp + r0 * H, wblk + k * H * kUnitBlock, g);
        const T* xpk = xproj.block(i, k, r0, r1);
        for_rows<T>(r0, r1, [&](int64_t r) {
          fwd_row<T, kRelu>(ub, xpk + r * ub, g + (r - r0) * ub, bhh + u0,
                            out + (off + r) * H + u0);
        });
      }
    });
  });
  gather_last(st, out, H, hn);
}

// dx, or dw_ih with dw_hh and db, null: that gradient is not wanted and not computed; dh
// ends as grad_h0 when need_dh0.
template <typename T, bool kRelu>
void backward(const Steps& st, int64_t C, int64_t H, Rows<T> x, const T* w_ih, const T* w_hh,
              const T* h0, const T* out, T* dout, T* dh, bool need_dh0, T* dx, T* dw_ih,
              T* dw_hh, T* db, T* scratch) {
  const int64_t S = st.S;
  const RowGroups groups(st, div_up(H, kUnitBlock), H * H * int64_t(sizeof(T)));
  T* dg = scratch;          // [S, H] pre-activation gradients (both sides)
  T* hprev = dg + S * H;    // [S, H] (gathered_prev_size)
  T* bias_sums = hprev + gathered_prev_size<T>(S, H);  // BiasGradSums
  const BackwardPanels<T> panels(bias_sums + BiasGradSums<T>::scratch_size(st.N, H), S, H);
  const BiasGradSums<T> db_sums(groups, st.N, H, db, bias_sums);
  const Rows<T> prev = prev_states_operand(st, h0, out, H, dw_ih != nullptr, hprev);
  pack_prev_state_weight(H, H, w_hh, panels.operands);

  run_steps(st, groups, true, 2 * H * H, [](int64_t) {}, [&](int64_t i, const StepShare& share) {
    const int64_t t = st.time(i), bt = st.bs[t], off = st.off[t];
    const int64_t r0 = share.first_row(), r1 = share.end_row(bt);
    add_state_grad(dout + (off + r0) * H, dh + r0 * H, (r1 - r0) * H);
    {
      const T* __restrict__ g = dout + off * H;
      const T* __restrict__ y = out + off * H;
      T* __restrict__ d = dg + off * H;
      for (int64_t j = r0 * H; j < r1 * H; ++j)
        // !(y <= 0), as torch's threshold_backward: a NaN output passes its gradient on.
        d[j] = kRelu ? (!(y[j] <= T(0)) ? g[j] : T(0)) : g[j] * (T(1) - y[j] * y[j]);
      db_sums.add(r0, r1 - r0, d, 0, H);
    }
    // The first step's product reaches only h0: skipped where grad_h0 is not wanted.
    if (i > 0 || need_dh0)
      grad_to_prev_state(share, bt, H, H, dg + off * H, w_hh, panels.operands, dh,
                         [](int64_t, int64_t, int64_t, T*) { return false; });
  });
  if (dx) input_grad(S, H, C, dg, w_ih, panels, dx);
  if (dw_ih) {
    weight_grads<T>(S, H, dg, {{x, C, dw_ih}, {prev, H, dw_hh}}, panels, false);
    db_sums.finish();
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_layer_fwd(
    const at::Tensor& input_, const std::optional<at::Tensor>& batch_sizes,
    const at::Tensor& h0_, const at::Tensor& w_ih_, const at::Tensor& w_hh_,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh, bool relu,
    bool reverse, bool need_workspace) {
  const int64_t H = w_hh_.size(1);
  check_layer("rnn_layer_fwd", input_, h0_, w_ih_, w_hh_, b_ih, b_hh, 1, H, H);
  const Steps st = make_steps(input_, batch_sizes, h0_, reverse);
  const at::Tensor input = forward_input(input_, batch_sizes.has_value());
  const at::Tensor h0 = h0_.contiguous();
  const at::Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const at::Tensor bih = bias_or_zeros(b_ih, H, input), bhh = bias_or_zeros(b_hh, H, input);
  const int64_t C = input.size(-1), N = st.N, nblk = div_up(H, kUnitBlock);
  const SerialIfSmall serial(st.S * H * (C + H));
  at::Tensor output = batch_sizes.has_value() ? empty_large({st.S, H}, input.options())
                                              : empty_large({st.T, N, H}, input.options());
  at::Tensor h_n = at::empty({N, H}, input.options());
  const int64_t scratch_numel =
      input_projection_scratch(st, 1, H, C) + nblk * (H + N) * kUnitBlock + N * H;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnn_layer_fwd", [&] {
    auto run = relu ? forward<scalar_t, true> : forward<scalar_t, false>;
    run(st, C, H, input_rows<scalar_t>(input), w_ih.const_data_ptr<scalar_t>(),
        w_hh.const_data_ptr<scalar_t>(), bih.const_data_ptr<scalar_t>(),
        bhh.const_data_ptr<scalar_t>(), h0.const_data_ptr<scalar_t>(),
        output.mutable_data_ptr<scalar_t>(), h_n.mutable_data_ptr<scalar_t>(),
        thread_scratch<scalar_t>(scratch_numel));
  });
  return {output, h_n, at::empty({0}, input.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
rnn_layer_bwd(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
              const at::Tensor& input_, const std::optional<at::Tensor>& batch_sizes,
              const at::Tensor& h0_, const at::Tensor& w_ih_, const at::Tensor& w_hh_,
              const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
              const at::Tensor& output_, const at::Tensor& workspace, bool relu,
              bool reverse, bool need_grad_input, bool need_grad_weights,
              bool need_grad_state) {
  const int64_t H = w_hh_.size(1);
  check_layer("rnn_layer_bwd", input_, h0_, w_ih_, w_hh_, b_ih, b_hh, 1, H, H);
  const Steps st = make_steps(input_, batch_sizes, h0_, reverse);
  TORCH_CHECK(grad_output.numel() == st.S * H && grad_h_n.numel() == st.N * H &&
                  output_.numel() == st.S * H,
              "fastrnn::rnn_layer_bwd: grad_output/output must have S*H elements and grad_h_n N*H");
  const at::Tensor input = weight_grad_input(input_, batch_sizes.has_value());
  const at::Tensor h0 = h0_.contiguous();
  const at::Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const at::Tensor output = output_.contiguous();
  const int64_t C = input.size(-1);
  const SerialIfSmall serial(st.S * H * (C + H));
  at::Tensor dh = fresh_copy(grad_h_n);  // the gradient reaching each step's h
  at::Tensor dx = grad_result(need_grad_input, input.sizes(), input.options());
  at::Tensor dw_ih = grad_result(need_grad_weights, {H, C}, input.options());
  at::Tensor dw_hh = grad_result(need_grad_weights, {H, H}, input.options());
  at::Tensor db = grad_result(need_grad_weights, {H}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "rnn_layer_bwd", [&] {
    const auto scratch = backward_scratch<scalar_t>(
        grad_output, st.S * H + gathered_prev_size<scalar_t>(st.S, H) +
                         BiasGradSums<scalar_t>::scratch_size(st.N, H) +
                         backward_pack_scratch(input, st.S, H, H, C, H));
    auto run = relu ? backward<scalar_t, true> : backward<scalar_t, false>;
    run(st, C, H, weight_grad_rows<scalar_t>(input, st), w_ih.const_data_ptr<scalar_t>(),
        w_hh.const_data_ptr<scalar_t>(), h0.const_data_ptr<scalar_t>(),
        output.const_data_ptr<scalar_t>(), scratch.dout,
        dh.mutable_data_ptr<scalar_t>(), need_grad_state,
        data_if<scalar_t>(need_grad_input, dx),
        data_if<scalar_t>(need_grad_weights, dw_ih), data_if<scalar_t>(need_grad_weights, dw_hh),
        data_if<scalar_t>(need_grad_weights, db), scratch.rest);
  });
  // The hidden-side bias sits in the same sum as the input-side one: equal gradients.
  return {dx, state_grad(need_grad_state, dh, h0_), dw_ih, dw_hh, db, fresh_copy(db)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("rnn_layer_fwd", TORCH_FN(rnn_layer_fwd));
  m.impl("rnn_layer_bwd", TORCH_FN(rnn_layer_bwd));
}

}  // namespace cpu
}  // namespace fastrnn
