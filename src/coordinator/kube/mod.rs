//! The coordinator's Kubernetes side: front-proxy authentication, SubjectAccessReview and
//! TokenReview clients, the watch-fed workload caches, and the user-credential CA's Secret.

pub mod authz_cache;
pub mod caches;
pub mod front_proxy;
pub mod reviews;
pub mod user_ca;
