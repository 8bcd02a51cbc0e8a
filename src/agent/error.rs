//! Errors of the agent process (per-request failures travel to the client as protocol errors
//! instead; these are the ones that end a session or the process).

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error("session I/O failed: {0}")]
    SessionIo(#[from] io::Error),
    #[error("cannot decode client message: {0}")]
    Decode(String),
    #[error("coordinator link: {0}")]
    Link(String),
    #[error("incoming traffic: {0}")]
    Incoming(String),
}

impl AgentError {
    /// Short, stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            AgentError::Config(_) => "config",
            AgentError::Listen { .. } => "listen",
            AgentError::SessionIo(_) => "session_io",
            AgentError::Decode(_) => "decode",
            AgentError::Link(_) => "link",
            AgentError::Incoming(_) => "incoming",
        }
    }
}
