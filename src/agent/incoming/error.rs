//! Errors of the incoming-traffic engine.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    #[error(
        "invalid iptables chain prefix {0:?}: 1-24 characters of [A-Za-z0-9_-], not starting with '-'"
    )]
    InvalidChainPrefix(String),
    #[error("could not run {binary}: {source}")]
    IptablesSpawn {
        binary: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{binary} -t nat {args} failed: {stderr}")]
    Iptables {
        binary: &'static str,
        args: String,
        stderr: String,
    },
    #[error("could not bind the redirect listener: {0}")]
    Bind(#[source] io::Error),
}

impl IncomingError {
    /// Short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            IncomingError::InvalidChainPrefix(_) => "invalid_prefix",
            IncomingError::IptablesSpawn { .. } => "iptables_spawn",
            IncomingError::Iptables { .. } => "iptables",
            IncomingError::Bind(_) => "bind",
        }
    }
}
