//! Where the serving certificate comes from, for any component: files (and cert-manager's mounted
//! Secret) polled for changes, or the self-managed CA reconciled on an interval. Either way the
//! certificate lands in the shared [`CertResolver`].

use std::{sync::Arc, time::Duration};

use kube::Client;

use super::{ServerArgs, TlsMode, shutdown::Shutdown};
use crate::tls::{
    CertResolver, ServingCert, TlsError,
    files::{self, CertFiles, ReloadObserver},
    self_managed::{Reconciled, SelfManaged, SelfManagedConfig, SelfManagedError},
};

/// What the component learns from its TLS source, to update its own metrics and state.
pub trait TlsObserver: ReloadObserver {
    /// The certificate loaded at start (files modes).
    fn served(&self, cert: &ServingCert);
    /// A self-managed pass finished.
    fn reconciled(&self, done: &Reconciled);
    /// A self-managed pass failed; it is retried with backoff.
    fn reconcile_failed(&self, error: &SelfManagedError);
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSourceError {
    #[error(transparent)]
    Files(#[from] TlsError),
    #[error("--tls-mode self-managed needs Kubernetes access (in-cluster or KUBECONFIG)")]
    NoCluster,
}

/// Starts the source `args` selects. Files are loaded once here (a failure is fatal at start) and
/// then watched; the self-managed loop is spawned and fills `resolver` on its first pass.
/// `self_managed` is only used in self-managed mode.
pub fn start(
    args: &ServerArgs,
    client: Option<Client>,
    self_managed: SelfManagedConfig,
    resolver: Arc<CertResolver>,
    observer: Arc<dyn TlsObserver>,
    shutdown: Shutdown,
) -> Result<(), TlsSourceError> {
    match args.tls_mode {
        TlsMode::Files | TlsMode::CertManager => {
            let files = CertFiles {
                cert: args.tls_cert_file.clone(),
                key: args.tls_key_file.clone(),
            };
            let cert = files.load()?;
            tracing::info!(serial = %cert.serial, not_after = cert.not_after, mode = ?args.tls_mode, "serving certificate loaded");
            observer.served(&cert);
            resolver.swap(cert);
            let observer: Arc<dyn ReloadObserver> = observer;
            tokio::spawn(files::watch(
                files,
                resolver,
                args.cert_check_interval,
                observer,
                shutdown,
            ));
        }
        TlsMode::SelfManaged => {
            let client = client.ok_or(TlsSourceError::NoCluster)?;
            let manager = SelfManaged::new(client, self_managed, resolver);
            tokio::spawn(keep_self_managed(
                manager,
                observer,
                args.cert_check_interval,
                shutdown,
            ));
        }
    }
    Ok(())
}

/// The self-managed loop: reconcile now, then every `interval`; retry failures sooner, with backoff.
async fn keep_self_managed(
    manager: SelfManaged,
    observer: Arc<dyn TlsObserver>,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    let mut retry = Duration::from_millis(500);
    loop {
        let wait = match manager.reconcile(time::OffsetDateTime::now_utc()).await {
            Ok(done) => {
                retry = Duration::from_millis(500);
                observer.reconciled(&done);
                // Not synced means the target is missing: check again soon rather than in a minute.
                if done.ca_bundle_synced {
                    interval
                } else {
                    interval.min(Duration::from_secs(5))
                }
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?retry, "self-managed TLS reconcile failed");
                observer.reconcile_failed(&error);
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
