//! Golden files for the registry mirror's pure parts (`tests/data/registry-mirror/<case>/`): every child,
//! the nginx config and the node's hosts.toml for valid input, the reason and message for invalid input.
//! `BLESS=1` rewrites the expected files. Also: the chart's CRD equals the code's, and property tests of
//! the parsers that take user input.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::Secret;
use mirrord_operator::registry_mirror::{
    crd::{RegistryMirror, RegistryMirrorSpec, crd},
    input::{CacheVolume, Credentials, InputError, Upstream, quantity_bytes, validate_spec},
    node_agent::{ca_file_name, hosts_toml},
    render::{self, MirrorInputs, Owner, RenderConfig, TlsMaterial},
};
use proptest::prelude::*;

const CLUSTER_IP: &str = "10.96.0.42";

fn config() -> RenderConfig {
    RenderConfig {
        namespace: "kube-extra".to_owned(),
        nginx_image: "registry.local/nginx:1.22".to_owned(),
        agent_image: "ghcr.io/mirrord-operator/mirrord-operator:0.1.0".to_owned(),
        hosts_dir: "/etc/containerd/certs.d".to_owned(),
    }
}

fn tls(sans: Vec<String>) -> TlsMaterial {
    TlsMaterial {
        ca_pem: "-----BEGIN CERTIFICATE-----\nFIXTURE-CA\n-----END CERTIFICATE-----\n".to_owned(),
        cert_pem: "-----BEGIN CERTIFICATE-----\nFIXTURE-SERVING\n-----END CERTIFICATE-----\n"
            .to_owned(),
        key_pem: "-----BEGIN PRIVATE KEY-----\nFIXTURE-KEY\n-----END PRIVATE KEY-----\n".to_owned(),
        sans,
        not_after: "2027-01-15T08:00:00Z".to_owned(),
    }
}

fn read<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn pretty<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap() + "\n"
}

/// Everything the pure parts make of one case, by output file name.
fn render_case(dir: &Path) -> BTreeMap<&'static str, String> {
    let mirror: RegistryMirror = read(&dir.join("mirror.json"));
    let credentials_secret: Option<Secret> = dir
        .join("credentials.json")
        .exists()
        .then(|| read(&dir.join("credentials.json")));
    let cfg = config();
    let name = mirror.metadata.name.clone().unwrap();
    let result = validate_spec(&name, &mirror.spec).and_then(|(upstream, cache)| {
        let credentials = match &mirror.spec.credentials_secret {
            None => None,
            Some(secret) => match &credentials_secret {
                None => {
                    return Err(InputError::SecretNotFound {
                        namespace: cfg.namespace.clone(),
                        name: secret.clone(),
                    });
                }
                Some(s) => Some(Credentials::from_secret(
                    &cfg.namespace,
                    secret,
                    s.data.as_ref(),
                )?),
            },
        };
        Ok((upstream, cache, credentials))
    });
    let mut out = BTreeMap::new();
    match result {
        Err(invalid) => {
            out.insert("error.txt", format!("{}: {invalid}\n", invalid.reason()));
        }
        Ok((upstream, cache, credentials)) => {
            let owner = Owner {
                name: name.clone(),
                uid: mirror.metadata.uid.clone().unwrap(),
            };
            let tls = tls(render::tls_sans(&cfg, &name, CLUSTER_IP));
            let inputs = MirrorInputs {
                owner: &owner,
                upstream: &upstream,
                credentials: credentials.as_ref(),
                cache: &cache,
                cluster_ip: CLUSTER_IP,
                tls: &tls,
            };
            out.insert("service.json", pretty(&render::service(&cfg, &owner)));
            out.insert(
                "headless-service.json",
                pretty(&render::headless_service(&cfg, &owner)),
            );
            out.insert(
                "config-secret.json",
                pretty(&render::config_secret(&cfg, &inputs)),
            );
            out.insert(
                "statefulset.json",
                pretty(&render::stateful_set(&cfg, &inputs)),
            );
            out.insert("daemonset.json", pretty(&render::daemon_set(&cfg, &inputs)));
            out.insert(
                "nginx.conf",
                render::nginx_conf(&name, &upstream, credentials.as_ref(), &cache),
            );
            let ca_path = Path::new(&cfg.hosts_dir)
                .join(&upstream.host)
                .join(ca_file_name(&name));
            out.insert(
                "hosts.toml",
                hosts_toml(
                    &name,
                    &upstream,
                    &format!("https://{CLUSTER_IP}:443"),
                    &ca_path,
                ),
            );
        }
    }
    out
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/registry-mirror")
}

fn bless() -> bool {
    std::env::var_os("BLESS").is_some_and(|v| v == "1")
}

#[test]
fn fixtures_match_expectations() {
    let mut cases: Vec<PathBuf> = fs::read_dir(data_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("mirror.json").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "cases went missing: {}", cases.len());
    let mut failures = Vec::new();
    for dir in &cases {
        let rendered = render_case(dir);
        for (file, text) in &rendered {
            let path = dir.join(file);
            if bless() {
                fs::write(&path, text).unwrap();
            } else if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                failures.push(format!(
                    "{}: differs (BLESS=1 rewrites it)\n{text}",
                    path.display()
                ));
            }
        }
        // An output file that the case no longer produces is stale.
        for entry in fs::read_dir(dir).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            let input = matches!(file.as_str(), "mirror.json" | "credentials.json");
            if !input && !rendered.contains_key(file.as_str()) {
                if bless() {
                    fs::remove_file(dir.join(&file)).unwrap();
                } else {
                    failures.push(format!("{}/{file}: stale", dir.display()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every child carries `mirror=<name>` and a controller ownerReference to the RegistryMirror, which is
/// how the garbage collector removes them with it.
#[test]
fn every_child_is_labelled_and_owned() {
    let cfg = config();
    let owner = Owner {
        name: "quay".to_owned(),
        uid: "uid-1".to_owned(),
    };
    let upstream = Upstream::parse("quay.example.com").unwrap();
    let cache = CacheVolume::resolve(None).unwrap();
    let tls = tls(vec![]);
    let inputs = MirrorInputs {
        owner: &owner,
        upstream: &upstream,
        credentials: None,
        cache: &cache,
        cluster_ip: CLUSTER_IP,
        tls: &tls,
    };
    let metas = [
        render::service(&cfg, &owner).metadata,
        render::headless_service(&cfg, &owner).metadata,
        render::config_secret(&cfg, &inputs).metadata,
        render::stateful_set(&cfg, &inputs).metadata,
        render::daemon_set(&cfg, &inputs).metadata,
    ];
    for meta in metas {
        let name = meta.name.clone().unwrap();
        assert!(name.starts_with("registry-mirror-quay"), "{name}");
        assert_eq!(meta.namespace.as_deref(), Some("kube-extra"));
        assert_eq!(meta.labels.as_ref().unwrap()["mirror"], "quay", "{name}");
        let owners = meta.owner_references.unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, "uid-1");
        assert_eq!(owners[0].kind, "RegistryMirror");
        assert_eq!(owners[0].api_version, "k8s.osp.tech/v1");
        assert_eq!(owners[0].controller, Some(true));
    }
}

/// A config change (new credentials) changes the pods' checksum annotation, so they restart.
#[test]
fn config_change_changes_the_checksum() {
    let cfg = config();
    let owner = Owner {
        name: "quay".to_owned(),
        uid: "uid-1".to_owned(),
    };
    let upstream = Upstream::parse("quay.example.com").unwrap();
    let cache = CacheVolume::resolve(None).unwrap();
    let tls = tls(vec![]);
    let checksum = |credentials: Option<&Credentials>| {
        let inputs = MirrorInputs {
            owner: &owner,
            upstream: &upstream,
            credentials,
            cache: &cache,
            cluster_ip: CLUSTER_IP,
            tls: &tls,
        };
        render::stateful_set(&cfg, &inputs)
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()[render::CHECKSUM_ANNOTATION]
            .clone()
    };
    let a = Credentials {
        username: "puller".to_owned(),
        password: "one".to_owned(),
    };
    let b = Credentials {
        password: "two".to_owned(),
        ..a.clone()
    };
    assert_ne!(checksum(Some(&a)), checksum(Some(&b)));
    assert_ne!(checksum(None), checksum(Some(&a)));
    assert_eq!(checksum(Some(&a)), checksum(Some(&a.clone())));
}

const CHART_CRD: &str = "charts/mirrord-operator/files/registry-mirror-crd.json";

/// The chart installs exactly the CRD the code derives (`BLESS=1` rewrites the chart's copy).
#[test]
fn chart_crd_matches_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CHART_CRD);
    let expected = pretty(&crd());
    if bless() {
        fs::write(&path, &expected).unwrap();
    }
    let actual = fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        actual, expected,
        "{CHART_CRD} is out of date: BLESS=1 rewrites it"
    );
}

#[test]
fn quantities() {
    assert_eq!(quantity_bytes("20Gi"), Some(20 << 30));
    assert_eq!(quantity_bytes("1.5Ki"), Some(1536));
    assert_eq!(quantity_bytes("500M"), Some(500_000_000));
    assert_eq!(quantity_bytes("1000"), Some(1000));
    assert_eq!(quantity_bytes(".5Gi"), Some(1 << 29));
    for bad in ["", "Gi", "20GB", "-1Gi", "1e9", "1.2.3Gi", "20 Gi", "."] {
        assert_eq!(quantity_bytes(bad), None, "{bad:?}");
    }
    let cache = CacheVolume::resolve(None).unwrap();
    assert_eq!(cache.max_size_mib, 20 * 1024 * 80 / 100);
}

#[test]
fn upstream_urls() {
    let ok = [
        ("quay.example.com", "https://quay.example.com"),
        ("https://quay.example.com/", "https://quay.example.com"),
        ("http://registry:5000", "http://registry:5000"),
        (
            "REGISTRY.Example.com:443",
            "https://registry.example.com:443",
        ),
        ("10.0.0.1:5000", "https://10.0.0.1:5000"),
        ("[fd00::1]:5000", "https://[fd00::1]:5000"),
    ];
    for (input, url) in ok {
        assert_eq!(Upstream::parse(input).unwrap().url(), url, "{input}");
    }
    let bad = [
        "",
        "ftp://quay.example.com",
        "quay.example.com/library",
        "user@quay.example.com",
        "quay.example.com:0",
        "quay.example.com:99999",
        "quay.example.com:",
        "-bad.example.com",
        "quay example.com",
        "quay.example.com;\n proxy_pass evil",
        "fd00::1",
    ];
    for input in bad {
        let err = Upstream::parse(input).unwrap_err();
        assert_eq!(err.reason(), "InvalidUpstreamUrl", "{input:?}");
    }
}

#[test]
fn credentials_from_secret_data() {
    use k8s_openapi::ByteString;
    let data = |pairs: &[(&str, &[u8])]| -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
            .collect()
    };
    let ok = Credentials::from_secret(
        "ns",
        "s",
        Some(&data(&[("username", b"puller"), ("password", b"p:w")])),
    )
    .unwrap();
    assert_eq!(ok.basic_header(), "Basic cHVsbGVyOnA6dw==");
    assert!(
        !format!("{ok:?}").contains("p:w"),
        "the password must not be logged"
    );
    let reason = |pairs: &[(&str, &[u8])]| {
        Credentials::from_secret("ns", "s", Some(&data(pairs)))
            .unwrap_err()
            .reason()
    };
    assert_eq!(reason(&[("username", b"u")]), "SecretMissingKeys");
    assert_eq!(reason(&[]), "SecretMissingKeys");
    assert_eq!(
        reason(&[("username", b"u"), ("password", b"")]),
        "SecretMissingKeys"
    );
    assert_eq!(
        reason(&[("username", b"a:b"), ("password", b"p")]),
        "SecretMalformed"
    );
    assert_eq!(
        reason(&[("username", b"u"), ("password", b"p\n")]),
        "SecretMalformed"
    );
    assert_eq!(
        reason(&[("username", b"\xff"), ("password", b"p")]),
        "SecretMalformed"
    );
    assert_eq!(
        Credentials::from_secret("ns", "s", None)
            .unwrap_err()
            .reason(),
        "SecretMissingKeys"
    );
}

proptest! {
    /// Any string: a clean error or an upstream whose URL parses back to itself, and nothing that could
    /// end an nginx directive or a TOML string.
    #[test]
    fn upstream_parse_is_total_and_safe(s in "\\PC{0,40}|[a-z0-9.:/\\[\\]-]{0,40}") {
        if let Ok(upstream) = Upstream::parse(&s) {
            let url = upstream.url();
            prop_assert!(!url.contains([';', '"', ' ', '\n', '{', '}', '$', '\\']), "{url}");
            prop_assert_eq!(Upstream::parse(&url).unwrap(), upstream);
        }
    }

    #[test]
    fn quantity_is_total(s in "\\PC{0,24}|[0-9.]{0,12}(Ki|Mi|Gi|Ti|k|M|G|T)?") {
        let _ = quantity_bytes(&s);
    }

    #[test]
    fn volume_claim_templates_never_panic(storage in "[0-9.]{0,6}(Mi|Gi|x)?", class in "[a-z]{0,8}") {
        let template = serde_json::json!({"spec": {"storageClassName": class, "resources": {"requests": {"storage": storage}}}});
        if let Ok(cache) = CacheVolume::resolve(Some(&template)) {
            prop_assert!(cache.max_size_mib > 0);
        }
    }
}

/// The CRD's spec type accepts what existing manifests have (only upstreamUrl), nothing else required.
#[test]
fn minimal_manifest_deserializes() {
    let spec: RegistryMirrorSpec =
        serde_json::from_value(serde_json::json!({"upstreamUrl": "quay.example.com"})).unwrap();
    assert_eq!(spec.credentials_secret, None);
    assert!(serde_json::from_value::<RegistryMirrorSpec>(serde_json::json!({})).is_err());
}
