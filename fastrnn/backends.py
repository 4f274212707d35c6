"""Which backend runs a layer: names, availability with reasons, and the 'auto' choice.

An explicitly requested backend that cannot run the tensors raises; only 'auto' chooses,
taking the fastest available backend for the tensors' device and dtype. FASTRNN_BACKEND,
when set, replaces 'auto' (and is then held to the same rules as an explicit request).
Like OMP_NUM_THREADS, it is read once, when fastrnn is imported: reading the environment
on every forward would cost more than the sine-shape kernel itself.
"""
import functools
import os

import torch

from fastrnn import ops, reference

NAMES = ("cpu", "cuda", "triton", "reference")
CHOICES = ("auto",) + NAMES
ENV_VAR = "FASTRNN_BACKEND"
ENV_CHOICE = os.environ.get(ENV_VAR)

_FLOAT32_64 = (torch.float32, torch.float64)
_ALL_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_DTYPES = {"cpu": _FLOAT32_64, "cuda": _ALL_FLOATS, "triton": _ALL_FLOATS,
           "reference": _ALL_FLOATS}

# Fastest first. Triton on CPU tensors is its interpreter, for testing only: never 'auto'.
_AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


def check_name(name):
    """Raises ValueError for anything that is not a backend name or 'auto'."""
    if name not in CHOICES:
        raise ValueError(f"unknown fastrnn backend {name!r}; choose one of {', '.join(CHOICES)}")
    return name


@functools.lru_cache(maxsize=None)
def unavailable_reason(name):
    """None when the backend can run in this process, else a sentence saying why not."""
    check_name(name)
    if name == "reference":
        return None
    if name == "triton":
        try:
            from fastrnn import triton as triton_backend
        except ImportError as error:
            return f"the Triton backend could not be imported ({error})"
        return triton_backend.unavailable_reason()
    if ops.LOAD_ERROR is not None:
        return ops.LOAD_ERROR
    if name == "cpu":
        return None if ops.has_kernel("CPU") else "fastrnn._C was built without CPU kernels"
    if not ops.has_kernel("CUDA"):
        return ("fastrnn._C was built without CUDA kernels (a CUDA toolkit and a CUDA build "
                "of torch are both needed at build time)")
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    return None


def available_backends():
    """{name: None if available else the reason it is not}, for every backend."""
    return {name: unavailable_reason(name) for name in NAMES}


def _runs_on(name, device):
    if name == "reference":
        return True
    if name == "triton":
        return device.type == "cuda" or (device.type == "cpu"
                                         and os.environ.get("TRITON_INTERPRET") == "1")
    return device.type == name


def _why_not(name, device, dtype):
    """None when `name` can run tensors of this device and dtype, else why not."""
    reason = unavailable_reason(name)
    if reason is not None:
        return f"fastrnn backend {name!r} is not available: {reason}"
    if not _runs_on(name, device):
        return f"fastrnn backend {name!r} cannot run tensors on device {device.type!r}"
    if dtype not in _DTYPES[name]:
        supported = ", ".join(str(d) for d in _DTYPES[name])
        return f"fastrnn backend {name!r} supports {supported}, not {dtype}"
    return None


@functools.lru_cache(maxsize=None)
def _resolve(requested, env_choice, device_type, dtype):
    device = torch.device(device_type)
    if requested == "auto" and env_choice:
        requested = check_name(env_choice)
        if requested == "auto":
            env_choice = None
    if requested != "auto":
        reason = _why_not(requested, device, dtype)
        if reason is not None:
            source = f" (from {ENV_VAR})" if env_choice else ""
            raise RuntimeError(reason + source)
        return requested
    for name in _AUTO_ORDER.get(device.type, ("reference",)):
        if _why_not(name, device, dtype) is None:
            return name
    raise RuntimeError(f"no fastrnn backend can run {dtype} tensors on {device}")


def resolve(requested, device, dtype, env_choice=ENV_CHOICE):
    """The backend name that runs a layer for tensors of this device and dtype."""
    return _resolve(requested, env_choice, device.type, dtype)


def layer_function(name):
    """The backend's `layer` (signature: fastrnn/reference.py)."""
    if name == "reference":
        return reference.layer
    if name == "triton":
        from fastrnn import triton as triton_backend
        return triton_backend.layer
    return ops.layer


_layers = {}


def layer_for(requested, device, dtype):
    """The `layer` function that runs tensors of this device and dtype (called on every
    forward, hence a plain dict lookup once resolved; keyed on the device itself, as
    device.type costs more than the lookup)."""
    key = (requested, device, dtype)
    layer = _layers.get(key)
    if layer is None:
        layer = _layers[key] = layer_function(_resolve(requested, ENV_CHOICE, device.type, dtype))
    return layer
