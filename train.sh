#!/usr/bin/env bash
# Train LeNet on MNIST for 20 epochs into ./logging/ (the reference's train.sh).
# Sets itself up on first use (libtorch from PyPI, release build). Extra flags are passed on,
# e.g. ./train.sh --model MLP, ./train.sh --nproc 2.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec target/release/mnist-launch --model LeNet --epochs 20 --path ./logging/ "$@"
