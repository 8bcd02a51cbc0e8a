#!/usr/bin/env bash
# Lists every trace of an e2e node still on this machine (processes, mounts, cgroups, the bridge, veths,
# host paths, KUBE-/CNI- iptables rules) and exits 1 when there is any. With --clean it first removes
# what a killed run left behind (only node state: the bridge and its address must not be in use by a
# running e2e run or demo).
#
#   e2e/tools/node-leftovers.sh [--clean [STATE_DIR]]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../lib/common.sh
source "$here/lib/common.sh"
# shellcheck source=../lib/controlplane.sh
source "$here/lib/controlplane.sh"
# shellcheck source=../lib/node.sh
source "$here/lib/node.sh"
if [[ "${1:-}" == --clean ]]; then
  dir="${2:-$(mktemp -d)}"
  mkdir -p "$dir/node"
  touch "$dir/pids"
  node_stop "$dir"
fi
if node_leftovers; then
  echo "no node leftovers"
else
  exit 1
fi
