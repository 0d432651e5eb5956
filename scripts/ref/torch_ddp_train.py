"""Reference accuracy run: PyTorch DistributedDataParallel over gloo on 127.0.0.1 with
mnist-ddp's schedule, to set beside `mnist-launch --nproc N --model Net ...`.

Same model (--model LeNet|Net; Net's BatchNorm is left unsynchronised: PyTorch's SyncBatchNorm
refuses CPU modules, DDP broadcasts rank 0's buffers every step), SGD (lr 0.01, momentum 0.9,
weight decay 5e-4), CosineAnnealingLR(T_max=epochs) stepped per epoch, cross-entropy on the
model's output, a DistributedSampler (shuffle, set_epoch) over the preloaded normalised
training set, batches gathered by index. After each epoch rank 0 evaluates the whole test
set in eval mode and prints `EPOCH e lr=.. train_seconds=.. test_loss=.. test_acc=..`; at the
end `RESULT best_acc=<percent> epochs=<n>`.

Usage: python scripts/ref/torch_ddp_train.py --model Net --world 2 --batch-size 32
       --test-batch-size 256 --epochs 20 [--data DIR] [--threads 1] [--max-batches K]
"""

import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler

from torch_ddp import free_port
from torch_loop import MEAN, MODELS, STD, load_mnist, make_optimizer, normalised_tensors, parse_common


def test_tensors(data_dir):
    images, labels = load_mnist(data_dir, "test")
    x = torch.from_numpy(images.copy()).float().div_(255).sub_(MEAN).div_(STD).unsqueeze(1)
    return x.contiguous(), torch.from_numpy(labels.astype(np.int64))


@torch.no_grad()
def evaluate(model, x, y, batch):
    model.eval()
    loss, correct = 0.0, 0
    for lo in range(0, len(y), batch):
        out = model(x[lo : lo + batch])
        loss += F.cross_entropy(out, y[lo : lo + batch], reduction="sum").item()
        correct += int((out.argmax(1) == y[lo : lo + batch]).sum())
    model.train()
    return loss / len(y), 100.0 * correct / len(y)


def worker(rank, args, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=args.world)
    try:
        torch.manual_seed(args.seed)
        x, y = normalised_tensors(args.data)
        tx, ty = test_tensors(args.data)
        model = DDP(MODELS[args.model]())
        opt = make_optimizer(model, lr=args.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
        sampler = DistributedSampler(range(x.shape[0]), num_replicas=args.world, rank=rank, shuffle=True, seed=args.seed)
        best = 0.0
        model.train()
        for epoch in range(args.epochs):
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler), dtype=torch.int64)
            lr = opt.param_groups[0]["lr"]
            t0 = time.perf_counter()
            for b, lo in enumerate(range(0, order.numel(), args.batch_size)):
                if args.max_batches and b >= args.max_batches:
                    break
                idx = order[lo : lo + args.batch_size]
                opt.zero_grad()
                F.cross_entropy(model(x.index_select(0, idx)), y.index_select(0, idx)).backward()
                opt.step()
            secs = time.perf_counter() - t0
            sched.step()
            if rank == 0:
                loss, acc = evaluate(model.module, tx, ty, args.test_batch_size)
                best = max(best, acc)
                print(f"EPOCH {epoch + 1} lr={lr:.6f} train_seconds={secs:.2f} test_loss={loss:.4f} test_acc={acc:.2f}", flush=True)
            dist.barrier()
        if rank == 0:
            print(f"RESULT best_acc={best:.2f} epochs={args.epochs}", flush=True)
    finally:
        dist.destroy_process_group()


def main():
    p = parse_common(__doc__.splitlines()[0], threads=1, epochs=20)
    p.add_argument("--world", type=int, default=2, help="number of processes")
    p.add_argument("--test-batch-size", type=int, default=1000)
    p.add_argument("--lr", type=float, default=0.01)
    args = p.parse_args()
    if args.world < 1:
        sys.exit(f"error: --world must be at least 1, got {args.world}")
    mp.spawn(worker, args=(args, free_port()), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
