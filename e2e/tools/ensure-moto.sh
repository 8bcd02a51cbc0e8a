#!/usr/bin/env bash
# Makes moto's SQS-compatible server available for the SQS splitter tests and prints the path of
# its `moto_server` executable.
#
# moto[server] comes from PyPI into a venv under
# ${MIRRORD_OPERATOR_CACHE:-$HOME/.cache/mirrord-operator}/tools/moto-<version>/ (outside the repo, keyed by
# version). Quiet on success; idempotent; safe to run concurrently (a lock, and an atomic rename of a
# fully prepared venv). Needs python3 with the venv module (Debian: python3-venv).
set -euo pipefail

version="${MIRRORD_OPERATOR_MOTO_VERSION:-5.2.6}"
tools="${MIRRORD_OPERATOR_CACHE:-$HOME/.cache/mirrord-operator}/tools"
dest="$tools/moto-$version"

die() { echo "ensure-moto: $*" >&2; exit 1; }

ready() { [[ -x "$dest/bin/moto_server" ]] && "$dest/bin/python" -c 'import moto.server' >/dev/null 2>&1; }

if ready; then
  echo "$dest/bin/moto_server"
  exit 0
fi

command -v python3 >/dev/null 2>&1 || die "python3 is needed (apt-get install python3 python3-venv)"
mkdir -p "$tools"

if command -v flock >/dev/null 2>&1; then
  exec 9>"$tools/.moto.lock"
  flock 9
  if ready; then
    echo "$dest/bin/moto_server"
    exit 0
  fi
fi

# A venv cannot be moved (its scripts hard-code their path), so it is built in place; `ready`
# checks the import, so a half-built one left by a killed run is removed and built again.
rm -rf "$dest"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! python3 -m venv "$dest" >"$log" 2>&1; then
  cat "$log" >&2
  rm -rf "$dest"
  die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
if ! "$dest/bin/pip" install --disable-pip-version-check --no-input --quiet "moto[server]==$version" >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  rm -rf "$dest"
  die "pip install moto[server]==$version failed (log above)"
fi
ready || { rm -rf "$dest"; die "moto_server missing after install"; }
echo "$dest/bin/moto_server"
