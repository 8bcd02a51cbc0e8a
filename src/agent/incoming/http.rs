//! Per-request handling of redirected HTTP connections (HTTP/1.1 and h2c): filter matching,
//! steal to one session, mirror copies, pass-through to the original destination, upgrades.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn as client,
    server::conn::{http1, http2},
    service::service_fn,
    upgrade::OnUpgrade,
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpStream, sync::mpsc};
use tracing::{Instrument, debug, warn};

use super::{
    Shared,
    filter::RequestView,
    listener::{ConnInfo, Protocol, Rewind, connect_as, relay_stolen},
    state::{BoxError, SessionState, Stolen, gates, mirror_tap},
    subscriptions::Steal,
};
use crate::protocol::{
    ChunkedRequest, ChunkedRequestBodyV1, ChunkedRequestStartV2, DaemonTcp, HttpRequestMetadata,
    IncomingTrafficTransportType, InternalHttpBodyFrame, InternalHttpBodyNew, InternalHttpRequest,
    TcpClose,
};

type RespBody = BoxBody<Bytes, BoxError>;

/// Serves one redirected HTTP connection; each request is handled on its own.
pub async fn serve(shared: Arc<Shared>, io: Rewind<TcpStream>, info: ConnInfo, protocol: Protocol) {
    let conn = Arc::new(Conn {
        shared,
        info,
        protocol,
        upstream: tokio::sync::Mutex::new(None),
    });
    let svc = service_fn(move |req| {
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(conn.handle(req).await) }
    });
    let io = TokioIo::new(io);
    let result = match protocol {
        Protocol::Http2 => {
            http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, svc)
                .await
        }
        _ => {
            // Header-name case is kept end to end (the app sees what the caller sent).
            http1::Builder::new()
                .preserve_header_case(true)
                .serve_connection(io, svc)
                .with_upgrades()
                .await
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "HTTP connection ended with an error");
    }
}

enum Upstream {
    H1(client::http1::SendRequest<RespBody>),
    H2(client::http2::SendRequest<RespBody>),
}

/// One redirected HTTP connection and its pass-through connection to the app (opened lazily).
struct Conn {
    shared: Arc<Shared>,
    info: ConnInfo,
    protocol: Protocol,
    upstream: tokio::sync::Mutex<Option<Upstream>>,
}

/// Body of the agent's own `502 Bad Gateway` answers.
pub fn gateway_message(reason: &str) -> String {
    format!("mirrord-agent v{}: {reason}", env!("CARGO_PKG_VERSION"))
}

fn bad_gateway(reason: &str) -> Response<RespBody> {
    let body = gateway_message(reason);
    let mut resp = Response::new(Full::new(Bytes::from(body)).map_err(Into::into).boxed());
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

impl Conn {
    async fn handle(self: &Arc<Self>, mut req: Request<Incoming>) -> Response<RespBody> {
        let port = self.info.orig.port();
        let subs = self.shared.port_snapshot(port).unwrap_or_default();
        self.shared.apply_share_link(&mut req);
        let view = RequestView::new(req.method(), req.uri(), req.headers());
        let wants_upgrade = req.headers().contains_key(header::UPGRADE);

        let owner = match &subs.steal {
            Steal::Unfiltered(owner) => self
                .shared
                .session(*owner)
                .filter(|s| self.eligible(s, &gates::V2_FORMS)),
            Steal::Filtered(_) => {
                let mut chosen: Option<Arc<SessionState>> = None;
                for session in subs
                    .filtered_stealers(&view)
                    .filter_map(|id| self.shared.session(id))
                {
                    if chosen.is_some() {
                        session.try_send(SessionState::warn_message(format!(
                            "an HTTP request on port {port} matched your filter but was given to another session"
                        )));
                    } else if self.eligible(&session, &gates::STEAL_HTTP_V2) {
                        chosen = Some(session);
                    }
                }
                chosen
            }
            Steal::None => None,
        };
        let mirrors: Vec<Arc<SessionState>> = subs
            .mirrors_for(Some(&view))
            .into_iter()
            .filter_map(|id| self.shared.session(id))
            .filter(|s| self.eligible(s, &gates::V2_FORMS))
            .collect();
        drop(view);

        let on_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let taps = mirrors
            .into_iter()
            .map(|session| {
                let id = session.next_mirror_id();
                let tap = mirror_tap(session);
                let _ = tap.send(self.start_message(id, &parts, body.is_end_stream()));
                (id, tap)
            })
            .collect();
        let body = TeeBody {
            inner: body,
            taps,
            ended: false,
        };
        match owner {
            Some(owner) => self.steal(owner, parts, body, on_upgrade).await,
            None => self.pass_through(parts, body, on_upgrade).await,
        }
    }

    /// Whether `session` may receive this request; older clients get a log line instead.
    fn eligible(&self, session: &SessionState, gate: &semver::Version) -> bool {
        let ok = session.at_least(gate);
        if !ok {
            session.try_send(SessionState::warn_message(format!(
                "an HTTP request on port {} was not delivered: your mirrord is older than protocol {gate}",
                self.info.orig.port()
            )));
        }
        ok
    }

    fn start_message(&self, id: u64, parts: &http::request::Parts, is_last: bool) -> DaemonTcp {
        DaemonTcp::HttpRequestChunked(ChunkedRequest::StartV2(ChunkedRequestStartV2 {
            connection_id: id,
            request_id: 0,
            request: InternalHttpRequest {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                headers: parts.headers.clone(),
                version: parts.version,
                body: InternalHttpBodyNew {
                    frames: Vec::new(),
                    is_last,
                },
            },
            metadata: HttpRequestMetadata::V1 {
                source: self.info.peer,
                destination: self.info.orig,
            },
            transport: IncomingTrafficTransportType::Tcp,
        }))
    }

    async fn steal(
        &self,
        owner: Arc<SessionState>,
        parts: http::request::Parts,
        mut body: TeeBody,
        on_upgrade: Option<OnUpgrade>,
    ) -> Response<RespBody> {
        let id = owner.next_steal_id();
        let span = tracing::info_span!("stolen_request", session = owner.id, id);
        let (responder, response) = tokio::sync::oneshot::channel();
        owner.register(
            id,
            Stolen::HttpPending {
                upgrade_requested: on_upgrade.is_some(),
                responder,
            },
        );
        let _pending = PendingGuard {
            owner: owner.clone(),
            id,
        };
        let is_last = body.is_end_stream();
        if !owner
            .send_steal(self.start_message(id, &parts, is_last))
            .await
        {
            owner.unregister(id);
            return bad_gateway("the mirrord session ended");
        }
        if !is_last {
            let owner = owner.clone();
            tokio::spawn(
                async move {
                    loop {
                        let (frames, is_last) = match body.frame().await {
                            Some(Ok(frame)) => (vec![to_internal(frame)], false),
                            Some(Err(e)) => {
                                warn!(error = %e, "request body failed");
                                break;
                            }
                            None => (Vec::new(), true),
                        };
                        let msg = DaemonTcp::HttpRequestChunked(ChunkedRequest::Body(
                            ChunkedRequestBodyV1 {
                                frames,
                                is_last,
                                connection_id: id,
                                request_id: 0,
                            },
                        ));
                        if !owner.send_steal(msg).await || is_last {
                            break;
                        }
                    }
                }
                .instrument(span.clone()),
            );
        }
        let Ok(stolen) = response.await else {
            return bad_gateway("the mirrord session dropped the request");
        };
        let mut resp = Response::new(Empty::new().map_err(Into::into).boxed());
        *resp.status_mut() = stolen.status;
        *resp.headers_mut() = stolen.headers;
        resp.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-store, must-revalidate"),
        );
        match (stolen.upgraded, on_upgrade) {
            (Some(from_client), Some(on_upgrade)) => {
                // The id becomes a raw stream once the peer's side of the upgrade completes.
                tokio::spawn(
                    async move {
                        match on_upgrade.await {
                            Ok(upgraded) => {
                                relay_stolen(owner, id, TokioIo::new(upgraded), from_client).await
                            }
                            Err(e) => {
                                warn!(error = %e, "upgrade with the peer failed");
                                owner.unregister(id);
                                let close = TcpClose { connection_id: id };
                                owner.send_steal(DaemonTcp::Close(close)).await;
                            }
                        }
                    }
                    .instrument(span),
                );
            }
            _ => {
                let frames = StreamBody::new(tokio_stream_from(stolen.body));
                *resp.body_mut() = CloseOnDrop {
                    inner: frames.boxed(),
                    owner,
                    id,
                }
                .boxed();
            }
        }
        resp
    }

    async fn pass_through(
        &self,
        parts: http::request::Parts,
        body: TeeBody,
        on_upgrade: Option<OnUpgrade>,
    ) -> Response<RespBody> {
        let req = Request::from_parts(parts, body.boxed());
        let mut resp = match self.send_upstream(req).await {
            Ok(resp) => resp,
            Err(e) => {
                warn!(error = %e, "pass-through request failed");
                return bad_gateway(&format!("the application did not answer: {e}"));
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(peer_side) = on_upgrade
        {
            let app_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(peer), Ok(app)) = tokio::join!(peer_side, app_side) {
                    let (mut peer, mut app) = (TokioIo::new(peer), TokioIo::new(app));
                    let _ = tokio::io::copy_bidirectional(&mut peer, &mut app).await;
                }
            });
        }
        resp.map(|b| b.map_err(Into::into).boxed())
    }

    async fn send_upstream(&self, req: Request<RespBody>) -> Result<Response<Incoming>, BoxError> {
        let mut guard = self.upstream.lock().await;
        let usable = match guard.as_ref() {
            Some(Upstream::H1(s)) => !s.is_closed(),
            Some(Upstream::H2(s)) => !s.is_closed(),
            None => false,
        };
        if !usable {
            let addr = self.shared.pass_through_addr(self.info.orig);
            let stream = TokioIo::new(connect_as(addr, self.shared.cfg.agent_gid).await?);
            *guard = Some(match self.protocol {
                Protocol::Http2 => {
                    let (sender, conn) =
                        client::http2::handshake(TokioExecutor::new(), stream).await?;
                    tokio::spawn(conn);
                    Upstream::H2(sender)
                }
                _ => {
                    let (sender, conn) = client::http1::Builder::new()
                        .preserve_header_case(true)
                        .handshake(stream)
                        .await?;
                    tokio::spawn(conn.with_upgrades());
                    Upstream::H1(sender)
                }
            });
        }
        match guard.as_mut() {
            // HTTP/1 serves one request at a time per connection, so holding the lock is free.
            Some(Upstream::H1(sender)) => {
                sender.ready().await?;
                Ok(sender.send_request(req).await?)
            }
            Some(Upstream::H2(sender)) => {
                let mut sender = sender.clone();
                drop(guard);
                sender.ready().await?;
                Ok(sender.send_request(req).await?)
            }
            None => unreachable!("set above"),
        }
    }
}

fn to_internal(frame: Frame<Bytes>) -> InternalHttpBodyFrame {
    match frame.into_data() {
        Ok(data) => InternalHttpBodyFrame::Data(data.into()),
        Err(frame) => InternalHttpBodyFrame::Trailers(frame.into_trailers().unwrap_or_default()),
    }
}

pub fn from_internal(frame: InternalHttpBodyFrame) -> Frame<Bytes> {
    match frame {
        InternalHttpBodyFrame::Data(data) => Frame::data(data.0),
        InternalHttpBodyFrame::Trailers(trailers) => Frame::trailers(trailers),
    }
}

fn tokio_stream_from(
    mut rx: mpsc::UnboundedReceiver<Result<Frame<Bytes>, BoxError>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send + Sync + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The request body on its way to the app or the stealing session, copied to mirroring sessions
/// frame by frame (spec §5.9 mirror: `Body` per frame, `Body { is_last }`, then `Close`).
struct TeeBody {
    inner: Incoming,
    taps: Vec<(u64, mpsc::UnboundedSender<DaemonTcp>)>,
    ended: bool,
}

impl TeeBody {
    fn copy(&self, frames: Vec<InternalHttpBodyFrame>, is_last: bool) {
        for (id, tap) in &self.taps {
            let _ = tap.send(DaemonTcp::HttpRequestChunked(ChunkedRequest::Body(
                ChunkedRequestBodyV1 {
                    frames: frames.clone(),
                    is_last,
                    connection_id: *id,
                    request_id: 0,
                },
            )));
        }
    }
}

impl Body for TeeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) if !self.taps.is_empty() => {
                let copy = match frame.data_ref() {
                    Some(data) => InternalHttpBodyFrame::Data(data.clone().into()),
                    None => InternalHttpBodyFrame::Trailers(
                        frame.trailers_ref().cloned().unwrap_or_default(),
                    ),
                };
                self.copy(vec![copy], false);
                // A body with a known length is not polled again after its last frame.
                if self.inner.is_end_stream() {
                    self.ended = true;
                    self.copy(Vec::new(), true);
                }
            }
            Poll::Ready(None) if !self.ended => {
                self.ended = true;
                self.copy(Vec::new(), true);
            }
            _ => {}
        }
        polled.map(|o| o.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TeeBody {
    fn drop(&mut self) {
        for (id, tap) in &self.taps {
            let _ = tap.send(DaemonTcp::Close(TcpClose { connection_id: *id }));
        }
    }
}

/// Forgets a stolen request whose peer went away before the client answered, and tells the
/// client (`Close`) so it can stop working on it.
struct PendingGuard {
    owner: Arc<SessionState>,
    id: u64,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut stolen = self.owner.stolen.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(stolen.get(&self.id), Some(Stolen::HttpPending { .. })) {
            stolen.remove(&self.id);
            drop(stolen);
            self.owner
                .send_from_drop(crate::protocol::DaemonMessage::TcpSteal(DaemonTcp::Close(
                    TcpClose {
                        connection_id: self.id,
                    },
                )));
        }
    }
}

/// A stolen response body that tells the session the exchange is over once it has been sent
/// (or abandoned).
struct CloseOnDrop {
    inner: RespBody,
    owner: Arc<SessionState>,
    id: u64,
}

impl Body for CloseOnDrop {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.owner.unregister(self.id);
        let close = DaemonTcp::Close(TcpClose {
            connection_id: self.id,
        });
        self.owner
            .send_from_drop(crate::protocol::DaemonMessage::TcpSteal(close));
    }
}
