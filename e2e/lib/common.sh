# shellcheck shell=bash
# Shared helpers for the e2e harness: logging, bounded waits, process/temp-dir tracking, free ports.
# Sourced, never executed.

E2E_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_ROOT="$(cd "$E2E_ROOT/.." && pwd)"
MIRRORD_OPERATOR_CACHE="${MIRRORD_OPERATOR_CACHE:-$HOME/.cache/mirrord-operator}"
export MIRRORD_OPERATOR_CACHE

log() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# wait_for DESCRIPTION TIMEOUT_SECONDS CMD... : polls CMD every 0.5 s until it succeeds or the deadline passes.
# On timeout prints the last output of CMD so the failure says what was actually seen.
wait_for() {
  local what="$1" timeout="$2"
  shift 2
  local deadline=$((SECONDS + timeout)) out=""
  while ((SECONDS < deadline)); do
    if out="$("$@" 2>&1)"; then
      return 0
    fi
    sleep 0.5
  done
  log "timed out after ${timeout}s waiting for: $what"
  log "last seen: ${out:-<no output>}"
  return 1
}

# free_port: asks the kernel for an unused loopback TCP port. A race with another process grabbing it
# between here and bind is possible but unlikely; callers that bind fail loudly in that case.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# kill_pid PID [GRACE_SECONDS]: stops a process started by this harness: TERM, a bounded grace period
# (default 5 s), then KILL. Only ever by PID.
kill_pid() {
  local pid="$1" grace="${2:-5}" i
  [[ -n "$pid" ]] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# pid_runs PID BIN: is PID alive and running BIN (directly, or as the script of an interpreter)? Guards
# against killing an unrelated process that reused a recorded PID. A binary replaced while running (cargo
# build) shows as "<path> (deleted)".
pid_runs() {
  local pid="$1" bin exe args=()
  bin="$(readlink -f "$2" 2>/dev/null || echo "$2")"
  [[ -n "$pid" && -d "/proc/$pid" ]] || return 1
  exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
  [[ "${exe% (deleted)}" == "$bin" ]] && return 0
  mapfile -d '' -t args <"/proc/$pid/cmdline" 2>/dev/null || return 1
  [[ "${args[0]:-}" == "$2" || "${args[1]:-}" == "$2" || "${args[1]:-}" == "$bin" ]]
}
