#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, and train the small CNN on Fashion-MNIST
# (about 2 minutes of training on two cores, >= 85% test accuracy). Extra arguments are
# passed to `peerless train`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PEERLESS_ROOT"
"$PEERLESS_ROOT/scripts/setup.sh"
cargo build -p peerless
exec "$CARGO_TARGET_DIR/debug/peerless" train --dataset fashion-mnist --model tiny_cnn \
  --epochs 2 --lr 0.05 --momentum 0.9 --metrics-out fashion-mnist-metrics.jsonl "$@"
