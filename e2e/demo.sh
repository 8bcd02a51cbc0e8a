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
# shellcheck source=lib/node.sh
source "$E2E_LIB/node.sh"
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
  local pod ip
  export KUBECONFIG="$DEMO_DIR/kubeconfig"
  pod="$(pods_of "$DEMO_NS" app=demo-app | head -1)"
  echo
  echo "Injected pod $DEMO_NS/$pod:"
  k -n "$DEMO_NS" get pod "$pod" -o json | python3 -c '
import json, sys
p = json.load(sys.stdin)
s, st = p["spec"], p.get("status", {})
states = {}
for c in st.get("containerStatuses", []) + st.get("initContainerStatuses", []):
    state = c.get("state", {})
    kind = next(iter(state), "unknown")
    reason = state.get(kind, {}).get("reason", "")
    states[c["name"]] = kind + (" (%s)" % reason if reason else "") + ", restarts %d" % c.get("restartCount", 0)
for kind, key in (("initContainer", "initContainers"), ("container", "containers")):
    for c in s.get(key, []):
        print("  %-13s %-14s %-40s %s" % (kind, c["name"], c["image"], states.get(c["name"], "not started")))
print("  phase %s, IP %s, node %s" % (st.get("phase"), st.get("podIP", "-"), s.get("nodeName", "-")))
print("  agent.mirrord.metalbear.co/status:", (p["metadata"].get("annotations") or {}).get("agent.mirrord.metalbear.co/status"))
'
  ip="$(k -n "$DEMO_NS" get pod "$pod" -o jsonpath='{.status.podIP}')"
  cat <<TXT

The pod runs on a local node (kubelet + containerd + runc; the operator's webhook runs in-cluster too):
  curl http://$ip:8080/cgi-bin/hello          # the app, through its pod IP
  export KUBECONFIG=$DEMO_DIR/kubeconfig
  kubectl -n $DEMO_NS get pods -o wide
  kubectl -n $DEMO_NS logs $pod -c mirrord-agent
  kubectl -n mirrord get pods                 # the operator
(kubectl: $KUBECTL)
The coordinator serves the mirrord Operator API (APIService v1.operator.metalbear.co):
  kubectl get mirrordoperators operator -o yaml
  kubectl -n $DEMO_NS get targets             # demo-app is available once its agent has registered
  target/debug/mirrord-operator status        # what \`mirrord operator status\` prints
With the mirrord CLI (3.250) on this kubeconfig:
  mirrord operator status
  mirrord ls -n $DEMO_NS
  mirrord exec --target deployment/demo-app -n $DEMO_NS -- env | grep GREETING
  mirrord port-forward -t deployment/demo-app -n $DEMO_NS -L 9090:localhost:8080   # the app on :9090
  mirrord port-forward -t deployment/demo-app -n $DEMO_NS -R 8080:9999 -f steal.json
      # steal.json: {"feature":{"network":{"incoming":{"mode":"steal","http_filter":{"header_filter":"x-user: me"}}}}}
      # then: curl -H 'x-user: me' http://<pod IP>:8080/ reaches your :9999, other requests the app
  mirrord operator session kill-all
(checked with the real CLI 3.250: docs/sessions.md, "With the upstream mirrord CLI")
Logs of every process: $DEMO_DIR/logs/  ·  stop everything: make demo-down
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
  export MIRRORD_E2E_WEBHOOK=pod
  mkdir -p "$DEMO_DIR"
  # Half-started state is removed again; a completed demo stays up after this script exits.
  DEMO_UP=0
  trap '[[ $DEMO_UP == 1 ]] || { log "demo did not come up; cleaning up"; demo_down; }' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  e2e_setup_cluster "$DEMO_DIR"
  op_helm install "${OP_BASE_VALUES[@]}" --set webhook.auditInterval=1m
  # Agents trust the coordinator's CA, which the webhook reads from the coordinator's TLS Secret
  # (re-read every 2 s until it exists): create the demo's pods only once the coordinator serves.
  k wait --for=condition=Available apiservice/v1.operator.metalbear.co --timeout=180s >/dev/null ||
    log "the coordinator is not Available yet; pods created now get no coordinator CA (recreate them later)"
  sleep 3
  k create namespace "$DEMO_NS" >/dev/null
  k label namespace "$DEMO_NS" "$INJECT_LABEL=enabled" >/dev/null
  app_deployment_yaml demo-app 1 | k -n "$DEMO_NS" create -f - >/dev/null
  k -n "$DEMO_NS" rollout status deploy/demo-app --timeout 120s >&2 ||
    die "demo-app did not become available: $(k -n "$DEMO_NS" describe pods | tail -30)"
  assert_injected "$DEMO_NS" "$(pods_of "$DEMO_NS" app=demo-app)"
  DEMO_UP=1
  demo_show
}

demo_down() {
  if [[ -d "$DEMO_DIR" ]]; then
    node_stop "$DEMO_DIR"
    cp_stop "$DEMO_DIR"
    local rc=0
    if [[ -d "$DEMO_DIR/node" ]] && ! node_leftovers "$DEMO_DIR" >&2; then
      log "ERROR: the demo's node left the above behind"
      rc=1
    fi
    rm -rf "$DEMO_DIR"
    log "demo stopped and $DEMO_DIR removed"
    return "$rc"
  else
    log "no demo running ($DEMO_DIR does not exist)"
  fi
}

case "${1:-}" in
  up) demo_up ;;
  down) demo_down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
