//! The CA that signs user credentials, kept in a Secret so every replica and every restart signs
//! with (and accepts certificates of) the same CA: read it, or create it when absent, with
//! optimistic concurrency (a replica that loses the create race reads the winner's).

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use time::OffsetDateTime;

use crate::{
    certs::{self, CertError},
    coordinator::credentials::{CredentialError, UserCa},
    tls::self_managed::FIELD_MANAGER,
};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CA_NAME: &str = "mirrord-operator user-credential CA";
/// Long: rotating it changes the license fingerprint, which makes every CLI ask for a new
/// certificate.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
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

/// Reads the CA from Secret `namespace/name`, creating it first if it does not exist. An existing
/// but unusable Secret is an error rather than silently replaced: replacing it would invalidate
/// every certificate issued so far. A created Secret is owned by `owner` (the APIService), so
/// uninstalling removes it.
pub async fn load_or_create(
    client: Client,
    namespace: &str,
    name: &str,
    owner: Option<OwnerReference>,
    now: OffsetDateTime,
) -> Result<UserCa, UserCaError> {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    for _ in 0..MAX_ATTEMPTS {
        if let Some(secret) = secrets.get_opt(name).await? {
            let (cert, key) = (
                pem(&secret, CA_CERT).unwrap_or_default(),
                pem(&secret, CA_KEY).unwrap_or_default(),
            );
            return UserCa::from_pem(&cert, &key)
                .map_err(|e| UserCaError::Unusable(format!("{namespace}/{name}"), e));
        }
        let fresh = certs::generate_ca(CA_NAME, now, CA_VALIDITY)?;
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
