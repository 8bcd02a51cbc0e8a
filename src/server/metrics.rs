//! Metric pieces every component's registry repeats: the common label sets, the serving
//! certificate's metrics, and rendering. Metric names stay the components' own.

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};

use crate::tls::{CertResolver, ServingCert, self_managed::Reconciled};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The OpenMetrics text of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}

/// The serving certificate's metrics, for components that serve TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsMetrics {
    pub cert_expiry: Gauge,
    pub tls_reloads: Counter,
}

impl TlsMetrics {
    /// Registers `tls_certificate_expiry_timestamp_seconds` and `tls_reloads` under the
    /// registry's prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = TlsMetrics::default();
        registry.register(
            "tls_certificate_expiry_timestamp_seconds",
            "Expiry of the served certificate (Unix time)",
            metrics.cert_expiry.clone(),
        );
        registry.register(
            "tls_reloads",
            "Serving certificates swapped in without a restart",
            metrics.tls_reloads.clone(),
        );
        metrics
    }

    pub fn served(&self, cert: &ServingCert) {
        self.cert_expiry.set(cert.not_after);
    }

    /// A certificate reloaded from files.
    pub fn loaded(&self, cert: &ServingCert) {
        self.served(cert);
        self.tls_reloads.inc();
    }

    /// A self-managed pass: expiry of what `resolver` now serves, and whether it replaced a cert.
    pub fn reconciled(&self, resolver: &CertResolver, done: &Reconciled) {
        if let Some(cert) = resolver.current() {
            self.served(&cert);
        }
        if done.reloaded {
            self.tls_reloads.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_metrics_render_under_the_component_prefix() {
        let mut registry = Registry::with_prefix("mirrord_operator_x");
        let tls = TlsMetrics::register(&mut registry);
        tls.tls_reloads.inc();
        tls.cert_expiry.set(1_700_000_000);
        let text = render(&registry);
        assert!(
            text.contains("mirrord_operator_x_tls_reloads_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "mirrord_operator_x_tls_certificate_expiry_timestamp_seconds 1700000000\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
