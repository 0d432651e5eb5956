#!/usr/bin/env python3
"""Write the first NTRAIN training and NTEST test images of an MNIST folder (gzipped or raw
IDX) as raw IDX files into DST: the small data set the engine checks train on.

usage: subset.py SRC DST NTRAIN NTEST
"""
import gzip
import struct
import sys
from pathlib import Path


def read(src: Path, stem: str) -> bytes:
    for name in (stem, stem + ".gz"):
        p = src / name
        if p.exists():
            data = p.read_bytes()
            return gzip.decompress(data) if name.endswith(".gz") else data
    sys.exit(f"subset.py: {src}/{stem}[.gz] not found")


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    src, dst, ntrain, ntest = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    dst.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", ntrain), ("t10k", ntest)):
        images = read(src, f"{prefix}-images-idx3-ubyte")
        labels = read(src, f"{prefix}-labels-idx1-ubyte")
        magic, count, rows, cols = struct.unpack(">4I", images[:16])
        if magic != 0x803 or n > count:
            sys.exit(f"subset.py: {src}/{prefix}-images: magic {magic:#x}, {count} images, {n} asked for")
        (dst / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">4I", 0x803, n, rows, cols) + images[16 : 16 + n * rows * cols])
        (dst / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">2I", 0x801, n) + labels[8 : 8 + n])


if __name__ == "__main__":
    main()
