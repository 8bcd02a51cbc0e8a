//! Self-managed TLS: a CA and serving certificate generated with rcgen, kept in one Secret so every
//! replica serves the same chain, rotated after two thirds of their life, hot-swapped into rustls, and
//! the MutatingWebhookConfiguration's caBundle kept equal to the CA by server-side apply under the
//! field manager `mirrord-operator` (Helm and Argo CD own every other field, so nobody fights).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::{
    ByteString,
    api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;
use time::OffsetDateTime;

use crate::{
    certs::{self, CertError, PemPair, San},
    tls::{CertResolver, ServingCert, TlsError},
};

pub const FIELD_MANAGER: &str = "mirrord-operator";
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
/// The CA being retired, kept in the bundle until it expires so certificates it signed stay trusted.
const PREVIOUS_CA_CERT: &str = "ca-previous.crt";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
/// Optimistic-concurrency retries when replicas race on the Secret.
const MAX_CONFLICT_RETRIES: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum SelfManagedError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("secret certificate unusable: {0}")]
    Tls(#[from] TlsError),
    #[error("gave up after {MAX_CONFLICT_RETRIES} conflicting updates of the TLS Secret")]
    Conflicts,
}

impl SelfManagedError {
    pub fn label(&self) -> &'static str {
        match self {
            SelfManagedError::Kube(_) => "kube-api",
            SelfManagedError::Cert(_) => "cert-generation",
            SelfManagedError::Tls(e) => e.label(),
            SelfManagedError::Conflicts => "secret-conflicts",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SelfManagedConfig {
    pub namespace: String,
    pub secret_name: String,
    pub webhook_config_name: String,
    pub sans: Vec<San>,
    pub validity: Duration,
}

impl SelfManagedConfig {
    /// The CA outlives many serving certificates so its rotation (and the caBundle change) is rare.
    fn ca_validity(&self) -> Duration {
        self.validity.saturating_mul(10)
    }
}

/// What one reconcile pass found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// PEM bundle the API server must trust (current CA, plus the previous one while it is valid).
    pub trust_bundle: String,
    /// Serial of the serving certificate now served.
    pub serial: String,
    /// The Secret was created or replaced in this pass.
    pub secret_written: bool,
    /// Whether the caBundle now matches (false when the configuration does not exist yet).
    pub ca_bundle_synced: bool,
    /// The caBundle was patched in this pass.
    pub ca_bundle_patched: bool,
}

/// The Secret's certificates, parsed.
struct Material {
    ca: PemPair,
    previous_ca: Option<String>,
    serving: PemPair,
}

/// Seconds-resolution validity of a PEM certificate.
fn validity(cert_pem: &str) -> Option<(i64, i64)> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some((
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    ))
}

/// Past two thirds of its life (or unreadable): time to replace it. The life counts from issuance,
/// not from the back-dated `notBefore`, or a short-lived certificate would be due at once.
fn needs_rotation(cert_pem: &str, now: OffsetDateTime) -> bool {
    match validity(cert_pem) {
        Some((not_before, not_after)) => {
            let issued = (not_before + certs::BACKDATE.whole_seconds()).min(not_after);
            now.unix_timestamp() >= issued + (not_after - issued) * 2 / 3
        }
        None => true,
    }
}

fn covers(cert_pem: &str, sans: &[San]) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return false;
    };
    let present: Vec<String> = ext
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(*bytes).ok()?).to_string()),
                16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(*bytes).ok()?).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    sans.iter().all(|san| present.contains(&san.to_string()))
}

fn string_data(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

impl Material {
    fn from_secret(secret: &Secret) -> Option<Material> {
        Some(Material {
            ca: PemPair {
                cert_pem: string_data(secret, CA_CERT)?,
                key_pem: string_data(secret, CA_KEY)?,
            },
            previous_ca: string_data(secret, PREVIOUS_CA_CERT),
            serving: PemPair {
                cert_pem: string_data(secret, TLS_CERT)?,
                key_pem: string_data(secret, TLS_KEY)?,
            },
        })
    }

    fn data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::from([
            (
                CA_CERT.to_string(),
                ByteString(self.ca.cert_pem.clone().into_bytes()),
            ),
            (
                CA_KEY.to_string(),
                ByteString(self.ca.key_pem.clone().into_bytes()),
            ),
            (
                TLS_CERT.to_string(),
                ByteString(self.serving.cert_pem.clone().into_bytes()),
            ),
            (
                TLS_KEY.to_string(),
                ByteString(self.serving.key_pem.clone().into_bytes()),
            ),
        ]);
        if let Some(previous) = &self.previous_ca {
            data.insert(
                PREVIOUS_CA_CERT.to_string(),
                ByteString(previous.clone().into_bytes()),
            );
        }
        data
    }

    fn trust_bundle(&self, now: OffsetDateTime) -> String {
        let mut bundle = self.ca.cert_pem.clone();
        let previous_valid = self
            .previous_ca
            .as_deref()
            .filter(|p| validity(p).is_some_and(|(_, not_after)| not_after > now.unix_timestamp()));
        if let Some(previous) = previous_valid {
            if !bundle.ends_with('\n') {
                bundle.push('\n');
            }
            bundle.push_str(previous);
        }
        bundle
    }

    fn fresh(cfg: &SelfManagedConfig, now: OffsetDateTime) -> Result<Material, CertError> {
        let ca = certs::generate_ca("mirrord-operator webhook CA", now, cfg.ca_validity())?;
        let serving = certs::issue_serving(&ca, &cfg.sans, now, cfg.validity)?;
        Ok(Material {
            ca,
            previous_ca: None,
            serving,
        })
    }

    /// The material this Secret should hold at `now`, or None when it is fine as it is.
    fn renewed(
        &self,
        cfg: &SelfManagedConfig,
        now: OffsetDateTime,
    ) -> Result<Option<Material>, CertError> {
        if needs_rotation(&self.ca.cert_pem, now) {
            let ca = certs::generate_ca("mirrord-operator webhook CA", now, cfg.ca_validity())?;
            let serving = certs::issue_serving(&ca, &cfg.sans, now, cfg.validity)?;
            return Ok(Some(Material {
                ca,
                previous_ca: Some(self.ca.cert_pem.clone()),
                serving,
            }));
        }
        if needs_rotation(&self.serving.cert_pem, now) || !covers(&self.serving.cert_pem, &cfg.sans)
        {
            let serving = certs::issue_serving(&self.ca, &cfg.sans, now, cfg.validity)?;
            return Ok(Some(Material {
                ca: self.ca.clone(),
                previous_ca: self.previous_ca.clone(),
                serving,
            }));
        }
        Ok(None)
    }
}

/// The Secret is a dependent of the configuration: uninstalling (deleting the configuration) lets the
/// garbage collector remove the Secret the webhook created at run time, so nothing is left behind.
fn owner_reference(config: &MutatingWebhookConfiguration) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "admissionregistration.k8s.io/v1".into(),
        kind: "MutatingWebhookConfiguration".into(),
        name: config.metadata.name.clone()?,
        uid: config.metadata.uid.clone()?,
        ..Default::default()
    })
}

/// Keeps the Secret, the served certificate and the caBundle in line.
pub struct SelfManaged {
    cfg: SelfManagedConfig,
    secrets: Api<Secret>,
    webhooks: Api<MutatingWebhookConfiguration>,
    resolver: Arc<CertResolver>,
}

impl SelfManaged {
    pub fn new(client: Client, cfg: SelfManagedConfig, resolver: Arc<CertResolver>) -> Self {
        SelfManaged {
            secrets: Api::namespaced(client.clone(), &cfg.namespace),
            webhooks: Api::all(client),
            cfg,
            resolver,
        }
    }

    /// One pass: make sure the Secret holds valid, current material; serve it; sync the caBundle.
    pub async fn reconcile(&self, now: OffsetDateTime) -> Result<Reconciled, SelfManagedError> {
        let config = self.webhooks.get_opt(&self.cfg.webhook_config_name).await?;
        let owner = config.as_ref().and_then(owner_reference);
        let (material, secret_written) = self.ensure_secret(now, owner.as_ref()).await?;
        let serving = ServingCert::from_pem(
            material.serving.cert_pem.as_bytes(),
            material.serving.key_pem.as_bytes(),
        )?;
        let serial = serving.serial.clone();
        if self
            .resolver
            .current()
            .is_none_or(|current| current.serial != serial)
        {
            tracing::info!(%serial, not_after = serving.not_after, "serving the self-managed certificate");
            self.resolver.swap(serving);
        }
        let trust_bundle = material.trust_bundle(now);
        let (ca_bundle_synced, ca_bundle_patched) = match config {
            Some(config) => self.sync_ca_bundle(config, &trust_bundle).await?,
            None => {
                tracing::warn!(name = %self.cfg.webhook_config_name, "MutatingWebhookConfiguration not found; caBundle not synced");
                (false, false)
            }
        };
        Ok(Reconciled {
            trust_bundle,
            serial,
            secret_written,
            ca_bundle_synced,
            ca_bundle_patched,
        })
    }

    async fn ensure_secret(
        &self,
        now: OffsetDateTime,
        owner: Option<&OwnerReference>,
    ) -> Result<(Material, bool), SelfManagedError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let existing = self.secrets.get_opt(&self.cfg.secret_name).await?;
            let Some(secret) = existing else {
                let material = Material::fresh(&self.cfg, now)?;
                match self
                    .secrets
                    .create(&PostParams::default(), &self.secret(&material, None, owner))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(secret = %self.cfg.secret_name, "created the self-managed TLS Secret");
                        return Ok((material, true));
                    }
                    // Another replica created it first: use theirs.
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            let current = Material::from_secret(&secret);
            let renewed = match &current {
                Some(material) => material.renewed(&self.cfg, now)?,
                None => None,
            };
            // A Secret from before the configuration existed gains its owner on the next pass.
            let owned = owner.is_none_or(|o| {
                let refs = secret.metadata.owner_references.iter().flatten();
                refs.into_iter().any(|r| r.uid == o.uid)
            });
            let (renewed, rotated) = match (current, renewed) {
                (_, Some(renewed)) => (renewed, true),
                (Some(current), None) if owned => return Ok((current, false)),
                (Some(current), None) => (current, false),
                // Unreadable material (edited by hand?): start over.
                (None, None) => (Material::fresh(&self.cfg, now)?, true),
            };
            let replacement =
                self.secret(&renewed, secret.metadata.resource_version.clone(), owner);
            match self
                .secrets
                .replace(&self.cfg.secret_name, &PostParams::default(), &replacement)
                .await
            {
                Ok(_) if rotated => {
                    tracing::info!(secret = %self.cfg.secret_name, "rotated the self-managed certificate");
                    return Ok((renewed, true));
                }
                Ok(_) => {
                    tracing::info!(secret = %self.cfg.secret_name, "TLS Secret now owned by the webhook configuration");
                    return Ok((renewed, false));
                }
                // Another replica rotated first (resourceVersion moved): read theirs.
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(SelfManagedError::Conflicts)
    }

    fn secret(
        &self,
        material: &Material,
        resource_version: Option<String>,
        owner: Option<&OwnerReference>,
    ) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.cfg.secret_name.clone()),
                namespace: Some(self.cfg.namespace.clone()),
                resource_version,
                owner_references: owner.map(|o| vec![o.clone()]),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    FIELD_MANAGER.to_string(),
                )])),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(material.data()),
            ..Default::default()
        }
    }

    /// Returns (synced, patched). A configuration that does not exist yet is never created here: it is
    /// the installer's, and an apply of only caBundle would create a broken one.
    async fn sync_ca_bundle(
        &self,
        config: MutatingWebhookConfiguration,
        bundle: &str,
    ) -> Result<(bool, bool), SelfManagedError> {
        let webhooks = config.webhooks.unwrap_or_default();
        if webhooks.is_empty() {
            return Ok((false, false));
        }
        let in_sync = webhooks.iter().all(|w| {
            w.client_config
                .ca_bundle
                .as_ref()
                .is_some_and(|b| b.0 == bundle.as_bytes())
        });
        if in_sync {
            return Ok((true, false));
        }
        let patch = json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": { "name": self.cfg.webhook_config_name },
            "webhooks": webhooks.iter().map(|w| json!({
                "name": w.name,
                "clientConfig": { "caBundle": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bundle) },
            })).collect::<Vec<_>>(),
        });
        // force: the caBundle is ours by design; taking it from whoever wrote it last is the point.
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.webhooks
            .patch(
                &self.cfg.webhook_config_name,
                &params,
                &Patch::Apply(&patch),
            )
            .await?;
        tracing::info!(name = %self.cfg.webhook_config_name, "caBundle updated by server-side apply");
        Ok((true, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_due_after_two_thirds_of_the_issued_life() {
        let now = OffsetDateTime::now_utc();
        let ca = certs::generate_ca("ca", now, Duration::from_secs(300)).unwrap();
        let sans = [San::Dns("a.test".into())];
        // Short lives are where the 5-minute back-dating would otherwise dominate.
        let short = certs::issue_serving(&ca, &sans, now, Duration::from_secs(30)).unwrap();
        assert!(!needs_rotation(&short.cert_pem, now));
        assert!(!needs_rotation(
            &short.cert_pem,
            now + time::Duration::seconds(19)
        ));
        assert!(needs_rotation(
            &short.cert_pem,
            now + time::Duration::seconds(21)
        ));
        let long = certs::issue_serving(&ca, &sans, now, Duration::from_secs(3 * 3600)).unwrap();
        assert!(!needs_rotation(
            &long.cert_pem,
            now + time::Duration::minutes(119)
        ));
        assert!(needs_rotation(
            &long.cert_pem,
            now + time::Duration::minutes(121)
        ));
        assert!(needs_rotation("not a certificate", now));
    }
}
