//! Self-managed TLS, the Kubernetes half: the material of [`super::rotation`] kept in one Secret so
//! every replica serves the same chain (optimistic concurrency on its resourceVersion), hot-swapped
//! into rustls, and the target's caBundle kept equal to the trusted CAs by server-side apply under
//! the field manager `mirrord-operator` (Helm and Argo CD own every other field, so nobody fights).

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::{
    api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
    kube_aggregator::pkg::apis::apiregistration::v1::APIService,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;
use time::OffsetDateTime;

use super::{
    CertResolver, ServingCert, TlsError,
    rotation::{IssuePolicy, Material},
};
use crate::certs::CertError;

pub const FIELD_MANAGER: &str = "mirrord-operator";
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

/// The registration whose `caBundle` the self-managed mode keeps: the API server reads it to trust
/// the serving certificate. The Secret is owned by it, so uninstalling (deleting the registration)
/// lets the garbage collector remove the Secret created at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaBundleTarget {
    /// `MutatingWebhookConfiguration` NAME: every webhook entry's `clientConfig.caBundle`.
    MutatingWebhook(String),
    /// `APIService` NAME (e.g. `v1.operator.metalbear.co`): `spec.caBundle`.
    ApiService(String),
}

impl CaBundleTarget {
    pub fn name(&self) -> &str {
        match self {
            CaBundleTarget::MutatingWebhook(name) | CaBundleTarget::ApiService(name) => name,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            CaBundleTarget::MutatingWebhook(_) => "MutatingWebhookConfiguration",
            CaBundleTarget::ApiService(_) => "APIService",
        }
    }

    fn api_version(&self) -> &'static str {
        match self {
            CaBundleTarget::MutatingWebhook(_) => "admissionregistration.k8s.io/v1",
            CaBundleTarget::ApiService(_) => "apiregistration.k8s.io/v1",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SelfManagedConfig {
    pub namespace: String,
    pub secret_name: String,
    pub target: CaBundleTarget,
    pub issue: IssuePolicy,
}

/// What one reconcile pass found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// PEM bundle the API server must trust: the previous CA while it is valid, the current CA, and
    /// the next CA while one is staged.
    pub trust_bundle: String,
    /// Serial of the serving certificate now served.
    pub serial: String,
    /// The Secret was created or replaced in this pass.
    pub secret_written: bool,
    /// A different certificate replaced the one served before this pass (a staged CA alone changes
    /// the Secret but not the served certificate).
    pub reloaded: bool,
    /// Whether the caBundle now matches (false when the target does not exist yet).
    pub ca_bundle_synced: bool,
    /// The caBundle was patched in this pass.
    pub ca_bundle_patched: bool,
}

/// The target as the API server holds it.
struct TargetState {
    owner: Option<OwnerReference>,
    /// One caBundle per entry (webhook entries; one for an APIService); empty when there is none.
    bundles: Vec<Vec<u8>>,
    /// Names of the webhook entries, which server-side apply needs as list keys.
    entries: Vec<String>,
}

/// Keeps the Secret, the served certificate and the caBundle in line.
pub struct SelfManaged {
    cfg: SelfManagedConfig,
    client: Client,
    secrets: Api<Secret>,
    resolver: Arc<CertResolver>,
}

impl SelfManaged {
    pub fn new(client: Client, cfg: SelfManagedConfig, resolver: Arc<CertResolver>) -> Self {
        SelfManaged {
            secrets: Api::namespaced(client.clone(), &cfg.namespace),
            client,
            cfg,
            resolver,
        }
    }

    /// One pass: make sure the Secret holds valid, current material; serve it; sync the caBundle.
    pub async fn reconcile(&self, now: OffsetDateTime) -> Result<Reconciled, SelfManagedError> {
        let target = self.target_state().await?;
        let owner = target.as_ref().and_then(|t| t.owner.clone());
        // What the API server trusts before this pass writes anything: a next CA found here was
        // published by an earlier pass and may be promoted.
        let ca_bundles: Vec<&[u8]> = target
            .iter()
            .flat_map(|t| t.bundles.iter().map(Vec::as_slice))
            .collect();
        let (material, secret_written) =
            self.ensure_secret(now, &ca_bundles, owner.as_ref()).await?;
        let serving = ServingCert::from_pem(
            material.serving.cert_pem.as_bytes(),
            material.serving.key_pem.as_bytes(),
        )?;
        let serial = serving.serial.clone();
        let served = self.resolver.current();
        let changed = served
            .as_ref()
            .is_none_or(|current| current.serial != serial);
        if changed {
            tracing::info!(%serial, not_after = serving.not_after, "serving the self-managed certificate");
            self.resolver.swap(serving);
        }
        let trust_bundle = material.trust_bundle(now);
        let (ca_bundle_synced, ca_bundle_patched) = match target {
            Some(target) => self.sync_ca_bundle(target, &trust_bundle).await?,
            None => {
                tracing::warn!(kind = self.cfg.target.kind(), name = %self.cfg.target.name(), "caBundle target not found; caBundle not synced");
                (false, false)
            }
        };
        Ok(Reconciled {
            trust_bundle,
            serial,
            secret_written,
            reloaded: changed && served.is_some(),
            ca_bundle_synced,
            ca_bundle_patched,
        })
    }

    async fn target_state(&self) -> Result<Option<TargetState>, kube::Error> {
        let owner = |meta: &ObjectMeta| {
            Some(OwnerReference {
                api_version: self.cfg.target.api_version().into(),
                kind: self.cfg.target.kind().into(),
                name: meta.name.clone()?,
                uid: meta.uid.clone()?,
                ..Default::default()
            })
        };
        Ok(match &self.cfg.target {
            CaBundleTarget::MutatingWebhook(name) => {
                let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
                api.get_opt(name).await?.map(|config| {
                    let webhooks = config.webhooks.unwrap_or_default();
                    TargetState {
                        owner: owner(&config.metadata),
                        bundles: webhooks
                            .iter()
                            .map(|w| {
                                w.client_config
                                    .ca_bundle
                                    .clone()
                                    .map_or_else(Vec::new, |b| b.0)
                            })
                            .collect(),
                        entries: webhooks.into_iter().map(|w| w.name).collect(),
                    }
                })
            }
            CaBundleTarget::ApiService(name) => {
                let api: Api<APIService> = Api::all(self.client.clone());
                api.get_opt(name).await?.map(|service| TargetState {
                    owner: owner(&service.metadata),
                    bundles: vec![
                        service
                            .spec
                            .and_then(|s| s.ca_bundle)
                            .map_or_else(Vec::new, |b| b.0),
                    ],
                    entries: Vec::new(),
                })
            }
        })
    }

    async fn ensure_secret(
        &self,
        now: OffsetDateTime,
        ca_bundles: &[&[u8]],
        owner: Option<&OwnerReference>,
    ) -> Result<(Material, bool), SelfManagedError> {
        for _ in 0..MAX_CONFLICT_RETRIES {
            let existing = self.secrets.get_opt(&self.cfg.secret_name).await?;
            let Some(secret) = existing else {
                let material = Material::fresh(&self.cfg.issue, now)?;
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
                Some(material) => material.renewed(&self.cfg.issue, ca_bundles, now)?,
                None => None,
            };
            // A Secret from before the configuration existed gains its owner on the next pass.
            let owned = owner.is_none_or(|o| {
                let refs = secret.metadata.owner_references.iter().flatten();
                refs.into_iter().any(|r| r.uid == o.uid)
            });
            let (renewed, change) = match (current, renewed) {
                (_, Some((renewed, change))) => (renewed, Some(change)),
                (Some(current), None) if owned => return Ok((current, false)),
                (Some(current), None) => (current, None),
                // Unreadable material (edited by hand?): start over.
                (None, None) => (
                    Material::fresh(&self.cfg.issue, now)?,
                    Some("replaced unreadable material"),
                ),
            };
            let replacement =
                self.secret(&renewed, secret.metadata.resource_version.clone(), owner);
            let replaced = self
                .secrets
                .replace(&self.cfg.secret_name, &PostParams::default(), &replacement)
                .await;
            match (replaced, change) {
                (Ok(_), Some(change)) => {
                    tracing::info!(secret = %self.cfg.secret_name, change, "rotated the self-managed certificate");
                    return Ok((renewed, true));
                }
                (Ok(_), None) => {
                    tracing::info!(secret = %self.cfg.secret_name, "TLS Secret now owned by its caBundle target");
                    return Ok((renewed, false));
                }
                // Another replica rotated first (resourceVersion moved): read theirs.
                (Err(kube::Error::Api(e)), _) if e.code == 409 => continue,
                (Err(e), _) => return Err(e.into()),
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

    /// Returns (synced, patched). A target that does not exist yet is never created here: it is the
    /// installer's, and an apply of only caBundle would create a broken one.
    async fn sync_ca_bundle(
        &self,
        target: TargetState,
        bundle: &str,
    ) -> Result<(bool, bool), SelfManagedError> {
        if target.bundles.is_empty() {
            return Ok((false, false));
        }
        if target.bundles.iter().all(|b| b == bundle.as_bytes()) {
            return Ok((true, false));
        }
        let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bundle);
        let name = self.cfg.target.name();
        match &self.cfg.target {
            CaBundleTarget::MutatingWebhook(_) => {
                let patch = json!({
                    "apiVersion": self.cfg.target.api_version(),
                    "kind": self.cfg.target.kind(),
                    "metadata": { "name": name },
                    "webhooks": target.entries.iter().map(|entry| json!({
                        "name": entry,
                        "clientConfig": { "caBundle": encoded },
                    })).collect::<Vec<_>>(),
                });
                // force: the caBundle is ours by design; taking it from whoever wrote it last is
                // the point.
                let params = PatchParams::apply(FIELD_MANAGER).force();
                let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
                api.patch(name, &params, &Patch::Apply(&patch)).await?;
            }
            CaBundleTarget::ApiService(_) => {
                // A merge patch, not an apply: before Kubernetes 1.22 the aggregator serves
                // APIServices without a field manager and an apply panics the apiserver.
                let patch = json!({ "spec": { "caBundle": encoded } });
                let params = PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..PatchParams::default()
                };
                let api: Api<APIService> = Api::all(self.client.clone());
                api.patch(name, &params, &Patch::Merge(&patch)).await?;
            }
        }
        tracing::info!(kind = self.cfg.target.kind(), %name, "caBundle updated");
        Ok((true, true))
    }
}
