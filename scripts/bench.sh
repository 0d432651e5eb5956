#!/usr/bin/env bash
# Training-speed benchmark on CPU: mnist-ddp (LeNet, batch 64) against PyTorch references.
#   A. one process, 2 threads: ours (by default each batch split across the 2 threads, see
#      README "CPU speed"; also shown with --batch-threads 1, i.e. 2 intra-op threads) vs a
#      plain PyTorch loop over in-memory tensors (scripts/ref/torch_loop.py) and vs the classic
#      per-sample Dataset + DataLoader loop (scripts/ref/torch_dataloader.py), both with 2
#      intra-op threads.
#   B. two processes, 1 thread each: `mnist-launch --nproc 2` vs PyTorch DDP over gloo
#      (scripts/ref/torch_ddp.py), and vs the ceiling: two independent single-process runs of
#      ours side by side (sum of their images/s).
#   C. the overhead of --tensorboard and the time breakdown on a LeNet epoch (one process per
#      run, each pair's two runs side by side on pinned cores: scripts/bench-overhead.sh
#      --nproc 1 --side-by-side, 40 pairs, 3 with --quick; target <= 2%).
#   D. the DDP example's Net (BatchNorm, dropout), batch 32, two processes, 1 thread each:
#      `mnist-launch --nproc 2 --model Net --batch-size 32 --test-batch-size 256` (SyncBatchNorm,
#      the default) vs PyTorch DDP over gloo with the same Net, BatchNorm unsynchronised
#      (PyTorch's SyncBatchNorm refuses CPU modules), on the first NET_TRAIN training images
#      (Net costs ~20x LeNet per image; s/epoch is still per 60,000).
# Our figures come from <path>/metrics.jsonl (training loop only, no evaluation): the median
# over epochs 2.. (epoch 1 is the warm-up). Every figure is shown as images/s and as seconds
# per 60,000-image epoch; ratios are computed from images/s.
#
# Usage: scripts/bench.sh [--quick] [--only lenet|net] [--out FILE] [--max-load L] [--wait SECS]
#   --quick       smoke test (~1-2 min on an idle 2-core machine): every run trains on the
#                 first 12,800 training images only (Net: 1,280; ours: 2 epochs); s/epoch stays
#                 per 60,000
#   --only S      run only sections A+B+C (lenet) or only section D (net)
#   --out FILE    also write the table to FILE
#   --max-load L  wait until the 1-minute load average is below L before measuring (default 1.5)
#   --wait SECS   give up waiting for a low load after SECS and measure anyway (default 600;
#                 0 with --quick unless given)
# Environment: MNIST_PYTHON (Python with torch 2.11; default the venv scripts/env.sh makes),
#   CARGO_TARGET_DIR (where the release binaries are built; default ./target).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "bench: error: $*" >&2; exit 1; }

QUICK=0 OUT="" MAX_LOAD=1.5 WAIT="" ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --only)
      case "${2:-}" in lenet|net) ONLY=$2; shift 2 ;; *) die "--only needs 'lenet' or 'net'" ;; esac ;;
    --out) [ $# -ge 2 ] || die "--out needs a file name"; OUT=$2; shift 2 ;;
    --max-load) [ $# -ge 2 ] || die "--max-load needs a number"; MAX_LOAD=$2; shift 2 ;;
    --wait) [ $# -ge 2 ] || die "--wait needs a number of seconds"; WAIT=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (usage: $0 [--quick] [--only lenet|net] [--out FILE] [--max-load L] [--wait SECS])" ;;
  esac
done
[ -n "$WAIT" ] || { if [ "$QUICK" = 1 ]; then WAIT=0; else WAIT=600; fi; }

PY=${MNIST_PYTHON:-/root/.cache/mnist-ddp/venv-torch-2.11.0/bin/python}
[ -x "$PY" ] || die "MNIST_PYTHON='$PY' is not an executable Python (set MNIST_PYTHON to a Python with torch 2.11)"
"$PY" -c 'import torch, numpy' 2>/dev/null || die "$PY cannot import torch and numpy"
DATA=data/mnist
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  [ -e "$DATA/$f.gz" ] || [ -e "$DATA/$f" ] || die "$DATA/$f(.gz) is missing (run mnist-launch --download once)"
done

# Build (a no-op when up to date).
# shellcheck source=scripts/env.sh
source scripts/env.sh || die "scripts/env.sh could not set up libtorch"
echo "bench: building release binaries (cargo build --release -p mnist-worker -p mnist-launch)" >&2
cargo build --release -q -p mnist-worker -p mnist-launch || die "cargo build --release failed"
LAUNCH="${CARGO_TARGET_DIR:-target}/release/mnist-launch"
[ -x "$LAUNCH" ] || die "$LAUNCH was not built"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/mnist-bench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# subset DIR NTRAIN NTEST: the first NTRAIN training and NTEST test images, as raw IDX files.
subset() {
  "$PY" scripts/ref/mnist_subset.py "data/mnist" "$1" "$2" "$3" || die "could not write an MNIST subset to $1"
}

if [ "$QUICK" = 1 ]; then
  QUICK_TRAIN=12800
  subset "$TMP/data" "$QUICK_TRAIN" 2000
  DATA="$TMP/data"
  NET_TRAIN=1280
  NTRAIN=$QUICK_TRAIN
  EPOCHS=2                     # ours: epoch 1 warm-up, epoch 2 timed
  LOOP_ARGS=(--warmup 1 --epochs 1)
  DL_ARGS=(--epochs 1)
  DDP_ARGS=(--warmup 1 --epochs 1)
else
  NET_TRAIN=3200
  NTRAIN=60000
  EPOCHS=3                     # ours: median of epochs 2-3
  LOOP_ARGS=(--warmup 1 --epochs 2)
  DL_ARGS=(--epochs 1)
  DDP_ARGS=(--warmup 1 --epochs 2)
fi

load1() { cut -d' ' -f1 /proc/loadavg; }
waited=0
while awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN { exit !(l > m) }'; do
  if [ "$waited" -ge "$WAIT" ]; then
    [ "$WAIT" -gt 0 ] && echo "bench: load still $(load1) after ${WAIT}s; measuring anyway (figures will be noisy)" >&2
    break
  fi
  echo "bench: load average $(load1) > $MAX_LOAD; waiting (${waited}s of ${WAIT}s)" >&2
  sleep 30
  waited=$((waited + 30))
done
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# ours NAME THREADS NPROC: run mnist-launch into $TMP/NAME; prints the median images/s of
# epochs 2.. from its metrics.jsonl.
ours() {
  local name=$1 threads=$2 nproc=$3 dir="$TMP/$1"
  shift 3
  mkdir -p "$dir"
  if ! OMP_NUM_THREADS=$threads "$LAUNCH" --nproc "$nproc" --threads "$threads" --device cpu "$@" \
      "${MODEL_ARGS[@]}" --epochs "$EPOCHS" --data "$DATA" --path "$dir" \
      --progress never >"$dir/launch.log" 2>&1; then
    echo "bench: error: mnist-launch ($name) failed; last lines of $dir/launch.log:" >&2
    tail -n 20 "$dir/launch.log" >&2
    return 1
  fi
  "$PY" - "$dir/metrics.jsonl" <<'EOF' || { echo "bench: error: could not read $dir/metrics.jsonl ($name)" >&2; return 1; }
import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
timed = [r["images_per_second"] for r in recs if r["epoch"] >= 2]
if not timed:
    sys.exit(f"{sys.argv[1]}: no epoch >= 2 recorded")
print(f"{statistics.median(timed):.1f}")
EOF
}

# ref NAME SCRIPT THREADS ARGS...: run a reference script; prints its images/s.
ref() {
  local name=$1 script=$2 threads=$3 log="$TMP/$1.log"
  shift 3
  if ! OMP_NUM_THREADS=$threads "$PY" "scripts/ref/$script" --data "$DATA" --threads "$threads" "$@" >"$log" 2>&1; then
    echo "bench: error: scripts/ref/$script ($name) failed; last lines of $log:" >&2
    tail -n 20 "$log" >&2
    return 1
  fi
  sed -n 's/^RESULT .*images_per_second=\([0-9.]*\).*/\1/p' "$log" | tail -n 1 | grep . ||
    { echo "bench: error: no RESULT line in $log ($name)" >&2; return 1; }
}

step() { echo "bench: $*" >&2; }
A_OURS="" A_NOSPLIT="" A_LOOP="" A_DL="" B_OURS="" B_DDP="" B_CEIL="" C_REPORT="" D_OURS="" D_DDP=""
if [ "$ONLY" != net ]; then
  MODEL_ARGS=(--model LeNet --batch-size 64)
  # The reference's DataLoader pipeline needs torchvision (PIL images, ToTensor, Normalize).
  "$PY" -c "import torchvision" 2>/dev/null || {
    step "installing torchvision==0.26.0 (matches torch 2.11) for the reference DataLoader pipeline"
    "$PY" -m pip install --quiet --disable-pip-version-check torchvision==0.26.0 ||
      step "warning: torchvision unavailable; the DataLoader reference falls back to a per-sample tensor emulation"
  }
  step "A1 ours: mnist-launch --nproc 1 --threads 2 --epochs $EPOCHS"
  A_OURS=$(ours a-ours 2 1)
  step "A1b ours without batch splitting: --batch-threads 1 (2 intra-op threads)"
  A_NOSPLIT=$(ours a-nosplit 2 1 --batch-threads 1)
  step "A2 torch_loop.py --threads 2 ${LOOP_ARGS[*]}"
  A_LOOP=$(ref a-loop torch_loop.py 2 "${LOOP_ARGS[@]}")
  step "A3 torch_dataloader.py --threads 2 ${DL_ARGS[*]} (num_workers=0)"
  A_DL=$(ref a-dataloader torch_dataloader.py 2 "${DL_ARGS[@]}")
  step "B1 ours: mnist-launch --nproc 2 --threads 1 --epochs $EPOCHS"
  B_OURS=$(ours b-ours 1 2)
  step "B2 torch_ddp.py --world 2 --threads 1 ${DDP_ARGS[*]}"
  B_DDP=$(ref b-ddp torch_ddp.py 1 --world 2 "${DDP_ARGS[@]}")
  step "B3 ceiling: two mnist-launch --nproc 1 --threads 1 side by side"
  ours b-solo0 1 1 >"$TMP/solo0.ips" & pid0=$!
  ours b-solo1 1 1 >"$TMP/solo1.ips" & pid1=$!
  wait "$pid0" || die "ceiling run 0 failed"
  wait "$pid1" || die "ceiling run 1 failed"
  B_CEIL=$(awk '{ s += $1 } END { printf "%.1f", s }' "$TMP/solo0.ips" "$TMP/solo1.ips")
  C_ARGS=(--nproc 1 --side-by-side --reps 40 --epochs 1)
  [ "$QUICK" = 1 ] && C_ARGS=(--nproc 1 --side-by-side --reps 3 --epochs 1)
  step "C overhead of --tensorboard + time breakdown: scripts/bench-overhead.sh ${C_ARGS[*]}"
  C_REPORT=$(scripts/bench-overhead.sh --data "$DATA" "${C_ARGS[@]}") || die "scripts/bench-overhead.sh failed"
fi
if [ "$ONLY" != lenet ]; then
  subset "$TMP/net-data" "$NET_TRAIN" 1000
  DATA="$TMP/net-data" EPOCHS=2   # ours: epoch 1 warm-up, epoch 2 timed
  MODEL_ARGS=(--model Net --batch-size 32 --test-batch-size 256)
  step "D1 ours: mnist-launch --nproc 2 --threads 1 ${MODEL_ARGS[*]} (SyncBatchNorm) on $NET_TRAIN images"
  D_OURS=$(ours d-ours 1 2)
  step "D2 torch_ddp.py --model Net --world 2 --threads 1 --batch-size 32 --warmup 1 --epochs 1 on $NET_TRAIN images"
  D_DDP=$(ref d-ddp torch_ddp.py 1 --model Net --world 2 --batch-size 32 --warmup 1 --epochs 1)
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

report() {
  echo "mnist-ddp training benchmark ($([ "$QUICK" = 1 ] && echo quick || echo full)${ONLY:+, only $ONLY}; $(date -u +%FT%TZ);" \
    "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $(nproc) cores)"
  echo "load average before: $LOAD_BEFORE   after: $LOAD_AFTER"
  if awk -v l="${LOAD_BEFORE%% *}" -v m="$MAX_LOAD" 'BEGIN { exit !(l > m) }'; then
    echo "WARNING: the machine was busy (load > $MAX_LOAD): other processes share the cores, so these"
    echo "  figures are noisy; multi-threaded runs suffer most (OpenMP threads spin-wait for each other)"
  fi
  echo "environment: OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-<unset>} GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-<unset>}"
  [ "$ONLY" = net ] || echo "A, B: LeNet, batch 64 per process, $NTRAIN training images"
  [ "$ONLY" = lenet ] || echo "D: Net, batch 32 per process, $NET_TRAIN training images"
  echo "s/epoch = 60000 / images/s (training loop only)"
  echo
  awk -v ao="$A_OURS" -v an="$A_NOSPLIT" -v al="$A_LOOP" -v ad="$A_DL" -v bo="$B_OURS" -v bd="$B_DDP" -v bc="$B_CEIL" \
      -v co="$D_OURS" -v cd="$D_DDP" 'BEGIN {
    row = "%-44s %10.0f %9.2f\n"
    printf "%-44s %10s %9s\n", "run", "images/s", "s/epoch"
    if (ao != "") {
      print "A. 1 process, 2 threads"
      printf row, "  ours (mnist-launch --nproc 1)", ao, 60000 / ao
      printf row, "  ours, --batch-threads 1 (for comparison)", an, 60000 / an
      printf row, "  torch_loop.py (in-memory tensors)", al, 60000 / al
      printf row, "  torch_dataloader.py (Dataset+DataLoader)", ad, 60000 / ad
      print "B. 2 processes, 1 thread each"
      printf row, "  ours (mnist-launch --nproc 2)", bo, 60000 / bo
      printf row, "  torch_ddp.py (DDP, gloo)", bd, 60000 / bd
      printf row, "  ceiling: 2 x ours --nproc 1, side by side", bc, 60000 / bc
    }
    if (co != "") {
      print "D. Net, 2 processes, 1 thread each"
      printf row, "  ours, SyncBatchNorm (--model Net --nproc 2)", co, 60000 / co
      printf row, "  torch_ddp.py --model Net (DDP, gloo, no sync)", cd, 60000 / cd
    }
    print ""
    chk = "%-44s %8.2fx  target %-6s %s\n"
    printf "%-44s %9s  %-13s %s\n", "ratio", "measured", "", "result"
    if (ao != "") {
      printf chk, "A. ours vs torch_loop (speed-up)", ao / al, ">= 1.0", (ao / al >= 1.0 ? "PASS" : "MISS")
      printf chk, "A. ours vs torch_dataloader (speed-up)", ao / ad, ">= 4.0", (ao / ad >= 4.0 ? "PASS" : "MISS")
      printf chk, "B. ours vs DDP gloo (speed-up)", bo / bd, ">= 1.4", (bo / bd >= 1.4 ? "PASS" : "MISS")
      printf chk, "B. ours vs ceiling (fraction)", bo / bc, ">= 0.90", (bo / bc >= 0.9 ? "PASS" : "MISS")
    }
    if (co != "")
      printf chk, "D. Net: ours SyncBN vs DDP gloo (speed-up)", co / cd, ">= 1.2", (co / cd >= 1.2 ? "PASS" : "MISS")
  }'
  if [ -n "$C_REPORT" ]; then
    echo
    echo "C. $C_REPORT"
  fi
}
if [ -n "$OUT" ]; then report | tee "$OUT"; else report; fi
