"""One rank of the DistributedDataParallel check in test_ecosystem.py (gloo, loopback).

Usage: python ddp_worker.py RANK WORLD_SIZE PORT BACKEND[,BACKEND...] OUT_DIR
For each backend: builds the model from a fixed seed, wraps it in DDP, runs forward and
backward on this rank's slice of a fixed batch, and saves the (all-reduced) gradients to
OUT_DIR/{BACKEND}-rank{R}.pt. One process group serves every backend, so the processes
start (and import torch) once per test session.
"""
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_ecosystem import ddp_model_and_batch, ddp_loss  # noqa: E402


def main(rank, world_size, port, backend_names, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        for backend in backend_names.split(","):
            model, inputs, targets = ddp_model_and_batch(backend)
            ddp = DistributedDataParallel(model)
            rows = inputs.shape[1] // world_size
            mine = slice(rank * rows, (rank + 1) * rows)
            ddp_loss(ddp, inputs[:, mine], targets[:, mine]).backward()
            torch.save({name: p.grad for name, p in ddp.module.named_parameters()},
                       os.path.join(out_dir, f"{backend}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
