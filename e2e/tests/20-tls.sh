# shellcheck shell=bash
# Self-managed TLS: the webhook fills caBundle itself, and rotates its serving certificate without a
# restart while pods keep being injected.

# PEM of the CA bundle in the webhook configuration (entry INDEX).
_ca_bundle() { k get mutatingwebhookconfiguration "$OP_MWC" -o jsonpath="{.webhooks[$1].clientConfig.caBundle}" | base64 -d; }

# SHA-256 fingerprint of the certificate the webhook serves (local mode: on the host or in a pod of our node).
_served_fingerprint() {
  openssl s_client -connect "$(op_webhook_addr)" </dev/null 2>/dev/null |
    openssl x509 -noout -fingerprint -sha256 | cut -d= -f2
}

_secret_cert() { k -n "$OP_NS" get secret "$OP_TLS_SECRET" -o jsonpath='{.data.tls\.crt}'; }

test_self_managed_tls_fills_ca_bundle() {
  local ca0 ca1 ns
  # The chart renders no caBundle (Helm must not fight the webhook over it); the webhook set it.
  if "$HELM" get manifest "$OP_RELEASE" -n "$OP_NS" | grep -Eq '^[[:space:]]*caBundle:'; then fail "the chart rendered a caBundle"; fi
  ca0="$(_ca_bundle 0)"
  ca1="$(_ca_bundle 1)"
  [[ "$ca0" == *"BEGIN CERTIFICATE"* ]] || fail "webhook entry 0 has no caBundle: '$ca0'"
  [[ "$ca0" == "$ca1" ]] || fail "the two webhook entries carry different caBundles"
  k -n "$OP_NS" get secret "$OP_TLS_SECRET" >/dev/null || fail "no TLS Secret $OP_NS/$OP_TLS_SECRET"
  # The caBundle field is owned by the webhook's server-side apply field manager.
  k get mutatingwebhookconfiguration "$OP_MWC" -o json --show-managed-fields | python3 -c '
import json, sys
mf = json.load(sys.stdin)["metadata"].get("managedFields", [])
owners = [m["manager"] for m in mf if "caBundle" in json.dumps(m.get("fieldsV1", {}))]
print("caBundle managers:", owners)
sys.exit(0 if owners == ["mirrord-operator"] else 1)' >&2 || fail "caBundle is not owned (only) by field manager mirrord-operator"
  if [[ "$E2E_MODE" == local ]]; then
    # The served chain verifies against caBundle for the address the apiserver calls.
    _ca_bundle 0 >"$E2E_DIR/ca-bundle.pem"
    # shellcheck disable=SC2046 # the verify arguments are words
    openssl s_client -connect "$(op_webhook_addr)" -CAfile "$E2E_DIR/ca-bundle.pem" -verify_return_error \
      $(op_webhook_verify_args) </dev/null >"$E2E_DIR/s_client.log" 2>&1 || fail "served certificate does not verify: $(tail -5 "$E2E_DIR/s_client.log")"
    log "ok: served certificate verifies against caBundle ($(op_webhook_verify_args))"
  fi
  new_ns ns tls "$INJECT_LABEL=enabled"
  create_pod "$ns" app >/dev/null
  assert_injected "$ns" app
}

# A 30 s certificate is rotated (after 2/3 of its life) without restarting the webhook; both the Secret
# and the served certificate change, and the apiserver still trusts the webhook afterwards.
test_certificate_rotation() {
  local ns secret0 served0 secret1 served1 instance
  defer e2e_restore_base
  op_webhook_stop
  # Start from no Secret, so the webhook issues a certificate with the short validity.
  k -n "$OP_NS" delete secret "$OP_TLS_SECRET" --ignore-not-found >/dev/null
  op_helm upgrade "${OP_BASE_VALUES[@]}" --set tls.certValidity=30s --set tls.checkInterval=1s
  local started=$SECONDS
  instance="$(op_webhook_instance)"
  secret0="$(_secret_cert)"
  [[ -n "$secret0" ]] || fail "no certificate in Secret $OP_TLS_SECRET after start"
  [[ "$E2E_MODE" == local ]] && served0="$(_served_fingerprint)" && log "served certificate: $served0"
  new_ns ns rotate "$INJECT_LABEL=enabled"
  create_pod "$ns" before >/dev/null
  assert_injected "$ns" before
  wait_for "the Secret's certificate to be rotated" 60 _changed _secret_cert "$secret0"
  secret1="$(_secret_cert)"
  # Not a speed check but a lower bound that a slow machine only makes easier: a certificate is replaced
  # after 2/3 of its 30 s life (20 s; 5 s slack for the start), not at every check.
  ((SECONDS - started >= 15)) || fail "rotated $((SECONDS - started))s after start; expected after 2/3 of 30s"
  if [[ "$E2E_MODE" == local ]]; then
    wait_for "the served certificate to change" 30 _changed _served_fingerprint "$served0"
    served1="$(_served_fingerprint)"
    log "served certificate after rotation: $served1"
    if [[ "$(op_webhook_instance)" != "$instance" ]]; then
      op_last_termination >&2
      fail "the webhook restarted ($instance is now $(op_webhook_instance)); rotation must be in-process"
    fi
    _ca_bundle 0 >"$E2E_DIR/ca-bundle.pem"
    # shellcheck disable=SC2046 # the verify arguments are words
    openssl s_client -connect "$(op_webhook_addr)" -CAfile "$E2E_DIR/ca-bundle.pem" -verify_return_error \
      $(op_webhook_verify_args) </dev/null >"$E2E_DIR/s_client.log" 2>&1 || fail "rotated certificate does not verify against caBundle"
  fi
  [[ "$secret1" != "$secret0" ]] || fail "Secret unchanged"
  create_pod "$ns" after >/dev/null
  assert_injected "$ns" after
  local reloads
  reloads="$(metric_sum mirrord_operator_tls_reloads_total)"
  ((reloads >= 1)) || fail "mirrord_operator_tls_reloads_total is $reloads after a rotation"
}

# The CA is rotated in stages while pods keep being created with failurePolicy=Fail: the next CA is in
# caBundle before it signs anything, so the apiserver trusts the webhook throughout and no pod is rejected.
# A 12 s certificate makes a 120 s CA: the next one is staged after 60 s and promoted after 80 s.
test_ca_rotation_is_staged() {
  local ns ca0 next started n=0
  defer e2e_restore_base
  op_webhook_stop
  k -n "$OP_NS" delete secret "$OP_TLS_SECRET" --ignore-not-found >/dev/null
  op_helm upgrade "${OP_BASE_VALUES[@]}" --set tls.certValidity=12s --set tls.checkInterval=1s \
    --set webhook.failurePolicy=Fail
  started=$SECONDS
  ca0="$(_secret_pem ca.crt)"
  [[ "$ca0" == *"BEGIN CERTIFICATE"* ]] || fail "no CA in Secret $OP_TLS_SECRET after start"
  new_ns ns carotate "$INJECT_LABEL=enabled"
  # One pod, quietly: dozens are created.
  _inject_one() {
    local out
    n=$((n + 1))
    out="$(create_pod "$ns" "p$n")" || fail "pod p$n was rejected: $out"
    out="$(pod_injection "$ns" "p$n")" || fail "pod p$n is not injected: $out"
  }
  until next="$(_secret_pem ca-next.crt)" && [[ -n "$next" ]]; do
    ((SECONDS - started < 180)) || fail "no next CA staged within 180s"
    _inject_one
  done
  log "next CA staged after $((SECONDS - started))s ($n pods so far)"
  [[ "$(_secret_pem ca.crt)" == "$ca0" ]] || fail "the CA changed when the next one was staged"
  wait_for "caBundle to hold the current and the next CA" 30 _ca_bundle_has "$ca0" "$next"
  [[ "$E2E_MODE" == local ]] && { _served_verifies "$ca0" || fail "while staged, the served certificate is not from the current CA"; }
  until [[ "$(_secret_pem ca.crt)" == "$next" ]]; do
    ((SECONDS - started < 300)) || fail "the next CA was not promoted within 300s"
    _inject_one
  done
  log "next CA promoted after $((SECONDS - started))s ($n pods so far)"
  [[ "$(_secret_pem ca-previous.crt)" == "$ca0" ]] || fail "the old CA is not kept as ca-previous.crt"
  [[ -z "$(_secret_pem ca-next.crt)" ]] || fail "a next CA is still staged right after the promotion"
  _ca_bundle_has "$ca0" "$next" || fail "caBundle no longer holds both CAs after the promotion"
  if [[ "$E2E_MODE" == local ]]; then
    wait_for "the served certificate to come from the new CA" 30 _served_verifies "$next"
    ! _served_verifies "$ca0" || fail "the served certificate still verifies against the old CA alone"
  fi
  local i
  for i in 1 2 3; do _inject_one; done
  log "ok: $n pods created and injected across the CA rotation"
}

# PEM of the Secret's KEY (empty when absent).
_secret_pem() {
  local key="${1//./\\.}"
  k -n "$OP_NS" get secret "$OP_TLS_SECRET" -o jsonpath="{.data.$key}" | base64 -d
}

# _ca_bundle_has PEM...: both entries of the caBundle contain every PEM.
_ca_bundle_has() {
  local i bundle pem
  for i in 0 1; do
    bundle="$(_ca_bundle "$i")"
    for pem in "$@"; do [[ "$bundle" == *"$pem"* ]] || { echo "entry $i lacks a CA"; return 1; }; done
  done
}

# _served_verifies PEM: the certificate the webhook serves verifies against PEM alone (local mode).
_served_verifies() {
  printf '%s\n' "$1" >"$E2E_DIR/only-ca.pem"
  # shellcheck disable=SC2046 # the verify arguments are words
  openssl s_client -connect "$(op_webhook_addr)" -CAfile "$E2E_DIR/only-ca.pem" -verify_return_error \
    $(op_webhook_verify_args) </dev/null >"$E2E_DIR/s_client.log" 2>&1
}

# _changed CMD... OLD: succeeds once CMD prints something non-empty other than OLD.
_changed() {
  local old="${*: -1}" now
  now="$("${@:1:$#-1}")"
  echo "now: ${now:0:60}"
  [[ -n "$now" && "$now" != "$old" ]]
}
