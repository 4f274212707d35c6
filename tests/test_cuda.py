"""CUDA-only checks beyond the shared parity suite (tests/test_parity.py runs on
backend='cuda' by itself once the backend is available):

* fp16/bf16 error against a float64 reference at most 2x that of torch.nn (cuDNN) in
  the same dtype, for outputs, final states and gradients;
* torch.autograd.gradcheck in float64 through torch.ops.fastrnn.*_layer;
* CUDA graph capture + replay equals eager;
* bitwise determinism across runs.

* large hidden sizes (512, 768, 1024) on the path the device's plan picks (cooperative
  on an H100), against torch.nn in float64 (fp32) and the 2x rule (bf16);
* module-level CUDA graphs: forward + backward of FusedGRU / FusedLSTM through
  torch.cuda.make_graphed_callables, replayed with new inputs; fastrnn.graphs'
  GraphedRollout (the seeds' autoregressive test loop) against its eager rollout.

Each runs on the kernel paths: the single-CTA persistent kernels (default at small
sizes), the cooperative multi-CTA kernels (FASTRNN_CUDA_TILE forces 8 hidden units per
CTA, so H=33 spans 5 CTAs with a grid barrier per step; the third number caps the chunk
in which the exchanged vector is streamed back, 32 so that H=33 takes 2 chunks forward
and 4 (GRU) backward) and the per-step fallback (FASTRNN_CUDA_PATH=step).
"""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

MODES = ["RNN_TANH", "RNN_RELU", "GRU", "LSTM"]
GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "GRU": 3, "LSTM": 4}
PATHS = {
    "persistent": {},
    "multi_cta": {"FASTRNN_CUDA_TILE": "2,8"},
    "multi_cta_chunked": {"FASTRNN_CUDA_TILE": "2,8,32"},
    "step": {"FASTRNN_CUDA_PATH": "step"},
}


@pytest.fixture(params=sorted(PATHS))
def path(request, monkeypatch):
    monkeypatch.delenv("FASTRNN_CUDA_TILE", raising=False)
    monkeypatch.delenv("FASTRNN_CUDA_PATH", raising=False)
    for key, value in PATHS[request.param].items():
        monkeypatch.setenv(key, value)
    return request.param


@pytest.fixture(scope="module", autouse=True)
def cuda_kernels():
    import fastrnn.ops  # noqa: F401  loads fastrnn._C
    if not torch._C._dispatch_has_kernel_for_dispatch_key("fastrnn::gru_layer_fwd", "CUDA"):
        pytest.skip("fastrnn._C was built without CUDA kernels")


def call(mode, x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr=None, reverse=False):
    ops = torch.ops.fastrnn
    if mode == "GRU":
        return ops.gru_layer(x, bs, h0, w_ih, w_hh, b_ih, b_hh, reverse)
    if mode == "LSTM":
        return ops.lstm_layer(x, bs, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, reverse)
    return ops.rnn_layer(x, bs, h0, w_ih, w_hh, b_ih, b_hh, mode == "RNN_RELU", reverse)


def make_args(mode, T, N, C, H, dtype, bias=True, proj=0, packed=False, requires_grad=False):
    G, P = GATES[mode], proj or H
    dev = "cuda"
    lengths = None
    if packed:
        lengths = torch.randint(1, T + 1, (N,))
        lengths[0] = T
        lengths = lengths.sort(descending=True).values
        bs = torch.tensor([(lengths > t).sum().item() for t in range(T)], dtype=torch.int64)
        x = torch.randn(int(bs.sum()), C, device=dev, dtype=dtype)
    else:
        bs = None
        x = torch.randn(T, N, C, device=dev, dtype=dtype)
    k = H ** -0.5
    def u(*s):
        return (torch.rand(*s, device=dev, dtype=dtype) * 2 - 1) * k
    t = dict(x=x, h0=torch.randn(N, P, device=dev, dtype=dtype),
             c0=torch.randn(N, H, device=dev, dtype=dtype) if mode == "LSTM" else None,
             w_ih=u(G * H, C), w_hh=u(G * H, P),
             b_ih=u(G * H) if bias else None, b_hh=u(G * H) if bias else None,
             w_hr=u(P, H) if proj else None)
    if requires_grad:
        for v in t.values():
            if v is not None:
                v.requires_grad_(True)
    return bs, t


def run(mode, bs, t, reverse=False):
    return call(mode, t["x"], bs, t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"],
                t["w_hr"], reverse)


# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["RNN_TANH", "GRU", "LSTM"])
@pytest.mark.parametrize("shape", [(20, 8, 5, 33), (50, 16, 32, 128)])
def test_low_precision_error_within_2x_torch(mode, dtype, shape, path):
    T, N, C, H = shape
    cls = {"RNN_TANH": torch.nn.RNN, "GRU": torch.nn.GRU, "LSTM": torch.nn.LSTM}[mode]
    ref = cls(C, H).double()
    x64 = torch.randn(T, N, C, dtype=torch.float64)
    h64 = torch.randn(1, N, H, dtype=torch.float64)
    c64 = torch.randn(1, N, H, dtype=torch.float64)
    gout = torch.randn(T, N, H, dtype=torch.float64)

    def torch_nn(module, x, h, c):
        x = x.detach().requires_grad_(True)
        out, hn = module(x, (h, c) if mode == "LSTM" else h)
        hn = hn[0] if mode == "LSTM" else hn
        out.backward(gout.to(out))
        return [out, hn.squeeze(0), x.grad] + [p.grad for p in module.parameters()]

    def ours(x, h, c):
        x = x.detach().requires_grad_(True)
        params = [p.detach().to("cuda", dtype).requires_grad_(True) for p in ref.parameters()]
        res = call(mode, x, None, h[0], c[0] if mode == "LSTM" else None, *params)
        res[0].backward(gout.to(res[0]))
        return [res[0], res[1], x.grad] + [p.grad for p in params]

    expect = torch_nn(ref, x64, h64, c64)
    low = cls(C, H).to("cuda", dtype)
    low.load_state_dict(ref.state_dict())
    dev = dict(device="cuda", dtype=dtype)
    theirs = torch_nn(low, x64.to(**dev), h64.to(**dev), c64.to(**dev))
    mine = ours(x64.to(**dev), h64.to(**dev), c64.to(**dev))
    names = ["output", "h_n", "grad_input", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh"]
    for name, e, a, b in zip(names, expect, theirs, mine):
        scale = e.abs().max().item()
        err_torch = (a.double().cpu() - e).abs().max().item() / scale
        err_ours = (b.double().cpu() - e).abs().max().item() / scale
        assert err_ours == err_ours, f"{name}: NaN"
        assert err_ours <= 2 * err_torch + 1e-4, f"{name}: ours {err_ours:.3e} vs torch.nn {err_torch:.3e}"


# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_float64(mode, packed, reverse, path):
    torch.manual_seed(0)
    bs, t = make_args(mode, T=4, N=3, C=2, H=33 if path.startswith("multi_cta") else 5,
                      dtype=torch.float64, packed=packed, requires_grad=True)
    names = [k for k, v in t.items() if v is not None]

    def f(*tensors):
        d = dict(t, **dict(zip(names, tensors)))
        return run(mode, bs, d, reverse)

    assert torch.autograd.gradcheck(f, [t[k] for k in names], eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_gradcheck_projected_lstm(packed, bias):
    torch.manual_seed(0)
    bs, t = make_args("LSTM", T=4, N=3, C=2, H=6, dtype=torch.float64, bias=bias, proj=4,
                      packed=packed, requires_grad=True)
    names = [k for k, v in t.items() if v is not None]

    def f(*tensors):
        return run("LSTM", bs, dict(t, **dict(zip(names, tensors))), reverse=packed)

    assert torch.autograd.gradcheck(f, [t[k] for k in names], eps=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------
def fwd_bwd(mode, bs, t, gouts, reverse=False, seed_grads=False):
    """[results..., grads of every leaf]; seed_grads: draw the output gradients here and
    return them too, as [results..., output grads..., leaf grads...]."""
    res = [r for r in run(mode, bs, t, reverse)]
    leaves = [v for v in t.values() if v is not None]
    if seed_grads:
        gouts = [torch.randn_like(r) for r in res]
    grads = torch.autograd.grad(res, leaves, [g for g in gouts[: len(res)]])
    return [r.detach() for r in res] + (list(gouts) if seed_grads else []) + list(grads)


@pytest.mark.parametrize("mode", MODES)
def test_cuda_graph_replay_equals_eager(mode, path):
    bs, t = make_args(mode, T=12, N=5, C=7, H=33, dtype=torch.float32, requires_grad=True)
    res = run(mode, bs, t)
    gouts = [torch.randn_like(r) for r in res]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph, as torch.cuda.graph requires
        for _ in range(2):
            fwd_bwd(mode, bs, t, gouts)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = fwd_bwd(mode, bs, t, gouts)
    with torch.no_grad():  # fresh inputs, written into the captured buffers
        for v in t.values():
            if v is not None:
                v.copy_(torch.randn_like(v) * 0.5)
    graph.replay()
    torch.cuda.synchronize()
    eager = fwd_bwd(mode, bs, t, gouts)
    for a, b in zip(captured, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("packed", [False, True])
def test_bitwise_deterministic(mode, packed, path):
    bs, t = make_args(mode, T=30, N=9, C=6, H=40, dtype=torch.float32, packed=packed,
                      requires_grad=True)
    res = run(mode, bs, t)
    gouts = [torch.randn_like(r) for r in res]
    first = fwd_bwd(mode, bs, t, gouts, reverse=packed)
    for _ in range(3):
        again = fwd_bwd(mode, bs, t, gouts, reverse=packed)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["RNN_TANH", "GRU", "LSTM"])
@pytest.mark.parametrize("H", [512, 768, 1024])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_large_hidden_float32_matches_reference(mode, H, packed, reverse, monkeypatch):
    """The plan's own path at the sizes the cooperative kernels are for (cooperative on an
    H100: fastrnn.cuda_paths.cuda_path), forward and backward, against fastrnn.reference
    (the spec) in float64 on the CPU."""
    from fastrnn import reference
    from fastrnn.cuda_paths import cuda_path
    monkeypatch.delenv("FASTRNN_CUDA_TILE", raising=False)
    monkeypatch.delenv("FASTRNN_CUDA_PATH", raising=False)
    torch.manual_seed(0)
    T, N, C = 6, 24, 40
    print(cuda_path(mode, H, N, torch.float32), cuda_path(mode, H, N, torch.float32, backward=True))
    bs, t = make_args(mode, T, N, C, H, torch.float32, packed=packed, requires_grad=True)
    got = fwd_bwd(mode, bs, t, None, reverse=reverse, seed_grads=True)
    t64 = {k: (v.detach().cpu().double().requires_grad_(True) if v is not None else None)
           for k, v in t.items()}
    res = reference.layer(mode, t64["x"], bs, t64["h0"], t64["c0"], t64["w_ih"], t64["w_hh"],
                          t64["b_ih"], t64["b_hh"], t64["w_hr"], reverse)
    res = [r for r in res if r is not None]
    gouts = [g.detach().cpu().double() for g in got[len(res):2 * len(res)]]
    leaves = [v for v in t64.values() if v is not None]
    expect = [r.detach() for r in res] + list(torch.autograd.grad(res, leaves, gouts))
    got = got[:len(res)] + got[2 * len(res):]
    for i, (e, g) in enumerate(zip(expect, got)):
        scale = e.abs().max().item()
        err = (g.double().cpu() - e).abs().max().item() / max(scale, 1e-30)
        assert err <= 1e-5, f"result {i}: relative error {err:.2e}"


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
@pytest.mark.parametrize("H", [512, 1024])
def test_large_hidden_bf16_within_2x_torch(mode, H, monkeypatch):
    monkeypatch.delenv("FASTRNN_CUDA_TILE", raising=False)
    monkeypatch.delenv("FASTRNN_CUDA_PATH", raising=False)
    test_low_precision_error_within_2x_torch(mode, torch.bfloat16, (8, 16, 32, H), path="plan")


# ---------------------------------------------------------------------------------------
def _module_graph_check(cls, **kwargs):
    import copy
    torch.manual_seed(0)
    T, N, C, H = 9, 4, 5, 33
    model = cls(C, H, backend="cuda", **kwargs).cuda()
    twin = copy.deepcopy(model)
    x = torch.randn(T, N, C, device="cuda", requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(model, (x,))
    for _ in range(2):  # fresh inputs each replay, compared with the eager twin
        x_new = torch.randn(T, N, C, device="cuda", requires_grad=True)
        x_twin = x_new.detach().clone().requires_grad_(True)
        out, hidden = graphed(x_new)
        out_e, hidden_e = twin(x_twin)
        h = hidden[0] if isinstance(hidden, tuple) else hidden
        h_e = hidden_e[0] if isinstance(hidden_e, tuple) else hidden_e
        g_out, g_h = torch.randn_like(out), torch.randn_like(h)
        for p in list(model.parameters()) + list(twin.parameters()):
            p.grad = None
        ((out * g_out).sum() + (h * g_h).sum()).backward()
        ((out_e * g_out).sum() + (h_e * g_h).sum()).backward()
        torch.testing.assert_close(out, out_e, rtol=0, atol=0)
        torch.testing.assert_close(h, h_e, rtol=0, atol=0)
        torch.testing.assert_close(x_new.grad, x_twin.grad, rtol=0, atol=0)
        for (name, p), p_e in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p.grad, p_e.grad, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("kwargs", [{}, {"num_layers": 2, "bidirectional": True}])
def test_module_cuda_graph_gru(kwargs, path):
    from fastrnn import FusedGRU
    _module_graph_check(FusedGRU, **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"num_layers": 2, "bidirectional": True}])
def test_module_cuda_graph_lstm(kwargs, path):
    from fastrnn import FusedLSTM
    _module_graph_check(FusedLSTM, **kwargs)


@pytest.mark.parametrize("cls_name", ["FusedGRU", "FusedLSTM"])
@pytest.mark.parametrize("unroll", [1, 4])
def test_graphed_rollout_matches_eager(cls_name, unroll, path):
    """The seeds' test loop: T=1 calls, a Linear head, the prediction fed back."""
    import fastrnn
    from fastrnn.graphs import GraphedRollout, rollout
    torch.manual_seed(0)
    rnn = getattr(fastrnn, cls_name)(input_size=1, hidden_size=16, backend="cuda").cuda().eval()
    head = torch.nn.Linear(16, 1).cuda()

    def step(x, hidden):
        out, hidden = rnn(x, hidden)
        return head(out.view(-1, 16)), hidden

    def state():
        h = torch.randn(1, 16, device="cuda")
        return (h, torch.randn(1, 16, device="cuda")) if cls_name == "FusedLSTM" else h

    graphed = GraphedRollout(step, torch.zeros(1, 1, device="cuda"), state(), unroll=unroll)
    for _ in range(2):
        x0, h0 = torch.randn(1, 1, device="cuda"), state()
        preds, h = graphed(x0, h0, steps=10)  # 10 = 2 x 4 + 2 single steps when unroll=4
        with torch.no_grad():
            expect, h_e = rollout(step, x0, h0, steps=10)
        torch.testing.assert_close(preds, expect, rtol=0, atol=0)
        torch.testing.assert_close(h, h_e, rtol=0, atol=0)
    with pytest.raises(ValueError, match="captured for"):
        graphed(torch.zeros(2, 1, device="cuda"), state(), steps=3)
