//! The injected sidecar (issue 4): `mirrord-operator agent`.
//!
//! One process per pod, serving many mirrord-protocol sessions at once: env, files, DNS and
//! outgoing traffic per session here; incoming mirror/steal in `incoming`.

pub mod config;
pub mod dns;
pub mod env;
pub mod error;
pub mod files;
pub mod incoming;
pub mod outgoing;

pub use config::AgentArgs;
pub use error::AgentError;
