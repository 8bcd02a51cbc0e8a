# shellcheck shell=bash
# The Helm lifecycle: upgrade changes what new pods get; uninstall leaves nothing of the operator.

test_helm_upgrade_changes_new_pods() {
  local ns agent
  defer e2e_restore_base
  new_ns ns upgrade "$INJECT_LABEL=enabled"
  create_pod "$ns" old >/dev/null
  assert_injected "$ns" old
  op_helm upgrade "${OP_BASE_VALUES[@]}" --set agent.resources.requests.cpu=7m --set agent.resources.limits.memory=96Mi \
    --set agent.logLevel=debug
  create_pod "$ns" new >/dev/null
  assert_injected "$ns" new
  agent="$(agent_container "$ns" new)"
  python3 - "$agent" <<'PY' || fail "new pod's agent does not carry the upgraded settings: $agent"
import json, sys
c = json.loads(sys.argv[1])
res = c.get("resources", {})
assert res.get("requests", {}).get("cpu") == "7m", res
assert res.get("limits", {}).get("memory") == "96Mi", res
env = {e["name"]: e.get("value") for e in c.get("env", [])}
assert env.get("MIRRORD_AGENT_LOG_LEVEL") == "debug", env
PY
  # Pods admitted before the upgrade keep what they got.
  [[ "$(agent_container "$ns" old | python3 -c 'import json,sys; print(json.load(sys.stdin)["resources"]["requests"]["cpu"])')" != 7m ]] ||
    fail "the old pod changed"
  log "ok: new pod got cpu request 7m, memory limit 96Mi, log level debug"
}

test_helm_uninstall_leaves_nothing() {
  local ns
  defer e2e_restore_base
  op_uninstall
  wait_for "MutatingWebhookConfiguration $OP_MWC gone" 60 _gone mutatingwebhookconfiguration "$OP_MWC"
  # helm uninstall removes all it installed; the self-managed TLS Secret, created by the webhook at
  # runtime, is owned by the webhook configuration, so the garbage collector removes it too.
  wait_for "no operator objects left" 60 _operator_objects_are ""
  # With the operator gone, labelled namespaces get plain pods and nothing blocks them.
  new_ns ns after "$INJECT_LABEL=enabled"
  create_pod "$ns" app >/dev/null
  assert_not_injected "$ns" app
}

_gone() { ! k get "$1" "$2" >/dev/null 2>&1; }

# _operator_objects_are EXPECTED: what is left of the operator (release objects by label, any Secret in its
# namespace but the default ServiceAccount's token) is exactly EXPECTED (names, space-separated). The
# namespace itself stays (Helm never deletes namespaces).
_operator_objects_are() {
  local found
  found="$(
    k get clusterroles,clusterrolebindings,mutatingwebhookconfigurations,validatingwebhookconfigurations \
      -l app.kubernetes.io/instance="$OP_RELEASE" -o name
    k -n "$OP_NS" get deploy,rs,pods,svc,serviceaccounts,roles,rolebindings,configmaps,poddisruptionbudgets \
      -l app.kubernetes.io/instance="$OP_RELEASE" -o name
    k -n "$OP_NS" get secrets -o name | grep -v -e '^secret/default-token-' || true
  )"
  found="$(tr -s "\n" " " <<<"$found" | sed "s/^ *//; s/ *$//")"
  echo "left: ${found:-nothing}"
  [[ "$found" == "$1" ]]
}
