"""Reference timing: the classic pytorch/examples MNIST loop, with a per-sample Dataset and DataLoader.

With torchvision installed (scripts/bench.sh installs torchvision==0.26.0 into the venv) the
dataset is the reference's own: torchvision.datasets.MNIST with ToTensor + Normalize. Without it:

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


def torchvision_mnist(data_dir):
    """The reference's dataset: torchvision's MNIST (PIL image per sample, ToTensor, Normalize),
    read from a temporary MNIST/raw folder holding the decompressed files of `data_dir`."""
    import gzip
    import tempfile
    from pathlib import Path

    from torchvision import datasets, transforms

    root = Path(tempfile.mkdtemp(prefix="mnist-tv-"))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        src = Path(data_dir) / name
        data = gzip.open(str(src) + ".gz").read() if Path(str(src) + ".gz").exists() else src.read_bytes()
        (raw / name).write_bytes(data)
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    return datasets.MNIST(str(root), train=True, download=False, transform=tf)


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
    p.add_argument("--no-torchvision", action="store_true", help="per-sample tensor Dataset instead of torchvision's MNIST")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        import torchvision  # noqa: F401

        have_tv = not args.no_torchvision
    except ImportError:
        have_tv = False
    dataset = torchvision_mnist(args.data) if have_tv else MnistSamples(args.data)
    print(f"dataset: {'torchvision MNIST + ToTensor + Normalize (the reference)' if have_tv else 'per-sample tensor emulation (torchvision not installed)'}", file=sys.stderr)
    loader = DataLoader(
        dataset,
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
