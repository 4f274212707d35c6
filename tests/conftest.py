"""Shared test setup: which backends the parametrized suites run against.

Every available backend is listed, so a new backend inherits every parity and bad-input
test by becoming available. FASTRNN_TEST_BACKENDS=cuda,triton narrows the list (the GPU
check script uses it). Without a GPU, Triton kernels run under its interpreter on CPU
tensors, so they are checked on every CI run.
"""
import os

import torch

if not torch.cuda.is_available():
    # Must be set before triton is imported anywhere.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from hypothesis import Phase, settings  # noqa: E402

import fastrnn  # noqa: E402

# --- Added for issue 7 (fuzzing and poisoned memory; tests/poison.py, tests/test_fuzz.py).
# poison: every test runs with uninitialised memory NaN-filled (FASTRNN_POISON=0 turns it
# off, @pytest.mark.no_poison exempts one test).
pytest_plugins = ["poison"]
# Hypothesis profiles: 'ci' (default) runs the same examples on every run and reports a
# failure unshrunk (shrinking can take minutes); FASTRNN_FUZZ_PROFILE=long explores, shrinks,
# and keeps failures in .hypothesis/.
settings.register_profile("ci", derandomize=True, max_examples=50, deadline=None,
                          database=None, print_blob=True,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.register_profile("long", max_examples=1000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("FASTRNN_FUZZ_PROFILE", "ci"))
# --- end of issue 7 additions.

# Backends whose every op call is slow (an interpreter) run a sample of the parity matrix.
SAMPLED_BACKENDS = {"triton"} if not torch.cuda.is_available() else set()


def skip_untraceable(backend):
    """Dynamo and torch.export cannot trace Triton kernels run by its interpreter (it patches
    inspect.getfile), and the Triton layer is not yet a torch custom op with a fake kernel, so
    tracing it needs a GPU and that wrapping: skip, saying so."""
    if backend == "triton":
        pytest.skip("the Triton backend is not traceable yet (not a custom op; the CPU run is "
                    "its interpreter): torch.compile/export are guaranteed for cpu, cuda, "
                    "reference")


def _device_of(backend):
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def backends_under_test():
    available = [name for name, reason in fastrnn.available_backends().items() if reason is None]
    wanted = os.environ.get("FASTRNN_TEST_BACKENDS")
    if not wanted:
        return available
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    missing = [name for name in names if name not in available]
    if missing:
        reasons = fastrnn.available_backends()
        raise pytest.UsageError("FASTRNN_TEST_BACKENDS asks for unavailable backends: "
                                + "; ".join(f"{n}: {reasons.get(n, 'unknown name')}"
                                            for n in missing))
    return names


def pytest_report_header(config):
    lines = [f"fastrnn backends under test: {', '.join(backends_under_test())}"]
    for name, reason in fastrnn.available_backends().items():
        if reason is not None:
            lines.append(f"  not available: {name}: {reason}")
    return lines


@pytest.fixture(params=backends_under_test())
def backend(request):
    return request.param


@pytest.fixture
def device(backend):
    return _device_of(backend)
