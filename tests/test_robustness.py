"""Robustness on every backend: poisoned memory really poisons, NaN and infinities
propagate as in torch.nn, very long sequences, element counts past 2^31, no memory growth
over many calls, and correct results from several Python threads at once.
"""
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from torch import nn

import fastrnn
from conftest import SAMPLED_BACKENDS, _device_of, backends_under_test
from poison import poisoned_memory
from test_fuzz import assert_close

HERE = os.path.dirname(os.path.abspath(__file__))
LAYERS = {"RNN_TANH": (nn.RNN, fastrnn.FusedRNN, {}),
          "RNN_RELU": (nn.RNN, fastrnn.FusedRNN, {"nonlinearity": "relu"}),
          "GRU": (nn.GRU, fastrnn.FusedGRU, {}),
          "LSTM": (nn.LSTM, fastrnn.FusedLSTM, {}),
          "LSTM_proj": (nn.LSTM, fastrnn.FusedLSTM, {"proj_size": 2})}


def rss_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def layer_pair(mode, backend, device, dtype=torch.float64, **options):
    torch_class, fused_class, extra = LAYERS[mode]
    torch.manual_seed(0)
    expected = torch_class(3, 4, dtype=dtype, **extra, **options).to(device)
    fused = fused_class(3, 4, dtype=dtype, backend=backend, **extra, **options).to(device)
    fused.load_state_dict(expected.state_dict())
    return expected, fused


# --- Poisoned memory (tests/poison.py) -------------------------------------------------

def test_poison_reaches_every_allocation_path():
    with poisoned_memory():
        base = torch.ones(3)
        grown = torch.ones(2)
        grown.resize_(6)
        floats = [torch.empty(5), torch.empty_like(base), base.new_empty(4),
                  torch.empty_strided((2, 3), (1, 2)), grown[2:],
                  torch.ops.aten.empty.memory_format([4], dtype=torch.float64),
                  torch.empty(3, dtype=torch.bfloat16)]
        integers = torch.empty(3, dtype=torch.int64)
    assert all(t.isnan().all() for t in floats)
    assert (integers == torch.iinfo(torch.int64).max).all()


def test_poison_catches_an_element_a_backend_forgets(monkeypatch):
    """A backend that leaves the last output element unwritten must fail a comparison."""
    real_layer = fastrnn.backends.layer_function("reference")

    def forgetful_layer(*args):
        output, h_n, c_n = real_layer(*args)
        buffer = torch.empty_like(output).view(-1)
        buffer[:-1] = output.reshape(-1)[:-1]
        return buffer.view(output.shape), h_n, c_n

    monkeypatch.setattr(fastrnn.backends, "layer_for", lambda *args: forgetful_layer)
    expected, fused = layer_pair("GRU", "reference", torch.device("cpu"))
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    with poisoned_memory():
        output, _ = fused(x)
    with pytest.raises(AssertionError, match="non-finite positions"):
        assert_close("output", output, expected(x)[0], 1e-10)


# --- NaN and infinities ----------------------------------------------------------------

def nonfinite_input(scenario, dtype):
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3, 3, dtype=dtype, generator=generator)
    h0 = None
    if scenario == "nan_input":
        x[2, 0, 1] = float("nan")
    elif scenario == "inf_input":
        x[1, 1, 0], x[3, 2, 2] = float("inf"), -float("inf")
    elif scenario == "nan_state":
        h0 = torch.randn(4, 3, 4, dtype=dtype, generator=generator)
        h0[1, 2, 3] = float("nan")
    elif scenario == "saturating":
        # Finite but far past every gate's saturation: exp() overflows inside a naive
        # sigmoid or tanh, and inf/inf would then make NaN where torch.nn has none.
        x[:, 1] *= 1e4 if dtype == torch.float32 else 1e150
    return x, h0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("scenario", ["nan_input", "inf_input", "nan_state", "saturating"])
@pytest.mark.parametrize("mode", LAYERS)
def test_nonfinite_values_propagate_like_torch_nn(backend, device, mode, scenario, dtype):
    """Same NaN and infinity positions as torch.nn (run in the same dtype: saturation
    depends on it) in every output; gradients non-finite in the same places (whether
    0 * inf came out NaN or a tiny * inf came out inf may differ) and equal elsewhere."""
    if backend in SAMPLED_BACKENDS and dtype == torch.float64 and mode != "GRU":
        pytest.skip("interpreter-backed backend: float32 and GRU carry the check")
    expected_module, fused = layer_pair(mode, backend, device, dtype, num_layers=2,
                                        bidirectional=True)
    x, h0 = nonfinite_input(scenario, dtype)
    if h0 is not None and mode.startswith("LSTM"):
        h0 = (h0[..., :expected_module.proj_size or 4], torch.zeros(4, 3, 4, dtype=dtype))

    def outputs_and_grads(module):
        leaf = x.to(device).requires_grad_()
        hx = None if h0 is None else (tuple(s.to(device) for s in h0)
                                      if isinstance(h0, tuple) else h0.to(device))
        output, hidden = module(leaf, hx)
        outputs = [output] + (list(hidden) if isinstance(hidden, tuple) else [hidden])
        loss = sum(o.sum() for o in outputs)
        return outputs, torch.autograd.grad(loss, [leaf, *module.parameters()])

    expected_outputs, expected_grads = outputs_and_grads(expected_module)
    outputs, grads = outputs_and_grads(fused)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5
    for name, actual, expected in zip(["output", "h_n", "c_n"], outputs, expected_outputs):
        assert_close(name, actual, expected, tolerance)
    names = ["grad input"] + [f"grad {name}" for name, _ in fused.named_parameters()]
    for name, actual, expected in zip(names, grads, expected_grads):
        assert_close(name, actual, expected, tolerance, exact_nonfinite=False)


# --- Very long sequences ---------------------------------------------------------------

LONG_STEPS, CHECKED_STEPS = 100_000, 300


@pytest.mark.parametrize("mode", ["GRU", "LSTM"])
def test_very_long_sequence(backend, device, mode):
    """T=100000, B=1, H=4, forward and backward: no stack or memory blow-up, and the
    first and last steps agree with torch.nn run on those steps alone (torch.nn itself
    takes ~10-40 s over the whole sequence on these machines, too slow to compare all).
    The reference backend's Python loop needs ~20 s forward and ~50 s backward here, and
    an interpreter-backed backend far longer: both skip (the compiled backends run)."""
    if backend == "reference" or backend in SAMPLED_BACKENDS:
        pytest.skip(f"{backend}: a Python-level loop over 100000 steps takes minutes")
    expected_module, fused = layer_pair(mode, backend, device)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(LONG_STEPS, 1, 3, dtype=torch.float64, generator=generator).to(device)
    before = rss_bytes()
    leaf = x.clone().requires_grad_()
    output, hidden = fused(leaf)
    output[-1].sum().backward()
    growth = rss_bytes() - before
    assert growth < 256 * 2**20, f"RSS grew {growth / 2**20:.0f} MiB"
    assert output.isfinite().all() and leaf.grad.isfinite().all()
    assert all(p.grad.isfinite().all() for p in fused.parameters())
    h_n = hidden[0] if isinstance(hidden, tuple) else hidden
    torch.testing.assert_close(h_n[0], output[-1], rtol=0, atol=0)

    head = expected_module(x[:CHECKED_STEPS])[0]
    assert_close("output head", output[:CHECKED_STEPS], head, 1e-10)
    if mode == "GRU":  # the state before the tail is the output there (c is not exposed)
        tail = x[-CHECKED_STEPS:].clone().requires_grad_()
        tail_output, _ = expected_module(tail, output[-CHECKED_STEPS - 1:-CHECKED_STEPS]
                                         .detach())
        tail_output[-1].sum().backward()
        assert_close("output tail", output[-CHECKED_STEPS:], tail_output, 1e-10)
        assert_close("grad input tail", leaf.grad[-CHECKED_STEPS:], tail.grad, 1e-10)


# --- Element counts past 2^31 ----------------------------------------------------------

# Output [T,N,H] past 2^31 elements: BIG with weights small enough to allocate, BIG_META
# with few steps (the reference loop runs per step, even on meta tensors).
BIG = dict(T=2**11, N=2**10 + 1, C=1, H=2**10)
BIG_META = dict(T=2, N=2**16 + 1, C=1, H=2**14)


def test_element_counts_past_int32_trace_on_meta(backend):
    """Shapes past 2^31 elements flow through the module code and every backend's
    shape logic (fake kernels for compiled ops) without allocating anything."""
    T, N, C, H = BIG_META["T"], BIG_META["N"], BIG_META["C"], BIG_META["H"]
    x = torch.empty(T, N, C, device="meta")
    if backend == "reference":
        output, (h_n, c_n) = fastrnn.FusedLSTM(C, H, device="meta", backend=backend)(x)
    else:
        if backend not in ("cpu", "cuda"):
            pytest.skip(f"{backend} has no fake (meta) implementation to trace")
        meta = lambda *shape: torch.empty(*shape, device="meta")
        output, h_n, c_n = fastrnn.ops.layer("LSTM", x, None, meta(N, H), meta(N, H),
                                             meta(4 * H, C), meta(4 * H, H), None, None,
                                             None, False)
    assert output.shape == (T, N, H) and output.numel() > 2**31
    assert h_n.shape[-2:] == c_n.shape[-2:] == (N, H)


@pytest.fixture(scope="module")
def big_layer_outcomes():
    """{backend: what a child process printed} for every CPU backend under test, from one
    child whose address space is capped 3 GiB above its start, running a layer whose
    output holds > 2^31 elements (> 8 GiB)."""
    names = [name for name in backends_under_test() if _device_of(name).type == "cpu"]
    T, N, C, H = BIG["T"], BIG["N"], BIG["C"], BIG["H"]
    script = textwrap.dedent(f"""
        import resource, torch, fastrnn
        with open("/proc/self/statm") as statm:
            size = int(statm.read().split()[0]) * resource.getpagesize()
        cap = size + 3 * 2**30
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        for backend in {names!r}:
            layer = fastrnn.FusedGRU({C}, {H}, backend=backend)
            try:
                with torch.no_grad():
                    layer(torch.zeros({T}, {N}, {C}))
                outcome = "returned a result that cannot exist"
            except (RuntimeError, MemoryError, ValueError) as error:
                outcome = "raised " + type(error).__name__ + ": " + str(error)[:200]
            print(backend, "|", outcome.replace(chr(10), " "), flush=True)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    child = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, timeout=180)
    outcomes = dict(line.split(" | ", 1) for line in child.stdout.splitlines() if " | " in line)
    outcomes["exit"] = f"exit {child.returncode}\n{child.stdout}\n{child.stderr[-2000:]}"
    return outcomes


def test_element_counts_past_int32_fail_cleanly_without_the_memory(backend, device,
                                                                   big_layer_outcomes):
    """Without the memory for them, buffers past 2^31 elements must end in a Python
    exception (a size check or the allocator's refusal) before any kernel touches memory:
    no crash, no hang, no result from a wrapped-around index."""
    if device.type != "cpu":
        pytest.skip("the address-space cap only bounds host memory")
    outcome = big_layer_outcomes.get(backend)
    assert outcome is not None, f"the child died before {backend}: {big_layer_outcomes['exit']}"
    assert outcome.startswith("raised"), f"{backend}: {outcome}"


# --- Repeated calls and threads -------------------------------------------------------

def test_repeated_forward_backward_does_not_grow_memory(backend, device):
    """10000 forward+backward calls (fewer for slow backends) across cells and packed
    input; resident memory after the warm-up must stay within 24 MiB."""
    calls = {"reference": 2000}.get(backend, 100 if backend in SAMPLED_BACKENDS else 10000)
    modules = [layer_pair(mode, backend, device, torch.float32)[1]
               for mode in ("GRU", "LSTM_proj", "RNN_RELU")]
    x = torch.randn(5, 2, 3, device=device)
    packed = nn.utils.rnn.pack_padded_sequence(x, [5, 3])

    def call(index):
        module = modules[index % 3]
        output, _ = module(packed if index % 2 else x)
        data = output.data if index % 2 else output
        data.sum().backward()

    for index in range(min(200, calls // 5)):
        call(index)
    before = rss_bytes()
    for index in range(calls):
        call(index)
    growth = rss_bytes() - before
    assert growth < 24 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB over {calls} calls"


def test_concurrent_calls_from_threads(backend, device):
    """Four Python threads share one module (the C++ kernels release the GIL) and each
    gets exactly what a lone call gives."""
    if backend == "triton" and device.type == "cpu":
        pytest.skip("the Triton interpreter patches triton.language globally while a kernel "
                    "runs, so it cannot run kernels from two threads at once")
    _, fused = layer_pair("LSTM", backend, device, num_layers=2, bidirectional=True)
    generator = torch.Generator().manual_seed(9)
    inputs = [torch.randn(7, 3, 3, dtype=torch.float64, generator=generator).to(device)
              for _ in range(4)]
    rounds = 3 if backend in SAMPLED_BACKENDS else 20

    def result(x):
        leaf = x.clone().requires_grad_()
        output, (h_n, c_n) = fused(leaf)
        grads = torch.autograd.grad(output.sum() + h_n.sum() + c_n.sum(),
                                    [leaf, *fused.parameters()])
        return [output.detach(), h_n.detach(), c_n.detach(), *grads]

    expected = [result(x) for x in inputs]
    failures = []

    def worker(index):
        try:
            for _ in range(rounds):
                for actual, wanted in zip(result(inputs[index]), expected[index]):
                    torch.testing.assert_close(actual, wanted, rtol=1e-12, atol=1e-12)
        except Exception as error:  # reported below, with the thread's index
            failures.append(f"thread {index}: {error}")

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert not failures, "\n".join(failures)
