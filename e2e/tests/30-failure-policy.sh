# shellcheck shell=bash
# The webhook is down: what the apiserver does (failurePolicy), and the audit that later reports the pods
# that slipped through un-injected.

# failurePolicy Ignore: pods are admitted without the agent. When the webhook comes back its audit reports
# them — at start and then periodically — by metric, log line and a NotInjected Event on the owner.
test_failure_policy_ignore_then_audit() {
  local ns late rs bare=stray
  defer e2e_restore_base
  # A long interval first: whatever is reported must come from the audit at start.
  op_helm upgrade "${OP_BASE_VALUES[@]}" --set webhook.failurePolicy=Ignore --set webhook.auditInterval=1h
  op_webhook_stop
  new_ns ns ignore "$INJECT_LABEL=enabled"
  deployment_yaml web 1 | k -n "$ns" create -f - >/dev/null
  wait_pods "$ns" app=web 1
  create_pod "$ns" "$bare" >/dev/null
  assert_not_injected "$ns" "$bare"
  assert_not_injected "$ns" "$(pods_of "$ns" app=web)"
  rs="$(k -n "$ns" get rs -l app=web -o jsonpath='{.items[0].metadata.name}')"

  op_webhook_start
  wait_for "uninjected_pods{namespace=$ns} = 2" 60 _metric_is mirrord_operator_uninjected_pods "namespace=\"$ns\"" 2
  wait_for "NotInjected Event on ReplicaSet $rs" 60 _event_on "$ns" ReplicaSet "$rs"
  wait_for "NotInjected Event on Pod $bare" 60 _event_on "$ns" Pod "$bare"
  wait_for "a log line naming $ns/$bare" 30 _log_mentions "$ns" "$bare"
  # Not reported: injected pods, and pods outside enabled namespaces.
  local ok
  new_ns ok fine "$INJECT_LABEL=enabled"
  create_pod "$ok" good >/dev/null
  assert_injected "$ok" good

  # Periodically: a namespace enabled after its pods were created is reported by a later audit run.
  op_helm upgrade "${OP_BASE_VALUES[@]}" --set webhook.failurePolicy=Ignore --set webhook.auditInterval=2s
  new_ns late late
  create_pod "$late" old >/dev/null
  assert_not_injected "$late" old
  sleep 3 # at least one audit run while the namespace is not enabled
  [[ -z "$(metric_value mirrord_operator_uninjected_pods "namespace=\"$late\"")" ||
    "$(metric_value mirrord_operator_uninjected_pods "namespace=\"$late\"")" == 0 ]] ||
    fail "pods of a namespace without injection were reported"
  k label namespace "$late" "$INJECT_LABEL=enabled" >/dev/null
  wait_for "uninjected_pods{namespace=$late} = 1 (periodic audit)" 60 _metric_is mirrord_operator_uninjected_pods "namespace=\"$late\"" 1
  wait_for "NotInjected Event on Pod $late/old" 60 _event_on "$late" Pod old
  local v
  v="$(metric_value mirrord_operator_uninjected_pods "namespace=\"$ok\"")"
  [[ -z "$v" || "$v" == 0 ]] || fail "namespace $ok with only injected pods reported $v uninjected pods"
}

# failurePolicy Fail: creation is refused in an enabled namespace while the webhook is down; namespaces
# the webhook does not select (kube-system, unlabelled ones) keep working.
test_failure_policy_fail_refuses() {
  local ns plain out name
  defer e2e_restore_base
  op_helm upgrade "${OP_BASE_VALUES[@]}" --set webhook.failurePolicy=Fail
  [[ "$(k get mutatingwebhookconfiguration "$OP_MWC" -o jsonpath='{.webhooks[*].failurePolicy}')" == "Fail Fail" ]] ||
    fail "failurePolicy not Fail in the configuration"
  new_ns ns fail "$INJECT_LABEL=enabled"
  new_ns plain failplain
  out="$(create_pod "$ns" up)" || fail "pod refused while the webhook is up: $out"
  assert_injected "$ns" up
  op_webhook_stop
  if out="$(create_pod "$ns" down)"; then
    fail "pod created in an enabled namespace while the webhook is down with failurePolicy Fail: $out"
  fi
  [[ "$out" == *webhook* ]] || fail "refusal does not name the webhook: $out"
  log "ok: refused: $out"
  name="e2e-fail-$(python3 -c 'import secrets; print(secrets.token_hex(3))')"
  defer k -n kube-system delete pod "$name" --wait=false
  create_pod kube-system "$name" >/dev/null || fail "kube-system pod refused while the webhook is down"
  create_pod "$plain" p >/dev/null || fail "pod in an unlabelled namespace refused while the webhook is down"
  log "ok: kube-system and unlabelled namespaces unaffected"
}

_metric_is() {
  local v
  v="$(metric_value "$1" "$2")"
  echo "$1{$2} = ${v:-<absent>}"
  [[ "$v" == "$3" ]]
}

# _event_on NS KIND NAME: a NotInjected Event about that object exists (core or events.k8s.io, both
# listed through core/v1 on every server version).
_event_on() {
  k -n "$1" get events -o json | python3 -c '
import json, sys
kind, name = sys.argv[1], sys.argv[2]
evs = json.load(sys.stdin)["items"]
seen = [(e.get("reason"), e["involvedObject"].get("kind"), e["involvedObject"].get("name")) for e in evs]
print("events:", seen)
sys.exit(0 if ("NotInjected", kind, name) in seen else 1)' "$2" "$3"
}

_log_mentions() {
  op_logs | grep -F "$1" | grep -F -q "$2"
}
