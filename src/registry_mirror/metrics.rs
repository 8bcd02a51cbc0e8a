//! Prometheus metrics of the registry-mirror controller, served at /metrics on its health port.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use crate::server::metrics::render;
pub use crate::server::metrics::{ReasonLabel, ResultLabel};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// applied | invalid | error | deleting
    pub reconciles: Family<ResultLabel, Counter>,
    pub invalid_inputs: Family<ReasonLabel, Counter>,
    pub errors: Family<ErrorLabel, Counter>,
    pub watch_errors: Counter,
    pub duration: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mirrord_operator_registry_mirror");
        let reconciles = Family::<ResultLabel, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciliations by result",
            reconciles.clone(),
        );
        let invalid_inputs = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "invalid_inputs",
            "Reconciliations stopped by invalid input, by reason",
            invalid_inputs.clone(),
        );
        let errors = Family::<ErrorLabel, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciliations (retried), by error",
            errors.clone(),
        );
        let watch_errors = Counter::default();
        registry.register(
            "watch_errors",
            "Failed watches (re-established after SECONDS_BETWEEN_STREAMS)",
            watch_errors.clone(),
        );
        let duration = Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconciliation",
            duration.clone(),
        );
        Metrics {
            registry,
            reconciles,
            invalid_inputs,
            errors,
            watch_errors,
            duration,
        }
    }
}

impl Metrics {
    pub fn result(&self, result: &'static str) {
        self.reconciles.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}
