#!/usr/bin/env bash
# The main job on a fresh machine: set up, build (release: the gradient step runs about
# twice as fast as in the test build; tens of minutes the first time), and run the default
# study (the small CNN on Fashion-MNIST, four unequal peers, instance-only vs serverless vs
# hybrid offload with the in-process function pool), writing its report to peerless-study/.
# Extra arguments go to `peerless study` (e.g. `--config bench/study/models.toml --out DIR`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PEERLESS_ROOT"
"$PEERLESS_ROOT/scripts/setup.sh"
cargo build --release -p peerless
exec "$CARGO_TARGET_DIR/release/peerless" study --out peerless-study "$@"
