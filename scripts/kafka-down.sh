#!/usr/bin/env bash
# Stops the broker started by kafka-up.sh. Idempotent: nothing running is fine.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${KAFKA_PORT:-9092}"
DIR="${CVGUARD_CACHE:-$PWD/.cache}/tansu-0.1.2"
PIDFILE="$DIR/tansu-$PORT.pid"
if [ -f "$PIDFILE" ]; then
  pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
fi
echo "stopped"
