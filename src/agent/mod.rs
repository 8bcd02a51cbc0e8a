//! The injected sidecar (see issue 4).
pub mod incoming;
