//! The runtime every serving component mounts its routes on: one HTTPS accept loop over tokio-rustls,
//! the TLS source (files, self-managed, cert-manager), a plain-HTTP health-and-metrics listener,
//! shutdown on SIGTERM/SIGINT, tracing setup, and the flags they share.
//!
//! Components report into it through traits ([`Health`], [`tls_source::TlsObserver`]) instead of it
//! importing their metrics.

pub mod args;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
pub mod tls_source;
pub mod watch;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::Instrument;

pub use self::args::{ServerArgs, TlsMode};
use self::shutdown::Shutdown;

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open requests get this long to finish after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// The certificate chain the client presented in the TLS handshake (leaf first), as a request
/// extension. Only present when the server asked for one and the client sent it; the handshake proved
/// the client holds the key, but nothing has checked who issued it: that is the handler's job.
#[derive(Debug, Clone)]
pub struct PeerCertificates(pub Arc<Vec<CertificateDer<'static>>>);

/// What the health listener asks the component.
pub trait Health: Send + Sync + 'static {
    /// `Err(why)` while the component must not receive traffic.
    fn readiness(&self) -> Result<(), String>;
    /// The OpenMetrics text of the component's registry.
    fn render_metrics(&self) -> String;
}

/// `/healthz` (alive), `/readyz` (ready, else 503 with the reason) and `/metrics`.
pub fn health_router(health: Arc<dyn Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn readyz(State(health): State<Arc<dyn Health>>) -> Response {
    match health.readiness() {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn metrics(State(health): State<Arc<dyn Health>>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(header::CONTENT_TYPE, content_type)],
        health.render_metrics(),
    )
        .into_response()
}

/// Serves `router` over TLS on `listener` until `shutdown`, then lets open requests finish (bounded).
/// A client certificate, when the TLS config asked for one and the client sent it, reaches the
/// handlers as [`PeerCertificates`].
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
        let router = router.clone();
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
                let peer_certs = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|chain| PeerCertificates(Arc::new(chain.to_vec())));
                let io = TokioIo::new(tls);
                // Two arms rather than an always-present extension: the webhook's hot path pays
                // nothing for a feature only the coordinator uses.
                let result = match peer_certs {
                    None => {
                        let service = TowerToHyperService::new(router);
                        let conn = builder.serve_connection_with_upgrades(io, service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Some(certs) => {
                        let service = router.map_request(
                            move |mut request: http::Request<hyper::body::Incoming>| {
                                request.extensions_mut().insert(certs.clone());
                                request
                            },
                        );
                        let service = TowerToHyperService::new(service);
                        let conn = builder.serve_connection_with_upgrades(io, service);
                        watcher.watch(conn.into_owned()).await
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(%error, "connection ended with an error");
                }
            }
            .instrument(tracing::debug_span!("conn", %peer)),
        );
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish within {DRAIN_TIMEOUT:?}");
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

/// A shutdown that fires `drain` after SIGTERM or SIGINT (at once on a second signal): the server
/// keeps answering while its endpoint removal propagates (see `--shutdown-drain`).
pub fn on_os_signal(drain: Duration) -> Shutdown {
    after_signal(shutdown::os_signal, drain)
}

/// [`on_os_signal`] with any `signal` (tests use their own).
fn after_signal<S, F>(signal: S, drain: Duration) -> Shutdown
where
    S: Fn() -> F + Send + 'static,
    F: Future<Output = ()> + Send,
{
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        signal().await;
        if !drain.is_zero() {
            tracing::info!(?drain, "still serving while endpoints drop this instance");
            tokio::select! {
                _ = tokio::time::sleep(drain) => {}
                _ = signal() => {}
            }
        }
        trigger.trigger();
    });
    shutdown
}

#[cfg(test)]
mod drain_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::after_signal;

    /// A signal source the test fires by hand.
    fn manual() -> (
        Arc<Notify>,
        impl Fn() -> futures::future::BoxFuture<'static, ()> + Send,
    ) {
        let notify = Arc::new(Notify::new());
        let source = notify.clone();
        (notify, move || {
            let source = source.clone();
            Box::pin(async move { source.notified().await })
        })
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_fires_a_drain_after_the_signal_or_at_a_second_one() {
        let (signal, source) = manual();
        let shutdown = after_signal(source, Duration::from_secs(5));
        settle().await;
        signal.notify_one();
        settle().await;
        tokio::time::advance(Duration::from_secs(4)).await;
        settle().await;
        assert!(!shutdown.is_triggered(), "still serving during the drain");
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert!(shutdown.is_triggered(), "closed after the drain");

        let (signal, source) = manual();
        let shutdown = after_signal(source, Duration::from_secs(5));
        settle().await;
        signal.notify_one();
        settle().await;
        signal.notify_one();
        settle().await;
        assert!(shutdown.is_triggered(), "a second signal closes at once");
    }
}
