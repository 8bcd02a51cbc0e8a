//! Prometheus metrics of the coordinator, served on the health port at /metrics.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

use super::kube::{
    front_proxy::{AuthnError, AuthnObserver},
    reviews::ReviewObserver,
};
use super::queues::metrics::QueueMetrics;
pub use crate::server::metrics::{ReasonLabel, ResultLabel};
use crate::server::metrics::{TlsMetrics, render};
use crate::tls::{ServingCert, TlsError, files::ReloadObserver};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabel {
    /// subjectaccessreview | tokenreview
    pub kind: &'static str,
    /// allowed | denied | error
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// authenticated | the [`AuthnError::label`] of a refusal
    pub authentications: Family<ResultLabel, Counter>,
    pub reviews: Family<ReviewLabel, Counter>,
    pub errors: Family<ReasonLabel, Counter>,
    pub tls: TlsMetrics,
    pub queues: QueueMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mirrord_operator_coordinator");
        let authentications = Family::<ResultLabel, Counter>::default();
        registry.register(
            "authentications",
            "Front-proxy authentication of API requests, by result",
            authentications.clone(),
        );
        let reviews = Family::<ReviewLabel, Counter>::default();
        registry.register(
            "reviews",
            "SubjectAccessReviews and TokenReviews asked, by outcome",
            reviews.clone(),
        );
        let errors = Family::<ReasonLabel, Counter>::default();
        registry.register("errors", "Errors by reason", errors.clone());
        let tls = TlsMetrics::register(&mut registry);
        let queues = QueueMetrics::register(&mut registry);
        Metrics {
            registry,
            authentications,
            reviews,
            errors,
            tls,
            queues,
        }
    }
}

impl Metrics {
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

impl AuthnObserver for Metrics {
    fn authenticated(&self) {
        self.authentications
            .get_or_create(&ResultLabel {
                result: "authenticated",
            })
            .inc();
    }

    fn refused(&self, error: &AuthnError) {
        self.authentications
            .get_or_create(&ResultLabel {
                result: error.label(),
            })
            .inc();
    }
}

impl ReviewObserver for Metrics {
    fn reviewed(&self, kind: &'static str, outcome: &'static str) {
        self.reviews
            .get_or_create(&ReviewLabel { kind, outcome })
            .inc();
    }
}
