//! Prometheus metrics of the webhook, served on the health port at /metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub use crate::server::metrics::{ReasonLabel, ResultLabel};
use crate::server::metrics::{TlsMetrics, render};
use crate::tls::{ServingCert, TlsError, files::ReloadObserver};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KnobLabel {
    pub knob: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabel {
    pub namespace: String,
}

pub struct Metrics {
    registry: Registry,
    /// injected | skipped | allowed | error | rejected
    pub requests: Family<ResultLabel, Counter>,
    pub skips: Family<ReasonLabel, Counter>,
    pub errors: Family<ReasonLabel, Counter>,
    pub invalid_knobs: Family<KnobLabel, Counter>,
    pub duration: Histogram,
    pub tls: TlsMetrics,
    pub uninjected_pods: Family<NamespaceLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mirrord_operator");
        let requests = Family::<ResultLabel, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission requests by result",
            requests.clone(),
        );
        let skips = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "admission_skips",
            "Pods admitted without injection, by reason",
            skips.clone(),
        );
        let errors = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "admission_errors",
            "Admission and TLS errors, by reason",
            errors.clone(),
        );
        let invalid_knobs = Family::<KnobLabel, Counter>::default();
        registry.register(
            "admission_invalid_knobs",
            "Invalid knob values that fell back to their default",
            invalid_knobs.clone(),
        );
        // Sub-millisecond buckets: a healthy decision takes tens of microseconds.
        let duration = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ]);
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission request",
            duration.clone(),
        );
        let tls = TlsMetrics::register(&mut registry);
        let uninjected_pods = Family::<NamespaceLabel, Gauge>::default();
        registry.register(
            "uninjected_pods",
            "Pods in injection-enabled namespaces that lack the mirrord-agent sidecar",
            uninjected_pods.clone(),
        );
        Metrics {
            registry,
            requests,
            skips,
            errors,
            invalid_knobs,
            duration,
            tls,
            uninjected_pods,
        }
    }
}

impl Metrics {
    pub fn request(&self, result: &'static str) {
        self.requests.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

impl ReloadObserver for Metrics {
    fn loaded(&self, cert: &ServingCert) {
        self.tls.loaded(cert);
    }

    fn failed(&self, error: &TlsError) {
        self.error(error.label());
    }
}
