//! The agent hub: where the injected agents dial in (`/agents/connect`), the registry of pods'
//! agents, and the session WebSockets agents open on request (`/agents/sessions/<id>`). The link
//! contract is `crate::link`; how a token becomes a pod is `identity`.
//!
//! * An agent is in the registry from its accepted `register` message until its control socket
//!   ends (TCP close, a Close frame, a bad frame) or stops answering: the hub pings the control
//!   link every [`HubConfig::ping_interval`] and drops an agent silent for
//!   [`HubConfig::silence_limit`] (agents answer pings in their WebSocket library). A new link for
//!   the same pod replaces the old one.
//! * [`AgentRegistry::open_session`] sends `openSession` and waits (bounded) for that agent to dial
//!   `/agents/sessions/<id>` with a token for the **same pod**; the socket is handed over as
//!   [`Frames`].

pub mod identity;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{Instrument, debug, info, info_span, warn};

use self::identity::{LinkAuthError, PodIdentity, TokenReviewer, check_registration, pod_identity};
use super::session::frames::Frames;
use crate::link::{
    AgentControl, CONNECT_PATH, CoordinatorControl, MAX_CONTROL_FRAME, Registration,
    valid_session_id,
};
use crate::protocol::MAX_MESSAGE_SIZE;

/// `(namespace, pod name)`.
pub type PodKey = (String, String);

#[derive(Debug, Clone)]
pub struct HubConfig {
    pub ping_interval: Duration,
    pub silence_limit: Duration,
    /// How long an agent has to dial back after `openSession`.
    pub open_timeout: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            ping_interval: Duration::from_secs(2),
            silence_limit: Duration::from_secs(6),
            open_timeout: Duration::from_secs(5),
        }
    }
}

/// One registered agent, as sessions see it.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub pod: PodIdentity,
    pub registration: Registration,
    pub connected_at: SystemTime,
}

impl AgentInfo {
    pub fn key(&self) -> PodKey {
        (self.pod.namespace.clone(), self.pod.name.clone())
    }
}

/// Registry changes, for sessions that follow a workload's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    Up(PodKey),
    Down(PodKey),
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no agent is connected for pod {0}/{1}")]
    NotConnected(String, String),
    #[error("the agent of pod {0}/{1} did not open the session within {2:?}")]
    Timeout(String, String, Duration),
}

struct Entry {
    info: AgentInfo,
    link: u64,
    control: mpsc::Sender<CoordinatorControl>,
}

struct Pending {
    pod: PodKey,
    socket: oneshot::Sender<WebSocket>,
}

#[derive(Default)]
struct Inner {
    agents: HashMap<PodKey, Entry>,
    pending: HashMap<String, Pending>,
}

/// The pods' agents and the sessions being opened on them.
pub struct AgentRegistry {
    inner: Mutex<Inner>,
    events: broadcast::Sender<AgentEvent>,
    next: AtomicU64,
    config: HubConfig,
    reviewer: Arc<dyn TokenReviewer>,
}

impl AgentRegistry {
    pub fn new(reviewer: Arc<dyn TokenReviewer>, config: HubConfig) -> Arc<AgentRegistry> {
        Arc::new(AgentRegistry {
            inner: Mutex::default(),
            events: broadcast::channel(256).0,
            next: AtomicU64::new(1),
            config,
            reviewer,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every registered agent, sorted by pod.
    pub fn agents(&self) -> Vec<AgentInfo> {
        let mut agents: Vec<AgentInfo> = self
            .lock()
            .agents
            .values()
            .map(|e| e.info.clone())
            .collect();
        agents.sort_by(|a, b| a.pod.cmp(&b.pod));
        agents
    }

    pub fn agent(&self, pod: &PodKey) -> Option<AgentInfo> {
        self.lock().agents.get(pod).map(|e| e.info.clone())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    /// Asks `pod`'s agent to open a session WebSocket and waits for it.
    pub async fn open_session(&self, pod: &PodKey) -> Result<Frames, OpenError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("s{n:x}-{:x}", rand_u64());
        let (tx, rx) = oneshot::channel();
        let control = {
            let mut inner = self.lock();
            let control = inner
                .agents
                .get(pod)
                .map(|e| e.control.clone())
                .ok_or_else(|| OpenError::NotConnected(pod.0.clone(), pod.1.clone()))?;
            inner.pending.insert(
                id.clone(),
                Pending {
                    pod: pod.clone(),
                    socket: tx,
                },
            );
            control
        };
        let sent = control
            .send(CoordinatorControl::OpenSession {
                session_id: id.clone(),
            })
            .await;
        let result = match sent {
            Err(_) => Err(OpenError::NotConnected(pod.0.clone(), pod.1.clone())),
            Ok(()) => match tokio::time::timeout(self.config.open_timeout, rx).await {
                Ok(Ok(socket)) => Ok(Frames::websocket(socket)),
                Ok(Err(_)) => Err(OpenError::NotConnected(pod.0.clone(), pod.1.clone())),
                Err(_) => Err(OpenError::Timeout(
                    pod.0.clone(),
                    pod.1.clone(),
                    self.config.open_timeout,
                )),
            },
        };
        self.lock().pending.remove(&id);
        result
    }

    async fn authenticate(&self, headers: &HeaderMap) -> Result<PodIdentity, LinkAuthError> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(LinkAuthError::NoToken)?;
        let review = self
            .reviewer
            .review(token)
            .await
            .map_err(LinkAuthError::Review)?;
        pod_identity(&review)
    }

    fn register(&self, info: AgentInfo, control: mpsc::Sender<CoordinatorControl>) -> u64 {
        let link = self.next.fetch_add(1, Ordering::Relaxed);
        let key = info.key();
        self.lock().agents.insert(
            key.clone(),
            Entry {
                info,
                link,
                control,
            },
        );
        let _ = self.events.send(AgentEvent::Up(key));
        link
    }

    fn unregister(&self, key: &PodKey, link: u64) {
        let removed = {
            let mut inner = self.lock();
            if inner.agents.get(key).is_some_and(|e| e.link == link) {
                inner.agents.remove(key);
                true
            } else {
                false
            }
        };
        if removed {
            let _ = self.events.send(AgentEvent::Down(key.clone()));
        }
    }
}

/// A random-enough u64 for ids (not a secret: sessions are bound to the pod's token anyway).
pub(crate) fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// The API counts a target available only when one of its Running pods has a connected agent.
impl crate::coordinator::api::state::AgentRegistry for AgentRegistry {
    fn is_connected(&self, namespace: &str, pod: &str) -> bool {
        self.agent(&(namespace.to_owned(), pod.to_owned()))
            .is_some()
    }
}

/// `/agents/connect` and `/agents/sessions/{id}`; mount on the coordinator's TLS listener.
pub fn router(registry: Arc<AgentRegistry>) -> Router {
    Router::new()
        .route(CONNECT_PATH, get(connect))
        .route("/agents/sessions/{id}", get(session))
        .with_state(registry)
}

fn refuse(status: StatusCode, error: impl std::fmt::Display) -> Response {
    (status, format!("{error}\n")).into_response()
}

async fn connect(
    State(registry): State<Arc<AgentRegistry>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let pod = match registry.authenticate(&headers).await {
        Ok(pod) => pod,
        Err(e) => {
            warn!(error = %e, reason = e.label(), "agent link refused");
            return refuse(StatusCode::UNAUTHORIZED, e);
        }
    };
    let span = info_span!("agent_link", pod = %format!("{}/{}", pod.namespace, pod.name));
    ws.max_message_size(MAX_CONTROL_FRAME)
        .on_upgrade(move |socket| control_link(registry, pod, socket).instrument(span))
}

async fn control_link(registry: Arc<AgentRegistry>, pod: PodIdentity, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let config = registry.config.clone();
    // The first frame must be the registration.
    let first = tokio::time::timeout(config.silence_limit, stream.next()).await;
    let registration = match first {
        Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str::<AgentControl>(&text) {
            Ok(AgentControl::Register(registration)) => registration,
            other => {
                warn!(
                    ?other,
                    "agent link: the first message must be a registration"
                );
                return;
            }
        },
        other => {
            warn!(?other, "agent link: no registration");
            return;
        }
    };
    if let Err(e) = check_registration(&pod, &registration) {
        warn!(error = %e, reason = e.label(), "agent link refused");
        let _ = sink.close().await;
        return;
    }
    let (control_tx, mut control_rx) = mpsc::channel::<CoordinatorControl>(64);
    let info = AgentInfo {
        pod: pod.clone(),
        registration,
        connected_at: SystemTime::now(),
    };
    let key = info.key();
    let link = registry.register(info, control_tx);
    info!("agent registered");
    let mut ping = tokio::time::interval(config.ping_interval);
    let mut last_heard = tokio::time::Instant::now();
    let end = loop {
        tokio::select! {
            frame = stream.next() => {
                last_heard = tokio::time::Instant::now();
                match frame {
                    None | Some(Ok(Message::Close(_))) => break "closed".to_owned(),
                    Some(Err(e)) => break format!("error: {e}"),
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<AgentControl>(&text) {
                        Ok(AgentControl::SessionEnded { session_id }) => debug!(%session_id, "agent ended a session"),
                        Ok(AgentControl::Register(_)) => break "registered twice".to_owned(),
                        // Unknown control types are ignored (the contract may grow).
                        Err(e) => debug!(error = %e, "ignoring a control message"),
                    },
                    Some(Ok(Message::Binary(_))) => break "a Binary frame on the control link".to_owned(),
                    Some(Ok(_)) => {}
                }
            }
            Some(control) = control_rx.recv() => {
                let text = match serde_json::to_string(&control) {
                    Ok(text) => text,
                    Err(e) => break format!("encoding: {e}"),
                };
                if let Err(e) = sink.send(Message::Text(text.into())).await {
                    break format!("write: {e}");
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > config.silence_limit {
                    break format!("silent for {:?}", config.silence_limit);
                }
                if let Err(e) = sink.send(Message::Ping(Default::default())).await {
                    break format!("write: {e}");
                }
            }
        }
    };
    registry.unregister(&key, link);
    info!(%end, "agent unregistered");
}

async fn session(
    State(registry): State<Arc<AgentRegistry>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if !valid_session_id(&id) {
        return refuse(StatusCode::BAD_REQUEST, "invalid session id");
    }
    let pod = match registry.authenticate(&headers).await {
        Ok(pod) => pod,
        Err(e) => {
            warn!(error = %e, reason = e.label(), "agent session refused");
            return refuse(StatusCode::UNAUTHORIZED, e);
        }
    };
    let pending = {
        let mut inner = registry.lock();
        match inner.pending.get(&id) {
            Some(p) if p.pod == (pod.namespace.clone(), pod.name.clone()) => {
                inner.pending.remove(&id)
            }
            Some(_) => {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "this session was opened on another pod's agent",
                );
            }
            None => None,
        }
    };
    let Some(pending) = pending else {
        return refuse(StatusCode::NOT_FOUND, "no such pending session");
    };
    ws.max_message_size(MAX_MESSAGE_SIZE)
        .on_upgrade(move |socket| async move {
            let _ = pending.socket.send(socket);
        })
}
