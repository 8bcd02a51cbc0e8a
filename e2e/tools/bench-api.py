#!/usr/bin/env python3
"""Latency of the coordinator's API through kube-apiserver's aggregator, beside built-in GETs, in the
same run (docs/benchmarks.md, "Coordinator API through kube-apiserver").

Reads the kubeconfig's server, CA file and token (the e2e control plane's admin kubeconfig) and sends
ROUNDS rounds; each round GETs every path once, in a rotating order, over one keep-alive connection per
path, so that every path sees the same machine state. Prints one line per path: count, p50, p90, p99,
max (milliseconds) and the p50/p99 ratio to the built-in namespace GET. Exits 1 when a request fails.

Usage: bench-api.py KUBECONFIG [ROUNDS] [TARGET_NAMESPACE]
"""
import http.client
import ssl
import sys
import time
from urllib.parse import urlparse

import yaml

BASELINE = "built-in: GET /api/v1/namespaces/default"


def percentile(sorted_values, q):
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        config = yaml.safe_load(f)
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    target_ns = sys.argv[3] if len(sys.argv) > 3 else "default"
    cluster = config["clusters"][0]["cluster"]
    token = config["users"][0]["user"]["token"]
    server = urlparse(cluster["server"])
    context = ssl.create_default_context(cafile=cluster["certificate-authority"])

    paths = {
        BASELINE: "/api/v1/namespaces/default",
        "built-in: GET configmap kube-root-ca.crt": "/api/v1/namespaces/default/configmaps/kube-root-ca.crt",
        "aggregated: GET mirrordoperators/operator": "/apis/operator.metalbear.co/v1/mirrordoperators/operator",
        f"aggregated: LIST targets in {target_ns}": f"/apis/operator.metalbear.co/v1/namespaces/{target_ns}/targets",
    }
    connections = {
        name: http.client.HTTPSConnection(server.hostname, server.port, context=context, timeout=10)
        for name in paths
    }
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    samples = {name: [] for name in paths}
    names = list(paths)
    # Warm-up: connections, discovery caches, the aggregator's proxy transport.
    for name in names:
        for _ in range(20):
            get(connections[name], paths[name], headers)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            started = time.perf_counter()
            get(connections[name], paths[name], headers)
            samples[name].append((time.perf_counter() - started) * 1000)

    base = sorted(samples[BASELINE])
    base_p50, base_p99 = percentile(base, 0.5), percentile(base, 0.99)
    print(f"{'path':50} {'n':>5} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}  p50/base p99/base (ms)")
    for name in names:
        values = sorted(samples[name])
        p50, p90, p99 = (percentile(values, q) for q in (0.5, 0.9, 0.99))
        print(f"{name:50} {len(values):5} {p50:7.2f} {p90:7.2f} {p99:7.2f} {values[-1]:7.2f}"
              f"  {p50 / base_p50:6.2f}x {p99 / base_p99:6.2f}x")


def get(connection, path, headers):
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        sys.exit(f"GET {path}: {response.status} {body[:300]!r}")


if __name__ == "__main__":
    main()
