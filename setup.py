"""Builds fastrnn._C: the C++ CPU kernels always, the CUDA kernels when both a CUDA
toolkit and a CUDA build of torch are present.

FASTRNN_CUDA_ARCHS   semicolon-separated compute capabilities, e.g. "8.0;9.0" (default);
                     PTX is embedded for the newest one so later GPUs can JIT it.
FASTRNN_NO_EXTENSION=1 skips the extension (the package then runs on 'reference').
"""
import glob
import os
import platform

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def cuda_arch_flags():
    archs = os.environ.get("FASTRNN_CUDA_ARCHS", "8.0;9.0").replace(" ", "").split(";")
    codes = [a.replace(".", "") for a in archs if a]
    flags = [f"-gencode=arch=compute_{c},code=sm_{c}" for c in codes]
    newest = max(codes, key=int)
    flags.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    return flags


def extensions():
    if os.environ.get("FASTRNN_NO_EXTENSION") == "1":
        return []
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    # -fno-trapping-math (as torch itself is built) lets GCC vectorise the gate loops'
    # NaN-preserving clamps; AVX2+FMA (every x86-64 server since 2013) runs them 8 wide.
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"]
    if platform.machine() in ("x86_64", "AMD64"):
        cxx_flags += ["-mavx2", "-mfma"]
    with_cuda = torch.version.cuda is not None and CUDA_HOME is not None
    if not with_cuda:
        return [CppExtension("fastrnn._C", sources, extra_compile_args={"cxx": cxx_flags},
                             extra_link_args=["-fopenmp"])]
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    # No --use_fast_math: it turns tanhf into tanh.approx.f32 (relative error up to 2^-11)
    # and divisions into approximations, and float32 results must match torch.nn to 1e-5.
    nvcc_flags = ["-O3", "-std=c++20", "-lineinfo"] + cuda_arch_flags()
    return [CUDAExtension("fastrnn._C", sources + cuda_sources,
                          extra_compile_args={"cxx": cxx_flags + ["-DFASTRNN_WITH_CUDA"],
                                              "nvcc": nvcc_flags},
                          extra_link_args=["-fopenmp"])]


setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
