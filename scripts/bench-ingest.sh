#!/usr/bin/env bash
# HTTP ingest end to end: the release binary on the embedded defaults (SQLite, the ingest
# log fsynced before every 202), fed two days of ordinary board traffic in requests of
# 5,000 lines, then a harvest-heavy board. Prints events per second for each.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release/cvguard
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

run() { # name, simulate args...
  local name=$1; shift
  rm -rf "$work/state" "$work"/cvguard.db* "$work/sim"
  "$bin" simulate --out "$work/sim" "$@" >/dev/null 2>&1
  cat > "$work/c.toml" <<TOML
[http]
listen = "127.0.0.1:$port"
[state]
dir = "$work/state"
[store]
url = "sqlite://$work/cvguard.db"
[profiles]
path = "$work/sim/accounts.csv"
TOML
  sed -n '/^\[allowlist\]/,$p' config/cvguard.toml >> "$work/c.toml"
  "$bin" serve --config "$work/c.toml" 2>"$work/serve.log" &
  pid=$!
  until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.1; done
  split -l 5000 -d -a 4 "$work/sim/events.ndjson" "$work/chunk."
  local lines start end
  lines=$(wc -l < "$work/sim/events.ndjson")
  start=$(date +%s.%N)
  for f in "$work"/chunk.*; do
    curl -sf --data-binary @"$f" "http://127.0.0.1:$port/v1/events" >/dev/null
  done
  until curl -s "http://127.0.0.1:$port/metrics" | grep -qx 'cvguard_ingest_in_flight_bytes 0'; do sleep 0.05; done
  end=$(date +%s.%N)
  rm -f "$work"/chunk.*
  kill "$pid"; wait "$pid" 2>/dev/null || true
  python3 -c "print(f'http ingest, $name: $lines events in {$end-$start:.2f} s = {$lines/($end-$start):,.0f} events/s')"
}

run "ordinary traffic (2 days, 3,000 employers, no attack)" --days 2 --employers 3000 --scenarios none
run "3 days with every attack (incidents open, CVs recorded)" --days 3 --employers 300 --agencies 4
