//! Front-proxy authentication, the way every aggregated API server does it: kube-apiserver
//! authenticates the user, then proxies the request presenting its proxy client certificate and the
//! user in `X-Remote-User` / `X-Remote-Group` / `X-Remote-Extra-*`. Those headers are trusted only
//! when that certificate chains to `requestheader-client-ca-file` and its CN is one of
//! `requestheader-allowed-names` (any CN when the list is empty), both read from the ConfigMap
//! `kube-system/extension-apiserver-authentication`, which is watched so a rotated CA is picked up.
//!
//! The TLS layer only asks for a client certificate ([`crate::tls::server_config_asking_client_cert`]);
//! it is checked here, per request, against whatever configuration is current.

use std::{collections::BTreeMap, sync::Arc};

use arc_swap::ArcSwapOption;
use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use http::HeaderMap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, UnixTime, pem::PemObject},
    server::WebPkiClientVerifier,
};

use crate::{
    coordinator::api::{error::ApiError, state::Identity},
    server::{PeerCertificates, shutdown::Shutdown},
};

pub const CONFIGMAP_NAMESPACE: &str = "kube-system";
pub const CONFIGMAP_NAME: &str = "extension-apiserver-authentication";
const CLIENT_CA_KEY: &str = "requestheader-client-ca-file";
const ALLOWED_NAMES_KEY: &str = "requestheader-allowed-names";
const USERNAME_HEADERS_KEY: &str = "requestheader-username-headers";
const GROUP_HEADERS_KEY: &str = "requestheader-group-headers";
const EXTRA_PREFIXES_KEY: &str = "requestheader-extra-headers-prefix";

#[derive(Debug, thiserror::Error)]
pub enum FrontProxyError {
    #[error(
        "{CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME} has no {CLIENT_CA_KEY}: kube-apiserver runs without --requestheader-client-ca-file, so it cannot proxy to aggregated APIs"
    )]
    NoClientCa,
    #[error("{CLIENT_CA_KEY} holds no usable CA certificate: {0}")]
    BadClientCa(String),
    #[error("{key} is not a JSON list of strings: {error}")]
    BadList {
        key: &'static str,
        error: serde_json::Error,
    },
}

impl FrontProxyError {
    pub fn label(&self) -> &'static str {
        match self {
            FrontProxyError::NoClientCa => "no-requestheader-ca",
            FrontProxyError::BadClientCa(_) => "bad-requestheader-ca",
            FrontProxyError::BadList { .. } => "bad-requestheader-config",
        }
    }
}

/// Why a request was not authenticated (answered 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error(
        "the requestheader configuration ({CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}) is not loaded yet"
    )]
    NotConfigured,
    #[error("no client certificate: requests must come through kube-apiserver")]
    NoCertificate,
    #[error("the client certificate is not signed by the requestheader client CA: {0}")]
    Untrusted(String),
    #[error("the client certificate's common name {0:?} is not in requestheader-allowed-names")]
    NameNotAllowed(String),
    #[error("no user in the requestheader username headers")]
    NoUser,
}

impl AuthnError {
    pub fn label(&self) -> &'static str {
        match self {
            AuthnError::NotConfigured => "not-configured",
            AuthnError::NoCertificate => "no-certificate",
            AuthnError::Untrusted(_) => "untrusted-certificate",
            AuthnError::NameNotAllowed(_) => "name-not-allowed",
            AuthnError::NoUser => "no-user",
        }
    }
}

/// The requestheader configuration, parsed.
#[derive(Debug)]
pub struct RequestHeaderConfig {
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    allowed_names: Vec<String>,
    username_headers: Vec<String>,
    group_headers: Vec<String>,
    /// Lowercased.
    extra_prefixes: Vec<String>,
}

fn list(
    data: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<Vec<String>, FrontProxyError> {
    match data.get(key).map(|s| s.trim()) {
        None | Some("") => Ok(Vec::new()),
        Some(text) => {
            serde_json::from_str(text).map_err(|error| FrontProxyError::BadList { key, error })
        }
    }
}

impl RequestHeaderConfig {
    /// From the ConfigMap's `data`. Missing header lists fall back to kube-apiserver's usual
    /// `X-Remote-User`, `X-Remote-Group`, `X-Remote-Extra-`.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, FrontProxyError> {
        let ca_pem = data.get(CLIENT_CA_KEY).ok_or(FrontProxyError::NoClientCa)?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| FrontProxyError::BadClientCa(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| FrontProxyError::BadClientCa(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(FrontProxyError::BadClientCa("no certificate".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| FrontProxyError::BadClientCa(e.to_string()))?;
        let or = |v: Vec<String>, default: &str| {
            if v.is_empty() {
                vec![default.to_string()]
            } else {
                v
            }
        };
        Ok(RequestHeaderConfig {
            verifier,
            allowed_names: list(data, ALLOWED_NAMES_KEY)?,
            username_headers: or(list(data, USERNAME_HEADERS_KEY)?, "X-Remote-User"),
            group_headers: or(list(data, GROUP_HEADERS_KEY)?, "X-Remote-Group"),
            extra_prefixes: or(list(data, EXTRA_PREFIXES_KEY)?, "X-Remote-Extra-")
                .into_iter()
                .map(|p| p.to_ascii_lowercase())
                .collect(),
        })
    }

    /// Checks the proxy's certificate chain and reads the user from the headers.
    pub fn authenticate(
        &self,
        chain: Option<&[CertificateDer<'static>]>,
        headers: &HeaderMap,
        now: UnixTime,
    ) -> Result<Identity, AuthnError> {
        let (leaf, intermediates) = chain
            .and_then(|c| c.split_first())
            .ok_or(AuthnError::NoCertificate)?;
        self.verifier
            .verify_client_cert(leaf, intermediates, now)
            .map_err(|e| AuthnError::Untrusted(e.to_string()))?;
        if !self.allowed_names.is_empty() {
            let cn = common_name(leaf).unwrap_or_default();
            if !self.allowed_names.contains(&cn) {
                return Err(AuthnError::NameNotAllowed(cn));
            }
        }
        let values = |name: &str| {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let user = self
            .username_headers
            .iter()
            .flat_map(|h| values(h))
            .find(|u| !u.is_empty())
            .ok_or(AuthnError::NoUser)?;
        let groups = self.group_headers.iter().flat_map(|h| values(h)).collect();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers {
            let name = name.as_str(); // already lowercase
            let Some(key) = self
                .extra_prefixes
                .iter()
                .find_map(|p| name.strip_prefix(p.as_str()))
            else {
                continue;
            };
            if let Ok(value) = value.to_str() {
                extra
                    .entry(unescape(key).to_lowercase())
                    .or_default()
                    .push(value.to_owned());
            }
        }
        Ok(Identity {
            user,
            groups,
            extra,
        })
    }
}

fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Extra keys are percent-encoded in header names (Kubernetes' requestheader convention), so that
/// keys like `authentication.kubernetes.io/pod-name` survive; invalid escapes are kept as written.
fn unescape(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The current configuration; `None` until the ConfigMap was read (every request is then 401).
pub type SharedConfig = Arc<ArcSwapOption<RequestHeaderConfig>>;

/// Reports authentication outcomes, to count them in the coordinator's metrics.
pub trait AuthnObserver: Send + Sync {
    fn authenticated(&self);
    fn refused(&self, error: &AuthnError);
}

#[derive(Clone)]
pub struct Authn {
    pub config: SharedConfig,
    pub observer: Arc<dyn AuthnObserver>,
}

/// axum middleware: a request leaves with an [`Identity`] extension, or is answered 401 with a
/// `metav1.Status`. Any `Identity` a client might have smuggled in cannot exist: extensions only
/// come from inside this process.
pub async fn authenticate(
    State(authn): State<Authn>,
    mut request: Request,
    next: Next,
) -> Response {
    let outcome = match authn.config.load().as_deref() {
        None => Err(AuthnError::NotConfigured),
        Some(config) => {
            let chain = request
                .extensions()
                .get::<PeerCertificates>()
                .map(|p| p.0.as_slice());
            config.authenticate(chain, request.headers(), UnixTime::now())
        }
    };
    match outcome {
        Ok(identity) => {
            authn.observer.authenticated();
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Err(error) => {
            authn.observer.refused(&error);
            tracing::debug!(%error, path = %request.uri().path(), "request refused by front-proxy authentication");
            ApiError::unauthorized(error.to_string()).into_response()
        }
    }
}

/// Keeps `config` equal to the ConfigMap until `shutdown`. A ConfigMap that does not parse keeps
/// the previous configuration (and is logged): a bad edit must not lock everyone out.
pub async fn watch(client: Client, config: SharedConfig, shutdown: Shutdown) {
    let api: Api<ConfigMap> = Api::namespaced(client, CONFIGMAP_NAMESPACE);
    let cfg = watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP_NAME}"));
    let stream = watcher(api, cfg).default_backoff().applied_objects();
    let mut stream = std::pin::pin!(stream.take_until(shutdown.wait()));
    while let Some(event) = stream.next().await {
        match event {
            Ok(map) => match RequestHeaderConfig::from_data(&map.data.unwrap_or_default()) {
                Ok(parsed) => {
                    tracing::info!(allowed_names = ?parsed.allowed_names, "requestheader configuration loaded");
                    config.store(Some(Arc::new(parsed)));
                }
                Err(error) => {
                    tracing::warn!(%error, "unusable requestheader configuration; keeping the previous one")
                }
            },
            Err(error) => tracing::warn!(%error, "watching {CONFIGMAP_NAMESPACE}/{CONFIGMAP_NAME}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };

    struct Ca {
        pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn client(ca: &Ca, cn: &str) -> Vec<CertificateDer<'static>> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        vec![params.signed_by(&key, &ca.issuer).unwrap().der().clone()]
    }

    fn data(ca: &Ca, allowed: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (CLIENT_CA_KEY.to_string(), ca.pem.clone()),
            (ALLOWED_NAMES_KEY.to_string(), allowed.to_string()),
            (
                USERNAME_HEADERS_KEY.to_string(),
                r#"["X-Remote-User"]"#.to_string(),
            ),
            (
                GROUP_HEADERS_KEY.to_string(),
                r#"["X-Remote-Group"]"#.to_string(),
            ),
            (
                EXTRA_PREFIXES_KEY.to_string(),
                r#"["X-Remote-Extra-"]"#.to_string(),
            ),
        ])
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn a_proxy_certificate_from_the_ca_makes_the_headers_trusted() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let front = ca("front-proxy-ca");
        let config =
            RequestHeaderConfig::from_data(&data(&front, r#"["front-proxy-client"]"#)).unwrap();
        let chain = client(&front, "front-proxy-client");
        let h = headers(&[
            ("x-remote-user", "jane"),
            ("x-remote-group", "dev"),
            ("x-remote-group", "system:authenticated"),
            (
                "x-remote-extra-authentication.kubernetes.io%2fpod-name",
                "p",
            ),
            ("x-remote-extra-Scopes", "a"),
            ("x-remote-extra-scopes", "b"),
        ]);
        let identity = config
            .authenticate(Some(&chain), &h, UnixTime::now())
            .unwrap();
        assert_eq!(identity.user, "jane");
        assert_eq!(identity.groups, ["dev", "system:authenticated"]);
        assert_eq!(
            identity.extra,
            BTreeMap::from([
                (
                    "authentication.kubernetes.io/pod-name".to_string(),
                    vec!["p".to_string()]
                ),
                ("scopes".to_string(), vec!["a".to_string(), "b".to_string()]),
            ])
        );
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let front = ca("front-proxy-ca");
        let other = ca("someone-else");
        let config =
            RequestHeaderConfig::from_data(&data(&front, r#"["front-proxy-client"]"#)).unwrap();
        let user = headers(&[("x-remote-user", "jane")]);
        let now = UnixTime::now();
        assert_eq!(
            config.authenticate(None, &user, now),
            Err(AuthnError::NoCertificate)
        );
        assert_eq!(
            config.authenticate(Some(&[]), &user, now),
            Err(AuthnError::NoCertificate)
        );
        let forged = client(&other, "front-proxy-client");
        assert!(matches!(
            config.authenticate(Some(&forged), &user, now),
            Err(AuthnError::Untrusted(_))
        ));
        let wrong_name = client(&front, "kubelet");
        assert_eq!(
            config.authenticate(Some(&wrong_name), &user, now),
            Err(AuthnError::NameNotAllowed("kubelet".into()))
        );
        let good = client(&front, "front-proxy-client");
        assert_eq!(
            config.authenticate(Some(&good), &headers(&[("x-remote-user", "")]), now),
            Err(AuthnError::NoUser)
        );
        // An empty allowed-names list accepts any CN the CA signed.
        let any = RequestHeaderConfig::from_data(&data(&front, "[]")).unwrap();
        assert_eq!(
            any.authenticate(Some(&wrong_name), &user, now)
                .unwrap()
                .user,
            "jane"
        );
    }

    #[test]
    fn bad_configuration_is_named() {
        let front = ca("front-proxy-ca");
        assert!(matches!(
            RequestHeaderConfig::from_data(&BTreeMap::new()),
            Err(FrontProxyError::NoClientCa)
        ));
        let mut junk = data(&front, "[]");
        junk.insert(CLIENT_CA_KEY.into(), "not pem".into());
        assert!(matches!(
            RequestHeaderConfig::from_data(&junk),
            Err(FrontProxyError::BadClientCa(_))
        ));
        let bad_list = data(&front, "front-proxy-client");
        assert_eq!(
            RequestHeaderConfig::from_data(&bad_list)
                .unwrap_err()
                .label(),
            "bad-requestheader-config"
        );
        // Without header lists, kube-apiserver's usual names.
        let mut minimal = BTreeMap::new();
        minimal.insert(CLIENT_CA_KEY.to_string(), front.pem.clone());
        let config = RequestHeaderConfig::from_data(&minimal).unwrap();
        assert_eq!(config.username_headers, ["X-Remote-User"]);
    }

    #[test]
    fn extra_keys_are_unescaped() {
        assert_eq!(unescape("a%2Fb"), "a/b");
        assert_eq!(unescape("100%"), "100%");
        assert_eq!(unescape("%zz%2"), "%zz%2");
    }
}
