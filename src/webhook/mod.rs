//! Mutating admission webhook: selection, patch, certificates, server.
//!
//! `patch` and `admission` are pure; `server` is HTTP; `self_managed`, `namespaces` and `audit` are
//! the only parts that talk to the API server, and none of them runs while a request is handled.

pub mod admission;
pub mod audit;
pub mod config;
mod json;
pub mod metrics;
pub mod namespaces;
pub mod patch;
pub mod self_managed;
pub mod server;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use kube::Client;
use tokio::net::TcpListener;

use self::{
    config::{NativeSidecar, TlsMode, WebhookArgs},
    metrics::Metrics,
    namespaces::NamespaceCache,
    self_managed::{SelfManaged, SelfManagedConfig},
    server::WebhookState,
};
use crate::{
    shutdown::{self, Shutdown},
    tls::{self, CertResolver, TlsError, files::CertFiles},
};

/// First Kubernetes minor with native sidecars on by default.
const NATIVE_SIDECAR_MINOR: u32 = 29;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS certificate: {0}")]
    Tls(#[from] TlsError),
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

async fn bind(addr: SocketAddr) -> Result<TcpListener, WebhookError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| WebhookError::Bind { addr, source })
}

/// Runs the webhook until SIGTERM/SIGINT.
pub async fn run(args: WebhookArgs) -> Result<(), WebhookError> {
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::os_signal().await;
        trigger.trigger();
    });
    run_until(args, shutdown).await
}

/// Runs the webhook until `shutdown` (tests drive this directly).
pub async fn run_until(args: WebhookArgs, shutdown: Shutdown) -> Result<(), WebhookError> {
    let defaults = args.agent_defaults()?;
    let client = match Client::try_default().await {
        Ok(client) => Some(client),
        Err(error) if args.tls_mode == TlsMode::SelfManaged => {
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
    let self_managed = args.tls_mode == TlsMode::SelfManaged;
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

    match args.tls_mode {
        TlsMode::Files | TlsMode::CertManager => {
            let files = CertFiles {
                cert: args.tls_cert_file.clone(),
                key: args.tls_key_file.clone(),
            };
            let cert = files.load()?;
            metrics.served(&cert);
            tracing::info!(serial = %cert.serial, not_after = cert.not_after, mode = ?args.tls_mode, "serving certificate loaded");
            resolver.swap(cert);
            tokio::spawn(tls::files::watch(
                files,
                resolver.clone(),
                args.cert_check_interval,
                metrics.clone(),
                shutdown.clone(),
            ));
        }
        TlsMode::SelfManaged => {
            let client = client
                .clone()
                .expect("self-managed mode returned early without a client");
            let cfg = SelfManagedConfig {
                namespace: args.namespace.clone(),
                secret_name: args.tls_secret_name.clone(),
                webhook_config_name: args.webhook_config_name.clone(),
                sans: args.serving_sans(),
                validity: args.cert_validity,
            };
            let manager = SelfManaged::new(client, cfg, resolver.clone());
            let use_own_ca = coordinator_ca.is_none();
            tokio::spawn(keep_self_managed(
                manager,
                state.clone(),
                use_own_ca,
                args.cert_check_interval,
                shutdown.clone(),
            ));
        }
    }

    if let (Some(client), false) = (&client, args.audit_interval.is_zero()) {
        let audit = audit::Audit::new(
            client.clone(),
            namespaces,
            args.excluded_namespaces(),
            metrics.clone(),
        );
        tokio::spawn(audit.run(args.audit_interval, shutdown.clone()));
    }

    let admission = bind(args.listen).await?;
    let health = bind(args.health_listen).await?;
    tracing::info!(listen = %args.listen, health = %args.health_listen, "webhook serving");
    let tls_config = tls::server_config(resolver);
    let health_task = tokio::spawn(server::serve_health(
        health,
        server::health_router(state.clone()),
        shutdown.clone(),
    ));
    server::serve_tls(
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

/// The self-managed loop: reconcile now, then every `interval`; retry failures sooner, with backoff.
async fn keep_self_managed(
    manager: SelfManaged,
    state: Arc<WebhookState>,
    use_own_ca: bool,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    let mut retry = Duration::from_millis(500);
    loop {
        let wait = match manager.reconcile(time::OffsetDateTime::now_utc()).await {
            Ok(done) => {
                retry = Duration::from_millis(500);
                if let Some(cert) = state.resolver.current() {
                    state.metrics.served(&cert);
                }
                if done.reloaded {
                    state.metrics.tls_reloads.inc();
                }
                state
                    .ca_bundle_synced
                    .store(done.ca_bundle_synced, std::sync::atomic::Ordering::Release);
                let current = state.injector.load();
                if use_own_ca
                    && current.coordinator_ca_bundle.as_deref() != Some(done.trust_bundle.as_str())
                {
                    let mut updated = (**current).clone();
                    updated.coordinator_ca_bundle = Some(done.trust_bundle);
                    state.injector.store(Arc::new(updated));
                }
                // Not synced means the configuration is missing: check again soon rather than in a minute.
                if done.ca_bundle_synced {
                    interval
                } else {
                    interval.min(Duration::from_secs(5))
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?retry, "self-managed TLS reconcile failed");
                state.metrics.error(error.label());
                let wait = retry;
                retry = (retry * 2).min(interval);
                wait
            }
        };
        if !shutdown.sleep(wait).await {
            break;
        }
    }
}
