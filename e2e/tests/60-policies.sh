# shellcheck shell=bash
# Policies and profiles (docs/policies.md): the CRDs the chart installs on the real kube-apiserver
# accept mirrord's manifests unchanged, reject malformed ones at apply, and print their columns; the
# mirrord-operator-user role may read profiles. (Enforcement with a session client is not here yet:
# tests/coordinator_policies.rs covers it with a real agent.)

# _apply_fails NAME YAML: kubectl apply of YAML must be refused by the schema.
_apply_fails() {
  local out
  if out="$(k apply -f - <<<"$2" 2>&1)"; then
    fail "malformed $1 was accepted: $out"
  fi
  log "ok: malformed $1 refused: $(tail -n1 <<<"$out")"
}

test_policies_crds_accept_and_reject() {
  local ns out
  new_ns ns policies
  k apply -f - >/dev/null <<YAML || fail "a valid MirrordPolicy was refused"
apiVersion: policies.mirrord.metalbear.co/v1alpha
kind: MirrordPolicy
metadata: {name: filters-only, namespace: $ns}
spec:
  targetPath: "deploy/payments*"
  selector: {matchLabels: {team: payments}}
  block: [steal-without-filter, mirror]
  env: {exclude: [DATABASE_PASSWORD, "*_TOKEN"]}
  fs: {readOnly: ["^/etc/"], local: ["\\\\.env$"], notFound: ["^/var/run/secrets/"]}
  network:
    incoming: {httpFilter: {headerFilter: "^x-mirrord-user: .+"}}
    outgoing:
      block:
        - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
        - hostname: "^db\\\\.prod\\\\."
          ports: [{protocol: TCP, port: 5432}]
  requireProfile: true
  profileAllowlist: [read-only]
YAML
  defer k -n "$ns" delete mirrordpolicy filters-only --wait=false
  k apply -f - >/dev/null <<'YAML' || fail "a valid MirrordClusterPolicy was refused"
apiVersion: policies.mirrord.metalbear.co/v1alpha
kind: MirrordClusterPolicy
metadata: {name: e2e-no-steal}
spec:
  block: [steal, copy-target-scale-down]
  appliesToCopyTargets: true
YAML
  defer k delete mirrordclusterpolicy e2e-no-steal --wait=false
  k apply -f - >/dev/null <<YAML || fail "valid profiles were refused"
apiVersion: profiles.mirrord.metalbear.co/v1alpha
kind: MirrordClusterProfile
metadata: {name: e2e-read-only}
spec:
  featureAdjustments: [{change: incoming-mirror}, {change: outgoing-off}]
---
apiVersion: profiles.mirrord.metalbear.co/v1alpha
kind: MirrordProfile
metadata: {name: mirror-only, namespace: $ns}
spec:
  featureAdjustments: [{change: incoming-mirror}]
YAML
  defer k delete mirrordclusterprofile e2e-read-only --wait=false

  out="$(k -n "$ns" get mpol)"
  if ! grep -q 'TARGET-PATH' <<<"$out" || ! grep -q 'deploy/payments\*' <<<"$out"; then
    fail "printer columns missing: $out"
  fi
  k get mcpol e2e-no-steal >/dev/null || fail "short name mcpol unknown"
  k -n "$ns" get mprof mirror-only >/dev/null || fail "short name mprof unknown"
  log "ok: valid policies and profiles applied; columns: $(head -n1 <<<"$out")"

  _apply_fails "block value" "$(printf 'apiVersion: policies.mirrord.metalbear.co/v1alpha\nkind: MirrordPolicy\nmetadata: {name: bad1, namespace: %s}\nspec: {block: [exfiltrate]}\n' "$ns")"
  _apply_fails "missing block" "$(printf 'apiVersion: policies.mirrord.metalbear.co/v1alpha\nkind: MirrordPolicy\nmetadata: {name: bad2, namespace: %s}\nspec: {targetPath: deploy/x}\n' "$ns")"
  _apply_fails "port" "$(printf 'apiVersion: policies.mirrord.metalbear.co/v1alpha\nkind: MirrordClusterPolicy\nmetadata: {name: e2e-bad3}\nspec: {block: [], network: {outgoing: {block: [{ports: [{protocol: TCP, port: 70000}]}]}}}\n')"
  _apply_fails "protocol" "$(printf 'apiVersion: policies.mirrord.metalbear.co/v1alpha\nkind: MirrordClusterPolicy\nmetadata: {name: e2e-bad4}\nspec: {block: [], network: {outgoing: {block: [{ports: [{protocol: SCTP, port: 1}]}]}}}\n')"
  _apply_fails "profile change" "$(printf 'apiVersion: profiles.mirrord.metalbear.co/v1alpha\nkind: MirrordClusterProfile\nmetadata: {name: e2e-bad5}\nspec: {featureAdjustments: [{change: teleport}]}\n')"
}

test_policies_users_read_profiles() {
  local user=e2e-profile-reader
  k create clusterrolebinding "$user" --clusterrole mirrord-operator-user --user "$user" >/dev/null 2>&1 ||
    { log "skipped: no mirrord-operator-user role (coordinator not installed)"; return 0; }
  defer k delete clusterrolebinding "$user"
  [[ "$(k auth can-i get mirrordclusterprofiles.profiles.mirrord.metalbear.co --as "$user")" == yes ]] ||
    fail "$user may not get cluster profiles"
  [[ "$(k auth can-i list mirrordprofiles.profiles.mirrord.metalbear.co -n default --as "$user")" == yes ]] ||
    fail "$user may not list profiles"
  [[ "$(k auth can-i create mirrordclusterpolicies.policies.mirrord.metalbear.co --as "$user" || true)" == no ]] ||
    fail "$user may create policies"
  log "ok: $user reads profiles, cannot create policies"
}
