#!/usr/bin/env bash
# Installs the named Debian packages when missing; idempotent and quiet when everything is there.
# Usage: e2e/tools/ensure-apt.sh PACKAGE...
set -euo pipefail
missing=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "ensure-apt: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/ensure-apt.$$.log 2>&1; then
  # A fresh machine has no package lists yet.
  apt-get update >/tmp/ensure-apt.$$.log 2>&1 || { cat /tmp/ensure-apt.$$.log >&2; exit 1; }
  apt-get install -y --no-install-recommends "${missing[@]}" >/tmp/ensure-apt.$$.log 2>&1 || { cat /tmp/ensure-apt.$$.log >&2; exit 1; }
fi
rm -f /tmp/ensure-apt.$$.log
