// CPU GRU layer, forward and backward (torch.nn.GRU's equations, gate rows r, z, n):
//   r = sig(x_r + h_r), z = sig(x_z + h_z), n = tanh(x_n + r * h_n), h' = n + z (h - n)
// where x_* = W_i* x + b_i* (one GEMM over all steps) and h_* = W_h* h + b_h*.
//
// Workspace [S, 4H], row = [r | z | n | h_n] of that row's step (h_n = W_hn h + b_hn, kept
// because the backward needs it and it sits inside the r product). h_{t-1} is not
// stored: the backward rebuilds it from output and h0.
#include "input_projection.h"
#include "saved_row.h"
#include "workspace_pool.h"

namespace fastrnn {
namespace cpu {
namespace {

constexpr int64_t G = 3;

// One row's units [u0, u0+ub) of one step; every pointer is pre-offset to unit u0:
//   xp [3*ub] input projection block (b_ih included), gh [3*ub] W_hh h block (both
//   gate-major: gate g of unit j at g*ub + j; no b_hh), bhh [3H], hp [ub] h_{t-1},
//   h [ub] h_t out, ws the saved values (a SavedRow's dst: value v of unit j at
//   ws[v * wstride + j], v = r, z, n, h_n).
template <typename T, bool kSave>
inline void fwd_row(int64_t ub, int64_t H, const T* __restrict__ xp, const T* __restrict__ gh,
                    const T* __restrict__ bhh, const T* __restrict__ hp, T* __restrict__ h,
                    T* __restrict__ ws, int64_t wstride) {
  for (int64_t j = 0; j < ub; ++j) {
    const T r = sigmoid(xp[j] + gh[j] + bhh[j]);
    const T z = sigmoid(xp[ub + j] + gh[ub + j] + bhh[H + j]);
    const T hn = gh[2 * ub + j] + bhh[2 * H + j];
    const T n = tanh_(xp[2 * ub + j] + r * hn);
    h[j] = n + z * (hp[j] - n);
    if (kSave) {
      ws[j] = r;
      ws[wstride + j] = z;
      ws[2 * wstride + j] = n;
      ws[3 * wstride + j] = hn;
    }
  }
}

// Gradients of one row's units at one step, pointers pre-offset to unit u0:
//   dh [ub] dL/dh_t, ws [4H] workspace row, hp [ub] h_{t-1}, dgi/dgh [3H] out: gradients
//   of the input-side and hidden-side gate pre-activations (they differ in the n gate).
template <typename T>
inline void bwd_row(int64_t ub, int64_t H, const T* __restrict__ dh, const T* __restrict__ ws,
                    const T* __restrict__ hp, T* __restrict__ dgi, T* __restrict__ dgh) {
  for (int64_t j = 0; j < ub; ++j) {
    const T r = ws[j], z = ws[H + j], n = ws[2 * H + j], hn = ws[3 * H + j];
    const T g = dh[j];
    const T dan = g * (T(1) - z) * (T(1) - n * n);
    const T dar = dan * hn * r * (T(1) - r);
    const T daz = g * (hp[j] - n) * z * (T(1) - z);
    dgi[j] = dar;
    dgi[H + j] = daz;
    dgi[2 * H + j] = dan;
    dgh[j] = dar;
    dgh[H + j] = daz;
    dgh[2 * H + j] = dan * r;
  }
}

template <typename T, bool kSave>
void forward(const Steps& st, int64_t C, int64_t H, InputRows<T> x, const T* w_ih,
             const T* w_hh, const T* bih, const T* bhh, const T* h0, T* out, T* hn, T* ws,
             T* scratch) {
  const int64_t N = st.N, nblk = div_up(H, kUnitBlock);
  const RowGroups groups(st, nblk, G * H * H * int64_t(sizeof(T)));
  const bool stream = kSave && streams<T>(st.S * 4 * H);
  InputProjection<T> xproj(st, G, H, C, x, w_ih, bih, scratch, groups.by_rows());
  T* wblk = scratch + input_projection_scratch(st, G, H, C);  // [nblk][H][3*kUnitBlock]
  T* gh = wblk + nblk * H * G * kUnitBlock;       // [nblk][N][3*kUnitBlock]
  T* hbuf = gh + nblk * N * G * kUnitBlock;       // [N, H]

  pack_unit_blocks(w_hh, G, H, H, wblk);

  run_steps(st, groups, false, G * H * (H + C), [&](int64_t i) { xproj.before_step(i); },
            [&](int64_t i, const StepShare& share) {
    const int64_t t = st.time(i), bt = st.bs[t], off = st.off[t];
    const T* hp = prev_state(st, i, share.first_row(), share.end_row(bt), h0, out, H, hbuf);
    share.tiles(bt, H, G * H, [&](int64_t r0, int64_t r1, int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t u0 = k * kUnitBlock, ub = std::min(kUnitBlock, H - u0);
        T* g = gh + k * N * G * kUnitBlock + r0 * G * ub;
        step_product(r1 - r0, G * ub, H, hp + r0 * H, wblk + k * H * G * kUnitBlock, g);
        const T* xpk = xproj.block(i, k, r0, r1);
        for_rows<T>(r0, r1, [&](int64_t r) {
          SavedRow<T, 4> saved(kSave ? ws + (off + r) * 4 * H + u0 : nullptr, H, stream);
          fwd_row<T, kSave>(ub, H, xpk + r * G * ub, g + (r - r0) * G * ub, bhh + u0,
                            hp + r * H + u0, out + (off + r) * H + u0, saved.dst(),
                            saved.stride());
          saved.finish(ub);
        });
      }
      fence_streamed_stores(stream);
    });
  });
  gather_last(st, out, H, hn);
}

// dw_hh [3H, H] = dgh^T @ prev ([S, H]) from the tiles' packs (gate_grads: dgi^T's r, z
// and n rows, then dgh^T's n rows): the r and z rows from dgi^T's, which are equal.
template <typename T>
void hidden_weight_grad_from_packed(int64_t S, int64_t H, const Rows<T>& prev,
                                    const BackwardPanels<T>& panels, T* dw_hh) {
  if constexpr (std::is_same_v<T, float>) {
    parallel_pack(S, H, prev, panels.operands);
    tiled_packed_gemm(2 * H, H, S, blocks_operand(panels.gate_grads, S), panels.operands,
                      nullptr, 0, dw_hh, H);
    tiled_packed_gemm(H, H, S, blocks_operand(panels.gate_grads + G * H * S, S),
                      panels.operands, nullptr, 0, dw_hh + 2 * H * H, H);
  }
}

// dx, or dw_ih with dw_hh, db_ih and db_hh, null: that gradient is not wanted and not
// computed; dh ends as grad_h0 when need_dh0.
template <typename T>
void backward(const Steps& st, int64_t C, int64_t H, Rows<T> x, const T* w_ih, const T* w_hh,
              const T* h0, const T* out, const T* ws, T* dout, T* dh, bool need_dh0, T* dx,
              T* dw_ih, T* dw_hh, T* db_ih, T* db_hh, T* scratch) {
  const int64_t GH = G * H, S = st.S, nblk = div_up(H, kUnitBlock);
  const RowGroups groups(st, nblk, GH * H * int64_t(sizeof(T)));
  T* dgi = scratch;          // [S, 3H]
  T* dgh = dgi + S * GH;     // [S, 3H]
  T* hprev = dgh + S * GH;   // [S, H] (gathered_prev_size)
  T* bias_sums = hprev + gathered_prev_size<T>(S, H);  // 2 BiasGradSums
  const int64_t sums_size = BiasGradSums<T>::scratch_size(st.N, GH);
  // The weight gradients read dgi^T and dgh^T packed, whose r and z rows are equal (dgi and
  // dgh differ in the n gate only). Where the tiles pack them (tiles_pack_gate_grads), they
  // pack dgi's three gates and then dgh's n gate into gate_grads; otherwise weight_grads
  // packs dgi and dgh in turn after the recurrence.
  const bool tiles_pack_dg = tiles_pack_gate_grads<T>(groups, H, dw_ih != nullptr);
  const BackwardPanels<T> panels(bias_sums + 2 * sums_size, S, GH + H);
  const BiasGradSums<T> dbi_sums(groups, st.N, GH, db_ih, bias_sums);
  const BiasGradSums<T> dbh_sums(groups, st.N, GH, db_hh, bias_sums + sums_size);
  const Rows<T> prev = prev_states_operand(st, h0, out, H, dw_ih != nullptr, hprev);
  pack_prev_state_weight(GH, H, w_hh, panels.operands);

  run_steps(st, groups, true, 2 * GH * H, [](int64_t) {}, [&](int64_t i, const StepShare& share) {
    const int64_t t = st.time(i), bt = st.bs[t], off = st.off[t], nc = st.carried(i);
    const int64_t first = share.first_row(), end = share.end_row(bt);
    // h_{t-1} is read where it is: the previous step's output rows for the nc carried rows,
    // h0 for the rest. Read from a gathered [S, H] copy, the forward+backward with two
    // threads at B=64, H=128 took 16.78 ms against 16.60, packed 8.52 against 8.22 (ad hoc,
    // alternated processes, medians of 3; H=512 within noise).
    const T* h_carried = i > 0 ? out + st.off[st.time(i - 1)] * H : nullptr;
    add_state_grad(dout + (off + first) * H, dh + first * H, (end - first) * H);
    share.tiles(bt, H, kGateGradCost, [&](int64_t r0, int64_t r1, int64_t k0, int64_t k1) {
      // The tile's units are consecutive in every [G*H] row, whatever its block count.
      const int64_t u0 = k0 * kUnitBlock, ub = std::min(k1 * kUnitBlock, H) - u0;
      for_rows<T>(r0, r1, [&](int64_t r) {
        const int64_t row = off + r;
        const T* hp = r < nc ? h_carried + r * H : h0 + r * H;
        bwd_row(ub, H, dout + row * H + u0, ws + row * 4 * H + u0, hp + u0,
                dgi + row * GH + u0, dgh + row * GH + u0);
      });
      for (int64_t g = 0; g < G; ++g) {
        dbi_sums.add(r0, r1 - r0, dgi + off * GH, g * H + u0, ub);
        if (tiles_pack_dg)
          pack_gate_grads(S, GH, off + r0, off + r1, g * H + u0, ub, dgi,
                          panels.gate_grads + (g * H + u0) * S);
      }
      // db_hh's r and z sums are db_ih's (copied after the recurrence).
      dbh_sums.add(r0, r1 - r0, dgh + off * GH, 2 * H + u0, ub);
      if (tiles_pack_dg)
        pack_gate_grads(S, GH, off + r0, off + r1, 2 * H + u0, ub, dgh,
                        panels.gate_grads + (GH + u0) * S);
    });
    // h' = n + z (h - n) reaches h_{t-1} directly through z as well as through W_hh. The
    // first step's reaches only h0: skipped where grad_h0 is not wanted.
    if (i > 0 || need_dh0)
      grad_to_prev_state(share, bt, GH, H, dgh + off * GH, w_hh, panels.operands, dh,
                         [&](int64_t r, int64_t p0, int64_t p1, T* o) {
        const T* g = dout + (off + r) * H;
        const T* z = ws + (off + r) * 4 * H + H;
        for (int64_t p = p0; p < p1; ++p) o[p] = g[p] * z[p];
        return true;
      });
  });
  if (dx) input_grad(S, GH, C, dgi, w_ih, panels, dx);
  if (dw_ih) {
    weight_grads<T>(S, GH, dgi, {{x, C, dw_ih}}, panels, tiles_pack_dg);
    if (tiles_pack_dg)
      hidden_weight_grad_from_packed(S, H, prev, panels, dw_hh);
    else
      weight_grads<T>(S, GH, dgh, {{prev, H, dw_hh}}, panels, false);
    dbi_sums.finish();
    dbh_sums.finish();
    std::copy(db_ih, db_ih + 2 * H, db_hh);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer_fwd(
    const at::Tensor& input_, const std::optional<at::Tensor>& batch_sizes,
    const at::Tensor& h0_, const at::Tensor& w_ih_, const at::Tensor& w_hh_,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    bool reverse, bool need_workspace) {
  const int64_t H = w_hh_.size(1);
  check_layer("gru_layer_fwd", input_, h0_, w_ih_, w_hh_, b_ih, b_hh, G, H, H);
  const Steps st = make_steps(input_, batch_sizes, h0_, reverse);
  const at::Tensor input = forward_input(input_, batch_sizes.has_value());
  const at::Tensor h0 = h0_.contiguous();
  const at::Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const at::Tensor bih = bias_or_zeros(b_ih, G * H, input), bhh = bias_or_zeros(b_hh, G * H, input);
  const int64_t C = input.size(-1), N = st.N, nblk = div_up(H, kUnitBlock);
  const SerialIfSmall serial(st.S * G * H * (C + H));
  at::Tensor output = batch_sizes.has_value() ? empty_large({st.S, H}, input.options())
                                              : empty_large({st.T, N, H}, input.options());
  at::Tensor h_n = at::empty({N, H}, input.options());
  at::Tensor ws = need_workspace ? pooled_empty({st.S, 4 * H}, input.options())
                                 : at::empty({0}, input.options());
  const int64_t scratch_numel =
      input_projection_scratch(st, G, H, C) + nblk * (H + N) * G * kUnitBlock + N * H;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "gru_layer_fwd", [&] {
    auto run = need_workspace ? forward<scalar_t, true> : forward<scalar_t, false>;
    run(st, C, H, input_rows<scalar_t>(input), w_ih.const_data_ptr<scalar_t>(),
        w_hh.const_data_ptr<scalar_t>(), bih.const_data_ptr<scalar_t>(),
        bhh.const_data_ptr<scalar_t>(), h0.const_data_ptr<scalar_t>(),
        output.mutable_data_ptr<scalar_t>(), h_n.mutable_data_ptr<scalar_t>(),
        ws.mutable_data_ptr<scalar_t>(), thread_scratch<scalar_t>(scratch_numel));
  });
  return {output, h_n, ws};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gru_layer_bwd(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
              const at::Tensor& input_, const std::optional<at::Tensor>& batch_sizes,
              const at::Tensor& h0_, const at::Tensor& w_ih_, const at::Tensor& w_hh_,
              const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
              const at::Tensor& output_, const at::Tensor& workspace, bool reverse,
              bool need_grad_input, bool need_grad_weights, bool need_grad_state) {
  const int64_t H = w_hh_.size(1);
  check_layer("gru_layer_bwd", input_, h0_, w_ih_, w_hh_, b_ih, b_hh, G, H, H);
  const Steps st = make_steps(input_, batch_sizes, h0_, reverse);
  TORCH_CHECK(workspace.dim() == 2 && workspace.size(0) == st.S && workspace.size(1) == 4 * H,
              "fastrnn::gru_layer_bwd: workspace must be [", st.S, ",", 4 * H,
              "] from gru_layer_fwd(need_workspace=True) of the CPU backend, got ",
              workspace.sizes());
  TORCH_CHECK(grad_output.numel() == st.S * H && grad_h_n.numel() == st.N * H &&
                  output_.numel() == st.S * H,
              "fastrnn::gru_layer_bwd: grad_output/output must have S*H elements and grad_h_n N*H");
  const at::Tensor input = weight_grad_input(input_, batch_sizes.has_value());
  const at::Tensor h0 = h0_.contiguous();
  const at::Tensor w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous();
  const at::Tensor output = output_.contiguous(), ws = workspace.contiguous();
  const int64_t C = input.size(-1), GH = G * H;
  const SerialIfSmall serial(st.S * GH * (C + H));
  at::Tensor dh = fresh_copy(grad_h_n);  // the gradient reaching each step's h
  at::Tensor dx = grad_result(need_grad_input, input.sizes(), input.options());
  at::Tensor dw_ih = grad_result(need_grad_weights, {GH, C}, input.options());
  at::Tensor dw_hh = grad_result(need_grad_weights, {GH, H}, input.options());
  at::Tensor db_ih = grad_result(need_grad_weights, {GH}, input.options());
  at::Tensor db_hh = grad_result(need_grad_weights, {GH}, input.options());
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "gru_layer_bwd", [&] {
    const auto scratch = backward_scratch<scalar_t>(
        grad_output, st.S * 2 * GH + gathered_prev_size<scalar_t>(st.S, H) +
                         2 * BiasGradSums<scalar_t>::scratch_size(st.N, GH) +
                         backward_pack_scratch(input, st.S, GH + H, GH, C, H));
    backward<scalar_t>(st, C, H, weight_grad_rows<scalar_t>(input, st),
                       w_ih.const_data_ptr<scalar_t>(), w_hh.const_data_ptr<scalar_t>(),
                       h0.const_data_ptr<scalar_t>(), output.const_data_ptr<scalar_t>(),
                       ws.const_data_ptr<scalar_t>(), scratch.dout,
                       dh.mutable_data_ptr<scalar_t>(), need_grad_state,
                       data_if<scalar_t>(need_grad_input, dx),
                       data_if<scalar_t>(need_grad_weights, dw_ih),
                       data_if<scalar_t>(need_grad_weights, dw_hh),
                       data_if<scalar_t>(need_grad_weights, db_ih),
                       data_if<scalar_t>(need_grad_weights, db_hh),
                       scratch.rest);
  });
  return {dx, state_grad(need_grad_state, dh, h0_), dw_ih, dw_hh, db_ih, db_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("gru_layer_fwd", TORCH_FN(gru_layer_fwd));
  m.impl("gru_layer_bwd", TORCH_FN(gru_layer_bwd));
}

}  // namespace cpu
}  // namespace fastrnn
