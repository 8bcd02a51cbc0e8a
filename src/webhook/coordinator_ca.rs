//! The CA bundle injected agents trust for the coordinator, read from the coordinator's own
//! TLS Secret (`--coordinator-tls-secret-name`; self-managed, or cert-manager's with `ca.crt`): the
//! coordinator has a CA of its own, so the webhook's CA would not verify it. Public data only (the certificates, never the keys).

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::server::WebhookState;
use crate::{server::shutdown::Shutdown, tls::rotation::secret_trust_bundle};

/// Polls Secret `name`: every two seconds until it holds a CA, then every `interval` (a CA rotation
/// changes the bundle). Pods admitted before the first read get no CA, and their agents say so.
pub async fn watch(
    api: Api<Secret>,
    name: String,
    state: Arc<WebhookState>,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    loop {
        let bundle = match api.get_opt(&name).await {
            Ok(secret) => secret
                .as_ref()
                .and_then(|s| secret_trust_bundle(s, time::OffsetDateTime::now_utc())),
            Err(error) => {
                tracing::warn!(%error, secret = %name, "cannot read the coordinator's TLS Secret");
                None
            }
        };
        if let Some(bundle) = &bundle {
            let current = state.injector.load();
            if current.coordinator_ca_bundle.as_deref() != Some(bundle.as_str()) {
                let mut updated = (**current).clone();
                updated.coordinator_ca_bundle = Some(bundle.clone());
                state.injector.store(Arc::new(updated));
                tracing::info!(secret = %name, "coordinator CA for agents updated");
            }
        }
        let wait = if bundle.is_some() {
            interval
        } else {
            interval.min(Duration::from_secs(2))
        };
        if !shutdown.sleep(wait).await {
            break;
        }
    }
}
