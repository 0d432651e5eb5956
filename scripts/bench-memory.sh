#!/usr/bin/env bash
# Resident memory per CPU worker: starts `mnist-launch --nproc N` (LeNet, --threads 1, real
# data/mnist unless DATA is set) for each N given, waits until rank 0 has logged STEPS training
# steps (so the shared data set's pages have been touched), reads every worker's
# /proc/<pid>/status (VmRSS, VmHWM, RssAnon, RssFile, RssShmem) and smaps_rollup (Pss: each
# shared page divided among the processes mapping it), stops the launch with SIGINT and prints
# one line per N: the mean over the workers, and the largest VmRSS/VmHWM.
#
# Usage: scripts/bench-memory.sh [N ...]       (default: 1 2 8)
# Environment: DATA (MNIST folder, default data/mnist), STEPS (default 20), PROFILE (release or
#   debug, default release; memory hardly depends on it), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "bench-memory: error: $*" >&2; exit 1; }
[ $# -gt 0 ] || set -- 1 2 8
DATA=${DATA:-data/mnist}
STEPS=${STEPS:-20}
PROFILE=${PROFILE:-release}
# shellcheck source=scripts/env.sh
source scripts/env.sh || die "scripts/env.sh could not set up libtorch"
flag=--release
[ "$PROFILE" = release ] || flag=
cargo build $flag -q -p mnist-worker -p mnist-launch || die "cargo build failed"
LAUNCH="${CARGO_TARGET_DIR:-target}/$PROFILE/mnist-launch"
[ -x "$LAUNCH" ] || die "$LAUNCH was not built"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/mnist-mem.XXXXXX")
lp=
cleanup() { [ -n "$lp" ] && kill -INT "$lp" 2>/dev/null; wait 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg); data $DATA; $STEPS steps; $PROFILE build"
printf "%-7s %9s %9s %9s %9s %9s %9s %11s %11s\n" nproc "VmRSS MB" "anon" "file" "shmem" "Pss" "VmHWM" "max VmRSS" "max VmHWM"
for n in "$@"; do
  out="$TMP/run$n"
  "$LAUNCH" --nproc "$n" --epochs 1 --data "$DATA" --path "$out" --device cpu --threads 1 \
    --log-interval 1 --progress never >"$TMP/console$n.txt" 2>&1 &
  lp=$!
  while :; do
    steps=$(grep -c 'Train Epoch' "$out/rank0.log" 2>/dev/null) || steps=0
    [ "$steps" -ge "$STEPS" ] && break
    kill -0 "$lp" 2>/dev/null || { tail -5 "$TMP/console$n.txt" >&2; die "--nproc $n ended early"; }
    sleep 0.5
  done
  for p in $(pgrep -P "$lp"); do
    pss=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup")
    awk -v pss="$pss" '/^(VmRSS|VmHWM|RssAnon|RssFile|RssShmem):/ {v[$1]=$2}
      END {print v["VmRSS:"], v["RssAnon:"], v["RssFile:"], v["RssShmem:"], pss, v["VmHWM:"]}' "/proc/$p/status"
  done | awk -v n="$n" '{for (i=1;i<=6;i++) s[i]+=$i; if ($1>mr) mr=$1; if ($6>mh) mh=$6; c++}
    END {printf "%-7d %9.0f %9.0f %9.0f %9.0f %9.0f %9.0f %11.0f %11.0f\n", n,
      s[1]/c/1024, s[2]/c/1024, s[3]/c/1024, s[4]/c/1024, s[5]/c/1024, s[6]/c/1024, mr/1024, mh/1024}'
  kill -INT "$lp"
  wait "$lp" 2>/dev/null || true
  lp=
done
