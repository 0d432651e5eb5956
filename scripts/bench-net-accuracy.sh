#!/usr/bin/env bash
# Best test accuracy of the DDP example's configuration, ours against PyTorch, over several
# seeds (a single seed's best accuracy moves by about 0.1 point: a seed, or another processor,
# is another draw). For each seed, one after the other on the full data:
#   ours:    mnist-launch --nproc 2 --threads 1 --model Net --batch-size 32 --test-batch-size 256
#            --epochs E --seed S   (SyncBatchNorm, the default for Net with 2 processes)
#   PyTorch: scripts/ref/torch_ddp_train.py --model Net --world 2 --threads 1 --batch-size 32
#            --test-batch-size 256 --epochs E --warmup 0 --seed S   (DDP over gloo, BatchNorm
#            unsynchronised: PyTorch's SyncBatchNorm refuses CPU modules)
# Prints each run's best test accuracy (and its epoch) and the means over the seeds.
# About 40 minutes per seed on an idle 2-core machine (16 ours, 23 PyTorch).
#
#   scripts/bench-net-accuracy.sh [--seeds 1,2,3] [--epochs 20] [--data DIR] [--keep DIR]
# (release build under CARGO_TARGET_DIR, default ./target)
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=1,2,3
EPOCHS=20
DATA=data/mnist
KEEP=
while [ $# -gt 0 ]; do
    case "$1" in
        --seeds) SEEDS=${2:?--seeds needs a list such as 1,2,3}; shift 2 ;;
        --epochs) EPOCHS=${2:?--epochs needs a number}; shift 2 ;;
        --data) DATA=${2:?--data needs a folder}; shift 2 ;;
        --keep) KEEP=${2:?--keep needs a folder}; shift 2 ;;
        *) echo "bench-net-accuracy.sh: unknown argument '$1' (expected --seeds LIST, --epochs N, --data DIR, --keep DIR)" >&2; exit 2 ;;
    esac
done
[[ "$SEEDS" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "bench-net-accuracy.sh: --seeds must be whole numbers separated by commas, not '$SEEDS'" >&2; exit 2; }
[[ "$EPOCHS" =~ ^[1-9][0-9]*$ ]] || { echo "bench-net-accuracy.sh: --epochs must be a whole number of epochs, not '$EPOCHS'" >&2; exit 2; }
source scripts/env.sh
[ -n "${MNIST_PYTHON:-}" ] || { echo "bench-net-accuracy.sh: PyTorch is not set up; run scripts/setup.sh first" >&2; exit 2; }
cargo build --release -q -p mnist-launch -p mnist-worker
OUT=${KEEP:-$(mktemp -d /tmp/bench-net-accuracy.XXXXXX)}
mkdir -p "$OUT"
[ -n "$KEEP" ] || trap 'rm -rf "$OUT"' EXIT
echo "Net, 2 processes x 1 thread, batch 32, test batch 256, $EPOCHS epochs, seeds $SEEDS; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-6s %-22s %-22s\n" seed "ours best (epoch)" "PyTorch best (epoch)"
ours_all=() torch_all=()
for s in ${SEEDS//,/ }; do
    "${CARGO_TARGET_DIR:-target}/release/mnist-launch" --nproc 2 --threads 1 --model Net --batch-size 32 --test-batch-size 256 \
        --epochs "$EPOCHS" --seed "$s" --data "$DATA" --path "$OUT/ours_s$s" >"$OUT/ours_s$s.console" 2>&1 ||
        { tail -20 "$OUT/ours_s$s.console" >&2; exit 1; }
    ours=$("$MNIST_PYTHON" -c 'import json,sys
rows=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]
b=max(rows,key=lambda r:(r["test_top1"],-r["epoch"]))
print("%.2f %d" % (b["test_top1"], b["epoch"]))' "$OUT/ours_s$s/metrics.jsonl")
    "$MNIST_PYTHON" scripts/ref/torch_ddp_train.py --model Net --world 2 --threads 1 --batch-size 32 \
        --test-batch-size 256 --epochs "$EPOCHS" --warmup 0 --data "$DATA" --seed "$s" >"$OUT/torch_s$s.log" 2>&1 ||
        { tail -20 "$OUT/torch_s$s.log" >&2; exit 1; }
    torch=$(awk '/^EPOCH/ { for (i = 1; i <= NF; i++) if ($i ~ /^test_acc=/) { a = substr($i, 10) + 0; if (a > best) { best = a; e = $2 } } }
        END { printf "%.2f %d\n", best, e }' "$OUT/torch_s$s.log")
    printf "%-6s %-22s %-22s\n" "$s" "${ours% *} % (${ours#* })" "${torch% *} % (${torch#* })"
    ours_all+=("${ours% *}") torch_all+=("${torch% *}")
done
mean() { printf "%s\n" "$@" | awk '{ s += $1 } END { printf "%.3f", s / NR }'; }
echo "mean best test accuracy over seeds $SEEDS: ours $(mean "${ours_all[@]}") %, PyTorch $(mean "${torch_all[@]}") %"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
