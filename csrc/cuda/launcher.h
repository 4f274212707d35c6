// Torch side of the CUDA kernels, shared by rnn.cu, gru.cu and lstm.cu: argument checks,
// the input/weight GEMMs, and the run of the path that path_choice.h's choose_path picks:
// the persistent kernels (single-CTA or cooperative, one launch per layer-direction) or
// the per-step fallback (one cuBLAS GEMM + one pointwise kernel per step). Neither path
// allocates inside its time loop or synchronises with the host, so both can be captured in
// a CUDA graph (packed input needs one pinned host-to-device copy of batch_sizes before
// the loop).
//
// Only c10/cuda headers are used (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS and
// cuSPARSE headers) so that tests/test_cuda_compile.py can compile these files on a
// machine with nvcc and a CPU-only torch.
//
// Environment, read per call (cheap), for testing and tuning on a GPU:
//   FASTRNN_CUDA_PATH=step      force the per-step fallback
//   FASTRNN_CUDA_TILE=nb,hj[,kc] force the persistent tile (batch rows, hidden units per CTA)
//                               and cap the cooperative path's exchange chunk
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdlib>
#include <cstring>
#include <tuple>
#include <vector>

#include "common.cuh"

namespace fastrnn {
namespace cuda {

using at::Tensor;

template <typename S> struct CudaScalar { using type = S; };
template <> struct CudaScalar<at::Half> { using type = __half; };
template <> struct CudaScalar<at::BFloat16> { using type = __nv_bfloat16; };

template <typename T> T* ptr(const Tensor& t) {
  return t.defined() && t.numel() > 0 ? reinterpret_cast<T*>(t.data_ptr()) : nullptr;
}

inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline bool force_step_path() {
  const char* v = std::getenv("FASTRNN_CUDA_PATH");
  return v != nullptr && std::strcmp(v, "step") == 0;
}

// FASTRNN_CUDA_TILE=nb,hj[,kc]; zeros where not forced.
inline void forced_tile(int& nb, int& hj, int& kc) {
  nb = hj = kc = 0;
  if (const char* v = std::getenv("FASTRNN_CUDA_TILE")) {
    char rest = 0;
    const int n = std::sscanf(v, "%d,%d,%d%c", &nb, &hj, &kc, &rest);
    TORCH_CHECK((n == 2 || n == 3) && nb > 0 && hj > 0 && (n == 2 || kc > 0),
                "fastrnn: FASTRNN_CUDA_TILE must be 'nb,hj' or 'nb,hj,kc' (positive integers), got '", v,
                "'");
    if (n == 2) kc = 0;
  }
}

// What path_choice.h's choose_path needs of the device (fastrnn/cuda_paths.py reads the
// same three properties through torch.cuda).
inline DeviceLimits device_limits(int device) {
  DeviceLimits d;
  int smem = 0, coop = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sm_count, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, device));
  d.smem_optin = static_cast<size_t>(smem);
  d.cooperative = coop != 0;
  return d;
}

// The step table (see common.cuh): host copies for the per-step loop, and the device
// int32 [2*T] array for the persistent kernels (undefined for padded input).
struct Steps {
  int64_t T = 0, N = 0, S = 0;
  bool packed = false;
  std::vector<int64_t> bs, off;
  Tensor device;
};

inline Steps make_steps(const Tensor& input, const c10::optional<Tensor>& batch_sizes) {
  Steps st;
  st.packed = batch_sizes.has_value() && batch_sizes->defined();
  if (!st.packed) {
    TORCH_CHECK(input.dim() == 3, "fastrnn: padded input must be [T, N, C], got ", input.sizes());
    st.T = input.size(0);
    st.N = input.size(1);
    st.S = st.T * st.N;
    for (int64_t t = 0; t < st.T; ++t) {
      st.bs.push_back(st.N);
      st.off.push_back(t * st.N);
    }
    return st;
  }
  const Tensor& b = *batch_sizes;
  TORCH_CHECK(input.dim() == 2, "fastrnn: packed input must be [S, C], got ", input.sizes());
  TORCH_CHECK(b.device().is_cpu() && b.scalar_type() == at::kLong && b.dim() == 1,
              "fastrnn: batch_sizes must be a 1-D int64 CPU tensor");
  const Tensor bc = b.contiguous();
  const int64_t* p = bc.data_ptr<int64_t>();
  st.T = bc.numel();
  st.N = st.T > 0 ? p[0] : 0;
  std::vector<int32_t> table(2 * st.T);
  for (int64_t t = 0; t < st.T; ++t) {
    TORCH_CHECK(p[t] > 0 && p[t] <= st.N && (t == 0 || p[t] <= p[t - 1]),
                "fastrnn: batch_sizes must be positive and non-increasing");
    st.bs.push_back(p[t]);
    st.off.push_back(st.S);
    table[t] = static_cast<int32_t>(p[t]);
    table[st.T + t] = static_cast<int32_t>(st.S);
    st.S += p[t];
  }
  TORCH_CHECK(st.S == input.size(0), "fastrnn: sum(batch_sizes) = ", st.S,
              " does not match the packed input's ", input.size(0), " rows");
  TORCH_CHECK(st.S < (int64_t{1} << 31), "fastrnn: packed input too long for int32 row offsets");
  if (st.T > 0) {
    // Pinned staging makes the copy asynchronous (no host sync) and capturable.
    Tensor host = at::empty({2 * st.T}, at::TensorOptions().dtype(at::kInt).pinned_memory(true));
    std::memcpy(host.data_ptr<int32_t>(), table.data(), table.size() * sizeof(int32_t));
    st.device = host.to(input.device(), /*non_blocking=*/true);
  }
  return st;
}

// Checks shared by the three cells. G gates; P is the state size (H unless projected).
inline void check_layer(const char* op, int64_t G, const Tensor& input, const Steps& st,
                        const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                        const c10::optional<Tensor>& b_ih, const c10::optional<Tensor>& b_hh,
                        const Tensor& w_hr) {
  const auto dtype = input.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              op, ": CUDA kernels support float32, float64, float16 and bfloat16, got ", dtype);
  const bool bias = b_ih.has_value() && b_ih->defined();
  TORCH_CHECK(bias == (b_hh.has_value() && b_hh->defined()), op, ": b_ih and b_hh must both be given or both be None");
  std::vector<std::pair<const char*, Tensor>> all = {{"h0", h0}, {"w_ih", w_ih}, {"w_hh", w_hh}};
  if (c0.defined()) all.push_back({"c0", c0});
  if (w_hr.defined()) all.push_back({"w_hr", w_hr});
  if (bias) {
    all.push_back({"b_ih", *b_ih});
    all.push_back({"b_hh", *b_hh});
  }
  TORCH_CHECK(input.is_cuda(), op, ": input must be a CUDA tensor");
  for (const auto& kv : all) {
    TORCH_CHECK(kv.second.device() == input.device(), op, ": ", kv.first, " is on ", kv.second.device(),
                " but input is on ", input.device());
    TORCH_CHECK(kv.second.scalar_type() == dtype, op, ": ", kv.first, " has dtype ", kv.second.scalar_type(),
                " but input has ", dtype);
  }
  const int64_t C = input.size(-1);
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % G == 0, op, ": w_hh must be [", G, "*H, P], got ", w_hh.sizes());
  const int64_t H = w_hh.size(0) / G;
  const int64_t P = w_hr.defined() ? w_hr.size(0) : H;
  TORCH_CHECK(w_hh.size(1) == P, op, ": w_hh must be [", G * H, ", ", P, "], got ", w_hh.sizes());
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == G * H && w_ih.size(1) == C, op, ": w_ih must be [",
              G * H, ", ", C, "], got ", w_ih.sizes());
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == st.N && h0.size(1) == P, op, ": h0 must be [", st.N, ", ", P,
              "], got ", h0.sizes());
  if (c0.defined())
    TORCH_CHECK(c0.dim() == 2 && c0.size(0) == st.N && c0.size(1) == H, op, ": c0 must be [", st.N, ", ", H,
                "], got ", c0.sizes());
  if (w_hr.defined())
    TORCH_CHECK(w_hr.dim() == 2 && w_hr.size(1) == H && w_hr.size(0) < H, op, ": w_hr must be [P, ", H,
                "] with P < H, got ", w_hr.sizes());
  if (bias)
    TORCH_CHECK(b_ih->dim() == 1 && b_ih->size(0) == G * H && b_hh->dim() == 1 && b_hh->size(0) == G * H, op,
                ": b_ih and b_hh must be [", G * H, "]");
  TORCH_CHECK(st.N < (int64_t{1} << 31) && H * G < (int64_t{1} << 30), op, ": sizes too large");
}

struct FwdResult {
  Tensor out, h_n, c_n, ws;
};

template <typename Cell>
FwdResult layer_fwd(const char* op, const Tensor& input, const c10::optional<Tensor>& batch_sizes,
                    const Tensor& h0_, const Tensor& c0_, const Tensor& w_ih, const Tensor& w_hh_,
                    const c10::optional<Tensor>& b_ih, const c10::optional<Tensor>& b_hh,
                    const Tensor& w_hr, bool reverse, bool need_workspace) {
  const Steps st = make_steps(input, batch_sizes);
  check_layer(op, Cell::G, input, st, h0_, c0_, w_ih, w_hh_, b_ih, b_hh, w_hr);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t G = Cell::G, H = w_hh_.size(0) / G, P = h0_.size(1), N = st.N, S = st.S;
  const bool bias = b_ih.has_value() && b_ih->defined();
  const bool proj = w_hr.defined();
  const bool save = need_workspace && Cell::WS > 0;
  const auto opts = input.options();
  const Tensor h0 = h0_.contiguous(), w_hh = w_hh_.contiguous();
  const Tensor c0 = c0_.defined() ? c0_.contiguous() : c0_;
  const Tensor bhh = bias ? b_hh->contiguous() : Tensor();

  FwdResult r;
  r.out = at::empty({S, P}, opts);
  r.ws = at::empty({save ? S * Cell::WS * H : 0}, opts);
  if (S == 0) {
    r.h_n = h0.clone();
    if (Cell::HAS_C) r.c_n = c0.clone();
    r.out = st.packed ? r.out : r.out.view({st.T, N, P});
    return r;
  }
  const Tensor x2d = st.packed ? input : input.reshape({S, input.size(2)});
  // One GEMM for the input projection of every step; TF32 only if the user allowed it
  // (ATen's matmul honours torch.backends.cuda.matmul.allow_tf32).
  const Tensor gx = bias ? at::addmm(*b_ih, x2d, w_ih.t()) : at::mm(x2d, w_ih.t());
  r.h_n = at::empty({N, P}, opts);
  if (Cell::HAS_C) r.c_n = at::empty({N, H}, opts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "fastrnn_cuda_layer", [&] {
    using T = typename CudaScalar<scalar_t>::type;
    using L = Launch<T, Cell>;
    int nb_force, hj_force, kc_force;
    forced_tile(nb_force, hj_force, kc_force);
    const Plan plan = L::plan(false, N, H, P, device_limits(input.get_device()), nb_force, hj_force, kc_force,
                              force_step_path());
    if (plan.ok) {
      FwdArgs<T> a{};
      a.gx = ptr<T>(gx);
      a.w_hh = ptr<T>(w_hh);
      a.b_hh = ptr<T>(bhh);
      a.h0 = ptr<T>(h0);
      a.c0 = ptr<T>(c0);
      a.steps = ptr<int>(st.device);
      a.out = ptr<T>(r.out);
      a.h_n = ptr<T>(r.h_n);
      a.c_n = ptr<T>(r.c_n);
      a.ws = ptr<T>(r.ws);
      a.nsteps = st.T; a.N = N; a.H = H;
      a.nb = plan.nb; a.hj = plan.hj; a.kc = plan.kc; a.ldw = plan.ldw;
      Tensor hx, barrier;
      if (plan.slices > 1) {
        hx = at::empty({2, N, H}, opts.dtype(acc_dtype(input.scalar_type())));
        barrier = at::empty({plan.tiles}, opts.dtype(at::kInt));
        C10_CUDA_CHECK(cudaMemsetAsync(barrier.data_ptr(), 0, plan.tiles * sizeof(int), stream));
        a.hx = reinterpret_cast<acc_t<T>*>(hx.data_ptr());
        a.barrier = reinterpret_cast<unsigned*>(barrier.data_ptr());
      }
      C10_CUDA_CHECK(L::persistent_fwd(a, plan, bias, save, reverse, stream));
      return;
    }
    // Per-step fallback: the state lives in hstate (dtype) / cstate (accumulation dtype),
    // both fresh copies since the kernels update them in place.
    const Tensor hstate = h0.clone();
    const Tensor cstate = Cell::HAS_C ? c0.to(acc_dtype(input.scalar_type()), false, /*copy=*/true) : Tensor();
    const Tensor hh = at::empty({N, G * H}, opts);
    const Tensor m = proj ? at::empty({N, H}, opts) : Tensor();
    const Tensor w_hh_t = w_hh.t();
    for (int64_t s = 0; s < st.T; ++s) {
      const int64_t t = reverse ? st.T - 1 - s : s, bs = st.bs[t], off = st.off[t];
      Tensor hh_rows = hh.narrow(0, 0, bs);
      at::mm_out(hh_rows, hstate.narrow(0, 0, bs), w_hh_t);
      StepFwdArgs<T> a{};
      a.gx = ptr<T>(gx) + off * G * H;
      a.hh = ptr<T>(hh);
      a.b_hh = ptr<T>(bhh);
      a.hstate = ptr<T>(hstate);
      a.cstate = Cell::HAS_C ? reinterpret_cast<acc_t<T>*>(cstate.data_ptr()) : nullptr;
      a.out = proj ? ptr<T>(m) : ptr<T>(r.out) + off * P;
      a.ws = save ? ptr<T>(r.ws) + off * Cell::WS * H : nullptr;
      a.bs = bs; a.H = H;
      C10_CUDA_CHECK(L::step_fwd(a, bias, save, proj, stream));
      if (proj) {
        Tensor out_rows = r.out.narrow(0, off, bs);
        at::mm_out(out_rows, m.narrow(0, 0, bs), w_hr.t());
        hstate.narrow(0, 0, bs).copy_(out_rows);
      }
    }
    r.h_n.copy_(hstate);
    if (Cell::HAS_C) r.c_n.copy_(cstate);
  });
  if (!st.packed) r.out = r.out.view({st.T, N, P});
  return r;
}

struct BwdResult {
  Tensor grad_input, grad_h0, grad_c0, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh, grad_w_hr;
};

template <typename Cell>
BwdResult layer_bwd(const char* op, const Tensor& grad_output, const Tensor& grad_h_n,
                    const Tensor& grad_c_n, const Tensor& input,
                    const c10::optional<Tensor>& batch_sizes, const Tensor& h0_, const Tensor& c0_,
                    const Tensor& w_ih, const Tensor& w_hh_, const c10::optional<Tensor>& b_ih,
                    const c10::optional<Tensor>& b_hh, const Tensor& w_hr, const Tensor& output,
                    const Tensor& workspace, bool reverse, bool need_grad_input,
                    bool need_grad_weights, bool need_grad_state) {
  const Steps st = make_steps(input, batch_sizes);
  check_layer(op, Cell::G, input, st, h0_, c0_, w_ih, w_hh_, b_ih, b_hh, w_hr);
  const c10::cuda::CUDAGuard guard(input.device());
  const int64_t G = Cell::G, H = w_hh_.size(0) / G, P = h0_.size(1), N = st.N, S = st.S;
  const bool proj = w_hr.defined();
  const auto opts = input.options();
  TORCH_CHECK(grad_output.numel() == S * P && output.numel() == S * P && grad_h_n.numel() == N * P,
              op, ": grad_output/output/grad_h_n do not match the layer's shapes");
  TORCH_CHECK(workspace.numel() == S * Cell::WS * H, op,
              ": workspace does not match; it must come from the CUDA forward run with need_workspace=True");
  const Tensor h0 = h0_.contiguous(), w_hh = w_hh_.contiguous();
  const Tensor c0 = c0_.defined() ? c0_.contiguous() : c0_;
  const Tensor gout = grad_output.reshape({S, P}).contiguous();
  const Tensor out2d = output.reshape({S, P}).contiguous();
  const Tensor ws = workspace.contiguous();
  const Tensor ghn = grad_h_n.contiguous();
  const Tensor gcn = Cell::HAS_C ? grad_c_n.contiguous() : Tensor();
  const Tensor x2d = st.packed ? input : input.reshape({S, input.size(-1)});

  const Tensor dgx = at::empty({S, G * H}, opts);
  const Tensor dgh = Cell::SPLIT_DGH ? at::empty({S, G * H}, opts) : dgx;
  const Tensor hprev = at::empty({S, P}, opts);
  const Tensor dhtot = proj ? at::empty({S, P}, opts) : Tensor();  // dh per row, for grad_w_hr
  const Tensor m_all = proj ? at::empty({S, H}, opts) : Tensor();
  BwdResult r;
  r.grad_h0 = at::empty({N, P}, opts);
  if (Cell::HAS_C) r.grad_c0 = at::empty({N, H}, opts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  if (S > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "fastrnn_cuda_layer", [&] {
      using T = typename CudaScalar<scalar_t>::type;
      using L = Launch<T, Cell>;
      int nb_force, hj_force, kc_force;
      forced_tile(nb_force, hj_force, kc_force);
      const Plan plan = L::plan(true, N, H, P, device_limits(input.get_device()), nb_force, hj_force,
                                kc_force, force_step_path());
      if (plan.ok) {
        BwdArgs<T> a{};
        a.grad_out = ptr<T>(gout);
        a.grad_h_n = ptr<T>(ghn);
        a.grad_c_n = ptr<T>(gcn);
        a.w_hh = ptr<T>(w_hh);
        a.h0 = ptr<T>(h0);
        a.c0 = ptr<T>(c0);
        a.out = ptr<T>(out2d);
        a.ws = ptr<T>(ws);
        a.steps = ptr<int>(st.device);
        a.dgx = ptr<T>(dgx);
        a.dgh = ptr<T>(dgh);
        a.hprev = ptr<T>(hprev);
        a.grad_h0 = ptr<T>(r.grad_h0);
        a.grad_c0 = ptr<T>(r.grad_c0);
        a.nsteps = st.T; a.N = N; a.H = H;
        a.nb = plan.nb; a.hj = plan.hj; a.kc = plan.kc; a.ldw = plan.ldw;
        Tensor xch, barrier;
        if (plan.slices > 1) {
          xch = at::empty({2, N, G * H}, opts.dtype(acc_dtype(input.scalar_type())));
          barrier = at::empty({plan.tiles}, opts.dtype(at::kInt));
          C10_CUDA_CHECK(cudaMemsetAsync(barrier.data_ptr(), 0, plan.tiles * sizeof(int), stream));
          a.xch = reinterpret_cast<acc_t<T>*>(xch.data_ptr());
          a.barrier = reinterpret_cast<unsigned*>(barrier.data_ptr());
        }
        C10_CUDA_CHECK(L::persistent_bwd(a, plan, reverse, stream));
        return;
      }
      // Per-step fallback: dh (dtype, the GEMM's output) and dc (accumulation dtype).
      const Tensor dh = ghn.clone();
      const Tensor dc = Cell::HAS_C ? gcn.to(acc_dtype(input.scalar_type()), false, /*copy=*/true) : Tensor();
      const Tensor direct = Cell::HAS_DIRECT ? at::empty({N, H}, opts) : Tensor();
      const Tensor dm = proj ? at::empty({N, H}, opts) : Tensor();
      for (int64_t s = 0; s < st.T; ++s) {
        const int64_t t = reverse ? s : st.T - 1 - s, bs = st.bs[t], off = st.off[t];
        const int64_t tp = reverse ? t + 1 : t - 1;
        const bool tp_ok = tp >= 0 && tp < st.T;
        const int64_t bsp = tp_ok ? st.bs[tp] : 0, offp = tp_ok ? st.off[tp] : 0;
        if (proj) {
          Tensor dhtot_rows = dhtot.narrow(0, off, bs), dm_rows = dm.narrow(0, 0, bs);
          at::add_out(dhtot_rows, dh.narrow(0, 0, bs), gout.narrow(0, off, bs));
          at::mm_out(dm_rows, dhtot_rows, w_hr);
        }
        StepBwdArgs<T> a{};
        a.dh = proj ? ptr<T>(dm) : ptr<T>(dh);
        a.grad_out = ptr<T>(gout) + off * P;
        a.dcstate = Cell::HAS_C ? reinterpret_cast<acc_t<T>*>(dc.data_ptr()) : nullptr;
        a.ws = Cell::WS > 0 ? ptr<T>(ws) + off * Cell::WS * H : nullptr;
        a.ws_prev = Cell::WS > 0 && bsp > 0 ? ptr<T>(ws) + offp * Cell::WS * H : nullptr;
        a.out = ptr<T>(out2d) + off * P;
        a.out_prev = bsp > 0 ? ptr<T>(out2d) + offp * P : nullptr;
        a.h0 = ptr<T>(h0);
        a.c0 = ptr<T>(c0);
        a.dgx = ptr<T>(dgx) + off * G * H;
        a.dgh = ptr<T>(dgh) + off * G * H;
        a.direct = ptr<T>(direct);
        a.hprev = proj ? nullptr : ptr<T>(hprev) + off * P;
        a.m = proj ? ptr<T>(m_all) + off * H : nullptr;
        a.bs = bs; a.bsp = bsp; a.H = H;
        C10_CUDA_CHECK(L::step_bwd(a, proj, stream));
        const Tensor dg_rows = dgh.narrow(0, off, bs);
        Tensor dh_rows = dh.narrow(0, 0, bs);
        if (Cell::HAS_DIRECT)
          at::addmm_out(dh_rows, direct.narrow(0, 0, bs), dg_rows, w_hh);
        else
          at::mm_out(dh_rows, dg_rows, w_hh);
      }
      if (proj)
        C10_CUDA_CHECK(L::build_hprev(ptr<T>(out2d), ptr<T>(h0), ptr<int>(st.device), ptr<T>(hprev), st.T, N, P,
                                      reverse, stream));
      r.grad_h0.copy_(dh);
      if (Cell::HAS_C) r.grad_c0.copy_(dc);
    });
    // Input and weight gradients, where asked for: GEMMs over all steps at once.
    if (need_grad_input) r.grad_input = at::mm(dgx, w_ih).view(input.sizes());
    if (need_grad_weights) {
      r.grad_w_ih = at::mm(dgx.t(), x2d);
      r.grad_w_hh = at::mm(dgh.t(), hprev);
      r.grad_b_ih = dgx.sum(0);
      r.grad_b_hh = Cell::SPLIT_DGH ? dgh.sum(0) : r.grad_b_ih.clone();
      if (proj) r.grad_w_hr = at::mm(dhtot.t(), m_all);
    }
  } else {
    if (need_grad_input) r.grad_input = at::zeros_like(input);
    r.grad_h0.copy_(ghn);
    if (Cell::HAS_C) r.grad_c0.copy_(gcn);
    if (need_grad_weights) {
      r.grad_w_ih = at::zeros_like(w_ih);
      r.grad_w_hh = at::zeros_like(w_hh);
      r.grad_b_ih = at::zeros({G * H}, opts);
      r.grad_b_hh = at::zeros({G * H}, opts);
      if (proj) r.grad_w_hr = at::zeros_like(w_hr);
    }
  }
  // What was not asked for (or, grad_w_hr, does not exist) comes back empty, as on the CPU.
  for (Tensor* g : {&r.grad_input, &r.grad_w_ih, &r.grad_w_hh, &r.grad_b_ih, &r.grad_b_hh,
                    &r.grad_w_hr})
    if (!g->defined()) *g = at::empty({0}, opts);
  // The states' gradients are computed whether asked for or not (the recurrence carries
  // them); not asked for, they come back empty as well.
  if (!need_grad_state) {
    r.grad_h0 = at::empty({0}, opts);
    if (Cell::HAS_C) r.grad_c0 = at::empty({0}, opts);
  }
  return r;
}

}  // namespace cuda
}  // namespace fastrnn
