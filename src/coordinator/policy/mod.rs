//! Policies and profiles (issue 15): the CRDs and the pure evaluation of what a session may do.

pub mod cache;
pub mod crd;
pub mod enforce;
pub mod eval;
pub mod files;
pub mod gate;
pub mod secret_env;
