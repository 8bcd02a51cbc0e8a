//! User credentials (operator-api.md §3): the coordinator's own client CA signs the CSR the mirrord
//! CLI sends, and later checks that the `x-client-der` a request presents was signed by it.
//!
//! Pure: the CA material, the CSR and the time come in as arguments; nothing here reads files, the
//! clock or the cluster. `coordinator/kube` keeps the CA in a Secret and swaps [`UserCa`] on rotation.

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD},
};
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::{prelude::FromDer, time::ASN1Time};

use crate::coordinator::api::state::ClientCertificate;

/// Clock skew the issued certificates tolerate (their `notBefore` is this much in the past).
const BACKDATE: Duration = Duration::minutes(5);
/// Longest subject CN kept from a CSR (the X.509 upper bound for commonName).
const MAX_COMMON_NAME: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("the user-credential CA is unusable: {0}")]
    Ca(String),
    #[error("the CSR is not a PEM PKCS#10 certificate request with a valid signature: {0}")]
    Csr(String),
    #[error("the request body is neither a PEM CSR nor a JSON string holding one")]
    LegacyBody,
    #[error("signing the certificate failed: {0}")]
    Sign(String),
    #[error("x-client-der is not base64 of a DER X.509 certificate")]
    ClientDerEncoding,
    #[error("the client certificate was not issued by this operator's user-credential CA")]
    ClientNotOurs,
    #[error(
        "the client certificate is not valid now (expired or not yet valid); request a new one"
    )]
    ClientExpired,
}

impl CredentialError {
    /// Label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Ca(_) => "ca",
            Self::Csr(_) => "csr",
            Self::LegacyBody => "legacy_body",
            Self::Sign(_) => "sign",
            Self::ClientDerEncoding => "client_der_encoding",
            Self::ClientNotOurs => "client_not_ours",
            Self::ClientExpired => "client_expired",
        }
    }
}

/// The CA that signs user certificates, parsed once.
pub struct UserCa {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    fingerprint: String,
}

impl std::fmt::Debug for UserCa {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserCa")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl UserCa {
    /// Parses a CA certificate and its private key (both PEM) and checks that they belong together.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CredentialError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CredentialError::Ca(e.to_string()))?;
        let block = pem_block(cert_pem, "CERTIFICATE")
            .ok_or_else(|| CredentialError::Ca("no CERTIFICATE PEM block".into()))?;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&block)
            .map_err(|e| CredentialError::Ca(e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CredentialError::Ca(
                "the private key does not match the certificate".into(),
            ));
        }
        let fingerprint = URL_SAFE_NO_PAD.encode(sha256(&block));
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der: block,
            fingerprint,
        })
    }

    /// A new self-signed CA (development and tests; production keeps one in a Secret).
    pub fn generate(common_name: &str, now: OffsetDateTime) -> Result<Self, CredentialError> {
        let key = KeyPair::generate().map_err(|e| CredentialError::Ca(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(3650);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CredentialError::Ca(e.to_string()))?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// `spec.license.fingerprint`: base64url (no padding) of the SHA-256 of the CA certificate
    /// (DER). It changes when the CA rotates, which makes the CLI ask for a new certificate (its
    /// credential store is keyed by the fingerprint) instead of presenting one we would refuse.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Signs the CLI's CSR: a client certificate for the CSR's public key and subject CN, valid
    /// from `now - 5 min` to `now + validity`. The serial number is derived from the CSR and the
    /// time, so the function stays pure.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        now: OffsetDateTime,
        validity: Duration,
    ) -> Result<SignedCertificate, CredentialError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CredentialError::Csr(e.to_string()))?;
        let common_name = csr
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .and_then(dn_text)
            .unwrap_or_default();
        let common_name: String = common_name.chars().take(MAX_COMMON_NAME).collect();

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        if !common_name.is_empty() {
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = now + validity;
        let mut seed = csr_pem.as_bytes().to_vec();
        seed.extend_from_slice(&now.unix_timestamp_nanos().to_be_bytes());
        let mut serial = sha256(&seed)[..16].to_vec();
        serial[0] &= 0x7f; // positive INTEGER
        params.serial_number = Some(SerialNumber::from_slice(&serial));

        let key =
            KeyPair::from_pem(&self.key_pem).map_err(|e| CredentialError::Ca(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key)
            .map_err(|e| CredentialError::Ca(e.to_string()))?;
        let csr = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = csr
            .signed_by(&issuer)
            .map_err(|e| CredentialError::Sign(e.to_string()))?;
        Ok(SignedCertificate {
            pem: cert.pem(),
            der: cert.der().to_vec(),
        })
    }

    /// Checks a request's `x-client-der` (base64 of a DER certificate): issued and signed by this
    /// CA, valid at `now`. Returns who it identifies.
    pub fn verify_client(
        &self,
        client_der_b64: &str,
        now: OffsetDateTime,
    ) -> Result<ClientCertificate, CredentialError> {
        let der = STANDARD
            .decode(client_der_b64.trim())
            .map_err(|_| CredentialError::ClientDerEncoding)?;
        let (rest, cert) = x509_parser::certificate::X509Certificate::from_der(&der)
            .map_err(|_| CredentialError::ClientDerEncoding)?;
        if !rest.is_empty() {
            return Err(CredentialError::ClientDerEncoding);
        }
        let (_, ca) = x509_parser::certificate::X509Certificate::from_der(&self.cert_der)
            .map_err(|e| CredentialError::Ca(e.to_string()))?;
        if cert.issuer() != ca.subject() || cert.verify_signature(Some(ca.public_key())).is_err() {
            return Err(CredentialError::ClientNotOurs);
        }
        if !cert.validity().is_valid_at(ASN1Time::from(now)) {
            return Err(CredentialError::ClientExpired);
        }
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(ClientCertificate {
            common_name,
            user_id: STANDARD_NO_PAD.encode(&cert.public_key().subject_public_key.data),
        })
    }
}

/// A signed user certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCertificate {
    pub pem: String,
    pub der: Vec<u8>,
}

/// The legacy `mirrordoperators/operator/certificate` body: the raw PEM text on first issuance, a
/// JSON string holding it on renewal (operator-api.md §3.4). Returns the PEM text.
pub fn legacy_csr_body(body: &[u8]) -> Result<String, CredentialError> {
    let text = std::str::from_utf8(body).map_err(|_| CredentialError::LegacyBody)?;
    let trimmed = text.trim();
    if trimmed.starts_with('"') {
        serde_json::from_str::<String>(trimmed).map_err(|_| CredentialError::LegacyBody)
    } else if trimmed.starts_with("-----BEGIN") {
        Ok(trimmed.to_owned())
    } else {
        Err(CredentialError::LegacyBody)
    }
}

fn dn_text(value: &rcgen::DnValue) -> Option<String> {
    match value {
        rcgen::DnValue::PrintableString(s) => Some(s.as_str().to_owned()),
        rcgen::DnValue::Utf8String(s) => Some(s.clone()),
        rcgen::DnValue::Ia5String(s) => Some(s.as_str().to_owned()),
        rcgen::DnValue::TeletexString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// The contents of the first PEM block labelled `label`.
fn pem_block(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let body: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(body).ok()
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CSR the real CLI 3.250 sent (cli-capture-3.250.jsonl): Ed25519 key, CN=vm, CRLF lines.
    pub(crate) const CLI_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----\r\nMIGQMEICAQAwDTELMAkGA1UEAwwCdm0wLDAHBgMrZW4FAAMhAJbL1vEX9736RJEy\r\nX2eSC/aP941n/hGBySLGgE2uNvnZoAAwBwYDK2VwBQADQQCxVZ/eYsxSFPYXMfMP\r\n1nSgzg+Wj41rsIZiiOlshA5vjZTWC46CNx8tqazM/KCbt3OXvtEkCmCQigsT1XCF\r\nszwL\r\n-----END CERTIFICATE REQUEST-----\r\n";

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).unwrap()
    }

    #[test]
    fn signs_the_cli_csr_and_verifies_it_back() {
        let now = at(1_800_000_000);
        let ca = UserCa::generate("test CA", now).unwrap();
        let signed = ca.sign_csr(CLI_CSR, now, Duration::days(1)).unwrap();
        let b64 = STANDARD.encode(&signed.der);
        let client = ca.verify_client(&b64, now).unwrap();
        assert_eq!(client.common_name, "vm");
        // The Ed25519 key of the CSR, as the CLI computes its user id.
        assert_eq!(
            client.user_id,
            "lsvW8Rf3vfpEkTJfZ5IL9o/3jWf+EYHJIsaATa42+dk"
        );
        assert!(matches!(
            ca.verify_client(&b64, now + Duration::days(2)),
            Err(CredentialError::ClientExpired)
        ));
        assert!(matches!(
            ca.verify_client(&b64, now - Duration::hours(1)),
            Err(CredentialError::ClientExpired)
        ));
    }

    #[test]
    fn refuses_certificates_of_another_ca() {
        let now = at(1_800_000_000);
        let ours = UserCa::generate("ours", now).unwrap();
        let theirs = UserCa::generate("ours", now).unwrap();
        let signed = theirs.sign_csr(CLI_CSR, now, Duration::days(1)).unwrap();
        assert!(matches!(
            ours.verify_client(&STANDARD.encode(&signed.der), now),
            Err(CredentialError::ClientNotOurs)
        ));
        assert_ne!(ours.fingerprint(), theirs.fingerprint());
        assert!(matches!(
            ours.verify_client("not base64!", now),
            Err(CredentialError::ClientDerEncoding)
        ));
    }

    #[test]
    fn refuses_a_tampered_csr() {
        let now = at(1_800_000_000);
        let ca = UserCa::generate("ca", now).unwrap();
        let tampered = CLI_CSR.replace("dm0w", "dm1w");
        assert!(matches!(
            ca.sign_csr(&tampered, now, Duration::days(1)),
            Err(CredentialError::Csr(_))
        ));
        assert!(matches!(
            ca.sign_csr("hello", now, Duration::days(1)),
            Err(CredentialError::Csr(_))
        ));
    }

    #[test]
    fn legacy_body_accepts_raw_pem_and_json_string() {
        assert_eq!(legacy_csr_body(CLI_CSR.as_bytes()).unwrap(), CLI_CSR.trim());
        let json = serde_json::to_string(CLI_CSR).unwrap();
        assert_eq!(legacy_csr_body(json.as_bytes()).unwrap(), CLI_CSR);
        assert!(legacy_csr_body(b"{}").is_err());
        assert!(legacy_csr_body(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn ca_and_key_must_match() {
        let now = at(1_800_000_000);
        let a = UserCa::generate("a", now).unwrap();
        let b = UserCa::generate("b", now).unwrap();
        assert!(UserCa::from_pem(a.cert_pem(), &b.key_pem).is_err());
        assert!(UserCa::from_pem(a.cert_pem(), &a.key_pem).is_ok());
    }
}
