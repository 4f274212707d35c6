"""What the tests of the plain calls in C++ share (test_plain_forward.py for the layers,
test_plain_cell.py for the cells): arguments the C++ paths must decline, and the check
that a declined call reaches the Python path and gives what the Python path alone gives."""
import torch
from torch.overrides import TorchFunctionMode

from fastrnn import ops


class Marked(torch.Tensor):
    """A Tensor subclass that overrides torch functions (by inheriting Tensor's)."""


class PassThroughMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def under_mode(module, x, hx):
    with PassThroughMode():
        return module(x, hx)


def with_backend(name):
    def call(module, x, hx):
        module.backend = name
        return module(x, hx)
    return call


def assert_declined(monkeypatch, plain_name, owner, python_method, outcome):
    """outcome() returns (results, None) or (None, (exception type, message)). With the C++
    path (ops.<plain_name>), the call must reach owner.<python_method> and give the same
    outcome as with the Python path alone: equal results, or the same error."""
    monkeypatch.setattr(ops, plain_name, None)
    expected = outcome()
    monkeypatch.undo()

    python_calls = []
    original = getattr(owner, python_method)

    def recording(self, *args, **kwargs):
        python_calls.append(args)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(owner, python_method, recording)
    actual = outcome()
    assert python_calls, "the C++ path took an irregular call"
    assert (actual[1] is None) == (expected[1] is None), (actual[1], expected[1])
    if expected[1] is not None:
        assert actual[1] == expected[1]
        return
    assert len(actual[0]) == len(expected[0])
    for index, (a, e) in enumerate(zip(actual[0], expected[0])):
        assert torch.equal(a, e), f"result {index} differs"
