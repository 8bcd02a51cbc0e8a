//! The production link to the coordinator (ARCHITECTURE.md, "Agent ↔ coordinator link").
//!
//! The agent dials `<coordinator>/agents/connect` with `Authorization: Bearer <token>` (the
//! projected token file is re-read on every dial, so rotation needs no restart) and registers
//! itself with a JSON `register` message. The coordinator then sends `openSession` messages; for
//! each the agent dials `<coordinator>/agents/sessions/<id>` and serves one mirrord-protocol
//! session there, one message per Binary frame. A lost control link is redialled with capped
//! exponential backoff plus jitter (so the agents of a whole cluster do not redial a restarted
//! coordinator in lockstep); sessions already open are unaffected.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http::Uri;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tracing::{Instrument, debug, info, info_span, warn};

use super::error::AgentError;
use super::session::{self, AgentState, Outbound};
pub use crate::link::{AgentControl, CoordinatorControl, Registration};
use crate::link::{CONNECT_PATH, session_path, valid_session_id};
use crate::protocol::codec::{Decoded, decode_from_slice, encode_to_vec};
use crate::protocol::{ClientMessage, version::PROTOCOL_VERSION_STR};

const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct LinkConfig {
    /// `ws://` or `wss://` base; paths are appended to it.
    pub base: Uri,
    pub token_file: PathBuf,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub registration: Registration,
}

impl LinkConfig {
    pub fn new(
        url: &str,
        ca_pem: Option<&str>,
        token_file: PathBuf,
        registration: Registration,
    ) -> Result<Self, AgentError> {
        let base: Uri = url
            .parse()
            .map_err(|e| AgentError::Config(format!("coordinator URL {url:?}: {e}")))?;
        let tls = match base.scheme_str() {
            Some("ws") => None,
            Some("wss") => {
                let pem = ca_pem.ok_or_else(|| {
                    AgentError::Config(
                        "a wss:// coordinator needs MIRRORD_AGENT_COORDINATOR_CA".into(),
                    )
                })?;
                Some(Arc::new(tls_config(pem)?))
            }
            other => {
                return Err(AgentError::Config(format!(
                    "coordinator URL scheme {other:?} is not ws or wss"
                )));
            }
        };
        if base.host().is_none() {
            return Err(AgentError::Config(format!(
                "coordinator URL {url:?} has no host"
            )));
        }
        Ok(LinkConfig {
            base,
            token_file,
            tls,
            registration,
        })
    }

    fn url(&self, path: &str) -> String {
        let base = self.base.to_string();
        format!("{}{path}", base.trim_end_matches('/'))
    }
}

fn tls_config(ca_pem: &str) -> Result<rustls::ClientConfig, AgentError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| AgentError::Config(format!("coordinator CA PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| AgentError::Config(format!("coordinator CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(AgentError::Config(
            "coordinator CA PEM holds no certificate".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Anything a WebSocket can run over (plain TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub type Ws = WebSocketStream<Box<dyn Io>>;

/// Dials `path` on the coordinator with a freshly read bearer token.
pub async fn dial(cfg: &LinkConfig, path: &str) -> Result<Ws, AgentError> {
    let link = |e: String| AgentError::Link(e);
    let token = tokio::fs::read_to_string(&cfg.token_file)
        .await
        .map_err(|e| link(format!("token file {}: {e}", cfg.token_file.display())))?;
    let url = cfg.url(path);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| link(format!("request for {url}: {e}")))?;
    let bearer = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| link("token is not a valid header value".into()))?;
    request
        .headers_mut()
        .insert(http::header::AUTHORIZATION, bearer);
    let host = cfg.base.host().unwrap_or_default().to_owned();
    let port = cfg
        .base
        .port_u16()
        .unwrap_or(if cfg.tls.is_some() { 443 } else { 80 });
    let connect = async {
        let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| link(format!("connect {host}:{port}: {e}")))?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match &cfg.tls {
            None => Box::new(tcp),
            Some(tls) => {
                let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
                    .map_err(|e| link(format!("server name {host}: {e}")))?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| link(format!("TLS with {host}:{port}: {e}")))?;
                Box::new(stream)
            }
        };
        let (ws, _response) = tokio_tungstenite::client_async(request, io)
            .await
            .map_err(|e| link(format!("WebSocket handshake with {url}: {e}")))?;
        Ok::<_, AgentError>(ws)
    };
    tokio::time::timeout(DIAL_TIMEOUT, connect)
        .await
        .map_err(|_| link(format!("dialing {url} timed out")))?
}

/// Capped exponential backoff with "equal jitter": the n-th wait is drawn uniformly from
/// `[d/2, d]` with `d = min(start * 2^n, max)`. Half the delay stays fixed so a failing
/// coordinator is never hammered; the random half spreads the redials of many agents that lost
/// the coordinator at the same moment.
#[derive(Debug)]
pub struct Backoff {
    start: Duration,
    max: Duration,
    current: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    /// `rng` is explicit so tests are deterministic; production seeds it from the OS.
    pub fn new(start: Duration, max: Duration, rng: fastrand::Rng) -> Self {
        Self {
            start,
            max,
            current: start.min(max),
            rng,
        }
    }

    /// The next wait; doubles the ceiling for the one after (up to `max`).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        half + Duration::from_micros(self.rng.u64(0..=spread))
    }

    /// After a link that ended cleanly: start again from the smallest delay.
    pub fn reset(&mut self) {
        self.current = self.start.min(self.max);
    }
}

/// Keeps the control link up for the life of the process.
pub async fn run(cfg: LinkConfig, state: Arc<AgentState>) -> Result<(), AgentError> {
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_MAX, fastrand::Rng::new());
    loop {
        match control_session(&cfg, &state).await {
            Ok(()) => {
                info!("coordinator closed the control link; redialling");
                backoff.reset();
            }
            Err(e) => warn!(error = %e, "coordinator link failed"),
        }
        let wait = backoff.next_delay();
        debug!(retry_in = ?wait, "redialling the coordinator");
        tokio::time::sleep(wait).await;
    }
}

async fn control_session(cfg: &LinkConfig, state: &Arc<AgentState>) -> Result<(), AgentError> {
    let mut ws = dial(cfg, CONNECT_PATH).await?;
    let register = serde_json::to_string(&AgentControl::Register(cfg.registration.clone()))
        .map_err(|e| AgentError::Link(e.to_string()))?;
    ws.send(Message::text(register))
        .await
        .map_err(|e| AgentError::Link(format!("register: {e}")))?;
    info!("registered with the coordinator");
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::channel::<String>(16);
    loop {
        tokio::select! {
            frame = ws.next() => {
                let frame = match frame {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(AgentError::Link(format!("control link: {e}"))),
                    Some(Ok(frame)) => frame,
                };
                match frame {
                    Message::Text(text) => match serde_json::from_str::<CoordinatorControl>(&text) {
                        Ok(CoordinatorControl::OpenSession { session_id }) => {
                            open_session(cfg, state, session_id, ended_tx.clone())
                        }
                        Err(e) => warn!(error = %e, "ignoring unknown control message"),
                    },
                    Message::Close(_) => return Ok(()),
                    // tungstenite answers pings itself.
                    _ => {}
                }
            }
            Some(session_id) = ended_rx.recv() => {
                let msg = serde_json::to_string(&AgentControl::SessionEnded { session_id })
                    .map_err(|e| AgentError::Link(e.to_string()))?;
                ws.send(Message::text(msg))
                    .await
                    .map_err(|e| AgentError::Link(format!("control link: {e}")))?;
            }
        }
    }
}

fn open_session(
    cfg: &LinkConfig,
    state: &Arc<AgentState>,
    session_id: String,
    ended: tokio::sync::mpsc::Sender<String>,
) {
    if !valid_session_id(&session_id) {
        warn!(
            ?session_id,
            "refusing a session id that is not a plain path segment"
        );
        return;
    }
    let cfg = cfg.clone();
    let state = state.clone();
    let span = info_span!("link_session", %session_id);
    tokio::spawn(
        async move {
            match dial(&cfg, &session_path(&session_id)).await {
                Ok(ws) => serve_websocket(state, ws).await,
                Err(e) => warn!(error = %e, "cannot open the session WebSocket"),
            }
            let _ = ended.send(session_id).await;
        }
        .instrument(span),
    );
}

/// One session over a WebSocket: each Binary frame is exactly one protocol message.
pub async fn serve_websocket<S>(state: Arc<AgentState>, ws: WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, stream) = ws.split();
    let (out, mut rx) = Outbound::channel();
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            let bytes = match encode_to_vec(&msg) {
                Ok(bytes) => bytes,
                Err(e) => {
                    warn!(error = %e, "cannot encode a daemon message; dropping the session");
                    break;
                }
            };
            if let Err(e) = sink.send(Message::binary(bytes)).await {
                debug!(error = %e, "session WebSocket write failed");
                return;
            }
        }
        let _ = sink.close().await;
    });
    // A Close frame ends the session like EOF does (the peer may keep the TCP connection open
    // until its side of the close handshake completes).
    let inbound = stream
        .take_while(|frame| std::future::ready(!matches!(frame, Ok(Message::Close(_)))))
        .filter_map(|frame| async move {
            match frame {
                Ok(Message::Binary(bytes)) => Some(decode_frame(&bytes)),
                // Text frames carry no protocol messages; pings are answered by tungstenite.
                Ok(_) => None,
                Err(e) => Some(Err(AgentError::Link(format!("session WebSocket: {e}")))),
            }
        });
    let inbound = Box::pin(inbound);
    session::run(state, inbound, out).await;
    let _ = writer.await;
}

/// A frame must hold exactly one whole message.
fn decode_frame(bytes: &[u8]) -> Result<ClientMessage, AgentError> {
    match decode_from_slice::<ClientMessage>(bytes) {
        Ok(Decoded::Message(msg, used)) if used == bytes.len() => Ok(msg),
        Ok(Decoded::Message(_, used)) => Err(AgentError::Decode(format!(
            "frame of {} bytes holds {} trailing bytes after one message",
            bytes.len(),
            bytes.len() - used
        ))),
        Ok(Decoded::Incomplete { .. }) => Err(AgentError::Decode(format!(
            "frame of {} bytes holds a truncated message",
            bytes.len()
        ))),
        Err(e) => Err(AgentError::Decode(e.to_string())),
    }
}

/// The registration this process sends, from its configuration.
pub fn registration(args: &super::AgentArgs) -> Registration {
    let mut ips: Vec<String> = args.pod_ips.iter().map(ToString::to_string).collect();
    if let Some(ip) = args.pod_ip
        && !ips.contains(&ip.to_string())
    {
        ips.insert(0, ip.to_string());
    }
    Registration {
        pod_name: args.pod_name.clone(),
        pod_namespace: args.pod_namespace.clone(),
        pod_uid: args.pod_uid.clone(),
        pod_ips: ips,
        node_name: args.node_name.clone(),
        target_container: args.target_container.clone(),
        target_ports: args.target_ports.0.clone(),
        protocol_version: PROTOCOL_VERSION_STR.to_owned(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_schemes() {
        let reg = Registration {
            pod_name: String::new(),
            pod_namespace: String::new(),
            pod_uid: String::new(),
            pod_ips: vec![],
            node_name: String::new(),
            target_container: String::new(),
            target_ports: vec![],
            protocol_version: String::new(),
            agent_version: String::new(),
        };
        let cfg = LinkConfig::new("ws://coord:8080/", None, "/t".into(), reg.clone()).unwrap();
        assert_eq!(cfg.url(CONNECT_PATH), "ws://coord:8080/agents/connect");
        assert!(LinkConfig::new("wss://coord", None, "/t".into(), reg.clone()).is_err());
        assert!(LinkConfig::new("http://coord", None, "/t".into(), reg.clone()).is_err());
        assert!(LinkConfig::new("wss://coord", Some("junk"), "/t".into(), reg).is_err());
    }

    #[test]
    fn frames_hold_exactly_one_message() {
        let ping = encode_to_vec(&ClientMessage::Ping).unwrap();
        assert_eq!(decode_frame(&ping).unwrap(), ClientMessage::Ping);
        let two = [ping.clone(), ping].concat();
        assert!(decode_frame(&two).is_err());
        assert!(decode_frame(&[0x0a, 0x06]).is_err());
        assert!(decode_frame(&[0xff]).is_err());
    }

    fn backoff(seed: u64) -> Backoff {
        Backoff::new(BACKOFF_START, BACKOFF_MAX, fastrand::Rng::with_seed(seed))
    }

    #[test]
    fn backoff_stays_between_half_and_full_ceiling_and_caps() {
        let mut b = backoff(7);
        let mut ceiling = BACKOFF_START;
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            ceiling = (ceiling * 2).min(BACKOFF_MAX);
        }
        // Long after the cap: never above it, never below half of it.
        let d = b.next_delay();
        assert!(d >= BACKOFF_MAX / 2 && d <= BACKOFF_MAX);
    }

    #[test]
    fn backoff_reset_starts_over() {
        let mut b = backoff(1);
        for _ in 0..10 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= BACKOFF_START);
    }

    #[test]
    fn backoff_is_deterministic_per_seed_and_spreads_agents() {
        let seq = |seed| {
            let mut b = backoff(seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(seq(42), seq(42));
        // 50 agents that lost the coordinator together: their first redials spread over the
        // jitter window instead of landing on one instant.
        let firsts: std::collections::BTreeSet<Duration> =
            (0..50).map(|seed| backoff(seed).next_delay()).collect();
        assert!(
            firsts.len() > 40,
            "only {} distinct first delays",
            firsts.len()
        );
        let spread = *firsts.last().unwrap() - *firsts.first().unwrap();
        assert!(spread >= BACKOFF_START / 4, "spread {spread:?}");
    }
}
