#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The coordinator's API latency through the real kube-apiserver aggregator, beside built-in GETs in the
# same run (docs/benchmarks.md). Starts its own e2e control plane and node (so take the e2e lock), installs
# the operator with the base e2e values, creates DEPLOYMENTS Deployments (no replicas: they are listed as
# targets without starting pods) in namespace bench-api, runs e2e/tools/bench-api.py and tears down.
#
#   e2e/tools/bench-api.sh [ROUNDS] [DEPLOYMENTS]     (defaults: 500 rounds, 50)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
rounds="${1:-500}"
deployments="${2:-50}"
# shellcheck source=../lib/common.sh
source "$here/lib/common.sh"
# shellcheck source=../lib/controlplane.sh
source "$here/lib/controlplane.sh"
# shellcheck source=../lib/node.sh
source "$here/lib/node.sh"
# shellcheck source=../lib/operator.sh
source "$here/lib/operator.sh"
# shellcheck source=../lib/testlib.sh
source "$here/lib/testlib.sh"
# shellcheck source=../lib/setup.sh
source "$here/lib/setup.sh"

trap e2e_teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
e2e_setup_cluster ""
e2e_install_operator
wait_for "APIService v1.operator.metalbear.co Available" 120 bash -c \
  "'$KUBECTL' get apiservice v1.operator.metalbear.co -o jsonpath='{.status.conditions[?(@.type==\"Available\")].status}' | grep -qx True"
k create namespace bench-api >/dev/null
for ((i = 0; i < deployments; i++)); do app_deployment_yaml "svc-$i" 0; echo "---"; done | k -n bench-api create -f - >/dev/null
wait_for "$deployments targets listed" 60 bash -c \
  "[[ \$('$KUBECTL' -n bench-api get targets -o name | wc -l) -ge $deployments ]]"
log "measuring: $rounds rounds"
python3 "$here/tools/bench-api.py" "$KUBECONFIG" "$rounds" bench-api
