"""The header every result file starts with, and the clock both implementations share."""
import time

import torch

import fastrnn
from benchmarks.common import machine_header


def header(device):
    """benchmarks.common's machine header (device, CPU/GPU model, versions, threads, date,
    load average), plus which fastrnn backends this process could run and why not."""
    return {**machine_header(device.type),
            "fastrnn_backends": {name: reason or "available"
                                 for name, reason in fastrnn.available_backends().items()}}


def timed_ms(function, device):
    """(function(), wall milliseconds), with the GPU drained before both clock reads so
    queued kernels are counted where they were launched."""
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    result = function()
    synchronize()
    return result, (time.perf_counter() - start) * 1e3
