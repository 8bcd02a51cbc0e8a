# shellcheck shell=bash
# Installing the operator with Helm and running its webhook, in one of three ways:
#   local, pod  — our own control plane and node (the default): the chart's Deployment runs in-cluster
#                 from the locally built image (pullPolicy Never), reached by the apiserver through its
#                 Service, exactly as in cluster mode.
#   local, host — MIRRORD_E2E_WEBHOOK=host, no node (fast): the chart is installed with webhook.url pointing
#                 at the host and the webhook binary runs on the host with exactly the env the chart
#                 rendered for its Deployment, under the chart's own ServiceAccount (so the chart's RBAC is
#                 what is tested).
#   cluster     — $KUBECONFIG names a real cluster (kind, k3d, ...): the chart's Deployment serves in-cluster.
# Sourced, never executed. Requires lib/common.sh; E2E_DIR (state dir), KUBECTL and HELM set.

OP_NS="${MIRRORD_E2E_OPERATOR_NAMESPACE:-mirrord}"
OP_RELEASE="mirrord-operator"
OP_CHART="${MIRRORD_E2E_CHART:-$REPO_ROOT/charts/mirrord-operator}"
OP_MWC="mirrord-operator"
OP_TLS_SECRET="mirrord-operator-tls"

k() { "$KUBECTL" --request-timeout=30s "$@"; }

# Does the chart's Deployment serve the webhook (cluster mode, or our node)?
op_in_cluster() { [[ "$E2E_MODE" == cluster || "${E2E_WEBHOOK:-}" == pod ]]; }

# Paths of helm and kubectl (the chart helper's ensure-helm.sh caches them outside the repo).
op_ensure_tools() {
  local ensure="$E2E_ROOT/tools/ensure-helm.sh"
  [[ -x "$ensure" ]] || die "$ensure is missing (it comes with the Helm chart)"
  HELM="${HELM:-$("$ensure" helm)}"
  KUBECTL="${KUBECTL:-$("$ensure" kubectl)}"
  export HELM KUBECTL
}

# The values every install carries in local mode: the apiserver calls the host webhook by URL and no
# in-cluster replica is wanted (there is no kubelet to run it anyway).
_op_mode_values() {
  if ! op_in_cluster; then
    printf '%s\n' --set "webhook.url=https://127.0.0.1:$WH_PORT/mutate" --set replicaCount=0
  else
    # One replica: metrics and logs are read from it.
    printf '%s\n' --set replicaCount=1
    if [[ "$E2E_MODE" == local ]] && "$HELM" upgrade --help 2>/dev/null | grep -q -e '--server-side'; then
      # Kubernetes 1.20's aggregator has no field manager for APIServices: a server-side apply of the
      # coordinator's APIService panics the apiserver ("FieldManager must be installed to run apply").
      # Client-side three-way merges also take spec.replicas back after "webhook down".
      printf '%s\n' --server-side=false
    elif "$HELM" upgrade --help 2>/dev/null | grep -q -e '--force-conflicts'; then
      # "Webhook down" scales the Deployment with kubectl; Helm 4's server-side apply must take
      # spec.replicas back on the next upgrade.
      printf '%s\n' --force-conflicts
    fi
    # MIRRORD_E2E_IMAGE=REGISTRY/REPOSITORY:TAG, the image loaded into the cluster (the agent uses it too).
    local img="${MIRRORD_E2E_IMAGE:-}" rest
    # Our node: the image imported into its containerd, never pulled. Every Deployment of the chart uses
    # image.* and image.pullPolicy, so whatever else the chart runs comes from the same image.
    if [[ "$E2E_MODE" == local ]]; then
      img="$E2E_OPERATOR_IMAGE"
      printf '%s\n' --set image.pullPolicy=Never
    fi
    if [[ -n "$img" ]]; then
      [[ "$img" == */*:* ]] || die "MIRRORD_E2E_IMAGE must be REGISTRY/REPOSITORY:TAG, got '$img'"
      rest="${img#*/}"
      printf '%s\n' --set "image.registry=${img%%/*}" --set "image.repository=${rest%:*}" --set "image.tag=${rest##*:}"
    fi
  fi
}

# op_helm install|upgrade [helm args...]: installs/upgrades the release with the mode's values plus the
# given ones (no --reuse-values: each call states the whole configuration), then (re)starts the webhook.
op_helm() {
  local verb="$1"
  shift
  local mode_values=()
  mapfile -t mode_values < <(_op_mode_values)
  [[ "$verb" == install ]] && mode_values+=(--create-namespace)
  log "helm $verb $* "
  op_in_cluster || op_webhook_stop
  "$HELM" "$verb" "$OP_RELEASE" "$OP_CHART" --namespace "$OP_NS" --timeout 60s "${mode_values[@]}" "$@" >"$E2E_DIR/logs/helm-$verb.log" 2>&1 ||
    { cat "$E2E_DIR/logs/helm-$verb.log" >&2; return 1; }
  op_webhook_start
}

op_uninstall() {
  op_in_cluster || op_webhook_stop
  "$HELM" uninstall "$OP_RELEASE" --namespace "$OP_NS" --timeout 60s >"$E2E_DIR/logs/helm-uninstall.log" 2>&1 ||
    { cat "$E2E_DIR/logs/helm-uninstall.log" >&2; return 1; }
}

op_installed() { "$HELM" status "$OP_RELEASE" --namespace "$OP_NS" >/dev/null 2>&1; }

# ---- the webhook process (local mode) or Deployment (cluster mode) ------------------------------------

# Starts the webhook and waits for /readyz (self-managed TLS: certificate served and caBundle in place).
op_webhook_start() {
  if op_in_cluster; then
    local n
    n="$(k -n "$OP_NS" get deploy "$OP_RELEASE" -o jsonpath='{.spec.replicas}')"
    ((n > 0)) || k -n "$OP_NS" scale deploy "$OP_RELEASE" --replicas 1 >/dev/null
    k -n "$OP_NS" rollout status deploy "$OP_RELEASE" --timeout 120s >&2
    wait_for "caBundle in $OP_MWC" 60 _op_cabundle_set
    # The apiserver calls the endpoints (enable-aggregator-routing), which lag the rollout: with
    # failurePolicy Fail a call to a replaced pod's address would refuse pods.
    # An explicit status: a bare `return` inside a trap (deferred cleanup after `fail`) returns the
    # status from before the trap, which reported a working restore as failed.
    wait_for "the Service's endpoints to be the ready webhook pods" 60 _op_endpoints_current || return 1
    # A replaced pod keeps answering for its --shutdown-drain (the API server may still route to
    # it): tests that expect the new settings wait until it is gone.
    wait_for "replaced webhook pods gone" 60 _op_no_terminating_webhook_pods || return 1
    return 0
  fi
  _op_host_env >"$E2E_DIR/webhook.env" || return 1
  local args=() line
  mapfile -t args < <(k -n "$OP_NS" get deploy "$OP_RELEASE" -o json |
    python3 -c 'import json,sys; [print(a) for a in json.load(sys.stdin)["spec"]["template"]["spec"]["containers"][0].get("args", ["webhook"])]')
  # Numbered across the whole run (tests run in subshells, so the counter lives in a file).
  local runs
  runs=$(($(cat "$E2E_DIR/webhook.runs" 2>/dev/null || echo 0) + 1))
  echo "$runs" >"$E2E_DIR/webhook.runs"
  WH_LOG="$E2E_DIR/logs/webhook.$runs.log"
  (
    while IFS= read -r line; do export "${line?}"; done <"$E2E_DIR/webhook.env"
    exec nohup "$OPERATOR_BIN" "${args[@]}" >"$WH_LOG" 2>&1 </dev/null
  ) &
  WH_PID=$!
  echo "$WH_PID $OPERATOR_BIN" >>"$E2E_DIR/pids"
  echo "$WH_PID" >"$E2E_DIR/webhook.pid"
  if ! wait_for "webhook /readyz on 127.0.0.1:$WH_HEALTH_PORT" 60 curl -sf "http://127.0.0.1:$WH_HEALTH_PORT/readyz"; then
    log "webhook log ($WH_LOG):"
    tail -30 "$WH_LOG" >&2
    return 1
  fi
}

op_webhook_stop() {
  if op_in_cluster; then
    k -n "$OP_NS" scale deploy "$OP_RELEASE" --replicas 0 >/dev/null
    wait_for "webhook pods gone" 120 _op_no_webhook_pods || return 1
    return 0
  fi
  local pid
  pid="$(cat "$E2E_DIR/webhook.pid" 2>/dev/null || true)"
  [[ -n "$pid" ]] && kill_pid "$pid"
  rm -f "$E2E_DIR/webhook.pid"
}

# _op_webhook_pods KUBECTL-GET-ARGS...: `kubectl get pods` of the webhook's pods (in-cluster modes).
_op_webhook_pods() {
  k -n "$OP_NS" get pods -l app.kubernetes.io/name=mirrord-operator,app.kubernetes.io/component=webhook "$@"
}

# The running webhook pod (in-cluster modes).
_op_webhook_pod() {
  _op_webhook_pods --field-selector status.phase=Running -o jsonpath='{.items[0].metadata.name}'
}

# Where the host reaches the webhook's TLS port (local modes): the host process on loopback, or the pod's
# IP on the node's bridge.
op_webhook_addr() {
  if op_in_cluster; then
    echo "$(k -n "$OP_NS" get pod "$(_op_webhook_pod)" -o jsonpath='{.status.podIP}'):$(k -n "$OP_NS" get deploy "$OP_RELEASE" -o jsonpath='{.spec.template.spec.containers[0].ports[?(@.name=="https")].containerPort}')"
  else
    echo "127.0.0.1:$WH_PORT"
  fi
}

# openssl s_client arguments that check the served certificate for the name the apiserver uses: the
# Service's DNS name in-cluster, 127.0.0.1 for the host process.
op_webhook_verify_args() {
  if op_in_cluster; then
    echo "-verify_hostname $OP_RELEASE.$OP_NS.svc"
  else
    echo "-verify_ip 127.0.0.1"
  fi
}

# Identifies the running webhook instance (PID, or pod name and restart count): unchanged as long as it
# was not restarted.
op_webhook_instance() {
  if op_in_cluster; then
    local pod
    pod="$(_op_webhook_pod)"
    echo "$pod/$(k -n "$OP_NS" get pod "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}')"
  else
    cat "$E2E_DIR/webhook.pid"
  fi
}

# Why the webhook's container last ended (reason, exit code) and the end of that run's log: for tests
# that fail on a restart, so the cause is in the log.
op_last_termination() {
  op_in_cluster || return 0
  local pod
  pod="$(_op_webhook_pod)"
  echo "last termination: $(k -n "$OP_NS" get pod "$pod" -o jsonpath='{.status.containerStatuses[0].lastState.terminated}')"
  k -n "$OP_NS" logs "$pod" --previous 2>/dev/null | tail -20
}

_op_no_webhook_pods() {
  [[ -z "$(_op_webhook_pods -o name)" ]]
}

_op_no_terminating_webhook_pods() {
  [[ -z "$(_op_webhook_pods -o jsonpath='{.items[?(@.metadata.deletionTimestamp)].metadata.name}')" ]]
}

_op_endpoints_current() {
  local eps pods
  eps="$(k -n "$OP_NS" get endpoints "$OP_RELEASE" -o jsonpath='{.subsets[*].addresses[*].ip}' | tr ' ' '\n' | sort | paste -sd' ')"
  pods="$(_op_webhook_pods -o json | python3 -c '
import json, sys
ips = []
for p in json.load(sys.stdin)["items"]:
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    if ready and not p["metadata"].get("deletionTimestamp") and p["status"].get("podIP"):
        ips.append(p["status"]["podIP"])
print(" ".join(sorted(ips)))')"
  echo "endpoints [$eps], ready pods [$pods]"
  [[ -n "$eps" && "$eps" == "$pods" ]]
}

_op_cabundle_set() {
  [[ -n "$(k get mutatingwebhookconfiguration "$OP_MWC" -o jsonpath='{.webhooks[0].clientConfig.caBundle}')" ]]
}

# The env of the chart's Deployment container, as NAME=VALUE lines, made to work on the host:
# listen addresses on this run's loopback ports, 127.0.0.1 in the certificate, the release namespace for
# fieldRefs, and a kubeconfig holding the chart's ServiceAccount token.
_op_host_env() {
  local deploy sa
  deploy="$(k -n "$OP_NS" get deploy "$OP_RELEASE" -o json)" || return 1
  sa="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["spec"]["template"]["spec"].get("serviceAccountName") or "default")' <<<"$deploy")"
  _op_sa_kubeconfig "$sa" >"$E2E_DIR/webhook.kubeconfig" || return 1
  OP_NS="$OP_NS" WH_PORT="$WH_PORT" WH_HEALTH_PORT="$WH_HEALTH_PORT" KCFG="$E2E_DIR/webhook.kubeconfig" \
    python3 -c '
import json, os, sys
c = json.load(sys.stdin)["spec"]["template"]["spec"]["containers"][0]
env = {}
for e in c.get("env", []):
    if "value" in e:
        env[e["name"]] = e["value"]
    elif e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
        env[e["name"]] = os.environ["OP_NS"]
    elif "valueFrom" in e:
        sys.exit("cannot replay env %s on the host: %s" % (e["name"], e["valueFrom"]))
    else:
        env[e["name"]] = ""
env["MIRRORD_OPERATOR_LISTEN"] = "127.0.0.1:" + os.environ["WH_PORT"]
env["MIRRORD_OPERATOR_HEALTH_LISTEN"] = "127.0.0.1:" + os.environ["WH_HEALTH_PORT"]
sans = [s for s in env.get("MIRRORD_OPERATOR_TLS_EXTRA_SANS", "").split(",") if s]
if "127.0.0.1" not in sans:
    sans.append("127.0.0.1")
env["MIRRORD_OPERATOR_TLS_EXTRA_SANS"] = ",".join(sans)
env["KUBECONFIG"] = os.environ["KCFG"]
for k, v in env.items():
    if "\n" in v:
        sys.exit(f"env {k} has a newline; cannot replay")
    print(f"{k}={v}")
' <<<"$deploy"
}

# A kubeconfig for ServiceAccount NS/SA: the webhook on the host gets exactly the chart's RBAC.
_op_sa_kubeconfig() {
  local sa="$1" secret token server ca
  wait_for "token of ServiceAccount $OP_NS/$sa" 60 _op_sa_secret "$sa" || return 1
  secret="$(_op_sa_secret "$sa")"
  token="$(k -n "$OP_NS" get secret "$secret" -o jsonpath='{.data.token}' | base64 -d)"
  server="$(k config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
  ca="$(k config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority}')"
  cat <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "$server", certificate-authority: "$ca"}
users:
- name: $sa
  user: {token: "$token"}
contexts:
- name: e2e
  context: {cluster: e2e, user: $sa, namespace: $OP_NS}
current-context: e2e
KCFG
}

_op_sa_secret() {
  local s
  s="$(k -n "$OP_NS" get serviceaccount "$1" -o jsonpath='{.secrets[0].name}')" && [[ -n "$s" ]] && echo "$s"
}

# The webhook's Prometheus metrics text.
op_metrics() {
  if ! op_in_cluster; then
    curl -sf "http://127.0.0.1:$WH_HEALTH_PORT/metrics"
  else
    local pod port
    pod="$(_op_webhook_pod)"
    port="$(k -n "$OP_NS" get deploy "$OP_RELEASE" -o jsonpath='{.spec.template.spec.containers[0].ports[?(@.name=="health")].containerPort}')"
    k get --raw "/api/v1/namespaces/$OP_NS/pods/$pod:${port:-9443}/proxy/metrics"
  fi
}

# The webhook's log (all runs in local mode).
op_logs() {
  if ! op_in_cluster; then
    cat "$E2E_DIR"/logs/webhook.*.log 2>/dev/null
  else
    k -n "$OP_NS" logs deploy/"$OP_RELEASE" --all-containers 2>/dev/null
  fi
}
