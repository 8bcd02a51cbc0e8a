# shellcheck shell=bash
# Policies and profiles (docs/policies.md): the CRDs the chart installs on the real kube-apiserver
# accept mirrord's manifests unchanged, reject malformed ones at apply, and print their columns; the
# mirrord-operator-user role may read profiles. Enforcement through the real aggregator with real
# injected pods, with `mirrord-operator probe` as the session client (helpers of 55-sessions.sh): a
# steal without a filter and an outgoing connection refused naming the policy, and Secret-backed env
# (`secretKeyRef`, `envFrom`) kept for a user who may `get` the Secret and left out, with the reason,
# for one who may not.

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

POL_APP=pol-app

# _pol_probe NS USER ARGS...: the probe as USER against the policy test's Deployment.
_pol_probe() {
  local ns="$1" user="$2"
  shift 2
  "$OPERATOR_BIN" probe --as "$user" --client-name "$user" -n "$ns" --target "deployment/$POL_APP" "$@"
}

# _pol_steal_refused NS: an unfiltered steal is refused (exit 2) naming the policy filters-only.
_pol_steal_refused() {
  local rc=0 out
  out="$(_pol_probe "$1" e2e-pol-alice --steal 8080 --unfiltered)" || rc=$?
  printf '%s\n' "$out" >"$E2E_DIR/pol-steal.out"
  echo "exit $rc: $(tail -n2 <<<"$out")"
  ((rc == 2)) && _sess_event "$E2E_DIR/pol-steal.out" refused \
    '"ForbiddenWithReason" in e["error"] and "filters-only" in e["error"] and "steal-without-filter" in e["error"]' >/dev/null
}

# _pol_connect_refused NS IP: an outgoing connection to IP:8080 is refused naming the policy no-self.
_pol_connect_refused() {
  local out
  out="$(_pol_probe "$1" e2e-pol-alice --connect "$2:8080" --send ping)" || return 1
  printf '%s\n' "$out" >"$E2E_DIR/pol-connect.out"
  tail -n2 <<<"$out"
  _sess_event "$E2E_DIR/pol-connect.out" outgoing \
    '"ForbiddenWithReason" in e.get("error", "") and "no-self" in e["error"] and "network.outgoing.block" in e["error"]' >/dev/null
}

test_policies_enforced_through_the_aggregator() {
  local ns pod ip out rc
  _sess_ready
  new_ns ns pol "$INJECT_LABEL=enabled"
  _sess_bind_user e2e-pol-alice
  _sess_bind_user e2e-pol-bob
  wait_for "the webhook to give agents the coordinator's CA" 60 _webhook_injects_ca "$ns"
  # The app reads a Secret two ways; only alice may get it.
  k -n "$ns" create secret generic db-creds --from-literal=api=k-123 --from-literal=PASSWORD=hunter2 >/dev/null
  k -n "$ns" create role pol-read-db --verb get --resource secrets --resource-name db-creds >/dev/null
  k -n "$ns" create rolebinding pol-read-db --role pol-read-db --user e2e-pol-alice >/dev/null
  app_deployment_yaml "$POL_APP" 1 | sed 's/^        - {name: GREETING, value: hello-e2e}$/&\
        - {name: API_KEY, valueFrom: {secretKeyRef: {name: db-creds, key: api}}}\
        envFrom:\
        - {secretRef: {name: db-creds}, prefix: DB_}/' | k -n "$ns" create -f - >/dev/null
  k -n "$ns" rollout status "deploy/$POL_APP" --timeout 120s >&2 || fail "the app did not become available"
  wait_for "the agent registered" 90 _sess_targets_available "$ns" 1 || fail "the agent did not register"
  pod="$(pods_of "$ns" "app=$POL_APP" | head -1)"
  ip="$(_sess_ip "$ns" "$pod")"

  # Secret-backed env: alice may get db-creds, bob may not.
  out="$(_pol_probe "$ns" e2e-pol-alice --env)" || fail "alice's env probe failed: $out"
  printf '%s\n' "$out" >"$E2E_DIR/pol-env-alice.out"
  _sess_event "$E2E_DIR/pol-env-alice.out" env \
    'e["vars"].get("API_KEY") == "k-123" and e["vars"].get("DB_PASSWORD") == "hunter2" and e["vars"].get("GREETING") == "hello-e2e"' >/dev/null ||
    fail "alice does not see the Secret's values: $out"
  out="$(_pol_probe "$ns" e2e-pol-bob --env)" || fail "bob's env probe failed: $out"
  echo "$out"
  printf '%s\n' "$out" >"$E2E_DIR/pol-env-bob.out"
  _sess_event "$E2E_DIR/pol-env-bob.out" env \
    '"API_KEY" not in e["vars"] and "DB_PASSWORD" not in e["vars"] and e["vars"].get("GREETING") == "hello-e2e"' >/dev/null ||
    fail "bob sees the Secret's values (or lost GREETING): $out"
  _sess_event "$E2E_DIR/pol-env-bob.out" log \
    "\"API_KEY\" in e[\"message\"] and \"DB_PASSWORD\" in e[\"message\"] and \"e2e-pol-bob may not get Secret $ns/db-creds\" in e[\"message\"]" >/dev/null ||
    fail "bob was not told why the variables are missing: $out"
  log "ok: the Secret's variables reach alice and are left out for bob, who is told why"

  # Without a policy an unfiltered steal is accepted.
  rc=0
  out="$(_pol_probe "$ns" e2e-pol-alice --steal 8080 --unfiltered)" || rc=$?
  ((rc == 0)) || fail "an unfiltered steal without a policy: exit $rc: $out"
  k apply -f - >/dev/null <<YAML || fail "the policies were refused"
apiVersion: policies.mirrord.metalbear.co/v1alpha
kind: MirrordPolicy
metadata: {name: filters-only, namespace: $ns}
spec:
  targetPath: "deploy/$POL_APP*"
  block: [steal-without-filter]
---
apiVersion: policies.mirrord.metalbear.co/v1alpha
kind: MirrordPolicy
metadata: {name: no-self, namespace: $ns}
spec:
  block: []
  network:
    outgoing:
      block:
        - ipBlock: {cidr: $ip/32}
          ports: [{protocol: TCP, port: 8080}]
YAML
  wait_for "an unfiltered steal refused by filters-only" 30 _pol_steal_refused "$ns" ||
    fail "the unfiltered steal was not refused naming the policy: $(cat "$E2E_DIR/pol-steal.out")"
  out="$(_pol_probe "$ns" e2e-pol-alice --steal 8080 --header-filter '^x-user: alice$')" || fail "a filtered steal was refused: $out"
  _sess_event <(printf '%s\n' "$out") subscribed True >/dev/null || fail "a filtered steal was not subscribed: $out"
  log "ok: a steal without a filter refused naming MirrordPolicy $ns/filters-only; a filtered one accepted"

  wait_for "an outgoing connection to $ip:8080 refused by no-self" 30 _pol_connect_refused "$ns" "$ip" ||
    fail "the outgoing connection was not refused naming the policy: $(cat "$E2E_DIR/pol-connect.out")"
  log "ok: the outgoing connection to $ip:8080 refused naming MirrordPolicy $ns/no-self"
}
