# shellcheck shell=bash
# Selection (injection.md): which pods the real apiserver sends to the webhook, and what comes back.

# A Deployment's pods, created by the real ReplicaSet controller, come out injected.
test_deployment_pods_injected() {
  local ns pod
  new_ns ns deploy "$INJECT_LABEL=enabled"
  deployment_yaml web 2 | k -n "$ns" create -f - >/dev/null
  wait_pods "$ns" app=web 2
  for pod in $(pods_of "$ns" app=web); do
    [[ "$(k -n "$ns" get pod "$pod" -o jsonpath='{.metadata.ownerReferences[0].kind}')" == ReplicaSet ]] ||
      fail "$pod was not created by a ReplicaSet"
    assert_injected "$ns" "$pod"
  done
}

# A Job's pod (created by the Job controller) is injected as a native sidecar where the server has them
# (1.29+), and skipped otherwise: a regular sidecar never exits, so the Job would never complete. Where
# pods run, the Job completes either way.
test_job_completes() {
  local ns pod
  new_ns ns job "$INJECT_LABEL=enabled"
  k -n "$ns" create job once --image "$TEST_IMAGE" -- sh -c 'echo done' >/dev/null
  wait_pods "$ns" job-name=once 1
  pod="$(pods_of "$ns" job-name=once)"
  if (($(server_minor) >= 29)); then
    assert_injected "$ns" "$pod"
  else
    assert_not_injected "$ns" "$pod"
    local skips
    skips="$(metric_value mirrord_operator_admission_skips_total 'reason="job-without-native-sidecar"')"
    ((${skips:-0} >= 1)) || fail "the skip is not counted as job-without-native-sidecar (got '${skips}')"
  fi
  if node_runs_pods; then
    k -n "$ns" wait --for=condition=complete job/once --timeout=90s >&2 ||
      fail "the Job did not complete: $(k -n "$ns" get pods -o wide 2>&1)"
    log "ok: the Job completed"
  fi
}

test_unlabelled_namespace_not_injected() {
  local ns
  new_ns ns plain
  create_pod "$ns" app >/dev/null
  assert_not_injected "$ns" app
}

test_opt_out_label_in_enabled_namespace() {
  local ns
  new_ns ns optout "$INJECT_LABEL=enabled"
  create_pod "$ns" out "$POD_INJECT_LABEL=false" >/dev/null
  assert_not_injected "$ns" out
  create_pod "$ns" in >/dev/null
  assert_injected "$ns" in
}

test_opt_in_label_in_unlabelled_namespace() {
  local ns
  new_ns ns optin
  create_pod "$ns" in "$POD_INJECT_LABEL=true" >/dev/null
  assert_injected "$ns" in
  create_pod "$ns" plain >/dev/null
  assert_not_injected "$ns" plain
}

# The namespace label "disabled" refuses even pods that opt in.
test_disabled_namespace_refuses_opt_in() {
  local ns
  new_ns ns disabled "$INJECT_LABEL=disabled"
  create_pod "$ns" in "$POD_INJECT_LABEL=true" >/dev/null
  assert_not_injected "$ns" in
}

# kube-system is never injected, even when labelled: 1.20 sets no kubernetes.io/metadata.name label, so
# the selectors' NotIn does not stop the request; the webhook's in-process check must.
test_kube_system_never_injected() {
  local name out
  name="e2e-ks-$(python3 -c 'import secrets; print(secrets.token_hex(3))')"
  k label namespace kube-system "$INJECT_LABEL=enabled" >/dev/null
  defer k label namespace kube-system "$INJECT_LABEL-"
  defer k -n kube-system delete pod "$name" --wait=false
  out="$(create_pod kube-system "$name" "$POD_INJECT_LABEL=true")"
  assert_not_injected kube-system "$name"
  log "kubectl said: $out"
  if (($(server_minor) < 21)); then
    # The selector could not stop the request, so the webhook saw it and must say why it skipped.
    [[ "$out" == *"namespace is excluded"* ]] || fail "no admission warning naming the exclusion: $out"
  fi
  # The operator's own namespace neither.
  defer k -n "$OP_NS" delete pod "$name" --wait=false
  create_pod "$OP_NS" "$name" "$POD_INJECT_LABEL=true" >/dev/null
  assert_not_injected "$OP_NS" "$name"
}

# A server-side dry run is mutated (sideEffects None lets the apiserver call the webhook) and leaves nothing.
test_dry_run_server_is_mutated() {
  local ns out names before after
  new_ns ns dryrun "$INJECT_LABEL=enabled"
  before="$(metric_value mirrord_operator_admission_requests_total 'result="injected"')"
  out="$(pod_yaml ghost | k -n "$ns" create --dry-run=server -o json -f -)"
  names="$(python3 -c 'import json,sys; s=json.load(sys.stdin)["spec"]; print(" ".join(c["name"] for c in s.get("initContainers",[])+s["containers"]))' <<<"$out")"
  [[ " $names " == *" $AGENT "* ]] || fail "dry-run answer has no agent: containers $names"
  log "ok: dry-run answer has containers: $names"
  if k -n "$ns" get pod ghost >/dev/null 2>&1; then fail "dry-run created the pod"; fi
  [[ -z "$(k -n "$ns" get pods -o name)" ]] || fail "pods appeared in $ns: $(k -n "$ns" get pods -o name)"
  [[ -z "$(k -n "$ns" get events -o name)" ]] || fail "events appeared in $ns: $(k -n "$ns" get events -o name)"
  after="$(metric_value mirrord_operator_admission_requests_total 'result="injected"')"
  [[ "$((${after:-0} - ${before:-0}))" == 1 ]] || fail "injected counter went from ${before:-0} to ${after:-0}, expected +1"
}
