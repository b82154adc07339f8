# Shared settings for the scripts: one persistent build directory outside the clone, so
# Burn (tens of minutes to build on two cores) is compiled once per machine.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/peerless/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
PEERLESS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PEERLESS_ROOT
export PEERLESS_CARGO_LAMBDA="${PEERLESS_CARGO_LAMBDA:-$HOME/.cache/peerless/cargo-lambda}"
export PEERLESS_ASL_VALIDATOR="${PEERLESS_ASL_VALIDATOR:-$HOME/.cache/peerless/node}"
