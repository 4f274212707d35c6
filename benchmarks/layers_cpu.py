"""fastrnn's CPU backend against torch.nn, same process, same weights.

For RNN, GRU and LSTM at the sine-wave shape and larger ones: forward under no_grad and
forward+backward, with 1 and 2 threads; plus packed variable-length input against padded
input of the same total tokens, and one step of the *Cell classes. Medians of interleaved
runs (see common.time_interleaved).
Writes benchmarks/results/cpu.json and cpu.md.

    python -m benchmarks.layers_cpu [--quick]
"""
import argparse
import random

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from benchmarks.common import (machine_header, settle_allocator, time_interleaved,
                               write_results)

CELLS = {"RNN": (nn.RNN, fastrnn.FusedRNN), "GRU": (nn.GRU, fastrnn.FusedGRU),
         "LSTM": (nn.LSTM, fastrnn.FusedLSTM)}
# (name, B, T, I, H, reps)
# Reps are samples per contender; the large shapes need many to get a stable median on a
# shared VM, where a burst of neighbour load can slow a 2-thread sample by 1.5x.
SHAPES = (("sine", 1, 20, 1, 16, 300), ("sine_batch", 38, 20, 1, 16, 200),
          ("h128", 64, 100, 128, 128, 31), ("h512", 64, 100, 512, 512, 11))
STEP_CELLS = {"RNNCell": (nn.RNNCell, fastrnn.FusedRNNCell),
              "GRUCell": (nn.GRUCell, fastrnn.FusedGRUCell),
              "LSTMCell": (nn.LSTMCell, fastrnn.FusedLSTMCell)}
# (name, B, I, H, reps): one step of a cell.
STEP_SHAPES = (("sine step", 1, 1, 16, 300), ("h128 step", 64, 128, 128, 100))


def pair(torch_cls, fused_cls, *args, **kwargs):
    """A torch.nn module and its fused twin (backend='cpu') with the same weights."""
    torch.manual_seed(0)
    ref = torch_cls(*args, **kwargs)
    fused = fused_cls(*args, **kwargs, backend="cpu")
    fused.load_state_dict(ref.state_dict())
    return ref, fused


def forward_fn(module, x):
    def run():
        with torch.no_grad():
            module(x)
    return run


def train_fn(module, x):
    """Backward from the sum of the output: a layer's output (of its (output, h_n)), an
    LSTMCell's h (of its (h, c)), or the new h of the other cells."""
    def run():
        output = module(x)
        output = output[0] if isinstance(output, tuple) else output
        output = output.data if hasattr(output, "batch_sizes") else output
        output.sum().backward()
    return run


def cell_rows(args, threads):
    """One step of each *Cell class."""
    rows = []
    for name, B, I, H, reps in STEP_SHAPES:
        if args.quick:
            reps = max(2, reps // 5)
        x = torch.randn(B, I)
        for cell, classes in STEP_CELLS.items():
            ref, fused = pair(*classes, I, H)
            for pass_name, make in (("fwd", forward_fn), ("fwd+bwd", train_fn)):
                t = time_interleaved({"torch": make(ref, x), "fastrnn": make(fused, x)}, reps)
                rows.append(dict(cell=cell, shape=name, B=B, T=1, I=I, H=H, threads=threads,
                                 pass_=pass_name, torch_us=t["torch"] * 1e6,
                                 fastrnn_us=t["fastrnn"] * 1e6,
                                 speedup=t["torch"] / t["fastrnn"]))
                print(rows[-1], flush=True)
    return rows


def padded_rows(args, threads):
    rows = []
    for name, B, T, I, H, reps in SHAPES:
        if args.quick:
            reps = max(2, reps // 5)
        x = torch.randn(B, T, I)
        for cell in CELLS:
            ref, fused = pair(*CELLS[cell], I, H, batch_first=True)
            for pass_name, make in (("fwd", forward_fn), ("fwd+bwd", train_fn)):
                t = time_interleaved({"torch": make(ref, x), "fastrnn": make(fused, x)}, reps)
                rows.append(dict(cell=cell, shape=name, B=B, T=T, I=I, H=H, threads=threads,
                                 pass_=pass_name, torch_us=t["torch"] * 1e6,
                                 fastrnn_us=t["fastrnn"] * 1e6,
                                 speedup=t["torch"] / t["fastrnn"]))
                print(rows[-1], flush=True)
    return rows


def packed_rows(args, threads):
    """Packed lengths uniform in [1, T] against padded [B, S/B] (same token count)."""
    B, T, I, H, reps = 64, 100, 128, 128, 3 if args.quick else 21
    rng = random.Random(0)
    lengths = sorted((rng.randint(1, T) for _ in range(B)), reverse=True)
    tokens = sum(lengths)
    packed = pack_padded_sequence(torch.randn(B, T, I), torch.tensor(lengths),
                                  batch_first=True)
    padded = torch.randn(B, round(tokens / B), I)
    rows = []
    for cell in CELLS:
        ref, fused = pair(*CELLS[cell], I, H, batch_first=True)
        for pass_name, make in (("fwd", forward_fn), ("fwd+bwd", train_fn)):
            t = time_interleaved({"torch": make(ref, packed), "fastrnn": make(fused, packed),
                                  "fastrnn_padded": make(fused, padded)}, reps)
            rows.append(dict(cell=cell, shape=f"packed ({tokens} tokens)", B=B, T=T, I=I, H=H,
                             threads=threads, pass_=pass_name, torch_us=t["torch"] * 1e6,
                             fastrnn_us=t["fastrnn"] * 1e6,
                             speedup=t["torch"] / t["fastrnn"],
                             padded_us=t["fastrnn_padded"] * 1e6,
                             packed_over_padded=t["fastrnn"] / t["fastrnn_padded"]))
            print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    args = parser.parse_args()
    allocator = settle_allocator()
    rows = []
    for threads in [int(n) for n in args.threads.split(",")]:
        torch.set_num_threads(threads)
        rows += padded_rows(args, threads) + packed_rows(args, threads) + cell_rows(args, threads)
    header = machine_header("cpu", threads=args.threads, allocator=allocator)
    columns = [("cell", "cell", None), ("shape", "shape", None), ("B", "B", None),
               ("T", "T", None), ("I", "I", None), ("H", "H", None),
               ("threads", "threads", None), ("pass_", "pass", None),
               ("torch_us", "torch.nn us", "{:.1f}"), ("fastrnn_us", "fastrnn us", "{:.1f}"),
               ("speedup", "torch.nn / fastrnn", "{:.2f}x"),
               ("packed_over_padded", "packed / padded (same tokens)", "{:.2f}")]
    notes = ["Medians of interleaved runs in one process (same weights, batch_first "
             "input, fastrnn backend='cpu'). speedup > 1 means fastrnn is faster. "
             "'fwd' runs under torch.no_grad(); 'fwd+bwd' is output.sum().backward().",
             "",
             "On a shared machine (see loadavg above) the 2-thread rows suffer most, for both "
             "libraries: every time step ends at a barrier, which waits whenever the OS has "
             "descheduled the partner thread. Compare ratios from a quiet run."]
    print(write_results("cpu", header, rows, columns, "CPU layers: fastrnn vs torch.nn", notes))


if __name__ == "__main__":
    main()
