#!/usr/bin/env bash
# Stops the broker kafka-up.sh started on KAFKA_PORT (default 9092), and nothing else: the
# process in its pid file, only if that is still tansu. Idempotent: nothing running is fine.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT="${KAFKA_PORT:-9092}"
DIR="${CVGUARD_CACHE:-$PWD/.cache}/tansu-0.1.2"
PIDFILE="$DIR/tansu-$PORT.pid"
if [ -f "$PIDFILE" ]; then
  pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null && grep -q tansu "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
fi
echo "stopped"
