//! The injected sidecar (see issue 4).
