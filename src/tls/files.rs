//! `files` and `cert-manager` modes: certificate and key files on disk (a mounted Secret), reloaded
//! when their contents change.
//!
//! Polling rather than inotify: kubelet updates Secret volumes by swapping a `..data` symlink, which
//! inotify watches on the files themselves miss; reading two small files every few seconds is cheap.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use crate::server::shutdown::Shutdown;

use super::{CertResolver, ServingCert, TlsError};

/// What the reload loop reports, so the caller can count it in its own metrics.
pub trait ReloadObserver: Send + Sync {
    fn loaded(&self, cert: &ServingCert);
    fn failed(&self, error: &TlsError);
}

#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    /// Loads the pair once; used at start, where a failure is fatal.
    pub fn load(&self) -> Result<ServingCert, TlsError> {
        let (cert, key) = self.read()?;
        ServingCert::from_pem(&cert, &key)
    }
}

/// Polls `files` every `interval` and swaps a changed, valid pair into `resolver`. A pair that does not
/// parse or whose key does not match (the two files are written one after the other) keeps the old
/// certificate in service and is retried on the next tick.
pub async fn watch(
    files: CertFiles,
    resolver: Arc<CertResolver>,
    interval: Duration,
    observer: Arc<dyn ReloadObserver>,
    mut shutdown: Shutdown,
) {
    let mut last = files.read().ok();
    while shutdown.sleep(interval).await {
        let current = match files.read() {
            Ok(current) => current,
            Err(error) => {
                tracing::warn!(%error, "cannot read certificate files; keeping the served certificate");
                observer.failed(&error);
                continue;
            }
        };
        if last.as_ref() == Some(&current) {
            continue;
        }
        match ServingCert::from_pem(&current.0, &current.1) {
            Ok(cert) => {
                tracing::info!(serial = %cert.serial, not_after = cert.not_after, "serving a reloaded certificate");
                observer.loaded(&cert);
                resolver.swap(cert);
                last = Some(current);
            }
            Err(error) => {
                tracing::warn!(%error, "changed certificate files are not usable yet; keeping the served certificate");
                observer.failed(&error);
            }
        }
    }
}
