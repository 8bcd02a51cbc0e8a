//! The webhook's routes: `POST /mutate` (served over TLS by [`crate::server::serve_tls`]) and what
//! the shared health listener asks ([`Health`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State, rejection::BytesRejection},
    http::{StatusCode, header},
    response::Response,
    routing::post,
};

use super::{admission, metrics::Metrics, namespaces::NamespaceCache, patch::InjectorConfig};
use crate::coordinator::queues::registry_cache::QueueRegistryCache;
use crate::{server::Health, tls::CertResolver};

/// The API server never sends more than 3 MiB of object; anything larger is not from it.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// Everything a request handler reads; swapped pieces (config, certificate) change without a restart.
#[derive(Debug)]
pub struct WebhookState {
    pub injector: ArcSwap<InjectorConfig>,
    pub namespaces: NamespaceCache,
    pub metrics: Arc<Metrics>,
    pub resolver: Arc<CertResolver>,
    /// False until the caBundle is known to match (self-managed); true from the start otherwise.
    pub ca_bundle_synced: AtomicBool,
    /// Queue registries (set once when a cluster is reachable): registered workloads' pods read
    /// their output queues.
    pub queue_registries: std::sync::OnceLock<QueueRegistryCache>,
}

impl WebhookState {
    pub fn new(
        injector: InjectorConfig,
        namespaces: NamespaceCache,
        metrics: Arc<Metrics>,
        resolver: Arc<CertResolver>,
        ca_bundle_synced: bool,
    ) -> Arc<Self> {
        Arc::new(WebhookState {
            injector: ArcSwap::from_pointee(injector),
            namespaces,
            metrics,
            resolver,
            ca_bundle_synced: AtomicBool::new(ca_bundle_synced),
            queue_registries: std::sync::OnceLock::new(),
        })
    }

    fn readiness(&self) -> Result<(), &'static str> {
        if self.resolver.current().is_none() {
            return Err("no serving certificate yet");
        }
        if !self.ca_bundle_synced.load(Ordering::Acquire) {
            return Err("caBundle of the MutatingWebhookConfiguration does not match the CA yet");
        }
        Ok(())
    }
}

pub fn admission_router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

impl Health for WebhookState {
    fn readiness(&self) -> Result<(), String> {
        WebhookState::readiness(self).map_err(str::to_owned)
    }

    fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}

async fn mutate(
    State(state): State<Arc<WebhookState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let span = tracing::info_span!(
        "admission",
        namespace = tracing::field::Empty,
        pod = tracing::field::Empty,
        decision = tracing::field::Empty
    );
    let outcome = match body {
        Ok(body) => {
            let injector = state.injector.load();
            match state.queue_registries.get() {
                Some(queues) => admission::review_with_queues(
                    &body,
                    &injector,
                    |ns| state.namespaces.get(ns),
                    |ns| queues.in_namespace(ns),
                ),
                None => admission::review(&body, &injector, |ns| state.namespaces.get(ns)),
            }
        }
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            admission::Outcome::too_large(MAX_BODY_BYTES)
        }
        Err(rejection) => {
            tracing::warn!(parent: &span, %rejection, "unreadable admission request body");
            admission::Outcome::unreadable(rejection.status(), rejection.body_text())
        }
    };
    let decision = outcome.skip.map(|s| s.as_label()).unwrap_or(outcome.result);
    span.record("namespace", outcome.namespace.as_str())
        .record("pod", outcome.pod.as_str())
        .record("decision", decision);
    record(&state.metrics, &outcome, started.elapsed());
    span.in_scope(|| match (outcome.result, outcome.error) {
        ("injected", _) => {
            tracing::info!(invalid_knobs = ?outcome.invalid_knobs, "injected mirrord-agent")
        }
        (_, Some(error)) => tracing::warn!(error, "admission request not handled normally"),
        _ => tracing::debug!("admitted without injection"),
    });
    Response::builder()
        .status(outcome.status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(outcome.body.into())
        .expect("static headers are valid")
}

fn record(metrics: &Metrics, outcome: &admission::Outcome, elapsed: Duration) {
    metrics.request(outcome.result);
    metrics.duration.observe(elapsed.as_secs_f64());
    if let Some(skip) = outcome.skip {
        metrics
            .skips
            .get_or_create(&super::metrics::ReasonLabel {
                reason: skip.as_label(),
            })
            .inc();
    }
    if let Some(error) = outcome.error {
        metrics.error(error);
    }
    for knob in &outcome.invalid_knobs {
        metrics
            .invalid_knobs
            .get_or_create(&super::metrics::KnobLabel { knob })
            .inc();
    }
}
