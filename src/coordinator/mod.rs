//! The coordinator (`mirrord-operator coordinator`): the aggregated API server for
//! `operator.metalbear.co/v1` that the mirrord CLI talks to, the hub the injected agents dial, the
//! session relay, and the queue splitter. Pure parts (session table, filter assignment, policy
//! evaluation, API handlers) have no I/O and no Kubernetes client; `kube`/`http` glue sits apart.

pub mod agents;
pub mod api;
pub mod config;
pub mod credentials;
pub mod error;
pub mod filters;
pub mod kube;
pub mod metrics;
mod overlap;
pub mod policy;
pub mod queues;
pub mod run;
pub mod session;
pub mod targets;
