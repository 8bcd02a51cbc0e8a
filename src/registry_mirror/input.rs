//! Validation of a mirror's input (its name, spec and credentials Secret) into the values the
//! rendering needs. Pure: every failure is an [`InputError`] that ends up in the status and an Event.

use std::{collections::BTreeMap, fmt};

use base64::Engine;
use k8s_openapi::{
    ByteString,
    api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements},
    apimachinery::pkg::api::resource::Quantity,
};

/// Cache volume size when `spec.volumeClaimTemplate` requests none.
pub const DEFAULT_STORAGE: &str = "20Gi";
/// Share of the volume nginx may fill; the rest is headroom for temp files and filesystem overhead.
pub const CACHE_SHARE_PERCENT: u128 = 80;
/// Longest mirror name: `registry-mirror-<name>-headless` must be a DNS-1035 label (63 characters).
pub const MAX_NAME_LEN: usize = 63 - "registry-mirror-".len() - "-headless".len();

/// Why a mirror's input cannot be rendered. Each variant is a condition reason and a metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error(
        "spec.upstreamUrl {url:?} is not a registry host ([https://|http://]host[:port]): {why}"
    )]
    InvalidUpstreamUrl { url: String, why: &'static str },
    #[error(
        "the name {name:?} does not make valid child names: {why} (at most {MAX_NAME_LEN} characters of a-z, 0-9 and '-')"
    )]
    InvalidName { name: String, why: &'static str },
    #[error("Secret {namespace}/{name} (spec.credentialsSecret) does not exist")]
    SecretNotFound { namespace: String, name: String },
    #[error("Secret {namespace}/{name} (spec.credentialsSecret) lacks the key(s) {missing}")]
    SecretMissingKeys {
        namespace: String,
        name: String,
        missing: String,
    },
    #[error("Secret {namespace}/{name} (spec.credentialsSecret): {why}")]
    SecretMalformed {
        namespace: String,
        name: String,
        why: &'static str,
    },
    #[error("spec.volumeClaimTemplate: {0}")]
    InvalidVolumeClaimTemplate(String),
}

impl InputError {
    /// The condition reason, Event reason and metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            InputError::InvalidUpstreamUrl { .. } => "InvalidUpstreamUrl",
            InputError::InvalidName { .. } => "InvalidName",
            InputError::SecretNotFound { .. } => "SecretNotFound",
            InputError::SecretMissingKeys { .. } => "SecretMissingKeys",
            InputError::SecretMalformed { .. } => "SecretMalformed",
            InputError::InvalidVolumeClaimTemplate(_) => "InvalidVolumeClaimTemplate",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
}

/// The upstream registry: scheme and `host[:port]` (also the directory name containerd looks up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    pub host: String,
}

impl Upstream {
    pub fn parse(url: &str) -> Result<Self, InputError> {
        let bad = |why| InputError::InvalidUpstreamUrl {
            url: url.to_owned(),
            why,
        };
        let trimmed = url.trim();
        if trimmed.is_empty() {
            return Err(bad("it is empty"));
        }
        let (scheme, rest) = if let Some(rest) = trimmed.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = trimmed.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if trimmed.contains("://") {
            return Err(bad("only https:// and http:// are supported"));
        } else {
            (Scheme::Https, trimmed)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad("a path, query, fragment or user is not allowed"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, _)) if !h.ends_with(']') && h.contains(':') => (rest, None),
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        };
        if let Some(port) = port {
            match port.parse::<u16>() {
                Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
                _ => return Err(bad("the port is not a number from 1 to 65535")),
            }
        }
        let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            is_dns_name(host)
        };
        if !host_ok {
            return Err(bad("the host is not a DNS name or IP address"));
        }
        Ok(Upstream {
            scheme,
            host: rest.to_ascii_lowercase(),
        })
    }

    pub fn url(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Https => "https",
            Scheme::Http => "http",
        };
        format!("{scheme}://{}", self.host)
    }
}

/// A DNS name (labels of letters, digits and '-', not starting or ending with '-'); IPv4 literals pass.
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Checks that `registry-mirror-<name>` (and `-headless`) are valid Service/StatefulSet names.
pub fn validate_name(name: &str) -> Result<(), InputError> {
    let bad = |why| InputError::InvalidName {
        name: name.to_owned(),
        why,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad("it is too long"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad("it has characters a Service name cannot have"));
    }
    if name.ends_with('-') {
        return Err(bad("it ends with '-'"));
    }
    Ok(())
}

/// The checks that need no Secret: the name, `spec.upstreamUrl` and `spec.volumeClaimTemplate`.
pub fn validate_spec(
    name: &str,
    spec: &super::crd::RegistryMirrorSpec,
) -> Result<(Upstream, CacheVolume), InputError> {
    validate_name(name)?;
    Ok((
        Upstream::parse(&spec.upstream_url)?,
        CacheVolume::resolve(spec.volume_claim_template.as_ref())?,
    ))
}

/// Upstream credentials from the Secret named by `spec.credentialsSecret`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    // The password never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads `username` and `password` from a Secret's data.
    pub fn from_secret(
        namespace: &str,
        name: &str,
        data: Option<&BTreeMap<String, ByteString>>,
    ) -> Result<Self, InputError> {
        let empty = BTreeMap::new();
        let data = data.unwrap_or(&empty);
        let missing: Vec<&str> = ["username", "password"]
            .into_iter()
            .filter(|k| data.get(*k).is_none_or(|v| v.0.is_empty()))
            .collect();
        if !missing.is_empty() {
            return Err(InputError::SecretMissingKeys {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                missing: missing.join(", "),
            });
        }
        let malformed = |why| InputError::SecretMalformed {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            why,
        };
        let text = |key: &str| {
            String::from_utf8(data[key].0.clone()).map_err(|_| malformed("a value is not UTF-8"))
        };
        let username = text("username")?;
        let password = text("password")?;
        if username.contains(':') {
            return Err(malformed(
                "basic authentication forbids ':' in the username",
            ));
        }
        if username.contains(char::is_control) || password.contains(char::is_control) {
            return Err(malformed(
                "a value contains control characters (a trailing newline?)",
            ));
        }
        Ok(Credentials { username, password })
    }

    /// The value of the `Authorization` header sent upstream.
    pub fn basic_header(&self) -> String {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password));
        format!("Basic {token}")
    }
}

/// The cache volume: the claim template and how much of it nginx may use.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheVolume {
    pub template: PersistentVolumeClaim,
    pub max_size_mib: u64,
}

impl CacheVolume {
    /// Resolves `spec.volumeClaimTemplate` (a PersistentVolumeClaim `{metadata, spec}`) with defaults.
    pub fn resolve(template: Option<&serde_json::Value>) -> Result<Self, InputError> {
        let invalid = |why: String| InputError::InvalidVolumeClaimTemplate(why);
        let mut claim: PersistentVolumeClaim = match template {
            None => PersistentVolumeClaim::default(),
            Some(value) => {
                serde_json::from_value(value.clone()).map_err(|e| invalid(e.to_string()))?
            }
        };
        // The StatefulSet names the claim and the controller labels it; what the user may set is the spec.
        claim.status = None;
        let spec = claim
            .spec
            .get_or_insert_with(PersistentVolumeClaimSpec::default);
        if spec.access_modes.as_ref().is_none_or(Vec::is_empty) {
            spec.access_modes = Some(vec!["ReadWriteOnce".to_owned()]);
        }
        let resources = spec
            .resources
            .get_or_insert_with(VolumeResourceRequirements::default);
        let requests = resources.requests.get_or_insert_with(BTreeMap::new);
        let storage = requests
            .entry("storage".to_owned())
            .or_insert_with(|| Quantity(DEFAULT_STORAGE.to_owned()));
        let bytes = quantity_bytes(&storage.0).ok_or_else(|| {
            invalid(format!(
                "resources.requests.storage {:?} is not a quantity",
                storage.0
            ))
        })?;
        let max_size_mib = bytes * CACHE_SHARE_PERCENT / 100 / (1 << 20);
        if max_size_mib == 0 {
            return Err(invalid(format!(
                "resources.requests.storage {:?} is too small for a cache",
                storage.0
            )));
        }
        Ok(CacheVolume {
            template: claim,
            max_size_mib: u64::try_from(max_size_mib).unwrap_or(u64::MAX),
        })
    }
}

/// Bytes of a storage quantity such as `20Gi`, `500M` or `1.5Ti` (no exponent notation).
pub fn quantity_bytes(quantity: &str) -> Option<u128> {
    let q = quantity.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.len() > 9 {
        return None;
    }
    let digits = |s: &str| -> Option<u128> {
        if s.is_empty() {
            Some(0)
        } else if s.bytes().all(|b| b.is_ascii_digit()) && s.len() <= 20 {
            s.parse().ok()
        } else {
            None
        }
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let scaled = digits(whole)?
        .checked_mul(scale)?
        .checked_add(digits(fraction)?)?;
    Some(scaled.checked_mul(multiplier)? / scale)
}
