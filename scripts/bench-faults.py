#!/usr/bin/env python3
"""Failure drill: for each fault, run `mnist-launch --nproc 2 --max-restarts 1
--checkpoint-every K` on a subset of the real MNIST data, inject the fault, and measure
  - detect:  seconds from the fault acting (its `MNIST_FAULT:` line, or the signal we sent)
             to the launcher's `restart 1 of 1` line,
  - resume:  seconds from that line to the first training step of the restarted round,
  - lost:    steps done before the fault that had to be done again,
  - accuracy of the finished run against an uninterrupted one.
The last row loses a whole node: three launchers on loopback (`--nnodes 2:3`, one process
each), node 2's launcher killed with SIGKILL in the middle of epoch 2; the other two continue
with 2 ranks (detect: the kill -> node 0's `lost node 2` line; resume: that line -> rank 1's
first step of round 1).
Prints a Markdown table. Usage (after `cargo build -p mnist-launch -p mnist-worker`):
    scripts/bench-faults.py [--train N] [--test N] [--every K] [--bin DIR] [--only NAME]
Needs only the Python standard library; reads data/mnist (gzipped or raw IDX)."""

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def read_idx(path):
    raw = Path(path)
    if not raw.exists():
        raw = Path(str(path) + ".gz")
    data = raw.read_bytes()
    return gzip.decompress(data) if raw.suffix == ".gz" else data


def subset(src, dst, n_train, n_test):
    """Write the first n images/labels of each split as raw IDX files."""
    dst.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        img = read_idx(src / f"{prefix}-images-idx3-ubyte")
        lab = read_idx(src / f"{prefix}-labels-idx1-ubyte")
        header = bytearray(img[:16])
        header[4:8] = n.to_bytes(4, "big")
        (dst / f"{prefix}-images-idx3-ubyte").write_bytes(bytes(header) + img[16 : 16 + n * 784])
        lheader = bytearray(lab[:8])
        lheader[4:8] = n.to_bytes(4, "big")
        (dst / f"{prefix}-labels-idx1-ubyte").write_bytes(bytes(lheader) + lab[8 : 8 + n])


class Run:
    """One launch whose stderr lines are time-stamped as they arrive."""

    def __init__(self, bin_dir, data, out, extra, fault=None, nproc=2):
        env = dict(os.environ)
        env.pop("MNIST_FAULT", None)
        if fault:
            env["MNIST_FAULT"] = fault
        args = [str(bin_dir / "mnist-launch"), "--device", "cpu", "--threads", "1",
                "--progress", "never", "--backend", "cpu", "--nproc", str(nproc),
                "--data", str(data), "--path", str(out), "--epochs", "2",
                "--batch-size", "64", "--test-batch-size", "500", "--log-interval", "1"] + extra
        self.out = Path(out)
        self.start = time.monotonic()
        self.lines = []  # (seconds since start, line)
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.seen = {}  # pattern name -> seconds since start, filled by the log watcher
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        self.watcher.start()

    def _watch(self):
        """Note when the fault acts and when round 1 trains its first step (rank logs)."""
        marker = "---- mnist-launch: restart round 1 ----"
        while self.proc.poll() is None:
            now = time.monotonic() - self.start
            texts = {}
            for name in ("rank0.log", "rank1.log"):
                try:
                    texts[name] = (self.out / name).read_text(errors="replace")
                except FileNotFoundError:
                    texts[name] = ""
            if "fault" not in self.seen and any(
                    re.search(r"MNIST_FAULT: rank \d at step \d+: (?!slow)", t.split(marker)[0])
                    for t in texts.values()):
                self.seen["fault"] = now
            t1 = texts["rank1.log"]
            if "trained" not in self.seen and marker in t1 and re.search(
                    r"rank 1: epoch \d+ step", t1.split(marker)[1]):
                self.seen["trained"] = now
            time.sleep(0.005)

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append((time.monotonic() - self.start, line.rstrip("\n")))

    def wait(self, timeout=600):
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(5)
        return rc

    def first(self, pattern):
        rx = re.compile(pattern)
        return next(((t, l) for t, l in self.lines if rx.search(l)), (None, None))

    def watch_log(self, name, pattern, timeout=300):
        """Seconds since start when `pattern` first appears in <out>/<name>."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if rx.search((self.out / name).read_text(errors="replace")):
                    return time.monotonic() - self.start
            except FileNotFoundError:
                pass
            time.sleep(0.01)
        return None

    def pid_of_rank(self, rank):
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                argv = (p / "cmdline").read_bytes().split(b"\0")
                env = (p / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"mnist-worker") and str(self.out).encode() in argv \
                    and f"RANK={rank}".encode() in env:
                return int(p.name)
        return None


def metrics(out):
    return [json.loads(l) for l in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def lost_node(a, data, work):
    """Three loopback nodes with --nnodes 2:3; node 2's launcher is killed mid epoch 2. The
    accuracy is compared with an uninterrupted run of 3 ranks (the same global batch before
    the loss; 2 ranks after it)."""
    base3 = Run(a.bin, data, work / "straight3", ["--checkpoint-every", str(a.every)], nproc=3)
    assert base3.wait() == 0, "the uninterrupted 3-rank run failed"
    ref = metrics(work / "straight3")[-1]
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    steps3 = -(-(-(-a.train // 3)) // 64)  # ceil(ceil(train / 3) / 64)
    marker = "---- mnist-launch: restart round 1 ----"
    runs = []
    for i in range(3):
        extra = ["--nnodes", "2:3", "--node-rank", str(i), "--master-port", str(port),
                 "--checkpoint-every", str(a.every), "--max-restarts", "1",
                 "--timeout", str(a.timeout), "--grace-period", "1"]
        # Node 2 is paced in round 0 so the kill lands mid-epoch.
        fault = "2:0:slow=100ms" if i == 2 else None
        runs.append(Run(a.bin, data, work / f"lost-n{i}", extra, fault, nproc=1))
    runs[2].watch_log("rank2.log", rf"rank 2: epoch 2 step {steps3 // 2}/")
    runs[2].proc.send_signal(signal.SIGKILL)
    t_kill = time.monotonic()
    rcs = [runs[0].wait(), runs[1].wait()]
    runs[2].wait()
    t_lost, _ = runs[0].first(r"rendezvous: lost node 2")
    t_lost = runs[0].start + t_lost if t_lost is not None else None
    # Rank 1's first step of round 1.
    t_resume = runs[1].seen.get("trained")  # noted by node 1's log watcher while it ran
    t_resume = runs[1].start + t_resume if t_resume is not None else None
    log0 = (work / "lost-n0" / "rank0.log").read_text(errors="replace")
    m = re.search(r"\(step (\d+);", log0.split(marker)[-1])
    resumed = int(m.group(1)) if m else 0
    first = (work / "lost-n1" / "rank1.log").read_text(errors="replace").split(marker)[0]
    last = re.findall(r"rank 1: epoch (\d+) step (\d+)/", first)
    done = (int(last[-1][0]) - 1) * steps3 + int(last[-1][1]) if last else 0
    out0 = work / "lost-n0"
    final = metrics(out0)[-1] if (out0 / "metrics.jsonl").exists() else {}
    return ("lost node (launcher SIGKILL)",
            f"node 2 of 3 (--nnodes 2:3), epoch 2 mid; continues on 2",
            f"{t_lost - t_kill:.1f}" if t_lost else "–",
            f"{t_resume - t_lost:.1f}" if t_resume and t_lost else "–",
            max(done - resumed, 0),
            f"{final.get('test_top1', float('nan')):.2f} vs {ref['test_top1']:.2f} (3 ranks)"
            + ("" if rcs == [0, 0] else f" (exit {rcs})"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=6400)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--bin", type=Path, default=ROOT / "target" / "debug")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--only", default="", help="run only the rows whose fault name contains this")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    data = work / "data"
    subset(ROOT / "data" / "mnist", data, a.train, a.test)
    steps = a.train // 2 // 64 + (1 if (a.train // 2) % 64 else 0)
    at = steps + steps // 2  # the middle of epoch 2
    common = ["--checkpoint-every", str(a.every), "--max-restarts", "1",
              "--timeout", str(a.timeout), "--grace-period", "1"]

    base = Run(a.bin, data, work / "straight", ["--checkpoint-every", str(a.every)])
    assert base.wait() == 0, "the uninterrupted run failed"
    ref = metrics(work / "straight")[-1]

    rows = []
    cases = [
        ("kill -9 (SIGKILL)", "rank 1, external, epoch 2 mid", None, "KILL"),
        ("SIGSTOP", "rank 1, external, epoch 2 mid", None, "STOP"),
        ("crash (SIGSEGV)", f"rank 1, step {at}", f"1:{at}:crash", None),
        ("exit-code=7", f"rank 1, step {at}", f"1:{at}:exit-code=7", None),
        ("hang", f"rank 1, step {at}", f"1:{at}:hang", None),
        ("corrupt-gradient", f"rank 1, step {at}", f"1:{at}:corrupt-gradient", None),
        ("crash-in-checkpoint", f"rank 0, checkpoint at step ≥ {at}",
         f"0:{at}:crash-in-checkpoint", None),
    ]
    for name, where, fault, sig in [c for c in cases if a.only in c[0]]:
        out = work / re.sub(r"\W+", "-", name)
        # External signals: pace rank 1 in round 0 so the signal lands mid-epoch.
        f = fault or "1:0:slow=100ms"
        r = Run(a.bin, data, out, common, f)
        if sig:
            t_fault = r.watch_log("rank1.log", rf"rank 1: epoch 2 step {steps // 2}/")
            pid = r.pid_of_rank(1)
            os.kill(pid, getattr(signal, "SIG" + sig))
            t_fault = time.monotonic() - r.start
        rc = r.wait()
        if not sig:
            t_fault = r.seen.get("fault")
        t_restart, _ = r.first(r"^mnist-launch: restart 1 of 1")
        t_resume = r.seen.get("trained")
        log0 = (out / "rank0.log").read_text(errors="replace")
        second = log0.split("---- mnist-launch: restart round 1 ----")[-1]
        m = re.search(r"\(step (\d+);", second)
        resumed_step = int(m.group(1)) if m else 0
        first_round = (out / "rank1.log").read_text(errors="replace").split(
            "---- mnist-launch: restart round 1 ----")[0]
        # Steps finished before the failure: the last `rank 1: epoch e step k/n` of round 0.
        last = re.findall(r"rank 1: epoch (\d+) step (\d+)/", first_round)
        done = (int(last[-1][0]) - 1) * steps + int(last[-1][1]) if last else 0
        final = metrics(out)[-1] if (out / "metrics.jsonl").exists() else {}
        rows.append((name, where,
                     f"{t_restart - t_fault:.1f}" if t_restart and t_fault else "–",
                     f"{t_resume - t_restart:.1f}" if t_resume and t_restart else "–",
                     max(done - resumed_step, 0),
                     f"{final.get('test_top1', float('nan')):.2f} vs {ref['test_top1']:.2f}"
                     + ("" if rc == 0 else f" (exit {rc})")))
    if a.only in "lost node":
        rows.append(lost_node(a, data, work))
    print(f"Subset: {a.train} train / {a.test} test images, 2 ranks × batch 64 ({steps} steps "
          f"per epoch), 2 epochs, --checkpoint-every {a.every}, --timeout {a.timeout:g}, "
          "--grace-period 1, --max-restarts 1")
    print("| fault | where injected | time to detect (s) | time to resume (s) | steps lost "
          "| final test top-1 % vs uninterrupted |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(x) for x in row) + " |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
