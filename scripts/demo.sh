#!/usr/bin/env bash
# The main job on a fresh machine: set up, build, and run the default study (the small CNN
# on Fashion-MNIST, four unequal peers, instance-only vs serverless vs hybrid offload with
# the in-process function pool) and write its report to peerless-study/. Extra arguments
# are passed to `peerless study` (e.g. `--config bench/study/models.toml --out DIR`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PEERLESS_ROOT"
"$PEERLESS_ROOT/scripts/setup.sh"
cargo build -p peerless
exec "$CARGO_TARGET_DIR/debug/peerless" study --out peerless-study "$@"
