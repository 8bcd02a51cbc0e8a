# shellcheck shell=bash
# moto's SQS-compatible server for the SQS splitting e2e (the same moto the cargo tests use, from
# e2e/tools/ensure-moto.sh), listening on the address given, and the host's client (lib/sqs.py, run
# by the Python of moto's venv, which has boto3). Sourced, never executed. Requires lib/common.sh.

# moto_start IP: starts moto_server on IP:<free port>, waits for it, sets MOTO_URL. The caller
# stops it with moto_stop (defer it first).
moto_start() {
  local ip="$1" server i
  server="$("$E2E_ROOT/tools/ensure-moto.sh")" || return 1
  MOTO_PYTHON="$(dirname "$server")/python"
  MOTO_PORT="$(free_port)"
  "$server" -H "$ip" -p "$MOTO_PORT" >"$E2E_DIR/moto.log" 2>&1 </dev/null &
  MOTO_PID=$!
  MOTO_URL="http://$ip:$MOTO_PORT"
  for ((i = 0; i < 300; i++)); do
    kill -0 "$MOTO_PID" 2>/dev/null || { cat "$E2E_DIR/moto.log" >&2; log "moto_server exited"; return 1; }
    if curl -s -o /dev/null --max-time 2 "$MOTO_URL/"; then return 0; fi
    sleep 0.1
  done
  log "moto_server did not answer on $MOTO_URL within 30 s"
  return 1
}

moto_stop() {
  [[ -n "${MOTO_PID:-}" ]] || return 0
  kill "$MOTO_PID" 2>/dev/null || true
  wait "$MOTO_PID" 2>/dev/null || true
  MOTO_PID=""
}

# sqs COMMAND ARGS...: lib/sqs.py against the running moto (create, send, depth, receive).
sqs() { "$MOTO_PYTHON" "$E2E_ROOT/lib/sqs.py" "$MOTO_URL" "$@"; }
