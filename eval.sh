#!/usr/bin/env bash
# Evaluate ./logging/mnist_model.pt on the MNIST test set, logging into ./logging_test/
# (the reference's eval.sh). Extra flags are passed on, e.g. ./eval.sh --model MLP.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec target/release/mnist-launch --model LeNet --evaluate ./logging/mnist_model.pt --path ./logging_test/ "$@"
