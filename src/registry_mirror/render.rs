//! Pure rendering of a mirror's children and of its nginx configuration. No I/O and no client: the
//! reconcile gathers the inputs (validated spec, credentials, Service IP, TLS material) and applies what
//! these functions return. Golden files in `tests/data/registry-mirror/` pin the output.

use std::{collections::BTreeMap, fmt::Write as _};

use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::{DaemonSet, StatefulSet},
        core::v1::{Secret, Service},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use serde_json::json;

use super::input::{CacheVolume, Credentials, Scheme, Upstream};

/// Label every child carries (the users' contract: `kubectl get ... -l mirror=<name>`).
pub const MIRROR_LABEL: &str = "mirror";
/// Annotation on pod templates: changes with the config Secret, so pods restart on a new config.
pub const CHECKSUM_ANNOTATION: &str = "k8s.osp.tech/config-checksum";
/// Annotation on the config Secret: the SANs its certificate was issued for.
pub const TLS_SANS_ANNOTATION: &str = "k8s.osp.tech/tls-sans";
/// Annotation on the config Secret: when its serving certificate (and CA) expire, RFC 3339.
pub const TLS_NOT_AFTER_ANNOTATION: &str = "k8s.osp.tech/tls-not-after";
/// Where the config Secret is mounted in the cache pods.
pub const CONFIG_DIR: &str = "/etc/registry-mirror";
/// Where the cache volume `image-store` is mounted.
pub const CACHE_DIR: &str = "/var/cache/registry-mirror";
/// nginx's TLS port (the pods' `https` port).
pub const HTTPS_PORT: i32 = 5000;
pub const REPLICAS: i32 = 2;
/// uid, gid and fsGroup of the nginx pods.
pub const NGINX_UID: i64 = 65532;

/// Operator-wide settings that shape every mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderConfig {
    /// Namespace of every child (`NAMESPACE`, default `kube-extra`).
    pub namespace: String,
    /// Image with nginx (the cache pods).
    pub nginx_image: String,
    /// Image of this operator (the node agents run `mirrord-operator registry-mirror node-agent`).
    pub agent_image: String,
    /// containerd's registry config path on the nodes (`config_path` of the CRI registry plugin).
    pub hosts_dir: String,
}

/// The certificate the cache pods serve and the CA nodes trust, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The SANs the certificate was issued for, in [`tls_sans`] order.
    pub sans: Vec<String>,
    /// When the CA and the serving certificate expire (RFC 3339); the controller renews before.
    pub not_after: String,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("sans", &self.sans)
            .finish_non_exhaustive()
    }
}

/// The owner every child points at (garbage collection by ownerReference).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub uid: String,
}

/// Everything one mirror's data plane depends on.
#[derive(Debug, Clone)]
pub struct MirrorInputs<'a> {
    pub owner: &'a Owner,
    pub upstream: &'a Upstream,
    pub credentials: Option<&'a Credentials>,
    pub cache: &'a CacheVolume,
    pub cluster_ip: &'a str,
    pub tls: &'a TlsMaterial,
}

/// Name of the DaemonSet, StatefulSet, Service and config Secret.
pub fn child_name(mirror: &str) -> String {
    format!("registry-mirror-{mirror}")
}

pub fn headless_name(mirror: &str) -> String {
    format!("registry-mirror-{mirror}-headless")
}

/// What the status reports as the mirror's address.
pub fn endpoint(cfg: &RenderConfig, mirror: &str) -> String {
    format!("https://{}.{}.svc:443", child_name(mirror), cfg.namespace)
}

/// SANs of the serving certificate: the Service's DNS names and its cluster IP (what nodes dial).
pub fn tls_sans(cfg: &RenderConfig, mirror: &str, cluster_ip: &str) -> Vec<String> {
    let service = child_name(mirror);
    let ns = &cfg.namespace;
    let mut sans = vec![
        format!("{service}.{ns}.svc"),
        format!("{service}.{ns}.svc.cluster.local"),
        format!("{service}.{ns}"),
        service,
    ];
    if !cluster_ip.is_empty() && cluster_ip != "None" {
        sans.push(cluster_ip.to_owned());
    }
    sans
}

fn labels(mirror: &str, component: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (MIRROR_LABEL.to_owned(), mirror.to_owned()),
        (
            "app.kubernetes.io/name".to_owned(),
            "registry-mirror".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), mirror.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "mirrord-operator".to_owned(),
        ),
    ]);
    if let Some(component) = component {
        labels.insert(
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        );
    }
    labels
}

/// Selector of the cache pods (the DaemonSet's pods carry `mirror=<name>` too, so the component decides).
fn cache_selector(mirror: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MIRROR_LABEL.to_owned(), mirror.to_owned()),
        ("app.kubernetes.io/component".to_owned(), "cache".to_owned()),
    ])
}

fn node_agent_selector(mirror: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MIRROR_LABEL.to_owned(), mirror.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            "node-agent".to_owned(),
        ),
    ])
}

fn metadata(
    cfg: &RenderConfig,
    owner: &Owner,
    name: String,
    component: Option<&str>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(cfg.namespace.clone()),
        labels: Some(labels(&owner.name, component)),
        // A cluster-scoped owner of namespaced children is allowed (the reverse is not), so the
        // garbage collector removes every child when the RegistryMirror goes: no finalizer needed.
        owner_references: Some(vec![OwnerReference {
            api_version: "k8s.osp.tech/v1".to_owned(),
            kind: "RegistryMirror".to_owned(),
            name: owner.name.clone(),
            uid: owner.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..ObjectMeta::default()
    }
}

fn typed<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("the rendered object matches its Kubernetes schema")
}

/// The Service nodes pull through: 443 → the pods' `https` port.
pub fn service(cfg: &RenderConfig, owner: &Owner) -> Service {
    let mut service: Service = typed(json!({
        "spec": {
            "type": "ClusterIP",
            "selector": cache_selector(&owner.name),
            "ports": [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}],
        }
    }));
    service.metadata = metadata(cfg, owner, child_name(&owner.name), None);
    service
}

/// The StatefulSet's governing headless Service (stable pod DNS names).
pub fn headless_service(cfg: &RenderConfig, owner: &Owner) -> Service {
    let mut service: Service = typed(json!({
        "spec": {
            "clusterIP": "None",
            "selector": cache_selector(&owner.name),
            "ports": [{"name": "https", "port": HTTPS_PORT, "targetPort": "https", "protocol": "TCP"}],
        }
    }));
    service.metadata = metadata(cfg, owner, headless_name(&owner.name), None);
    service
}

/// The nginx configuration of the cache pods: a TLS caching reverse proxy for reads only.
pub fn nginx_conf(
    mirror: &str,
    upstream: &Upstream,
    credentials: Option<&Credentials>,
    cache: &CacheVolume,
) -> String {
    // The lines every proxied location shares. The host and the base64 token are validated/encoded,
    // so nothing from the input can break out of a directive.
    let mut proxy = String::new();
    let url = upstream.url();
    let host = &upstream.host;
    let _ = writeln!(proxy, "            proxy_pass {url};");
    let _ = writeln!(proxy, "            proxy_set_header Host {host};");
    // Without upstream credentials the client's own Authorization passes through.
    if let Some(credentials) = credentials {
        let _ = writeln!(
            proxy,
            "            proxy_set_header Authorization \"{}\";",
            credentials.basic_header()
        );
    }
    if upstream.scheme == Scheme::Https {
        proxy.push_str(
            "            proxy_ssl_server_name on;\n\
             \x20           proxy_ssl_verify on;\n\
             \x20           proxy_ssl_verify_depth 4;\n\
             \x20           proxy_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;\n",
        );
    }
    proxy.push_str(
        "            proxy_http_version 1.1;\n\
         \x20           proxy_set_header Connection \"\";\n\
         \x20           proxy_read_timeout 900s;\n\
         \x20           proxy_cache registry_mirror;\n\
         \x20           proxy_cache_lock on;\n\
         \x20           proxy_cache_lock_timeout 900s;\n\
         \x20           proxy_cache_use_stale error timeout updating http_500 http_502 http_503 http_504;\n\
         \x20           proxy_ignore_headers Cache-Control Expires Set-Cookie Vary;\n\
         \x20           add_header X-Cache-Status $upstream_cache_status always;\n",
    );
    let max_size = cache.max_size_mib;
    format!(
        r#"# Rendered by mirrord-operator for RegistryMirror {mirror}; the controller rewrites it.
worker_processes auto;
pid /tmp/nginx.pid;
error_log stderr notice;

events {{
    worker_connections 1024;
}}

http {{
    log_format mirror '$remote_addr "$request" $status $body_bytes_sent cache=$upstream_cache_status upstream_time=$upstream_response_time';
    access_log /dev/stdout mirror;
    server_tokens off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    client_body_temp_path /tmp/nginx-client-body;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;
    proxy_temp_path {CACHE_DIR}/tmp;
    # About {percent} % of the image-store volume; the rest is headroom.
    proxy_cache_path {CACHE_DIR}/cache levels=1:2 keys_zone=registry_mirror:32m max_size={max_size}m inactive=30d use_temp_path=off;

    server {{
        listen {HTTPS_PORT} ssl;
        server_name _;
        ssl_certificate {CONFIG_DIR}/tls.crt;
        ssl_certificate_key {CONFIG_DIR}/tls.key;
        ssl_protocols TLSv1.2 TLSv1.3;

        location = /health-check {{
            access_log off;
            default_type text/plain;
            return 200 "ok\n";
        }}

        # Blobs are addressed by their digest, so they never change: cached for long, one key for
        # GET and HEAD, without the query string.
        location ~ "^/v2/.+/blobs/sha256:[0-9a-f]{{64}}$" {{
            limit_except GET OPTIONS {{ deny all; }}
            proxy_cache_key $proxy_host$uri;
            proxy_cache_valid 200 30d;
{proxy}        }}

        # Manifests and tags move: cached briefly, keyed by Accept (the manifest type is negotiated).
        location /v2/ {{
            limit_except GET OPTIONS {{ deny all; }}
            proxy_cache_key $proxy_host$uri$is_args$args|$http_accept;
            proxy_cache_valid 200 1m;
{proxy}        }}

        location / {{
            return 404;
        }}
    }}
}}
"#,
        percent = super::input::CACHE_SHARE_PERCENT,
    )
}

fn checksum(parts: &[&str]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// The config Secret: nginx.conf, the serving certificate and key, and the CA the nodes trust.
pub fn config_secret(cfg: &RenderConfig, inputs: &MirrorInputs<'_>) -> Secret {
    let name = &inputs.owner.name;
    let mut metadata = metadata(cfg, inputs.owner, child_name(name), None);
    metadata.annotations = Some(BTreeMap::from([
        (TLS_SANS_ANNOTATION.to_owned(), inputs.tls.sans.join(",")),
        (
            TLS_NOT_AFTER_ANNOTATION.to_owned(),
            inputs.tls.not_after.clone(),
        ),
    ]));
    let conf = nginx_conf(name, inputs.upstream, inputs.credentials, inputs.cache);
    let entry = |key: &str, value: &str| (key.to_owned(), ByteString(value.as_bytes().to_vec()));
    Secret {
        metadata,
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            entry("nginx.conf", &conf),
            entry("tls.crt", &inputs.tls.cert_pem),
            entry("tls.key", &inputs.tls.key_pem),
            entry("ca.crt", &inputs.tls.ca_pem),
        ])),
        ..Secret::default()
    }
}

/// The nginx cache: 2 replicas started in parallel, each with its own `image-store` volume.
pub fn stateful_set(cfg: &RenderConfig, inputs: &MirrorInputs<'_>) -> StatefulSet {
    let name = &inputs.owner.name;
    let conf = nginx_conf(name, inputs.upstream, inputs.credentials, inputs.cache);
    let sum = checksum(&[&conf, &inputs.tls.cert_pem, &inputs.tls.key_pem]);
    let mut claim = inputs.cache.template.clone();
    claim.metadata.name = Some("image-store".to_owned());
    claim.metadata.namespace = None;
    claim
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(MIRROR_LABEL.to_owned(), name.clone());
    let mut sts: StatefulSet = typed(json!({
        "spec": {
            "replicas": REPLICAS,
            "serviceName": headless_name(name),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": cache_selector(name)},
            "template": {
                "metadata": {
                    "labels": labels(name, Some("cache")),
                    "annotations": {CHECKSUM_ANNOTATION: sum},
                },
                "spec": {
                    // nginx runs wholly unprivileged (no root master), so the cache volume is writable
                    // through fsGroup and nothing depends on the image's worker user.
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": NGINX_UID,
                        "runAsGroup": NGINX_UID,
                        "fsGroup": NGINX_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": "nginx",
                        "image": cfg.nginx_image,
                        "command": ["nginx", "-e", "stderr", "-c", format!("{CONFIG_DIR}/nginx.conf"), "-g", "daemon off;"],
                        "ports": [{"name": "https", "containerPort": HTTPS_PORT, "protocol": "TCP"}],
                        "readinessProbe": {
                            "httpGet": {"path": "/health-check", "port": "https", "scheme": "HTTPS"},
                            "periodSeconds": 5,
                        },
                        "livenessProbe": {
                            "httpGet": {"path": "/health-check", "port": "https", "scheme": "HTTPS"},
                            "initialDelaySeconds": 10,
                            "periodSeconds": 20,
                        },
                        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": true},
                            {"name": "image-store", "mountPath": CACHE_DIR},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                    }],
                    "volumes": [
                        {"name": "config", "secret": {"secretName": child_name(name), "defaultMode": 0o440,
                            "items": [
                                {"key": "nginx.conf", "path": "nginx.conf"},
                                {"key": "tls.crt", "path": "tls.crt"},
                                {"key": "tls.key", "path": "tls.key"},
                            ]}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
            "volumeClaimTemplates": [claim],
        }
    }));
    sts.metadata = metadata(cfg, inputs.owner, child_name(name), Some("cache"));
    sts
}

/// The per-node part: a node agent on every node that keeps containerd's `hosts.toml` for the upstream
/// host pointing at the mirror's Service IP, with the mirror's CA.
pub fn daemon_set(cfg: &RenderConfig, inputs: &MirrorInputs<'_>) -> DaemonSet {
    let name = &inputs.owner.name;
    let sum = checksum(&[&inputs.tls.ca_pem]);
    let mut ds: DaemonSet = typed(json!({
        "spec": {
            "selector": {"matchLabels": node_agent_selector(name)},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%"}},
            "template": {
                "metadata": {
                    "labels": labels(name, Some("node-agent")),
                    "annotations": {CHECKSUM_ANNOTATION: sum},
                },
                "spec": {
                    // Every node pulls images, tainted or not.
                    "tolerations": [{"operator": "Exists"}],
                    "priorityClassName": "system-node-critical",
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 10,
                    "containers": [{
                        "name": "node-agent",
                        "image": cfg.agent_image,
                        "args": [
                            "registry-mirror", "node-agent",
                            "--mirror", name,
                            "--upstream", inputs.upstream.url(),
                            "--endpoint", format!("https://{}:443", bracket_ip(inputs.cluster_ip)),
                            "--ca-file", format!("{CONFIG_DIR}/ca.crt"),
                            "--hosts-dir", cfg.hosts_dir,
                        ],
                        "resources": {"requests": {"cpu": "5m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
                        // Root (uid 0) without any capability: it only writes files in a root-owned
                        // host directory.
                        "securityContext": {
                            "runAsUser": 0,
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "ca", "mountPath": CONFIG_DIR, "readOnly": true},
                            {"name": "hosts", "mountPath": cfg.hosts_dir},
                        ],
                    }],
                    "volumes": [
                        {"name": "ca", "secret": {"secretName": child_name(name),
                            "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"name": "hosts", "hostPath": {"path": cfg.hosts_dir, "type": "DirectoryOrCreate"}},
                    ],
                },
            },
        }
    }));
    ds.metadata = metadata(cfg, inputs.owner, child_name(name), Some("node-agent"));
    ds
}

fn bracket_ip(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    }
}
