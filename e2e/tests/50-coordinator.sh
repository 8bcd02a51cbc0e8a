# shellcheck shell=bash
# The coordinator: the aggregated API operator.metalbear.co/v1 served in-cluster behind the real
# kube-apiserver (front-proxy authentication, SubjectAccessReview), and injected agents registering
# with it. The base install enables it wherever pods run (lib/setup.sh); on our node it runs in the
# node's network namespace so that agents reach it at the node's address.

COORD_GROUP="operator.metalbear.co"
COORD_APISERVICE="v1.$COORD_GROUP"
COORD_SVC="$OP_RELEASE-coordinator"

# Every test here needs the coordinator, which runs as a pod (none in host mode).
_coord_ready() {
  if ! node_runs_pods; then
    log "skipped: the coordinator runs as a pod (no node in host mode)"
    exit 0
  fi
  wait_for "APIService $COORD_APISERVICE Available" 120 _apiservice_available
}

_apiservice_available() {
  local s
  s="$(k get apiservice "$COORD_APISERVICE" -o jsonpath='{range .status.conditions[?(@.type=="Available")]}{.status} {.reason}: {.message}{end}')"
  echo "Available: ${s:-none}"
  [[ "$s" == True* ]]
}

# _bind_user USER: binds USER to mirrord-operator-user (removed when the test ends).
_bind_user() {
  k create clusterrolebinding "e2e-coord-$1" --clusterrole mirrord-operator-user --user "$1" >/dev/null
  defer k delete clusterrolebinding "e2e-coord-$1"
}

test_coordinator_apiservice_available() {
  _coord_ready
  k get apiservice "$COORD_APISERVICE" -o jsonpath='{.spec.service.namespace}/{.spec.service.name}' | grep -qx "$OP_NS/$COORD_SVC" ||
    fail "APIService does not point at $OP_NS/$COORD_SVC"
  [[ -n "$(k get apiservice "$COORD_APISERVICE" -o jsonpath='{.spec.caBundle}')" ]] || fail "APIService has no caBundle"
  log "ok: $COORD_APISERVICE Available, served by $OP_NS/$COORD_SVC"
}

test_coordinator_operator_object() {
  local yaml
  _coord_ready
  yaml="$(k get mirrordoperators operator -o yaml)" || fail "cannot get mirrordoperators/operator"
  echo "$yaml"
  k get mirrordoperators operator -o json | python3 -c '
import json, sys
o = json.load(sys.stdin)
assert o["kind"] == "MirrordOperator", o["kind"]
spec = o["spec"]
for key in ("operator_version", "protocol_version", "supported_features"):
    assert spec.get(key), "spec.%s missing or empty: %s" % (key, spec)
assert isinstance(spec["supported_features"], list), spec["supported_features"]
' || fail "mirrordoperators/operator lacks operator_version, protocol_version or supported_features"
}

test_coordinator_api_resources() {
  local out r
  _coord_ready
  out="$(k api-resources --api-group "$COORD_GROUP" -o name)"
  echo "$out"
  for r in mirrordoperators targets sessions mirrordclusteroperatorusercredentials; do
    grep -qx "$r.$COORD_GROUP" <<<"$out" || fail "kubectl api-resources does not list $r.$COORD_GROUP"
  done
}

test_coordinator_user_lists_targets_and_gets_credential() {
  local ns user=e2e-jane out
  _coord_ready
  new_ns ns coord-user
  _bind_user "$user"
  # Through the real front proxy: the apiserver authenticates the admin, impersonates jane and
  # forwards X-Remote-User: jane to the coordinator, which asks the apiserver (SubjectAccessReview).
  wait_for "$user may list targets" 30 k --as "$user" -n "$ns" get targets
  out="$(k --as "$user" -n "$ns" get targets -o json)"
  python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["items"] == [], d' <<<"$out" ||
    fail "an empty namespace has targets: $out"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$user" \
    -keyout "$E2E_DIR/$user.key" -out "$E2E_DIR/$user.csr" 2>/dev/null || fail "openssl req failed"
  defer rm -f "$E2E_DIR/$user.key" "$E2E_DIR/$user.csr" "$E2E_DIR/$user.json" "$E2E_DIR/$user.crt"
  python3 -c '
import json, sys
print(json.dumps({"apiVersion": "operator.metalbear.co/v1", "kind": "MirrordClusterOperatorUserCredential",
                  "metadata": {"generateName": "e2e-"}, "spec": {"csr": open(sys.argv[1]).read()}}))
' "$E2E_DIR/$user.csr" >"$E2E_DIR/$user.json"
  out="$(k --as "$user" create --raw "/apis/$COORD_GROUP/v1/mirrordclusteroperatorusercredentials" -f "$E2E_DIR/$user.json")" ||
    fail "creating a user credential failed: $out"
  python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["certificate"], end="")' <<<"$out" >"$E2E_DIR/$user.crt" ||
    fail "no status.certificate in $out"
  # The certificate is for the key we hold, and names the user the apiserver authenticated.
  [[ "$(openssl x509 -in "$E2E_DIR/$user.crt" -noout -pubkey)" == "$(openssl pkey -in "$E2E_DIR/$user.key" -pubout)" ]] ||
    fail "the issued certificate is not for our key"
  openssl x509 -in "$E2E_DIR/$user.crt" -noout -subject | grep -q "$user" ||
    fail "the issued certificate does not name $user"
  log "ok: $user lists targets and got a certificate"
}

test_coordinator_unbound_user_forbidden() {
  local ns out rc=0
  _coord_ready
  new_ns ns coord-nobody
  out="$(k --as e2e-nobody -n "$ns" get targets 2>&1)" || rc=$?
  echo "$out"
  ((rc != 0)) || fail "an unbound user listed targets"
  grep -q 'Forbidden' <<<"$out" || fail "no Forbidden for an unbound user: $out"
  grep -q 'e2e-nobody' <<<"$out" || fail "the message does not say who was refused: $out"
  out="$(k --as e2e-nobody get --raw "/apis/$COORD_GROUP/v1/namespaces/$ns/targets" 2>&1)" || true
  grep -q '403\|Forbidden' <<<"$out" || fail "raw request: expected 403, got: $out"
}

# Straight to the coordinator, without the apiserver's front-proxy client certificate: refused even
# with X-Remote-User set, so nobody can claim an identity by talking to the Service directly.
test_coordinator_refuses_requests_without_proxy_cert() {
  local addr code body
  _coord_ready
  node_is_local || { log "skipped: the coordinator's endpoint is reached from the host only on our node"; return 0; }
  addr="$(k -n "$OP_NS" get endpoints "$COORD_SVC" -o jsonpath='{.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}')"
  body="$(curl -sS -k --max-time 5 -H 'X-Remote-User: admin' -H 'X-Remote-Group: system:masters' \
    -o - -w '\n%{http_code}' "https://$addr/apis/$COORD_GROUP/v1/mirrordoperators/operator")" ||
    fail "cannot reach the coordinator at $addr"
  echo "$body"
  code="${body##*$'\n'}"
  [[ "$code" == 401 ]] || fail "expected 401 from $addr without the proxy certificate, got $code"
  grep -q '"kind":"Status"\|"kind": "Status"' <<<"$body" || fail "the 401 is not a metav1.Status: $body"
}

_target_available() {
  local out
  out="$(k -n "$1" get targets -o json)" || return 1
  python3 -c '
import json, sys
items = json.load(sys.stdin)["items"]
print(" ".join("%s=%s" % (i["metadata"]["name"], i.get("status", {}).get("available")) for i in items) or "no targets")
sys.exit(0 if any(sys.argv[1] in i["metadata"]["name"] and i.get("status", {}).get("available") is True for i in items) else 1)
' "$2" <<<"$out"
}

_target_unavailable() { ! _target_available "$@"; }

# _webhook_injects_ca NS: a server-side dry-run pod (the webhook mutates it, nothing is stored) gets the
# CA bundle of the coordinator's TLS Secret.
_webhook_injects_ca() {
  local ns="$1" want got
  want="$(k -n "$OP_NS" get secret "$COORD_SVC-tls" -o jsonpath='{.data.ca\.crt}' | base64 -d)" || return 1
  got="$(pod_yaml probe | k -n "$ns" create --dry-run=server -f - -o json | python3 -c '
import json, sys
for c in json.load(sys.stdin)["spec"]["containers"]:
    for e in c.get("env", []):
        if e["name"] == "MIRRORD_AGENT_COORDINATOR_CA":
            print(e.get("value", ""))
')"
  if [[ -n "$want" && "$got" == *"$want"* ]]; then echo "agent CA = the coordinator's CA"; return 0; fi
  echo "agent CA: ${got:0:60}... coordinator CA: ${want:0:60}..."
  return 1
}

test_coordinator_agents_register() {
  local ns pod
  _coord_ready
  new_ns ns coord-agents "$INJECT_LABEL=enabled"
  wait_for "the webhook to give agents the coordinator's CA" 60 _webhook_injects_ca "$ns"
  app_deployment_yaml demo-app 1 | k -n "$ns" create -f - >/dev/null
  wait_for "demo-app available" 120 k -n "$ns" rollout status deploy/demo-app --timeout 5s
  pod="$(pods_of "$ns" app=demo-app | head -1)"
  assert_injected "$ns" "$pod"
  if ! wait_for "target demo-app available (its agent connected)" 60 _target_available "$ns" demo-app; then
    k -n "$ns" logs "$pod" -c "$AGENT" --tail 30 >&2 || true
    fail "the agent of $pod did not register with the coordinator"
  fi
  k -n "$ns" get targets
  # Without its agent the target is not available: scale to 0, the agent's link goes.
  k -n "$ns" scale deploy/demo-app --replicas 0 >/dev/null
  wait_for "target demo-app gone or unavailable" 60 _target_unavailable "$ns" demo-app
}

# ---- CA rotation of the coordinator (self-managed) -----------------------------------------------------

COORD_TLS_SECRET="$COORD_SVC-tls"

# PEM of the coordinator's TLS Secret KEY (empty when absent).
_coord_pem() {
  local key="${1//./\\.}"
  k -n "$OP_NS" get secret "$COORD_TLS_SECRET" -o jsonpath="{.data.$key}" | base64 -d
}

_coord_has_ca() { [[ "$(_coord_pem ca.crt)" == *"BEGIN CERTIFICATE"* ]]; }

# _coord_bundle_has PEM...: the APIService's caBundle contains every PEM.
_coord_bundle_has() {
  local bundle pem
  bundle="$(k get apiservice "$COORD_APISERVICE" -o jsonpath='{.spec.caBundle}' | base64 -d)"
  for pem in "$@"; do [[ "$bundle" == *"$pem"* ]] || { echo "caBundle lacks a CA"; return 1; }; done
}

# _coord_served_verifies PEM: the certificate the coordinator serves verifies against PEM alone. Only
# where the host reaches the coordinator's endpoint (our node); elsewhere it succeeds without checking.
_coord_served_verifies() {
  local addr
  node_is_local || return 0
  addr="$(k -n "$OP_NS" get endpoints "$COORD_SVC" -o jsonpath='{.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}')"
  printf '%s\n' "$1" >"$E2E_DIR/coord-only-ca.pem"
  openssl s_client -connect "$addr" -CAfile "$E2E_DIR/coord-only-ca.pem" -verify_return_error \
    </dev/null >"$E2E_DIR/coord-s_client.log" 2>&1
}

# _coord_reinstall HELM-ARGS...: the coordinator restarted from no TLS Secret with these values, so that it
# issues a CA whose life follows tls.certValidity. Stopped first: the old pod would recreate the Secret.
_coord_reinstall() {
  k -n "$OP_NS" scale deploy "$COORD_SVC" --replicas 0 >/dev/null
  k -n "$OP_NS" wait --for=delete pod -l app.kubernetes.io/component=coordinator --timeout 60s >/dev/null 2>&1 || true
  k -n "$OP_NS" delete secret "$COORD_TLS_SECRET" --ignore-not-found >/dev/null
  op_helm upgrade "${OP_BASE_VALUES[@]}" "$@"
}

# The coordinator's CA is rotated in stages while requests keep going through the aggregator: the next
# CA is in the APIService's caBundle before it signs anything, so the APIService stays Available and no
# request fails. A 12 s certificate makes a 120 s CA: the next one is staged after 60 s, promoted after 80 s.
# Agents: an agent admitted before the rotation keeps its established link; one admitted afterwards gets
# the new bundle from the webhook and registers (docs/coordinator.md, "Certificates and agents").
test_coordinator_ca_rotation() {
  local ns ca0 next started n=0
  _coord_ready
  defer _coord_reinstall
  _coord_reinstall --set tls.certValidity=12s --set tls.checkInterval=1s
  started=$SECONDS
  wait_for "a new CA in Secret $COORD_TLS_SECRET" 60 _coord_has_ca
  ca0="$(_coord_pem ca.crt)"
  wait_for "the APIService's caBundle to hold the new CA" 60 _coord_bundle_has "$ca0"
  wait_for "APIService $COORD_APISERVICE Available with the new CA" 60 _apiservice_available
  wait_for "requests through the aggregator to succeed" 60 k get mirrordoperators operator -o name
  new_ns ns coord-carotate "$INJECT_LABEL=enabled"
  wait_for "the webhook to give agents the new CA" 30 _webhook_injects_ca "$ns"
  app_deployment_yaml early 1 | k -n "$ns" create -f - >/dev/null
  wait_for "early available" 120 k -n "$ns" rollout status deploy/early --timeout 5s
  wait_for "target early available (its agent connected)" 60 _target_available "$ns" early
  # One request through kube-apiserver's aggregator, and the APIService still Available.
  _coord_request() {
    local out
    n=$((n + 1))
    out="$(k get mirrordoperators operator -o name 2>&1)" || fail "request $n failed during the CA rotation: $out"
    out="$(_apiservice_available)" || fail "APIService not Available at request $n: $out"
  }
  until next="$(_coord_pem ca-next.crt)" && [[ -n "$next" ]]; do
    ((SECONDS - started < 180)) || fail "no next CA staged within 180s"
    _coord_request
  done
  log "next CA staged after $((SECONDS - started))s ($n requests so far)"
  [[ "$(_coord_pem ca.crt)" == "$ca0" ]] || fail "the CA changed when the next one was staged"
  wait_for "caBundle to hold the current and the next CA" 30 _coord_bundle_has "$ca0" "$next"
  _coord_served_verifies "$ca0" || fail "while staged, the served certificate is not from the current CA"
  until [[ "$(_coord_pem ca.crt)" == "$next" ]]; do
    ((SECONDS - started < 300)) || fail "the next CA was not promoted within 300s"
    _coord_request
  done
  log "next CA promoted after $((SECONDS - started))s ($n requests so far)"
  [[ "$(_coord_pem ca-previous.crt)" == "$ca0" ]] || fail "the old CA is not kept as ca-previous.crt"
  _coord_bundle_has "$ca0" "$next" || fail "caBundle no longer holds both CAs after the promotion"
  wait_for "the served certificate to come from the new CA" 30 _coord_served_verifies "$next"
  if node_is_local && _coord_served_verifies "$ca0"; then
    fail "the served certificate still verifies against the old CA alone"
  fi
  for _ in 1 2 3 4 5; do _coord_request; done
  log "ok: $n requests through the aggregator across the CA rotation, APIService Available throughout"
  _target_available "$ns" early || fail "the agent admitted before the rotation lost its link"
  app_deployment_yaml late 1 | k -n "$ns" create -f - >/dev/null
  wait_for "late available" 120 k -n "$ns" rollout status deploy/late --timeout 5s
  wait_for "target late available (an agent admitted after the rotation registers)" 60 _target_available "$ns" late
}
