//! Incoming traffic: iptables redirection, the redirect listener, mirror and steal.

pub mod error;
pub mod filter;
pub mod redirect;
pub mod subscriptions;
pub mod types;
