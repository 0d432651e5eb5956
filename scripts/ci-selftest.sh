#!/usr/bin/env bash
# Proves that the test command cannot pass a failing test: copies the tree (tracked and
# untracked-but-not-ignored files), adds one deliberately failing test to mnist-common, runs
# `scripts/test.sh --tests-only` on it and requires a non-zero exit whose summary names the
# test; then the same with the test passing, which must exit 0 (so the check is not vacuous).
# Reuses this checkout's build folder, so only mnist-common is compiled again.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
copy=$(mktemp -d "${TMPDIR:-/tmp}/mnist-ddp-selftest.XXXXXX")
trap 'rm -rf "$copy"' EXIT
git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$copy"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"

run_copy() { # $1: the assertion inside the test; prints the copy's output, returns its status
  mkdir -p "$copy/common/tests"
  cat >"$copy/common/tests/ci_selftest_probe.rs" <<RS
//! Written by scripts/ci-selftest.sh into a throw-away copy of the tree.
#[test]
fn ci_selftest_probe() {
    let values: Vec<u32> = std::env::args().map(|a| a.len() as u32).collect();
    assert!($1, "deliberate outcome of the CI self-test");
}
RS
  (cd "$copy" && scripts/test.sh --tests-only -p mnist-common --test ci_selftest_probe) >"$copy/out.txt" 2>&1
}

if run_copy "values.is_empty()"; then
  echo "ci-selftest: FAILED: the test command exited 0 although a test failed:" >&2
  tail -20 "$copy/out.txt" >&2
  exit 1
fi
grep -q 'failed: test ci_selftest_probe \.\.\. FAILED' "$copy/out.txt" || {
  echo "ci-selftest: FAILED: the summary does not name the failing test:" >&2
  tail -20 "$copy/out.txt" >&2
  exit 1
}
echo "ci-selftest: a failing test makes the test command exit non-zero and is named in the summary"
if ! run_copy "!values.is_empty()"; then
  echo "ci-selftest: FAILED: the test command failed although the probe test passed:" >&2
  tail -20 "$copy/out.txt" >&2
  exit 1
fi
echo "ci-selftest: the same command exits 0 when the probe passes"
