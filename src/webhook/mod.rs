//! Mutating admission webhook: selection, patch, certificates, server.
//!
//! `patch` and `admission` are pure; `server` is HTTP; `self_managed`, `namespaces` and `audit` are
//! the only parts that talk to the API server, and none of them runs while a request is handled.

pub mod admission;
pub mod audit;
pub mod config;
mod coordinator_ca;
mod json;
pub mod metrics;
pub mod namespaces;
pub mod patch;
pub mod server;

use std::sync::{Arc, atomic::Ordering};

use kube::Client;

use self::{
    config::{NativeSidecar, WebhookArgs},
    metrics::Metrics,
    namespaces::NamespaceCache,
    server::WebhookState,
};
use crate::{
    server::{
        self as runtime, BindError, TlsMode,
        shutdown::Shutdown,
        tls_source::{self, TlsObserver, TlsSourceError},
    },
    tls::{
        self, CertResolver, ServingCert, TlsError,
        files::ReloadObserver,
        self_managed::{CaBundleTarget, Reconciled, SelfManagedError},
    },
};

/// First Kubernetes minor with native sidecars on by default.
const NATIVE_SIDECAR_MINOR: u32 = 29;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("TLS certificate: {0}")]
    Tls(#[from] TlsSourceError),
    #[error("--tls-mode self-managed needs Kubernetes access (in-cluster or KUBECONFIG): {0}")]
    NoCluster(kube::Error),
    #[error("reading --coordinator-ca-file {path}: {source}")]
    CoordinatorCa {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("invalid agent defaults: {0}")]
    AgentDefaults(#[from] super::webhook::patch::DefaultsError),
    #[error("health server: {0}")]
    Health(std::io::Error),
}

/// `auto` asks the API server once, at start.
async fn native_sidecar(mode: NativeSidecar, client: Option<&Client>) -> bool {
    match mode {
        NativeSidecar::Always => true,
        NativeSidecar::Never => false,
        NativeSidecar::Auto => {
            let Some(client) = client else {
                tracing::info!("no cluster access: native sidecars off");
                return false;
            };
            match client.apiserver_version().await {
                Ok(info) => {
                    let minor: u32 = info.minor.trim_end_matches('+').parse().unwrap_or(0);
                    let major: u32 = info.major.parse().unwrap_or(0);
                    let native = major > 1 || (major == 1 && minor >= NATIVE_SIDECAR_MINOR);
                    tracing::info!(version = %info.git_version, native, "native sidecar decision");
                    native
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the server version: native sidecars off");
                    false
                }
            }
        }
    }
}

/// Runs the webhook until SIGTERM/SIGINT.
pub async fn run(args: WebhookArgs) -> Result<(), WebhookError> {
    let drain = args.shutdown_drain;
    run_until(args, runtime::on_os_signal(drain)).await
}

/// Runs the webhook until `shutdown` (tests drive this directly).
pub async fn run_until(args: WebhookArgs, shutdown: Shutdown) -> Result<(), WebhookError> {
    let defaults = args.agent_defaults()?;
    let client = match Client::try_default().await {
        Ok(client) => Some(client),
        Err(error) if args.server.tls_mode == TlsMode::SelfManaged => {
            return Err(WebhookError::NoCluster(error));
        }
        Err(error) => {
            tracing::info!(%error, "no Kubernetes access: no namespace defaults, no audit");
            None
        }
    };
    let metrics = Arc::new(Metrics::default());
    let resolver = Arc::new(CertResolver::default());
    let coordinator_ca =
        match &args.coordinator_ca_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|source| {
                WebhookError::CoordinatorCa {
                    path: path.clone(),
                    source,
                }
            })?),
            None => None,
        };
    let native = native_sidecar(args.native_sidecar, client.as_ref()).await;
    let namespaces = match &client {
        Some(client) => NamespaceCache::watch(client.clone(), shutdown.clone()),
        None => NamespaceCache::default(),
    };
    let self_managed = args.server.tls_mode == TlsMode::SelfManaged;
    let state = WebhookState::new(
        args.injector_config(defaults, native, coordinator_ca.clone()),
        namespaces.clone(),
        metrics.clone(),
        resolver.clone(),
        !self_managed,
    );
    if let Some(client) = &client {
        let _ = state.queue_registries.set(
            crate::coordinator::queues::registry_cache::QueueRegistryCache::watch(
                client.clone(),
                shutdown.clone(),
            ),
        );
    }

    if let (None, Some(name), Some(client)) = (
        &args.coordinator_ca_file,
        &args.coordinator_tls_secret_name,
        &client,
    ) {
        tokio::spawn(coordinator_ca::watch(
            kube::Api::namespaced(client.clone(), &args.server.namespace),
            name.clone(),
            state.clone(),
            args.server.cert_check_interval,
            shutdown.clone(),
        ));
    }

    let self_managed_cfg = args.server.self_managed(
        &args.tls_secret_name,
        &args.service_name,
        CA_NAME,
        CaBundleTarget::MutatingWebhook(args.webhook_config_name.clone()),
    );
    let observer = Arc::new(WebhookTls {
        state: state.clone(),
        use_own_ca: coordinator_ca.is_none() && args.coordinator_tls_secret_name.is_none(),
    });
    tls_source::start(
        &args.server,
        client.clone(),
        self_managed_cfg,
        resolver.clone(),
        observer,
        shutdown.clone(),
    )?;

    if let (Some(client), false) = (&client, args.audit_interval.is_zero()) {
        let audit = audit::Audit::new(
            client.clone(),
            namespaces,
            args.excluded_namespaces(),
            metrics.clone(),
        );
        tokio::spawn(audit.run(args.audit_interval, shutdown.clone()));
    }

    let admission = runtime::bind(args.server.listen).await?;
    let health = runtime::bind(args.server.health_listen).await?;
    tracing::info!(listen = %args.server.listen, health = %args.server.health_listen, "webhook serving");
    let tls_config = tls::server_config(resolver);
    let health_task = tokio::spawn(runtime::serve_health(
        health,
        runtime::health_router(state.clone()),
        shutdown.clone(),
    ));
    runtime::serve_tls(
        admission,
        tls_config,
        server::admission_router(state),
        shutdown,
    )
    .await;
    health_task
        .await
        .map_err(|e| WebhookError::Health(std::io::Error::other(e)))?
        .map_err(WebhookError::Health)
}

const CA_NAME: &str = "mirrord-operator webhook CA";

/// The webhook's view of its TLS source: metrics, readiness, and (self-managed without
/// --coordinator-ca-file or --coordinator-tls-secret-name) the CA bundle injected agents trust.
struct WebhookTls {
    state: Arc<WebhookState>,
    use_own_ca: bool,
}

impl ReloadObserver for WebhookTls {
    fn loaded(&self, cert: &ServingCert) {
        self.state.metrics.loaded(cert);
    }

    fn failed(&self, error: &TlsError) {
        self.state.metrics.failed(error);
    }
}

impl TlsObserver for WebhookTls {
    fn served(&self, cert: &ServingCert) {
        self.state.metrics.tls.served(cert);
    }

    fn reconciled(&self, done: &Reconciled) {
        let state = &self.state;
        state.metrics.tls.reconciled(&state.resolver, done);
        state
            .ca_bundle_synced
            .store(done.ca_bundle_synced, Ordering::Release);
        let current = state.injector.load();
        if self.use_own_ca
            && current.coordinator_ca_bundle.as_deref() != Some(done.trust_bundle.as_str())
        {
            let mut updated = (**current).clone();
            updated.coordinator_ca_bundle = Some(done.trust_bundle.clone());
            state.injector.store(Arc::new(updated));
        }
    }

    fn reconcile_failed(&self, error: &SelfManagedError) {
        self.state.metrics.error(error.label());
    }
}
