// CPU LSTM layer, forward and backward (torch.nn.LSTM's equations, gate rows i, f, g, o):
//   c' = sig(f) c + sig(i) tanh(g),  h' = sig(o) tanh(c'),  then h' = W_hr h' when the
//   layer has a projection (w_hr [P,H]; P == H without one).
//
// Workspace [S, 5H], row = [i | f | g | o | c'] (activated gates and the new cell) of that
// row's step. h_{t-1}, c_{t-1} and the unprojected h' are rebuilt in the backward from
// output, c0/h0 and the workspace rather than stored.
#include "input_projection.h"
#include "saved_row.h"
#include "workspace_pool.h"

namespace fastrnn {
namespace cpu {
namespace {

constexpr int64_t G = 4;

// One row's units [u0, u0+ub) of one step, pointers pre-offset to u0:
//   xp [4*ub] input projection block (b_ih included), gh [4*ub] W_hh h block (both
//   gate-major: gate g of unit j at g*ub + j; no b_hh), bhh [4H], c [ub] cell state
//   (c_{t-1} in, c_t out), h [ub] unprojected h_t out, ws the saved values (a SavedRow's
//   dst: value v of unit j at ws[v * wstride + j], v = i, f, g, o, c').
template <typename T, bool kSave>
inline void fwd_row(int64_t ub, int64_t H, const T* __restrict__ xp, const T* __restrict__ gh,
                    const T* __restrict__ bhh, T* __restrict__ c, T* __restrict__ h,
                    T* __restrict__ ws, int64_t wstride) {
  for (int64_t j = 0; j < ub; ++j) {
    const T ig = sigmoid(xp[j] + gh[j] + bhh[j]);
    const T fg = sigmoid(xp[ub + j] + gh[ub + j] + bhh[H + j]);
    const T gg = tanh_(xp[2 * ub + j] + gh[2 * ub + j] + bhh[2 * H + j]);
    const T og = sigmoid(xp[3 * ub + j] + gh[3 * ub + j] + bhh[3 * H + j]);
    const T cn = fg * c[j] + ig * gg;
    c[j] = cn;
    h[j] = og * tanh_(cn);
    if (kSave) {
      ws[j] = ig;
      ws[wstride + j] = fg;
      ws[2 * wstride + j] = gg;
      ws[3 * wstride + j] = og;
      ws[4 * wstride + j] = cn;
    }
  }
}

// Gradients of one row's units at one step, pointers pre-offset to u0:
//   dhr [ub] dL/d(unprojected h_t), ws [5H] workspace row, cp [ub] c_{t-1},
//   dc [ub] dL/dc_t in, dL/dc_{t-1} out, dg [4H] out: gate pre-activation gradients,
//   hraw [ub] out (kProj only): the unprojected h_t, for the W_hr gradient.
template <typename T, bool kProj>
inline void bwd_row(int64_t ub, int64_t H, const T* __restrict__ dhr, const T* __restrict__ ws,
                    const T* __restrict__ cp, T* __restrict__ dc, T* __restrict__ dg,
                    T* __restrict__ hraw) {
  for (int64_t j = 0; j < ub; ++j) {
    const T ig = ws[j], fg = ws[H + j], gg = ws[2 * H + j], og = ws[3 * H + j];
    const T tc = tanh_(ws[4 * H + j]);
    const T dcc = dc[j] + dhr[j] * og * (T(1) - tc * tc);
    dc[j] = dcc * fg;
    dg[j] = dcc * gg * ig * (T(1) - ig);
    dg[H + j] = dcc * cp[j] * fg * (T(1) - fg);
    dg[2 * H + j] = dcc * ig * (T(1) - gg * gg);
    dg[3 * H + j] = dhr[j] * tc * og * (T(1) - og);
    if (kProj) hraw[j] = og * tc;
  }
}

template <typename T, bool kSave, bool kProj>
void forward(const Steps& st, int64_t C, int64_t H, int64_t P, InputRows<T> x, const T* w_ih,
             const T* w_hh, const T* bih, const T* bhh, const T* w_hr, const T* h0, T* out,
             T* hn, T* cs, T* ws, T* scratch) {
  const int64_t N = st.N, nblk = div_up(H, kUnitBlock);
  const RowGroups groups(st, nblk, G * H * P * int64_t(sizeof(T)));
  const bool stream = kSave && streams<T>(st.S * 5 * H);
  InputProjection<T> xproj(st, G, H, C, x, w_ih, bih, scratch, groups.by_rows());
  T* wblk = scratch + input_projection_scratch(st, G, H, C);  // [nblk][P][4*kUnitBlock]
  T* gh = wblk + nblk * P * G * kUnitBlock;   // [nblk][N][4*kUnitBlock]
  T* hbuf = gh + nblk * N * G * kUnitBlock;   // [N, P]
  T* hraw = hbuf + N * P;                     // [N, H] (kProj)
  T* whr_t = hraw + (kProj ? N * H : 0);      // [H, P] (kProj)

  pack_unit_blocks(w_hh, G, H, P, wblk);
  if (kProj)
    for (int64_t p = 0; p < P; ++p)
      for (int64_t u = 0; u < H; ++u) whr_t[u * P + p] = w_hr[p * H + u];

  run_steps(st, groups, false, G * H * (P + C) + (kProj ? H * P : 0),
            [&](int64_t i) { xproj.before_step(i); }, [&](int64_t i, const StepShare& share) {
    const int64_t t = st.time(i), bt = st.bs[t], off = st.off[t];
    // c0 of the rows a reverse packed step starts is already in cs.
    const T* hp = prev_state(st, i, share.first_row(), share.end_row(bt), h0, out, P, hbuf);
    // Without a projection the cells write h_t straight into the output rows.
    T* hdst = kProj ? hraw : out + off * H;
    share.tiles(bt, H, G * P, [&](int64_t r0, int64_t r1, int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t u0 = k * kUnitBlock, ub = std::min(kUnitBlock, H - u0);
        T* g = gh + k * N * G * kUnitBlock + r0 * G * ub;
        step_product(r1 - r0, G * ub, P, hp + r0 * P, wblk + k * P * G * kUnitBlock, g);
        const T* xpk = xproj.block(i, k, r0, r1);
        for_rows<T>(r0, r1, [&](int64_t r) {
          SavedRow<T, 5> saved(kSave ? ws + (off + r) * 5 * H + u0 : nullptr, H, stream);
          fwd_row<T, kSave>(ub, H, xpk + r * G * ub, g + (r - r0) * G * ub, bhh + u0,
                            cs + r * H + u0, hdst + r * H + u0, saved.dst(), saved.stride());
          saved.finish(ub);
        });
      }
      fence_streamed_stores(stream);
    });
    if (kProj)
      share.tiles(bt, P, H, [&](int64_t r0, int64_t r1, int64_t k0, int64_t k1) {
        const int64_t p0 = k0 * kUnitBlock, pc = std::min(k1 * kUnitBlock, P) - p0;
        gemm_rm(false, false, r1 - r0, pc, H, hraw + r0 * H, H, whr_t + p0, P, T(0),
                out + (off + r0) * P + p0, P);
      });
  });
  gather_last(st, out, P, hn);
}

// dx, or dw_ih with dw_hh, db and dw_hr, null: that gradient is not wanted and not computed;
// dh and dc end as grad_h0 and grad_c0 (dh only when need_dh0).
template <typename T, bool kProj>
void backward(const Steps& st, int64_t C, int64_t H, int64_t P, Rows<T> x, const T* w_ih,
              const T* w_hh, const T* w_hr, const T* h0, const T* c0, const T* out,
              const T* ws, T* dout, T* dh, T* dc, bool need_dh0, T* dx, T* dw_ih, T* dw_hh,
              T* db, T* dw_hr, T* scratch) {
  const int64_t GH = G * H, S = st.S, nblk = div_up(H, kUnitBlock);
  const RowGroups groups(st, nblk, GH * P * int64_t(sizeof(T)));
  T* dg = scratch;              // [S, 4H] gate pre-activation gradients (both sides)
  T* hprev = dg + S * GH;       // [S, P] (gathered_prev_size)
  T* hraw = hprev + gathered_prev_size<T>(S, P);  // [S, H] (kProj) unprojected h_t
  T* dhraw = hraw + S * H;      // [N, H] (kProj) dL/d(unprojected h_t) of one step
  T* bias_sums = kProj ? dhraw + st.N * H : hraw;  // BiasGradSums
  const BackwardPanels<T> panels(bias_sums + BiasGradSums<T>::scratch_size(st.N, GH), S, GH);
  const BiasGradSums<T> db_sums(groups, st.N, GH, db, bias_sums);
  const bool tiles_pack_dg = tiles_pack_gate_grads<T>(groups, H, dw_ih != nullptr);
  const Rows<T> prev = prev_states_operand(st, h0, out, P, dw_ih != nullptr, hprev);
  pack_prev_state_weight(GH, P, w_hh, panels.operands);

  run_steps(st, groups, true, GH * P + (kProj ? H * P : 0), [](int64_t) {},
            [&](int64_t i, const StepShare& share) {
    const int64_t t = st.time(i), bt = st.bs[t], off = st.off[t], nc = st.carried(i);
    const int64_t first = share.first_row(), end = share.end_row(bt);
    // c_{t-1} is read where it is: the c' column of the previous step's workspace rows for
    // the nc carried rows, c0 for the rest (a gathered [S, H] copy cost ~2% of an LSTM
    // forward+backward at H=128).
    const T* c_carried = i > 0 ? ws + st.off[st.time(i - 1)] * 5 * H + 4 * H : nullptr;
    add_state_grad(dout + (off + first) * P, dh + first * P, (end - first) * P);
    share.tiles(bt, H, kGateGradCost + (kProj ? P : 0),
                [&](int64_t r0, int64_t r1, int64_t k0, int64_t k1) {
      // The tile's units are consecutive in every [G*H] row, whatever its block count.
      const int64_t u0 = k0 * kUnitBlock, ub = std::min(k1 * kUnitBlock, H) - u0;
      if (kProj)
        gemm_rm(false, false, r1 - r0, ub, P, dout + (off + r0) * P, P, w_hr + u0, H, T(0),
                dhraw + r0 * H + u0, H);
      for_rows<T>(r0, r1, [&](int64_t r) {
        const int64_t row = off + r;
        const T* cp = r < nc ? c_carried + r * 5 * H : c0 + r * H;
        bwd_row<T, kProj>(ub, H, kProj ? dhraw + r * H + u0 : dout + row * P + u0,
                          ws + row * 5 * H + u0, cp + u0, dc + r * H + u0,
                          dg + row * GH + u0, kProj ? hraw + row * H + u0 : nullptr);
      });
      for (int64_t g = 0; g < G; ++g) {
        db_sums.add(r0, r1 - r0, dg + off * GH, g * H + u0, ub);
        if (tiles_pack_dg)
          pack_gate_grads(S, GH, off + r0, off + r1, g * H + u0, ub, dg,
                          panels.gate_grads + (g * H + u0) * S);
      }
    });
    // The first step's product reaches only h0: skipped where grad_h0 is not wanted.
    if (i > 0 || need_dh0)
      grad_to_prev_state(share, bt, GH, P, dg + off * GH, w_hh, panels.operands, dh,
                         [](int64_t, int64_t, int64_t, T*) { return false; });
  });
  if (dx) input_grad(S, GH, C, dg, w_ih, panels, dx);
  if (dw_ih) {
    weight_grads<T>(S, GH, dg, {{x, C, dw_ih}, {prev, P, dw_hh}}, panels, tiles_pack_dg);
    if (kProj) tiled_gemm(true, false, P, H, S, dout, P, hraw, H, T(0), dw_hr, H);
    db_sums.finish();
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_fwd(
    const at::Tensor& input_, const std::optional<at::Tensor>& batch_sizes,
    const at::Tensor& h0_, const at::Tensor& c0_, const at::Tensor& w_ih_,
    const at::Tensor& w_hh_, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& w_hr_,
    bool reverse, bool need_workspace) {
  const bool proj = w_hr_.has_value() && w_hr_->defined();
  const int64_t H = w_hh_.size(0) / G, P = w_hh_.size(1);
  check_layer("lstm_layer_fwd", input_, h0_, w_ih_, w_hh_, b_ih, b_hh, G, H, P);
  TORCH_CHECK(c0_.dim() == 2 && c0_.size(0) == h0_.size(0) && c0_.size(1) == H &&
                  c0_.scalar_type() == input_.scalar_type(),
              "fastrnn::lstm_layer_fwd: c0 must be [N,", H, "] of the input's dtype, got ",
              c0_.sizes(), " ", c0_.scalar_type());
  TORCH_CHECK(proj ? (w_hr_->dim() == 2 && w_hr_->size(0) == P && w_hr_->size(1) == H &&
                      w_hr_->scalar_type() == input_.scalar_type())
                   : P == H,
              "fastrnn::lstm_layer_fwd: w_hr must be [P,H] = [", P, ",", H,
              "] of the input's dtype (or None with w_hh [4H,H])");
  const Steps st = make_steps(input_, batch_sizes, h0_, reverse);
  const at::Tensor input = forward_input(input_, batch_sizes.has_value());
  const at::Tensor h0 = h0_.contiguous();
  const at::Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const at::Tensor w_hr = proj ? w_hr_->contiguous() : at::Tensor();
  const at::Tensor bih = bias_or_zeros(b_ih, G * H, input), bhh = bias_or_zeros(b_hh, G * H, input);
  const int64_t C = input.size(-1), N = st.N, nblk = div_up(H, kUnitBlock);
  const SerialIfSmall serial(st.S * (G * H * (C + P) + (proj ? H * P : 0)));
  at::Tensor output = batch_sizes.has_value() ? empty_large({st.S, P}, input.options())
                                              : empty_large({st.T, N, P}, input.options());
  at::Tensor h_n = at::empty({N, P}, input.options());
  at::Tensor c_n = fresh_copy(c0_);  // the recurrence updates it in place
  at::Tensor ws = need_workspace ? pooled_empty({st.S, 5 * H}, input.options())
                                 : at::empty({0}, input.options());
  const int64_t scratch_numel = input_projection_scratch(st, G, H, C) +
                                nblk * (P + N) * G * kUnitBlock + N * P +
                                (proj ? N * H + H * P : 0);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer_fwd", [&] {
    using T = scalar_t;
    auto run = need_workspace ? (proj ? forward<T, true, true> : forward<T, true, false>)
                              : (proj ? forward<T, false, true> : forward<T, false, false>);
    run(st, C, H, P, input_rows<T>(input), w_ih.const_data_ptr<T>(),
        w_hh.const_data_ptr<T>(), bih.const_data_ptr<T>(), bhh.const_data_ptr<T>(),
        proj ? w_hr.const_data_ptr<T>() : nullptr, h0.const_data_ptr<T>(),
        output.mutable_data_ptr<T>(), h_n.mutable_data_ptr<T>(), c_n.mutable_data_ptr<T>(),
        ws.mutable_data_ptr<T>(), thread_scratch<T>(scratch_numel));
  });
  return {output, h_n, c_n, ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
           at::Tensor>
lstm_layer_bwd(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
               const at::Tensor& grad_c_n, const at::Tensor& input_,
               const std::optional<at::Tensor>& batch_sizes, const at::Tensor& h0_,
               const at::Tensor& c0_, const at::Tensor& w_ih_, const at::Tensor& w_hh_,
               const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
               const std::optional<at::Tensor>& w_hr_, const at::Tensor& output_,
               const at::Tensor& workspace, bool reverse,
               bool need_grad_input, bool need_grad_weights, bool need_grad_state) {
  const bool proj = w_hr_.has_value() && w_hr_->defined();
  const int64_t H = w_hh_.size(0) / G, P = w_hh_.size(1);
  check_layer("lstm_layer_bwd", input_, h0_, w_ih_, w_hh_, b_ih, b_hh, G, H, P);
  const Steps st = make_steps(input_, batch_sizes, h0_, reverse);
  TORCH_CHECK(workspace.dim() == 2 && workspace.size(0) == st.S && workspace.size(1) == 5 * H,
              "fastrnn::lstm_layer_bwd: workspace must be [", st.S, ",", 5 * H,
              "] from lstm_layer_fwd(need_workspace=True) of the CPU backend, got ",
              workspace.sizes());
  TORCH_CHECK(grad_output.numel() == st.S * P && grad_h_n.numel() == st.N * P &&
                  grad_c_n.numel() == st.N * H && output_.numel() == st.S * P &&
                  c0_.numel() == st.N * H,
              "fastrnn::lstm_layer_bwd: grad_output/output must have S*P elements, "
              "grad_h_n N*P, grad_c_n and c0 N*H");
  const at::Tensor input = weight_grad_input(input_, batch_sizes.has_value());
  const at::Tensor h0 = h0_.contiguous(), c0 = c0_.contiguous();
  const at::Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const at::Tensor w_hr = proj ? w_hr_->contiguous() : at::Tensor();
  const at::Tensor output = output_.contiguous(), ws = workspace.contiguous();
  const int64_t C = input.size(-1), GH = G * H, S = st.S, N = st.N;
  const SerialIfSmall serial(S * (GH * (C + P) + (proj ? H * P : 0)));
  // The gradients reaching each step's h and c (grad_h0 and grad_c0 at the end).
  at::Tensor dh = fresh_copy(grad_h_n);
  at::Tensor dc = fresh_copy(grad_c_n);
  at::Tensor dx = grad_result(need_grad_input, input.sizes(), input.options());
  at::Tensor dw_ih = grad_result(need_grad_weights, {GH, C}, input.options());
  at::Tensor dw_hh = grad_result(need_grad_weights, {GH, P}, input.options());
  at::Tensor db = grad_result(need_grad_weights, {GH}, input.options());
  at::Tensor dw_hr = grad_result(need_grad_weights && proj, {P, H}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "lstm_layer_bwd", [&] {
    using T = scalar_t;
    const auto scratch = backward_scratch<T>(
        grad_output, S * GH + gathered_prev_size<T>(S, P) + (proj ? S * H + N * H : 0) +
                         BiasGradSums<T>::scratch_size(N, GH) +
                         backward_pack_scratch(input, S, GH, GH, C, P));
    auto run = proj ? backward<T, true> : backward<T, false>;
    run(st, C, H, P, weight_grad_rows<T>(input, st), w_ih.const_data_ptr<T>(),
        w_hh.const_data_ptr<T>(), proj ? w_hr.const_data_ptr<T>() : nullptr,
        h0.const_data_ptr<T>(), c0.const_data_ptr<T>(), output.const_data_ptr<T>(),
        ws.const_data_ptr<T>(), scratch.dout, dh.mutable_data_ptr<T>(),
        dc.mutable_data_ptr<T>(), need_grad_state, data_if<T>(need_grad_input, dx),
        data_if<T>(need_grad_weights, dw_ih), data_if<T>(need_grad_weights, dw_hh),
        data_if<T>(need_grad_weights, db), data_if<T>(need_grad_weights && proj, dw_hr),
        scratch.rest);
  });
  // The hidden-side bias sits in the same sum as the input-side one: equal gradients.
  return {dx, state_grad(need_grad_state, dh, h0_), state_grad(need_grad_state, dc, c0_),
          dw_ih, dw_hh, db, fresh_copy(db), dw_hr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("lstm_layer_fwd", TORCH_FN(lstm_layer_fwd));
  m.impl("lstm_layer_bwd", TORCH_FN(lstm_layer_bwd));
}

}  // namespace cpu
}  // namespace fastrnn
