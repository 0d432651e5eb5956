#!/usr/bin/env bash
# Installs libtorch (PyPI torch==2.11.0, once, into a per-user cache) and builds the release
# binaries target/release/mnist-launch and target/release/mnist-worker.
# Extra arguments go to cargo build (e.g. --features mnist-worker/nccl).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
cargo build --release --quiet -p mnist-launch -p mnist-worker "$@"
