#!/usr/bin/env bash
# Real-pod numbers for docs/benchmarks.md, against a running `make demo` (its local node):
#   1. time from `kubectl create` of a one-replica Deployment to its pod Ready, without and with injection,
#      in alternating rounds (same machine state for both);
#   2. the memory cgroup of the agent container vs the pod's pause container (memory.usage_in_bytes, and
#      the rss line of memory.stat, which leaves out page cache such as the binary's file pages).
#
#   make demo && e2e/tools/bench-pods.sh [ROUNDS]      (default 10 rounds)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../lib/common.sh
source "$here/lib/common.sh"
# shellcheck source=../lib/node.sh
source "$here/lib/node.sh"
rounds="${1:-10}"
demo="${MIRRORD_OPERATOR_DEMO_DIR:-$HOME/.local/state/mirrord-operator/demo}"
[[ -f "$demo/kubeconfig" ]] || die "no demo running ($demo/kubeconfig missing): make demo first"
export KUBECONFIG="$demo/kubeconfig"
KUBECTL="$("$here/tools/ensure-helm.sh" kubectl)"
k() { "$KUBECTL" --request-timeout=30s "$@"; }
# shellcheck source=../lib/testlib.sh
source "$here/lib/testlib.sh"
TEST_IMAGE="$E2E_APP_IMAGE"

ns_plain="bench-plain"
ns_inj="bench-injected"
cleanup() { k delete namespace "$ns_plain" "$ns_inj" --wait=false >/dev/null 2>&1 || true; }
trap cleanup EXIT
for ns in "$ns_plain" "$ns_inj"; do
  k delete namespace "$ns" --ignore-not-found --wait=true --timeout=120s >/dev/null
  k create namespace "$ns" >/dev/null
done
k label namespace "$ns_inj" mirrord-injection=enabled >/dev/null
# The default ServiceAccount (and its token) must exist before pods can be admitted.
for ns in "$ns_plain" "$ns_inj"; do
  wait_for "default ServiceAccount token in $ns" 60 bash -c "[[ -n \"\$('$KUBECTL' -n $ns get sa default -o jsonpath='{.secrets[0].name}')\" ]]"
done

# One measurement: seconds from create to the pod's Ready condition (watch-based, no polling interval).
measure() {
  local ns="$1" name="$2" t0 t1 pod=""
  t0="$(date +%s.%N)"
  app_deployment_yaml "$name" 1 | k -n "$ns" create -f - >/dev/null
  local deadline=$((SECONDS + 60))
  while [[ -z "$pod" ]]; do
    ((SECONDS < deadline)) || die "no pod for deployment $ns/$name within 60 s"
    pod="$(pods_of "$ns" "app=$name" | head -1)"
  done
  k -n "$ns" wait --for=condition=Ready "pod/$pod" --timeout=120s >/dev/null
  t1="$(date +%s.%N)"
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}

plain=() injected=()
for ((i = 1; i <= rounds; i++)); do
  plain+=("$(measure "$ns_plain" "p$i")")
  injected+=("$(measure "$ns_inj" "i$i")")
  log "round $i: plain ${plain[-1]} s, injected ${injected[-1]} s"
  k -n "$ns_plain" delete deploy "p$i" --wait=false >/dev/null
  if ((i < rounds)); then k -n "$ns_inj" delete deploy "i$i" --wait=false >/dev/null; fi
done

python3 - "${plain[*]}" "${injected[*]}" <<'PY'
import statistics, sys
p = [float(x) for x in sys.argv[1].split()]
i = [float(x) for x in sys.argv[2].split()]
def row(name, xs):
    xs = sorted(xs)
    print(f"| {name} | {len(xs)} | {statistics.median(xs):.2f} | {xs[0]:.2f} | {xs[-1]:.2f} |")
print("| Deployment create -> pod Ready | rounds | median s | min s | max s |")
print("|---|---|---|---|---|")
row("without injection", p)
row("with injection (agent beside the app)", i)
print(f"\ninjection adds {statistics.median(i) - statistics.median(p):+.2f} s (median)")
PY

# Memory of the last injected pod's containers, from the host's memory cgroup hierarchy (cgroup v1).
pod="$(pods_of "$ns_inj" "app=i$rounds" | head -1)"
uid="$(k -n "$ns_inj" get pod "$pod" -o jsonpath='{.metadata.uid}')"
agent_id="$(k -n "$ns_inj" get pod "$pod" -o jsonpath='{.status.containerStatuses[?(@.name=="mirrord-agent")].containerID}')"
app_id="$(k -n "$ns_inj" get pod "$pod" -o jsonpath='{.status.containerStatuses[?(@.name=="app")].containerID}')"
agent_id="${agent_id#containerd://}"
app_id="${app_id#containerd://}"
sleep 10 # let the agent settle after its start
poddir="$(find /sys/fs/cgroup/memory/kubepods -maxdepth 2 -type d -name "pod$uid" | head -1)"
[[ -n "$poddir" ]] || die "no memory cgroup for pod $uid"
echo
echo "| container of $ns_inj/$pod | memory.usage_in_bytes MiB | rss MiB |"
echo "|---|---|---|"
for d in "$poddir"/*/; do
  id="$(basename "$d")"
  case "$id" in
    "$agent_id") name="mirrord-agent" ;;
    "$app_id") name="app (busybox httpd)" ;;
    *) name="pause (sandbox)" ;;
  esac
  python3 - "$name" "$d" <<'PY'
import sys
name, d = sys.argv[1], sys.argv[2]
usage = int(open(d + "memory.usage_in_bytes").read())
rss = next(int(l.split()[1]) for l in open(d + "memory.stat") if l.startswith("rss "))
print(f"| {name} | {usage / 2**20:.2f} | {rss / 2**20:.2f} |")
PY
done
