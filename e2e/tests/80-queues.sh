# shellcheck shell=bash
# Queue splitting with real pods (issue 14): a private RabbitMQ node on the node's bridge address, a
# registry naming a consumer Deployment whose pod really consumes (Debian's amqp-consume in the e2e
# amqp image), the in-cluster coordinator's splitter reading the broker Secret the chart let it read,
# and a session through the aggregator with `mirrord-operator probe --rmq-splits`. The developer's
# local consumer is amqp-consume on the host, reading the session queue the probe's env names.

Q_APP=orders-consumer
Q_IMAGE="localhost/mirrord-e2e/amqp:1"

_q_image() {
  python3 "$E2E_ROOT/tools/mkimage.py" amqp --tag "$Q_IMAGE" --out "$E2E_DIR/amqp.tar" || return 1
  _node_ctr "$E2E_DIR" images import "$E2E_DIR/amqp.tar" >/dev/null
}

_q_consumer_yaml() {
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $Q_APP
spec:
  replicas: 1
  selector:
    matchLabels: {app: $Q_APP}
  template:
    metadata:
      labels: {app: $Q_APP}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: app
        image: $Q_IMAGE
        imagePullPolicy: Never
        # Waits for its queue (declared by the splitter) instead of crashing: a restart would hide
        # the one a session start must not cause. Each message's body is one log line.
        command: ["/bin/sh", "-c", "echo \"consuming \$ORDERS_QUEUE\"; until amqp-consume -u \"\$AMQP_URI\" -q \"\$ORDERS_QUEUE\" -p 10 -- sh -c 'cat; echo'; do sleep 1; done"]
        env:
        - {name: ORDERS_QUEUE, value: orders}
        - name: AMQP_URI
          valueFrom: {secretKeyRef: {name: rmq, key: uri}}
YAML
}

_q_registry_yaml() {
  cat <<YAML
apiVersion: queues.mirrord.metalbear.co/v1alpha
kind: MirrordWorkloadQueueRegistry
metadata:
  name: orders
spec:
  consumer: {name: $Q_APP, workloadType: Deployment}
  queues:
    orders:
      queueType: RMQ
      clusterProperties: rmq
      nameSource: {envVar: ORDERS_QUEUE}
YAML
}

# _q_logged NS POD COUNT PREFIX: the pod's log has COUNT lines starting with PREFIX.
_q_logged() {
  local n
  n="$(k -n "$1" logs "$2" -c app | grep -c "^$4" || true)"
  echo "$2 logged $n lines $4*"
  [[ "$n" == "$3" ]]
}

# _split_ready NS REGISTRY DETAILS QUEUE_ID OUTPUT: the registry's status (rmqDetails or sqsDetails)
# names OUTPUT as QUEUE_ID's output queue (its splitter started).
_split_ready() {
  local out
  out="$(k -n "$1" get mirrordworkloadqueueregistries "$2" -o jsonpath="{.status.$3.queueNames.$4.outputName}")"
  echo "output queue in the registry status: ${out:-none}"
  [[ "$out" == "$5" ]]
}

# _depth_is DEPTH-COMMAND QUEUE DEPTH|absent (DEPTH-COMMAND: rmq_depth or "sqs depth").
_depth_is() {
  local d
  # shellcheck disable=SC2086 # the command may be two words
  d="$($1 "$2")"
  echo "$2: $d"
  [[ "$d" == "$3" ]]
}

# _no_sessions RESOURCE [NS]: no queue session objects of RESOURCE (in NS when namespaced).
_no_sessions() {
  local out
  out="$(k ${2:+-n "$2"} get "$1" -o name)"
  echo "sessions: ${out:-none}"
  [[ -z "$out" ]]
}

_q_publish() { # USER PREFIX COUNT
  local i
  for ((i = 1; i <= $3; i++)); do
    amqp-publish -u "$RMQ_URI" -r orders -p -H "x-user: $1" -b "$2-$i" || return 1
  done
}

test_queue_splitting_with_real_pods() {
  local ns pod uid alice alice_id dave coord coord_pid queue out rc=0 got i
  # The session helpers of 55-sessions.sh (_sess_probe, _sess_bg) target deployment/$SESS_APP.
  local SESS_APP="$Q_APP"
  if ! node_runs_pods; then
    log "skipped: queue splitting needs pods and the in-cluster coordinator (no node in host mode)"
    exit 0
  fi
  node_is_local || { log "skipped: the broker runs on the local node's bridge"; exit 0; }
  command -v amqp-consume >/dev/null || fail "amqp-tools is not installed: run make deps"
  _sess_ready
  _q_image || fail "building or importing the amqp image failed"
  defer rmq_stop
  rmq_start "$NODE_IP" || fail "rabbitmq-server did not start"
  new_ns ns queues "$INJECT_LABEL=enabled"
  # The chart's Role for broker Secrets, in this namespace only; the release is put back afterwards
  # (deferred after the namespace, so it runs before the namespace is deleted).
  defer e2e_restore_base
  op_helm upgrade "${OP_BASE_VALUES[@]}" --set "coordinator.brokerSecretNamespaces={$ns}" ||
    fail "helm upgrade with brokerSecretNamespaces failed"
  _sess_bind_user e2e-alice
  _sess_bind_user e2e-bob
  _sess_bind_user e2e-dave
  wait_for "the webhook to give agents the coordinator's CA" 60 _webhook_injects_ca "$ns"
  k -n "$ns" create secret generic rmq --from-literal "uri=$RMQ_URI" >/dev/null
  amqp-declare-queue -u "$RMQ_URI" -d -q orders >/dev/null || fail "declaring the original queue failed"
  _q_registry_yaml | k -n "$ns" create -f - >/dev/null
  # The webhook reads registries from a watch: give it the moment the watch takes.
  sleep 2
  _q_consumer_yaml | k -n "$ns" create -f - >/dev/null
  k -n "$ns" rollout status "deploy/$Q_APP" --timeout 120s >&2 || fail "the consumer did not become available"
  pod="$(pods_of "$ns" "app=$Q_APP" | head -1)"
  uid="$(k -n "$ns" get pod "$pod" -o jsonpath='{.metadata.uid}')"

  # Admission pointed the app at the output queue, and said so in the status annotation.
  out="$(k -n "$ns" get pod "$pod" -o jsonpath='{.spec.containers[?(@.name=="app")].env[?(@.name=="ORDERS_QUEUE")].value}')"
  [[ "$out" == orders-mirrord-output ]] || fail "the consumer's ORDERS_QUEUE is ${out:-unset}, not orders-mirrord-output"
  k -n "$ns" get pod "$pod" -o json | python3 -c '
import json, sys
status = json.loads(json.load(sys.stdin)["metadata"]["annotations"][sys.argv[1]])
assert any("orders-mirrord-output" in json.dumps(q) for q in status.get("queues", [])), status
' "$STATUS_ANNOTATION" || fail "the status annotation does not list the queue rewrite"
  wait_for "the splitter of orders started (registry status)" 60 _split_ready "$ns" orders rmqDetails orders orders-mirrord-output ||
    fail "the registry never reported its split: $(k -n "$ns" get events --field-selector involvedObject.kind=MirrordWorkloadQueueRegistry -o wide 2>&1 | tail -5)"
  log "ok: $pod admitted with ORDERS_QUEUE=orders-mirrord-output; the coordinator splits orders"

  # No session: a plain forwarder, the pod gets everything.
  _q_publish alice before 3 && _q_publish carol before-c 3 || fail "publishing failed"
  wait_for "the consumer pod got the 6 messages" 60 _q_logged "$ns" "$pod" 3 "before-c-" || fail "messages did not reach the pod"
  _q_logged "$ns" "$pod" 6 "before-" >/dev/null || fail "the pod did not get alice's messages without a session"

  # Alice's session: her env names her own queue; the pod is not touched.
  _sess_bg alice "$ns" e2e-alice --env --rmq-splits '{"orders": {"x-user": "^alice$"}}' --hold 300
  _sess_wait_event "$E2E_DIR/probe-e2e-alice.out" env True 60 ||
    fail "alice's session did not start: $(cat "$E2E_DIR/probe-e2e-alice.out" "$E2E_DIR/probe-e2e-alice.err")"
  alice_id="$(_sess_event "$E2E_DIR/probe-e2e-alice.out" connected | python3 -c 'import json,sys; print(json.load(sys.stdin)["session_id"])')"
  queue="$(_sess_event "$E2E_DIR/probe-e2e-alice.out" env | python3 -c 'import json,sys; print(json.load(sys.stdin)["vars"].get("ORDERS_QUEUE", ""))')"
  [[ "${queue,,}" == "orders-mirrord-${alice_id,,}" ]] || fail "alice's ORDERS_QUEUE is ${queue:-unset}, expected orders-mirrord-${alice_id,,}"
  log "ok: alice's session $alice_id consumes $queue"

  # Bob's overlapping filter is refused naming alice's session.
  out="$(_sess_probe "$ns" e2e-bob --rmq-splits '{"orders": {"x-user": "^al"}}')" || rc=$?
  echo "$out"
  ((rc == 2)) || fail "an overlapping split: exit $rc, expected 2 (refused)"
  rc=0
  grep -qi "\"code\": *409" <<<"$out" && grep -qi "$alice_id" <<<"$out" || fail "the refusal is not a 409 naming $alice_id: $out"
  log "ok: bob's overlapping split refused (409) naming alice's session"

  out="$(k get mirrordrmqsessions)"
  echo "$out"
  grep -qi "${alice_id,,}" <<<"$out" || fail "kubectl get mirrordrmqsessions does not list alice's session"
  out="$("$OPERATOR_BIN" status)" || fail "mirrord-operator status failed: $out"
  grep -q "RMQ Queue for deployment/$Q_APP" <<<"$out" && grep -q "$queue" <<<"$out" ||
    fail "mirrord-operator status does not show alice's split: $out"

  # Alice's messages reach her local consumer in order, the rest the pod.
  _q_publish alice during 5 && _q_publish carol during-c 5 || fail "publishing failed"
  got="$(timeout 60 amqp-consume -u "$RMQ_URI" -q "$queue" -c 5 -- sh -c 'cat; echo')" || fail "alice's local consumer got: $got"
  [[ "$got" == "$(printf 'during-%s\n' 1 2 3 4 5)" ]] || fail "alice's local consumer got, in this order: $got"
  wait_for "the pod got carol's 5" 60 _q_logged "$ns" "$pod" 5 "during-c-" || fail "carol's messages did not reach the pod"
  _q_logged "$ns" "$pod" 5 "during-" >/dev/null || fail "the pod got some of alice's messages during her session"
  log "ok: alice's 5 messages went to her queue in order, carol's 5 to the pod"

  # Unread messages go back to the app when the session is killed, and her queue is deleted.
  _q_publish alice left 4 || fail "publishing failed"
  wait_for "4 unread messages in $queue" 30 _depth_is rmq_depth "$queue" 4 || fail "alice's messages did not wait in her queue"
  k -n "$ns" delete sessions "$alice_id" >&2 || fail "kubectl delete sessions $alice_id failed"
  for ((i = 0; i < 100; i++)); do kill -0 "$alice" 2>/dev/null || break; sleep 0.1; done
  wait "$alice" || rc=$?
  ((rc == 3)) || fail "alice's probe exit $rc after the kill, expected 3: $(tail -3 "$E2E_DIR/probe-e2e-alice.out")"
  wait_for "$queue deleted" 60 _depth_is rmq_depth "$queue" absent || fail "alice's queue was not deleted at session end"
  wait_for "the pod got alice's 4 unread messages" 60 _q_logged "$ns" "$pod" 4 "left-" ||
    fail "the unread messages did not return to the output queue"
  log "ok: session end returned alice's 4 unread messages to the pod and deleted $queue"

  wait_for "no MirrordRMQSession left" 30 _no_sessions mirrordrmqsessions || fail "alice's MirrordRMQSession outlived her session"

  # A coordinator killed mid-session: the next one finds dave's stored session and ends it the same way.
  _sess_bg dave "$ns" e2e-dave --env --rmq-splits '{"orders": {"x-user": "^dave$"}}' --hold 300
  _sess_wait_event "$E2E_DIR/probe-e2e-dave.out" env True 60 || fail "dave's session did not start: $(cat "$E2E_DIR/probe-e2e-dave.err")"
  queue="$(_sess_event "$E2E_DIR/probe-e2e-dave.out" env | python3 -c 'import json,sys; print(json.load(sys.stdin)["vars"].get("ORDERS_QUEUE", ""))')"
  _q_publish dave orphan 3 || fail "publishing failed"
  wait_for "3 unread messages in $queue" 30 _depth_is rmq_depth "$queue" 3 || fail "dave's messages did not wait in his queue"
  coord="$(pods_of "$OP_NS" app.kubernetes.io/component=coordinator | head -1)"
  coord_pid="$(node_container_pid "$OP_NS" "$coord" coordinator)" || fail "no coordinator process in $coord"
  kill -KILL "$coord_pid"
  log "killed the coordinator (pid $coord_pid) during dave's session"
  wait_for "the next coordinator to end dave's session ($queue deleted)" 120 _depth_is rmq_depth "$queue" absent ||
    fail "dave's queue outlived the coordinator that served him"
  wait_for "the pod got dave's 3 unread messages" 60 _q_logged "$ns" "$pod" 3 "orphan-" ||
    fail "dave's unread messages did not return to the output queue"
  wait_for "no MirrordRMQSession left" 30 _no_sessions mirrordrmqsessions || fail "dave's MirrordRMQSession was not removed"
  wait_for "APIService v1.$SESS_GROUP Available again" 120 _sess_apiservice_available
  log "ok: after a coordinator crash the next one returned dave's 3 unread messages and removed his session"

  out="$(k -n "$ns" get pod "$pod" -o jsonpath='{.metadata.uid} {.status.containerStatuses[?(@.name=="app")].restartCount}')"
  [[ "$out" == "$uid 0" ]] || fail "the consumer pod changed or restarted during the session: $out (was $uid 0)"
  log "ok: the consumer pod $pod was neither replaced nor restarted"
}

# SQS: moto on the node's bridge address (the coordinator reaches it through the chart's
# coordinator.sqs values), a registry naming a Deployment, a session through the aggregator with
# `mirrord-operator probe --sqs-splits`. The pod consumes the queue its env names
# (lib/sqs-consumer.sh: busybox wget against moto); the host plays the developer's local process
# on the session queue with boto3.
S_APP=mail-consumer

_s_consumer_yaml() {
  cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $S_APP
spec:
  replicas: 1
  selector:
    matchLabels: {app: $S_APP}
  template:
    metadata:
      labels: {app: $S_APP}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: app
        image: $Q_IMAGE
        imagePullPolicy: Never
        command: ["/bin/sh", "/consumer/consume.sh"]
        env:
        - {name: MAIL_QUEUE, value: mail}
        - {name: SQS_ENDPOINT, value: "$MOTO_URL"}
        volumeMounts:
        - {name: consumer, mountPath: /consumer}
      volumes:
      - name: consumer
        configMap: {name: sqs-consumer}
YAML
}

_s_registry_yaml() {
  cat <<YAML
apiVersion: queues.mirrord.metalbear.co/v1alpha
kind: MirrordWorkloadQueueRegistry
metadata:
  name: mail
spec:
  consumer: {name: $S_APP, workloadType: Deployment}
  queues:
    mail:
      queueType: SQS
      nameSource: {envVar: MAIL_QUEUE}
      tags: {team: e2e}
YAML
}

# _s_setup NSVAR QUEUE: moto with QUEUE on the node's bridge, a labelled namespace, the release
# pointed at moto (chart coordinator.sqs; put back afterwards) and alice bound as a user.
_s_setup() {
  _sess_ready
  _q_image || fail "building or importing the consumer image failed"
  defer moto_stop
  moto_start "$NODE_IP" || fail "moto_server did not start"
  sqs create "$2" || fail "creating the original queue failed"
  new_ns "$1" sqs "$INJECT_LABEL=enabled"
  k -n "$OP_NS" create secret generic e2e-aws --from-literal AWS_ACCESS_KEY_ID=testing \
    --from-literal AWS_SECRET_ACCESS_KEY=testing >/dev/null
  defer k -n "$OP_NS" delete secret e2e-aws
  # Deferred after the Secret, so the release is put back before the Secret goes.
  defer e2e_restore_base
  op_helm upgrade "${OP_BASE_VALUES[@]}" --set coordinator.sqs.region=us-east-1 \
    --set "coordinator.sqs.endpointUrl=$MOTO_URL" --set coordinator.sqs.credentialsSecret=e2e-aws ||
    fail "helm upgrade with coordinator.sqs failed"
  _sess_bind_user e2e-alice
  wait_for "the webhook to give agents the coordinator's CA" 60 _webhook_injects_ca "${!1}"
}

test_sqs_queue_splitting_with_real_pods() {
  local ns pod uid alice alice_id bob queue out rc=0 i
  local SESS_APP="$S_APP"
  _s_setup ns mail
  _s_registry_yaml | k -n "$ns" create -f - >/dev/null
  k -n "$ns" create configmap sqs-consumer --from-file "consume.sh=$E2E_ROOT/lib/sqs-consumer.sh" >/dev/null
  sleep 2 # the webhook's registry watch
  _s_consumer_yaml | k -n "$ns" create -f - >/dev/null
  k -n "$ns" rollout status "deploy/$S_APP" --timeout 120s >&2 || fail "the consumer did not become available"
  pod="$(pods_of "$ns" "app=$S_APP" | head -1)"
  uid="$(k -n "$ns" get pod "$pod" -o jsonpath='{.metadata.uid}')"
  out="$(k -n "$ns" get pod "$pod" -o jsonpath='{.spec.containers[?(@.name=="app")].env[?(@.name=="MAIL_QUEUE")].value}')"
  [[ "$out" == mail-mirrord-output ]] || fail "the consumer's MAIL_QUEUE is ${out:-unset}, not mail-mirrord-output"
  wait_for "the SQS splitter of mail started (registry status)" 60 _split_ready "$ns" mail sqsDetails mail mail-mirrord-output ||
    fail "the registry never reported its split: $(k -n "$ns" get events --field-selector involvedObject.kind=MirrordWorkloadQueueRegistry -o wide 2>&1 | tail -5)"
  log "ok: $pod admitted with MAIL_QUEUE=mail-mirrord-output; the coordinator splits mail (SQS)"

  # No session: the pod consumes everything (from the output queue its env names).
  sqs send mail alice before 2 && sqs send mail carol before-c 2 || fail "sending failed"
  wait_for "the pod consumed the 4 messages" 60 _q_logged "$ns" "$pod" 4 before- || fail "the pod did not consume: $(k -n "$ns" logs "$pod" -c app | tail -5)"

  _sess_bg alice "$ns" e2e-alice --env --sqs-splits '{"mail": {"tenant": "^alice$"}}' --hold 300
  _sess_wait_event "$E2E_DIR/probe-e2e-alice.out" env True 60 ||
    fail "alice's session did not start: $(cat "$E2E_DIR/probe-e2e-alice.out" "$E2E_DIR/probe-e2e-alice.err")"
  alice_id="$(_sess_event "$E2E_DIR/probe-e2e-alice.out" connected | python3 -c 'import json,sys; print(json.load(sys.stdin)["session_id"])')"
  queue="$(_sess_event "$E2E_DIR/probe-e2e-alice.out" env | python3 -c 'import json,sys; print(json.load(sys.stdin)["vars"].get("MAIL_QUEUE", ""))')"
  [[ "${queue,,}" == "mail-mirrord-${alice_id,,}" ]] || fail "alice's MAIL_QUEUE is ${queue:-unset}, expected mail-mirrord-${alice_id,,}"
  out="$(k -n "$ns" get mirrordsqssessions)"
  echo "$out"
  grep -qi "${alice_id,,}" <<<"$out" || fail "kubectl get mirrordsqssessions does not list alice's session"
  out="$("$OPERATOR_BIN" status)" || fail "mirrord-operator status failed: $out"
  grep -q "SQS Queue for deployment/$S_APP" <<<"$out" && grep -q "$queue" <<<"$out" ||
    fail "mirrord-operator status does not show alice's SQS split: $out"
  out="$(sqs tags "$queue")"
  [[ "$out" == '{"team": "e2e"}' ]] || fail "the registry's tags are not on alice's queue: $out"
  log "ok: alice's session $alice_id consumes $queue"

  sqs send mail alice during 3 && sqs send mail carol during-c 3 || fail "sending failed"
  out="$(sqs receive "$queue" 3 60)" || fail "alice's queue got: $out"
  [[ "$out" == "$(printf 'during-%s\n' 1 2 3)" ]] || fail "alice's queue got: $out"
  wait_for "the pod consumed carol's 3" 60 _q_logged "$ns" "$pod" 3 during-c- || fail "the pod did not get carol's messages"
  _q_logged "$ns" "$pod" 0 "during-[0-9]" || fail "the pod consumed alice's messages"
  log "ok: alice's 3 messages went to her queue, carol's 3 to the app's pod"

  sqs send mail alice left 2 || fail "sending failed"
  wait_for "2 unread messages in $queue" 30 _depth_is "sqs depth" "$queue" 2 || fail "alice's messages did not wait in her queue"
  k -n "$ns" delete sessions "$alice_id" >&2 || fail "kubectl delete sessions $alice_id failed"
  for ((i = 0; i < 100; i++)); do kill -0 "$alice" 2>/dev/null || break; sleep 0.1; done
  wait "$alice" || rc=$?
  ((rc == 3)) || fail "alice's probe exit $rc after the kill, expected 3: $(tail -3 "$E2E_DIR/probe-e2e-alice.out")"
  wait_for "$queue deleted" 60 _depth_is "sqs depth" "$queue" absent || fail "alice's queue was not deleted at session end"
  wait_for "the pod consumed alice's 2 unread messages" 60 _q_logged "$ns" "$pod" 2 left- || fail "the unread messages did not return to the app"
  wait_for "no MirrordSQSSession left" 30 _no_sessions mirrordsqssessions "$ns" || fail "alice's MirrordSQSSession outlived her session"
  log "ok: session end returned alice's 2 unread messages to the app's pod and deleted $queue"

  # A jq filter whose evaluation kills its worker (unbounded recursion): the developer's client is
  # told through the session, the message goes to the app, the coordinator stays up.
  _sess_bind_user e2e-bob
  _sess_bg bob "$ns" e2e-bob --env --sqs-splits '{"mail": {"tenant": "^bob$"}}' \
    --sqs-jq-filters '{"mail": "def f: f + 1; f"}' --hold 300
  _sess_wait_event "$E2E_DIR/probe-e2e-bob.out" env True 60 ||
    fail "bob's session did not start: $(cat "$E2E_DIR/probe-e2e-bob.out" "$E2E_DIR/probe-e2e-bob.err")"
  sqs send-json mail bob jq 1 || fail "sending failed"
  _sess_wait_event "$E2E_DIR/probe-e2e-bob.out" log '"matches nothing from now on" in e["message"] and e["level"] == "Warn"' 60 ||
    fail "bob's client was not told his jq filter broke: $(cat "$E2E_DIR/probe-e2e-bob.out")"
  wait_for "the pod consumed bob's message" 60 _q_logged "$ns" "$pod" 1 '{"text": "jq-1"}' || fail "bob's message did not go to the app"
  out="$(_sess_event "$E2E_DIR/probe-e2e-bob.out" connected | python3 -c 'import json,sys; print(json.load(sys.stdin)["session_id"])')"
  k -n "$ns" delete sessions "$out" >&2 || fail "kubectl delete sessions $out failed"
  wait_for "no MirrordSQSSession left" 30 _no_sessions mirrordsqssessions "$ns" || fail "bob's MirrordSQSSession outlived his session"
  log "ok: bob's broken jq filter was reported to his client as a warning; his message went to the app"

  # Each message once: the pod's log holds exactly the 4 + 3 + 2 + 1 bodies counted above.
  _q_logged "$ns" "$pod" 10 '[bdl{]' || fail "the pod consumed duplicates or strays: $(k -n "$ns" logs "$pod" -c app)"
  out="$(k -n "$ns" get pod "$pod" -o jsonpath='{.metadata.uid} {.status.containerStatuses[?(@.name=="app")].restartCount}')"
  [[ "$out" == "$uid 0" ]] || fail "the consumer pod changed or restarted during the session: $out (was $uid 0)"
  log "ok: the consumer pod $pod consumed each of its 10 messages once, was neither replaced nor restarted"
}

# An Argo Rollout consumer without the Argo controller: the Rollout CRD, a Rollout, and the
# ReplicaSet Argo would make (named <rollout>-<hash>, label rollouts-pod-template-hash, owned by the
# Rollout), whose pod the ReplicaSet controller creates. Admission reads the Rollout from the pod;
# the coordinator reads the template from its Rollout watch (started once the CRD, created after
# the coordinator, is served) and finds the pods through the ReplicaSet; the session targets
# rollout/<name>.
R_APP=jobs-worker
R_HASH=6c8d9f7b5

_r_crd_yaml() {
  cat <<'YAML'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: rollouts.argoproj.io}
spec:
  group: argoproj.io
  names: {kind: Rollout, listKind: RolloutList, plural: rollouts, singular: rollout}
  scope: Namespaced
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
YAML
}

_r_template() { # LABELS-EXTRA
  cat <<YAML
    metadata:
      labels: {app: $R_APP$1}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: worker
        image: $Q_IMAGE
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "echo \"consuming \$JOBS_QUEUE\"; exec sleep 3600"]
        env:
        - {name: JOBS_QUEUE, value: jobs}
YAML
}

# _r_rollout_yaml inline|workload-ref: the Rollout with its own pod template, or naming a
# Deployment's (`workloadRef`; that Deployment at 0 replicas, as Argo keeps it).
_r_rollout_yaml() {
  local source
  if [[ "$1" == inline ]]; then
    source="  template:
$(_r_template "")"
  else
    source="  workloadRef: {apiVersion: apps/v1, kind: Deployment, name: $R_APP-template}"
    cat <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: $R_APP-template}
spec:
  replicas: 0
  selector:
    matchLabels: {app: $R_APP}
  template:
$(_r_template "")
---
YAML
  fi
  cat <<YAML
apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: $R_APP}
spec:
  replicas: 1
  selector:
    matchLabels: {app: $R_APP}
$source
YAML
}

_r_replicaset_yaml() { # ROLLOUT-UID
  cat <<YAML
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: $R_APP-$R_HASH
  labels: {app: $R_APP, rollouts-pod-template-hash: $R_HASH}
  ownerReferences:
  - {apiVersion: argoproj.io/v1alpha1, kind: Rollout, name: $R_APP, uid: $1, controller: true}
spec:
  replicas: 1
  selector:
    matchLabels: {app: $R_APP, rollouts-pod-template-hash: $R_HASH}
  template:
$(_r_template ", rollouts-pod-template-hash: $R_HASH")
YAML
}

test_rollout_queue_consumer_with_real_pods() { _r_queue_consumer inline; }

# The consumer's queue variable is found in the Deployment the Rollout's workloadRef names.
test_rollout_workload_ref_queue_consumer_with_real_pods() { _r_queue_consumer workload-ref; }

_r_crd_absent() { ! k get crd rollouts.argoproj.io >/dev/null 2>&1; }

# _r_queue_consumer inline|workload-ref
_r_queue_consumer() {
  local ns pod uid rollout_uid alice alice_id queue out rc=0 i
  local SESS_APP="$R_APP" SESS_TARGET="rollout/$R_APP"
  _s_setup ns jobs
  # Installed while the coordinator runs (as Argo installed after the operator): the coordinator
  # notices the kind without a restart. Deferred after the release's restore, so the CRD goes
  # first and the base release restarts the coordinator without a Rollout watch.
  wait_for "no Rollout CRD left by an earlier test" 60 _r_crd_absent
  _r_crd_yaml | k create -f - >/dev/null || fail "creating the Rollout CRD failed"
  defer k delete crd rollouts.argoproj.io --wait=false
  wait_for "the Rollout CRD established" 30 k wait --for condition=established --timeout 5s crd/rollouts.argoproj.io
  k -n "$ns" create -f - >/dev/null <<YAML || fail "creating the registry failed"
apiVersion: queues.mirrord.metalbear.co/v1alpha
kind: MirrordWorkloadQueueRegistry
metadata: {name: jobs}
spec:
  consumer: {name: $R_APP, workloadType: Rollout}
  queues:
    jobs:
      queueType: SQS
      nameSource: {envVar: JOBS_QUEUE}
YAML
  sleep 2 # the webhook's registry watch
  _r_rollout_yaml "$1" | k -n "$ns" create -f - >/dev/null || fail "creating the Rollout failed"
  rollout_uid="$(k -n "$ns" get rollout "$R_APP" -o jsonpath='{.metadata.uid}')"
  _r_replicaset_yaml "$rollout_uid" | k -n "$ns" create -f - >/dev/null || fail "creating the ReplicaSet failed"
  wait_pods "$ns" "app=$R_APP" 1 || fail "the ReplicaSet controller made no pod"
  k -n "$ns" wait --for condition=Ready pod -l "app=$R_APP" --timeout 120s >&2 || fail "the Rollout's pod did not become ready"
  pod="$(pods_of "$ns" "app=$R_APP" | head -1)"
  uid="$(k -n "$ns" get pod "$pod" -o jsonpath='{.metadata.uid}')"
  out="$(k -n "$ns" get pod "$pod" -o jsonpath='{.spec.containers[?(@.name=="worker")].env[?(@.name=="JOBS_QUEUE")].value}')"
  [[ "$out" == jobs-mirrord-output ]] || fail "the Rollout's pod has JOBS_QUEUE=${out:-unset}, not jobs-mirrord-output"
  wait_for "the SQS splitter of jobs started (registry status)" 60 _split_ready "$ns" jobs sqsDetails jobs jobs-mirrord-output ||
    fail "the registry never reported its split: $(k -n "$ns" get events --field-selector involvedObject.kind=MirrordWorkloadQueueRegistry -o wide 2>&1 | tail -5)"
  log "ok: $pod of rollout/$R_APP ($1 template) admitted with JOBS_QUEUE=jobs-mirrord-output; the coordinator splits jobs"

  _sess_bg alice "$ns" e2e-alice --env --sqs-splits '{"jobs": {"tenant": "^alice$"}}' --hold 300
  _sess_wait_event "$E2E_DIR/probe-e2e-alice.out" env True 60 ||
    fail "alice's session on rollout/$R_APP did not start: $(cat "$E2E_DIR/probe-e2e-alice.out" "$E2E_DIR/probe-e2e-alice.err")"
  alice_id="$(_sess_event "$E2E_DIR/probe-e2e-alice.out" connected | python3 -c 'import json,sys; print(json.load(sys.stdin)["session_id"])')"
  queue="$(_sess_event "$E2E_DIR/probe-e2e-alice.out" env | python3 -c 'import json,sys; print(json.load(sys.stdin)["vars"].get("JOBS_QUEUE", ""))')"
  [[ "${queue,,}" == "jobs-mirrord-${alice_id,,}" ]] || fail "alice's JOBS_QUEUE is ${queue:-unset}, expected jobs-mirrord-${alice_id,,}"
  sqs send jobs alice a 2 && sqs send jobs bob b 2 || fail "sending failed"
  out="$(sqs receive "$queue" 2 60)" || fail "alice's queue got: $out"
  [[ "$out" == "$(printf 'a-%s\n' 1 2)" ]] || fail "alice's queue got: $out"
  out="$(sqs receive jobs-mirrord-output 2 60)" || fail "the output queue got: $out"
  [[ "$out" == "$(printf 'b-%s\n' 1 2)" ]] || fail "the output queue got: $out"
  log "ok: alice's session on rollout/$R_APP ($alice_id) gets her messages, the Rollout's queue the rest"

  k -n "$ns" delete sessions "$alice_id" >&2 || fail "kubectl delete sessions $alice_id failed"
  for ((i = 0; i < 100; i++)); do kill -0 "$alice" 2>/dev/null || break; sleep 0.1; done
  wait "$alice" || rc=$?
  ((rc == 3)) || fail "alice's probe exit $rc after the kill, expected 3"
  wait_for "$queue deleted" 60 _depth_is "sqs depth" "$queue" absent || fail "alice's queue was not deleted at session end"
  out="$(k -n "$ns" get pod "$pod" -o jsonpath='{.metadata.uid} {.status.containerStatuses[?(@.name=="worker")].restartCount}')"
  [[ "$out" == "$uid 0" ]] || fail "the Rollout's pod changed or restarted during the session: $out (was $uid 0)"
  log "ok: session ended, queue deleted; the Rollout's pod $pod was neither replaced nor restarted"
}
