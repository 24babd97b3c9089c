#!/usr/bin/env bash
# Runs Schemathesis (property-based API tests from docs/openapi.yaml) against a running cvguard
# and exits non-zero on any failure. Starts nothing itself: give it the base URL.
#
#   CVGUARD_TOKEN=<admin token> scripts/schemathesis.sh http://127.0.0.1:8088
#
# The token (admin: every operation) is sent as `Authorization: Bearer`; the service must have
# tokens configured, or Schemathesis's `ignored_auth` check rightly fails (with none, loopback
# clients need none). `cargo test -p cvguard-tests --test api_contract` starts a service with
# incidents in its store and runs this.
#
# Installs (if absent) Schemathesis, pinned, with pip into a venv under the cache folder;
# idempotent, and safe to run twice at once. Runs every check (`--checks all`) with a bounded
# number of examples per operation (SCHEMATHESIS_MAX_EXAMPLES, default 50) and a fixed seed
# (SCHEMATHESIS_SEED), so a run is repeatable and takes well under 90 s on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="4.32.5"
URL="${1:?usage: CVGUARD_TOKEN=<token> $0 <base URL, e.g. http://127.0.0.1:8088>}"
URL="${URL%/}"
DIR="${CVGUARD_CACHE:-$PWD/.cache}/schemathesis-$VERSION"
VENV="$DIR/venv"
ST="$VENV/bin/schemathesis"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-50}"
SEED="${SCHEMATHESIS_SEED:-15}"

installed() { [ -x "$ST" ] && "$ST" --version 2>/dev/null | grep -q "version $VERSION\$"; }

if ! installed; then
  mkdir -p "$DIR"
  exec 9>"$DIR/install.lock"
  flock 9
  if ! installed; then
    PY="$(command -v python3 || command -v python)"
    rm -rf "$VENV" "$DIR/site"
    if "$PY" -m venv "$VENV" >&2; then
      "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$VERSION" >&2
    else
      # A Python without its venv module (Debian's python3 without python3-venv): install
      # into a folder of its own and run the CLI from there.
      rm -rf "$VENV"
      "$PY" -m pip install --quiet --disable-pip-version-check --target "$DIR/site" "schemathesis==$VERSION" >&2
      mkdir -p "$VENV/bin"
      printf '#!/bin/sh\nPYTHONPATH="%s" exec "%s" -m schemathesis.cli "$@"\n' "$DIR/site" "$PY" >"$ST"
      chmod +x "$ST"
    fi
  fi
  flock -u 9
fi

# What a schema cannot say about POST /v1/events: whether an event is too far in the
# future depends on the server's clock, and its string limits count bytes, not characters.
# So a well-formed event may be refused on its own, and a body of nothing but refused events
# answers 400 (docs/EVENTS.md); every other operation must accept what its schema allows.
# And an invalid event can be refused for its size before it is read (413: a cv_ids array
# past its maxItems is larger than the test service's http.max_body_bytes).
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/schemathesis.toml" <<'TOML'
[[operations]]
include-operation-id = "ingestEvents"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400"]
checks.negative_data_rejection.expected-statuses = ["400", "401", "403", "413", "415"]

# A server-sent event stream never ends, so it has no body to check; tests/api.rs reads it.
[[operations]]
include-operation-id = "streamIncidents"
enabled = false
TOML

AUTH=()
if [ -n "${CVGUARD_TOKEN:-}" ]; then
  AUTH=(-H "Authorization: Bearer $CVGUARD_TOKEN")
fi

echo "schemathesis $VERSION against $URL: --checks all, $MAX_EXAMPLES examples per operation, seed $SEED" >&2
cd "$WORK"
"$ST" --config-file "$WORK/schemathesis.toml" run "$URL/openapi.yaml" \
  --url "$URL" \
  "${AUTH[@]}" \
  --checks all \
  --max-examples "$MAX_EXAMPLES" \
  --seed "$SEED" \
  --workers 2 \
  --request-timeout 30 \
  --generation-database none \
  --no-color
