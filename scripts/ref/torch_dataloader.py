"""Reference timing: the classic pytorch/examples MNIST loop, with a per-sample Dataset and DataLoader.

Each __getitem__ turns one uint8 image into a normalised tensor, emulating torchvision's
ToTensor + Normalize((0.1307,), (0.3081,)) per sample (without the PIL round trip, so this is
if anything slightly faster than the real example). DataLoader(batch_size=64, shuffle=True) with
the classic example's CPU settings: no worker processes (num_workers=0; its
`num_workers=1, pin_memory=True` are CUDA-only kwargs). Same LeNet and SGD as mnist-ddp.
Prints `RESULT epoch_seconds=<s> images_per_second=<n>` (median of the timed epochs).

Usage: python scripts/ref/torch_dataloader.py [--data DIR] [--threads 2] [--epochs 1]
       [--warmup-batches 20] [--num-workers 0]
"""

import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from torch_loop import MEAN, STD, LeNet, load_mnist, make_optimizer, parse_common


class MnistSamples(Dataset):
    """One normalised [1, 28, 28] image and its label per index, as torchvision's MNIST gives."""

    def __init__(self, data_dir):
        self.images, self.labels = load_mnist(data_dir)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = torch.from_numpy(self.images[i].copy()).float().div(255).sub(MEAN).div(STD).unsqueeze(0)
        return img, int(self.labels[i])


def run_epoch(model, opt, loader, max_batches):
    """Train over `loader` (at most `max_batches` batches when non-zero); returns images seen."""
    seen = 0
    for b, (data, target) in enumerate(loader):
        if max_batches and b >= max_batches:
            break
        opt.zero_grad()
        loss = F.cross_entropy(model(data), target)
        loss.backward()
        opt.step()
        seen += target.numel()
    return seen


def main():
    p = parse_common(__doc__.splitlines()[0], threads=2, epochs=1)
    p.add_argument("--warmup-batches", type=int, default=20, help="untimed batches before timing")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    loader = DataLoader(
        MnistSamples(args.data),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.num_workers,
    )
    model = LeNet()
    opt = make_optimizer(model)
    model.train()
    run_epoch(model, opt, loader, args.warmup_batches)
    times, images = [], 0
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        images = run_epoch(model, opt, loader, args.max_batches)
        dt = time.perf_counter() - t0
        times.append(dt)
        print(f"epoch {epoch + 1}: {dt:.3f} s", file=sys.stderr)
    secs = statistics.median(times)
    print(f"RESULT epoch_seconds={secs:.4f} images_per_second={images / secs:.1f} images={images}")


if __name__ == "__main__":
    main()
