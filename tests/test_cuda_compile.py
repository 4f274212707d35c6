"""Compiles the CUDA sources with the machine's nvcc; needs no GPU (runs in CI).

* Kernels: every csrc/cuda/*_kernels.cuh goes through a generated torch-free translation
  unit that explicitly instantiates Launch<T, Cell> for float, double, __half and
  __nv_bfloat16 (which instantiates every switch combination of every kernel), for sm_80
  and sm_90 with -Xptxas -v. Fails on a compile error, and on any register spill or stack
  frame in the persistent kernels (they loop over the whole sequence: local-memory traffic
  there costs every step).
* Launchers: csrc/cuda/{rnn,gru,lstm}.cu are compiled to objects against the installed
  torch's headers (PTX only: the kernels' machine code is covered above). A CPU-only torch
  wheel ships c10/cuda headers but not the generated c10/cuda/impl/cuda_cmake_macros.h
  (skipped with C10_CUDA_NO_CMAKE_CONFIGURE_FILE; it only sets export macros) nor cuBLAS
  headers (the launchers avoid ATen/cuda/CUDAContext.h). Linking is not checked: there is
  no libc10_cuda here.

All compiles run in parallel (one job per core); ~3-5 minutes on 2 cores.
"""
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
NVCC = shutil.which("nvcc") or (
    "/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
ARCHS = ("80", "90")
DTYPES = ("float", "double", "__half", "__nv_bfloat16")
# Cells each header defines; the explicit instantiations of the generated TUs.
CELLS = {
    "rnn_kernels.cuh": ("fastrnn::cuda::RnnCell<false>", "fastrnn::cuda::RnnCell<true>"),
    "gru_kernels.cuh": ("fastrnn::cuda::GruCell",),
    "lstm_kernels.cuh": ("fastrnn::cuda::LstmCell",),
}
# setup.py's nvcc flags plus the ones torch's CUDAExtension adds to every nvcc call (no
# implicit __half / __nv_bfloat16 conversions or operators): the first build on a GPU
# machine failed on a T(0.0f) that compiled here without them.
NVCC_FLAGS = ["-std=c++20", "-O3", *cpp_extension.COMMON_NVCC_FLAGS]

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


def _run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr


def _instantiation_tu(header):
    lines = [f'#include "{header}"']
    lines += [f"template struct fastrnn::cuda::Launch<{t}, {c}>;" for c in CELLS[header] for t in DTYPES]
    return "\n".join(lines) + "\n"


def parse_ptxas(log):
    """{demangled-ish kernel name: (registers, stack bytes, spill store bytes, spill load bytes)}."""
    out = {}
    for chunk in re.split(r"Compiling entry function '", log)[1:]:
        name = chunk.split("'", 1)[0]
        frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", chunk)
        regs = re.search(r"Used (\d+) registers", chunk)
        assert frame and regs, f"unexpected ptxas output for {name}"
        out[name] = (int(regs.group(1)),) + tuple(int(x) for x in frame.groups())
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Runs every compile once, in parallel; returns {job: (returncode, log)}."""
    tmp = tmp_path_factory.mktemp("cuda_compile")
    jobs = {}
    for header in CELLS:
        src = tmp / f"inst_{header.split('_')[0]}.cu"
        src.write_text(_instantiation_tu(header))
        for arch in ARCHS:
            jobs[("kernels", header, arch)] = [
                NVCC, *NVCC_FLAGS, f"-arch=sm_{arch}", "-Xptxas", "-v", "-I", str(CUDA_DIR),
                "-c", str(src), "-o", str(tmp / f"{src.stem}_{arch}.o")]
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    for launcher in sorted(CUDA_DIR.glob("*.cu")):
        jobs[("launcher", launcher.name, "compute_90")] = [
            NVCC, *NVCC_FLAGS, "-arch=compute_90", *includes, abi,
            "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", "-diag-suppress", "3306", "-c", str(launcher),
            "-o", str(tmp / f"{launcher.stem}.o")]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = dict(zip(jobs, pool.map(_run, jobs.values())))
    return results


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("header", sorted(CELLS))
def test_kernels_compile_without_spills(compiled, header, arch):
    rc, log = compiled[("kernels", header, arch)]
    assert rc == 0, f"nvcc failed for {header} sm_{arch}:\n{log[-6000:]}"
    stats = parse_ptxas(log)
    persistent = {k: v for k, v in stats.items() if "persistent" in k}
    assert persistent, f"no persistent kernels found in the ptxas report of {header}"
    bad = {k: v for k, v in persistent.items() if any(v[1:])}
    assert not bad, f"persistent kernels with stack/spills (regs, stack, spill st, spill ld): {bad}"
    worst = max(v[0] for v in stats.values())
    print(f"{header} sm_{arch}: {len(stats)} kernels, max {worst} registers, no spills", file=sys.stderr)


@pytest.mark.parametrize("name", ["gru.cu", "lstm.cu", "rnn.cu"])
def test_launcher_compiles(compiled, name):
    key = ("launcher", name, "compute_90")
    assert key in compiled, f"csrc/cuda/{name} missing"
    rc, log = compiled[key]
    assert rc == 0, f"nvcc failed for {name}:\n{log[-6000:]}"
