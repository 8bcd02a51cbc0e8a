#!/usr/bin/env python3
"""Checks the coordinator objects of a `helm template` render of charts/mirrord-operator
(coordinator.enabled=true) against the TLS contract of docs/install.md.

Usage: coordinator-chart-check.py --mode self-managed|cert-manager [--namespace NS] [--issuer KIND/NAME]
       [--broker-namespaces '*'|NS,...] RENDER.yaml

self-managed: the coordinator keeps its own CA and patches the APIService's caBundle; nothing is mounted.
cert-manager: a Certificate writes the coordinator's TLS Secret, the Secret is mounted read-only where the
cert/key files point, the APIService asks cainjector for that Certificate's CA, the coordinator may not
patch the APIService, and the webhook reads the same Secret for the agents' CA bundle.

Prints one line per problem and exits 1 when there is any; exits 0 silently otherwise.
"""
import argparse
import os
import sys

try:
    import yaml
except ImportError:  # chart-lint.sh installs PyYAML into its cache when it is missing
    sys.exit("coordinator-chart-check: PyYAML is missing (pip install pyyaml)")

API_SERVICE = "v1.operator.metalbear.co"
INJECT = "cert-manager.io/inject-ca-from"


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def grants(role, resource, verb):
    return [r for r in role.get("rules") or []
            if resource in (r.get("resources") or []) and verb in (r.get("verbs") or [])]


def bound_roles(of_kind, sa):
    """(kind, namespace, name) of every Role/ClusterRole bound to ServiceAccount SA."""
    out = set()
    for b in of_kind("RoleBinding") + of_kind("ClusterRoleBinding"):
        if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa for s in b.get("subjects") or []):
            ref = b["roleRef"]
            out.add((ref["kind"], b["metadata"].get("namespace") if ref["kind"] == "Role" else None, ref["name"]))
    return out


def check_identities(expect, of_kind, coord, webhook, secret, brokers):
    """The coordinator runs as its own ServiceAccount; the webhook's may read only the coordinator's
    CA Secret (by name); the coordinator reads Secrets cluster-wide only with BROKERS ['*'], else
    exactly in the BROKERS namespaces (besides its own)."""
    coord_sa = coord["spec"]["template"]["spec"].get("serviceAccountName")
    webhook_sa = webhook["spec"]["template"]["spec"].get("serviceAccountName")
    expect(coord_sa and coord_sa != webhook_sa,
           f"coordinator runs as the webhook's ServiceAccount {webhook_sa!r}: it would hand the webhook its rights")
    expect(any(a["metadata"]["name"] == coord_sa for a in of_kind("ServiceAccount")),
           f"coordinator: ServiceAccount {coord_sa!r} is not rendered")
    roles = {(r["kind"], r["metadata"].get("namespace") if r["kind"] == "Role" else None, r["metadata"]["name"]): r
             for r in of_kind("Role") + of_kind("ClusterRole")}
    webhook_reads = [rule for key in bound_roles(of_kind, webhook_sa) if key in roles
                     for rule in grants(roles[key], "secrets", "get")]
    expect(any(rule.get("resourceNames") == [secret] for rule in webhook_reads),
           f"webhook: cannot get the coordinator's TLS Secret {secret!r} (agents would not trust the coordinator)")
    cluster_wide = brokers == ["*"]
    readable = set()
    for key in bound_roles(of_kind, coord_sa):
        if key in roles and grants(roles[key], "secrets", "get"):
            if key[0] == "ClusterRole":
                expect(cluster_wide, f"ClusterRole {key[2]}: the coordinator may read every Secret of the cluster, "
                                     "but coordinator.brokerSecretNamespaces is not ['*']")
            readable.add(key[1])
    if cluster_wide:
        expect(None in readable, "coordinator.brokerSecretNamespaces ['*'] grants no cluster-wide Secret read")
    else:
        own = coord["metadata"]["namespace"]
        expect(readable - {own} == set(brokers),
               f"coordinator reads Secrets in {sorted(readable - {own})}, want exactly {sorted(brokers)}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["self-managed", "cert-manager"], required=True)
    p.add_argument("--namespace", default="mirrord")
    p.add_argument("--issuer", help="KIND/NAME the coordinator's Certificate must use (default: a rendered Issuer)")
    p.add_argument("--broker-namespaces", default="",
                   help="coordinator.brokerSecretNamespaces of the render: '*' or NS,NS (default: none)")
    p.add_argument("render")
    args = p.parse_args()
    with open(args.render) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    problems = []

    def expect(cond, msg):
        if not cond:
            problems.append(msg)
        return cond

    def of_kind(kind):
        return [d for d in docs if d.get("kind") == kind]

    deployments = {d["metadata"]["labels"].get("app.kubernetes.io/component"): d for d in of_kind("Deployment")}
    coord = deployments.get("coordinator")
    webhook = deployments.get("webhook")
    if not expect(coord and webhook, "want a webhook and a coordinator Deployment"):
        return report(problems)
    pod = coord["spec"]["template"]["spec"]
    ctr = pod["containers"][0]
    env = env_of(ctr)
    secret = env.get("MIRRORD_OPERATOR_COORDINATOR_TLS_SECRET_NAME")
    expect(env.get("MIRRORD_OPERATOR_TLS_MODE") == args.mode,
           f"coordinator: TLS mode {env.get('MIRRORD_OPERATOR_TLS_MODE')!r}, want {args.mode!r}")
    expect(env_of(webhook["spec"]["template"]["spec"]["containers"][0]).get(
        "MIRRORD_OPERATOR_COORDINATOR_TLS_SECRET_NAME") == secret,
        "webhook: does not read the coordinator's TLS Secret (agents would not trust the coordinator)")

    brokers = [n for n in args.broker_namespaces.split(",") if n]
    check_identities(expect, of_kind, coord, webhook, secret, brokers)

    services = [s for s in of_kind("APIService") if s["metadata"]["name"] == API_SERVICE]
    if not expect(len(services) == 1, f"want 1 APIService {API_SERVICE}"):
        return report(problems)
    api_service = services[0]
    expect("caBundle" not in api_service["spec"], "APIService: caBundle rendered (it would fight the injector)")
    annotations = api_service["metadata"].get("annotations") or {}

    roles = [r for r in of_kind("ClusterRole") if r["metadata"]["name"].endswith("-coordinator")]
    api_verbs = set()
    for role in roles:
        for rule in role.get("rules") or []:
            if "apiservices" in (rule.get("resources") or []):
                expect(rule.get("resourceNames") == [API_SERVICE], "ClusterRole: apiservices not limited by name")
                api_verbs |= set(rule.get("verbs") or [])
    expect("get" in api_verbs, "coordinator: cannot get its APIService (readiness checks the caBundle)")

    volumes = [v for v in pod.get("volumes") or [] if "secret" in v]
    certificates = [c for c in of_kind("Certificate") if c["metadata"]["name"].startswith(
        coord["metadata"]["name"])]
    if args.mode == "self-managed":
        expect(not volumes, "coordinator: self-managed mode mounts a Secret")
        expect(not certificates, "self-managed mode renders a coordinator Certificate")
        expect(INJECT not in annotations, "APIService: inject-ca-from in self-managed mode")
        expect("patch" in api_verbs, "coordinator: cannot patch its APIService's caBundle")
        return report(problems)

    expect("patch" not in api_verbs, "coordinator: may patch the APIService although cainjector owns caBundle")
    if not expect(len(certificates) == 1, f"want 1 coordinator Certificate, got {len(certificates)}"):
        return report(problems)
    cert = certificates[0]
    cert_ns, cert_name = cert["metadata"]["namespace"], cert["metadata"]["name"]
    expect(annotations.get(INJECT) == f"{cert_ns}/{cert_name}",
           f"APIService: {INJECT} {annotations.get(INJECT)!r}, want {cert_ns}/{cert_name}")
    expect(cert["spec"].get("secretName") == secret,
           f"Certificate {cert_name}: writes {cert['spec'].get('secretName')!r}, the coordinator reads {secret!r}")
    expect("server auth" in (cert["spec"].get("usages") or []), f"Certificate {cert_name}: no server auth usage")
    svc = api_service["spec"]["service"]
    want_dns = f"{svc['name']}.{svc['namespace']}.svc"
    expect(want_dns in (cert["spec"].get("dnsNames") or []),
           f"Certificate {cert_name}: lacks {want_dns}, the name kube-apiserver verifies")
    issuer = cert["spec"].get("issuerRef") or {}
    if args.issuer:
        kind, name = args.issuer.split("/", 1)
        expect((issuer.get("kind"), issuer.get("name")) == (kind, name),
               f"Certificate {cert_name}: issuer {issuer}, want {args.issuer}")
    else:
        issuers = [i["metadata"]["name"] for i in of_kind("Issuer")]
        expect(issuer.get("kind") == "Issuer" and issuer.get("name") in issuers,
               f"Certificate {cert_name}: issuer {issuer} is not a rendered Issuer")
    cert_file = env.get("MIRRORD_OPERATOR_TLS_CERT_FILE") or ""
    key_file = env.get("MIRRORD_OPERATOR_TLS_KEY_FILE") or ""
    if expect(len(volumes) == 1 and volumes[0]["secret"].get("secretName") == secret,
              f"coordinator: wants the Secret {secret} as its one Secret volume, got {volumes}"):
        mounts = [m for m in ctr.get("volumeMounts") or [] if m.get("name") == volumes[0]["name"]]
        expect(len(mounts) == 1 and mounts[0].get("readOnly") is True
               and mounts[0].get("mountPath") == os.path.dirname(cert_file) == os.path.dirname(key_file),
               f"coordinator: TLS Secret not mounted read-only where {cert_file} and {key_file} are")
    return report(problems)


def report(problems):
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
