//! What the splitter reports: messages routed per destination, the original queue's backlog,
//! errors by kind. The splitter sees only [`SplitterMetrics`]; [`QueueMetrics`] is the Prometheus
//! implementation the coordinator registers.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Where a routed message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutedTo<'a> {
    Output,
    Session(&'a str),
    /// Returned from an ended session's queue to the output queue.
    Returned,
}

pub trait SplitterMetrics: Send + Sync + 'static {
    /// One message published (and confirmed) to a destination, its original acked.
    fn routed(&self, queue: &str, to: RoutedTo<'_>);
    /// Messages waiting in the original queue.
    fn lag(&self, queue: &str, messages: u32);
    /// An error of the given kind (a [`super::rabbitmq::SplitterError::as_label`] value).
    fn error(&self, queue: &str, kind: &'static str);
}

/// Reports nothing (tests, benchmarks).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMetrics;

impl SplitterMetrics for NoMetrics {
    fn routed(&self, _: &str, _: RoutedTo<'_>) {}
    fn lag(&self, _: &str, _: u32) {}
    fn error(&self, _: &str, _: &'static str) {}
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoutedLabels {
    queue: String,
    destination: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    queue: String,
    kind: String,
}

/// Prometheus metrics of the queue splitter.
#[derive(Debug, Clone, Default)]
pub struct QueueMetrics {
    routed: Family<RoutedLabels, Counter>,
    lag: Family<QueueLabels, Gauge>,
    errors: Family<ErrorLabels, Counter>,
}

impl QueueMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = QueueMetrics::default();
        let registry = registry.sub_registry_with_prefix("queue_splitter");
        registry.register(
            "messages_routed",
            "Messages moved from an original queue, by destination (output, session:<id>, returned)",
            metrics.routed.clone(),
        );
        registry.register(
            "lag_messages",
            "Messages waiting in the original queue",
            metrics.lag.clone(),
        );
        registry.register("errors", "Splitter errors by kind", metrics.errors.clone());
        metrics
    }
}

impl SplitterMetrics for QueueMetrics {
    fn routed(&self, queue: &str, to: RoutedTo<'_>) {
        let destination = match to {
            RoutedTo::Output => "output".to_owned(),
            RoutedTo::Session(key) => format!("session:{key}"),
            RoutedTo::Returned => "returned".to_owned(),
        };
        self.routed
            .get_or_create(&RoutedLabels {
                queue: queue.to_owned(),
                destination,
            })
            .inc();
    }

    fn lag(&self, queue: &str, messages: u32) {
        self.lag
            .get_or_create(&QueueLabels {
                queue: queue.to_owned(),
            })
            .set(i64::from(messages));
    }

    fn error(&self, queue: &str, kind: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels {
                queue: queue.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_with_labels() {
        let mut registry = Registry::default();
        let metrics = QueueMetrics::register(&mut registry);
        metrics.routed("orders", RoutedTo::Session("1f"));
        metrics.routed("orders", RoutedTo::Output);
        metrics.lag("orders", 7);
        metrics.error("orders", "connect");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                r#"queue_splitter_messages_routed_total{queue="orders",destination="session:1f"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"queue_splitter_lag_messages{queue="orders"} 7"#),
            "{text}"
        );
        assert!(
            text.contains(r#"queue_splitter_errors_total{queue="orders",kind="connect"} 1"#),
            "{text}"
        );
    }
}
