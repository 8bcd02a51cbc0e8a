# shellcheck shell=bash
# What tests use: namespaces, pods, deferred cleanup, assertions. Sourced, never executed.
# Each test runs in its own subshell with `set -e`; a failing command or `fail` ends it.

INJECT_LABEL="mirrord-injection"
POD_INJECT_LABEL="mirrord.metalbear.co/inject"
AGENT="mirrord-agent"
STATUS_ANNOTATION="agent.mirrord.metalbear.co/status"
# Empty: chosen by e2e_setup_cluster (the node's app image, or busybox:1.36 on a real cluster).
TEST_IMAGE="${MIRRORD_E2E_TEST_IMAGE:-}"

fail() { log "FAIL: $*"; exit 1; }

# defer CMD...: runs CMD when the test ends, pass or fail, last registered first.
_DEFERRED=()
defer() { _DEFERRED+=("$(printf '%q ' "$@")"); }
run_deferred() {
  local i
  for ((i = ${#_DEFERRED[@]} - 1; i >= 0; i--)); do
    eval "${_DEFERRED[i]}" || log "cleanup step failed: ${_DEFERRED[i]}"
  done
  _DEFERRED=()
}

# new_ns VAR HINT [LABEL=VALUE...]: creates a uniquely named namespace (deleted when the test ends) and
# stores its name in VAR (not printed: a command substitution would lose the deferred deletion).
new_ns() {
  local var="$1" hint="$2" name
  shift 2
  name="e2e-$hint-$(python3 -c 'import secrets; print(secrets.token_hex(3))')"
  k create namespace "$name" >/dev/null
  defer k delete namespace "$name" --wait=false
  k label namespace "$name" mirrord-e2e=true "$@" >/dev/null
  printf -v "$var" '%s' "$name"
}

# pod_yaml NAME [LABEL=VALUE...]: a minimal Pod manifest.
pod_yaml() {
  local name="$1" l labels=""
  shift
  for l in "$@"; do labels+="    ${l%%=*}: \"${l#*=}\""$'\n'; done
  cat <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $name
  labels:
    app: $name
${labels}spec:
  containers:
  - name: app
    image: $TEST_IMAGE
    command: ["sleep", "3600"]
    env:
    - name: GREETING
      value: hello
YAML
}

# create_pod NS NAME [LABEL=VALUE...]: creates the pod and prints kubectl's output (admission warnings included).
create_pod() {
  local ns="$1"
  shift
  pod_yaml "$@" | k -n "$ns" create -f - 2>&1
}

# deployment_yaml NAME REPLICAS
deployment_yaml() {
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $1
spec:
  replicas: $2
  selector:
    matchLabels: {app: $1}
  template:
    metadata:
      labels: {app: $1}
    spec:
      containers:
      - name: app
        image: $TEST_IMAGE
        command: ["sleep", "3600"]
YAML
}

# Pod names matching SELECTOR in NS, one a line.
pods_of() { k -n "$1" get pods -l "$2" -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'; }

# wait_pods NS SELECTOR COUNT: waits until exactly COUNT pods match (the controllers create them).
wait_pods() {
  wait_for "$3 pods matching $2 in $1" 60 _count_pods "$1" "$2" "$3"
}
_count_pods() {
  local n
  n="$(pods_of "$1" "$2" | grep -c . || true)"
  echo "$n pods"
  [[ "$n" == "$3" ]]
}

# Is the agent in the pod (containers or initContainers) and the status annotation set? Prints what it saw.
pod_injection() {
  k -n "$1" get pod "$2" -o json | python3 -c '
import json, sys
p = json.load(sys.stdin)
spec = p["spec"]
names = [c["name"] for c in spec.get("containers", [])] + [c["name"] for c in spec.get("initContainers", [])]
status = (p["metadata"].get("annotations") or {}).get(sys.argv[1])
print("containers=%s status_annotation=%s" % (names, "set" if status else "absent"))
sys.exit(0 if (sys.argv[2] in names and status) else 3 if (sys.argv[2] not in names and not status) else 4)
' "$STATUS_ANNOTATION" "$AGENT"
}

assert_injected() {
  local out rc=0
  out="$(pod_injection "$1" "$2")" || rc=$?
  ((rc == 0)) || fail "pod $1/$2 is not injected: $out"
  log "ok: $1/$2 injected ($out)"
}

assert_not_injected() {
  local out rc=0
  out="$(pod_injection "$1" "$2")" || rc=$?
  ((rc == 3)) || fail "pod $1/$2 should carry no agent and no status annotation: $out"
  log "ok: $1/$2 not injected"
}

# The agent container of a pod as JSON.
agent_container() {
  k -n "$1" get pod "$2" -o json | python3 -c '
import json, sys
spec = json.load(sys.stdin)["spec"]
for c in spec.get("initContainers", []) + spec.get("containers", []):
    if c["name"] == sys.argv[1]:
        print(json.dumps(c)); sys.exit(0)
sys.exit("no agent container")
' "$AGENT"
}

# metric_value NAME LABELS: the value of one sample on /metrics (LABELS exactly as rendered, e.g.
# 'namespace="x"'; empty for none). Prints nothing when absent.
metric_value() {
  op_metrics | python3 -c '
import sys
name, labels = sys.argv[1], sys.argv[2]
want = f"{name}{{{labels}}}" if labels else name
for line in sys.stdin:
    if line.startswith("#"):
        continue
    parts = line.rsplit(" ", 1)
    if len(parts) == 2 and parts[0] == want:
        print(parts[1].strip()); break
' "$1" "$2"
}

# metric_sum NAME: the sum of a metric over all its label sets (0 when absent).
metric_sum() {
  op_metrics | python3 -c '
import re, sys
name = sys.argv[1]
total = 0.0
for line in sys.stdin:
    m = re.match(r"^" + re.escape(name) + r"(\{[^}]*\})? (\S+)", line)
    if m:
        total += float(m.group(2))
print(int(total) if total.is_integer() else total)
' "$1"
}

# The server's minor version (e.g. 20), digits only (some distributions append "+").
server_minor() {
  k version -o json | python3 -c 'import json,re,sys; print(re.match(r"\d+", json.load(sys.stdin)["serverVersion"]["minor"]).group())'
}

# ---- pods that really run (our node, or a real cluster) ----------------------------------------------

# Do pods run here? (our node, or a real cluster). Without a node (MIRRORD_E2E_WEBHOOK=host) they stay Pending.
node_runs_pods() { [[ "$E2E_MODE" == cluster || "${E2E_WEBHOOK:-}" == pod ]]; }
# Is the node on this host, so that tests may look inside pods from the host (netns, processes)?
node_is_local() { [[ "$E2E_MODE" == local && "${E2E_WEBHOOK:-}" == pod ]]; }

# app_deployment_yaml NAME REPLICAS: the test app (an HTTP server on 8080 that answers /cgi-bin/hello with
# "hello from <pod>, GREETING=<its env>"), Ready once it answers.
app_deployment_yaml() {
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $1
spec:
  replicas: $2
  selector:
    matchLabels: {app: $1}
  template:
    metadata:
      labels: {app: $1}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: app
        image: $TEST_IMAGE
        command: ["/bin/httpd", "-f", "-p", "8080", "-h", "/www"]
        env:
        - {name: GREETING, value: hello-e2e}
        ports:
        - {name: http, containerPort: 8080}
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
YAML
}

# container_state NS POD CONTAINER: running | waiting:<reason> | terminated:<reason> | absent
container_state() {
  k -n "$1" get pod "$2" -o json | python3 -c '
import json, sys
p = json.load(sys.stdin)
for c in p["status"].get("containerStatuses", []) + p["status"].get("initContainerStatuses", []):
    if c["name"] == sys.argv[1]:
        st = c.get("state", {})
        for k in ("running", "waiting", "terminated"):
            if k in st:
                print(k if k == "running" else "%s:%s" % (k, st[k].get("reason", "")))
                sys.exit(0)
print("absent")' "$3"
}

# container_restarts NS POD CONTAINER
container_restarts() {
  k -n "$1" get pod "$2" -o jsonpath="{.status.containerStatuses[?(@.name==\"$3\")].restartCount}"
}

# node_container_pid NS POD CONTAINER: host PID of the container's process (local node only).
node_container_pid() {
  local id
  id="$(k -n "$1" get pod "$2" -o jsonpath="{.status.containerStatuses[?(@.name==\"$3\")].containerID}")"
  id="${id#containerd://}"
  [[ -n "$id" ]] || return 1
  ctr -a "$E2E_DIR/node/run/containerd.sock" -n k8s.io tasks ls | awk -v id="$id" '$1 == id && $3 == "RUNNING" { print $2 }' | grep .
}

# pod_nat_rules NS POD: the nat table inside the pod's network namespace, read from the host (local node).
pod_nat_rules() {
  local pid
  pid="$(node_container_pid "$1" "$2" app)" || return 1
  nsenter -t "$pid" -n iptables-save -t nat
}

# http_get URL: the body, with a short timeout (curl from the host to a pod IP on the node's bridge).
http_get() { curl -sS --max-time 5 "$1"; }
