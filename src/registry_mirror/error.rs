//! Errors of the registry-mirror controller. Bad input is not an error here (it is a status condition,
//! see [`super::input::InputError`]); these are failures talking to the API or making certificates,
//! retried with backoff.

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("reading Secret {name}: {source}")]
    ReadSecret { name: String, source: kube::Error },
    #[error("writing the status of RegistryMirror {name}: {source}")]
    Status { name: String, source: kube::Error },
    #[error("labelling RegistryMirror {name}: {source}")]
    Label { name: String, source: kube::Error },
    #[error("issuing the mirror's certificate: {0}")]
    Certificate(#[from] crate::certs::CertError),
    #[error("the RegistryMirror has no {0}")]
    MissingMetadata(&'static str),
    #[error("Service {0} has no cluster IP yet")]
    NoClusterIp(String),
}

impl ReconcileError {
    /// Value of the `error` label of `registry_mirror_reconcile_errors`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ReconcileError::Apply { .. } => "apply",
            ReconcileError::ReadSecret { .. } => "read_secret",
            ReconcileError::Status { .. } => "status",
            ReconcileError::Label { .. } => "label",
            ReconcileError::Certificate(_) => "certificate",
            ReconcileError::MissingMetadata(_) => "metadata",
            ReconcileError::NoClusterIp(_) => "no_cluster_ip",
        }
    }
}

/// Why the controller process stopped.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("no Kubernetes access: {0}")]
    NoCluster(#[source] kube::Error),
    #[error("binding the health listener {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}
