"""Reference timing on a GPU: a plain single-process PyTorch loop with MNIST preloaded on the GPU.

The training split is normalised once ((x/255 - 0.1307) / 0.3081) and moved to the device; each
epoch draws a randperm on the device and gathers batches of 64 by index from the GPU tensors.
LeNet and SGD (lr 0.01, momentum 0.9, weight decay 5e-4) are mnist-ddp's, imported from
torch_loop.py. One warm-up epoch, then the timed epoch(s), each bracketed by
torch.cuda.synchronize(). Prints `RESULT epoch_seconds=<s> images_per_second=<n> images=<n>`
(the median of the timed epochs).

Usage: python scripts/ref/torch_gpu_epoch.py [--data DIR] [--epochs 1] [--warmup 1]
       [--device cuda] [--max-batches N]
"""

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_loop import LeNet, make_optimizer, normalised_tensors, parse_common, train_epoch  # noqa: E402


def main():
    p = parse_common(__doc__.splitlines()[0], threads=1, epochs=1)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (for a smoke test)")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch.cuda.is_available() is False (no GPU or driver)")
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x, y = normalised_tensors(args.data)
    x, y = x.to(device), y.to(device)
    model = LeNet().to(device)
    opt = make_optimizer(model)
    model.train()
    times, images = [], 0
    for epoch in range(args.warmup + args.epochs):
        order = torch.randperm(x.shape[0], device=device)
        sync()
        t0 = time.perf_counter()
        images = train_epoch(model, opt, x, y, order, args.batch_size, args.max_batches)
        sync()
        dt = time.perf_counter() - t0
        if epoch >= args.warmup:
            times.append(dt)
        kind = "warm-up" if epoch < args.warmup else "timed"
        print(f"epoch {epoch + 1}: {dt:.3f} s ({kind}) on {device}", file=sys.stderr)
    secs = statistics.median(times)
    print(f"RESULT epoch_seconds={secs:.4f} images_per_second={images / secs:.1f} images={images}")


if __name__ == "__main__":
    main()
