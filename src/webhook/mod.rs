//! Mutating admission webhook: selection, patch, server.

pub mod patch;
