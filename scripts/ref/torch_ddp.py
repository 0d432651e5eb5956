"""Reference timing: PyTorch DistributedDataParallel over gloo on 127.0.0.1, data held in memory.

Spawns --world processes (torch.multiprocessing), each with torch.set_num_threads(--threads).
Every rank preloads the normalised training images as one tensor, takes its indices from a
DistributedSampler (shuffle, set_epoch each epoch) and gathers batches of --batch-size by index:
the fairest in-memory DDP loop, no DataLoader. Same model (--model LeNet|Net; Net's BatchNorm
unsynchronised: PyTorch's SyncBatchNorm refuses CPU modules) and SGD as mnist-ddp. After the warm-up
epoch(s), each timed epoch runs between two barriers; rank 0 prints
`RESULT epoch_seconds=<s> images_per_second=<n>` (median over timed epochs, all ranks' images).

Usage: python scripts/ref/torch_ddp.py [--data DIR] [--world 2] [--threads 1] [--epochs 1]
"""

import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler

from torch_loop import MODELS, make_optimizer, normalised_tensors, parse_common, train_epoch


def worker(rank, args, port):
    """One rank: join the gloo group, train, and (rank 0) print the result line."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=args.world)
    try:
        torch.manual_seed(args.seed)
        x, y = normalised_tensors(args.data)
        model = DDP(MODELS[args.model]())
        opt = make_optimizer(model)
        model.train()
        sampler = DistributedSampler(range(x.shape[0]), num_replicas=args.world, rank=rank, shuffle=True, seed=args.seed)
        times, images = [], 0
        for epoch in range(args.warmup + args.epochs):
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler), dtype=torch.int64)
            dist.barrier()
            t0 = time.perf_counter()
            seen = train_epoch(model, opt, x, y, order, args.batch_size, args.max_batches)
            dist.barrier()
            dt = time.perf_counter() - t0
            if epoch >= args.warmup:
                times.append(dt)
                images = seen * args.world
            if rank == 0:
                print(f"epoch {epoch + 1}: {dt:.3f} s ({'warm-up' if epoch < args.warmup else 'timed'})", file=sys.stderr)
        if rank == 0:
            secs = statistics.median(times)
            print(f"RESULT epoch_seconds={secs:.4f} images_per_second={images / secs:.1f} images={images}", flush=True)
    finally:
        dist.destroy_process_group()


def free_port():
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = parse_common(__doc__.splitlines()[0], threads=1, epochs=1)
    p.add_argument("--world", type=int, default=2, help="number of processes")
    args = p.parse_args()
    if args.world < 1:
        sys.exit(f"error: --world must be at least 1, got {args.world}")
    mp.spawn(worker, args=(args, free_port()), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
