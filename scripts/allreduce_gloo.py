"""All-reduce latency of PyTorch gloo: 2 processes on 127.0.0.1, float32 tensors.

Prints one line per size: `SIZE <bytes> <latency us> <busbw GB/s> <iterations>` (busbw as
nccl-tests: bytes / time * 2(n-1)/n), the same format as `allreduce-bench`.
Usage: python allreduce_gloo.py [--world 2] [--sizes 4096,65536,...]
       python allreduce_gloo.py --rank R --world N --master HOST:PORT [--sizes ...]
(the second form runs one rank, e.g. one per network namespace; set GLOO_SOCKET_IFNAME).
"""
import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def iterations(nbytes):
    return max(10, min(2000, (512 << 20) // max(nbytes, 1)))


def worker(rank, world, master, sizes):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://{master}", rank=rank, world_size=world)
    for nbytes in sizes:
        t = torch.ones(nbytes // 4, dtype=torch.float32)
        iters = iterations(nbytes)
        for _ in range(max(3, iters // 10)):
            dist.all_reduce(t)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(t)
        secs = (time.perf_counter() - start) / iters
        busbw = nbytes / secs * 2 * (world - 1) / world / 1e9
        if rank == 0:
            print(f"SIZE {nbytes} {secs * 1e6:.2f} {busbw:.3f} {iters}", flush=True)
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--sizes", default="4096,65536,1048576,4194304,16777216,67108864")
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--master", default=None)
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.rank is not None:
        if a.master is None:
            p.error("--rank needs --master HOST:PORT")
        worker(a.rank, a.world, a.master, sizes)
        return
    with socket.socket() as s:  # a free port for the gloo store
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(a.world, f"127.0.0.1:{port}", sizes), nprocs=a.world, join=True)


if __name__ == "__main__":
    main()
