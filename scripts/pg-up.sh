#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 with trust auth for local tests:
# installs Debian's package if it is missing, starts the cluster if it is stopped.
# Idempotent. Prints the admin URL the tests use.
set -euo pipefail
HOST=127.0.0.1
PORT="${PGPORT:-5432}"
URL="postgres://postgres@$HOST:$PORT/postgres"

answers() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! answers; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "installing postgresql from Debian's packages" >&2
    as_root apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >&2
  fi
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  conf="/etc/postgresql/$version/main"
  # Local tests connect without a password, over TCP on loopback only.
  if ! grep -q "cvguard-tests" "$conf/pg_hba.conf" 2>/dev/null; then
    as_root sh -c "printf '# cvguard-tests\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n' | cat - '$conf/pg_hba.conf' > '$conf/pg_hba.conf.new' && mv '$conf/pg_hba.conf.new' '$conf/pg_hba.conf' && chown postgres: '$conf/pg_hba.conf'"
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
  for _ in $(seq 1 100); do answers && break; sleep 0.2; done
fi
answers || { echo "PostgreSQL does not answer on $HOST:$PORT" >&2; exit 1; }
echo "$URL"
