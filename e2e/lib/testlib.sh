# shellcheck shell=bash
# What tests use: namespaces, pods, deferred cleanup, assertions. Sourced, never executed.
# Each test runs in its own subshell with `set -e`; a failing command or `fail` ends it.

INJECT_LABEL="mirrord-injection"
POD_INJECT_LABEL="mirrord.metalbear.co/inject"
AGENT="mirrord-agent"
STATUS_ANNOTATION="agent.mirrord.metalbear.co/status"
TEST_IMAGE="${MIRRORD_E2E_TEST_IMAGE:-busybox:1.36}"

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
