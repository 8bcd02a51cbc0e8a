//! mirrord-operator: a mirrord control plane built around pre-injected agent sidecars.
//!
//! One folder per component; pure logic (patch builder, protocol codec, filter matching) lives in
//! modules without I/O so it can be tested with fixtures.

pub mod admin;
pub mod agent;
pub mod allocator;
pub mod certs;
pub mod cli;
pub mod coordinator;
pub mod injection;
pub mod link;
pub mod protocol;
pub mod registry_mirror;
pub mod server;
pub mod tls;
pub mod webhook;
