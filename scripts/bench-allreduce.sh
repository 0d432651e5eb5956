#!/usr/bin/env bash
# All-reduce benchmark: our shared-memory backend vs PyTorch gloo, 2 processes, float32.
# Usage: scripts/bench-allreduce.sh [--world N] [--transport shm|tcp]
# Needs $MNIST_PYTHON (a Python with torch); prints a table of latency and bus bandwidth.
set -euo pipefail
cd "$(dirname "$0")/.."
WORLD=2
TRANSPORT=shm
while [ $# -gt 0 ]; do
  case "$1" in
    --world) WORLD=$2; shift 2 ;;
    --transport) TRANSPORT=$2; shift 2 ;;
    *) echo "usage: $0 [--world N] [--transport shm|tcp]" >&2; exit 2 ;;
  esac
done
PY=${MNIST_PYTHON:-/root/.cache/mnist-ddp/venv-torch-2.11.0/bin/python}
SIZES=4096,65536,1048576,4194304,16777216,67108864
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p mnist-comm --bin allreduce-bench
ours=$(mktemp) gloo=$(mktemp)
trap 'rm -f "$ours" "$gloo"' EXIT
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$TARGET/release/allreduce-bench" --world "$WORLD" --transport "$TRANSPORT" --sizes "$SIZES" >"$ours"
"$PY" scripts/allreduce_gloo.py --world "$WORLD" --sizes "$SIZES" >"$gloo"
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-8s %12s %12s %12s %12s %10s\n" size "ours µs" "gloo µs" "ours GB/s" "gloo GB/s" "busbw x"
join <(grep ^SIZE "$ours" | cut -d' ' -f2-4 | sort -n) <(grep ^SIZE "$gloo" | cut -d' ' -f2-4 | sort -n) |
  sort -n | awk '{
    b = $1; s = (b >= 1048576) ? sprintf("%d MB", b / 1048576) : sprintf("%d KB", b / 1024);
    printf "%-8s %12.1f %12.1f %12.3f %12.3f %10.2f\n", s, $2, $4, $3, $5, $3 / $5 }'
