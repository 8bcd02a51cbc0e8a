# shellcheck shell=bash
# Sessions through the real aggregator with real injected pods (issue 12): `mirrord-operator probe`
# runs the mirrord CLI's sequence (user certificate from the credentials API, the WebSocket upgrade
# through kube-apiserver, x-session-id, version) as impersonated users bound to
# mirrord-operator-user, against a Deployment whose pods carry the injected agent registered with
# the in-cluster coordinator. Each probe prints JSON lines; the assertions read them.

SESS_GROUP="operator.metalbear.co"
SESS_APP=demo-app

_sess_ready() {
  if ! node_runs_pods; then
    log "skipped: sessions need pods and the in-cluster coordinator (no node in host mode)"
    exit 0
  fi
  node_is_local || { log "skipped: the test sends requests to pod IPs from the host (local node only)"; exit 0; }
  wait_for "APIService v1.$SESS_GROUP Available" 120 _sess_apiservice_available
}

_sess_apiservice_available() {
  local s
  s="$(k get apiservice "v1.$SESS_GROUP" -o jsonpath='{range .status.conditions[?(@.type=="Available")]}{.status}{end}')"
  echo "Available: ${s:-none}"
  [[ "$s" == True ]]
}

_sess_bind_user() {
  k create clusterrolebinding "e2e-sess-$1" --clusterrole mirrord-operator-user --user "$1" >/dev/null
  defer k delete clusterrolebinding "e2e-sess-$1"
}

# _sess_probe NS USER ARGS...: the probe as USER against the app's Deployment, or $SESS_TARGET (JSON lines on
# stdout).
_sess_probe() {
  local ns="$1" user="$2"
  shift 2
  "$OPERATOR_BIN" probe --as "$user" --client-name "$user" -n "$ns" --target "${SESS_TARGET:-deployment/$SESS_APP}" "$@"
}

# _sess_bg VAR NS USER ARGS...: the probe in the background, output in $E2E_DIR/probe-USER.out; VAR = pid.
_sess_bg() {
  local var="$1" ns="$2" user="$3" pid
  shift 3
  _sess_probe "$ns" "$user" "$@" >"$E2E_DIR/probe-$user.out" 2>"$E2E_DIR/probe-$user.err" &
  pid=$!
  defer kill_pid "$pid"
  printf -v "$var" '%s' "$pid"
}

# _sess_event FILE EVENT [PY-CONDITION]: is there a JSON line with that event (and condition on `e`)?
_sess_event() {
  python3 -c '
import json, sys
cond = sys.argv[3] if len(sys.argv) > 3 else "True"
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("event") == sys.argv[2] and eval(cond):
        print(line.strip()); sys.exit(0)
sys.exit(1)
' "$@"
}

_sess_wait_event() { # FILE EVENT COND SECONDS
  wait_for "$2 in $(basename "$1")" "$4" _sess_event "$1" "$2" "$3"
}

_sess_ip() { k -n "$1" get pod "$2" -o jsonpath='{.status.podIP}'; }

# _sess_curl IP [HEADER]: the app's port on a pod IP.
_sess_curl() {
  if [[ -n "${2:-}" ]]; then
    curl -sS --max-time 5 -H "$2" "http://$1:8080/cgi-bin/hello"
  else
    curl -sS --max-time 5 "http://$1:8080/cgi-bin/hello"
  fi
}

_sess_stolen() { # IP HEADER BODY
  local out
  out="$(_sess_curl "$1" "$2" 2>&1)"
  echo "$1 -> $out"
  [[ "$out" == "$3" ]]
}

_sess_app() { # IP HEADER
  local out
  out="$(_sess_curl "$1" "${2:-}" 2>&1)"
  echo "$1 -> $out"
  [[ "$out" == "hello from "* ]]
}

_sess_restarted() { # NS POD
  local n
  n="$(container_restarts "$1" "$2" "$AGENT")"
  echo "restarts: ${n:-none}"
  [[ "${n:-0}" -ge 1 ]]
}

_sess_targets_available() { # NS COUNT-of-pods-with-agents
  local n
  n="$(k -n "$1" get targets -o json | python3 -c '
import json, sys
print(sum(1 for i in json.load(sys.stdin)["items"] if i["metadata"]["name"].startswith("pod.") and i.get("status", {}).get("available") is True))
')"
  echo "$n pod targets available"
  [[ "$n" == "$2" ]]
}

test_sessions_through_the_aggregator() {
  local ns ips pods alice bob alice_id bob_id out rc ip i primary new_pod victim agent_pid
  _sess_ready
  new_ns ns sess "$INJECT_LABEL=enabled"
  _sess_bind_user e2e-alice
  _sess_bind_user e2e-bob
  # (_webhook_injects_ca: 50-coordinator.sh) agents created before the webhook knows the
  # coordinator's CA could never connect.
  wait_for "the webhook to give agents the coordinator's CA" 60 _webhook_injects_ca "$ns"
  app_deployment_yaml "$SESS_APP" 2 | k -n "$ns" create -f - >/dev/null
  k -n "$ns" rollout status "deploy/$SESS_APP" --timeout 120s >&2 || fail "the app did not become available"
  wait_for "both agents registered" 90 _sess_targets_available "$ns" 2 || fail "the agents did not register"
  mapfile -t pods < <(pods_of "$ns" "app=$SESS_APP" | sort)
  ips=()
  for i in "${pods[@]}"; do ips+=("$(_sess_ip "$ns" "$i")"); done
  primary="${pods[0]}"
  log "pods: ${pods[*]} (${ips[*]}); primary $primary"

  # Env, a file, DNS and an outgoing connection, all from the primary pod.
  out="$(_sess_probe "$ns" e2e-alice --env --read-file /var/run/secrets/kubernetes.io/serviceaccount/namespace --dns localhost \
    --connect "${ips[1]}:8080" --send $'GET /cgi-bin/hello HTTP/1.0\r\n\r\n')" ||
    fail "the probe failed: $out"
  echo "$out"
  printf '%s\n' "$out" >"$E2E_DIR/probe-basic.out"
  _sess_event "$E2E_DIR/probe-basic.out" version >/dev/null || fail "no version negotiated"
  _sess_event "$E2E_DIR/probe-basic.out" env 'e.get("vars", {}).get("GREETING") == "hello-e2e"' >/dev/null ||
    fail "env lacks GREETING=hello-e2e"
  # The agent serves the pod's volumes (fs mode "volumes"): the service account volume names the namespace.
  _sess_event "$E2E_DIR/probe-basic.out" file "e.get(\"content\") == \"$ns\"" >/dev/null ||
    fail "the pod's service account volume does not name $ns"
  _sess_event "$E2E_DIR/probe-basic.out" dns '"127.0.0.1" in e.get("addresses", [])' >/dev/null ||
    fail "localhost did not resolve to 127.0.0.1"
  _sess_event "$E2E_DIR/probe-basic.out" outgoing "\"hello from ${pods[1]}\" in e.get(\"reply\", \"\")" >/dev/null ||
    fail "the outgoing connection to ${ips[1]} did not reach ${pods[1]}'s app"
  log "ok: env, file, DNS and outgoing through the aggregator"

  # Alice steals x-user: alice on both pods; others still reach the app.
  _sess_bg alice "$ns" e2e-alice --steal 8080 --header-filter '^x-user: alice$' --answer "stolen by alice" --hold 240
  _sess_wait_event "$E2E_DIR/probe-e2e-alice.out" subscribed True 30 || fail "alice's steal: $(cat "$E2E_DIR/probe-e2e-alice.out" "$E2E_DIR/probe-e2e-alice.err")"
  alice_id="$(_sess_event "$E2E_DIR/probe-e2e-alice.out" connected | python3 -c 'import json,sys; print(json.load(sys.stdin)["session_id"])')"
  for ip in "${ips[@]}"; do
    wait_for "alice's request to $ip stolen" 20 _sess_stolen "$ip" "x-user: alice" "stolen by alice" ||
      fail "a request to $ip with x-user: alice did not reach alice"
    _sess_app "$ip" "x-user: carol" >/dev/null || fail "an unmatched request to $ip did not reach the app"
    _sess_app "$ip" >/dev/null || fail "a request without the header to $ip did not reach the app"
  done
  log "ok: alice ($alice_id) receives matching requests from both pods, others reach the app"

  # Bob: an overlapping filter is refused naming alice's session; a disjoint one works.
  rc=0
  out="$(_sess_probe "$ns" e2e-bob --steal 8080 --header-filter 'x-user: ali')" || rc=$?
  echo "$out"
  ((rc == 2)) || fail "an overlapping steal: exit $rc, expected 2 (refused)"
  printf '%s\n' "$out" >"$E2E_DIR/probe-overlap.out"
  _sess_event "$E2E_DIR/probe-overlap.out" refused >/dev/null || fail "no refused event"
  _sess_event "$E2E_DIR/probe-overlap.out" log "\"$alice_id\" in e[\"message\"] and \"alice\" in e[\"message\"]" >/dev/null ||
    fail "the refusal does not name alice's session $alice_id"
  _sess_bg bob "$ns" e2e-bob --steal 8080 --header-filter '^x-user: bob$' --answer "stolen by bob" --hold 240
  _sess_wait_event "$E2E_DIR/probe-e2e-bob.out" subscribed True 30 || fail "bob's disjoint steal was not accepted"
  bob_id="$(_sess_event "$E2E_DIR/probe-e2e-bob.out" connected | python3 -c 'import json,sys; print(json.load(sys.stdin)["session_id"])')"
  for ip in "${ips[@]}"; do
    wait_for "bob's request to $ip stolen" 20 _sess_stolen "$ip" "x-user: bob" "stolen by bob" || fail "bob's request to $ip"
  done
  _sess_event "$E2E_DIR/probe-e2e-alice.out" request '"bob" in json.dumps(e["headers"])' >/dev/null &&
    fail "alice received bob's request"
  log "ok: overlapping filter refused naming $alice_id, disjoint bob ($bob_id) gets only his requests"

  out="$(k -n "$ns" get sessions)"
  echo "$out"
  grep -qi "$alice_id" <<<"$out" || fail "kubectl get sessions does not list alice's $alice_id"
  grep -qi "$bob_id" <<<"$out" || fail "kubectl get sessions does not list bob's $bob_id"

  # Scale 2 -> 3 during the sessions: the new pod's agent joins alice's session.
  k -n "$ns" scale "deploy/$SESS_APP" --replicas 3 >/dev/null
  k -n "$ns" rollout status "deploy/$SESS_APP" --timeout 120s >&2 || fail "scaling to 3 did not finish"
  wait_for "three agents registered" 90 _sess_targets_available "$ns" 3 || fail "the new pod's agent did not register"
  new_pod="$(pods_of "$ns" "app=$SESS_APP" | grep -vxF -e "${pods[0]}" -e "${pods[1]}" | head -1)"
  ip="$(_sess_ip "$ns" "$new_pod")"
  wait_for "alice's request to the new pod $new_pod stolen" 30 _sess_stolen "$ip" "x-user: alice" "stolen by alice" ||
    fail "the new pod $new_pod ($ip) did not join alice's session"
  _sess_app "$ip" >/dev/null || fail "the new pod's app does not get unmatched requests"
  log "ok: the new pod $new_pod joined the running session"

  # Kill one pod's agent from the host: the session goes on with the other pods.
  victim="${pods[1]}"
  agent_pid="$(node_container_pid "$ns" "$victim" "$AGENT")" || fail "no agent process in $victim"
  kill -KILL "$agent_pid"
  log "killed the agent of $victim (pid $agent_pid)"
  kill -0 "$alice" 2>/dev/null || fail "alice's probe ended when one agent died: $(tail -5 "$E2E_DIR/probe-e2e-alice.out")"
  for ip in "${ips[0]}" "$(_sess_ip "$ns" "$new_pod")"; do
    wait_for "alice still stolen on $ip" 20 _sess_stolen "$ip" "x-user: alice" "stolen by alice" ||
      fail "alice's session stopped on $ip after another pod's agent died"
  done
  # The restarted agent (kubelet) registers again and the session takes the pod back.
  wait_for "alice stolen on $victim again after its agent restarted" 90 _sess_stolen "${ips[1]}" "x-user: alice" "stolen by alice" ||
    fail "$victim did not rejoin the session after its agent restarted"
  wait_for "the agent of $victim restarted" 30 _sess_restarted "$ns" "$victim" || fail "the agent of $victim was not restarted: the kill did not happen"
  log "ok: the session survived the agent of $victim being killed, and got it back"

  # Kill alice's session through the sessions API: the probe ends with the reason, the app gets its traffic.
  # As the cluster admin (a team lead with mirrord-operator-admin could do the same).
  k -n "$ns" delete sessions "$alice_id" >&2 || fail "kubectl delete sessions $alice_id failed"
  rc=0
  for i in $(seq 1 100); do kill -0 "$alice" 2>/dev/null || break; sleep 0.1; done
  wait "$alice" || rc=$?
  ((rc == 3)) || fail "alice's probe exit $rc after the kill, expected 3: $(tail -3 "$E2E_DIR/probe-e2e-alice.out")"
  _sess_event "$E2E_DIR/probe-e2e-alice.out" closed '"killed" in e["reason"]' || fail "no closed event with the kill's reason"
  for ip in "${ips[@]}"; do
    wait_for "$ip answers alice's requests from the app again" 20 _sess_app "$ip" "x-user: alice" ||
      fail "the app on $ip did not get alice's traffic back"
  done
  kill -0 "$bob" 2>/dev/null || fail "bob's probe ended with alice's kill: $(tail -3 "$E2E_DIR/probe-e2e-bob.out")"
  _sess_stolen "${ips[0]}" "x-user: bob" "stolen by bob" || fail "bob's session was harmed by alice's kill"
  out="$(k -n "$ns" get sessions)"
  grep -qi "$alice_id" <<<"$out" && fail "alice's session is still listed: $out"
  log "ok: kill through the sessions API ended alice's probe; apps get her traffic back; bob goes on"
}

# Targetless (`mirrord exec` without a target): the coordinator serves the session itself; outgoing
# connections and DNS leave from its pod (on our node: the node's network, which reaches pod IPs).
test_sessions_targetless() {
  local ns pod ip out rc=0
  _sess_ready
  new_ns ns sess-tl
  _sess_bind_user e2e-tina
  app_deployment_yaml "$SESS_APP" 1 | k -n "$ns" create -f - >/dev/null
  k -n "$ns" rollout status "deploy/$SESS_APP" --timeout 120s >&2 || fail "the app did not become available"
  pod="$(pods_of "$ns" "app=$SESS_APP" | head -1)"
  ip="$(_sess_ip "$ns" "$pod")"
  out="$("$OPERATOR_BIN" probe --as e2e-tina -n "$ns" --target targetless --env --dns localhost \
    --connect "$ip:8080" --send $'GET /cgi-bin/hello HTTP/1.0\r\n\r\n')" || fail "the targetless probe failed: $out"
  echo "$out"
  printf '%s\n' "$out" >"$E2E_DIR/probe-tl.out"
  _sess_event "$E2E_DIR/probe-tl.out" env 'e.get("vars") == {}' >/dev/null || fail "a targetless session has an environment"
  _sess_event "$E2E_DIR/probe-tl.out" dns '"127.0.0.1" in e.get("addresses", [])' >/dev/null || fail "targetless DNS failed"
  _sess_event "$E2E_DIR/probe-tl.out" outgoing "\"hello from $pod\" in e.get(\"reply\", \"\")" >/dev/null ||
    fail "the targetless outgoing connection did not reach $pod"
  # Nothing to steal from: the session ends with the reason instead of hanging.
  out="$("$OPERATOR_BIN" probe --as e2e-tina -n "$ns" --target targetless --steal 8080 --header-filter x --hold 5)" || rc=$?
  echo "$out"
  ((rc == 3)) || fail "a targetless steal: exit $rc, expected 3 (closed with a reason)"
  grep -q 'not available' <<<"$out" || fail "a targetless steal ended without the reason: $out"
  log "ok: targetless env (empty), DNS, outgoing to $pod; steal refused with a reason"
}
