#!/usr/bin/env bash
# Installs Debian's prometheus-alertmanager and prometheus (for promtool) if they are
# missing and the package manager can get them. Idempotent; never fails the build: a
# test that needs a tool it cannot find says so and skips that part.
set -uo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
need=()
command -v prometheus-alertmanager >/dev/null 2>&1 || [ -x /usr/bin/prometheus-alertmanager ] || need+=(prometheus-alertmanager)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} from Debian's packages" >&2
  as_root apt-get update -qq >/dev/null 2>&1
  # Only the binaries are used; keep the packages' services from starting.
  as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d' 2>/dev/null
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
    || echo "could not install ${need[*]}; the tests that use them will skip with a reason" >&2
  as_root rm -f /usr/sbin/policy-rc.d 2>/dev/null
fi
for t in prometheus-alertmanager promtool; do
  if command -v "$t" >/dev/null 2>&1; then echo "$t: $(command -v "$t")"; else echo "$t: missing"; fi
done
exit 0
