"""Write the first NTRAIN training and NTEST test images of the MNIST files in SRC as raw IDX
files into DST (created), for benchmarks on a subset.

Usage: python scripts/ref/mnist_subset.py SRC DST NTRAIN NTEST
"""
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_loop import load_mnist  # noqa: E402

src, dst, ntrain, ntest = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dst.mkdir(parents=True)
for split, prefix, n in (("train", "train", ntrain), ("test", "t10k", ntest)):
    images, labels = load_mnist(src, split)
    (dst / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">4I", 0x803, n, 28, 28) + images[:n].tobytes())
    (dst / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">2I", 0x801, n) + labels[:n].tobytes())
