"""Reference timing across machines: PyTorch DDP over gloo, one process per node.

Started once per node (scripts/bench-nodes.sh runs it inside each network namespace with
`ip netns exec`, GLOO_SOCKET_IFNAME=eth0), joining through tcp://--master-addr:--master-port.
Same in-memory loop as torch_ddp.py (DistributedSampler order, batches gathered by index, the
same LeNet/MLP and SGD; mnist-ddp's cosine learning-rate schedule over the run's epochs). After
the warm-up epoch(s) each timed epoch runs between two barriers; rank 0 then evaluates the test
set and prints `RESULT epoch_seconds=<s> images_per_second=<n> test_accuracy=<percent>`
(median over the timed epochs, all ranks' images).

Usage: python scripts/ref/torch_ddp_nodes.py --rank R --world N --master-addr A --master-port P
       [--data DIR] [--threads 1] [--epochs 1] [--warmup 1] [--model LeNet|MLP|Net]
"""

import math
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler

from torch_loop import MEAN, MODELS, STD, load_mnist, make_optimizer, normalised_tensors, parse_common, train_epoch


class MLP(nn.Module):
    """mnist-ddp's MLP: 784-500-250-10."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 500)
        self.fc2 = nn.Linear(500, 250)
        self.fc3 = nn.Linear(250, 10)

    def forward(self, x):
        x = x.view(-1, 784)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def test_accuracy(model, data_dir):
    """Top-1 accuracy (percent) on the test split."""
    images, labels = load_mnist(data_dir, "test")
    x = torch.from_numpy(images.copy()).float().div_(255).sub_(MEAN).div_(STD).unsqueeze(1)
    y = torch.from_numpy(labels.astype("int64"))
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum()) for i in range(0, len(y), 1000))
    return 100.0 * correct / len(y)


def main():
    models = {**MODELS, "MLP": MLP}
    p = parse_common(__doc__.splitlines()[0], threads=1, epochs=1, models=models)
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--master-addr", required=True)
    p.add_argument("--master-port", type=int, default=29600)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://{args.master_addr}:{args.master_port}",
        rank=args.rank,
        world_size=args.world,
    )
    try:
        torch.manual_seed(args.seed)
        x, y = normalised_tensors(args.data)
        net = models[args.model]()
        model = DDP(net)
        opt = make_optimizer(model)
        total = args.warmup + args.epochs
        sampler = DistributedSampler(range(x.shape[0]), num_replicas=args.world, rank=args.rank, shuffle=True, seed=args.seed)
        times, images = [], 0
        for epoch in range(total):
            for g in opt.param_groups:
                g["lr"] = 0.01 * 0.5 * (1 + math.cos(math.pi * epoch / total))
            model.train()
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
            if args.rank == 0:
                print(f"epoch {epoch + 1}: {dt:.3f} s ({'warm-up' if epoch < args.warmup else 'timed'})", file=sys.stderr)
        if args.rank == 0:
            secs = statistics.median(times)
            acc = test_accuracy(net, args.data)
            print(f"RESULT epoch_seconds={secs:.4f} images_per_second={images / secs:.1f} test_accuracy={acc:.2f}", flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
