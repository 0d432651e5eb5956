#!/usr/bin/env bash
# The test command (README, .ci/run): installs libtorch if needed, then formatting, lints,
# every test of the workspace, and a compile check of the GPU (NCCL) code path.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
if cargo metadata --format-version 1 --no-deps 2>/dev/null | grep -q '"name":"mnist-nccl"'; then
  echo "== cargo check of the GPU path (mnist-nccl --features nccl)"
  cargo check --quiet -p mnist-nccl --features nccl
  cargo check --quiet -p mnist-worker --features nccl
fi
echo "== cargo test --workspace"
cargo test --workspace --no-fail-fast 2>&1 | tee /tmp/mnist-ddp-test-$$.log | grep -Ev '^(running 0 tests|test result: ok. 0 passed.*)$' | grep -v '^$' || true
status=${PIPESTATUS[0]}
skipped=$(grep -c 'SKIPPED' /tmp/mnist-ddp-test-$$.log || true)
rm -f /tmp/mnist-ddp-test-$$.log
[ "$skipped" = 0 ] || echo "note: $skipped test(s) printed SKIPPED (see above)"
exit "$status"
