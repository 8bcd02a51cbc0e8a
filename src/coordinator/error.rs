//! Errors that stop the coordinator at start (request-level errors are `metav1.Status` answers,
//! see `api::error`).

use super::kube::user_ca::UserCaError;
use crate::server::{BindError, tls_source::TlsSourceError};

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("the coordinator needs Kubernetes access (in-cluster or KUBECONFIG): {0}")]
    NoCluster(kube::Error),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("TLS certificate: {0}")]
    Tls(#[from] TlsSourceError),
    #[error("user-credential CA: {0}")]
    UserCa(#[from] UserCaError),
    #[error("--license-expire-at {0:?} is not a YYYY-MM-DD date")]
    LicenseDate(String),
    #[error("health server: {0}")]
    Health(std::io::Error),
}

impl CoordinatorError {
    /// Short, stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            CoordinatorError::NoCluster(_) => "no-cluster",
            CoordinatorError::Bind(_) => "bind",
            CoordinatorError::Tls(_) => "tls",
            CoordinatorError::UserCa(e) => e.label(),
            CoordinatorError::LicenseDate(_) => "config",
            CoordinatorError::Health(_) => "health",
        }
    }
}
