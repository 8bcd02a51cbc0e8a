//! Incoming traffic (spec §5.9): iptables redirection of subscribed ports to the agent's listener,
//! mirror and steal (whole TCP and HTTP-filtered, HTTP/1.1 and h2c), pass-through of everything no
//! session takes. One `Incoming` per agent process, shared by all sessions; each session holds an
//! `IncomingSession`, which releases everything it held when dropped.

pub mod error;
pub mod filter;
mod http;
pub mod listener;
pub mod redirect;
mod relay;
pub mod share_link;
mod state;
pub mod subscriptions;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::mpsc,
    task::JoinHandle,
};
use tracing::{info, warn};

pub use self::error::IncomingError;
use self::{
    filter::RequestFilter,
    redirect::{Family, Redirector},
    state::{SessionState, Stolen, StolenResponse, abort, gates},
    subscriptions::{PortChange, PortSubscriptions, SessionId, SubscriptionTable},
};
pub use crate::injection::Redirect;
use crate::protocol::{
    BlockedAction, ChunkedResponse, DaemonMessage, DaemonTcp, HttpFilter, HttpResponse,
    InternalHttpBodyFrame, LayerTcp, LayerTcpSteal, ResponseError, StealType,
};

#[derive(Clone, Debug)]
pub struct IncomingConfig {
    /// `port-swap` is not implemented here yet and behaves like `off` (no redirection).
    pub redirect: Redirect,
    /// Prefix of this agent's iptables chains (`<prefix>-IN`, `<prefix>-OUT`); stable across
    /// restarts of one pod's agent so a restart finds what a killed predecessor left.
    pub chain_prefix: String,
    /// The agent's group id: its own sockets are exempted from redirection by this gid.
    pub agent_gid: u32,
    /// Where passed-through traffic goes; `None` = the connection's original destination.
    pub app_host: Option<IpAddr>,
    /// How long each read of protocol sniffing may wait (spec default 2 s).
    pub http_detection_timeout: Duration,
}

impl IncomingConfig {
    pub fn new(redirect: Redirect, chain_prefix: String, agent_gid: u32) -> Self {
        IncomingConfig {
            redirect,
            chain_prefix,
            agent_gid,
            app_host: None,
            http_detection_timeout: Duration::from_secs(2),
        }
    }
}

/// State shared by the listener, the connection tasks and the sessions.
pub(crate) struct Shared {
    cfg: IncomingConfig,
    redirector: Option<Redirector>,
    listener_port: u16,
    table: Mutex<SubscriptionTable>,
    sessions: Mutex<HashMap<SessionId, Arc<SessionState>>>,
    /// Serializes subscription changes with their iptables calls, so that a port's rules are
    /// never removed after a concurrent subscription re-added it.
    changes: tokio::sync::Mutex<()>,
    next_session: AtomicU64,
    /// Share-link keys registered by the sessions (`ClientMessage::ShareLink`).
    share_keys: Mutex<share_link::ShareKeys>,
}

impl Shared {
    /// A `?mirrord-session=<registered key>` request gets the key in its baggage (share_link).
    /// Whether the request names a registered share-link key (it must then go through the
    /// HTTP path that adds the baggage, not the byte-for-byte pass-through).
    fn names_share_link(&self, uri: &::http::Uri) -> bool {
        self.share_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .registered_key(uri)
            .is_some()
    }

    fn apply_share_link<B>(&self, req: &mut ::http::Request<B>) {
        let keys = self.share_keys.lock().unwrap_or_else(|e| e.into_inner());
        if !keys.is_empty() {
            let uri = req.uri().clone();
            keys.apply(&uri, req.headers_mut());
        }
    }

    fn port_snapshot(&self, port: u16) -> Option<Arc<PortSubscriptions>> {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot(port)
    }

    fn session(&self, id: SessionId) -> Option<Arc<SessionState>> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    fn pass_through_addr(&self, orig: SocketAddr) -> SocketAddr {
        match self.cfg.app_host {
            Some(host) => SocketAddr::new(host, orig.port()),
            None => orig,
        }
    }

    async fn release_ports(&self, ports: Vec<u16>) {
        if let Some(redirector) = &self.redirector {
            for port in ports {
                if let Err(e) = redirector.remove_port(port).await {
                    warn!(port, error = %e, "could not remove redirect");
                }
            }
        }
    }
}

/// The incoming-traffic engine of one agent process.
pub struct Incoming {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Incoming {
    /// Binds the redirect listener and removes stale chains of the same prefix.
    #[tracing::instrument(skip_all, fields(prefix = %cfg.chain_prefix, mode = ?cfg.redirect))]
    pub async fn start(cfg: IncomingConfig) -> Result<Arc<Incoming>, IncomingError> {
        let v4 = TcpListener::bind("0.0.0.0:0")
            .await
            .map_err(IncomingError::Bind)?;
        let listener_port = v4.local_addr().map_err(IncomingError::Bind)?.port();
        let mut listeners = vec![v4];
        let redirector = match cfg.redirect {
            Redirect::Iptables => {
                let v6 = bind_v6_only(listener_port);
                let redirector = Redirector::new(
                    &cfg.chain_prefix,
                    cfg.agent_gid,
                    listener_port,
                    v6.is_some(),
                )
                .await?;
                // IPv6 traffic is only redirected when both the socket and ip6tables nat exist.
                if redirector.families().contains(&Family::V6) {
                    listeners.extend(v6);
                }
                if !listener::can_use_gid(cfg.agent_gid) {
                    warn!(
                        gid = cfg.agent_gid,
                        "cannot create sockets with the agent gid: pass-through would loop; run the agent with this group"
                    );
                }
                Some(redirector)
            }
            Redirect::PortSwap | Redirect::Off => None,
        };
        info!(listener_port, "incoming traffic ready");
        let shared = Arc::new(Shared {
            cfg,
            redirector,
            listener_port,
            table: Mutex::default(),
            sessions: Mutex::default(),
            changes: tokio::sync::Mutex::new(()),
            next_session: AtomicU64::new(0),
            share_keys: Mutex::default(),
        });
        let tasks = listeners
            .into_iter()
            .map(|l| tokio::spawn(listener::accept_loop(shared.clone(), l)))
            .collect();
        Ok(Arc::new(Incoming {
            shared,
            tasks: Mutex::new(tasks),
        }))
    }

    /// Port of the redirect listener (the REDIRECT target).
    pub fn listener_port(&self) -> u16 {
        self.shared.listener_port
    }

    /// Ports currently subscribed by any session.
    pub fn active_ports(&self) -> Vec<u16> {
        self.shared
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .active_ports()
    }

    /// A new session; `client_version` is the client's protocol version once negotiated
    /// (`None`: the pre-negotiation default 1.2.2).
    pub fn session(
        self: &Arc<Self>,
        tx: mpsc::Sender<DaemonMessage>,
        client_version: Option<semver::Version>,
    ) -> IncomingSession {
        let id = self.shared.next_session.fetch_add(1, Ordering::Relaxed);
        let version = client_version.unwrap_or(gates::BEFORE_NEGOTIATION);
        let state = Arc::new(SessionState::new(id, tx, version));
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, state.clone());
        IncomingSession {
            shared: self.shared.clone(),
            state,
        }
    }

    /// Stops accepting and removes every redirect rule (SIGTERM path).
    pub async fn shutdown(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
        if let Some(redirector) = &self.shared.redirector
            && let Err(e) = redirector.remove_all().await
        {
            warn!(error = %e, "could not remove redirect rules");
        }
    }
}

/// `[::]:port` with IPV6_V6ONLY, so the IPv4 listener keeps the IPv4 side of the same port.
fn bind_v6_only(port: u16) -> Option<TcpListener> {
    let socket = TcpSocket::new_v6().ok()?;
    let on: libc::c_int = 1;
    // SAFETY: valid fd and option buffer of the advertised size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return None;
    }
    socket
        .bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))
        .ok()?;
    socket.listen(1024).ok()
}

/// One client session's view of incoming traffic.
pub struct IncomingSession {
    shared: Arc<Shared>,
    state: Arc<SessionState>,
}

impl IncomingSession {
    pub fn set_client_version(&mut self, version: semver::Version) {
        self.state.set_version(version);
    }

    /// `ClientMessage::ShareLink`: keys scoped to this session (no reply).
    pub fn handle_share_link(&mut self, msg: crate::protocol::ShareLinkRequest) {
        let mut keys = self
            .shared
            .share_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match msg {
            crate::protocol::ShareLinkRequest::RegisterKey(key) => {
                keys.register(key, self.state.id)
            }
            crate::protocol::ShareLinkRequest::RemoveKey(key) => keys.remove(&key, self.state.id),
        }
    }

    /// `ClientMessage::Tcp` (mirror).
    #[tracing::instrument(skip(self), fields(session = self.state.id))]
    pub async fn handle_mirror(&mut self, msg: LayerTcp) {
        match msg {
            LayerTcp::PortSubscribe(port) => {
                let result = self.subscribe(port, None, None).await;
                self.reply(false, result).await;
            }
            LayerTcp::PortSubscribeFilteredHttp(port, filter) => {
                let result = self.subscribe(port, Some(&filter), None).await;
                self.reply(false, result).await;
            }
            LayerTcp::PortUnsubscribe(port) => self.unsubscribe(port, false).await,
            LayerTcp::ConnectionUnsubscribe(id) => self.state.mute(id),
        }
    }

    /// `ClientMessage::TcpSteal`.
    #[tracing::instrument(skip(self), fields(session = self.state.id))]
    pub async fn handle_steal(&mut self, msg: LayerTcpSteal) {
        match msg {
            LayerTcpSteal::PortSubscribe(steal) => {
                let port = steal.port();
                let filter = match &steal {
                    StealType::All(_) => None,
                    StealType::FilteredHttp(_, re) => Some(HttpFilter::Header(re.clone())),
                    StealType::FilteredHttpEx(_, filter) => Some(filter.clone()),
                };
                let result = self.subscribe(port, filter.as_ref(), Some(steal)).await;
                self.reply(true, result).await;
            }
            LayerTcpSteal::PortUnsubscribe(port) => self.unsubscribe(port, true).await,
            LayerTcpSteal::ConnectionUnsubscribe(id) => {
                if let Some(stolen) = self.state.unregister(id) {
                    abort(stolen, "the mirrord session unsubscribed");
                }
            }
            LayerTcpSteal::Data(data) => {
                let stolen = self.state.stolen.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(Stolen::Tcp(tx)) = stolen.get(&data.connection_id) {
                    let _ = tx.send(data.bytes.0);
                }
            }
            LayerTcpSteal::HttpResponse(r) => {
                let frames = vec![InternalHttpBodyFrame::Data(
                    r.internal_response.body.clone(),
                )];
                self.respond(r, frames, true);
            }
            LayerTcpSteal::HttpResponseFramed(r) => {
                let frames = r.internal_response.body.0.clone();
                self.respond(r, frames, true);
            }
            LayerTcpSteal::HttpResponseChunked(ChunkedResponse::Start(r)) => {
                let frames = r.internal_response.body.clone();
                self.respond(r, frames, false);
            }
            LayerTcpSteal::HttpResponseChunked(ChunkedResponse::Body(b)) => {
                if b.request_id != 0 {
                    return;
                }
                let mut stolen = self.state.stolen.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(Stolen::HttpBody(tx)) = stolen.get(&b.connection_id) {
                    for frame in b.frames {
                        let _ = tx.send(Ok(http::from_internal(frame)));
                    }
                    if b.is_last {
                        // Dropping the sender ends the body.
                        stolen.remove(&b.connection_id);
                    }
                }
            }
            LayerTcpSteal::HttpResponseChunked(ChunkedResponse::Error(e)) => {
                if e.request_id == 0
                    && let Some(stolen) = self.state.unregister(e.connection_id)
                {
                    abort(stolen, "the mirrord session aborted the response");
                }
            }
        }
    }

    /// Hands the client's response head to the waiting request (spec §5.9 step 3).
    fn respond<B>(&self, r: HttpResponse<B>, frames: Vec<InternalHttpBodyFrame>, complete: bool) {
        if r.request_id != 0 {
            return;
        }
        let id = r.connection_id;
        let mut stolen = self.state.stolen.lock().unwrap_or_else(|e| e.into_inner());
        // A second head for the same request, or an unknown id, is ignored.
        let Some(Stolen::HttpPending { .. }) = stolen.get(&id) else {
            return;
        };
        let Some(Stolen::HttpPending {
            upgrade_requested,
            responder,
        }) = stolen.remove(&id)
        else {
            return;
        };
        let (body_tx, body_rx) = mpsc::unbounded_channel();
        for frame in frames {
            let _ = body_tx.send(Ok(http::from_internal(frame)));
        }
        let status = r.internal_response.status;
        let upgraded = if upgrade_requested && status == ::http::StatusCode::SWITCHING_PROTOCOLS {
            let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
            stolen.insert(id, Stolen::Tcp(tx));
            Some(rx)
        } else {
            if !complete {
                stolen.insert(id, Stolen::HttpBody(body_tx));
            }
            None
        };
        let _ = responder.send(StolenResponse {
            status,
            headers: r.internal_response.headers,
            body: body_rx,
            upgraded,
        });
    }

    async fn reply(&self, steal: bool, result: Result<u16, ResponseError>) {
        let msg = DaemonTcp::SubscribeResult(result);
        self.state
            .send(if steal {
                DaemonMessage::TcpSteal(msg)
            } else {
                DaemonMessage::Tcp(msg)
            })
            .await;
    }

    /// Adds a mirror (`steal: None`) or steal subscription. Filters this agent cannot serve and
    /// ports it cannot redirect are refused with `ForbiddenWithReason`, which the client turns into
    /// a clear failure of the application's `listen()` (any other error would be fatal to it).
    async fn subscribe(
        &self,
        port: u16,
        filter: Option<&HttpFilter>,
        steal: Option<StealType>,
    ) -> Result<u16, ResponseError> {
        let refuse = |reason: String| ResponseError::ForbiddenWithReason {
            blocked_action: match &steal {
                Some(steal) => BlockedAction::Steal(steal.clone()),
                None => BlockedAction::Mirror(port),
            },
            policy_name: None,
            reason,
        };
        let filter = filter
            .map(RequestFilter::compile)
            .transpose()
            .map_err(|e| refuse(e.to_string()))?
            .map(Arc::new);
        let id = self.state.id;
        let _serial = self.shared.changes.lock().await;
        let change = {
            let mut table = self.shared.table.lock().unwrap_or_else(|e| e.into_inner());
            if steal.is_some() {
                table.steal(id, port, filter)?
            } else {
                table.mirror(id, port, filter)
            }
        };
        if change == PortChange::Activated
            && let Some(redirector) = &self.shared.redirector
            && let Err(e) = redirector.add_port(port).await
        {
            warn!(port, error = %e, "could not redirect port");
            let mut table = self.shared.table.lock().unwrap_or_else(|e| e.into_inner());
            table.unsteal(id, port);
            table.unmirror(id, port);
            return Err(refuse(format!(
                "the agent could not redirect port {port}: {e}"
            )));
        }
        Ok(port)
    }

    async fn unsubscribe(&self, port: u16, steal: bool) {
        let _serial = self.shared.changes.lock().await;
        let change = {
            let mut table = self.shared.table.lock().unwrap_or_else(|e| e.into_inner());
            if steal {
                table.unsteal(self.state.id, port)
            } else {
                table.unmirror(self.state.id, port)
            }
        };
        if change == PortChange::Deactivated {
            self.shared.release_ports(vec![port]).await;
        }
    }
}

impl Drop for IncomingSession {
    fn drop(&mut self) {
        let id = self.state.id;
        self.shared
            .share_keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drop_session(id);
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.state.abort_all();
        let shared = self.shared.clone();
        let release = async move {
            let _serial = shared.changes.lock().await;
            let emptied = shared
                .table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .release(id);
            shared.release_ports(emptied).await;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(release);
            }
            // Dropped outside a runtime: the table must still forget the session.
            Err(_) => {
                let emptied = self
                    .shared
                    .table
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .release(id);
                if !emptied.is_empty() {
                    warn!(
                        ?emptied,
                        "session dropped outside a runtime; rules stay until shutdown"
                    );
                }
            }
        }
    }
}
