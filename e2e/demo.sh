#!/usr/bin/env bash
# First-run demo: a local control plane with the operator installed by Helm, a labelled namespace and an
# injected sample Deployment. State (kubeconfig, logs, PIDs) lives in a fixed directory outside the repo:
#   ${MIRRORD_OPERATOR_DEMO_DIR:-$HOME/.local/state/mirrord-operator/demo}
#
#   e2e/demo.sh up      start (or show, when already up)
#   e2e/demo.sh down    stop everything the demo started and remove its state
set -euo pipefail
# shellcheck source-path=SCRIPTDIR

E2E_LIB="$(cd "$(dirname "$0")" && pwd)/lib"
# shellcheck source=lib/common.sh
source "$E2E_LIB/common.sh"
# shellcheck source=lib/controlplane.sh
source "$E2E_LIB/controlplane.sh"
# shellcheck source=lib/operator.sh
source "$E2E_LIB/operator.sh"
# shellcheck source=lib/testlib.sh
source "$E2E_LIB/testlib.sh"
# shellcheck source=lib/setup.sh
source "$E2E_LIB/setup.sh"

DEMO_DIR="${MIRRORD_OPERATOR_DEMO_DIR:-$HOME/.local/state/mirrord-operator/demo}"
DEMO_NS="demo"

demo_running() {
  local pid bin
  [[ -s "$DEMO_DIR/pids" ]] || return 1
  while read -r pid bin; do
    pid_runs "$pid" "$bin" || return 1
  done <"$DEMO_DIR/pids"
}

demo_show() {
  local pod
  export KUBECONFIG="$DEMO_DIR/kubeconfig"
  pod="$(pods_of "$DEMO_NS" app=demo-app | head -1)"
  echo
  echo "Injected pod $DEMO_NS/$pod:"
  k -n "$DEMO_NS" get pod "$pod" -o json | python3 -c '
import json, sys
p = json.load(sys.stdin)
s = p["spec"]
for c in s.get("initContainers", []):
    print("  initContainer %-15s %s" % (c["name"], c["image"]))
for c in s["containers"]:
    print("  container     %-15s %s" % (c["name"], c["image"]))
st = (p["metadata"].get("annotations") or {}).get("agent.mirrord.metalbear.co/status")
print("  agent.mirrord.metalbear.co/status:", st)
'
  cat <<TXT

The pod stays Pending: this control plane has no kubelet (see e2e/README.md).
Use kubectl against it:
  export KUBECONFIG=$DEMO_DIR/kubeconfig
  kubectl -n $DEMO_NS get pods
  kubectl -n $DEMO_NS get pod $pod -o yaml
(kubectl: $KUBECTL)
Webhook log: $DEMO_DIR/logs/  ·  stop everything: make demo-down
TXT
}

demo_up() {
  if demo_running; then
    op_ensure_tools
    log "the demo is already up"
    demo_show
    return
  fi
  [[ -e "$DEMO_DIR" ]] && demo_down
  unset KUBECONFIG # the demo always runs its own control plane
  mkdir -p "$DEMO_DIR"
  # Half-started state is removed again; a completed demo stays up after this script exits.
  DEMO_UP=0
  trap '[[ $DEMO_UP == 1 ]] || { log "demo did not come up; cleaning up"; demo_down; }' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  e2e_setup_cluster "$DEMO_DIR"
  op_helm install --set webhook.auditInterval=1m
  k create namespace "$DEMO_NS" >/dev/null
  k label namespace "$DEMO_NS" "$INJECT_LABEL=enabled" >/dev/null
  deployment_yaml demo-app 1 | k -n "$DEMO_NS" create -f - >/dev/null
  wait_pods "$DEMO_NS" app=demo-app 1
  assert_injected "$DEMO_NS" "$(pods_of "$DEMO_NS" app=demo-app)"
  DEMO_UP=1
  demo_show
}

demo_down() {
  if [[ -d "$DEMO_DIR" ]]; then
    cp_stop "$DEMO_DIR"
    rm -rf "$DEMO_DIR"
    log "demo stopped and $DEMO_DIR removed"
  else
    log "no demo running ($DEMO_DIR does not exist)"
  fi
}

case "${1:-}" in
  up) demo_up ;;
  down) demo_down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
