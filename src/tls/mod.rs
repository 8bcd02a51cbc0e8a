//! TLS material for the servers: PEM loading, a hot-swappable certificate resolver, expiry
//! reporting, and the self-managed CA (a pure rotation policy in [`rotation`], its Kubernetes writes
//! in [`self_managed`]). Every mode (files, self-managed, cert-manager) ends in
//! [`CertResolver::swap`], so rotation never restarts a listener or drops a connection.

use std::{fmt, sync::Arc};

use arc_swap::ArcSwapOption;
use rustls::{
    DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::{
        ClientHello, ResolvesServerCert,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
    sign::CertifiedKey,
};

pub mod files;
pub mod rotation;
pub mod self_managed;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate found in PEM input")]
    NoCertificate,
    #[error("unreadable certificate PEM: {0}")]
    CertPem(rustls::pki_types::pem::Error),
    #[error("unreadable private key PEM: {0}")]
    KeyPem(rustls::pki_types::pem::Error),
    #[error("certificate and key do not match or are unusable: {0}")]
    Mismatch(rustls::Error),
    #[error("unparsable X.509 certificate: {0}")]
    X509(String),
    #[error("reading {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl TlsError {
    /// Short label for the `reason` of error metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TlsError::NoCertificate | TlsError::CertPem(_) | TlsError::X509(_) => "bad-certificate",
            TlsError::KeyPem(_) => "bad-key",
            TlsError::Mismatch(_) => "key-mismatch",
            TlsError::Read { .. } => "read",
        }
    }
}

/// A parsed serving certificate with what operations care about.
pub struct ServingCert {
    pub key: Arc<CertifiedKey>,
    /// Expiry of the leaf, seconds since the epoch.
    pub not_after: i64,
    /// Start of validity of the leaf, seconds since the epoch.
    pub not_before: i64,
    /// The leaf's serial number, hex; lets logs and tests tell two certificates apart.
    pub serial: String,
}

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCert")
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl ServingCert {
    /// Parses a PEM chain (leaf first) and its PEM private key, and checks they belong together.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(TlsError::CertPem)?;
        let leaf = chain.first().ok_or(TlsError::NoCertificate)?;
        let (_, x509) =
            x509_parser::parse_x509_certificate(leaf).map_err(|e| TlsError::X509(e.to_string()))?;
        let (not_before, not_after) = (
            x509.validity().not_before.timestamp(),
            x509.validity().not_after.timestamp(),
        );
        let serial = x509.raw_serial_as_string();
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(TlsError::KeyPem)?;
        let provider = rustls::crypto::ring::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(TlsError::Mismatch)?;
        Ok(ServingCert {
            key: Arc::new(key),
            not_after,
            not_before,
            serial,
        })
    }
}

/// Serves whatever certificate was swapped in last; empty until the first one arrives, in which case
/// handshakes fail (and `/readyz` says not ready).
#[derive(Default)]
pub struct CertResolver {
    current: ArcSwapOption<ServingCert>,
}

impl fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertResolver")
            .field("current", &self.current.load().as_deref())
            .finish()
    }
}

impl CertResolver {
    pub fn swap(&self, cert: ServingCert) {
        self.current.store(Some(Arc::new(cert)));
    }

    pub fn current(&self) -> Option<Arc<ServingCert>> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().as_ref().map(|c| c.key.clone())
    }
}

/// A server config over `resolver`, speaking HTTP/2 and HTTP/1.1 (the apiserver uses either).
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Like [`server_config`], but asks every client for a certificate without requiring one. A sent
/// certificate must be backed by its key (the handshake signature is checked) but its issuer is not
/// checked here: the trusted CA changes at run time (kube-apiserver's front-proxy CA is read from a
/// watched ConfigMap) and clients without a certificate (agents) share the listener, so the handler
/// decides, from [`crate::server::PeerCertificates`].
pub fn server_config_asking_client_cert(resolver: Arc<CertResolver>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyClientCert {
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Whether one of the CA certificates of a PEM `bundle` signed `leaf` (DER): does a client trusting
/// this caBundle accept the certificate? Unreadable entries are skipped.
pub fn bundle_signs(bundle: &[u8], leaf: &CertificateDer<'_>) -> bool {
    let Ok((_, leaf)) = x509_parser::parse_x509_certificate(leaf) else {
        return false;
    };
    CertificateDer::pem_slice_iter(bundle)
        .filter_map(Result::ok)
        .any(|ca| {
            x509_parser::parse_x509_certificate(&ca).is_ok_and(|(_, ca)| {
                ca.subject() == leaf.issuer()
                    && leaf.verify_signature(Some(ca.public_key())).is_ok()
            })
        })
}

/// Optional client certificates whose chain is checked later, by the request handler.
#[derive(Debug)]
struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: a Go client (kube-apiserver) then sends its only certificate whatever its issuer.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{San, generate_ca, issue_serving};
    use std::time::Duration;

    #[test]
    fn parses_generated_pair_and_rejects_mismatched_key() {
        let now = time::OffsetDateTime::now_utc();
        let ca = generate_ca("ca", now, Duration::from_secs(3600)).unwrap();
        let a = issue_serving(
            &ca,
            &[San::Dns("a.test".into())],
            now,
            Duration::from_secs(60),
        )
        .unwrap();
        let b = issue_serving(
            &ca,
            &[San::Dns("b.test".into())],
            now,
            Duration::from_secs(60),
        )
        .unwrap();
        let served = ServingCert::from_pem(a.cert_pem.as_bytes(), a.key_pem.as_bytes()).unwrap();
        assert!(served.not_after > served.not_before);
        let err = ServingCert::from_pem(a.cert_pem.as_bytes(), b.key_pem.as_bytes()).unwrap_err();
        assert_eq!(err.label(), "key-mismatch");
        assert_eq!(
            ServingCert::from_pem(b"", a.key_pem.as_bytes())
                .unwrap_err()
                .label(),
            "bad-certificate"
        );
        assert_eq!(
            ServingCert::from_pem(a.cert_pem.as_bytes(), b"junk")
                .unwrap_err()
                .label(),
            "bad-key"
        );
    }

    #[test]
    fn a_bundle_signs_what_one_of_its_cas_issued() {
        let now = time::OffsetDateTime::now_utc();
        let day = Duration::from_secs(86400);
        let (a, b) = (
            generate_ca("a", now, day).unwrap(),
            generate_ca("b", now, day).unwrap(),
        );
        let leaf = issue_serving(&b, &[San::Dns("x.test".into())], now, day).unwrap();
        let leaf =
            ServingCert::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap();
        let leaf = &leaf.key.cert[0];
        let both = format!("{}{}", a.cert_pem, b.cert_pem);
        assert!(bundle_signs(both.as_bytes(), leaf));
        assert!(bundle_signs(b.cert_pem.as_bytes(), leaf));
        assert!(!bundle_signs(a.cert_pem.as_bytes(), leaf));
        assert!(!bundle_signs(b"", leaf));
        assert!(!bundle_signs(b"garbage", leaf));
    }

    #[test]
    fn resolver_starts_empty_and_serves_the_last_swap() {
        let resolver = CertResolver::default();
        assert!(resolver.current().is_none());
        let now = time::OffsetDateTime::now_utc();
        let ca = generate_ca("ca", now, Duration::from_secs(3600)).unwrap();
        for name in ["one.test", "two.test"] {
            let pair =
                issue_serving(&ca, &[San::Dns(name.into())], now, Duration::from_secs(60)).unwrap();
            let cert =
                ServingCert::from_pem(pair.cert_pem.as_bytes(), pair.key_pem.as_bytes()).unwrap();
            let serial = cert.serial.clone();
            resolver.swap(cert);
            assert_eq!(resolver.current().unwrap().serial, serial);
        }
    }
}
