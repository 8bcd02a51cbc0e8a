//! One mirrord-protocol session: client messages handled in arrival order, answers in the order
//! each request group requires (spec §5.2), everything the session held released when it ends.
//!
//! Transports (`--listen` TCP, coordinator WebSocket) only turn bytes into `ClientMessage`s and
//! `DaemonMessage`s into bytes; [`run`] is the same for both.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::stream::FuturesOrdered;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use super::dns::{self, DnsFailure, Family};
use super::env::{EnvSource, select_env};
use super::error::AgentError;
use super::files::{FileService, FsRoot};
use super::incoming::{Incoming, IncomingSession};
use super::metrics::Metrics;
use super::outgoing::{self, Address, Dialed, Event, Kind, Outgoing};
use crate::protocol::version::negotiate;
use crate::protocol::*;

const NO_INCOMING: &str = "incoming traffic (mirror/steal) is not available on this agent";
/// Messages queued towards one client before producers wait for the transport.
const OUTBOUND_QUEUE: usize = 256;
/// DNS lookups of one session resolved at the same time (answers still go out in order).
const DNS_CONCURRENCY: usize = 16;

/// What every session shares: where env and files come from, the incoming-traffic engine (absent
/// only in tests of the other features) and the process metrics.
pub struct AgentState {
    pub env: EnvSource,
    pub fs_root: FsRoot,
    pub incoming: Option<Arc<Incoming>>,
    pub metrics: Arc<Metrics>,
    next_session: AtomicU64,
}

impl AgentState {
    pub fn new(
        env: EnvSource,
        fs_root: FsRoot,
        incoming: Option<Arc<Incoming>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        AgentState {
            env,
            fs_root,
            incoming,
            metrics,
            next_session: AtomicU64::new(0),
        }
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }
}

/// The sending half of a session: the transport's writer task drains it. `LogMessage`s are
/// dropped here until the client said `ReadyForLogs`, so no producer has to check.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::Sender<DaemonMessage>,
    logs_ready: Arc<AtomicBool>,
}

impl Outbound {
    /// Returns the sender and the receiver the transport writes from.
    pub fn channel() -> (Outbound, OutboundRx) {
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let logs_ready = Arc::new(AtomicBool::new(false));
        (
            Outbound {
                tx,
                logs_ready: logs_ready.clone(),
            },
            OutboundRx { rx, logs_ready },
        )
    }

    /// Queues a message; `false` once the transport is gone.
    pub async fn send(&self, msg: DaemonMessage) -> bool {
        self.tx.send(msg).await.is_ok()
    }

    fn sender(&self) -> mpsc::Sender<DaemonMessage> {
        self.tx.clone()
    }
}

pub struct OutboundRx {
    rx: mpsc::Receiver<DaemonMessage>,
    logs_ready: Arc<AtomicBool>,
}

impl OutboundRx {
    /// Nothing queued right now (the writer flushes then).
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Next message the client may receive; `None` when every sender is gone.
    pub async fn recv(&mut self) -> Option<DaemonMessage> {
        loop {
            let msg = self.rx.recv().await?;
            if matches!(msg, DaemonMessage::LogMessage(_))
                && !self.logs_ready.load(Ordering::Acquire)
            {
                continue;
            }
            return Some(msg);
        }
    }
}

impl From<Event> for DaemonMessage {
    fn from(event: Event) -> Self {
        match event {
            Event::Read { kind, id, bytes } => {
                let read = Ok(DaemonRead {
                    connection_id: id,
                    bytes: bytes.into(),
                });
                match kind {
                    Kind::Stream => DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Read(read)),
                    Kind::Udp => DaemonMessage::UdpOutgoing(DaemonUdpOutgoing::Read(read)),
                }
            }
            Event::Close { kind, id } => match kind {
                Kind::Stream => DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Close(id)),
                Kind::Udp => DaemonMessage::UdpOutgoing(DaemonUdpOutgoing::Close(id)),
            },
            Event::Warn(message) => warn_log(message),
        }
    }
}

fn warn_log(message: String) -> DaemonMessage {
    DaemonMessage::LogMessage(LogMessage {
        message,
        level: LogLevel::Warn,
    })
}

/// Results that come back to the session loop from its helper tasks.
enum Internal {
    /// A connect finished; legacy ones arrive in request order per kind.
    Connected {
        kind: Kind,
        uid: Option<Uid>,
        result: std::io::Result<Dialed>,
    },
}

enum Next {
    Client(Option<Result<ClientMessage, AgentError>>),
    Internal(Internal),
}

enum DnsJob {
    Forward(String, Family),
    Reverse(std::net::IpAddr),
}

/// Why a session ended (for logs and metrics).
#[derive(Debug)]
pub enum SessionEnd {
    /// EOF or `ClientMessage::Close`.
    ClientClosed,
    /// We sent `DaemonMessage::Close` with this reason.
    Refused(String),
    /// The transport failed or sent bytes that are not a message.
    Transport(AgentError),
    /// The transport's writer went away.
    WriterGone,
}

/// Serves one session until the client leaves. `inbound` yields decoded client messages.
pub async fn run<S>(state: Arc<AgentState>, inbound: S, out: Outbound) -> SessionEnd
where
    S: Stream<Item = Result<ClientMessage, AgentError>> + Unpin,
{
    let id = state.next_session_id();
    let span = info_span!("session", id);
    state.metrics.session_started();
    let end = Session::new(state.clone(), out)
        .serve(inbound)
        .instrument(span.clone())
        .await;
    state.metrics.session_ended(&end);
    span.in_scope(|| info!(?end, "session ended"));
    end
}

struct Session {
    state: Arc<AgentState>,
    out: Outbound,
    files: mpsc::Sender<FileRequest>,
    dns: mpsc::Sender<DnsJob>,
    legacy_connect: [mpsc::Sender<Address>; 2],
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: mpsc::Receiver<Internal>,
    outgoing: Outgoing<DaemonMessage>,
    /// Dropping it releases the session's subscriptions, stolen connections and rules.
    incoming: Option<IncomingSession>,
    helpers: Vec<JoinHandle<()>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Pending DNS answers, queued file requests and connects die with the session.
        for task in &self.helpers {
            task.abort();
        }
    }
}

impl Session {
    fn new(state: Arc<AgentState>, out: Outbound) -> Self {
        let (internal_tx, internal_rx) = mpsc::channel(64);
        let (files, files_rx) = mpsc::channel(64);
        let (dns, dns_rx) = mpsc::channel(64);
        let mut helpers = vec![
            tokio::spawn(file_worker(state.fs_root.clone(), files_rx, out.clone())),
            tokio::spawn(dns_worker(dns_rx, out.clone())),
        ];
        let mut legacy = Vec::new();
        for kind in [Kind::Stream, Kind::Udp] {
            let (tx, rx) = mpsc::channel(64);
            helpers.push(tokio::spawn(legacy_connector(
                kind,
                rx,
                state.fs_root.clone(),
                internal_tx.clone(),
            )));
            legacy.push(tx);
        }
        let legacy_connect: [mpsc::Sender<Address>; 2] = legacy
            .try_into()
            .unwrap_or_else(|_| unreachable!("two kinds"));
        let incoming = state
            .incoming
            .as_ref()
            .map(|engine| engine.session(out.sender(), None));
        Session {
            outgoing: Outgoing::new(out.sender()),
            incoming,
            state,
            out,
            files,
            dns,
            legacy_connect,
            internal_tx,
            internal_rx,
            helpers,
        }
    }

    async fn serve<S>(mut self, mut inbound: S) -> SessionEnd
    where
        S: Stream<Item = Result<ClientMessage, AgentError>> + Unpin,
    {
        loop {
            let next = tokio::select! {
                msg = inbound.next() => Next::Client(msg),
                Some(internal) = self.internal_rx.recv() => Next::Internal(internal),
            };
            let step = match next {
                Next::Client(None) => return SessionEnd::ClientClosed,
                Next::Client(Some(Err(e))) => return SessionEnd::Transport(e),
                Next::Client(Some(Ok(msg))) => self.handle(msg).await,
                Next::Internal(internal) => self.handle_internal(internal).await,
            };
            if let Some(end) = step {
                return end;
            }
        }
    }

    /// Sends `Close(reason)` and ends the session.
    async fn refuse(&self, reason: String) -> Option<SessionEnd> {
        warn!(%reason, "closing session");
        self.out.send(DaemonMessage::Close(reason.clone())).await;
        Some(SessionEnd::Refused(reason))
    }

    async fn reply(&self, msg: DaemonMessage) -> Option<SessionEnd> {
        if self.out.send(msg).await {
            None
        } else {
            Some(SessionEnd::WriterGone)
        }
    }

    async fn handle(&mut self, msg: ClientMessage) -> Option<SessionEnd> {
        self.state.metrics.message(&msg);
        match msg {
            ClientMessage::Close => Some(SessionEnd::ClientClosed),
            ClientMessage::Ping => self.reply(DaemonMessage::Pong).await,
            ClientMessage::SwitchProtocolVersion(version) => {
                let chosen = negotiate(&version);
                debug!(client = %version, %chosen, "version negotiated");
                // The client's version (not the answer) gates what the agent sends (spec §4.2);
                // only incoming traffic has gated forms.
                if let Some(incoming) = &mut self.incoming {
                    incoming.set_client_version(version);
                }
                self.reply(DaemonMessage::SwitchProtocolVersionResponse(chosen))
                    .await
            }
            ClientMessage::ReadyForLogs => {
                self.out.logs_ready.store(true, Ordering::Release);
                None
            }
            ClientMessage::GetEnvVarsRequest(request) => {
                let response = self.state.env.read().map(|env| {
                    RemoteEnvVars(select_env(
                        &env,
                        &request.env_vars_filter,
                        &request.env_vars_select,
                    ))
                });
                self.reply(DaemonMessage::GetEnvVarsResponse(response))
                    .await
            }
            ClientMessage::GetAddrInfoRequest(request) => {
                self.dns_job(DnsJob::Forward(request.node, Family::Ipv4Only))
                    .await
            }
            ClientMessage::GetAddrInfoRequestV2(request) => {
                let family = match request.family {
                    AddressFamily::Ipv4Only => Family::Ipv4Only,
                    AddressFamily::Ipv6Only => Family::Ipv6Only,
                    AddressFamily::Any => Family::Any,
                    AddressFamily::Both | AddressFamily::UnknownAddressFamilyFromNewerClient => {
                        Family::Both
                    }
                };
                self.dns_job(DnsJob::Forward(request.node, family)).await
            }
            ClientMessage::ReverseDnsLookup(request) => {
                self.dns_job(DnsJob::Reverse(request.ip_address)).await
            }
            ClientMessage::FileRequest(request) => {
                if self.files.send(request).await.is_err() {
                    return Some(SessionEnd::WriterGone);
                }
                None
            }
            ClientMessage::TcpOutgoing(msg) => {
                let (kind, msg) = (Kind::Stream, OutgoingMsg::from(msg));
                self.handle_outgoing(kind, msg).await
            }
            ClientMessage::UdpOutgoing(msg) => {
                let (kind, msg) = (Kind::Udp, OutgoingMsg::from(msg));
                self.handle_outgoing(kind, msg).await
            }
            ClientMessage::SeqpacketOutgoing(LayerSeqpacket::ConnectV2(connect)) => {
                // tokio has no SOCK_SEQPACKET support; refuse like an unsupported address kind.
                let error = ResponseError::RemoteIO(RemoteIOError {
                    raw_os_error: None,
                    kind: ErrorKindInternal::Other,
                });
                self.reply(DaemonMessage::SeqpacketOutgoing(
                    DaemonSeqpacket::ConnectV2(DaemonConnectV2 {
                        uid: connect.uid,
                        connect: Err(error),
                    }),
                ))
                .await
            }
            // No seqpacket connection ever exists, so these name unknown ids.
            ClientMessage::SeqpacketOutgoing(_) => None,
            ClientMessage::Tcp(msg) => match &mut self.incoming {
                Some(incoming) => {
                    incoming.handle_mirror(msg).await;
                    None
                }
                None => self.refuse(NO_INCOMING.into()).await,
            },
            ClientMessage::TcpSteal(msg) => match &mut self.incoming {
                Some(incoming) => {
                    incoming.handle_steal(msg).await;
                    None
                }
                None => self.refuse(NO_INCOMING.into()).await,
            },
            ClientMessage::PauseTargetRequest(_) => {
                self.refuse("pausing the target is not supported".into())
                    .await
            }
            ClientMessage::Vpn(_) => self.refuse("the VPN feature is not supported".into()).await,
            // Operator-only messages without a reply.
            ClientMessage::ShareLink(msg) => {
                if let Some(incoming) = &mut self.incoming {
                    incoming.handle_share_link(msg);
                }
                None
            }
            ClientMessage::OperatorPong(_) => None,
        }
    }

    async fn dns_job(&self, job: DnsJob) -> Option<SessionEnd> {
        if self.dns.send(job).await.is_err() {
            return Some(SessionEnd::WriterGone);
        }
        None
    }

    async fn handle_outgoing(&mut self, kind: Kind, msg: OutgoingMsg) -> Option<SessionEnd> {
        match msg {
            OutgoingMsg::Connect(addr) => {
                let sender = &self.legacy_connect[kind as usize];
                if sender.send(address(addr)).await.is_err() {
                    return Some(SessionEnd::WriterGone);
                }
            }
            OutgoingMsg::ConnectV2(uid, addr) => {
                let internal = self.internal_tx.clone();
                let root = self.state.fs_root.clone();
                self.helpers.push(tokio::spawn(async move {
                    let result = outgoing::dial(kind, &address(addr), &root).await;
                    let _ = internal
                        .send(Internal::Connected {
                            kind,
                            uid: Some(uid),
                            result,
                        })
                        .await;
                }));
                self.helpers.retain(|task| !task.is_finished());
            }
            OutgoingMsg::Write(id, bytes) => self.outgoing.write(kind, id, bytes).await,
            OutgoingMsg::Close(id) => self.outgoing.close(kind, id),
        }
        None
    }

    async fn handle_internal(&mut self, internal: Internal) -> Option<SessionEnd> {
        let Internal::Connected { kind, uid, result } = internal;
        let connect = match result {
            Ok(dialed) => {
                let (connection_id, peer, local) = self.outgoing.register(dialed);
                Ok(DaemonConnect {
                    connection_id,
                    remote_address: socket_address(peer),
                    local_address: socket_address(local),
                })
            }
            Err(e) => {
                debug!(?kind, error = %e, "outgoing connect failed");
                Err(ResponseError::from(e))
            }
        };
        let msg = match (kind, uid) {
            (Kind::Stream, None) => DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Connect(connect)),
            (Kind::Udp, None) => DaemonMessage::UdpOutgoing(DaemonUdpOutgoing::Connect(connect)),
            (Kind::Stream, Some(uid)) => {
                DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::ConnectV2(DaemonConnectV2 {
                    uid,
                    connect,
                }))
            }
            (Kind::Udp, Some(uid)) => {
                DaemonMessage::UdpOutgoing(DaemonUdpOutgoing::ConnectV2(DaemonConnectV2 {
                    uid,
                    connect,
                }))
            }
        };
        self.reply(msg).await
    }
}

/// TCP and UDP outgoing requests have the same shapes; this is their common form.
enum OutgoingMsg {
    Connect(SocketAddress),
    ConnectV2(Uid, SocketAddress),
    Write(u64, Vec<u8>),
    Close(u64),
}

impl From<LayerTcpOutgoing> for OutgoingMsg {
    fn from(msg: LayerTcpOutgoing) -> Self {
        match msg {
            LayerTcpOutgoing::Connect(c) => OutgoingMsg::Connect(c.remote_address),
            LayerTcpOutgoing::ConnectV2(c) => OutgoingMsg::ConnectV2(c.uid, c.remote_address),
            LayerTcpOutgoing::Write(w) => OutgoingMsg::Write(w.connection_id, w.bytes.to_vec()),
            LayerTcpOutgoing::Close(c) => OutgoingMsg::Close(c.connection_id),
        }
    }
}

impl From<LayerUdpOutgoing> for OutgoingMsg {
    fn from(msg: LayerUdpOutgoing) -> Self {
        match msg {
            LayerUdpOutgoing::Connect(c) => OutgoingMsg::Connect(c.remote_address),
            LayerUdpOutgoing::ConnectV2(c) => OutgoingMsg::ConnectV2(c.uid, c.remote_address),
            LayerUdpOutgoing::Write(w) => OutgoingMsg::Write(w.connection_id, w.bytes.to_vec()),
            LayerUdpOutgoing::Close(c) => OutgoingMsg::Close(c.connection_id),
        }
    }
}

fn address(addr: SocketAddress) -> Address {
    match addr {
        SocketAddress::Ip(ip) => Address::Ip(ip),
        SocketAddress::Unix(UnixAddr::Pathname(path)) => Address::UnixPath(path),
        SocketAddress::Unix(UnixAddr::Abstract(name)) => Address::UnixAbstract(name),
        SocketAddress::Unix(UnixAddr::Unnamed) => Address::UnixUnnamed,
    }
}

fn socket_address(addr: Address) -> SocketAddress {
    match addr {
        Address::Ip(ip) => SocketAddress::Ip(ip),
        Address::UnixPath(path) => SocketAddress::Unix(UnixAddr::Pathname(path)),
        Address::UnixAbstract(name) => SocketAddress::Unix(UnixAddr::Abstract(name)),
        Address::UnixUnnamed => SocketAddress::Unix(UnixAddr::Unnamed),
    }
}

/// Legacy connects of one kind: strictly one after another, so answers keep request order.
async fn legacy_connector(
    kind: Kind,
    mut requests: mpsc::Receiver<Address>,
    fs_root: FsRoot,
    internal: mpsc::Sender<Internal>,
) {
    while let Some(addr) = requests.recv().await {
        let result = outgoing::dial(kind, &addr, &fs_root).await;
        let done = Internal::Connected {
            kind,
            uid: None,
            result,
        };
        if internal.send(done).await.is_err() {
            return;
        }
    }
}

/// File requests of one session, in order, each on the blocking pool (file systems may stall).
async fn file_worker(fs_root: FsRoot, mut requests: mpsc::Receiver<FileRequest>, out: Outbound) {
    let mut service = Some(FileService::new(fs_root));
    while let Some(request) = requests.recv().await {
        let Some(svc) = service.take() else { return };
        let joined = tokio::task::spawn_blocking(move || {
            let mut svc = svc;
            let response = svc.handle(request);
            (svc, response)
        })
        .await;
        let Ok((svc, response)) = joined else { return };
        service = Some(svc);
        if let Some(response) = response
            && !out.send(DaemonMessage::File(response)).await
        {
            return;
        }
    }
}

/// DNS jobs resolved concurrently, answered in request order.
async fn dns_worker(mut jobs: mpsc::Receiver<DnsJob>, out: Outbound) {
    let mut pending = FuturesOrdered::new();
    let mut jobs_open = true;
    loop {
        tokio::select! {
            job = jobs.recv(), if jobs_open && pending.len() < DNS_CONCURRENCY => match job {
                Some(job) => pending.push_back(resolve(job)),
                None => jobs_open = false,
            },
            Some(answer) = pending.next() => {
                if !out.send(answer).await {
                    return;
                }
            }
            else => return,
        }
    }
}

async fn resolve(job: DnsJob) -> DaemonMessage {
    match job {
        DnsJob::Forward(node, family) => {
            let result = dns::lookup(node, family)
                .await
                .map(|records| {
                    DnsLookup(
                        records
                            .into_iter()
                            .map(|(name, ip)| LookupRecord { name, ip })
                            .collect(),
                    )
                })
                .map_err(|failure| {
                    let kind = match failure {
                        DnsFailure::Message(m) => ResolveErrorKindInternal::Message(m),
                        DnsFailure::NoRecordsFound(code) => {
                            ResolveErrorKindInternal::NoRecordsFound(code)
                        }
                        DnsFailure::Timeout => ResolveErrorKindInternal::Timeout,
                        DnsFailure::Unknown => ResolveErrorKindInternal::Unknown,
                    };
                    ResponseError::DnsLookup(DnsLookupError { kind })
                });
            DaemonMessage::GetAddrInfoResponse(GetAddrInfoResponse(result))
        }
        DnsJob::Reverse(ip) => {
            let hostname = dns::reverse(ip).await.map_err(ResponseError::from);
            DaemonMessage::ReverseDnsLookup(Ok(ReverseDnsLookupResponse { hostname }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(text: &str) -> DaemonMessage {
        warn_log(text.to_owned())
    }

    #[tokio::test]
    async fn logs_wait_for_ready_for_logs() {
        let (out, mut rx) = Outbound::channel();
        assert!(out.send(log("too early")).await);
        assert!(out.send(DaemonMessage::Pong).await);
        assert_eq!(rx.recv().await, Some(DaemonMessage::Pong), "log dropped");
        out.logs_ready.store(true, Ordering::Release);
        assert!(out.send(log("now")).await);
        assert_eq!(rx.recv().await, Some(log("now")));
        drop(out);
        assert_eq!(rx.recv().await, None);
    }

    /// Drives `run` in-process: requests in, answers out, in the order the client relies on.
    #[tokio::test]
    async fn answers_keep_group_order_and_close_is_silent() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("f"), b"data").unwrap();
        let state = Arc::new(AgentState::new(
            EnvSource::Off,
            FsRoot::Dir(root.path().to_owned()),
            None,
            Arc::new(Metrics::new()),
        ));
        let (out, mut rx) = Outbound::channel();
        let open = |path: &str| {
            ClientMessage::FileRequest(FileRequest::Open(OpenFileRequest {
                path: path.into(),
                open_options: OpenOptionsInternal {
                    read: true,
                    ..Default::default()
                },
            }))
        };
        let (client, inbound) = futures::channel::mpsc::unbounded();
        let session = tokio::spawn(run(state.clone(), inbound, out));
        for request in [
            open("/f"),
            ClientMessage::FileRequest(FileRequest::Close(CloseFileRequest { fd: 0 })),
            open("/missing"),
            ClientMessage::GetAddrInfoRequest(GetAddrInfoRequest {
                node: "127.0.0.1".into(),
            }),
            ClientMessage::GetEnvVarsRequest(GetEnvVarsRequest::default()),
        ] {
            client.unbounded_send(Ok(request)).unwrap();
        }
        let mut answers = Vec::new();
        for _ in 0..4 {
            let next = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv());
            answers.push(next.await.expect("answer in time").expect("open"));
        }
        // Close ends the session at once; what follows is never handled.
        client.unbounded_send(Ok(ClientMessage::Close)).unwrap();
        client.unbounded_send(Ok(ClientMessage::Ping)).unwrap();
        let end = session.await.unwrap();
        assert!(matches!(end, SessionEnd::ClientClosed), "{end:?}");
        while let Some(msg) = rx.recv().await {
            answers.push(msg);
        }
        let files: Vec<&DaemonMessage> = answers
            .iter()
            .filter(|m| matches!(m, DaemonMessage::File(_)))
            .collect();
        assert_eq!(files.len(), 2, "Close has no answer: {answers:?}");
        assert_eq!(
            files[0],
            &DaemonMessage::File(FileResponse::Open(Ok(OpenFileResponse { fd: 0 })))
        );
        assert!(matches!(
            files[1],
            DaemonMessage::File(FileResponse::Open(Err(ResponseError::RemoteIO(_))))
        ));
        assert!(
            answers.contains(&DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(
                Default::default()
            ))))
        );
        assert!(answers.iter().any(|m| matches!(
            m,
            DaemonMessage::GetAddrInfoResponse(GetAddrInfoResponse(Ok(_)))
        )));
        assert!(!answers.contains(&DaemonMessage::Pong));
        assert_eq!(state.metrics.sessions_active(), 0);
    }
}
