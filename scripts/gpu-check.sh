#!/usr/bin/env bash
# GPU check in two halves, for a GPU machine that has PyTorch but no Rust and no network.
#
#   scripts/gpu-check.sh pack   (on the build machine)
#       Builds release mnist-launch and mnist-worker with --features mnist-worker/nccl (without
#       it, with a warning, while worker/Cargo.toml has no `nccl` feature), plus mnist-nccl's
#       test binaries with --features nccl, and copies them and data/mnist into .gpu-pack/
#       (ignored through .git/info/exclude; must stay under 64 MiB).
#   scripts/gpu-check.sh run    (on the GPU machine, from the repository root, .gpu-pack/ carried)
#       Points LD_LIBRARY_PATH at python3's torch/lib and nvidia/*/lib folders, plus a folder
#       holding `libnccl.so -> nvidia/nccl/lib/libnccl.so.2` (cudarc 0.19 does not look for
#       libnccl.so.2), prints nvidia-smi, then:
#         0. runs mnist-nccl's test binaries (world-of-one all-reduce/broadcast in f32, f16 and
#            bf16, init timeout when a peer never joins; two-GPU tests skip on one GPU);
#         1. trains LeNet 2 epochs: --device cuda --backend nccl --nproc 1;
#         2. trains LeNet 2 epochs: --device cuda --backend cpu --nproc 2 --gpus 0,0;
#            each must reach test accuracy >= 97% (metrics.jsonl, last epoch's test_top1);
#         3. times one epoch of scripts/ref/torch_gpu_epoch.py (plain PyTorch, data on the GPU,
#            one warm-up epoch) against run 1's second epoch, and prints both and the ratio.
#       Everything (log, metrics, summary) goes under $OUT when set, else .gpu-pack/out/.
#       Exits 0 when every step passed, 1 when a check failed, 2 when no GPU is usable.
# Environment: PYTHON (default python3), CARGO_TARGET_DIR (pack; default ./target),
#   GPU_CHECK_STEP_TIMEOUT (seconds per step, default 150), GPU_CHECK_DRY_RUN=1 (run: test this
#   script's own logic on a CPU machine: skips the GPU probes and trains with --device cpu
#   --backend cpu, so the figures mean nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PACK=$ROOT/.gpu-pack
MAX_PACK_BYTES=$((64 * 1024 * 1024))
MIN_ACC=97

die() { echo "gpu-check: error: $1" >&2; exit "${2:-1}"; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# ---------------------------------------------------------------------------- pack
do_pack() {
  # shellcheck source=scripts/env.sh
  source scripts/env.sh || die "scripts/env.sh could not set up libtorch"
  local target=${CARGO_TARGET_DIR:-$ROOT/target}
  local features=()
  if grep -Eq '^[[:space:]]*nccl[[:space:]]*=' worker/Cargo.toml; then
    features=(--features mnist-worker/nccl)
  else
    echo "gpu-check: warning: worker/Cargo.toml has no \`nccl\` feature yet; building mnist-worker without NCCL (run 1 will fail with NotCompiled)" >&2
  fi
  echo "gpu-check: cargo build --release -p mnist-launch -p mnist-worker ${features[*]}" >&2
  cargo build --release -q -p mnist-launch -p mnist-worker "${features[@]}" || die "cargo build failed"
  echo "gpu-check: cargo test --release -p mnist-nccl --features nccl --no-run" >&2
  local tests
  tests=$(cargo test --release -q -p mnist-nccl --features nccl --no-run --message-format=json 2>/dev/null |
    grep -o '"executable":"[^"]*"' | sed 's/^"executable":"//; s/"$//') || die "building mnist-nccl's tests failed"
  [ -n "$tests" ] || die "cargo reported no mnist-nccl test binaries"

  rm -rf "$PACK"
  mkdir -p "$PACK/bin" "$PACK/tests" "$PACK/data"
  cp "$target/release/mnist-launch" "$target/release/mnist-worker" "$PACK/bin/" ||
    die "release binaries missing under $target/release"
  local t
  for t in $tests; do
    # deps/api-0123abcd -> api
    cp "$t" "$PACK/tests/$(basename "$t" | sed 's/-[0-9a-f]*$//')"
  done
  cp data/mnist/*-ubyte* "$PACK/data/" || die "data/mnist has no IDX files (run mnist-launch --download once)"
  {
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
    echo "worker features: ${features[*]:-(none)}"
    echo "built: $(date -u +%FT%TZ) on $(uname -n)"
  } >"$PACK/MANIFEST"
  local exclude
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  grep -qxF '/.gpu-pack/' "$exclude" 2>/dev/null || echo '/.gpu-pack/' >>"$exclude"
  local bytes
  bytes=$(du -sb "$PACK" | cut -f1)
  ls -l "$PACK/bin" "$PACK/tests" >&2
  echo "gpu-check: .gpu-pack is $((bytes / 1024 / 1024)) MiB ($bytes bytes)" >&2
  [ "$bytes" -lt "$MAX_PACK_BYTES" ] || die ".gpu-pack is $bytes bytes, over the 64 MiB carry limit"
  echo "gpu-check: packed; on the GPU machine run: scripts/gpu-check.sh run   (carry .gpu-pack)" >&2
}

# ----------------------------------------------------------------------------- run
FAILED=()
SUMMARY=()
note() { SUMMARY+=("$*"); echo "gpu-check: $*"; }
fail() { FAILED+=("$1"); note "FAIL $*"; }

# Last epoch's test_top1 of <dir>/metrics.jsonl, or nothing.
last_acc() {
  "$PY" - "$1/metrics.jsonl" <<'EOF' 2>/dev/null
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(rows[-1]["test_top1"])
EOF
}

# epoch_seconds of epoch <n> in <dir>/metrics.jsonl, or nothing.
epoch_secs() {
  "$PY" - "$1/metrics.jsonl" "$2" <<'EOF' 2>/dev/null
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print([r for r in rows if r["epoch"] == int(sys.argv[2])][0]["epoch_seconds"])
EOF
}

# train <name> <launcher args...>: 2 epochs of LeNet into $OUT/<name>, then the accuracy check.
train() {
  local name=$1; shift
  local dir=$OUT/$name
  rm -rf "$dir"; mkdir -p "$dir"
  echo "gpu-check: [$name] mnist-launch --epochs 2 $*" >&2
  local rc=0
  timeout "$STEP_TIMEOUT" "$PACK/bin/mnist-launch" --epochs 2 --model LeNet --data "$DATA" \
    --path "$dir" --progress never "$@" >"$dir/stdout.log" 2>&1 || rc=$?
  tail -n 15 "$dir/stdout.log"
  if [ "$rc" != 0 ]; then
    fail "$name: mnist-launch exited $rc$([ "$rc" = 124 ] && echo " (timed out after ${STEP_TIMEOUT}s)") (log: $dir/stdout.log)"
    return
  fi
  local acc
  acc=$(last_acc "$dir") || true
  if [ -z "$acc" ]; then
    fail "$name: no test_top1 in $dir/metrics.jsonl"
  elif "$PY" -c "import sys; sys.exit(0 if float('$acc') >= $MIN_ACC else 1)"; then
    note "ok   $name: test accuracy $acc% >= $MIN_ACC%"
  else
    fail "$name: test accuracy $acc% < $MIN_ACC%"
  fi
}

do_run() {
  PY=${PYTHON:-python3}
  STEP_TIMEOUT=${GPU_CHECK_STEP_TIMEOUT:-150}
  [ -x "$PACK/bin/mnist-launch" ] && [ -x "$PACK/bin/mnist-worker" ] ||
    die "$PACK/bin has no mnist-launch/mnist-worker: run 'scripts/gpu-check.sh pack' on the build machine and carry .gpu-pack"
  OUT=${OUT:-$PACK/out}
  mkdir -p "$OUT"
  exec > >(tee "$OUT/gpu-check.log") 2>&1
  echo "gpu-check: run on $(uname -n) at $(date -u +%FT%TZ); output in $OUT"
  [ -f "$PACK/MANIFEST" ] && sed 's/^/gpu-check: pack /' "$PACK/MANIFEST"
  DATA=$PACK/data
  [ -e "$DATA/train-images-idx3-ubyte.gz" ] || [ -e "$DATA/train-images-idx3-ubyte" ] || DATA=$ROOT/data/mnist
  command -v "$PY" >/dev/null || die "$PY not found (set PYTHON to a Python with torch)" 2

  # Library folders of the PyTorch install: torch/lib and every nvidia/*/lib.
  local libs
  libs=$("$PY" - <<'EOF'
import glob, os, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
dirs = [os.path.join(os.path.dirname(torch.__file__), "lib")]
dirs += sorted(d for d in glob.glob(os.path.join(site, "nvidia", "*", "lib")) if os.path.isdir(d))
print(":".join(dirs))
EOF
  ) || die "$PY cannot import torch (need PyTorch with CUDA)" 2
  local nccl_so=""
  local d
  IFS=: read -r -a dirs <<<"$libs"
  for d in "${dirs[@]}"; do [ -e "$d/libnccl.so.2" ] && nccl_so=$d/libnccl.so.2 && break; done
  local linkdir=$OUT/nccl-link
  mkdir -p "$linkdir"
  if [ -n "$nccl_so" ]; then
    ln -sfn "$nccl_so" "$linkdir/libnccl.so"
    echo "gpu-check: libnccl.so -> $nccl_so (in $linkdir)"
  else
    echo "gpu-check: warning: no libnccl.so.2 under the nvidia/*/lib folders; the NCCL steps will fail"
  fi
  export LD_LIBRARY_PATH="$linkdir:$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "gpu-check: LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

  local dev=cuda nccl1=(--device cuda --backend nccl --nproc 1) cpu2=(--device cuda --backend cpu --nproc 2 --gpus 0,0)
  if [ "${GPU_CHECK_DRY_RUN:-0}" = 1 ]; then
    echo "gpu-check: DRY RUN on CPU (GPU_CHECK_DRY_RUN=1): no GPU probes, --device cpu --backend cpu"
    dev=cpu nccl1=(--device cpu --backend cpu --nproc 1) cpu2=(--device cpu --backend cpu --nproc 2)
  else
    command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this machine has no NVIDIA driver, so no GPU to check" 2
    nvidia-smi || die "nvidia-smi failed: no usable NVIDIA GPU" 2
    "$PY" -c "import torch, sys; print('gpu-check: torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version() if torch.cuda.is_available() else None); sys.exit(0 if torch.cuda.is_available() else 1)" ||
      die "torch.cuda.is_available() is False: no usable GPU" 2
  fi

  # 0. mnist-nccl's own tests.
  local t rc
  for t in "$PACK"/tests/*; do
    [ -x "$t" ] || continue
    echo "gpu-check: [tests] $(basename "$t")"
    rc=0
    # MNIST_PYTHON unset: the loader test re-runs itself with a bare LD_LIBRARY_PATH, which
    # only means something on the build machine.
    env -u MNIST_PYTHON timeout "$STEP_TIMEOUT" "$t" --test-threads=1 --nocapture >"$OUT/test-$(basename "$t").log" 2>&1 || rc=$?
    grep -E '^(test |SKIPPED|test result|child |world of one|two ranks|init without)' "$OUT/test-$(basename "$t").log" || true
    if [ "$rc" = 0 ]; then note "ok   tests/$(basename "$t")"; else fail "tests/$(basename "$t") exited $rc (log: $OUT/test-$(basename "$t").log)"; fi
  done

  # 1-2. Training runs.
  train nccl-1gpu "${nccl1[@]}"
  train cpu-2ranks-1gpu "${cpu2[@]}"

  # 3. Epoch time against plain PyTorch with the data on the GPU.
  local ours theirs ref_log=$OUT/torch_gpu_epoch.log
  ours=$(epoch_secs "$OUT/nccl-1gpu" 2) || true
  rc=0
  timeout "$STEP_TIMEOUT" "$PY" scripts/ref/torch_gpu_epoch.py --device "$dev" --data "$DATA" --warmup 1 --epochs 1 >"$ref_log" 2>&1 || rc=$?
  cat "$ref_log"
  theirs=$(sed -n 's/^RESULT epoch_seconds=\([0-9.]*\).*/\1/p' "$ref_log")
  if [ "$rc" != 0 ] || [ -z "$theirs" ]; then
    fail "torch_gpu_epoch.py exited $rc without a RESULT line (log: $ref_log)"
  elif [ -z "$ours" ]; then
    fail "no epoch-2 time in $OUT/nccl-1gpu/metrics.jsonl to compare with PyTorch's ${theirs}s"
  else
    note "time ours (mnist-launch --nproc 1 --backend nccl, epoch 2): ${ours}s; PyTorch GPU loop: ${theirs}s; ratio ours/PyTorch: $("$PY" -c "print(f'{$ours/$theirs:.2f}')")"
  fi

  {
    echo "gpu-check summary ($(date -u +%FT%TZ))"
    printf '%s\n' "${SUMMARY[@]}"
  } >"$OUT/summary.txt"
  echo "----"; cat "$OUT/summary.txt"
  if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "gpu-check: ${#FAILED[@]} check(s) failed"
    exit 1
  fi
  echo "gpu-check: all checks passed"
}

case "${1:-}" in
  pack) do_pack ;;
  run) do_run ;;
  -h|--help) usage ;;
  *) usage >&2; die "expected 'pack' or 'run', got '${1:-}'" ;;
esac
