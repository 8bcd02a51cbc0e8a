//! Per-session state shared between the session (client messages) and connection tasks.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use hyper::body::Frame;
use semver::Version;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::subscriptions::SessionId;
use crate::protocol::{
    ChunkedRequest, DaemonMessage, DaemonTcp, LogLevel, LogMessage, TcpClose, TcpData,
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body frames of a stolen response, streamed from the client's messages to the remote peer.
pub type ResponseFrames = mpsc::UnboundedReceiver<Result<Frame<Bytes>, BoxError>>;

/// The client's response head for a stolen request, with the rest of the exchange.
pub struct StolenResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: ResponseFrames,
    /// Set for a `101` answer to an upgrade request: the client's bytes for the peer.
    pub upgraded: Option<mpsc::UnboundedReceiver<Bytes>>,
}

/// Where the client's messages about one stolen connection/request go.
pub enum Stolen {
    /// A whole TCP connection (or an upgraded HTTP exchange): the client's bytes for the peer;
    /// empty = the client shut down its sending side.
    Tcp(mpsc::UnboundedSender<Bytes>),
    /// A request waiting for its response head.
    HttpPending {
        upgrade_requested: bool,
        responder: oneshot::Sender<StolenResponse>,
    },
    /// A response whose body is being streamed (after `HttpResponseChunked::Start`).
    HttpBody(mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>),
}

/// One client session as seen by the incoming engine.
pub struct SessionState {
    pub id: SessionId,
    tx: mpsc::Sender<DaemonMessage>,
    version: RwLock<Version>,
    next_mirror_id: AtomicU64,
    next_steal_id: AtomicU64,
    pub stolen: Mutex<HashMap<u64, Stolen>>,
    /// Mirror connection ids the client unsubscribed from: nothing more is sent for them.
    muted: Mutex<HashSet<u64>>,
}

/// Versions at which the client understands a message form (spec §4.5).
pub mod gates {
    use semver::Version;
    /// `ChunkedRequest::StartV2` for stolen requests.
    pub const STEAL_HTTP_V2: Version = Version::new(1, 19, 0);
    /// `NewConnectionV2`, mirrored HTTP requests, HTTP requests on an unfiltered steal.
    pub const V2_FORMS: Version = Version::new(1, 19, 4);
    /// What the client is assumed to speak before `SwitchProtocolVersion`.
    pub const BEFORE_NEGOTIATION: Version = Version::new(1, 2, 2);
}

impl SessionState {
    pub fn new(id: SessionId, tx: mpsc::Sender<DaemonMessage>, version: Version) -> Self {
        SessionState {
            id,
            tx,
            version: RwLock::new(version),
            next_mirror_id: AtomicU64::new(0),
            next_steal_id: AtomicU64::new(0),
            stolen: Mutex::new(HashMap::new()),
            muted: Mutex::new(HashSet::new()),
        }
    }

    pub fn set_version(&self, v: Version) {
        *self.version.write().unwrap_or_else(|e| e.into_inner()) = v;
    }

    pub fn at_least(&self, v: &Version) -> bool {
        *self.version.read().unwrap_or_else(|e| e.into_inner()) >= *v
    }

    pub fn next_mirror_id(&self) -> u64 {
        self.next_mirror_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn next_steal_id(&self) -> u64 {
        self.next_steal_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a steal-side message; false when the session is gone.
    pub async fn send_steal(&self, msg: DaemonTcp) -> bool {
        self.tx.send(DaemonMessage::TcpSteal(msg)).await.is_ok()
    }

    pub async fn send(&self, msg: DaemonMessage) -> bool {
        self.tx.send(msg).await.is_ok()
    }

    /// A warning for the user (the session layer holds logs back until `ReadyForLogs`).
    pub fn warn_message(message: String) -> DaemonMessage {
        DaemonMessage::LogMessage(LogMessage {
            message,
            level: LogLevel::Warn,
        })
    }

    /// Sends without waiting (used from `Drop`); a full queue drops the message.
    pub fn try_send(&self, msg: DaemonMessage) {
        if let Err(e) = self.tx.try_send(msg) {
            debug!(session = self.id, error = %e, "message dropped");
        }
    }

    /// Sends from a synchronous context (`Drop`) keeping the order with what this task sends
    /// next; only when the queue is full does the message wait in a task of its own.
    pub fn send_from_drop(self: &std::sync::Arc<Self>, msg: DaemonMessage) {
        match self.tx.try_send(msg) {
            Err(mpsc::error::TrySendError::Full(msg)) => {
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    let session = self.clone();
                    handle.spawn(async move { session.send(msg).await });
                }
            }
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Sends a mirror-side message unless the client unsubscribed from its connection id.
    pub async fn send_mirror(&self, msg: DaemonTcp) -> bool {
        let id = match &msg {
            DaemonTcp::Data(TcpData { connection_id, .. })
            | DaemonTcp::Close(TcpClose { connection_id })
            | DaemonTcp::HttpRequestChunked(ChunkedRequest::Body(
                crate::protocol::ChunkedRequestBodyV1 { connection_id, .. },
            )) => Some(*connection_id),
            _ => None,
        };
        if let Some(id) = id {
            let mut muted = self.muted.lock().unwrap_or_else(|e| e.into_inner());
            if muted.contains(&id) {
                if matches!(msg, DaemonTcp::Close(_)) {
                    muted.remove(&id);
                }
                return true;
            }
        }
        self.tx.send(DaemonMessage::Tcp(msg)).await.is_ok()
    }

    pub fn mute(&self, id: u64) {
        self.muted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
    }

    pub fn register(&self, id: u64, stolen: Stolen) {
        self.stolen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, stolen);
    }

    pub fn unregister(&self, id: u64) -> Option<Stolen> {
        self.stolen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
    }

    /// Ends every stolen exchange of this session (client gone): connections are dropped,
    /// pending requests get a 502, streamed responses are aborted.
    pub fn abort_all(&self) {
        let all: Vec<Stolen> = self
            .stolen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, s)| s)
            .collect();
        for stolen in all {
            abort(stolen, "session ended");
        }
    }
}

/// Drops a stolen exchange; a streamed body is ended with an error so the peer sees a truncated
/// response rather than a complete one.
pub fn abort(stolen: Stolen, reason: &str) {
    if let Stolen::HttpBody(tx) = stolen {
        let _ = tx.send(Err(reason.to_owned().into()));
    }
}

/// A non-blocking, order-preserving path for mirror copies to one session: the traffic path never
/// waits for a slow client; the copies queue here instead.
pub fn mirror_tap(session: std::sync::Arc<SessionState>) -> mpsc::UnboundedSender<DaemonTcp> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if !session.send_mirror(msg).await {
                break;
            }
        }
    });
    tx
}
