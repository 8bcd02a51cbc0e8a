# shellcheck shell=bash
# One real node beside the local control plane: containerd + runc + the CNI bridge plugin + a kubelet
# (and kube-scheduler), so pods really run. Recipe and pitfalls: /work/shared/design/real-pods.md.
# Sourced, never executed. Requires lib/common.sh and lib/controlplane.sh.
#
# Host-wide things a node needs (so only one node runs on a machine at a time; node_prepare refuses a
# second one): the bridge $NODE_BRIDGE with the node address and the `kubernetes` Service address, the
# kubelet's hard-coded host paths, the kubepods cgroups. Everything else lives under $CP_DIR/node/.
# node_stop removes all of it, and node_leftovers lists whatever is still there.

NODE_NAME="node-1"
NODE_BRIDGE="mo-cni0"
NODE_IP="10.244.77.1"
NODE_POD_CIDR="10.244.77.0/24"
# The apiserver listens on the `kubernetes` Service's ClusterIP itself (first address of
# --service-cluster-ip-range, port 443), held by the bridge: pods reach the API at the address the kubelet
# gives them in KUBERNETES_SERVICE_HOST/PORT with a route to the service range, no kube-proxy, no iptables.
NODE_SERVICE_CIDR="10.0.0.0/24"
NODE_API_IP="10.0.0.1"
# Images imported into containerd (never pulled: pods use IfNotPresent/Never).
E2E_OPERATOR_IMAGE="localhost/mirrord-operator:e2e"
E2E_APP_IMAGE="localhost/mirrord-e2e/app:1"
E2E_PAUSE_IMAGE="localhost/mirrord-e2e/pause:1"
# Paths kubelet 1.20 and containerd/CNI use whatever their flags say (real-pods.md, pitfall 4).
NODE_HOST_PATHS=(/var/lib/kubelet /var/log/pods /var/log/containers /var/lib/cni /run/containerd)
NODE_SYSCTLS=(kernel.panic kernel.panic_on_oops vm.overcommit_memory net.ipv4.ip_forward)

# _node_ctr DIR ARGS...: ctr against DIR's containerd.
_node_ctr() { local dir="$1"; shift; ctr -a "$dir/node/run/containerd.sock" -n k8s.io "$@"; }

# The host's iptables rules without counters and comments (compared before/after).
_node_iptables() {
  local t
  for t in iptables-save ip6tables-save; do
    command -v "$t" >/dev/null && "$t" 2>/dev/null | sed -e '/^#/d' -e 's/\[[0-9]*:[0-9]*\]//g'
  done
}

_node_cgroups() {
  find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -type d \( -name kubepods -o -name k8s.io \) 2>/dev/null | sort
}

# node_prepare DIR: before cp_start. Refuses to run beside another node, records the host's state for the
# leftovers check, creates the bridge and the node's apiserver token (cp_start adds it to tokens.csv).
node_prepare() {
  local dir="$1/node" p
  if ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    die "bridge $NODE_BRIDGE exists: another e2e run or the demo runs a node on this machine (make demo-down), or a killed run left it (e2e/tools/node-leftovers.sh --clean)"
  fi
  mkdir -p "$dir/before"
  for p in "${NODE_HOST_PATHS[@]}"; do [[ -e "$p" ]] && echo "$p"; done >"$dir/before/paths"
  _node_cgroups >"$dir/before/cgroups"
  _node_iptables >"$dir/before/iptables"
  sysctl "${NODE_SYSCTLS[@]}" >"$dir/before/sysctl" 2>/dev/null || true
  python3 -c 'import secrets; print(secrets.token_hex(24))' >"$dir/token"
  ip link add "$NODE_BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$NODE_BRIDGE"
  ip addr add "$NODE_API_IP/32" dev "$NODE_BRIDGE"
  ip link set "$NODE_BRIDGE" up
}

# node_images DIR: the image tarballs (operator from the Dockerfile's file list, demo app, pause).
node_images() {
  local out="$1/node/images" bindir
  mkdir -p "$out"
  bindir="$(dirname "$OPERATOR_BIN")"
  python3 "$E2E_ROOT/tools/mkimage.py" operator --dockerfile "$REPO_ROOT/Dockerfile" --bin-dir "$bindir" \
    --tag "$E2E_OPERATOR_IMAGE" --out "$out/operator.tar" || return 1
  python3 "$E2E_ROOT/tools/mkimage.py" app --tag "$E2E_APP_IMAGE" --out "$out/app.tar" || return 1
  python3 "$E2E_ROOT/tools/mkimage.py" pause --pause "$KUBE_BIN_DIR/pause" --tag "$E2E_PAUSE_IMAGE" --out "$out/pause.tar"
}

# node_start DIR: containerd, images, CNI, kubelet, kube-scheduler; waits for the Node to be Ready.
node_start() {
  local dir="$1/node" api="https://$NODE_API_IP:443"
  mkdir -p "$dir"/{run,certs.d,containerd,cni/net.d,cni/ipam,kubelet/root,kubelet/pki,kubelet/volume-plugins}
  cat >"$dir/containerd.toml" <<TOML
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$dir/run/containerd.sock"
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "$E2E_PAUSE_IMAGE"
    # Pod netns files under state/ (removed with it), not /run/netns.
    netns_mounts_under_state_dir = true
    # Required on VMs without CAP_SYS_RESOURCE: runc cannot lower oom_score_adj (real-pods.md, pitfall 1).
    restrict_oom_score_adj = true
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "$dir/containerd/runc"
    # Registry hosts.toml files (the registry mirror's node agents write them here).
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "$dir/certs.d"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$dir/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "$dir/containerd/opt"
TOML
  # isGateway false + a pre-created bridge: the plugin turns on no forwarding and adds no masquerade.
  # Pods get only two routes: their subnet (on-link) and the service range via the node, where the
  # apiserver holds the `kubernetes` ClusterIP.
  cat >"$dir/cni/net.d/10-e2e.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "mirrord-e2e",
 "plugins": [{"type": "bridge", "bridge": "$NODE_BRIDGE", "isGateway": false, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$dir/cni/ipam",
     "ranges": [[{"subnet": "$NODE_POD_CIDR", "rangeStart": "10.244.77.10", "rangeEnd": "10.244.77.250", "gateway": "$NODE_IP"}]],
     "routes": [{"dst": "$NODE_SERVICE_CIDR", "gw": "$NODE_IP"}]}}]}
JSON
  _cp_spawn containerd /usr/bin/containerd -c "$dir/containerd.toml"
  wait_for "containerd" 30 _node_ctr "$1" version || { tail -20 "$CP_DIR/logs/containerd.log" >&2; return 1; }
  local img
  for img in pause operator app; do
    _node_ctr "$1" images import "$dir/images/$img.tar" >>"$CP_DIR/logs/images.log" 2>&1 ||
      { tail -20 "$CP_DIR/logs/images.log" >&2; return 1; }
  done

  cat >"$dir/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10350
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10348
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}, x509: {}}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failSwapOn: false
makeIPTablesUtilChains: false
volumePluginDir: $dir/kubelet/volume-plugins
resolvConf: /etc/resolv.conf
evictionHard: {memory.available: "100Mi"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusUpdateFrequency: 2s
YAML
  cat >"$dir/kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "$api", certificate-authority: "$CP_DIR/pki/ca.crt"}
users:
- name: $NODE_NAME
  user: {token: "$(cat "$dir/token")"}
contexts:
- name: e2e
  context: {cluster: e2e, user: $NODE_NAME}
current-context: e2e
KCFG
  _cp_spawn kubelet "$KUBE_BIN_DIR/kubelet" --config "$dir/kubelet.yaml" --kubeconfig "$dir/kubeconfig" \
    --root-dir "$dir/kubelet/root" --cert-dir "$dir/kubelet/pki" \
    --container-runtime remote --container-runtime-endpoint "unix://$dir/run/containerd.sock" \
    --containerd "$dir/run/containerd.sock" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v 1
  _cp_spawn kube-scheduler "$KUBE_BIN_DIR/kube-scheduler" --kubeconfig "$CP_DIR/kubeconfig" \
    --leader-elect=false --port 0 --secure-port 0
  wait_for "node $NODE_NAME Ready" 90 _node_ready || { tail -30 "$CP_DIR/logs/kubelet.log" >&2; return 1; }
  log "node $NODE_NAME Ready (pods on $NODE_POD_CIDR via $NODE_BRIDGE)"
}

_node_ready() {
  local s
  s="$("$KUBECTL" get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>&1)"
  echo "Ready=$s"
  [[ "$s" == True ]]
}

# PIDs of containerd shims serving DIR's containerd (they outlive containerd by design).
_node_shims() {
  local sock="$1/node/run/containerd.sock" p
  for p in /proc/[0-9]*; do
    [[ "$(readlink "$p/exe" 2>/dev/null)" == */containerd-shim* ]] || continue
    tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "-address $sock" && echo "${p#/proc/}"
  done
}

# Mount points under DIR or the kubelet's/containerd's host paths, deepest first.
_node_mounts() {
  local dir="$1"
  awk '{print $5}' /proc/self/mountinfo | grep -E "^($dir/|/var/lib/kubelet/|/run/containerd/)" | awk '{print length, $0}' |
    sort -rn | cut -d' ' -f2-
}

# node_stop DIR: stops the node and removes every trace of it from the host (idempotent; safe when the
# node never started). Leaves the control plane to cp_stop.
node_stop() {
  local top="$1" dir="$1/node" pid bin line
  [[ -d "$dir" ]] || return 0
  # 1. Kubelet and scheduler first, so nothing restarts containers while they are killed.
  while read -r pid bin; do
    case "$bin" in */kubelet | */kube-scheduler) if pid_runs "$pid" "$bin"; then kill_pid "$pid"; fi ;; esac
  done <"$top/pids"
  # 2. Every container: SIGKILL through containerd, then wait for the tasks to go.
  if [[ -S "$dir/run/containerd.sock" ]] && _node_ctr "$top" version >/dev/null 2>&1; then
    local t i
    for t in $(_node_ctr "$top" tasks ls -q 2>/dev/null); do _node_ctr "$top" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    for ((i = 0; i < 50; i++)); do
      _node_ctr "$top" tasks ls 2>/dev/null | awk 'NR > 1 && $3 != "STOPPED"' | grep -q . || break
      sleep 0.1
    done
  fi
  # Anything still in the pods' cgroups (a container whose shim lost containerd).
  local cg
  for cg in $(_node_cgroups); do
    grep -qxF "$cg" "$dir/before/cgroups" 2>/dev/null && continue
    find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done
  done
  # 3. containerd, then its shims.
  while read -r pid bin; do
    if [[ "$bin" == */containerd ]] && pid_runs "$pid" "$bin"; then kill_pid "$pid"; fi
  done <"$top/pids"
  for pid in $(_node_shims "$top"); do kill_pid "$pid" 2; done
  # 4. Mounts (overlay rootfs, shm, netns, the kubelet's bind mount of its root dir), deepest first.
  while read -r line; do
    [[ -n "$line" ]] && { umount "$line" 2>/dev/null || umount -l "$line" 2>/dev/null || log "could not unmount $line"; }
  done < <(_node_mounts "$top")
  # 5. cgroups the node created (children first).
  for cg in $(_node_cgroups); do
    grep -qxF "$cg" "$dir/before/cgroups" 2>/dev/null && continue
    find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  # 6. The bridge (pod veths went with their network namespaces).
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  # 7. Host paths the node created.
  local p
  for p in "${NODE_HOST_PATHS[@]}"; do
    grep -qxF "$p" "$dir/before/paths" 2>/dev/null && continue
    if [[ -e "$p" ]]; then rm -rf "$p"; fi
  done
  # 8. The runtime data (image layers can be read-only).
  chmod -R u+w "$dir/containerd" 2>/dev/null || true
  rm -rf "$dir/containerd" "$dir/kubelet" "$dir/cni" "$dir/run" "$dir/certs.d"
}

# node_leftovers [DIR]: lists every trace of a node still on the host, one a line; fails when there is
# any. With DIR (before DIR is removed) also compares host iptables and sysctls with the recorded state.
node_leftovers() {
  local dir="${1:-}" found=0 p cg
  _left() { echo "leftover: $*"; found=1; }
  for p in /proc/[0-9]*; do
    local exe
    exe="$(readlink "$p/exe" 2>/dev/null)" || continue
    case "${exe% (deleted)}" in
      */kubelet | */kube-scheduler | /usr/bin/containerd | */containerd-shim-runc-v2)
        if [[ -z "$dir" ]] || tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF "$dir/"; then
          _left "process ${p#/proc/} $(tr '\0' ' ' <"$p/cmdline" 2>/dev/null | cut -c1-120)"
        fi
        ;;
    esac
  done
  while read -r p; do [[ -n "$p" ]] && _left "mount $p"; done < <(_node_mounts "${dir:-/nonexistent}"; grep -o ' /run/netns/cni-[^ ]*' /proc/self/mountinfo)
  for cg in $(_node_cgroups); do
    [[ -n "$dir" ]] && grep -qxF "$cg" "$dir/node/before/cgroups" 2>/dev/null && continue
    _left "cgroup $cg"
  done
  ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && _left "link $NODE_BRIDGE"
  ip -o link show type veth 2>/dev/null | grep -q "master $NODE_BRIDGE" && _left "veth on $NODE_BRIDGE"
  for p in "${NODE_HOST_PATHS[@]}"; do
    [[ -e "$p" ]] || continue
    [[ -n "$dir" ]] && grep -qxF "$p" "$dir/node/before/paths" 2>/dev/null && continue
    _left "path $p"
  done
  if [[ -n "$dir" && -f "$dir/node/before/iptables" ]]; then
    local diff
    diff="$(diff <(cat "$dir/node/before/iptables") <(_node_iptables))" || _left "host iptables changed: $diff"
    diff="$(diff "$dir/node/before/sysctl" <(sysctl "${NODE_SYSCTLS[@]}" 2>/dev/null))" || _left "host sysctls changed: $diff"
  else
    while read -r p; do [[ -n "$p" ]] && _left "iptables $p"; done < <(_node_iptables | grep -E -- '-j (KUBE|CNI)-|^:(KUBE|CNI)-')
  fi
  return "$found"
}
