"""The sine-wave shape against what any layer module costs there.

Issue 3 sets ratios of microsecond-scale calls at the sine shape (B=1, T=20, I=1, H=16):
40x torch.nn for the GRU, 10x for the RNN, 8x for the LSTM. This script times, interleaved
in one process, with 1 and 2 threads, for each cell:

- torch.nn's layer and fastrnn's: forward under no_grad, and output.sum().backward();
- a floor for each pass: what the cheapest conceivable layer module would still cost,
  doing no recurrent work:
  - fwd: a call of an nn.Module whose forward is one elementwise ATen op (under the same
    torch.no_grad() block as the layers);
  - fwd+bwd: the smallest autograd graph that gives four parameters a gradient: four leaf
    tensors of the layer's parameter sizes into one torch.cat, then .sum().backward().
    fastrnn's graph has the same shape: the four parameters into its layer's node (which
    takes and gives batch_first tensors itself), then the sum.

and the time each target allows (torch.nn time / target), with what that leaves above the
floor. Where the floor is above that time, no layer module meets the target in this
process. Writes benchmarks/results/sine_floor.json and .md.

    python -m benchmarks.sine_floor [--quick]
"""
import argparse

import torch
from torch import nn

import fastrnn
from benchmarks.common import (machine_header, settle_allocator, time_interleaved,
                               write_results)
from benchmarks.layers_cpu import forward_fn, pair, train_fn

CELLS = {"RNN": (nn.RNN, fastrnn.FusedRNN, 10), "GRU": (nn.GRU, fastrnn.FusedGRU, 40),
         "LSTM": (nn.LSTM, fastrnn.FusedLSTM, 8)}
B, T, I, H = 1, 20, 1, 16


class OneOpModule(nn.Module):
    """A forward cheaper than any layer's: one elementwise op, one new tensor."""

    def forward(self, x):
        return torch.neg(x)


def rows_for(cell, threads, reps):
    torch_cls, fused_cls, target = CELLS[cell]
    ref, fused = pair(torch_cls, fused_cls, I, H, batch_first=True)
    x = torch.randn(B, T, I)
    leaves = [p.detach().reshape(-1).clone().requires_grad_() for p in fused._flat_weights]

    def smallest_graph():
        torch.cat(leaves).sum().backward()

    passes = (("fwd", {"torch": forward_fn(ref, x), "fastrnn": forward_fn(fused, x),
                       "floor": forward_fn(OneOpModule(), x)}),
              ("fwd+bwd", {"torch": train_fn(ref, x), "fastrnn": train_fn(fused, x),
                           "floor": smallest_graph}))
    rows = []
    for pass_name, fns in passes:
        t = time_interleaved(fns, reps)
        rows.append(dict(cell=cell, threads=threads, pass_=pass_name,
                         torch_us=t["torch"] * 1e6, fastrnn_us=t["fastrnn"] * 1e6,
                         speedup=t["torch"] / t["fastrnn"], target=f"{target}x",
                         allowed_us=t["torch"] * 1e6 / target, floor_us=t["floor"] * 1e6,
                         headroom_us=(t["torch"] / target - t["floor"]) * 1e6))
        print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = parser.parse_args()
    allocator = settle_allocator()
    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for cell in CELLS:
            rows += rows_for(cell, threads, 20 if args.quick else 200)
    columns = [("cell", "cell", None), ("threads", "threads", None), ("pass_", "pass", None),
               ("torch_us", "torch.nn us", "{:.1f}"), ("fastrnn_us", "fastrnn us", "{:.1f}"),
               ("speedup", "torch.nn / fastrnn", "{:.2f}x"), ("target", "target", None),
               ("allowed_us", "us the target allows", "{:.1f}"),
               ("floor_us", "floor us", "{:.1f}"),
               ("headroom_us", "us the target leaves above the floor", "{:.1f}")]
    notes = [f"Sine-wave shape B={B}, T={T}, I={I}, H={H}, batch_first. Medians of "
             "interleaved runs in one process. 'floor' (see the script's docstring): fwd, "
             "an nn.Module call running one elementwise op, in the same torch.no_grad() "
             "block as the layers; fwd+bwd, four leaves of the layer's parameter sizes into "
             "one torch.cat, .sum().backward(). A target whose allowed time is below the "
             "floor cannot be met by any layer module in this process. What the target leaves "
             "above the floor is all the layer's own work may take (its kernels, glue and "
             "allocations); for fwd+bwd that includes a forward, so compare it with the fwd "
             "row's fastrnn time above its floor."]
    header = machine_header("cpu", threads="1,2", allocator=allocator)
    print(write_results("sine_floor", header, rows, columns,
                        "Sine shape: fastrnn, torch.nn and the per-call floor", notes))


if __name__ == "__main__":
    main()
