"""PyTorch side of worker/tests/interop.rs and worker/tests/net.rs: the reference LeNet and
the DDP example's Net (--arch, default LeNet), in plain PyTorch.

Subcommands (all print one JSON object on stdout):
  init  --out M [--seed S --prefix]              save a freshly initialised state_dict
  train --data D --out M [--seed S --steps N --prefix]
        train with SGD on D's training split (train mode: BatchNorm batch statistics,
        dropout), save the state_dict (--prefix: keys with DDP's `module.` prefix, as
        `torch.save(ddp_model.state_dict())` writes them)
  eval  --data D --model M [--n K --logits-out L]
        load M strictly (keys with a `module.` prefix into a DDP-shaped wrapper whose child
        is `module`), evaluate D's test split in eval mode like `mnist-worker --evaluate`
        (batches of 1000, loss summed per sample), print correct/count/avg_loss, and write the
        outputs of the first K test images to L (raw little-endian float32, K x 10)
  grads --data D --model M --n K --out G
        load M strictly, eval mode; forward the first K test images, backward the mean
        cross-entropy; write to G the outputs (K x 10) and then every parameter's gradient in
        named_parameters order (raw little-endian float32); print the loss
  ddp-load --model M [--expect-prefix]
        load M into a real DistributedDataParallel(model) (gloo, world size 1) the ways a
        DDP script does: `module.` keys with ddp.load_state_dict(strict=True), plain keys with
        ddp.module.load_state_dict(strict=True) and, prefixed on the fly, with
        ddp.load_state_dict({"module." + k: v}, strict=True); check every loaded value
        (int64 num_batches_tracked included) against the file; print how it loaded

Run: $MNIST_PYTHON scripts/ref/interop_logits.py eval --data DIR --model mnist_model.pt
"""
import argparse
import gzip
import json
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F


# The reference networks, shared with the benchmark scripts.
from torch_loop import MODELS  # noqa: E402


class Wrapped(torch.nn.Module):
    """What DDP's state_dict keys describe: the model as the child `module`."""

    def __init__(self, inner):
        super().__init__()
        self.module = inner


def save(model, path, prefix):
    torch.save((Wrapped(model) if prefix else model).state_dict(), path)


def load_strict(arch, path):
    """The model of `arch` with M's weights, loaded strictly (prefixed keys via Wrapped)."""
    model = MODELS[arch]()
    sd = torch.load(path, weights_only=True)
    target = Wrapped(model) if all(k.startswith("module.") for k in sd) else model
    target.load_state_dict(sd, strict=True)
    return model


def read_idx(path):
    """Read an IDX file (raw or gzipped) into a numpy uint8 array."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(data, name):
    for cand in (name, name.replace("-idx", ".idx", 1)):
        for ext in ("", ".gz"):
            p = os.path.join(data, cand + ext)
            if os.path.isfile(p):
                return p
    raise SystemExit(f"{name} not found in {data}")


def load_split(data, prefix):
    """Images normalised like torchvision's ToTensor + Normalize((0.1307,), (0.3081,))."""
    img = read_idx(find(data, f"{prefix}-images-idx3-ubyte"))
    lab = read_idx(find(data, f"{prefix}-labels-idx1-ubyte"))
    x = torch.from_numpy(img.copy()).to(torch.float32).view(-1, 1, 28, 28)
    x = (x / 255.0 - 0.1307) / 0.3081
    return x, torch.from_numpy(lab.astype(np.int64))


def cmd_init(a):
    torch.manual_seed(a.seed)
    save(MODELS[a.arch](), a.out, a.prefix)
    print(json.dumps({"saved": a.out}))


def cmd_train(a):
    torch.manual_seed(a.seed)
    model = MODELS[a.arch]()
    model.train()
    x, y = load_split(a.data, "train")
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(a.seed)
    step = 0
    while step < a.steps:
        for idx in torch.randperm(len(y), generator=g).split(a.batch):
            if step == a.steps:
                break
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            step += 1
    save(model, a.out, a.prefix)
    print(json.dumps({"saved": a.out, "steps": step}))


def cmd_grads(a):
    model = load_strict(a.arch, a.model)
    model.eval()
    x, y = load_split(a.data, "t10k")
    out = model(x[: a.n])
    loss = F.cross_entropy(out, y[: a.n])
    loss.backward()
    parts = [out.detach().reshape(-1)] + [p.grad.reshape(-1) for _, p in model.named_parameters()]
    torch.cat(parts).contiguous().numpy().astype("<f4").tofile(a.out)
    names = [n for n, _ in model.named_parameters()]
    print(json.dumps({"loss": loss.item(), "parameters": names}))


def cmd_ddp_load(a):
    import tempfile

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    sd = torch.load(a.model, weights_only=True)
    prefixed = all(k.startswith("module.") for k in sd)
    if prefixed != a.expect_prefix:
        raise SystemExit(f"{a.model}: keys {'have' if prefixed else 'lack'} the module. prefix: {list(sd)[:3]}")
    with tempfile.TemporaryDirectory() as tmp:
        store = dist.FileStore(os.path.join(tmp, "store"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
        try:
            ways = {}
            if prefixed:
                ways["ddp.load_state_dict(sd)"] = lambda ddp: ddp.load_state_dict(sd, strict=True)
            else:
                ways["ddp.module.load_state_dict(sd)"] = lambda ddp: ddp.module.load_state_dict(sd, strict=True)
                with_prefix = {"module." + k: v for k, v in sd.items()}
                ways['ddp.load_state_dict({"module." + k: v})'] = lambda ddp: ddp.load_state_dict(with_prefix, strict=True)
            for how, load in ways.items():
                torch.manual_seed(99)
                ddp = DDP(MODELS[a.arch]())
                load(ddp)
                got = ddp.state_dict()
                assert list(got) == ["module." + k.removeprefix("module.") for k in sd], (list(got), list(sd))
                for k, v in sd.items():
                    g = got["module." + k.removeprefix("module.")]
                    assert g.dtype == v.dtype and torch.equal(g, v), f"{how}: {k} differs after loading"
        finally:
            dist.destroy_process_group()
    print(json.dumps({"loaded": list(ways), "tensors": len(sd)}))


@torch.no_grad()
def cmd_eval(a):
    model = load_strict(a.arch, a.model)
    model.eval()
    x, y = load_split(a.data, "t10k")
    loss_sum, correct = 0.0, 0
    for lo in range(0, len(y), 1000):
        out = model(x[lo : lo + 1000])
        loss_sum += F.cross_entropy(out, y[lo : lo + 1000], reduction="sum").item()
        correct += int((out.argmax(1) == y[lo : lo + 1000]).sum())
    if a.logits_out:
        model(x[: a.n]).contiguous().numpy().astype("<f4").tofile(a.logits_out)
    print(json.dumps({"correct": correct, "count": len(y), "loss_sum": loss_sum, "avg_loss": loss_sum / len(y)}))


def main():
    torch.set_num_threads(1)
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("init")
    i.add_argument("--prefix", action="store_true")
    i.add_argument("--out", required=True)
    i.add_argument("--seed", type=int, default=0)
    t = sub.add_parser("train")
    t.add_argument("--prefix", action="store_true")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=100)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--lr", type=float, default=0.02)
    e = sub.add_parser("eval")
    e.add_argument("--data", required=True)
    e.add_argument("--model", required=True)
    e.add_argument("--n", type=int, default=64)
    e.add_argument("--logits-out")
    g = sub.add_parser("grads")
    g.add_argument("--data", required=True)
    g.add_argument("--model", required=True)
    g.add_argument("--n", type=int, default=64)
    g.add_argument("--out", required=True)
    d = sub.add_parser("ddp-load")
    d.add_argument("--model", required=True)
    d.add_argument("--expect-prefix", action="store_true", help="the keys must carry module.")
    for q in (i, t, e, g, d):
        q.add_argument("--arch", choices=sorted(MODELS), default="LeNet")
    a = p.parse_args()
    cmds = {"init": cmd_init, "train": cmd_train, "eval": cmd_eval, "grads": cmd_grads, "ddp-load": cmd_ddp_load}
    cmds[a.cmd](a)


if __name__ == "__main__":
    main()
