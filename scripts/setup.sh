#!/usr/bin/env bash
# Installs what peerless and its tests need on a Debian machine (idempotent) and makes sure
# the local services run: Fashion-MNIST, RabbitMQ on 127.0.0.1:5672, moto's S3 server,
# moto 5.2.5 for the stack test, the Lambda Runtime API emulator (cargo-lambda) and the ASL
# validator (npm asl-validator).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

log() { printf '[setup] %s\n' "$*" >&2; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq; apt_updated=1
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Fashion-MNIST in IDX format, from Debian.
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  log "installing dataset-fashion-mnist"; apt_install dataset-fashion-mnist
fi

# RabbitMQ: the AMQP tests talk to a real broker on 127.0.0.1:5672 (guest/guest).
if ! port_open 5672; then
  command -v rabbitmq-server >/dev/null || { log "installing rabbitmq-server"; apt_install rabbitmq-server; }
  log "starting RabbitMQ"
  svc="$HOME/.cache/peerless/rabbitmq"; mkdir -p "$svc"
  printf 'listeners.tcp.default = 127.0.0.1:5672\n' > "$svc/rabbitmq.conf"
  export RABBITMQ_NODENAME=rabbit@localhost ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_CONFIG_FILE="$svc/rabbitmq.conf"
  nohup rabbitmq-server > "$svc/rabbitmq.log" 2>&1 &
  for _ in $(seq 1 120); do port_open 5672 && break; sleep 1; done
  port_open 5672 || { log "RabbitMQ did not start; see $svc/rabbitmq.log"; tail -20 "$svc/rabbitmq.log" >&2; exit 1; }
  sleep 2  # the listener opens a moment before the broker accepts logins
fi
log "RabbitMQ is up on 127.0.0.1:5672"

# moto's S3-compatible server (the S3 tests start their own instance on a free port).
if ! python3 -c 'import moto.server' 2>/dev/null; then
  log "installing moto[server]"
  python3 -m pip install -q --root-user-action=ignore 'moto[server]==5.2.1'
fi
log "moto $(python3 -c 'import moto; print(moto.__version__)') is available"

# moto 5.2.5 in a venv of its own for peer/tests/stack.rs, whose peers start many
# executions of one state machine: 5.2.1's Step Functions fails every StartExecution of a
# state machine after its first (getmoto/moto#10077, fixed in 5.2.5). The other tests keep
# the system python3's 5.2.1.
MOTO_EXECUTING_VENV="${PEERLESS_MOTO_EXECUTING:-$HOME/.cache/peerless/moto-executing}"
if ! "$MOTO_EXECUTING_VENV/bin/python" -c "import moto, moto.server, boto3; assert moto.__version__ == '5.2.5'" 2>/dev/null; then
  log "installing moto[server] 5.2.5 into $MOTO_EXECUTING_VENV"
  [ -x "$MOTO_EXECUTING_VENV/bin/python" ] || python3 -m venv "$MOTO_EXECUTING_VENV"
  "$MOTO_EXECUTING_VENV/bin/pip" install -q 'moto[server]==5.2.5'
fi

# cargo-lambda from PyPI: its `cargo lambda watch` is the Lambda Runtime API emulator the
# function tests run the real `compute_gradient` binary behind.
CARGO_LAMBDA_VENV="${PEERLESS_CARGO_LAMBDA:-$HOME/.cache/peerless/cargo-lambda}"
if [ ! -x "$CARGO_LAMBDA_VENV/bin/cargo-lambda" ]; then
  log "installing cargo-lambda 1.9.2 into $CARGO_LAMBDA_VENV"
  python3 -m venv "$CARGO_LAMBDA_VENV"
  "$CARGO_LAMBDA_VENV/bin/pip" install -q cargo-lambda==1.9.2
fi

# asl-validator from npm validates the generated Step Functions definitions.
ASL_PREFIX="${PEERLESS_ASL_VALIDATOR:-$HOME/.cache/peerless/node}"
if [ ! -x "$ASL_PREFIX/node_modules/.bin/asl-validator" ]; then
  command -v npm >/dev/null || { log "installing npm"; apt_install npm; }
  log "installing asl-validator 4.0.0 into $ASL_PREFIX"
  mkdir -p "$ASL_PREFIX"
  npm install --silent --prefix "$ASL_PREFIX" asl-validator@4.0.0 >/dev/null
fi
