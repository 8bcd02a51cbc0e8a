#!/usr/bin/env python3
"""Checks a `helm template` render of charts/mirrord-operator against the install contract.

Usage: chart-check.py --mode self-managed|cert-manager [--openshift] [--url URL] [--namespace NS]
                      [--failure-policy P] [--manifests DIR] RENDER.yaml
       chart-check.py --docs docs/install.md --values charts/mirrord-operator/values.yaml
       chart-check.py --print-env RENDER.yaml   prints the webhook's env as NAME=VALUE lines (for running
                                                the webhook outside the cluster with the chart's settings)

Prints one line per problem and exits 1 when there is any; exits 0 silently otherwise.
"""
import argparse
import os
import sys
from urllib.parse import urlparse

try:
    import yaml
except ImportError:  # chart-lint.sh installs PyYAML into its cache when it is missing
    sys.exit("chart-check: PyYAML is missing (pip install pyyaml, or apt-get install python3-yaml)")

NAMESPACED = {
    "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service", "PodDisruptionBudget",
    "Issuer", "Certificate", "Secret", "ConfigMap",
}
ALWAYS_EXCLUDED = {"kube-system", "kube-public", "kube-node-lease"}
ENTRY_NAMESPACE = "namespace.inject.mirrord.metalbear.co"
ENTRY_OBJECT = "object.inject.mirrord.metalbear.co"
INJECT_LABEL = "mirrord.metalbear.co/inject"
# (apiGroup, resource) -> verbs the operator may hold. Anything else in its roles is a finding.
ALLOWED_RULES = {
    ("", "namespaces"): {"get", "list", "watch"},
    ("", "pods"): {"list", "watch"},
    ("queues.mirrord.metalbear.co", "mirrordworkloadqueueregistries"): {"list", "watch"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"): {"get", "patch"},
    ("", "secrets"): {"get", "update", "patch", "create"},
    ("security.openshift.io", "securitycontextconstraints"): {"use"},
}
FORBIDDEN_CAPS = {"SYS_ADMIN", "SYS_PTRACE", "ALL"}


class Checker:
    def __init__(self):
        self.problems = []

    def expect(self, cond, msg):
        if not cond:
            self.problems.append(msg)
        return cond


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def env_map(container):
    return {e.get("name"): e for e in container.get("env") or []}


def env_value(env, name):
    e = env.get(name)
    return None if e is None else e.get("value")


def check_render(c, docs, args):
    ns = args.namespace
    seen = set()
    for i, d in enumerate(docs):
        where = f"doc {i} ({d.get('kind')}/{(d.get('metadata') or {}).get('name')})"
        c.expect(isinstance(d.get("apiVersion"), str) and d["apiVersion"], f"{where}: no apiVersion")
        c.expect(isinstance(d.get("kind"), str) and d["kind"], f"{where}: no kind")
        meta = d.get("metadata") or {}
        c.expect(isinstance(meta.get("name"), str) and meta["name"], f"{where}: no metadata.name")
        labels = meta.get("labels") or {}
        for label in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                      "app.kubernetes.io/managed-by", "helm.sh/chart"):
            c.expect(label in labels, f"{where}: label {label} missing")
        if d.get("kind") in NAMESPACED and d.get("kind") != "RoleBinding":
            c.expect(meta.get("namespace") == ns, f"{where}: namespace {meta.get('namespace')!r}, want {ns!r}")
        key = (d.get("kind"), meta.get("namespace"), meta.get("name"))
        c.expect(key not in seen, f"{where}: rendered twice")
        seen.add(key)

    cert_manager = args.mode == "cert-manager"

    # Deployment
    deps = by_kind(docs, "Deployment")
    if not c.expect(len(deps) == 1, f"want 1 Deployment, got {len(deps)}"):
        return
    dep = deps[0]
    spec = dep.get("spec") or {}
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    tmpl = spec.get("template") or {}
    tlabels = (tmpl.get("metadata") or {}).get("labels") or {}
    c.expect(selector, "Deployment: empty selector")
    c.expect(all(tlabels.get(k) == v for k, v in selector.items()),
             f"Deployment: selector {selector} does not match template labels {tlabels}")
    c.expect(tlabels.get(INJECT_LABEL) == "false", "Deployment: operator pods must carry inject=false")
    c.expect(spec.get("replicas") == args.replicas, f"Deployment: replicas {spec.get('replicas')}, want {args.replicas}")
    pod = tmpl.get("spec") or {}
    containers = pod.get("containers") or []
    if not c.expect(len(containers) == 1, f"Deployment: want 1 container, got {len(containers)}"):
        return
    ctr = containers[0]
    c.expect(isinstance(ctr.get("image"), str) and ":" in ctr["image"].rsplit("/", 1)[-1],
             f"Deployment: image {ctr.get('image')!r} has no tag")
    c.expect(ctr.get("args") == ["webhook"], f"Deployment: args {ctr.get('args')}, want ['webhook'] (settings go in env)")
    env = env_map(ctr)
    c.expect(len(env) == len(ctr.get("env") or []), "Deployment: duplicate env names")
    for name, e in env.items():
        c.expect(name == "RUST_LOG" or name.startswith("MIRRORD_OPERATOR_"), f"Deployment: unexpected env {name}")
        c.expect(isinstance(e.get("value"), str) and "valueFrom" not in e,
                 f"Deployment: env {name} must be a literal string (the e2e harness replays it)")
    want_env = {
        "MIRRORD_OPERATOR_NAMESPACE": ns,
        "MIRRORD_OPERATOR_TLS_MODE": args.mode,
        "MIRRORD_OPERATOR_NATIVE_SIDECAR": None,
        "MIRRORD_OPERATOR_AGENT_IMAGE": None,
        "MIRRORD_OPERATOR_LISTEN": None,
        "MIRRORD_OPERATOR_HEALTH_LISTEN": None,
        "MIRRORD_OPERATOR_AUDIT_INTERVAL": None,
        "MIRRORD_OPERATOR_LOG_FORMAT": None,
        "RUST_LOG": None,
    }
    if cert_manager:
        want_env.update({"MIRRORD_OPERATOR_TLS_CERT_FILE": None, "MIRRORD_OPERATOR_TLS_KEY_FILE": None})
    else:
        want_env.update({"MIRRORD_OPERATOR_SERVICE_NAME": None, "MIRRORD_OPERATOR_TLS_SECRET_NAME": None,
                         "MIRRORD_OPERATOR_WEBHOOK_CONFIG_NAME": None, "MIRRORD_OPERATOR_CERT_VALIDITY": None})
    for name, want in want_env.items():
        got = env_value(env, name)
        c.expect(got, f"Deployment: env {name} missing")
        if want is not None:
            c.expect(got == want, f"Deployment: env {name}={got!r}, want {want!r}")
    c.expect(str(env_value(env, "MIRRORD_OPERATOR_NATIVE_SIDECAR")) in ("auto", "always", "never"),
             "Deployment: MIRRORD_OPERATOR_NATIVE_SIDECAR not auto|always|never")
    c.expect(":" in str(env_value(env, "MIRRORD_OPERATOR_AGENT_IMAGE")), "Deployment: agent image has no tag")
    if args.url:
        host = urlparse(args.url).hostname
        sans = (env_value(env, "MIRRORD_OPERATOR_TLS_EXTRA_SANS") or "").split(",")
        c.expect(cert_manager or host in sans, f"Deployment: webhook.url host {host} not in MIRRORD_OPERATOR_TLS_EXTRA_SANS {sans}")
    excluded_env = set(filter(None, (env_value(env, "MIRRORD_OPERATOR_EXCLUDE_NAMESPACES") or "").split(",")))
    c.expect(set(args.exclude) <= excluded_env,
             f"Deployment: MIRRORD_OPERATOR_EXCLUDE_NAMESPACES {sorted(excluded_env)} lacks {args.exclude}")

    ports = {p.get("name"): p.get("containerPort") for p in ctr.get("ports") or []}
    listen_port = str(env_value(env, "MIRRORD_OPERATOR_LISTEN")).rsplit(":", 1)[-1]
    health_port = str(env_value(env, "MIRRORD_OPERATOR_HEALTH_LISTEN")).rsplit(":", 1)[-1]
    c.expect(str(ports.get("https")) == listen_port, f"Deployment: port https {ports.get('https')} != LISTEN {listen_port}")
    c.expect(str(ports.get("health")) == health_port, f"Deployment: port health {ports.get('health')} != HEALTH_LISTEN {health_port}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        http = (ctr.get(probe) or {}).get("httpGet") or {}
        c.expect(http.get("path") == path and http.get("port") in ("health", ports.get("health")),
                 f"Deployment: {probe} must GET {path} on the health port, got {http}")
    c.expect((ctr.get("resources") or {}).get("requests"), "Deployment: no resource requests")
    sc = ctr.get("securityContext") or {}
    psc = pod.get("securityContext") or {}
    c.expect(psc.get("runAsNonRoot") is True or sc.get("runAsNonRoot") is True, "Deployment: not runAsNonRoot")
    c.expect(sc.get("readOnlyRootFilesystem") is True, "Deployment: root filesystem not read-only")
    c.expect(sc.get("allowPrivilegeEscalation") is False, "Deployment: allowPrivilegeEscalation not false")
    c.expect("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), "Deployment: capabilities do not drop ALL")
    c.expect(not (sc.get("capabilities") or {}).get("add"), "Deployment: adds capabilities")
    if args.openshift:
        c.expect("runAsUser" not in psc and "runAsUser" not in sc,
                 "Deployment: fixed runAsUser breaks OpenShift's restricted-v2 SCC")
    anti = ((pod.get("affinity") or {}).get("podAntiAffinity") or {}).get("preferredDuringSchedulingIgnoredDuringExecution")
    c.expect(anti, "Deployment: no preferred pod anti-affinity")

    secret_volumes = [v for v in pod.get("volumes") or [] if "secret" in v]
    tls_secret = None
    if cert_manager:
        cert_file = env_value(env, "MIRRORD_OPERATOR_TLS_CERT_FILE") or ""
        if c.expect(len(secret_volumes) == 1, f"Deployment: cert-manager mode wants 1 Secret volume, got {len(secret_volumes)}"):
            vol = secret_volumes[0]
            tls_secret = vol["secret"].get("secretName")
            mounts = [m for m in ctr.get("volumeMounts") or [] if m.get("name") == vol.get("name")]
            c.expect(len(mounts) == 1 and mounts[0].get("mountPath") == os.path.dirname(cert_file)
                     and mounts[0].get("readOnly") is True,
                     f"Deployment: TLS Secret not mounted read-only at {os.path.dirname(cert_file)}")
    else:
        c.expect(not secret_volumes, "Deployment: self-managed mode must not mount the TLS Secret")
        tls_secret = env_value(env, "MIRRORD_OPERATOR_TLS_SECRET_NAME")

    # PodDisruptionBudget
    pdbs = by_kind(docs, "PodDisruptionBudget")
    if args.replicas > 1:
        if c.expect(len(pdbs) == 1, f"want 1 PodDisruptionBudget, got {len(pdbs)}"):
            pspec = pdbs[0].get("spec") or {}
            c.expect(pspec.get("minAvailable") == 1, "PodDisruptionBudget: minAvailable != 1")
            c.expect((pspec.get("selector") or {}).get("matchLabels") == selector, "PodDisruptionBudget: selector != Deployment's")
    else:
        c.expect(not pdbs, "PodDisruptionBudget rendered with a single replica")

    # Service
    svcs = by_kind(docs, "Service")
    svc = svcs[0] if c.expect(len(svcs) == 1, f"want 1 Service, got {len(svcs)}") else {}
    sspec = svc.get("spec") or {}
    c.expect(sspec.get("selector") == selector, "Service: selector != Deployment's")
    https = [p for p in sspec.get("ports") or [] if p.get("port") == 443]
    c.expect(len(https) == 1 and https[0].get("targetPort") in ("https", ports.get("https")),
             "Service: no port 443 -> the webhook's https port")
    if not cert_manager:
        c.expect(svc.get("metadata", {}).get("name") == env_value(env, "MIRRORD_OPERATOR_SERVICE_NAME"),
                 "Service: name != MIRRORD_OPERATOR_SERVICE_NAME (the self-managed certificate's SANs)")

    # MutatingWebhookConfiguration
    mwcs = by_kind(docs, "MutatingWebhookConfiguration")
    if c.expect(len(mwcs) == 1, f"want 1 MutatingWebhookConfiguration, got {len(mwcs)}"):
        check_mwc(c, mwcs[0], docs, args, svc, env, tls_secret)

    check_rbac(c, docs, args, dep, env, tls_secret)
    if args.openshift:
        check_scc(c, docs, args)
    else:
        c.expect(not by_kind(docs, "SecurityContextConstraints"), "SCC rendered without openshift.enabled")


def match_expr(exprs, key):
    found = [e for e in exprs if e.get("key") == key]
    return found[0] if len(found) == 1 else None


def check_mwc(c, mwc, docs, args, svc, env, tls_secret):
    ns = args.namespace
    meta = mwc.get("metadata") or {}
    if args.mode == "self-managed":
        c.expect(meta.get("name") == env_value(env, "MIRRORD_OPERATOR_WEBHOOK_CONFIG_NAME"),
                 "MWC: name != MIRRORD_OPERATOR_WEBHOOK_CONFIG_NAME")
        c.expect("cert-manager.io/inject-ca-from" not in (meta.get("annotations") or {}),
                 "MWC: inject-ca-from annotation in self-managed mode")
    else:
        ann = (meta.get("annotations") or {}).get("cert-manager.io/inject-ca-from", "")
        certs = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in by_kind(docs, "Certificate")}
        ref = tuple(ann.split("/", 1)) if "/" in ann else None
        if c.expect(ref in certs, f"MWC: inject-ca-from {ann!r} names no rendered Certificate"):
            c.expect((certs[ref].get("spec") or {}).get("secretName") == tls_secret,
                     f"MWC: inject-ca-from Certificate does not write the mounted Secret {tls_secret}")
    hooks = mwc.get("webhooks") or []
    names = [h.get("name") for h in hooks]
    if not c.expect(sorted(names) == sorted([ENTRY_NAMESPACE, ENTRY_OBJECT]), f"MWC: webhooks {names}"):
        return
    for h in hooks:
        n = h["name"]
        c.expect(h.get("admissionReviewVersions") == ["v1"], f"MWC {n}: admissionReviewVersions != [v1]")
        c.expect(h.get("sideEffects") == "None", f"MWC {n}: sideEffects != None")
        c.expect(h.get("reinvocationPolicy") == "IfNeeded", f"MWC {n}: reinvocationPolicy != IfNeeded")
        c.expect(h.get("matchPolicy") == "Equivalent", f"MWC {n}: matchPolicy != Equivalent")
        c.expect(h.get("timeoutSeconds") == args.timeout, f"MWC {n}: timeoutSeconds {h.get('timeoutSeconds')} != {args.timeout}")
        c.expect(h.get("failurePolicy") == args.failure_policy, f"MWC {n}: failurePolicy {h.get('failurePolicy')} != {args.failure_policy}")
        rules = h.get("rules") or []
        c.expect(len(rules) == 1 and rules[0].get("operations") == ["CREATE"] and rules[0].get("resources") == ["pods"]
                 and rules[0].get("apiGroups") == [""] and rules[0].get("apiVersions") == ["v1"],
                 f"MWC {n}: rules must be CREATE on core v1 pods, got {rules}")
        cc = h.get("clientConfig") or {}
        c.expect("caBundle" not in cc, f"MWC {n}: caBundle rendered (the webhook or cainjector owns it)")
        if args.url:
            c.expect(cc.get("url") == args.url and "service" not in cc, f"MWC {n}: clientConfig {cc}, want url {args.url}")
        else:
            s = cc.get("service") or {}
            c.expect("url" not in cc and s.get("name") == (svc.get("metadata") or {}).get("name")
                     and s.get("namespace") == ns and s.get("path") == "/mutate" and s.get("port") == 443,
                     f"MWC {n}: clientConfig.service {s} is not the Service's /mutate on 443")
        nsexprs = (h.get("namespaceSelector") or {}).get("matchExpressions") or []
        objexprs = (h.get("objectSelector") or {}).get("matchExpressions") or []
        notin = match_expr(nsexprs, "kubernetes.io/metadata.name")
        want_excluded = ALWAYS_EXCLUDED | {ns} | set(args.exclude)
        c.expect(notin is not None and notin.get("operator") == "NotIn" and want_excluded <= set(notin.get("values") or []),
                 f"MWC {n}: namespaceSelector must exclude {sorted(want_excluded)}, got {notin}")
        inj = match_expr(nsexprs, "mirrord-injection")
        pod = match_expr(objexprs, INJECT_LABEL)
        if n == ENTRY_NAMESPACE:
            c.expect(inj == {"key": "mirrord-injection", "operator": "In", "values": ["enabled"]},
                     f"MWC {n}: namespaceSelector must select mirrord-injection=enabled, got {inj}")
            c.expect(pod == {"key": INJECT_LABEL, "operator": "NotIn", "values": ["false"]},
                     f"MWC {n}: objectSelector must skip inject=false pods, got {pod}")
        else:
            c.expect(inj == {"key": "mirrord-injection", "operator": "DoesNotExist"},
                     f"MWC {n}: namespaceSelector must select namespaces without mirrord-injection, got {inj}")
            c.expect(pod == {"key": INJECT_LABEL, "operator": "In", "values": ["true"]},
                     f"MWC {n}: objectSelector must select inject=true pods, got {pod}")


def check_rbac(c, docs, args, dep, env, tls_secret):
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in docs if d.get("kind") in ("Role", "ClusterRole")}
    mwc_names = [d["metadata"]["name"] for d in by_kind(docs, "MutatingWebhookConfiguration")]
    sa = ((dep.get("spec") or {}).get("template") or {}).get("spec", {}).get("serviceAccountName")
    c.expect(any(d["metadata"]["name"] == sa for d in by_kind(docs, "ServiceAccount")),
             f"Deployment: serviceAccountName {sa!r} is not rendered")
    granted = set()
    for (kind, _, name), role in roles.items():
        for rule in role.get("rules") or []:
            groups, resources, verbs = (rule.get(k) or [] for k in ("apiGroups", "resources", "verbs"))
            c.expect("*" not in groups + resources + verbs and not rule.get("nonResourceURLs"),
                     f"{kind} {name}: wildcard or non-resource rule {rule}")
            for g in groups:
                for r in resources:
                    allowed = ALLOWED_RULES.get((g, r), set())
                    extra = set(verbs) - allowed
                    c.expect(not extra, f"{kind} {name}: {g or 'core'}/{r} verbs {sorted(extra)} not allowed")
                    granted |= {(g, r, v) for v in verbs}
                    if r == "secrets":
                        c.expect(kind == "Role", f"{kind} {name}: secrets only through a namespaced Role")
                        if set(verbs) - {"create"}:
                            c.expect(rule.get("resourceNames") == [tls_secret],
                                     f"{kind} {name}: secret access not limited to {tls_secret}")
                    if r == "mutatingwebhookconfigurations":
                        c.expect(rule.get("resourceNames") == mwc_names,
                                 f"{kind} {name}: webhook configuration access not limited to {mwc_names}")
                    if r == "securitycontextconstraints":
                        c.expect(rule.get("resourceNames") and all(n in [s["metadata"]["name"] for s in by_kind(docs, "SecurityContextConstraints")] for n in rule["resourceNames"]),
                                 f"{kind} {name}: SCC use not limited to the rendered SCC")
    needed = {("", "namespaces", "watch"), ("", "pods", "list"), ("", "events", "create"), ("events.k8s.io", "events", "create")}
    if args.mode == "self-managed":
        needed |= {("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch"),
                   ("", "secrets", "get"), ("", "secrets", "create"), ("", "secrets", "update")}
    else:
        c.expect(not any(r in ("secrets", "mutatingwebhookconfigurations") for _, r, _ in granted),
                 "cert-manager mode grants Secret or webhook-configuration access it does not need")
    missing = needed - granted
    c.expect(not missing, f"RBAC: the webhook lacks {sorted(missing)}")
    for b in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding"):
        ref = b.get("roleRef") or {}
        ns = b["metadata"].get("namespace") if ref.get("kind") == "Role" else None
        c.expect((ref.get("kind"), ns, ref.get("name")) in roles,
                 f"{b['kind']} {b['metadata']['name']}: roleRef {ref} is not rendered")
        c.expect(b.get("subjects"), f"{b['kind']} {b['metadata']['name']}: no subjects")


def check_scc(c, docs, args):
    sccs = by_kind(docs, "SecurityContextConstraints")
    if not c.expect(len(sccs) == 1, f"openshift: want 1 SecurityContextConstraints, got {len(sccs)}"):
        return
    s = sccs[0]
    caps = set(s.get("allowedCapabilities") or []) | set(s.get("defaultAddCapabilities") or [])
    c.expect(not caps & FORBIDDEN_CAPS, f"SCC: allows {sorted(caps & FORBIDDEN_CAPS)}")
    c.expect(set(s.get("allowedCapabilities") or []) == {"NET_ADMIN"}, "SCC: allowedCapabilities must be exactly NET_ADMIN")
    for field in ("allowHostPID", "allowPrivilegedContainer", "allowHostNetwork", "allowHostIPC", "allowPrivilegeEscalation"):
        c.expect(s.get(field) is False, f"SCC: {field} must be false")
    c.expect((s.get("runAsUser") or {}).get("type") == "RunAsAny", "SCC: runAsUser must be RunAsAny (iptables needs uid 0)")
    c.expect(s.get("readOnlyRootFilesystem") is True, "SCC: readOnlyRootFilesystem must be true")
    c.expect("hostPath" not in (s.get("volumes") or []) and "*" not in (s.get("volumes") or []), "SCC: hostPath volumes allowed")
    c.expect(not s.get("users") and not s.get("groups"), "SCC: grants users/groups directly; use the ClusterRole")
    uses = [r for r in by_kind(docs, "ClusterRole")
            if any("use" in (rule.get("verbs") or []) and s["metadata"]["name"] in (rule.get("resourceNames") or [])
                   for rule in r.get("rules") or [])]
    c.expect(len(uses) == 1, "SCC: no ClusterRole with use on it")
    for want_ns in args.scc_namespace:
        c.expect(any(b["metadata"].get("namespace") == want_ns and
                     any(sub.get("kind") == "Group" and sub.get("name") == f"system:serviceaccounts:{want_ns}"
                         for sub in b.get("subjects") or [])
                     for b in by_kind(docs, "RoleBinding")),
                 f"SCC: no RoleBinding for system:serviceaccounts:{want_ns}")


# Values documented as one Kubernetes object rather than key by key.
OPAQUE_VALUES = {"resources", "affinity", "podSecurityContext", "securityContext"}


def leaf_paths(value, prefix=""):
    if isinstance(value, dict) and value and prefix not in OPAQUE_VALUES:
        for k, v in value.items():
            yield from leaf_paths(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


def check_docs(c, docs_path, values_path):
    with open(values_path) as f:
        values = yaml.safe_load(f)
    if not c.expect(os.path.isfile(docs_path), f"{docs_path}: missing"):
        return
    with open(docs_path) as f:
        text = f.read()
    for path in leaf_paths(values):
        c.expect(f"| `{path}` |" in text, f"{docs_path}: value `{path}` has no row in the values table")


def check_manifests(c, manifests_dir, render_docs, ns):
    """manifests/ must be the default render plus the Namespace, so `kubectl apply -f manifests/` == the chart."""
    docs = []
    for name in sorted(os.listdir(manifests_dir)):
        # registry-mirror.yaml is the optional RegistryMirror operator, checked by registry-mirror-chart-check.py.
        if name.endswith((".yaml", ".yml")) and name != "registry-mirror.yaml":
            docs += load_docs(os.path.join(manifests_dir, name))
    namespaces = [d for d in docs if d.get("kind") == "Namespace"]
    c.expect(len(namespaces) == 1 and namespaces[0]["metadata"]["name"] == ns,
             f"{manifests_dir}: want exactly the Namespace {ns}")
    key = lambda d: (d.get("kind"), (d.get("metadata") or {}).get("namespace"), (d.get("metadata") or {}).get("name"))
    have = {key(d): d for d in docs if d.get("kind") != "Namespace"}
    want = {key(d): d for d in render_docs}
    for k in sorted(set(have) | set(want), key=str):
        c.expect(have.get(k) == want.get(k),
                 f"{manifests_dir}: {k} differs from the default chart render (run e2e/tools/chart-lint.sh --update)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("render", nargs="?")
    p.add_argument("--mode", choices=["self-managed", "cert-manager"], default="self-managed")
    p.add_argument("--namespace", default="mirrord")
    p.add_argument("--openshift", action="store_true")
    p.add_argument("--scc-namespace", action="append", default=[])
    p.add_argument("--url", default="")
    p.add_argument("--exclude", action="append", default=[])
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--timeout", type=int, default=5)
    p.add_argument("--failure-policy", default="Ignore")
    p.add_argument("--manifests", help="manifests/ directory that must equal the render (+ the Namespace)")
    p.add_argument("--print-env", action="store_true")
    p.add_argument("--docs")
    p.add_argument("--values")
    args = p.parse_args()
    if args.print_env:
        deps = by_kind(load_docs(args.render), "Deployment") if args.render else []
        if len(deps) != 1:
            sys.exit("chart-check: --print-env needs a render with exactly one Deployment")
        for ctr in deps[0]["spec"]["template"]["spec"]["containers"]:
            for e in ctr.get("env") or []:
                print(f"{e['name']}={e.get('value', '')}")
        return 0
    c = Checker()
    if args.docs:
        check_docs(c, args.docs, args.values)
    if args.render:
        docs = load_docs(args.render)
        if c.expect(docs, f"{args.render}: no documents"):
            check_render(c, docs, args)
            if args.manifests:
                check_manifests(c, args.manifests, docs, args.namespace)
    for msg in c.problems:
        print(f"  FAIL {msg}")
    return 1 if c.problems else 0


if __name__ == "__main__":
    sys.exit(main())
