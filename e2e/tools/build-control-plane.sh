#!/usr/bin/env bash
# Builds (once, cached) the kube-apiserver and kube-controller-manager the local e2e control plane runs.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
here="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../lib/common.sh
source "$here/lib/common.sh"
# shellcheck source=../lib/controlplane.sh
source "$here/lib/controlplane.sh"
cp_ensure_binaries
echo "$KUBE_BIN_DIR"
