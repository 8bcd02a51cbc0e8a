//! Certificate generation with rcgen: the CA and serving certificates used by `mirrord-operator certs`
//! (development) and by the webhook's self-managed TLS mode.

use std::{
    fs,
    io::Write,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// Certificates are back-dated so a clock a little behind the issuer's still accepts them.
pub const BACKDATE: time::Duration = time::Duration::minutes(5);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid subject alternative name {0:?}")]
    InvalidSan(String),
    #[error("validity {0:?} is out of range")]
    Validity(Duration),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct PemPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for PemPair {
    // Never print key material into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// A subject alternative name of a serving certificate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl std::str::FromStr for San {
    type Err = CertError;

    /// An IP literal becomes an IP SAN, anything else a DNS name.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(San::Ip(ip));
        }
        let valid = !s.is_empty()
            && s.len() <= 253
            && s.split('.').enumerate().all(|(i, label)| {
                (!label.is_empty() && label.len() <= 63)
                    && (label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        || (i == 0 && label == "*"))
            });
        if valid {
            Ok(San::Dns(s.to_ascii_lowercase()))
        } else {
            Err(CertError::InvalidSan(s.to_string()))
        }
    }
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Dns(name) => f.write_str(name),
            San::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

fn validity_window(
    now: OffsetDateTime,
    validity: Duration,
) -> Result<(OffsetDateTime, OffsetDateTime), CertError> {
    let span = time::Duration::try_from(validity).map_err(|_| CertError::Validity(validity))?;
    let not_after = now.checked_add(span).ok_or(CertError::Validity(validity))?;
    Ok((now - BACKDATE, not_after))
}

/// A self-signed CA that may only sign end-entity certificates.
pub fn generate_ca(
    common_name: &str,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<PemPair, CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "mirrord-operator");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params.not_before, params.not_after) = validity_window(now, validity)?;
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A serving certificate for `sans`, signed by `ca`. The first SAN is also the common name.
pub fn issue_serving(
    ca: &PemPair,
    sans: &[San],
    now: OffsetDateTime,
    validity: Duration,
) -> Result<PemPair, CertError> {
    let first = sans
        .first()
        .ok_or_else(|| CertError::InvalidSan(String::new()))?;
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, first.to_string());
    params.distinguished_name = dn;
    params.subject_alt_names = sans
        .iter()
        .map(|san| match san {
            San::Dns(name) => name
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(CertError::from),
            San::Ip(ip) => Ok(SanType::IpAddress(*ip)),
        })
        .collect::<Result<_, _>>()?;
    // ECDSA keys sign; key encipherment is an RSA-only usage.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    (params.not_before, params.not_after) = validity_window(now, validity)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(PemPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// `mirrord-operator certs`: development certificates for `--tls-mode files`.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Directory to write ca.crt, tls.crt and tls.key into (created when missing).
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_CERTS_OUT_DIR",
        default_value = "webhook-certs"
    )]
    pub out_dir: PathBuf,
    /// DNS name the serving certificate is valid for; repeat for more (e.g. the Service's
    /// `<svc>.<ns>.svc`). Defaults to localhost.
    #[arg(
        long = "dns-name",
        env = "MIRRORD_OPERATOR_CERTS_DNS_NAMES",
        value_delimiter = ','
    )]
    pub dns_names: Vec<String>,
    /// IP address the serving certificate is valid for; repeat for more. Defaults to 127.0.0.1 and ::1
    /// when no DNS name is given either.
    #[arg(long = "ip", env = "MIRRORD_OPERATOR_CERTS_IPS", value_delimiter = ',')]
    pub ips: Vec<IpAddr>,
    /// How long the serving certificate is valid (the CA lives ten times longer).
    #[arg(long, env = "MIRRORD_OPERATOR_CERTS_VALIDITY", default_value = "8760h", value_parser = humantime::parse_duration)]
    pub validity: Duration,
}

impl CertsArgs {
    pub fn sans(&self) -> Result<Vec<San>, CertError> {
        let mut sans: Vec<San> = self
            .dns_names
            .iter()
            .map(|n| n.parse())
            .collect::<Result<_, _>>()?;
        sans.extend(self.ips.iter().copied().map(San::Ip));
        if sans.is_empty() {
            sans = vec![
                San::Dns("localhost".into()),
                San::Ip([127, 0, 0, 1].into()),
                San::Ip(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
            ];
        }
        Ok(sans)
    }
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (the key readable by the owner only).
pub fn write_dev_certs(args: &CertsArgs, now: OffsetDateTime) -> Result<Vec<PathBuf>, CertError> {
    let sans = args.sans()?;
    let ca_validity = args
        .validity
        .checked_mul(10)
        .ok_or(CertError::Validity(args.validity))?;
    let ca = generate_ca("mirrord-operator development CA", now, ca_validity)?;
    let serving = issue_serving(&ca, &sans, now, args.validity)?;
    fs::create_dir_all(&args.out_dir).map_err(|source| CertError::Write {
        path: args.out_dir.clone(),
        source,
    })?;
    let files = [
        ("ca.crt", &ca.cert_pem, 0o644),
        ("tls.crt", &serving.cert_pem, 0o644),
        ("tls.key", &serving.key_pem, 0o600),
    ];
    files
        .iter()
        .map(|(name, pem, mode)| write_atomically(&args.out_dir.join(name), pem.as_bytes(), *mode))
        .collect()
}

/// Write to a temporary sibling and rename, so a webhook polling the directory never reads half a file.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<PathBuf, CertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents)
        .and_then(|_| file.sync_all())
        .map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn san_parsing_distinguishes_ips_and_rejects_garbage() {
        assert_eq!(
            "127.0.0.1".parse::<San>().unwrap(),
            San::Ip([127, 0, 0, 1].into())
        );
        assert_eq!(
            "Svc.NS.svc".parse::<San>().unwrap(),
            San::Dns("svc.ns.svc".into())
        );
        assert!("bad name".parse::<San>().is_err());
        assert!("a..b".parse::<San>().is_err());
        assert!("".parse::<San>().is_err());
    }

    #[test]
    fn serving_certificate_chains_to_the_ca_and_carries_the_sans() {
        let now = OffsetDateTime::now_utc();
        let ca = generate_ca("test CA", now, Duration::from_secs(3600)).unwrap();
        let sans = vec![
            San::Dns("mirrord-operator.mirrord.svc".into()),
            San::Ip([127, 0, 0, 1].into()),
        ];
        let serving = issue_serving(&ca, &sans, now, Duration::from_secs(600)).unwrap();
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(ca.cert_pem.as_bytes()).unwrap();
        let ca_x509 = ca_pem.parse_x509().unwrap();
        let (_, leaf_pem) = x509_parser::pem::parse_x509_pem(serving.cert_pem.as_bytes()).unwrap();
        let leaf = leaf_pem.parse_x509().unwrap();
        assert_eq!(leaf.issuer(), ca_x509.subject());
        leaf.verify_signature(Some(ca_x509.public_key()))
            .expect("signed by the CA");
        assert!(ca_x509.is_ca());
        let names = leaf
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .len();
        assert_eq!(names, 2);
        let lifetime = leaf.validity().not_after.timestamp() - now.unix_timestamp();
        assert!((595..=605).contains(&lifetime), "lifetime {lifetime}");
    }
}
