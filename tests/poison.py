"""Poisoned memory: every uninitialised buffer starts as NaN, so an element a kernel
forgets to write cannot pass a comparison.

ATen does the poisoning itself: with deterministic algorithms on and
torch.utils.deterministic.fill_uninitialized_memory set, every at::empty* (torch.empty,
empty_like, new_empty, empty_strided, resize_ growth, and the at::empty calls inside our
C++ and CUDA ops) fills floating tensors with NaN and integer tensors with their maximum
value. That reaches memory the C++ kernels allocate, which patching Python's torch.empty
could not. warn_only=True keeps ops that have no deterministic implementation working
(they warn instead of raising); the poisoning itself does not depend on it.

Only buffers allocated through the dispatcher are poisoned: a kernel that calls
at::detail::empty_cpu directly, or a caching allocator used around ATen, escapes it.

Used as a pytest plugin (conftest.py lists it in pytest_plugins): the autouse fixture
poisons every test unless FASTRNN_POISON=0 or the test is marked `no_poison`.
"""
import contextlib
import os

import pytest
import torch

# Deterministic mode makes cuBLAS demand a fixed workspace; it must be chosen before the
# first CUDA matmul, so it is set when this plugin is imported (before any test runs).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

ENV_VAR = "FASTRNN_POISON"


@contextlib.contextmanager
def poisoned_memory():
    """Within the block, new uninitialised tensors are full of NaN (max int for integers)."""
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]


def enabled():
    return os.environ.get(ENV_VAR, "1") != "0"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "no_poison: run without NaN-filled uninitialised memory (tests/poison.py)")


@pytest.fixture(autouse=True)
def _poison_uninitialised_memory(request):
    if not enabled() or request.node.get_closest_marker("no_poison"):
        yield
        return
    with poisoned_memory():
        yield
