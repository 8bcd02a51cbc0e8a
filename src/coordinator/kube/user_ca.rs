//! The CA that signs user credentials, kept in a Secret so every replica and every restart signs
//! with (and accepts certificates of) the same CA: read it, or create it when absent, with
//! optimistic concurrency (a replica that loses the create race reads the winner's).
//!
//! Rotation ([`keep`]): after 2/3 of the CA's life a new CA replaces it in the Secret and the old
//! one moves to `ca-previous.crt`, where it is still accepted until it expires (certificates it
//! signed never outlive it). The license fingerprint changes with the CA, so the CLI asks for a new
//! certificate; one it already holds keeps working meanwhile.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use arc_swap::ArcSwap;

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

use crate::server::shutdown::Shutdown;
use time::OffsetDateTime;

use crate::{
    certs::{self, CertError},
    coordinator::credentials::{CredentialError, UserCa},
    tls::self_managed::FIELD_MANAGER,
};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
/// The CAs replaced by rotation whose certificates are still accepted.
const PREVIOUS_CA_CERT: &str = "ca-previous.crt";
const CA_NAME: &str = "mirrord-operator user-credential CA";
const MAX_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum UserCaError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Generate(#[from] CertError),
    #[error(
        "the user-credential CA in Secret {0} is unusable ({1}); delete the Secret to get a new CA (every user then requests a new certificate)"
    )]
    Unusable(String, CredentialError),
    #[error("gave up after {MAX_ATTEMPTS} conflicting writes of the user-credential CA Secret")]
    Conflicts,
}

impl UserCaError {
    pub fn label(&self) -> &'static str {
        match self {
            UserCaError::Kube(_) => "kube-api",
            UserCaError::Generate(_) => "cert-generation",
            UserCaError::Unusable(..) => "user-ca-unusable",
            UserCaError::Conflicts => "secret-conflicts",
        }
    }
}

fn pem(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// The CA a Secret holds, accepting its still-valid previous CAs (pure).
pub fn from_secret(secret: &Secret, now: OffsetDateTime) -> Result<UserCa, CredentialError> {
    let (cert, key) = (
        pem(secret, CA_CERT).unwrap_or_default(),
        pem(secret, CA_KEY).unwrap_or_default(),
    );
    UserCa::from_pem(&cert, &key)?
        .accepting_previous(&pem(secret, PREVIOUS_CA_CERT).unwrap_or_default(), now)
}

/// The Secret data after a rotation, or None when `current` is not due yet (pure): a new CA of
/// `validity`, and `current` with its still-accepted predecessors as `ca-previous.crt`.
pub fn rotated_data(
    current: &UserCa,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<Option<BTreeMap<String, ByteString>>, CertError> {
    if !current.rotation_due(now) {
        return Ok(None);
    }
    let fresh = certs::generate_ca(CA_NAME, now, validity)?;
    Ok(Some(BTreeMap::from([
        (CA_CERT.into(), ByteString(fresh.cert_pem.into_bytes())),
        (CA_KEY.into(), ByteString(fresh.key_pem.into_bytes())),
        (
            PREVIOUS_CA_CERT.into(),
            ByteString(current.retired_bundle().into_bytes()),
        ),
    ])))
}

/// Reads the CA from Secret `namespace/name`, creating it first (valid for `validity`) if it does
/// not exist. An existing but unusable Secret is an error rather than silently replaced: replacing
/// it would invalidate every certificate issued so far. A created Secret is owned by `owner` (the
/// APIService), so uninstalling removes it.
pub async fn load_or_create(
    client: Client,
    namespace: &str,
    name: &str,
    owner: Option<OwnerReference>,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<UserCa, UserCaError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    for _ in 0..MAX_ATTEMPTS {
        if let Some(secret) = secrets.get_opt(name).await? {
            return from_secret(&secret, now)
                .map_err(|e| UserCaError::Unusable(format!("{namespace}/{name}"), e));
        }
        let fresh = certs::generate_ca(CA_NAME, now, validity)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    FIELD_MANAGER.to_string(),
                )])),
                owner_references: owner.clone().map(|o| vec![o]),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                (
                    CA_CERT.into(),
                    ByteString(fresh.cert_pem.clone().into_bytes()),
                ),
                (
                    CA_KEY.into(),
                    ByteString(fresh.key_pem.clone().into_bytes()),
                ),
            ])),
            ..Default::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %name, "created the user-credential CA");
                return UserCa::from_pem(&fresh.cert_pem, &fresh.key_pem)
                    .map_err(|e| UserCaError::Unusable(format!("{namespace}/{name}"), e));
            }
            // Another replica created it first: read theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(UserCaError::Conflicts)
}

/// Re-reads the Secret every `interval`: rotates the CA when it is due (a replace guarded by
/// `resourceVersion`, so of racing replicas one wins and the others read its CA) and swaps
/// `current` when the Secret holds another CA than the one in use (a rotation by this or another
/// replica). Failures are counted under `on_error` and retried at the next tick.
pub async fn keep(
    secrets: Api<Secret>,
    name: String,
    validity: Duration,
    current: Arc<ArcSwap<UserCa>>,
    interval: Duration,
    on_error: impl Fn(&'static str) + Send,
    mut shutdown: Shutdown,
) {
    while shutdown.sleep(interval).await {
        if let Err(error) = check(&secrets, &name, validity, &current).await {
            tracing::warn!(%error, secret = %name, "user-credential CA check failed");
            on_error(error.label());
        }
    }
}

async fn check(
    secrets: &Api<Secret>,
    name: &str,
    validity: Duration,
    current: &ArcSwap<UserCa>,
) -> Result<(), UserCaError> {
    let now = OffsetDateTime::now_utc();
    // Gone (deleted by an admin): keep serving the CA in memory; a restart creates a new one.
    let Some(mut secret) = secrets.get_opt(name).await? else {
        return Ok(());
    };
    let unusable = |e| UserCaError::Unusable(name.to_string(), e);
    let mut stored = from_secret(&secret, now).map_err(unusable)?;
    if let Some(data) = rotated_data(&stored, now, validity)? {
        secret.data = Some(data);
        secret.metadata.managed_fields = None;
        match secrets.replace(name, &PostParams::default(), &secret).await {
            Ok(written) => {
                stored = from_secret(&written, now).map_err(unusable)?;
                tracing::info!(secret = %name, fingerprint = stored.fingerprint(), "user-credential CA rotated; the previous one is accepted until it expires");
            }
            // Another replica rotated first: adopt its CA at the next tick.
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    let in_use = current.load();
    if in_use.fingerprint() != stored.fingerprint()
        || in_use.previous_count() != stored.previous_count()
    {
        tracing::info!(secret = %name, fingerprint = stored.fingerprint(), accepted_previous = stored.previous_count(), "user-credential CA reloaded");
        current.store(Arc::new(stored));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(data: BTreeMap<String, ByteString>) -> Secret {
        Secret {
            data: Some(data),
            ..Default::default()
        }
    }

    #[test]
    fn rotation_writes_a_new_ca_and_keeps_the_old_one_accepted() {
        let year = Duration::from_secs(365 * 24 * 3600);
        let t0 = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let first = certs::generate_ca(CA_NAME, t0, 3 * year).unwrap();
        let stored = secret(BTreeMap::from([
            (
                CA_CERT.into(),
                ByteString(first.cert_pem.clone().into_bytes()),
            ),
            (
                CA_KEY.into(),
                ByteString(first.key_pem.clone().into_bytes()),
            ),
        ]));
        let ca = from_secret(&stored, t0).unwrap();
        assert!(rotated_data(&ca, t0 + year, 3 * year).unwrap().is_none());
        let due = t0 + 2 * year + Duration::from_secs(24 * 3600);
        let issued = ca
            .sign_csr(
                crate::coordinator::credentials::tests::CLI_CSR,
                due,
                time::Duration::days(30),
            )
            .unwrap();
        let rotated = secret(rotated_data(&ca, due, 3 * year).unwrap().unwrap());
        let next = from_secret(&rotated, due).unwrap();
        assert_ne!(next.fingerprint(), ca.fingerprint());
        assert_eq!(next.previous_count(), 1);
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &issued.der);
        assert!(
            next.verify_client(&b64, due).is_ok(),
            "overlap: the old certificate is still accepted"
        );
        // Short lives: 2/3 counts from issuance, not from the back-dated notBefore.
        let short = certs::generate_ca(CA_NAME, t0, Duration::from_secs(45)).unwrap();
        let short = UserCa::from_pem(&short.cert_pem, &short.key_pem).unwrap();
        assert!(!short.rotation_due(t0 + Duration::from_secs(29)));
        assert!(short.rotation_due(t0 + Duration::from_secs(30)));
        // Once the old CA has expired it is dropped from what the Secret is read as.
        assert_eq!(
            from_secret(&rotated, t0 + 3 * year + year)
                .unwrap()
                .previous_count(),
            0
        );
        // The new CA is not due again right away.
        assert!(rotated_data(&next, due, 3 * year).unwrap().is_none());
    }
}
