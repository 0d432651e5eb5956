#!/usr/bin/env bash
# All-reduce benchmark: our CPU backends vs PyTorch gloo, float32, processes on this host.
# Usage: scripts/bench-allreduce.sh [--world N] [--transport shm|auto|tcp|star] [--nodes K] [--no-gloo]
#   shm           one node, shared memory (default)
#   auto --nodes K  the hierarchical path: K fake nodes on this host (shared memory inside a
#                 node, the TCP ring between node leaders over loopback)
#   tcp           the TCP ring alone (every rank its own node)
#   star          the former star through rank 0 (kept for comparison)
# Needs $MNIST_PYTHON (a Python with torch) unless --no-gloo; prints a table of latency and
# bus bandwidth (busbw, nccl-tests' definition over all ranks) and, for the ring, the link
# figure per leader (2(L-1)/L of the buffer per all-reduce, L ring members).
set -euo pipefail
cd "$(dirname "$0")/.."
WORLD=2
TRANSPORT=shm
NODES=1
GLOO=1
while [ $# -gt 0 ]; do
  case "$1" in
    --world) WORLD=$2; shift 2 ;;
    --transport) TRANSPORT=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;
    --no-gloo) GLOO=0; shift ;;
    *) echo "usage: $0 [--world N] [--transport shm|auto|tcp|star] [--nodes K] [--no-gloo]" >&2; exit 2 ;;
  esac
done
PY=${MNIST_PYTHON:-/root/.cache/mnist-ddp/venv-torch-2.11.0/bin/python}
SIZES=${SIZES:-4096,65536,1048576,4194304,16777216,67108864}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p mnist-comm --bin allreduce-bench
ours=$(mktemp) gloo=$(mktemp)
trap 'rm -f "$ours" "$gloo"' EXIT
echo "world $WORLD, transport $TRANSPORT, nodes $NODES; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$TARGET/release/allreduce-bench" --world "$WORLD" --transport "$TRANSPORT" --nodes "$NODES" --sizes "$SIZES" >"$ours"
if [ "$GLOO" = 0 ]; then
  echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"
  printf "%-8s %12s %12s %12s\n" size "ours µs" "busbw GB/s" "link GB/s"
  grep ^SIZE "$ours" | sort -n -k2 | awk '{
    b = $2; s = (b >= 1048576) ? sprintf("%d MB", b / 1048576) : sprintf("%d KB", b / 1024);
    printf "%-8s %12.1f %12.3f %12.3f\n", s, $3, $4, $6 }'
  exit 0
fi
"$PY" scripts/allreduce_gloo.py --world "$WORLD" --sizes "$SIZES" >"$gloo"
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-8s %12s %12s %12s %12s %10s\n" size "ours µs" "gloo µs" "ours GB/s" "gloo GB/s" "busbw x"
join <(grep ^SIZE "$ours" | cut -d' ' -f2-4 | sort -n) <(grep ^SIZE "$gloo" | cut -d' ' -f2-4 | sort -n) |
  sort -n | awk '{
    b = $1; s = (b >= 1048576) ? sprintf("%d MB", b / 1048576) : sprintf("%d KB", b / 1024);
    printf "%-8s %12.1f %12.1f %12.3f %12.3f %10.2f\n", s, $2, $4, $3, $5, $3 / $5 }'
