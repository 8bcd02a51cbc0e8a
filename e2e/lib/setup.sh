# shellcheck shell=bash
# Setting up and tearing down one e2e run (used by run.sh and demo.sh). Sourced, never executed.

# The values of the base install every test starts from (and returns to). Short audit interval so the
# audit test does not wait minutes; everything else at chart defaults.
OP_BASE_VALUES=()

# Chooses the mode, creates the state dir and, in local mode, builds (once) and starts the control plane.
# Sets E2E_MODE, E2E_DIR, KUBECONFIG, KUBECTL, HELM, OPERATOR_BIN, WH_PORT, WH_HEALTH_PORT.
e2e_setup_cluster() {
  local dir="${1:-}"
  if [[ -n "${KUBECONFIG:-}" ]]; then
    E2E_MODE=cluster
  else
    E2E_MODE=local
  fi
  export E2E_MODE
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
    log "cargo build (the webhook runs on the host)"
    (cd "$REPO_ROOT" && cargo build --quiet --bin mirrord-operator) || die "cargo build failed"
    OPERATOR_BIN="$REPO_ROOT/target/debug/mirrord-operator"
  else
    OPERATOR_BIN="$MIRRORD_OPERATOR_BIN"
  fi
  [[ -x "$OPERATOR_BIN" ]] || die "no webhook binary at $OPERATOR_BIN"
  export OPERATOR_BIN
  cp_start "$E2E_DIR"
  WH_PORT="$(free_port)"
  WH_HEALTH_PORT="$(free_port)"
  export WH_PORT WH_HEALTH_PORT
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
  cp_stop "$E2E_DIR"
  if [[ -n "${MIRRORD_E2E_ARTIFACTS:-}" ]]; then
    { mkdir -p "$MIRRORD_E2E_ARTIFACTS" && cp -r "$E2E_DIR/logs/." "$MIRRORD_E2E_ARTIFACTS/"; } || log "could not copy logs to $MIRRORD_E2E_ARTIFACTS"
  fi
  rm -rf "$E2E_DIR"
  E2E_DIR=""
}
