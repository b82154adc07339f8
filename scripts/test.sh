#!/usr/bin/env bash
# The test command: sets up the machine, checks the CloudFormation stack (cfn-lint, moto),
# then runs every test of the workspace against the real local services, and checks that the
# GPU (wgpu) build still compiles.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PEERLESS_ROOT"
"$PEERLESS_ROOT/scripts/setup.sh"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== deploy/peerless.yaml: cfn-lint and a deploy on moto (scripts/check-stack.sh)"
"$PEERLESS_ROOT/scripts/check-stack.sh"

echo "== cargo test --workspace"
log="${TMPDIR:-/tmp}/peerless-test.log"
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

echo "== cargo check -p peerless --features wgpu (GPU build)"
cargo check -p peerless --features wgpu

passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$log" | grep -Eo '[0-9]+ passed' | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '; ([0-9]+) failed' "$log" | grep -Eo '[0-9]+' | awk '{s+=$1} END {print s+0}')
echo "${passed} passed, ${failed} failed"
exit "$status"
