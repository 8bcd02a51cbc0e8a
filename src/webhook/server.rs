//! The two listeners: HTTPS admission (`POST /mutate`) over tokio-rustls, and plain-HTTP health and
//! metrics.

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
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::{admission, metrics::Metrics, namespaces::NamespaceCache, patch::InjectorConfig};
use crate::coordinator::queues::registry_cache::QueueRegistryCache;
use crate::{shutdown::Shutdown, tls::CertResolver};

/// The API server never sends more than 3 MiB of object; anything larger is not from it.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

pub fn health_router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<WebhookState>>) -> Response {
    match state.readiness() {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn metrics(State(state): State<Arc<WebhookState>>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        state.metrics.render(),
    )
        .into_response()
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

/// Serves `router` over TLS on `listener` until `shutdown`, then lets open requests finish (bounded).
pub async fn serve_tls(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: Shutdown,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let stop = shutdown.clone().wait();
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(
            async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => return tracing::debug!(%error, "TLS handshake failed"),
                    Err(_) => return tracing::debug!("TLS handshake timed out"),
                };
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                if let Err(error) = watcher.watch(conn.into_owned()).await {
                    tracing::debug!(%error, "connection ended with an error");
                }
            }
            .instrument(tracing::debug_span!("conn", %peer)),
        );
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open admission connections did not finish within 10s");
    }
}

/// Serves the health router over plain HTTP until `shutdown`.
pub async fn serve_health(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.wait())
        .await
}
