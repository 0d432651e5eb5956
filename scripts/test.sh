#!/usr/bin/env bash
# The test command (README, .ci/run): installs libtorch if needed (and, as root with apt-get,
# Open MPI and Slurm for the engines' tests), then formatting, lints, a compile check of the
# GPU (NCCL) code path, every test of the workspace, and a self-test proving that a failing
# test fails this command.
#
#   scripts/test.sh                 everything (what CI runs)
#   scripts/test.sh --tests-only [CARGO TEST ARGS]
#                                   only the test stage, with its summary, on the given scope
#                                   (default --workspace); the self-test uses this
#
# Exit status: non-zero when any step or any test fails. Tests that cannot run here record a
# skip (crates/mnist-testkit); the summary at the end lists each with its reason. The
# prerequisites CI is supposed to have (Python with torch after set-up, the repository's
# data/mnist, and Open MPI and Slurm once installed) are required: their absence fails the
# tests that need them.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

tests_only=0
if [ "${1:-}" = "--tests-only" ]; then
  tests_only=1
  shift
fi
[ $# -gt 0 ] || set -- --workspace

# Every test binary appends its skips here; MNIST_REQUIRE turns a skip into a failure.
skip_log=$(mktemp "${TMPDIR:-/tmp}/mnist-ddp-skips.XXXXXX")
test_log=$(mktemp "${TMPDIR:-/tmp}/mnist-ddp-test.XXXXXX")
trap 'rm -f "$skip_log" "$test_log"' EXIT
export MNIST_SKIP_LOG="$skip_log"
export MNIST_REQUIRE="${MNIST_REQUIRE-python,data}"

# The engines' tests (worker/tests/engines.rs) run Open MPI and a two-node Slurm cluster of
# this machine for real. As root with apt-get (CI), install them when missing; once they are
# here, their tests must run (a skip would hide a broken engine). Elsewhere (no root, no
# apt-get, or the install failed) those tests skip visibly, named in the summary.
engines_setup() {
  local progs=(mpirun srun sbatch sinfo slurmctld slurmd munged) p missing=0
  for p in "${progs[@]}"; do
    command -v "$p" >/dev/null || [ -x "/usr/sbin/$p" ] || missing=1
  done
  if [ "$missing" = 1 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
      echo "== Open MPI / Slurm missing and no root apt-get here: the engines' tests will skip"
      return 0
    fi
    echo "== apt-get install openmpi-bin slurm-wlm munge (the engines' tests run them)"
    if ! mnist_apt_install openmpi-bin slurm-wlm munge; then
      echo "== apt-get install failed: the engines' tests will skip"
      return 0
    fi
  fi
  MNIST_REQUIRE="$MNIST_REQUIRE,$(IFS=,; echo "${progs[*]}")"
  export MNIST_REQUIRE
}

if [ "$tests_only" = 0 ]; then
  for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    [ -s "data/mnist/$f" ] || { echo "test.sh: data/mnist/$f is missing; the repository ships MNIST there (restore it with git checkout -- data/mnist)" >&2; exit 1; }
  done
  engines_setup
  echo "== cargo fmt --check"
  cargo fmt --all -- --check
  echo "== cargo clippy (all targets, warnings are errors)"
  cargo clippy --workspace --all-targets --quiet -- -D warnings
  if cargo metadata --format-version 1 --no-deps 2>/dev/null | grep -q '"name":"mnist-nccl"'; then
    echo "== cargo check of the GPU path (mnist-nccl --features nccl)"
    cargo check --quiet -p mnist-nccl --features nccl
    cargo check --quiet -p mnist-worker --features nccl
  fi
fi

echo "== cargo test $*"
# The status of cargo itself, copied right after the pipeline (any later command would
# overwrite PIPESTATUS: the defect this script once had).
set +e
cargo test "$@" --no-fail-fast 2>&1 | tee "$test_log" |
  grep -Ev '^(running 0 tests|test result: ok\. 0 passed.*)$' | grep -v '^$'
statuses=("${PIPESTATUS[@]}")
set -e
status=${statuses[0]}

if [ "$tests_only" = 0 ] && [ "$status" = 0 ] && cargo metadata --format-version 1 --no-deps 2>/dev/null | grep -q '"name":"mnist-nccl"'; then
  echo "== cargo test -p mnist-nccl --features nccl (GPU tests; they skip without a GPU)"
  set +e
  cargo test -p mnist-nccl --features nccl --no-fail-fast 2>&1 | tee -a "$test_log" |
    grep -Ev '^(running 0 tests|test result: ok\. 0 passed.*)$' | grep -v '^$'
  status=${PIPESTATUS[0]}
  set -e
fi

if [ "$tests_only" = 0 ] && [ "$status" = 0 ]; then
  echo "== self-test: a deliberately failing test must fail the test command"
  scripts/ci-selftest.sh || status=1
fi

# Summary: totals over every test binary, the failures by name, and every skip with its reason.
passed=$(awk '/^test result:/ {for (i=1;i<=NF;i++) if ($(i+1) ~ /^passed/) s+=$i} END {print s+0}' "$test_log")
failed=$(awk '/^test result:/ {for (i=1;i<=NF;i++) if ($(i+1) ~ /^failed/) s+=$i} END {print s+0}' "$test_log")
ignored=$(awk '/^test result:/ {for (i=1;i<=NF;i++) if ($(i+1) ~ /^ignored/) s+=$i} END {print s+0}' "$test_log")
echo
echo "== summary: $passed passed, $failed failed, $ignored ignored, $(sort -u "$skip_log" | wc -l) skipped at run time"
# (sed -n, not grep: a summary with nothing to list is not an error under `set -e`)
sed -nE 's/^(test .* \.\.\. FAILED)$/   failed: \1/p' "$test_log"
sed -nE 's/^(test .* \.\.\. ignored.*)$/   ignored: \1/p' "$test_log" | sort -u
sed -nE 's/^(error(\[|:).*)$/   build: \1/p' "$test_log" | sort -u
sort -u "$skip_log" | sed 's/^/   skipped: /'
if [ "$status" != 0 ]; then
  echo "== FAILED (exit $status)"
else
  echo "== ok"
fi
exit "$status"
