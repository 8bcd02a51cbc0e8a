# shellcheck shell=bash
# Injected pods really run (a kubelet, containerd and runc: our node, or a real cluster): the agent beside
# the app, started with what the webhook rendered and the kubelet resolved, its redirect rules inside the
# pod's network namespace only while a session subscribes, and an app that keeps serving whatever happens
# to the agent.

# The app's answer through the pod's IP (from the host on our node; through the apiserver's pod proxy on
# a real cluster, which dials the same IP).
_app_answer() {
  local ns="$1" pod="$2" ip
  if node_is_local; then
    ip="$(k -n "$ns" get pod "$pod" -o jsonpath='{.status.podIP}')"
    http_get "http://$ip:8080/cgi-bin/hello"
  else
    k get --raw "/api/v1/namespaces/$ns/pods/$pod:8080/proxy/cgi-bin/hello"
  fi
}

_answers_app() {
  local out
  out="$(_app_answer "$1" "$2" 2>&1)"
  echo "$out"
  [[ "$out" == "hello from $2, GREETING=hello-e2e"* ]]
}

_chains() { pod_nat_rules "$1" "$2" | grep -c -- '-j MRD' || true; }
_has_chains() { local n; n="$(_chains "$@")"; echo "$n jumps to the agent's chains"; ((n > 0)); }
_no_chains() { local n; n="$(_chains "$@")"; echo "$n jumps to the agent's chains"; ((n == 0)); }

# A labelled Deployment's pod runs with the agent beside the app; the agent logs the downward-API values
# the real kubelet resolved; the app answers through the pod IP.
test_injected_pods_run() {
  node_runs_pods || { log "skipped: pods do not run without a node (MIRRORD_E2E_WEBHOOK=host)"; return 0; }
  local ns pod uid ip node logs
  new_ns ns run "$INJECT_LABEL=enabled"
  app_deployment_yaml web 1 | k -n "$ns" create -f - >/dev/null
  k -n "$ns" rollout status deploy/web --timeout 120s >&2 ||
    fail "the Deployment did not become available: $(k -n "$ns" describe pods | tail -30)"
  pod="$(pods_of "$ns" app=web)"
  assert_injected "$ns" "$pod"
  [[ "$(container_state "$ns" "$pod" app)" == running ]] || fail "app is $(container_state "$ns" "$pod" app)"
  [[ "$(container_state "$ns" "$pod" "$AGENT")" == running ]] || fail "$AGENT is $(container_state "$ns" "$pod" "$AGENT")"
  log "ok: $ns/$pod runs app and $AGENT"

  uid="$(k -n "$ns" get pod "$pod" -o jsonpath='{.metadata.uid}')"
  ip="$(k -n "$ns" get pod "$pod" -o jsonpath='{.status.podIP}')"
  node="$(k -n "$ns" get pod "$pod" -o jsonpath='{.spec.nodeName}')"
  wait_for "the agent's start line" 30 _agent_started "$ns" "$pod" || fail "no 'agent starting' line in the agent's log"
  logs="$(k -n "$ns" logs "$pod" -c "$AGENT")"
  local want
  for want in "pod=$pod" "namespace=$ns" "uid=$uid" "ip=Some($ip)" "node=$node" "target=app"; do
    grep 'agent starting' <<<"$logs" | grep -qF -- "$want" || fail "the agent's start line lacks $want: $(grep 'agent starting' <<<"$logs")"
  done
  log "ok: the agent started with the kubelet-resolved pod=$pod uid=$uid ip=$ip node=$node"

  wait_for "the app through the pod IP" 30 _answers_app "$ns" "$pod" || fail "the app does not answer through its pod IP"
  log "ok: $(_app_answer "$ns" "$pod")"
}

_agent_started() { k -n "$1" logs "$2" -c "$AGENT" 2>&1 | grep 'agent starting'; }

# The agent's redirect chains exist in the pod's network namespace exactly while a session subscribes to
# the app's port (the session comes in on the agent's --listen development port through kubectl
# port-forward, speaking mirrord-protocol bytes from the golden vectors), never in the host's; SIGTERM
# removes them; the app answers throughout.
test_agent_redirect_chains_follow_subscriptions() {
  node_is_local || { log "skipped: needs the local node (reads the pod's netns from the host)"; return 0; }
  local ns pod=listen host_rules local_port pf_pid client_pid agent_pid
  new_ns ns chains "$INJECT_LABEL=enabled"
  # The pod exactly as the webhook injects it (server-side dry run), plus the agent's --listen port.
  _listen_pod_json "$ns" "$pod" | k -n "$ns" create -f - >/dev/null
  k -n "$ns" wait --for=condition=Ready "pod/$pod" --timeout 90s >&2 || fail "pod $pod not Ready: $(k -n "$ns" describe pod "$pod" | tail -20)"
  [[ "$(container_state "$ns" "$pod" "$AGENT")" == running ]] || fail "$AGENT is $(container_state "$ns" "$pod" "$AGENT")"
  _no_chains "$ns" "$pod" >/dev/null || fail "redirect chains before any subscription: $(pod_nat_rules "$ns" "$pod")"
  host_rules="$(iptables-save -t nat | grep -c MRD || true)"

  local_port="$(free_port)"
  "$KUBECTL" -n "$ns" port-forward "pod/$pod" "$local_port:7777" >"$E2E_DIR/logs/port-forward.log" 2>&1 &
  pf_pid=$!
  defer kill_pid "$pf_pid"
  wait_for "port-forward to the agent's --listen port" 30 grep -q Forwarding "$E2E_DIR/logs/port-forward.log" || fail "port-forward: $(cat "$E2E_DIR/logs/port-forward.log")"
  python3 -u - "$REPO_ROOT/tests/data/mirrord-protocol-vectors.jsonl" "$local_port" >"$E2E_DIR/logs/subscriber.log" 2>&1 <<'PY' &
import json, socket, sys
vectors = {d["name"]: d["hex"] for d in map(json.loads, open(sys.argv[1]))}
s = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=10)
s.sendall(bytes.fromhex(vectors["client_mirror_port_subscribe_high_port"]))  # PortSubscribe(8080)
print("subscribed", flush=True)
s.settimeout(None)
while True:
    data = s.recv(65536)
    if not data:
        break
    print("daemon sent", data.hex()[:80], flush=True)
PY
  client_pid=$!
  defer kill_pid "$client_pid"
  wait_for "the agent's chains in the pod's netns" 30 _has_chains "$ns" "$pod" ||
    fail "no redirect chains while subscribed: $(pod_nat_rules "$ns" "$pod"); client: $(cat "$E2E_DIR/logs/subscriber.log")"
  log "ok: redirect chains in the pod's netns while subscribed: $(pod_nat_rules "$ns" "$pod" | grep -- '-j MRD' | head -3 | tr '\n' ' ')"
  [[ "$(iptables-save -t nat | grep -c MRD || true)" == "$host_rules" ]] || fail "the agent's rules appeared in the host's iptables"
  wait_for "the app through the pod IP while subscribed" 30 _answers_app "$ns" "$pod" || fail "the app stopped answering while subscribed"

  agent_pid="$(node_container_pid "$ns" "$pod" "$AGENT")" || fail "no agent process"
  kill -TERM "$agent_pid"
  wait_for "the chains to be removed after SIGTERM" 30 _no_chains "$ns" "$pod" || fail "chains left after SIGTERM: $(pod_nat_rules "$ns" "$pod")"
  wait_for "the agent to be restarted" 60 _restarted "$ns" "$pod" 1 || fail "the agent was not restarted"
  k -n "$ns" logs "$pod" -c "$AGENT" --previous 2>&1 | grep -q 'SIGTERM: shutting down' ||
    fail "the agent did not take its SIGTERM path: $(k -n "$ns" logs "$pod" -c "$AGENT" --previous 2>&1 | tail -5)"
  log "ok: SIGTERM removed the chains"
  wait_for "the app through the pod IP after the agent's exit" 30 _answers_app "$ns" "$pod" || fail "the app does not answer after the agent's exit"
}

_restarted() {
  local n
  n="$(container_restarts "$1" "$2" "$AGENT")"
  echo "restarts=$n state=$(container_state "$1" "$2" "$AGENT")"
  ((${n:-0} >= $3)) && [[ "$(container_state "$1" "$2" "$AGENT")" == running ]]
}

# The pod the webhook would create from the test app (server-side dry run through the real admission
# chain), with MIRRORD_AGENT_LISTEN added to the agent; it carries the status annotation, so the webhook
# leaves it as it is.
_listen_pod_json() {
  cat <<YAML | k -n "$1" create --dry-run=server -o json -f - | python3 -c '
import json, sys
p = json.load(sys.stdin)
for key in ("uid", "resourceVersion", "creationTimestamp", "managedFields", "selfLink"):
    p["metadata"].pop(key, None)
p.pop("status", None)
agent = [c for c in p["spec"]["containers"] + p["spec"].get("initContainers", []) if c["name"] == "mirrord-agent"]
if not agent:
    sys.exit("the dry run did not inject the agent")
agent[0].setdefault("env", []).append({"name": "MIRRORD_AGENT_LISTEN", "value": "127.0.0.1:7777"})
print(json.dumps(p))'
apiVersion: v1
kind: Pod
metadata:
  name: $2
  labels: {app: $2}
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

# SIGKILL of the agent (no cleanup path at all) leaves the app serving, and the kubelet restarts only the
# agent.
test_app_survives_killed_agent() {
  node_is_local || { log "skipped: needs the local node (kills the agent from the host)"; return 0; }
  local ns pod agent_pid
  new_ns ns kill "$INJECT_LABEL=enabled"
  app_deployment_yaml web 1 | k -n "$ns" create -f - >/dev/null
  k -n "$ns" rollout status deploy/web --timeout 120s >&2 || fail "the Deployment did not become available"
  pod="$(pods_of "$ns" app=web)"
  wait_for "the app through the pod IP" 30 _answers_app "$ns" "$pod" || fail "the app does not answer"
  agent_pid="$(node_container_pid "$ns" "$pod" "$AGENT")" || fail "no agent process"
  kill -KILL "$agent_pid"
  _answers_app "$ns" "$pod" >/dev/null || fail "the app stopped answering right after the agent was killed"
  wait_for "the agent to be restarted" 60 _restarted "$ns" "$pod" 1 || fail "the agent was not restarted"
  _answers_app "$ns" "$pod" >/dev/null || fail "the app does not answer after the agent's restart"
  [[ "$(container_restarts "$ns" "$pod" app)" == 0 ]] || fail "the app container restarted"
  log "ok: the app kept serving while its agent was killed and restarted"
}
