# shellcheck shell=bash
# The local Kubernetes control plane for e2e: etcd + kube-apiserver + kube-controller-manager 1.20.2,
# built once from Debian's `kubernetes` source package into a cache outside the repo. Recipe:
# /work/shared/design/control-plane-for-tests.md (docs/e2e.md in the repo). Sourced, never executed.
# Requires lib/common.sh.

KUBE_VERSION="v1.20.2"
KUBE_DEB_SRC_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
KUBE_BIN_DIR="$MIRRORD_OPERATOR_CACHE/kube/$KUBE_VERSION"
# Bumped whenever the build recipe changes what it produces; a cache with another stamp is rebuilt.
KUBE_RECIPE="3 (reflect2 1.0.2 + json-iterator 1.1.12 from Debian; kubelet with host sysctls untouched, kube-scheduler)"
# Everything the build produces (the node binaries run real pods: real-pods.md).
KUBE_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet pause)

# The Debian packages the harness needs (installed only when missing).
# The node (real pods): containerd, runc, the CNI plugins, and busybox-static for the test images; gcc and
# libc6-dev build Kubernetes' static pause binary.
cp_ensure_deps() {
  "$E2E_ROOT/tools/ensure-apt.sh" golang-go etcd-server iptables iproute2 openssl curl \
    containerd runc containernetworking-plugins busybox-static gcc libc6-dev
}

# Prints deb and deb-src lines for every Debian suite configured on this machine (deb822 and one-line
# formats), so the sources come from the same mirror as the binaries without touching the system lists.
_cp_deb_src_lines() {
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -e "$f" ]] || continue
    awk -v kr="$keyring" '
      function flush() { if (uri != "" && suites != "" && types ~ /deb/) { n = split(suites, s, " ");
          for (i = 1; i <= n; i++) { print "deb [signed-by=" kr "] " uri " " s[i] " main"
            print "deb-src [signed-by=" kr "] " uri " " s[i] " main" } }
        uri = ""; suites = ""; types = "" }
      /^[[:space:]]*$/ { flush(); next }
      /^Types:/ { types = $2 }
      /^URIs:/ { uri = $2 }
      /^Suites:/ { suites = ""; for (i = 2; i <= NF; i++) suites = suites " " $i }
      END { flush() }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -e "$f" ]] || continue
    awk -v kr="$keyring" '$1 == "deb" { u = $2; s = $3; if ($2 ~ /^\[/) { u = $3; s = $4 }
      print "deb [signed-by=" kr "] " u " " s " main"; print "deb-src [signed-by=" kr "] " u " " s " main" }' "$f"
  done
}

# Builds ${KUBE_BINARIES[*]} into $KUBE_BIN_DIR unless already there.
# Atomic (temp dir + rename) and locked, so concurrent runs build once and never see a half-built cache.
_cp_binaries_ready() {
  local bin
  for bin in "${KUBE_BINARIES[@]}"; do [[ -x "$KUBE_BIN_DIR/$bin" ]] || return 1; done
  [[ "$(cat "$KUBE_BIN_DIR/.recipe" 2>/dev/null)" == "$KUBE_RECIPE" ]]
}

cp_ensure_binaries() {
  _cp_binaries_ready && return 0
  cp_ensure_deps
  mkdir -p "$MIRRORD_OPERATOR_CACHE/kube"
  (
    exec 9>"$MIRRORD_OPERATOR_CACHE/kube/.build.lock"
    log "waiting for the build lock ($MIRRORD_OPERATOR_CACHE/kube/.build.lock)"
    flock -w 1800 9 || die "could not take the build lock within 30 min"
    _cp_binaries_ready && exit 0 # another run built it while we waited
    _cp_build
  )
}

_cp_build() {
  local work started=$SECONDS
  work="$(mktemp -d "$MIRRORD_OPERATOR_CACHE/kube/.build.XXXXXX")"
  # shellcheck disable=SC2064 # expand now: the trap must remove this very directory
  trap "chmod -R u+w '$work' 2>/dev/null; rm -rf '$work'" EXIT
  log "building ${KUBE_BINARIES[*]} $KUBE_VERSION (takes 5-25 min on 2 cores; log: $work/build.log)"

  # 1. The source package, through a private apt source list (system lists untouched).
  mkdir -p "$work/apt/lists/partial" "$work/src"
  _cp_deb_src_lines >"$work/apt/sources.list"
  [[ -s "$work/apt/sources.list" ]] || die "no Debian mirror found in /etc/apt to fetch the source package from"
  local apt_opts=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/apt/lists" -o Debug::NoLocking=1)
  apt-get "${apt_opts[@]}" update -q >"$work/build.log" 2>&1 || { tail -20 "$work/build.log" >&2; die "apt-get update (deb-src) failed"; }
  (cd "$work/src" && apt-get "${apt_opts[@]}" source --download-only "kubernetes=$KUBE_DEB_SRC_VERSION") >>"$work/build.log" 2>&1 ||
    { tail -20 "$work/build.log" >&2; die "apt-get source kubernetes=$KUBE_DEB_SRC_VERSION failed"; }
  local origs=("$work"/src/kubernetes_*.orig.tar.*) orig
  orig="${origs[0]}"
  [[ -f "$orig" ]] || die "source package has no orig tarball"

  # 2. GOPATH layout: the tree only builds in GOPATH mode (module mode wants go.mod updates).
  mkdir -p "$work/gopath/src/k8s.io" "$work/tree"
  tar -xf "$orig" -C "$work/tree" --strip-components=1
  ln -s "$work/tree" "$work/gopath/src/k8s.io/kubernetes"
  export GOPATH="$work/gopath" GO111MODULE=off GOFLAGS="" CGO_ENABLED=0
  local pkgroot="$work/gopath/src/k8s.io/kubernetes"

  # The vendored reflect2 1.0.1 iterates maps through runtime internals that changed in Go 1.18: built
  # with Debian's Go 1.19 the apiserver segfaults (aeshashbody) as soon as a webhook returns a patch.
  # Debian's reflect2 1.0.2 and the json-iterator release made for it (1.1.12) fix that.
  log "replacing vendored reflect2/json-iterator with Debian's"
  mkdir -p "$work/debs" "$work/gocode"
  (cd "$work/debs" && apt-get "${apt_opts[@]}" download golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev) >>"$work/build.log" 2>&1 ||
    { tail -20 "$work/build.log" >&2; die "apt-get download of reflect2/json-iterator failed"; }
  local deb lib
  for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/gocode"; done
  for lib in github.com/modern-go/reflect2 github.com/json-iterator/go; do
    [[ -d "$work/gocode/usr/share/gocode/src/$lib" ]] || die "Debian package lacks $lib"
    rm -rf "$work/tree/vendor/$lib"
    cp -r "$work/gocode/usr/share/gocode/src/$lib" "$work/tree/vendor/$lib"
    find "$work/tree/vendor/$lib" -name '*_test.go' -delete
  done

  # By default the kubelet rewrites host sysctls (kernel.panic_on_oops=1, vm.overcommit_memory=1, ...) to
  # what it expects; on a developer's machine or a shared CI VM it must only warn.
  local cm="$work/tree/pkg/kubelet/cm/container_manager_linux.go"
  sed -i 's/^\tb := KernelTunableModify$/\tb := KernelTunableWarn \/\/ never change host sysctls/' "$cm"
  grep -q 'b := KernelTunableWarn // never change host sysctls' "$cm" || die "kubelet sysctl patch did not apply to $cm"

  # 3. The one generated file the tarball lacks: pkg/generated/openapi/zz_generated.openapi.go.
  log "generating openapi definitions"
  (cd "$pkgroot" && go build -o "$work/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen) >>"$work/build.log" 2>&1 ||
    { tail -20 "$work/build.log" >&2; die "building openapi-gen failed"; }
  # -R: vendor/k8s.io/* are symlinks into staging/, which grep -r would not follow.
  local inputs
  inputs="$(cd "$pkgroot" && grep -Rl --include='*.go' '+k8s:openapi-gen=' pkg vendor/k8s.io cmd plugin |
    grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' |
    xargs -n1 dirname | sort -u | sed 's|^|k8s.io/kubernetes/|' | paste -sd,)"
  (cd "$pkgroot" && "$work/openapi-gen" -i "$inputs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
    -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$work/openapi-report.txt" -o "$GOPATH/src") >>"$work/build.log" 2>&1 ||
    { tail -20 "$work/build.log" >&2; die "openapi-gen failed"; }
  # The full set of definitions is several MB; a small file means most input packages were missed.
  (($(stat -c %s "$pkgroot/pkg/generated/openapi/zz_generated.openapi.go" 2>/dev/null || echo 0) > 1000000)) ||
    die "openapi-gen produced too little (inputs: $(tr ',' '\n' <<<"$inputs" | grep -c .) packages)"

  # 4. The binaries, with a real version so /version reports $KUBE_VERSION instead of v0.0.0-master.
  local ldflags="" p minor="${KUBE_VERSION#v1.}"
  minor="${minor%%.*}"
  for p in k8s.io/kubernetes/vendor/k8s.io/component-base/version k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
    ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ldflags+=" -X $p.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  mkdir -p "$work/out"
  local bin
  for bin in "${KUBE_BINARIES[@]/pause/}"; do
    [[ -n "$bin" ]] || continue
    log "go build $bin"
    (cd "$pkgroot" && go build -ldflags "-s -w $ldflags" -o "$work/out/$bin" "k8s.io/kubernetes/cmd/$bin") >>"$work/build.log" 2>&1 ||
      { tail -30 "$work/build.log" >&2; die "go build $bin failed"; }
  done
  # The pod sandbox image's only binary: Kubernetes' own pause, static, from the same tree.
  log "gcc pause"
  gcc -Os -static -DVERSION="$KUBE_VERSION" -o "$work/out/pause" "$work/tree/build/pause/linux/pause.c" >>"$work/build.log" 2>&1 ||
    { tail -30 "$work/build.log" >&2; die "building pause failed"; }
  "$work/out/kube-apiserver" --version | grep -qx "Kubernetes $KUBE_VERSION" || die "built kube-apiserver reports: $("$work/out/kube-apiserver" --version)"

  echo "$KUBE_RECIPE" >"$work/out/.recipe"

  # 5. Publish atomically.
  rm -rf "$KUBE_BIN_DIR.old"
  [[ -e "$KUBE_BIN_DIR" ]] && mv "$KUBE_BIN_DIR" "$KUBE_BIN_DIR.old"
  mv "$work/out" "$KUBE_BIN_DIR"
  rm -rf "$KUBE_BIN_DIR.old"
  log "built $KUBE_VERSION in $((SECONDS - started))s → $KUBE_BIN_DIR"
}

# ---- running it --------------------------------------------------------------------------------------
# State of a started control plane lives in $CP_DIR (a temp dir, or the demo's fixed dir):
#   pids          "<pid> <binary path>" per process this harness started (stop kills exactly these)
#   owner         PID of the shell that owns it (stale dirs of dead owners are reaped on the next start)
#   kubeconfig    admin kubeconfig (token in system:masters)
#   pki/ etcd/ logs/

_cp_openssl_ca() { # DIR NAME CN
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$3" \
    -keyout "$1/$2.key" -out "$1/$2.crt" >/dev/null 2>&1
}

_cp_openssl_leaf() { # DIR NAME CN CA SAN(or "")
  local dir="$1" name="$2" cn="$3" ca="$4" san="$5" ext="$1/$2.ext"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$cn" -keyout "$dir/$name.key" -out "$dir/$name.csr" >/dev/null 2>&1
  if [[ -n "$san" ]]; then
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" >"$ext"
  else
    printf 'extendedKeyUsage=clientAuth\n' >"$ext"
  fi
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$ca.crt" -CAkey "$dir/$ca.key" -CAcreateserial \
    -days 2 -extfile "$ext" -out "$dir/$name.crt" >/dev/null 2>&1
}

# Starts a background process and records its PID. nohup execs (same PID) and keeps the demo's processes
# alive after the terminal closes; the harness' trap stops them by PID in every other case.
_cp_spawn() { # NAME BINARY ARGS...
  local name="$1" bin="$2"
  shift 2
  nohup "$bin" "$@" >"$CP_DIR/logs/$name.log" 2>&1 </dev/null &
  echo "$! $bin" >>"$CP_DIR/pids"
}

# cp_start DIR: starts etcd, kube-apiserver and kube-controller-manager on free loopback ports with state in
# DIR (created). Exports KUBECONFIG. On failure prints the failing component's log tail.
cp_start() {
  CP_DIR="$1"
  export CP_DIR
  mkdir -p "$CP_DIR"/{pki,etcd,logs}
  echo "$$" >"$CP_DIR/owner"
  : >"$CP_DIR/pids"
  local pki="$CP_DIR/pki" etcd_port etcd_peer api_port token
  _cp_openssl_ca "$pki" ca kubernetes-ca
  _cp_openssl_leaf "$pki" apiserver kube-apiserver ca "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1"
  _cp_openssl_ca "$pki" front-proxy-ca front-proxy-ca
  _cp_openssl_leaf "$pki" front-proxy-client front-proxy-client front-proxy-ca ""
  openssl genrsa -out "$pki/sa.key" 2048 >/dev/null 2>&1
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" >/dev/null 2>&1
  token="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
  echo "$token,admin,admin,system:masters" >"$pki/tokens.csv"
  # With a node (node_prepare ran): the kubelet's identity for the Node authorizer, and the apiserver on the
  # `kubernetes` ClusterIP held by the node's bridge, where pods reach it. Without: loopback, a free port.
  local bind_ip=127.0.0.1
  if [[ -f "$CP_DIR/node/token" ]]; then
    echo "$(cat "$CP_DIR/node/token"),system:node:$NODE_NAME,$NODE_NAME,system:nodes" >>"$pki/tokens.csv"
    bind_ip="$NODE_API_IP"
  fi

  etcd_port="$(free_port)"
  etcd_peer="$(free_port)"
  _cp_spawn etcd /usr/bin/etcd --name e2e --data-dir "$CP_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "e2e=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync
  wait_for "etcd health" 30 curl -sf "http://127.0.0.1:$etcd_port/health" || { tail -20 "$CP_DIR/logs/etcd.log" >&2; return 1; }

  api_port="$(free_port)"
  [[ "$bind_ip" == 127.0.0.1 ]] || api_port=443
  _cp_spawn kube-apiserver "$KUBE_BIN_DIR/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$bind_ip" --advertise-address "$bind_ip" --secure-port "$api_port" --insecure-port 0 \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" --client-ca-file "$pki/ca.crt" \
    --token-auth-file "$pki/tokens.csv" --authorization-mode Node,RBAC \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc --api-audiences https://kubernetes.default.svc \
    --service-cluster-ip-range 10.0.0.0/24 --allow-privileged=true \
    --requestheader-client-ca-file "$pki/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
    --enable-aggregator-routing=true --kubelet-preferred-address-types InternalIP
  cat >"$CP_DIR/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: mirrord-e2e
  cluster:
    server: https://$bind_ip:$api_port
    certificate-authority: $pki/ca.crt
users:
- name: admin
  user:
    token: $token
contexts:
- name: mirrord-e2e
  context: {cluster: mirrord-e2e, user: admin}
current-context: mirrord-e2e
KUBECONFIG
  export KUBECONFIG="$CP_DIR/kubeconfig"
  wait_for "kube-apiserver /readyz" 90 curl -sf --cacert "$pki/ca.crt" -H "Authorization: Bearer $token" \
    "https://$bind_ip:$api_port/readyz" || { tail -30 "$CP_DIR/logs/kube-apiserver.log" >&2; return 1; }

  _cp_spawn kube-controller-manager "$KUBE_BIN_DIR/kube-controller-manager" \
    --kubeconfig "$CP_DIR/kubeconfig" --port 0 --secure-port 0 --leader-elect=false \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key"
  # Pods can only be admitted once the default ServiceAccount and its token exist (ServiceAccount admission, 1.20).
  wait_for "the default ServiceAccount's token" 90 _cp_default_sa_ready ||
    { tail -30 "$CP_DIR/logs/kube-controller-manager.log" >&2; return 1; }
  log "control plane up: $KUBECONFIG ($("$KUBECTL" version -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])'))"
}

_cp_default_sa_ready() {
  local n
  n="$("$KUBECTL" -n default get serviceaccount default -o jsonpath='{.secrets[*].name}')" && [[ -n "$n" ]]
}

# cp_stop DIR: kills exactly the processes recorded in DIR/pids (only if the PID still runs that binary,
# so a reused PID is never hit) in reverse start order.
cp_stop() {
  local dir="$1" pid bin lines=()
  [[ -f "$dir/pids" ]] || return 0
  mapfile -t lines <"$dir/pids"
  local i
  for ((i = ${#lines[@]} - 1; i >= 0; i--)); do
    read -r pid bin <<<"${lines[i]}"
    if pid_runs "$pid" "$bin"; then kill_pid "$pid"; fi
  done
  : >"$dir/pids"
}

# Reaps temp control planes whose owning shell died without cleaning up (e.g. SIGKILL).
cp_reap_stale() {
  local d owner
  for d in "${TMPDIR:-/tmp}"/mirrord-e2e.*; do
    [[ -d "$d" && -f "$d/owner" ]] || continue
    owner="$(cat "$d/owner")"
    # Alive and not a zombie (a killed owner can linger as one until its parent reaps it).
    [[ -r "/proc/$owner/stat" && "$(cut -d' ' -f3 "/proc/$owner/stat")" != Z ]] && continue
    log "reaping stale e2e state $d (owner $owner is gone)"
    declare -F node_stop >/dev/null && node_stop "$d"
    cp_stop "$d"
    rm -rf "$d"
  done
}
