# shellcheck shell=bash
# Setting up and tearing down one e2e run (used by run.sh and demo.sh). Sourced, never executed.

# The values of the base install every test starts from (and returns to). Short audit interval so the
# audit test does not wait minutes; everything else at chart defaults.
OP_BASE_VALUES=()

# Chooses the mode, creates the state dir and, in local mode, builds (once) and starts the control plane
# and (unless MIRRORD_E2E_WEBHOOK=host) the node the operator runs on.
# Sets E2E_MODE, E2E_WEBHOOK, E2E_DIR, KUBECONFIG, KUBECTL, HELM, OPERATOR_BIN, TEST_IMAGE, and in host
# mode WH_PORT, WH_HEALTH_PORT.
e2e_setup_cluster() {
  local dir="${1:-}"
  if [[ -n "${KUBECONFIG:-}" ]]; then
    E2E_MODE=cluster
    E2E_WEBHOOK=pod
  else
    E2E_MODE=local
    E2E_WEBHOOK="${MIRRORD_E2E_WEBHOOK:-pod}"
    [[ "$E2E_WEBHOOK" == pod || "$E2E_WEBHOOK" == host ]] || die "MIRRORD_E2E_WEBHOOK must be pod or host, got '$E2E_WEBHOOK'"
  fi
  # Test pods use an image the node has (never pulled: nothing but loopback and the pod bridge is reached).
  if [[ -z "$TEST_IMAGE" ]]; then
    if [[ "$E2E_MODE" == local && "$E2E_WEBHOOK" == pod ]]; then TEST_IMAGE="$E2E_APP_IMAGE"; else TEST_IMAGE=busybox:1.36; fi
  fi
  export E2E_MODE E2E_WEBHOOK TEST_IMAGE
  # The coordinator (aggregated API) runs wherever pods run: the apiserver reaches it through its
  # Service's endpoint, which cannot be a loopback address (no coordinator in host mode).
  if [[ "$E2E_WEBHOOK" == pod ]]; then
    OP_BASE_VALUES+=(--set coordinator.enabled=true)
  fi
  # Our node has no kube-proxy: agents reach the coordinator in the node's network namespace, at the
  # node's bridge address, on free ports ("Reaching Services from pods" in e2e/README.md).
  if [[ "$E2E_MODE" == local && "$E2E_WEBHOOK" == pod ]]; then
    local cport chport
    cport="$(free_port)"
    chport="$(free_port)"
    OP_BASE_VALUES+=(--set coordinator.hostNetwork=true --set "coordinator.port=$cport"
      --set "coordinator.healthPort=$chport" --set "coordinator.url=wss://$NODE_IP:$cport"
      --set "coordinator.tlsExtraSans={$NODE_IP}")
  fi
  op_ensure_tools
  if [[ -z "$dir" ]]; then
    [[ "$E2E_MODE" == local ]] && cp_reap_stale
    dir="$(mktemp -d "${TMPDIR:-/tmp}/mirrord-e2e.XXXXXX")"
  fi
  E2E_DIR="$dir"
  export E2E_DIR
  mkdir -p "$E2E_DIR/logs"
  echo "$$" >"$E2E_DIR/owner"
  touch "$E2E_DIR/pids"
  if [[ "$E2E_MODE" == cluster ]]; then
    log "using the cluster in KUBECONFIG=$KUBECONFIG ($(k config current-context 2>/dev/null || echo '?'))"
    k get --raw /version >/dev/null || die "cannot reach the cluster named by KUBECONFIG"
    return
  fi
  cp_ensure_deps
  cp_ensure_binaries
  if [[ -z "${MIRRORD_OPERATOR_BIN:-}" ]]; then
    # Debug binaries: the ones `cargo test` builds anyway, so CI compiles nothing extra for the image.
    log "cargo build (mirrord-operator, mirrord-agent)"
    (cd "$REPO_ROOT" && cargo build --quiet --bin mirrord-operator --bin mirrord-agent) || die "cargo build failed"
    OPERATOR_BIN="$REPO_ROOT/target/debug/mirrord-operator"
  else
    # mirrord-agent is taken from the same directory.
    OPERATOR_BIN="$MIRRORD_OPERATOR_BIN"
  fi
  [[ -x "$OPERATOR_BIN" ]] || die "no webhook binary at $OPERATOR_BIN"
  export OPERATOR_BIN
  if [[ "$E2E_WEBHOOK" == pod ]]; then
    node_prepare "$E2E_DIR"
    node_images "$E2E_DIR" || die "building the images failed"
    cp_start "$E2E_DIR" || return 1
    node_start "$E2E_DIR" || return 1
  else
    cp_start "$E2E_DIR" || return 1
    WH_PORT="$(free_port)"
    WH_HEALTH_PORT="$(free_port)"
    export WH_PORT WH_HEALTH_PORT
  fi
}

e2e_install_operator() {
  if op_installed; then
    die "release $OP_RELEASE already exists in namespace $OP_NS of this cluster; uninstall it first"
  fi
  op_helm install "${OP_BASE_VALUES[@]}"
}

# Back to the base install after a failed test (which may have stopped the webhook, uninstalled, ...).
e2e_restore_base() {
  if op_installed; then
    op_helm upgrade "${OP_BASE_VALUES[@]}"
  else
    op_helm install "${OP_BASE_VALUES[@]}"
  fi
}

# Idempotent; safe from a trap at any point of setup.
e2e_teardown() {
  [[ -n "${E2E_DIR:-}" && -d "$E2E_DIR" ]] || return 0
  log "tearing down"
  if [[ "${E2E_MODE:-}" == cluster ]]; then
    # Leave the cluster as found: our release, our namespaces, our label on kube-system.
    op_uninstall 2>/dev/null || true
    k delete namespace -l mirrord-e2e=true --wait=false >/dev/null 2>&1 || true
    k label namespace kube-system "$INJECT_LABEL-" >/dev/null 2>&1 || true
  fi
  local rc=0
  node_stop "$E2E_DIR"
  cp_stop "$E2E_DIR"
  if [[ -d "$E2E_DIR/node" ]] && ! node_leftovers "$E2E_DIR" >&2; then
    log "ERROR: the node left the above behind"
    rc=1
  fi
  if [[ -n "${MIRRORD_E2E_ARTIFACTS:-}" ]]; then
    { mkdir -p "$MIRRORD_E2E_ARTIFACTS" && cp -r "$E2E_DIR/logs/." "$MIRRORD_E2E_ARTIFACTS/"; } || log "could not copy logs to $MIRRORD_E2E_ARTIFACTS"
  fi
  rm -rf "$E2E_DIR"
  E2E_DIR=""
  return "$rc"
}
