"""The LSTM forward against the machine's multiply-add rate: is 1.0x torch.nn the limit?

Issue 3 asks the LSTM forward at B=64, T=100, H=512 for >= 1.0x nn.LSTM (oneDNN). Both
layers spend almost all their time in matrix products: T*N*4H*(C+H) multiply-adds (the
input projection and T products with W_hh); the gate math is ~1% of the arithmetic. This
script times, interleaved in one process, with 1 and 2 threads:

- torch.nn's LSTM and fastrnn's, forward under no_grad;
- one torch.mm with exactly the layer's multiply-adds, [T*N, C+H] @ [C+H, 4H]: the rate
  the machine's BLAS reaches on that work when nothing forces it into T dependent steps;

and reports each layer's rate as a share of that GEMM's. Where both layers run at about the
GEMM's rate, neither can be much faster than the other: the ratio is bounded by the FMA
units, not by either library's glue. Writes benchmarks/results/fma_bound.json and .md.

    python -m benchmarks.fma_bound [--quick]
"""
import argparse

import torch
from torch import nn

import fastrnn
from benchmarks.common import (machine_header, settle_allocator, time_interleaved,
                               write_results)
from benchmarks.layers_cpu import forward_fn, pair

# (name, N, T, C, H, reps): the two layers-benchmark shapes where the LSTM forward ties.
SHAPES = (("h128", 64, 100, 128, 128, 31), ("h512", 64, 100, 512, 512, 11))


def lstm_multiply_adds(N, T, C, H):
    """Multiply-adds of an LSTM layer's matrix products over a padded sequence."""
    return T * N * 4 * H * (C + H)


def same_work_gemm(N, T, C, H):
    """A callable doing one torch.mm with lstm_multiply_adds(N, T, C, H) multiply-adds."""
    a, b = torch.randn(T * N, C + H), torch.randn(C + H, 4 * H)
    return lambda: torch.mm(a, b)


def rows_for(name, N, T, C, H, reps, threads):
    ref, fused = pair(nn.LSTM, fastrnn.FusedLSTM, C, H, batch_first=True)
    x = torch.randn(N, T, C)
    t = time_interleaved({"torch": forward_fn(ref, x), "fastrnn": forward_fn(fused, x),
                          "gemm": same_work_gemm(N, T, C, H)}, reps)
    fma = lstm_multiply_adds(N, T, C, H)
    row = dict(shape=name, N=N, T=T, C=C, H=H, threads=threads,
               torch_ms=t["torch"] * 1e3, fastrnn_ms=t["fastrnn"] * 1e3,
               gemm_ms=t["gemm"] * 1e3, speedup=t["torch"] / t["fastrnn"],
               gemm_gfma=fma / t["gemm"] / 1e9,
               torch_share=t["gemm"] / t["torch"], fastrnn_share=t["gemm"] / t["fastrnn"])
    print(row, flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = parser.parse_args()
    allocator = settle_allocator()
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, N, T, C, H, reps in SHAPES:
            rows.append(rows_for(name, N, T, C, H, 3 if args.quick else reps, threads))
    columns = [("shape", "shape", None), ("N", "B", None), ("T", "T", None), ("C", "I", None),
               ("H", "H", None), ("threads", "threads", None),
               ("torch_ms", "nn.LSTM ms", "{:.2f}"), ("fastrnn_ms", "FusedLSTM ms", "{:.2f}"),
               ("speedup", "nn.LSTM / FusedLSTM", "{:.2f}x"),
               ("gemm_ms", "same-work GEMM ms", "{:.2f}"),
               ("gemm_gfma", "GEMM G multiply-adds/s", "{:.1f}"),
               ("torch_share", "nn.LSTM rate / GEMM rate", "{:.0%}"),
               ("fastrnn_share", "FusedLSTM rate / GEMM rate", "{:.0%}")]
    notes = ["LSTM forward under torch.no_grad(), batch_first, fastrnn backend='cpu', against "
             "one torch.mm of [T*B, I+H] @ [I+H, 4H]: the layer's multiply-adds "
             "(T*B*4H*(I+H)) in a single GEMM. Medians of interleaved runs in one process. A "
             "layer's share is the GEMM's time over the layer's: 100% means the layer "
             "multiplies and adds as fast as that GEMM."]
    header = machine_header("cpu", threads="1,2", allocator=allocator)
    print(write_results("fma_bound", header, rows, columns,
                        "LSTM forward against a GEMM of the same multiply-adds", notes))


if __name__ == "__main__":
    main()
