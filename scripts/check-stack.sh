#!/usr/bin/env bash
# Checks deploy/peerless.yaml offline: cfn-lint (errors, warnings and informational
# findings all fail), then a deploy on moto's CloudFormation (deploy/check_moto.py: what a
# peer needs in the outputs, functions, state machine, least-privilege roles, user data,
# a stack update and teardown). Needs no AWS account and no Rust build.
#
# Installs cfn-lint, moto[server] and boto3 into their own venv (like setup.sh's
# cargo-lambda), PEERLESS_CFN_VENV or ~/.cache/peerless/cfn-venv. Optional:
#   PEERLESS_BIN=path/to/peerless  also compare the state machine with `peerless stepfn generate`
#   (found by itself in $CARGO_TARGET_DIR/{release,debug} when built);
#   the ASL validator that setup.sh installs is used when present.
# Usage: scripts/check-stack.sh [--lint-only]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$PEERLESS_ROOT"

log() { printf '[check-stack] %s\n' "$*" >&2; }

CFN_LINT_VERSION=1.58.0
MOTO_VERSION=5.2.1
VENV="${PEERLESS_CFN_VENV:-$HOME/.cache/peerless/cfn-venv}"
if ! "$VENV/bin/cfn-lint" --version 2>/dev/null | grep -q "$CFN_LINT_VERSION" ||
  ! "$VENV/bin/python" -c "import moto, boto3; assert moto.__version__ == '$MOTO_VERSION'" 2>/dev/null; then
  log "installing cfn-lint $CFN_LINT_VERSION and moto[server] $MOTO_VERSION into $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "cfn-lint==$CFN_LINT_VERSION" "moto[server]==$MOTO_VERSION" boto3
fi

template=deploy/peerless.yaml
echo "== cfn-lint $("$VENV/bin/cfn-lint" --version | awk '{print $2}') $template (errors, warnings, informational)"
"$VENV/bin/cfn-lint" --include-checks I -- "$template"
echo "cfn-lint: no findings"

[ "${1:-}" = "--lint-only" ] && exit 0

if [ -z "${PEERLESS_BIN:-}" ]; then
  for candidate in "$CARGO_TARGET_DIR/release/peerless" "$CARGO_TARGET_DIR/debug/peerless"; do
    if [ -x "$candidate" ]; then export PEERLESS_BIN="$candidate"; break; fi
  done
fi
validator="$PEERLESS_ASL_VALIDATOR/node_modules/.bin/asl-validator"
[ -x "$validator" ] && export ASL_VALIDATOR="$validator"

echo "== $template on moto's CloudFormation (deploy/check_moto.py)"
"$VENV/bin/python" deploy/check_moto.py
