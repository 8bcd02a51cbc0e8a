# shellcheck shell=bash
# A private RabbitMQ node (Debian's rabbitmq-server) for the queue splitting e2e, started the way
# ../shared/design/brokers-for-tests.md describes: its own node name, data and log directories, AMQP on
# the address given (the node's bridge IP, so pods and the in-cluster coordinator reach it), Erlang
# distribution and epmd on 127.0.0.1. A user of its own (guest may only log in from loopback).
# Sourced, never executed. Requires lib/common.sh.

# rmq_start IP: starts the node in a new directory under TMPDIR with AMQP on IP:<free port>, waits
# for it, sets RMQ_URI (amqp://e2e:<random password>@IP:PORT/%2f). The caller stops it with rmq_stop
# (defer it first). Not under E2E_DIR: the node runs as the rabbitmq user, which must reach its files.
rmq_start() {
  local ip="$1" dir password i
  dir="$(mktemp -d "${TMPDIR:-/tmp}/mirrord-e2e-rabbitmq.XXXXXX")"
  RMQ_DIR="$dir" RMQ_IP="$ip"
  RMQ_NODENAME="rabbit-e2e-$$@localhost"
  RMQ_PORT="$(free_port)"
  RMQ_DIST_PORT="$(free_port)"
  RMQ_EPMD_PORT="$(free_port)"
  mkdir -p "$dir/mnesia" "$dir/log"
  # Debian's wrapper drops to the rabbitmq user, which must own the node's directories.
  chown -R rabbitmq:rabbitmq "$dir"
  _rmq_env setsid rabbitmq-server >"$dir/server.out" 2>&1 </dev/null &
  RMQ_PID=$!
  for ((i = 0; i < 180; i++)); do
    kill -0 "$RMQ_PID" 2>/dev/null || { cat "$dir/server.out" >&2; log "rabbitmq-server exited"; return 1; }
    if rmq_ctl await_startup --timeout 5 >/dev/null 2>&1; then break; fi
    sleep 0.5
  done
  rmq_ctl await_startup --timeout 5 >/dev/null || { cat "$dir/server.out" >&2; return 1; }
  password="$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
  rmq_ctl add_user e2e "$password" >/dev/null
  rmq_ctl set_permissions -p / e2e '.*' '.*' '.*' >/dev/null
  RMQ_URI="amqp://e2e:$password@$ip:$RMQ_PORT/%2f"
}

_rmq_env() {
  env RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia" RABBITMQ_LOG_BASE="$RMQ_DIR/log" \
    RABBITMQ_NODENAME="$RMQ_NODENAME" RABBITMQ_NODE_IP_ADDRESS="${RMQ_IP:-127.0.0.1}" \
    RABBITMQ_NODE_PORT="$RMQ_PORT" RABBITMQ_DIST_PORT="$RMQ_DIST_PORT" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    ERL_EPMD_PORT="$RMQ_EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1 ERL_CRASH_DUMP="$RMQ_DIR/erl_crash.dump" "$@"
}

# rmq_ctl ARGS...: rabbitmqctl against the node.
rmq_ctl() { (cd /tmp && _rmq_env rabbitmqctl -n "$RMQ_NODENAME" "$@"); }

# rmq_depth QUEUE: messages ready in QUEUE, or "absent".
rmq_depth() {
  rmq_ctl list_queues -q --no-table-headers name messages 2>/dev/null |
    awk -v q="$1" '$1 == q {print $2; found=1} END {if (!found) print "absent"}'
}

# rmq_stop: stops the node and its epmd, removes its directories.
rmq_stop() {
  [[ -n "${RMQ_PID:-}" ]] || return 0
  rmq_ctl shutdown --timeout 30 >/dev/null 2>&1 || true
  # The wrapper (su) leads its own session: kill what is left of the group.
  kill -KILL -- "-$RMQ_PID" 2>/dev/null || true
  wait "$RMQ_PID" 2>/dev/null || true
  _rmq_env epmd -kill >/dev/null 2>&1 || true
  rm -rf "$RMQ_DIR"
  RMQ_PID=""
}
