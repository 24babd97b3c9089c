#!/usr/bin/env bash
# Posts an NDJSON file of events to a running `cvguard serve` over HTTP ingest, in chunks a
# request can carry ([http] max_body_bytes), and prints each answer. With CVGUARD_TOKEN set,
# sends it as the bearer token (an `ingest` or `admin` one).
#   scripts/post-events.sh FILE [BASE_URL]     (default http://127.0.0.1:8088)
set -euo pipefail
file=${1:?usage: scripts/post-events.sh FILE [BASE_URL]}
url=${2:-http://127.0.0.1:8088}
[ -f "$file" ] || { echo "no $file (make demo writes data/demo/events.ndjson)" >&2; exit 66; }
auth=()
if [ -n "${CVGUARD_TOKEN:-}" ]; then auth=(-H "Authorization: Bearer $CVGUARD_TOKEN"); fi
until curl -sf "$url/readyz" >/dev/null; do
  echo "waiting for $url/readyz (start it with make run)" >&2
  sleep 1
done
chunks=$(mktemp -d)
trap 'rm -rf "$chunks"' EXIT
split -l 20000 "$file" "$chunks/part-"
for part in "$chunks"/part-*; do
  curl -sf "${auth[@]}" --data-binary @"$part" "$url/v1/events"
  echo
done
echo "posted $(wc -l < "$file") events; the console: $url/ui/" >&2
