"""One rank of the DistributedDataParallel check in test_ecosystem.py (gloo, loopback).

Usage: python ddp_worker.py RANK WORLD_SIZE PORT BACKEND[,BACKEND...] OUT_DIR TIMEOUT_S
For each backend: builds the model from a fixed seed, wraps it in DDP, runs forward and
backward on this rank's slice of a fixed batch, and saves the (all-reduced) gradients to
OUT_DIR/{BACKEND}-rank{R}.pt. One process group serves every backend, so the processes
start (and import torch) once per test session. A rank still running after TIMEOUT_S
prints every thread's Python stack and exits with status 1, so a hang fails with a trace.
"""
import faulthandler
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_ecosystem import ddp_model_and_batch, ddp_loss  # noqa: E402


def gradients(backend, rank, world_size):
    """This rank's gradients for `backend`, all-reduced by DDP. The DDP wrapper dies when
    this returns, while the process group is still registered (see main)."""
    model, inputs, targets = ddp_model_and_batch(backend)
    ddp = DistributedDataParallel(model)
    rows = inputs.shape[1] // world_size
    mine = slice(rank * rows, (rank + 1) * rows)
    ddp_loss(ddp, inputs[:, mine], targets[:, mine]).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def main(rank, world_size, port, backend_names, out_dir, timeout_s):
    faulthandler.dump_traceback_later(timeout_s, exit=True)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    for backend in backend_names.split(","):
        torch.save(gradients(backend, rank, world_size),
                   os.path.join(out_dir, f"{backend}-rank{rank}.pt"))
    # Only now, with every DDP wrapper gone, may the group be destroyed (so not in a
    # `finally`: an exception's traceback keeps its wrapper alive). A wrapper that
    # outlived it would hold the group's last reference (in its C++ Reducer), and freeing
    # the wrapper would then join gloo's worker threads with the GIL held, while a worker
    # may still be freeing the last all-reduce, which needs the GIL (the work carries a
    # Python object the autograd engine stashed in thread-local state): a deadlock in
    # about 1 run in 3. Destroyed here, the group is freed with the GIL released.
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5],
         float(sys.argv[6]))
