# shellcheck shell=bash
# The RegistryMirror operator against the real apiserver (and garbage collector): the chart's CRD, a
# mirror's children and labels, spec and credential changes, bad input reported in the status and as an
# Event with the children left alone, drift repaired, a watch that outlives a missing CRD, and deletion.
# The controller runs in-cluster when the chart's Deployments do, else on the host with the env the chart
# rendered for its Deployment and the token of its ServiceAccount (so the chart's RBAC is what is tested).

RM_CRD=registrymirrors.k8s.osp.tech
RM_DEPLOY="$OP_RELEASE-registry-mirror"

_rm_in_cluster() { [[ "$E2E_MODE" == cluster ]] || { declare -F op_in_cluster >/dev/null && op_in_cluster; }; }

# Starts the controller (host mode) or waits for its Deployment (in-cluster).
_rm_controller_start() {
  if _rm_in_cluster; then
    k -n "$OP_NS" rollout status deploy "$RM_DEPLOY" --timeout 120s >&2 || return 1
    return 0
  fi
  local deploy sa port
  deploy="$(k -n "$OP_NS" get deploy "$RM_DEPLOY" -o json)"
  sa="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["spec"]["template"]["spec"]["serviceAccountName"])' <<<"$deploy")"
  _op_sa_kubeconfig "$sa" >"$E2E_DIR/registry-mirror.kubeconfig"
  port="$(free_port)"
  echo "$port" >"$E2E_DIR/registry-mirror.port"
  PORT="$port" KCFG="$E2E_DIR/registry-mirror.kubeconfig" python3 -c '
import json, os, sys
c = json.load(sys.stdin)["spec"]["template"]["spec"]["containers"][0]
for e in c["env"]:
    if e["name"] == "POD_NAME":
        print("POD_NAME=e2e-host")
    elif "value" in e:
        print(e["name"] + "=" + e["value"])
    else:
        sys.exit("cannot replay env " + e["name"])
print("MIRRORD_OPERATOR_HEALTH_LISTEN=127.0.0.1:" + os.environ["PORT"])
print("KUBECONFIG=" + os.environ["KCFG"])
' <<<"$deploy" >"$E2E_DIR/registry-mirror.env"
  local args=() line
  mapfile -t args < <(python3 -c 'import json,sys; [print(a) for a in json.load(sys.stdin)["spec"]["template"]["spec"]["containers"][0]["args"]]' <<<"$deploy")
  (
    while IFS= read -r line; do export "${line?}"; done <"$E2E_DIR/registry-mirror.env"
    exec nohup "$OPERATOR_BIN" "${args[@]}" >>"$E2E_DIR/logs/registry-mirror.log" 2>&1 </dev/null
  ) &
  local pid=$!
  echo "$pid $OPERATOR_BIN" >>"$E2E_DIR/pids"
  echo "$pid" >"$E2E_DIR/registry-mirror.pid"
  wait_for "registry-mirror controller /readyz" 30 curl -sf "http://127.0.0.1:$port/readyz" ||
    { tail -30 "$E2E_DIR/logs/registry-mirror.log" >&2; return 1; }
}

_rm_controller_stop() {
  local pid
  pid="$(cat "$E2E_DIR/registry-mirror.pid" 2>/dev/null || true)"
  [[ -n "$pid" ]] && kill_pid "$pid"
  rm -f "$E2E_DIR/registry-mirror.pid"
}

_rm_logs() {
  if _rm_in_cluster; then
    k -n "$OP_NS" logs deploy/"$RM_DEPLOY" 2>/dev/null
  else
    cat "$E2E_DIR/logs/registry-mirror.log" 2>/dev/null
  fi
}

# Leaves the cluster without mirrors or the CRD (which the chart keeps on uninstall on purpose).
_rm_cleanup() {
  k delete registrymirrors --all --wait=false >/dev/null 2>&1 || true
  _rm_controller_stop
  k delete crd "$RM_CRD" --wait=false >/dev/null 2>&1 || true
}

_rm_mirror() { # NAME UPSTREAM [CREDENTIALS-SECRET]
  k apply -f - >/dev/null <<EOF
apiVersion: k8s.osp.tech/v1
kind: RegistryMirror
metadata:
  name: $1
spec:
  upstreamUrl: "$2"
${3:+  credentialsSecret: $3}
EOF
}

_rm_patch() { k patch registrymirror "$1" --type merge -p "$2" >/dev/null; }

# What `kubectl get ds,statefulset,svc,registrymirror -l mirror=NAME -n NS` shows, as kind/name lines.
_rm_labelled() {
  k -n "$1" get ds,statefulset,svc,registrymirror -l "mirror=$2" -o jsonpath='{range .items[*]}{.kind}/{.metadata.name}{"\n"}{end}' | sort
}

_rm_children_are() { # NS NAME EXPECTED
  local seen
  seen="$(_rm_labelled "$1" "$2" | tr '\n' ' ')"
  echo "$seen"
  [[ "$seen" == "$3" ]]
}

_rm_ready() { # NAME STATUS REASON
  local got
  got="$(k get registrymirror "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}/{.status.conditions[?(@.type=="Ready")].reason}')"
  echo "Ready=$got"
  [[ "$got" == "$2/$3" ]]
}

_rm_conf() { # NS NAME: the rendered nginx.conf
  k -n "$1" get secret "registry-mirror-$2" -o jsonpath='{.data.nginx\.conf}' | base64 -d
}

_rm_conf_has() { _rm_conf "$1" "$2" | grep -F -- "$3" || { echo "nginx.conf lacks: $3"; return 1; }; }

_rm_event() { # NAME REASON
  k -n default get events --field-selector "involvedObject.name=$1,reason=$2" -o jsonpath='{range .items[*]}{.type} {.reason}: {.message}{"\n"}{end}' | grep -F "Warning $2"
}

_rm_gone() { # NS NAME
  local left
  left="$(k -n "$1" get ds,statefulset,svc,secret -l "mirror=$2" -o name)"
  echo "left: ${left:-nothing}"
  [[ -z "$left" ]]
}

_rm_sts_checksum() {
  k -n "$1" get statefulset "registry-mirror-$2" -o jsonpath='{.spec.template.metadata.annotations.k8s\.osp\.tech/config-checksum}'
}

_rm_exists() { k -n "$1" get "$2" "$3" -o name; }

_rm_observed() { # NAME GENERATION
  local got
  got="$(k get registrymirror "$1" -o jsonpath='{.status.observedGeneration}')"
  echo "observedGeneration=$got"
  [[ "$got" == "$2" ]]
}

_rm_crd_gone() { ! k get crd "$RM_CRD" -o name 2>/dev/null; }

_rm_watch_failed() { _rm_logs | grep -F 'watch failed'; }

test_registry_mirror_lifecycle() {
  local ns before after rv
  new_ns ns mirror
  defer e2e_restore_base
  defer _rm_cleanup
  op_helm upgrade "${OP_BASE_VALUES[@]}" --set registryMirror.enabled=true \
    --set "registryMirror.namespace=$ns" --set registryMirror.createNamespace=false \
    --set registryMirror.secondsBetweenStreams=2
  [[ "$(k get crd "$RM_CRD" -o jsonpath='{.spec.scope}/{.spec.names.shortNames[0]}')" == Cluster/regmirror ]] ||
    fail "CRD $RM_CRD is not cluster-scoped with short name regmirror"
  _rm_controller_start

  # Create: the four children (+ the mirror itself) under one label, the status filled in.
  _rm_mirror quay quay.example.com
  local all="DaemonSet/registry-mirror-quay RegistryMirror/quay Service/registry-mirror-quay Service/registry-mirror-quay-headless StatefulSet/registry-mirror-quay "
  wait_for "the children of mirror quay" 60 _rm_children_are "$ns" quay "$all" || fail "children of quay not created"
  wait_for "quay Ready" 30 _rm_ready quay True Reconciled || fail "quay not Ready: $(_rm_logs | tail -15)"
  [[ "$(k get registrymirror quay -o jsonpath='{.status.observedGeneration}')" == \
    "$(k get registrymirror quay -o jsonpath='{.metadata.generation}')" ]] || fail "observedGeneration not current"
  [[ "$(k get registrymirror quay -o jsonpath='{.status.endpoint}')" == "https://registry-mirror-quay.$ns.svc:443" ]] ||
    fail "endpoint: $(k get registrymirror quay -o jsonpath='{.status.endpoint}')"
  k get regmirror quay | grep -E "quay +quay.example.com +True +Reconciled" >/dev/null ||
    fail "printer columns: $(k get regmirror quay)"
  local sts="$ns/registry-mirror-quay"
  [[ "$(k -n "$ns" get statefulset registry-mirror-quay -o jsonpath='{.spec.replicas}/{.spec.podManagementPolicy}/{.spec.volumeClaimTemplates[0].metadata.name}/{.spec.volumeClaimTemplates[0].spec.resources.requests.storage}')" == "2/Parallel/image-store/20Gi" ]] ||
    fail "StatefulSet $sts shape"
  [[ "$(k -n "$ns" get svc registry-mirror-quay -o jsonpath='{.spec.ports[0].port}/{.spec.ports[0].targetPort}')" == 443/https ]] ||
    fail "Service is not 443 -> https"
  local ip
  ip="$(k -n "$ns" get svc registry-mirror-quay -o jsonpath='{.spec.clusterIP}')"
  k -n "$ns" get ds registry-mirror-quay -o jsonpath='{.spec.template.spec.containers[0].args}' | grep -F "https://$ip:443" >/dev/null ||
    fail "node agent does not point at the Service IP $ip"
  [[ "$(k -n "$ns" get statefulset registry-mirror-quay -o jsonpath='{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].controller}')" == RegistryMirror/true ]] ||
    fail "StatefulSet not owned by the RegistryMirror"
  _rm_conf_has "$ns" quay "proxy_pass https://quay.example.com;" >/dev/null || fail "nginx.conf: $(_rm_conf "$ns" quay)"

  # Change the upstream: config, node agents and the pods' checksum follow; the generation is observed.
  before="$(_rm_sts_checksum "$ns" quay)"
  _rm_patch quay '{"spec":{"upstreamUrl":"registry.corp.example:5000"}}'
  wait_for "nginx.conf with the new upstream" 30 _rm_conf_has "$ns" quay "proxy_pass https://registry.corp.example:5000;" ||
    fail "upstream change not rendered"
  after="$(_rm_sts_checksum "$ns" quay)"
  [[ -n "$after" && "$after" != "$before" ]] || fail "checksum annotation did not change ($before -> $after)"
  k -n "$ns" get ds registry-mirror-quay -o jsonpath='{.spec.template.spec.containers[0].args}' | grep -F "https://registry.corp.example:5000" >/dev/null ||
    fail "DaemonSet not updated"
  wait_for "observedGeneration 2" 30 _rm_observed quay 2 ||
    fail "observedGeneration not updated"

  # Credentials from a Secret, then rotated in place: the Secret is watched, the config follows.
  k -n "$ns" create secret generic pull --from-literal=username=puller --from-literal=password=one >/dev/null
  _rm_patch quay '{"spec":{"credentialsSecret":"pull"}}'
  wait_for "Authorization for puller:one" 30 _rm_conf_has "$ns" quay "Basic $(printf puller:one | base64)" ||
    fail "credentials not rendered"
  k -n "$ns" create secret generic pull --from-literal=username=puller --from-literal=password=two --dry-run=client -o yaml |
    k apply -f - >/dev/null
  wait_for "Authorization for puller:two" 30 _rm_conf_has "$ns" quay "Basic $(printf puller:two | base64)" ||
    fail "rotated credentials not rendered"

  # Bad input: status + Event; the children are left exactly as they were.
  rv="$(k -n "$ns" get statefulset registry-mirror-quay -o jsonpath='{.metadata.resourceVersion}')"
  _rm_patch quay '{"spec":{"credentialsSecret":"absent"}}'
  wait_for "quay SecretNotFound" 30 _rm_ready quay False SecretNotFound || fail "missing Secret not reported: $(_rm_logs | tail -15)"
  wait_for "Event SecretNotFound" 30 _rm_event quay SecretNotFound || fail "no SecretNotFound Event"
  k -n "$ns" create secret generic halfway --from-literal=username=puller >/dev/null
  _rm_patch quay '{"spec":{"credentialsSecret":"halfway"}}'
  wait_for "quay SecretMissingKeys" 30 _rm_ready quay False SecretMissingKeys || fail "Secret without keys not reported: $(_rm_logs | tail -15)"
  _rm_patch quay '{"spec":{"credentialsSecret":null,"upstreamUrl":"quay.example.com/not/a/host"}}'
  wait_for "quay InvalidUpstreamUrl" 30 _rm_ready quay False InvalidUpstreamUrl || fail "malformed URL not reported: $(_rm_logs | tail -15)"
  wait_for "Event InvalidUpstreamUrl" 30 _rm_event quay InvalidUpstreamUrl || fail "no InvalidUpstreamUrl Event"
  [[ "$(k -n "$ns" get statefulset registry-mirror-quay -o jsonpath='{.metadata.resourceVersion}')" == "$rv" ]] ||
    fail "the StatefulSet changed while the input was invalid"
  _rm_conf_has "$ns" quay "Basic $(printf puller:two | base64)" >/dev/null || fail "the last good config was replaced"
  # A name that cannot name a Service is reported, never a crash loop.
  _rm_mirror bad.name quay.example.com
  wait_for "bad.name InvalidName" 30 _rm_ready bad.name False InvalidName || fail "invalid name not reported: $(_rm_logs | tail -15)"
  # (An empty upstreamUrl is reported as InvalidUpstreamUrl too; the 1.20 apiserver refuses "" as null.)
  # Missing upstreamUrl is refused by the CRD's schema.
  if k apply -f - >/dev/null 2>&1 <<EOF; then
apiVersion: k8s.osp.tech/v1
kind: RegistryMirror
metadata: {name: nourl}
spec: {}
EOF
    fail "a RegistryMirror without spec.upstreamUrl was accepted"
  fi

  # Fixed again: Ready, and drift (a deleted child) is repaired.
  _rm_patch quay '{"spec":{"upstreamUrl":"quay.example.com"}}'
  wait_for "quay Ready again" 30 _rm_ready quay True Reconciled || fail "not Ready after the fix: $(_rm_logs | tail -15)"
  k -n "$ns" delete svc registry-mirror-quay-headless >/dev/null
  wait_for "headless Service recreated" 30 _rm_exists "$ns" svc registry-mirror-quay-headless || fail "drift not repaired"
  if ! _rm_in_cluster; then
    curl -sf "http://127.0.0.1:$(cat "$E2E_DIR/registry-mirror.port")/metrics" |
      grep -E '^mirrord_operator_registry_mirror_invalid_inputs_total\{reason="SecretNotFound"\} [1-9]' >/dev/null ||
      fail "invalid input metric missing"
  fi

  # Delete: the garbage collector removes every child through the ownerReferences.
  k delete registrymirror quay >/dev/null
  wait_for "children of quay gone" 120 _rm_gone "$ns" quay || fail "children left after deletion"
}

# The controller started while the CRD is missing keeps retrying every SECONDS_BETWEEN_STREAMS and serves
# mirrors once the CRD is there.
test_registry_mirror_waits_for_crd() {
  local ns
  new_ns ns mirrorcrd
  defer e2e_restore_base
  defer _rm_cleanup
  op_helm upgrade "${OP_BASE_VALUES[@]}" --set registryMirror.enabled=true \
    --set "registryMirror.namespace=$ns" --set registryMirror.createNamespace=false \
    --set registryMirror.secondsBetweenStreams=2
  k delete crd "$RM_CRD" >/dev/null
  wait_for "CRD gone" 60 _rm_crd_gone || fail "CRD not deleted"
  _rm_controller_start
  wait_for "a failed watch in the controller log" 30 _rm_watch_failed ||
    fail "no failed watch logged: $(_rm_logs | tail -5)"
  "$HELM" template "$OP_RELEASE" "$OP_CHART" --namespace "$OP_NS" --set registryMirror.enabled=true \
    -s templates/registry-mirror-crd.yaml | k apply -f - >/dev/null
  k wait --for condition=established "crd/$RM_CRD" --timeout 30s >/dev/null
  _rm_mirror late quay.example.com
  wait_for "late Ready" 60 _rm_ready late True Reconciled || fail "mirror not reconciled after the CRD appeared: $(_rm_logs | tail -15)"
}

# --- The data plane on the real node ------------------------------------------------------------------
# An upstream registry the test controls (Debian's docker-registry with htpasswd basic auth, a pod of the
# cluster on the node's network), a mirror of it whose nginx cache pods run from a locally written image with hostPath volumes,
# and the node's containerd pulling a pod's image through the node agent's hosts.toml.

RM_NGINX_IMAGE="localhost/mirrord-e2e/nginx:1"
RM_REGISTRY_IMAGE="localhost/mirrord-e2e/registry:1"
RM_PASSWORD="e2e pull secret"

# _rm_upstream_start NS DIR PORT: docker-registry as a pod of the cluster (a locally written image, host
# network so that its address, $NODE_IP:PORT, survives a restart), htpasswd from a Secret, storage on a
# hostPath under DIR.
_rm_upstream_start() {
  local ns="$1" dir="$2" port="$3"
  mkdir -p "$dir/data"
  cat >"$dir/config.yml" <<YAML
version: 0.1
log: {level: info, accesslog: {disabled: false}}
storage: {filesystem: {rootdirectory: /var/lib/registry}}
http: {addr: "$NODE_IP:$port", secret: e2e-only}
auth: {htpasswd: {realm: e2e, path: /auth/htpasswd}}
YAML
  k -n "$ns" create configmap upstream-config "--from-file=config.yml=$dir/config.yml" >/dev/null
  _rm_htpasswd "$ns" create
  _rm_upstream_pod "$ns" "$dir"
}

# _rm_htpasswd NS VERB: the Secret upstream-htpasswd holding puller:$RM_PASSWORD (VERB create or replace).
_rm_htpasswd() {
  k -n "$1" create secret generic upstream-htpasswd "--from-literal=htpasswd=$(htpasswd -Bbn puller "$RM_PASSWORD")" \
    --dry-run=client -o yaml | k "$2" -f - >/dev/null
}

_rm_upstream_pod() { # NS DIR
  k -n "$1" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: upstream}
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
    - name: registry
      image: $RM_REGISTRY_IMAGE
      imagePullPolicy: Never
      args: [/etc/registry/config.yml]
      volumeMounts:
        - {name: config, mountPath: /etc/registry}
        - {name: auth, mountPath: /auth}
        - {name: data, mountPath: /var/lib/registry}
  volumes:
    - {name: config, configMap: {name: upstream-config}}
    - {name: auth, secret: {secretName: upstream-htpasswd}}
    - {name: data, hostPath: {path: "$2/data", type: Directory}}
YAML
}

_rm_upstream_log() { k -n "$1" logs upstream 2>&1; }

_rm_http_code() { curl -s -o /dev/null --max-time 5 -w '%{http_code}' "$@"; }
_rm_upstream_up() { local c; c="$(_rm_http_code -u "puller:$RM_PASSWORD" "http://$1/v2/")"; echo "HTTP $c"; [[ "$c" == 200 ]]; }

# _rm_push TARBALL BASE REPO TAG: pushes a docker-save image (one layer, made unique) as an OCI image;
# prints the layer's digest.
_rm_push() {
  AUTH="puller:${RM_PUSH_PASSWORD:-$RM_PASSWORD}" python3 - "$@" <<'PY'
import base64, hashlib, io, json, os, secrets, sys, tarfile, urllib.request
tarball, base, repo, tag = sys.argv[1:5]
auth = "Basic " + base64.b64encode(os.environ["AUTH"].encode()).decode()
with tarfile.open(tarball) as t:
    m = json.load(t.extractfile("manifest.json"))[0]
    config, layer = t.extractfile(m["Config"]).read(), t.extractfile(m["Layers"][0]).read()
# A layer of its own (the app image's files plus a random stamp): containerd already holds the imported
# app image's blobs and would not fetch those again.
src, buf = tarfile.open(fileobj=io.BytesIO(layer)), io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
    for member in src.getmembers():
        out.addfile(member, src.extractfile(member) if member.isfile() else None)
    stamp = secrets.token_hex(16).encode()
    info = tarfile.TarInfo("e2e-mirror-stamp")
    info.size = len(stamp)
    out.addfile(info, io.BytesIO(stamp))
layer = buf.getvalue()
image_config = json.loads(config)
image_config["rootfs"]["diff_ids"] = ["sha256:" + hashlib.sha256(layer).hexdigest()]
config = json.dumps(image_config).encode()
def call(method, url, data=None, ctype=None):
    req = urllib.request.Request(url, data=data, method=method, headers={"Authorization": auth})
    if ctype:
        req.add_header("Content-Type", ctype)
    return urllib.request.urlopen(req, timeout=30)
def push(blob):
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    loc = call("POST", f"{base}/v2/{repo}/blobs/uploads/").headers["Location"]
    loc = loc if loc.startswith("http") else base + loc
    call("PUT", loc + ("&" if "?" in loc else "?") + "digest=" + digest, blob, "application/octet-stream")
    return digest
cfg, lay = push(config), push(layer)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": lay, "size": len(layer)}]}).encode()
call("PUT", f"{base}/v2/{repo}/manifests/{tag}", manifest, "application/vnd.oci.image.manifest.v1+json")
print(lay)
PY
}

# How often the upstream in NS answered a GET of PATH_PART with 200 (its access log).
_rm_upstream_served() { _rm_upstream_log "$1" | grep -F "GET $2" | grep -cF '" 200 ' || true; }

_rm_sts_ready() { # NS NAME COUNT
  local got
  got="$(k -n "$1" get statefulset "registry-mirror-$2" -o jsonpath='{.status.readyReplicas}')"
  echo "readyReplicas=${got:-0}"
  [[ "${got:-0}" == "$3" ]]
}

_rm_file() {
  if [[ -s "$1" ]]; then echo "$1 present"; else echo "$1 missing"; return 1; fi
}

_rm_pod_running() { # NS POD
  local phase
  phase="$(k -n "$1" get pod "$2" -o jsonpath='{.status.phase} {.status.containerStatuses[0].state}')"
  echo "$phase"
  [[ "$phase" == Running* ]]
}

_rm_image_pod() { # NS NAME IMAGE
  k -n "$1" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $2}
spec:
  terminationGracePeriodSeconds: 1
  containers: [{name: app, image: "$3", imagePullPolicy: Always}]
YAML
}

_rm_forget() { # REF LAYER: containerd forgets REF's image until LAYER's blob is gone
  # The CRI plugin names a pulled image three times (tag, repo digest, image ID), each keeping its blobs:
  # remove every name whose manifest is REF's, then let the synchronous GC drop the content.
  local manifest names
  manifest="$(_node_ctr "$E2E_DIR" images ls | awk -v r="$1" '$1 == r {print $3}')"
  if [[ -n "$manifest" ]]; then
    names="$(_node_ctr "$E2E_DIR" images ls | awk -v m="$manifest" '$3 == m {print $1}')"
    # shellcheck disable=SC2086 # one argument per name
    _node_ctr "$E2E_DIR" images rm --sync $names >/dev/null
  fi
  if _node_ctr "$E2E_DIR" content ls -q | grep -qxF "$2"; then
    echo "containerd still has $2; images: $(_node_ctr "$E2E_DIR" images ls -q | tr '\n' ' ')"
    return 1
  fi
  echo "content $2 removed"
}

test_registry_mirror_pulls_on_the_node() {
  if ! node_is_local; then
    log "skipped: needs the local node (containerd's hosts dir and the node address)"
    return 0
  fi
  local ns dir port host layer ip pod0 i hosts_dir ca ref
  "$E2E_ROOT/tools/ensure-apt.sh" docker-registry apache2-utils nginx-light socat
  new_ns ns mirrorpull
  defer e2e_restore_base
  defer _rm_cleanup
  dir="$E2E_DIR/registry-upstream"
  port="$(free_port)"
  host="$NODE_IP:$port"
  python3 "$E2E_ROOT/tools/mkimage.py" registry --tag "$RM_REGISTRY_IMAGE" --out "$dir-registry.tar"
  _node_ctr "$E2E_DIR" images import "$dir-registry.tar" >/dev/null
  _rm_upstream_start "$ns" "$dir" "$port"
  wait_for "upstream registry pod on $host" 90 _rm_upstream_up "$host" ||
    fail "upstream did not start: $(k -n "$ns" describe pod upstream | tail -5; _rm_upstream_log "$ns" | tail -5)"
  layer="$(_rm_push "$E2E_DIR/node/images/app.tar" "http://$host" e2e/app v1)"
  ref="$host/e2e/app:v1"
  [[ "$(_rm_http_code "http://$host/v2/e2e/app/manifests/v1")" == 401 ]] || fail "the upstream serves without credentials"

  # The cache pods' image, and two hostPath volumes owned by their user for the image-store claims.
  python3 "$E2E_ROOT/tools/mkimage.py" nginx --tag "$RM_NGINX_IMAGE" --out "$dir/nginx.tar"
  _node_ctr "$E2E_DIR" images import "$dir/nginx.tar" >/dev/null
  for i in 0 1; do
    mkdir -p "$dir/pv-$i"
    chown 65532:65532 "$dir/pv-$i"
    k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata: {name: $ns-cache-$i}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: $ns
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: "$dir/pv-$i", type: Directory}
YAML
    defer k delete pv "$ns-cache-$i" --wait=false
  done

  hosts_dir="$E2E_DIR/node/certs.d"
  op_helm upgrade "${OP_BASE_VALUES[@]}" --set registryMirror.enabled=true \
    --set "registryMirror.namespace=$ns" --set registryMirror.createNamespace=false \
    --set registryMirror.secondsBetweenStreams=2 --set "registryMirror.nginxImage=$RM_NGINX_IMAGE" \
    --set "registryMirror.hostsDir=$hosts_dir"
  _rm_controller_start
  k -n "$ns" create secret generic upstream-pull --from-literal=username=puller \
    "--from-literal=password=$RM_PASSWORD" >/dev/null
  k apply -f - >/dev/null <<YAML
apiVersion: k8s.osp.tech/v1
kind: RegistryMirror
metadata: {name: local}
spec:
  upstreamUrl: "http://$host"
  credentialsSecret: upstream-pull
  volumeClaimTemplate:
    spec: {storageClassName: $ns, resources: {requests: {storage: 1Gi}}}
YAML
  wait_for "both cache pods ready" 180 _rm_sts_ready "$ns" local 2 ||
    fail "cache pods not ready: $(k -n "$ns" get pods,pvc -o wide 2>&1; k -n "$ns" logs registry-mirror-local-0 2>&1 | tail -5)"
  wait_for "hosts.toml for $host" 60 _rm_file "$hosts_dir/$host/hosts.toml" ||
    fail "no hosts.toml: $(k -n "$ns" get pods -o wide; k -n "$ns" logs ds/registry-mirror-local 2>&1 | tail -5)"
  ip="$(k -n "$ns" get svc registry-mirror-local -o jsonpath='{.spec.clusterIP}')"
  grep -F "https://$ip:443" "$hosts_dir/$host/hosts.toml" >/dev/null || fail "hosts.toml: $(cat "$hosts_dir/$host/hosts.toml")"

  # No kube-proxy here: the node holds the Service's cluster IP and forwards its port 443 to cache pod 0
  # (what kube-proxy's userspace mode did), so containerd dials exactly what hosts.toml names.
  pod0="$(k -n "$ns" get pod registry-mirror-local-0 -o jsonpath='{.status.podIP}')"
  ip addr add "$ip/32" dev "$NODE_BRIDGE"
  defer ip addr del "$ip/32" dev "$NODE_BRIDGE"
  socat "TCP-LISTEN:443,bind=$ip,fork,reuseaddr" "TCP:$pod0:5000" </dev/null >/dev/null 2>&1 &
  defer kill_pid "$!"
  ca="$dir/mirror-ca.crt"
  k -n "$ns" get secret registry-mirror-local -o jsonpath='{.data.ca\.crt}' | base64 -d >"$ca"
  wait_for "the mirror at https://$ip:443" 30 curl -sf --max-time 5 --cacert "$ca" "https://$ip/health-check" ||
    fail "mirror not reachable at its Service address"

  # First pull: containerd goes through the mirror (anonymous), nginx adds the upstream credentials.
  _rm_image_pod "$ns" first "$ref"
  wait_for "pod first Running from $ref" 90 _rm_pod_running "$ns" first ||
    fail "first pull failed: $(k -n "$ns" describe pod first | tail -8)"
  [[ "$(_rm_upstream_served "$ns" "/v2/e2e/app/blobs/$layer")" == 1 ]] ||
    fail "upstream served the layer $(_rm_upstream_served "$ns" "/v2/e2e/app/blobs/$layer") times: $(_rm_upstream_log "$ns" | grep -F 'GET /v2/')"
  k -n "$ns" logs registry-mirror-local-0 | grep -F "blobs/$layer" | grep -F 'cache=MISS' >/dev/null ||
    fail "the layer did not go through the mirror: $(k -n "$ns" logs registry-mirror-local-0 | tail -8)"

  # The same blob with curl through the Service address: from the cache, byte for byte what was pushed.
  curl -sSf --max-time 30 --cacert "$ca" -D "$dir/headers" -o "$dir/blob" "https://$ip/v2/e2e/app/blobs/$layer" ||
    fail "blob through the Service: $(cat "$dir/headers" 2>/dev/null)"
  grep -i '^x-cache-status: HIT' "$dir/headers" >/dev/null || fail "curl's blob was not a cache hit: $(cat "$dir/headers")"
  [[ "sha256:$(sha256sum "$dir/blob" | cut -d' ' -f1)" == "$layer" ]] || fail "the blob through the mirror differs"

  # Second pull after containerd forgot the image: served from the mirror's cache, not the upstream.
  k -n "$ns" delete pod first --wait=true >/dev/null
  wait_for "containerd dropped the layer" 60 _rm_forget "$ref" "$layer" || fail "layer still in containerd"
  _rm_image_pod "$ns" second "$ref"
  wait_for "pod second Running from $ref" 90 _rm_pod_running "$ns" second ||
    fail "second pull failed: $(k -n "$ns" describe pod second | tail -8)"
  k -n "$ns" logs registry-mirror-local-0 | grep -F "blobs/$layer" | grep -F 'cache=HIT' >/dev/null ||
    fail "the second pull was not a cache hit: $(k -n "$ns" logs registry-mirror-local-0 | tail -8)"
  [[ "$(_rm_upstream_served "$ns" "/v2/e2e/app/blobs/$layer")" == 1 ]] ||
    fail "the upstream served the layer again: $(_rm_upstream_log "$ns" | grep -F 'GET /v2/')"

  # Credential rotation: the upstream now knows only a new password (the old one is refused), the
  # Secret gets it, the mirror's pods roll with the re-rendered config, and a layer the cache has never
  # seen comes through: only the new credentials can have fetched it.
  local rotated="e2e rotated secret" layer2
  RM_PASSWORD="$rotated" _rm_htpasswd "$ns" replace
  k -n "$ns" delete pod upstream --wait=true >/dev/null
  _rm_upstream_pod "$ns" "$dir"
  RM_PASSWORD="$rotated" wait_for "upstream back with the new password" 90 _rm_upstream_up "$host" ||
    fail "upstream did not restart: $(_rm_upstream_log "$ns" | tail -5)"
  [[ "$(_rm_http_code -u "puller:$RM_PASSWORD" "http://$host/v2/")" == 401 ]] || fail "the old password still works"
  layer2="$(RM_PUSH_PASSWORD="$rotated" _rm_push "$E2E_DIR/node/images/app.tar" "http://$host" e2e/app v2)"
  k -n "$ns" create secret generic upstream-pull --from-literal=username=puller \
    "--from-literal=password=$rotated" --dry-run=client -o yaml | k replace -f - >/dev/null
  wait_for "the cache pods rolled with the new credentials" 180 _rm_blob_through "$ns" "$ip" "$ca" "$layer2" "$dir/blob2" ||
    fail "the rotated credentials never reached the mirror: $(k -n "$ns" get pods -o wide; k -n "$ns" logs registry-mirror-local-0 | tail -5)"
  [[ "sha256:$(sha256sum "$dir/blob2" | cut -d' ' -f1)" == "$layer2" ]] || fail "the new blob through the mirror differs"
}

# _rm_blob_through NS SERVICE_IP CA DIGEST OUT: the blob through cache pod 0 (its current address, with
# TLS checked against the Service address) with HTTP 200.
_rm_blob_through() {
  local pod code
  pod="$(k -n "$1" get pod registry-mirror-local-0 -o jsonpath='{.status.podIP}')"
  [[ -n "$pod" ]] || { echo "pod 0 has no address"; return 1; }
  code="$(curl -s --max-time 30 --cacert "$3" --connect-to "$2:443:$pod:5000" -o "$5" -w '%{http_code}' \
    "https://$2/v2/e2e/app/blobs/$4")"
  echo "pod 0 at $pod: HTTP $code"
  [[ "$code" == 200 ]]
}
