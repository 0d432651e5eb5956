"""Reference timing: a plain single-process PyTorch training loop over in-memory tensors.

MNIST is read from the gzipped IDX files with gzip+numpy, normalised once
((x/255 - 0.1307) / 0.3081) into one [N, 1, 28, 28] float tensor; each epoch draws a randperm
and gathers batches by index. LeNet and SGD (lr 0.01, momentum 0.9, weight decay 5e-4) match
mnist-ddp's. One warm-up epoch is excluded; the median of the timed epochs is reported as
`RESULT epoch_seconds=<s> images_per_second=<n>`.

The other reference scripts import `LeNet`, `load_mnist` and `parse_common` from here.
Usage: python scripts/ref/torch_loop.py [--data DIR] [--threads 2] [--epochs 2] [--warmup 1]
"""

import argparse
import gzip
import statistics
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN, STD = 0.1307, 0.3081


class LeNet(nn.Module):
    """LeNet as mnist-ddp defines it: conv-pool-relu twice, then three linear layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(256, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = x.view(-1, 256)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class Net(nn.Module):
    """The DDP example's Net: two 3x3 convolutions with BatchNorm, dropout, two linear layers,
    log_softmax (mnist-ddp's `--model Net`, same state_dict names)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.bn2 = nn.BatchNorm2d(64)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


MODELS = {"LeNet": LeNet, "Net": Net}


def read_idx(path):
    """Read one gzipped (or raw) IDX file into a numpy array, checking its header."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        sys.exit(f"error: {path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        sys.exit(f"error: {path} holds {data.size} bytes but its header says {dims}")
    return data.reshape(dims)


def load_mnist(data_dir, split="train"):
    """Images (uint8 [N, 28, 28]) and labels (uint8 [N]) of one split from `data_dir`."""
    prefix = "train" if split == "train" else "t10k"
    d = Path(data_dir)
    files = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        gz, raw = d / f"{prefix}-{kind}.gz", d / f"{prefix}-{kind}"
        if gz.exists():
            files.append(gz)
        elif raw.exists():
            files.append(raw)
        else:
            sys.exit(f"error: neither {gz} nor {raw} exists (see --data)")
    return read_idx(files[0]), read_idx(files[1])


def normalised_tensors(data_dir):
    """The training split as normalised float images [N, 1, 28, 28] and int64 labels [N]."""
    images, labels = load_mnist(data_dir)
    x = torch.from_numpy(images.copy()).float().div_(255).sub_(MEAN).div_(STD).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x.contiguous(), y


def make_optimizer(model, lr=0.01):
    """SGD as mnist-ddp configures it by default."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)


def parse_common(description, threads, epochs, models=MODELS):
    """Flags shared by the reference scripts (`--model` chooses among `models`)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", default="data/mnist", help="folder with the MNIST IDX files")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=threads, help="torch.set_num_threads")
    p.add_argument("--epochs", type=int, default=epochs, help="timed epochs")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up epochs")
    p.add_argument(
        "--max-batches",
        type=int,
        default=0,
        help="stop each epoch after this many batches (0: full epochs; for smoke tests)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--model", choices=sorted(models), default="LeNet", help="network to train")
    return p


def train_epoch(model, opt, x, y, order, batch_size, max_batches):
    """One pass over `order` in batches gathered by index; returns the images processed."""
    n = order.numel()
    seen = 0
    for b, lo in enumerate(range(0, n, batch_size)):
        if max_batches and b >= max_batches:
            break
        idx = order[lo : lo + batch_size]
        data, target = x.index_select(0, idx), y.index_select(0, idx)
        opt.zero_grad()
        loss = F.cross_entropy(model(data), target)
        loss.backward()
        opt.step()
        seen += idx.numel()
    return seen


def main():
    args = parse_common(__doc__.splitlines()[0], threads=2, epochs=2).parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, y = normalised_tensors(args.data)
    model = MODELS[args.model]()
    opt = make_optimizer(model)
    model.train()
    times, images = [], 0
    for epoch in range(args.warmup + args.epochs):
        order = torch.randperm(x.shape[0])
        t0 = time.perf_counter()
        images = train_epoch(model, opt, x, y, order, args.batch_size, args.max_batches)
        dt = time.perf_counter() - t0
        if epoch >= args.warmup:
            times.append(dt)
        print(f"epoch {epoch + 1}: {dt:.3f} s ({'warm-up' if epoch < args.warmup else 'timed'})", file=sys.stderr)
    secs = statistics.median(times)
    print(f"RESULT epoch_seconds={secs:.4f} images_per_second={images / secs:.1f} images={images}")


if __name__ == "__main__":
    main()
