"""Which CUDA kernel path a layer takes: the rule of csrc/cuda/path_choice.h, in Python.

The CUDA launchers decide per layer-direction call between

* ``persistent``  one CTA per batch tile keeps all of W_hh in shared memory for the
  whole sequence (small H);
* ``cooperative`` several CTAs per batch tile split the hidden units, each keeping its
  W_hh slice in shared memory, with a grid barrier per step (H of a few hundred to
  ~1024: as many CTAs as the GPU has SMs);
* ``step``        one cuBLAS GEMM + one pointwise kernel per step (what does not fit,
  projected LSTMs, or FASTRNN_CUDA_PATH=step),

and pick the tile that minimises a per-step cost estimate. ``cuda_path`` answers the
same question without running anything, on any machine: with a GPU it reads the
device's properties; without one, pass them (``KNOWN_DEVICES`` lists a few)::

    >>> from fastrnn.cuda_paths import cuda_path, KNOWN_DEVICES
    >>> cuda_path("GRU", 1024, 64, torch.bfloat16, **KNOWN_DEVICES["H100"]).path
    'cooperative'

This module mirrors path_choice.h line for line (the extension is built without CUDA on
CPU-only machines, so the C++ function cannot be called from here everywhere);
tests/test_cuda_paths.py compiles that header with g++ and checks both agree on a grid
of shapes. Change the two together.
"""
import os
from typing import NamedTuple

import torch

__all__ = ["CudaPath", "cuda_path", "KNOWN_DEVICES"]

# (SM count, cudaDevAttrMaxSharedMemoryPerBlockOptin bytes): for planning without the GPU.
KNOWN_DEVICES = {
    "H100": dict(sm_count=132, smem_per_block=232448),   # SXM; 227 KiB opt-in
    "H200": dict(sm_count=132, smem_per_block=232448),
    "A100": dict(sm_count=108, smem_per_block=166912),   # 163 KiB
    "L4": dict(sm_count=58, smem_per_block=101376),      # 99 KiB
}

_CELLS = {  # mode -> (gates, has_c, has_direct), as CellShape in path_choice.h
    "RNN_TANH": (1, False, False),
    "RNN_RELU": (1, False, False),
    "GRU": (3, False, True),
    "LSTM": (4, True, False),
}
_MAX_THREADS = 256  # kMaxThreads
_NB_ALL = (1, 2, 4, 8, 16, 32, 64)
_HJ_ALL = (0, 256, 128, 96, 64, 48, 32, 24, 16, 12, 8, 4)  # 0: all of H


class CudaPath(NamedTuple):
    """A plan: ``path`` and, for the persistent paths, the tile. nb batch rows and hj
    hidden units per CTA, tiles x slices CTAs, kc the chunk of the exchanged vector held
    in shared memory, ldw the weight rows' shared-memory stride, smem bytes per CTA."""
    path: str
    nb: int = 0
    hj: int = 0
    kc: int = 0
    threads: int = 0
    tiles: int = 0
    slices: int = 0
    ldw: int = 0
    smem: int = 0


def _acc_bytes(elem):
    return 8 if elem == 8 else 4


def _odd_word_stride(n, elem):
    if elem == 2:
        return (n + 1) // 2 * 2 + (2 if (n + 1) // 2 % 2 == 0 else 0)
    return n if n % 2 == 1 else n + 1


def _round4(nb):
    return (nb + 3) // 4 * 4


def _fwd_smem(cell, elem, nb, hj, ldw, kc, multi):
    G, has_c, _ = cell
    nb4 = _round4(nb)
    acc_elems = nb4 * kc + nb4 * G * hj + (nb * hj if has_c else 0) + (nb * hj if multi else 0)
    return _acc_bytes(elem) * acc_elems + elem * G * hj * ldw


def _bwd_smem(cell, elem, nb, hj, ldw, kc):
    _, has_c, has_direct = cell
    per_unit = 1 + int(has_direct) + int(has_c)
    return _acc_bytes(elem) * (_round4(nb) * kc + per_unit * nb * hj) + elem * hj * ldw


def choose_path(mode, H, P, N, elem, backward, sm_count, smem_optin, cooperative,
                nb_force=0, hj_force=0, kc_force=0, force_step=False):
    """path_choice.h's choose_path, argument for argument (mode is torch.nn's string)."""
    cell = _CELLS[mode]
    if force_step or P != H or H < 1 or N < 1 or sm_count < 1:
        return CudaPath("step")
    G, acc = cell[0], _acc_bytes(elem)
    K = G * H if backward else H
    best, best_cost = None, 0.0
    for nb in ((nb_force,) if nb_force > 0 else _NB_ALL):
        if nb_force <= 0 and nb > 1 and nb // 2 >= N:
            continue
        for ih, hj_c in enumerate((hj_force,) if hj_force > 0 else _HJ_ALL):
            hj = hj_force if hj_force > 0 else (H if hj_c == 0 else hj_c)
            if hj > H or (hj_force <= 0 and ih > 0 and hj == H):
                continue
            slices, tiles = (H + hj - 1) // hj, (N + nb - 1) // nb
            multi = slices > 1
            if tiles > 65535:
                continue
            if multi and (not cooperative or slices * tiles > sm_count):
                continue
            ldw = _odd_word_stride(K, elem)
            nb4 = _round4(nb)
            kc = K
            if multi:
                rest = (_bwd_smem(cell, elem, nb, hj, ldw, 0) if backward
                        else _fwd_smem(cell, elem, nb, hj, ldw, 0, True))
                if rest >= smem_optin:
                    continue
                fit = (smem_optin - rest) // (acc * nb4)
                if fit < K:
                    kc = fit // 32 * 32
                    if kc < 32:
                        continue
                if 0 < kc_force < kc:
                    kc = kc_force
            smem = (_bwd_smem(cell, elem, nb, hj, ldw, kc) if backward
                    else _fwd_smem(cell, elem, nb, hj, ldw, kc, multi))
            if smem > smem_optin:
                continue
            mv_items = (1 if backward else G) * hj * (nb4 // 4)
            pw_items = nb * hj
            items = max(mv_items, pw_items)
            rounded = (items + 31) // 32 * 32
            threads = min(max(rounded, 64), _MAX_THREADS)
            mv_rounds = (mv_items + threads - 1) // threads
            pw_rounds = (pw_items + threads - 1) // threads
            lds_bound = 5.0 * mv_rounds * (threads // 32) * K
            fma_bound = 1.5 * mv_rounds * 4.0 * K
            step = (lds_bound if lds_bound > fma_bound else fma_bound) + 200.0 * pw_rounds + 300.0
            if multi:
                chunks = (K + kc - 1) // kc
                step += 2000.0 + float(nb) * K * acc / 64.0 + 150.0 * (chunks - 1)
            waves = (slices * tiles + sm_count - 1) // sm_count
            cost = waves * step
            if best is None or cost < best_cost:
                best = CudaPath("cooperative" if multi else "persistent", nb, hj, kc, threads,
                                tiles, slices, ldw, smem)
                best_cost = cost
    return best if best is not None else CudaPath("step")


def _env_knobs():
    """(nb_force, hj_force, kc_force, force_step) from the launcher's environment variables
    (FASTRNN_CUDA_TILE=nb,hj[,kc], FASTRNN_CUDA_PATH=step), parsed as launcher.h does."""
    forced = [0, 0, 0]
    tile = os.environ.get("FASTRNN_CUDA_TILE")
    if tile:
        try:
            values = [int(v) for v in tile.split(",")]
        except ValueError:
            values = []
        if len(values) not in (2, 3) or min(values) <= 0:
            raise ValueError("FASTRNN_CUDA_TILE must be 'nb,hj' or 'nb,hj,kc' (positive integers), "
                             f"got {tile!r}")
        forced[:len(values)] = values
    return (*forced, os.environ.get("FASTRNN_CUDA_PATH") == "step")


def cuda_path(mode, hidden_size, batch, dtype=torch.float32, device=None, *, proj_size=0,
              backward=False, sm_count=None, smem_per_block=None, cooperative=True):
    """The path (and tile) the CUDA kernels take for one layer-direction call.

    mode: torch.nn's mode string ('RNN_TANH', 'RNN_RELU', 'GRU', 'LSTM') or a module
    (nn.RNN/GRU/LSTM or a Fused* one), whose mode, hidden_size and proj_size are used.
    batch: N (for packed input, batch_sizes[0]). dtype: float16/bfloat16/float32/float64.
    Device properties: sm_count and smem_per_block (the opt-in shared memory per block,
    bytes) when given, else read from `device` (default: the current CUDA device); with
    no GPU they must be given (KNOWN_DEVICES has some). cooperative: whether the device
    supports cooperative launch (every GPU fastrnn targets does). backward: plan the
    backward kernel instead of the forward. FASTRNN_CUDA_PATH / FASTRNN_CUDA_TILE are
    honoured as the launcher honours them.
    """
    if isinstance(mode, torch.nn.RNNBase):
        hidden_size, proj_size, mode = mode.hidden_size, mode.proj_size, mode.mode
    if mode not in _CELLS:
        raise ValueError(f"mode must be one of {sorted(_CELLS)}, got {mode!r}")
    if not isinstance(dtype, torch.dtype) or dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"the CUDA kernels support float16/bfloat16/float32/float64, got {dtype}")
    if (sm_count is None) != (smem_per_block is None):
        raise ValueError("pass both sm_count and smem_per_block, or neither")
    if sm_count is None:
        if not torch.cuda.is_available():
            raise RuntimeError(
                "cuda_path: no CUDA device here; pass the device's properties, e.g. "
                "cuda_path(..., sm_count=132, smem_per_block=232448) for an H100 "
                "(fastrnn.cuda_paths.KNOWN_DEVICES)")
        props = torch.cuda.get_device_properties(torch.device("cuda") if device is None
                                                 else torch.device(device))
        sm_count = props.multi_processor_count
        smem_per_block = getattr(props, "shared_memory_per_block_optin", None)
        if smem_per_block is None:
            raise RuntimeError("cuda_path: this torch does not report the opt-in shared memory "
                               "per block; pass sm_count= and smem_per_block=")
    nb, hj, kc, force_step = _env_knobs()
    P = proj_size if proj_size > 0 else hidden_size
    return choose_path(mode, int(hidden_size), int(P), int(batch), dtype.itemsize, bool(backward),
                       int(sm_count), int(smem_per_block), bool(cooperative), nb, hj, kc, force_step)
