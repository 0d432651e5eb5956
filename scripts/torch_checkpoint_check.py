#!/usr/bin/env python3
"""PyTorch side of the mnist-checkpoint interop tests (crates/mnist-checkpoint/tests).

Expected-value files ("manifests") are text, one tensor per line:
    name <TAB> comma-separated shape <TAB> space-separated float32 bit patterns (decimal u32)
holding the row-major values as float32, so both sides compare bit for bit.

Commands:
  check-ours CKPT MANIFEST   torch.load(CKPT) (weights_only default, and with mmap=True)
                             must equal MANIFEST in order and values, without warnings;
                             then LeNet().load_state_dict(strict=True).
  make OUTDIR                write checkpoints with torch.save plus a .manifest for each:
                             lenet.pt (a real state_dict, with _metadata), lenet_p4.pt
                             (pickle_protocol=4), mixed.pt and mixed_p4.pt (float64, float16,
                             bfloat16, int64, bool, transposed, offset and strided slices of
                             one shared storage, expanded, 0-dim, empty, nn.Parameter), and
                             legacy.pt (_use_new_zipfile_serialization=False).
Prints "OK ..." and exits 0 on success; raises (exit 1) on any mismatch.
"""
import collections
import os
import sys
import warnings

import torch
import torch.nn as nn

# The reference LeNet, defined once for all the scripts in scripts/ref/torch_loop.py.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "ref"))
from torch_loop import LeNet  # noqa: E402


def bits(t):
    """float32 bit patterns of t's values in row-major order."""
    flat = t.detach().float().contiguous().reshape(-1)
    return flat.view(torch.int32).tolist()


def write_manifest(path, sd):
    with open(path, "w") as f:
        for name, t in sd.items():
            shape = ",".join(str(d) for d in t.shape)
            vals = " ".join(str(b & 0xFFFFFFFF) for b in bits(t))
            f.write(f"{name}\t{shape}\t{vals}\n")


def read_manifest(path):
    out = collections.OrderedDict()
    with open(path) as f:
        for line in f:
            name, shape, vals = line.rstrip("\n").split("\t")
            shape = [int(d) for d in shape.split(",")] if shape else []
            vals = [int(v) for v in vals.split()] if vals else []
            out[name] = (shape, [v - (1 << 32) if v >= 1 << 31 else v for v in vals])
    return out


def check_ours(ckpt, manifest):
    expected = read_manifest(manifest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sd = torch.load(ckpt)  # weights_only=True is the default in torch >= 2.6
        sd_wo = torch.load(ckpt, weights_only=True)
        sd_mmap = torch.load(ckpt, mmap=True)  # needs the 64-byte record alignment
    if caught:
        raise AssertionError(f"torch.load warned: {[str(w.message) for w in caught]}")
    assert isinstance(sd, collections.OrderedDict), type(sd)
    assert list(sd.keys()) == list(expected.keys()), (list(sd.keys()), list(expected))
    for name, (shape, vals) in expected.items():
        for d in (sd, sd_wo, sd_mmap):
            t = d[name]
            assert t.dtype == torch.float32, (name, t.dtype)
            assert list(t.shape) == shape, (name, list(t.shape), shape)
            assert not t.requires_grad, name
            assert bits(t) == vals, f"{name}: values differ"
    model = LeNet()
    model.load_state_dict(sd, strict=True)
    for name, t in model.state_dict().items():
        assert bits(t) == expected[name][1], f"model {name}: values differ after load"
    print(f"OK check-ours {len(sd)} tensors, torch {torch.__version__}")


def mixed_dict():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(40, generator=g)
    m = torch.randn(4, 5, generator=g)
    d = collections.OrderedDict()
    d["f64"] = torch.randn(3, 4, dtype=torch.float64, generator=g)
    d["transposed"] = m.t()
    d["slice_a"] = base[2:8].view(2, 3)
    d["slice_b"] = base[10:40:3]
    d["whole"] = base
    d["col"] = m[:, 1]
    d["f16"] = torch.randn(5, generator=g).half()
    d["bf16"] = torch.randn(2, 2, generator=g).bfloat16()
    d["i64_scalar"] = torch.tensor(7)
    d["scalar"] = torch.tensor(3.5)
    d["param"] = nn.Parameter(torch.randn(3, generator=g))
    d["empty"] = torch.zeros(0, 3)
    d["expanded"] = torch.randn(1, 3, generator=g).expand(4, 3)
    d["flags"] = torch.tensor([True, False, True])
    assert not d["transposed"].is_contiguous()
    assert d["slice_a"].untyped_storage().data_ptr() == base.untyped_storage().data_ptr()
    return d


def make(outdir):
    os.makedirs(outdir, exist_ok=True)
    torch.manual_seed(0)
    model = LeNet()
    sd = model.state_dict()
    assert hasattr(sd, "_metadata")
    p = lambda n: os.path.join(outdir, n)
    torch.save(sd, p("lenet.pt"), _use_new_zipfile_serialization=True)
    torch.save(sd, p("lenet_p4.pt"), pickle_protocol=4)
    write_manifest(p("lenet.manifest"), sd)
    mixed = mixed_dict()
    torch.save(mixed, p("mixed.pt"))
    torch.save(mixed, p("mixed_p4.pt"), pickle_protocol=4)
    write_manifest(p("mixed.manifest"), mixed)
    torch.save(sd, p("legacy.pt"), _use_new_zipfile_serialization=False)
    # Our reader must accept what torch itself can load back.
    torch.load(p("mixed.pt"))
    print(f"OK make {outdir}")


def main(argv):
    if len(argv) == 4 and argv[1] == "check-ours":
        check_ours(argv[2], argv[3])
    elif len(argv) == 3 and argv[1] == "make":
        make(argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
