#!/usr/bin/env python3
"""Checks a render of the chart's registry-mirror objects (registryMirror.enabled) against the contract:
the cluster-scoped k8s.osp.tech/v1 RegistryMirror CRD, the controller Deployment with NAMESPACE and
SECONDS_BETWEEN_STREAMS, and RBAC that reaches exactly what the controller touches.

  registry-mirror-chart-check.py RENDER [--namespace NS] [--release-namespace NS] [--seconds N] [--absent]
"""
import argparse
import sys

import yaml


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def rules_allow(rules, group, resource, verb):
    return any(group in r.get("apiGroups", []) and resource in r.get("resources", [])
               and verb in r.get("verbs", []) for r in rules)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("render")
    p.add_argument("--namespace", default="kube-extra")
    p.add_argument("--release-namespace", default="mirrord")
    p.add_argument("--seconds", default="30")
    p.add_argument("--absent", action="store_true", help="registryMirror disabled: nothing of it rendered")
    a = p.parse_args()
    docs = load(a.render)
    problems = []

    def expect(cond, msg):
        if not cond:
            problems.append(msg)

    mine = [d for d in docs if (d.get("metadata") or {}).get("labels", {}).get("app.kubernetes.io/component")
            == "registry-mirror"]
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"
            and d["metadata"]["name"] == "registrymirrors.k8s.osp.tech"]
    if a.absent:
        expect(not mine and not crds, f"registry-mirror objects rendered while disabled: {[d['kind'] for d in mine]}")
    else:
        expect(len(crds) == 1, "want the CRD registrymirrors.k8s.osp.tech")
        if crds:
            spec = crds[0]["spec"]
            expect(spec["group"] == "k8s.osp.tech" and spec["scope"] == "Cluster", "CRD group/scope")
            expect(spec["names"]["kind"] == "RegistryMirror", "CRD kind")
            v1 = [v for v in spec["versions"] if v["name"] == "v1"]
            expect(len(v1) == 1 and v1[0]["served"] and v1[0]["storage"], "CRD serves and stores v1")
            if v1:
                expect("status" in (v1[0].get("subresources") or {}), "CRD has the status subresource")
                props = v1[0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
                expect("upstreamUrl" in props.get("required", []), "spec.upstreamUrl is required")
                for field in ("upstreamUrl", "credentialsSecret", "volumeClaimTemplate"):
                    expect(field in props["properties"], f"spec.{field} in the schema")
            expect(crds[0]["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep",
                   "CRD kept on uninstall")
        deps = [d for d in mine if d["kind"] == "Deployment"]
        expect(len(deps) == 1, f"want 1 registry-mirror Deployment, got {len(deps)}")
        sa = None
        if deps:
            dep = deps[0]
            expect(dep["metadata"]["namespace"] == a.release_namespace, "Deployment in the release namespace")
            expect(dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate",
                   "one controller at a time")
            pod = dep["spec"]["template"]["spec"]
            sa = pod["serviceAccountName"]
            ctr = pod["containers"][0]
            expect(ctr["args"] == ["registry-mirror"], f"args {ctr['args']}")
            env = {e["name"]: e.get("value") for e in ctr["env"]}
            expect(env.get("NAMESPACE") == a.namespace, f"NAMESPACE {env.get('NAMESPACE')}")
            expect(env.get("SECONDS_BETWEEN_STREAMS") == a.seconds,
                   f"SECONDS_BETWEEN_STREAMS {env.get('SECONDS_BETWEEN_STREAMS')}")
            expect(env.get("MIRRORD_OPERATOR_MIRROR_AGENT_IMAGE") == ctr["image"],
                   "node agents run the operator's own image")
            expect(pod["containers"][0]["securityContext"].get("readOnlyRootFilesystem") is True,
                   "read-only root filesystem")
        sas = [d for d in mine if d["kind"] == "ServiceAccount"]
        expect([d["metadata"]["name"] for d in sas] == [sa], f"ServiceAccount {sa} rendered")
        croles = [d for d in mine if d["kind"] == "ClusterRole"]
        expect(len(croles) == 1, "one ClusterRole")
        if croles:
            rules = croles[0]["rules"]
            for verb in ("list", "watch", "patch"):
                expect(rules_allow(rules, "k8s.osp.tech", "registrymirrors", verb), f"registrymirrors {verb}")
            expect(rules_allow(rules, "k8s.osp.tech", "registrymirrors/status", "patch"), "status patch")
            expect(rules_allow(rules, "k8s.osp.tech", "registrymirrors/finalizers", "update"),
                   "finalizers update (blockOwnerDeletion)")
            expect(rules_allow(rules, "", "events", "create"), "core events create")
            expect(not rules_allow(rules, "", "secrets", "get"), "no cluster-wide Secret access")
        roles = [d for d in mine if d["kind"] == "Role"]
        expect(len(roles) == 1 and roles[0]["metadata"]["namespace"] == a.namespace,
               f"one Role in {a.namespace}")
        if roles:
            rules = roles[0]["rules"]
            for group, res in (("", "services"), ("", "secrets"), ("apps", "statefulsets"), ("apps", "daemonsets")):
                for verb in ("get", "list", "watch", "patch"):
                    expect(rules_allow(rules, group, res, verb), f"Role: {res} {verb}")
        for kind, ns in (("ClusterRoleBinding", None), ("RoleBinding", a.namespace)):
            binds = [d for d in mine if d["kind"] == kind]
            expect(len(binds) == 1, f"one {kind}")
            for b in binds:
                expect(b["metadata"].get("namespace") == ns, f"{kind} namespace")
                expect(b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": a.release_namespace}],
                       f"{kind} subjects {b['subjects']}")
        nss = [d for d in mine if d["kind"] == "Namespace"]
        if a.namespace == a.release_namespace:
            expect(not nss, "no Namespace when the mirrors live in the release namespace")
        else:
            expect([d["metadata"]["name"] for d in nss] == [a.namespace], f"Namespace {a.namespace}")
    for msg in problems:
        print(f"registry-mirror-chart-check: {msg}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
