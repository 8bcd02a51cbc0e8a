//! Queue splitting: each message of a registered queue goes to exactly one consumer, chosen by the
//! developers' filters, without restarting the workload (`docs/queues.md`).
//!
//! - [`crd`]: the `queues.mirrord.metalbear.co/v1alpha` resources (drop-in with mirrord's YAML).
//! - [`filter`], [`overlap`], [`names`]: pure routing, the filter-overlap decision, queue names.
//! - [`rabbitmq`]: the RabbitMQ splitter (lapin), reporting through [`metrics::SplitterMetrics`].
//! - [`registry_cache`]: the watch-fed registries the webhook reads while admitting.

pub mod crd;
pub mod filter;
pub mod metrics;
pub mod names;
pub mod overlap;
pub mod plan;
pub mod rabbitmq;
pub mod registry_cache;
pub mod sessions;
pub mod sqs;
pub mod sqs_filter;
pub mod sqs_supervisor;
pub mod supervisor;
pub mod wiring;
