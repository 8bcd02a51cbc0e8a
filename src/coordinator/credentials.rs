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

/// The CA that signs user certificates, parsed once, and the CAs it replaced whose certificates are
/// still accepted (the rotation overlap: a certificate signed before a rotation works until it expires).
pub struct UserCa {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    fingerprint: String,
    /// The CA's validity, Unix seconds.
    not_before: i64,
    not_after: i64,
    /// Earlier CAs (PEM, DER), only verified against.
    previous: Vec<(String, Vec<u8>)>,
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
        let validity = cert.validity();
        let (not_before, not_after) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_der: block,
            fingerprint,
            not_before,
            not_after,
            previous: Vec::new(),
        })
    }

    /// Also accepts client certificates of the CAs in `pems` (PEM, any number of blocks) that are
    /// valid at `now`; expired ones are dropped, so the overlap ends when the old CA does.
    pub fn accepting_previous(
        mut self,
        pems: &str,
        now: OffsetDateTime,
    ) -> Result<Self, CredentialError> {
        for der in pem_blocks(pems, "CERTIFICATE") {
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der)
                .map_err(|e| CredentialError::Ca(format!("a previous CA: {e}")))?;
            if der != self.cert_der && cert.validity().is_valid_at(ASN1Time::from(now)) {
                self.previous.push((to_pem(&der), der));
            }
        }
        Ok(self)
    }

    /// Rotation policy: a new CA is due after 2/3 of this one's life. The old one then stays
    /// accepted for the last third, which covers every certificate it signed
    /// ([`sign_csr`](Self::sign_csr) never signs past the CA's own end).
    pub fn rotation_due(&self, now: OffsetDateTime) -> bool {
        // Counted from issuance: `notBefore` is back-dated, which would dominate short lives.
        let issued = (self.not_before + BACKDATE.whole_seconds()).min(self.not_after);
        now.unix_timestamp() >= issued + (self.not_after - issued) * 2 / 3
    }

    /// The CAs to keep accepting once this one is replaced: itself and its still-accepted
    /// predecessors, as PEM (what the Secret stores as `ca-previous.crt`).
    pub fn retired_bundle(&self) -> String {
        std::iter::once(self.cert_pem.as_str())
            .chain(self.previous.iter().map(|(pem, _)| pem.as_str()))
            .map(|pem| pem.trim_end().to_owned() + "\n")
            .collect()
    }

    /// How many earlier CAs are still accepted.
    pub fn previous_count(&self) -> usize {
        self.previous.len()
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
        // Never past the CA's own end, so the rotation overlap covers every certificate signed.
        let ca_end = OffsetDateTime::from_unix_timestamp(self.not_after).unwrap_or(now + validity);
        params.not_after = (now + validity).min(ca_end);
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
        // The CLI 3.250 stores and sends the certificate re-encoded by its X.509 crate, which
        // gives every AlgorithmIdentifier an explicit NULL parameter: the bytes it presents are
        // not the bytes signed. The signature is checked over the certificate as sent, then over
        // the same certificate with those NULLs removed again (what this CA signed).
        let normalized = without_null_algorithm_parameters(&der);
        let mut candidates = vec![cert.clone()];
        if let Some(normalized) = normalized.as_deref()
            && let Ok((_, original)) =
                x509_parser::certificate::X509Certificate::from_der(normalized)
        {
            candidates.push(original);
        }
        let mut signed_by_us = false;
        'cas: for ca_der in
            std::iter::once(&self.cert_der).chain(self.previous.iter().map(|(_, d)| d))
        {
            let (_, ca) = x509_parser::certificate::X509Certificate::from_der(ca_der)
                .map_err(|e| CredentialError::Ca(e.to_string()))?;
            for candidate in &candidates {
                if candidate.issuer() == ca.subject()
                    && candidate.verify_signature(Some(ca.public_key())).is_ok()
                {
                    signed_by_us = true;
                    break 'cas;
                }
            }
        }
        if !signed_by_us {
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

/// `der` (a certificate) with `NULL` parameters dropped from the AlgorithmIdentifiers that this
/// CA writes without parameters: the TBS signature algorithm, the subject key's algorithm and the
/// outer signature algorithm. `None` when `der` is not a certificate or has no such `NULL`.
fn without_null_algorithm_parameters(der: &[u8]) -> Option<Vec<u8>> {
    const NULL: [u8; 2] = [0x05, 0x00];
    /// The raw elements of a DER SEQUENCE.
    fn elements(der: &[u8]) -> Option<Vec<Vec<u8>>> {
        yasna::parse_der(der, |r| {
            let mut out = Vec::new();
            r.read_sequence_of(|r| {
                out.push(r.read_der()?);
                Ok(())
            })?;
            Ok(out)
        })
        .ok()
    }
    fn sequence(items: &[Vec<u8>]) -> Vec<u8> {
        yasna::construct_der(|w| {
            w.write_sequence(|w| {
                for item in items {
                    w.next().write_der(item);
                }
            })
        })
    }
    /// SEQUENCE { OID, NULL } → SEQUENCE { OID }; anything else unchanged.
    fn strip(algorithm: &[u8], changed: &mut bool) -> Vec<u8> {
        match elements(algorithm) {
            Some(parts) if parts.len() == 2 && parts[1] == NULL => {
                *changed = true;
                sequence(&parts[..1])
            }
            _ => algorithm.to_vec(),
        }
    }
    let mut certificate = elements(der)?;
    if certificate.len() != 3 {
        return None;
    }
    let mut changed = false;
    let mut tbs = elements(&certificate[0])?;
    // [0] version is optional: the signature algorithm follows the serial number.
    let first = usize::from(tbs.first()?.first() == Some(&0xa0));
    let (signature, spki) = (first + 1, first + 5);
    if tbs.len() <= spki {
        return None;
    }
    tbs[signature] = strip(&tbs[signature], &mut changed);
    let mut key = elements(&tbs[spki])?;
    if key.len() != 2 {
        return None;
    }
    key[0] = strip(&key[0], &mut changed);
    tbs[spki] = sequence(&key);
    certificate[0] = sequence(&tbs);
    certificate[1] = strip(&certificate[1], &mut changed);
    changed.then(|| sequence(&certificate))
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

/// Every `label` block of `text`, decoded (blocks that are not base64 are skipped).
fn pem_blocks(text: &str, label: &str) -> Vec<Vec<u8>> {
    let end = format!("-----END {label}-----");
    text.split_inclusive(end.as_str())
        .filter_map(|chunk| pem_block(chunk, label))
        .collect()
}

fn to_pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
pub(crate) mod tests {
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

    /// A certificate this CA issued to the real CLI 3.250 (`make demo`), as the CLI stored it in
    /// ~/.mirrord/credentials and sends it as `x-client-der`: re-encoded with NULL algorithm
    /// parameters, so its TBS bytes are not the ones signed.
    const STORED: &str =
        include_str!("../../tests/data/coordinator/cli-3.250/client-as-stored.crt");

    fn stored_der() -> Vec<u8> {
        let b64: String = STORED.lines().filter(|l| !l.starts_with("-----")).collect();
        STANDARD.decode(b64).unwrap()
    }

    fn demo_ca() -> UserCa {
        UserCa::from_pem(
            include_str!("../../tests/data/coordinator/cli-3.250/user-ca.crt"),
            include_str!("../../tests/data/coordinator/cli-3.250/user-ca.key"),
        )
        .unwrap()
    }

    #[test]
    fn accepts_the_certificate_as_the_cli_re_encoded_it() {
        // 2026-12-06, inside the stored certificate's validity.
        let now = at(1_796_515_200);
        let client = demo_ca()
            .verify_client(&STANDARD.encode(stored_der()), now)
            .unwrap();
        assert_eq!(client.common_name, "vm");
        // Byte-exact in its own encoding too: another CA still refuses it.
        let other = UserCa::generate("mirrord-operator user-credential CA", now).unwrap();
        assert!(matches!(
            other.verify_client(&STANDARD.encode(stored_der()), now),
            Err(CredentialError::ClientNotOurs)
        ));
    }

    #[test]
    fn a_tampered_re_encoded_certificate_is_refused() {
        let now = at(1_796_515_200);
        let mut der = stored_der();
        // The subject CN "vm" → "vn": the normalized TBS no longer matches the signature.
        let at_cn = der
            .windows(4)
            .position(|w| w == [0x0c, 0x02, b'v', b'm'])
            .unwrap();
        der[at_cn + 3] = b'n';
        assert!(matches!(
            demo_ca().verify_client(&STANDARD.encode(&der), now),
            Err(CredentialError::ClientNotOurs)
        ));
    }

    #[test]
    fn normalization_undoes_exactly_the_cli_re_encoding() {
        let now = at(1_800_000_000);
        let ca = UserCa::generate("test CA", now).unwrap();
        let signed = ca.sign_csr(CLI_CSR, now, Duration::days(1)).unwrap();
        // Our own encoding has no NULL parameters: nothing to undo.
        assert_eq!(without_null_algorithm_parameters(&signed.der), None);
        // The stored one loses exactly 3 NULLs (2 bytes each) across 3 AlgorithmIdentifiers.
        let stored = stored_der();
        let normalized = without_null_algorithm_parameters(&stored).unwrap();
        assert_eq!(stored.len() - normalized.len(), 6);
        assert_eq!(without_null_algorithm_parameters(&normalized), None);
        assert_eq!(without_null_algorithm_parameters(b"not DER"), None);
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
    fn a_rotated_ca_keeps_accepting_what_the_old_one_signed_until_it_expires() {
        let t0 = at(1_800_000_000);
        let old = UserCa::generate("old", t0).unwrap();
        assert!(!old.rotation_due(t0));
        // 2/3 of 3650 days.
        let rotation = t0 + Duration::days(2434);
        assert!(old.rotation_due(rotation));
        let before = old.sign_csr(CLI_CSR, rotation, Duration::days(30)).unwrap();
        let before = STANDARD.encode(&before.der);

        let new = UserCa::generate("new", rotation).unwrap();
        let new = UserCa::from_pem(new.cert_pem(), &new.key_pem)
            .unwrap()
            .accepting_previous(&old.retired_bundle(), rotation)
            .unwrap();
        assert_eq!(new.previous_count(), 1);
        assert_ne!(new.fingerprint(), old.fingerprint());
        // The overlap: the old certificate works until it expires, new ones come from the new CA.
        assert!(
            new.verify_client(&before, rotation + Duration::days(29))
                .is_ok()
        );
        assert!(matches!(
            new.verify_client(&before, rotation + Duration::days(31)),
            Err(CredentialError::ClientExpired)
        ));
        let after = new.sign_csr(CLI_CSR, rotation, Duration::days(30)).unwrap();
        assert!(
            new.verify_client(&STANDARD.encode(&after.der), rotation)
                .is_ok()
        );
        assert!(matches!(
            old.verify_client(&STANDARD.encode(&after.der), rotation),
            Err(CredentialError::ClientNotOurs)
        ));
        // Without the previous CA the old certificate is refused: the overlap is what accepts it.
        let bare = UserCa::from_pem(new.cert_pem(), &new.key_pem).unwrap();
        assert!(matches!(
            bare.verify_client(&before, rotation),
            Err(CredentialError::ClientNotOurs)
        ));
        // The next rotation keeps both earlier CAs while they are valid, and drops expired ones.
        assert!(new.retired_bundle().matches("BEGIN CERTIFICATE").count() == 2);
        let expired = UserCa::from_pem(new.cert_pem(), &new.key_pem)
            .unwrap()
            .accepting_previous(&old.retired_bundle(), t0 + Duration::days(3651))
            .unwrap();
        assert_eq!(expired.previous_count(), 0);
        assert!(
            UserCa::from_pem(new.cert_pem(), &new.key_pem)
                .unwrap()
                .accepting_previous(
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                    t0
                )
                .is_err()
        );
    }

    #[test]
    fn never_signs_past_the_ca_end() {
        let t0 = at(1_800_000_000);
        let ca = UserCa::generate("ca", t0).unwrap();
        let late = t0 + Duration::days(3645);
        let signed = ca.sign_csr(CLI_CSR, late, Duration::days(30)).unwrap();
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&signed.der).unwrap();
        assert!(cert.validity().not_after.timestamp() <= ca.not_after);
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        /// Bytes from the network never panic the CSR, legacy-body or x-client-der parsers.
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let now = at(1_800_000_000);
            let ca = test_ca();
            let text = String::from_utf8_lossy(&bytes);
            let _ = legacy_csr_body(&bytes);
            let _ = ca.sign_csr(&text, now, Duration::days(1));
            let pem = format!("-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n", STANDARD.encode(&bytes));
            proptest::prop_assert!(ca.sign_csr(&pem, now, Duration::days(1)).is_err());
            proptest::prop_assert!(ca.verify_client(&STANDARD.encode(&bytes), now).is_err());
            let _ = ca.verify_client(&text, now);
        }

        /// A re-encoded certificate with any byte changed never panics the normalizer or the check.
        #[test]
        fn mutated_stored_certificates_never_panic(at_byte in 0usize..418, value in proptest::prelude::any::<u8>()) {
            let mut der = stored_der();
            let i = at_byte % der.len();
            der[i] = value;
            let _ = without_null_algorithm_parameters(&der);
            let _ = demo_ca().verify_client(&STANDARD.encode(&der), at(1_796_515_200));
        }
    }

    fn test_ca() -> &'static UserCa {
        static CA: std::sync::OnceLock<UserCa> = std::sync::OnceLock::new();
        CA.get_or_init(|| UserCa::generate("fuzz", at(1_800_000_000)).unwrap())
    }
}
