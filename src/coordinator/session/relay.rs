//! One CLI connection fanned out to one agent session per pod of the target.
//!
//! Routing (each CLI Binary frame is one `ClientMessage`, each agent frame one `DaemonMessage`):
//! * `Ping` is answered here; `SwitchProtocolVersion(v)` is answered here with
//!   `min(v, 1.29.0, every agent's version)` and passed to every agent (agents gate what they send
//!   by the client's version); `ReadyForLogs` and `ShareLink` go to every agent.
//! * env, files, DNS, outgoing traffic (and anything else with a reply) go to the session's
//!   **primary** pod, stable for the session; answers come back untouched.
//! * mirror/steal subscriptions are decided centrally ([`SessionTable::claim`]), then sent to
//!   **every** pod; the CLI gets one `SubscribeResult` once all pods answered (the first error
//!   wins). A pod that joins later gets the version, `ReadyForLogs` and every active
//!   subscription replayed.
//! * incoming connections from all pods merge: each `(mirror|steal, pod, agent connection id)`
//!   gets a connection id of this relay, so ids never collide; the CLI's answers (data, HTTP
//!   responses, unsubscribes) are mapped back to the pod and its id. Request ids are per
//!   connection and pass unchanged.
//! * a pod that goes away closes its connections towards the CLI (`Close` per connection); if
//!   it was the primary the CLI connection ends with `Close(reason)` (its files and sockets lived
//!   there).
//!
//! Bad input ends only this connection: a CLI frame that is not exactly one message gets
//! `Close(reason)`; an agent frame that is not one message drops that pod.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use semver::Version;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use super::frames::{Frames, Inbound};
use super::{Command, SessionState, SessionTable};
use crate::agent::incoming::filter::RequestFilter;
use crate::coordinator::agents::{AgentEvent, AgentRegistry, OpenError, PodKey};
use crate::coordinator::filters::{Decision, Mode};
use crate::protocol::codec::{Decoded, decode_from_slice, encode_to_vec};
use crate::protocol::version::{PROTOCOL_VERSION, negotiate};
use crate::protocol::*;

/// How often the target's pods are looked at again (pods whose agent registered before the
/// watch caches showed them ready).
const POD_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);
/// Log lines kept for a CLI that has not sent `ReadyForLogs` yet (its first env request comes
/// before it); later ones are dropped rather than grow the relay.
const MAX_EARLY_LOGS: usize = 32;

/// Why a relayed connection ended (log and metric label).
#[derive(Debug, thiserror::Error)]
pub enum RelayEnd {
    #[error("the CLI closed the connection")]
    ClientClosed,
    #[error("the CLI sent an invalid frame: {0}")]
    BadClientFrame(String),
    #[error("killed: {0}")]
    Killed(String),
    #[error("no agent: {0}")]
    NoAgent(String),
    #[error("the primary pod went away: {0}")]
    PrimaryGone(String),
    #[error("the CLI connection's writer is gone")]
    WriterGone,
}

impl RelayEnd {
    pub fn label(&self) -> &'static str {
        match self {
            RelayEnd::ClientClosed => "client_closed",
            RelayEnd::BadClientFrame(_) => "bad_client_frame",
            RelayEnd::Killed(_) => "killed",
            RelayEnd::NoAgent(_) => "no_agent",
            RelayEnd::PrimaryGone(_) => "primary_gone",
            RelayEnd::WriterGone => "writer_gone",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Family {
    Mirror,
    Steal,
}

enum Event {
    Pod(PodKey, Option<Inbound>),
    Opened(PodKey, Result<Frames, OpenError>),
}

struct PodLink {
    tx: mpsc::Sender<Bytes>,
    reader: JoinHandle<()>,
}

impl Drop for PodLink {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

#[derive(Default)]
struct PendingSubscribe {
    waiting: HashSet<PodKey>,
    error: Option<ResponseError>,
}

/// Connection ids of this relay ↔ `(family, pod, agent id)`.
#[derive(Default)]
struct ConnectionIds {
    to_cli: HashMap<(Family, PodKey, u64), u64>,
    from_cli: HashMap<(Family, u64), (PodKey, u64)>,
    next: u64,
}

impl ConnectionIds {
    fn outward(&mut self, family: Family, pod: &PodKey, agent_id: u64) -> u64 {
        let key = (family, pod.clone(), agent_id);
        if let Some(id) = self.to_cli.get(&key) {
            return *id;
        }
        let id = self.next;
        self.next += 1;
        self.to_cli.insert(key, id);
        self.from_cli.insert((family, id), (pod.clone(), agent_id));
        id
    }

    fn inward(&self, family: Family, cli_id: u64) -> Option<(PodKey, u64)> {
        self.from_cli.get(&(family, cli_id)).cloned()
    }

    fn forget(&mut self, family: Family, cli_id: u64) {
        if let Some((pod, agent_id)) = self.from_cli.remove(&(family, cli_id)) {
            self.to_cli.remove(&(family, pod, agent_id));
        }
    }

    /// Every CLI id of `pod`'s connections, removed.
    fn drain_pod(&mut self, pod: &PodKey) -> Vec<(Family, u64)> {
        let gone: Vec<(Family, u64)> = self
            .from_cli
            .iter()
            .filter(|(_, (p, _))| p == pod)
            .map(|(k, _)| *k)
            .collect();
        for (family, id) in &gone {
            self.forget(*family, *id);
        }
        gone
    }
}

/// The agents' side of the relay: where pods come from.
pub struct Relay {
    registry: Arc<AgentRegistry>,
    table: Arc<SessionTable>,
    session: Arc<SessionState>,
    connection: u64,
    cli_tx: mpsc::Sender<Bytes>,
    pods: BTreeMap<PodKey, PodLink>,
    opening: HashSet<PodKey>,
    events_tx: mpsc::Sender<Event>,
    client_version: Option<Version>,
    logs_ready: bool,
    /// Active subscriptions, replayed to pods that join.
    subscriptions: BTreeMap<(Family, Port), ClientMessage>,
    /// Subscriptions held back behind another session's steal (`continue`).
    held: BTreeMap<(Family, Port), ClientMessage>,
    pending: HashMap<(Family, Port), PendingSubscribe>,
    ids: ConnectionIds,
    primary: Option<PodKey>,
    /// fd paths and owed file answers, for the `fs` policy rules.
    files: crate::coordinator::policy::files::FileTracker,
    /// Log lines written before the CLI sent `ReadyForLogs`, sent once it does.
    early_logs: Vec<LogMessage>,
}

/// Relays one CLI connection of `session` until it ends; `connection` is the id
/// [`SessionTable::join`] gave it. Leaves the table when done.
pub async fn run(
    registry: Arc<AgentRegistry>,
    table: Arc<SessionTable>,
    session: Arc<SessionState>,
    connection: u64,
    cli: Frames,
) -> RelayEnd {
    let span = info_span!("relay", session = %format!("{:X}", session.spec.id), connection);
    let (events_tx, events_rx) = mpsc::channel(256);
    let relay = Relay {
        registry,
        table: table.clone(),
        session: session.clone(),
        connection,
        cli_tx: cli.tx,
        pods: BTreeMap::new(),
        opening: HashSet::new(),
        events_tx,
        client_version: None,
        logs_ready: false,
        subscriptions: BTreeMap::new(),
        held: BTreeMap::new(),
        pending: HashMap::new(),
        ids: ConnectionIds::default(),
        primary: None,
        files: Default::default(),
        early_logs: Vec::new(),
    };
    let end = relay
        .serve(cli.rx, events_rx)
        .instrument(span.clone())
        .await;
    table.leave(&session, connection);
    span.in_scope(|| info!(end = %end, label = end.label(), "relay ended"));
    end
}

fn encode(msg: &DaemonMessage) -> Bytes {
    // Our own messages always encode; an empty frame would make the CLI fail loudly.
    encode_to_vec(msg).map(Bytes::from).unwrap_or_default()
}

/// A frame must hold exactly one whole message.
fn decode_one<M: bincode::Decode<()>>(bytes: &[u8]) -> Result<M, String> {
    match decode_from_slice::<M>(bytes) {
        Ok(Decoded::Message(msg, used)) if used == bytes.len() => Ok(msg),
        Ok(Decoded::Message(_, used)) => Err(format!(
            "a frame of {} bytes holds {} bytes after its message",
            bytes.len(),
            bytes.len() - used
        )),
        Ok(Decoded::Incomplete { .. }) => Err(format!(
            "a frame of {} bytes holds a truncated message",
            bytes.len()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The connection id a client message names, with its family.
fn client_connection(msg: &mut ClientMessage) -> Option<(Family, &mut u64)> {
    Some(match msg {
        ClientMessage::Tcp(LayerTcp::ConnectionUnsubscribe(id)) => (Family::Mirror, id),
        ClientMessage::TcpSteal(steal) => (
            Family::Steal,
            match steal {
                LayerTcpSteal::ConnectionUnsubscribe(id) => id,
                LayerTcpSteal::Data(d) => &mut d.connection_id,
                LayerTcpSteal::HttpResponse(r) => &mut r.connection_id,
                LayerTcpSteal::HttpResponseFramed(r) => &mut r.connection_id,
                LayerTcpSteal::HttpResponseChunked(ChunkedResponse::Start(r)) => {
                    &mut r.connection_id
                }
                LayerTcpSteal::HttpResponseChunked(ChunkedResponse::Body(b)) => {
                    &mut b.connection_id
                }
                LayerTcpSteal::HttpResponseChunked(ChunkedResponse::Error(e)) => {
                    &mut e.connection_id
                }
                LayerTcpSteal::PortSubscribe(_) | LayerTcpSteal::PortUnsubscribe(_) => return None,
            },
        ),
        _ => return None,
    })
}

/// The connection id an incoming-traffic message from an agent names.
fn daemon_connection(tcp: &mut DaemonTcp) -> Option<&mut u64> {
    Some(match tcp {
        DaemonTcp::NewConnectionV1(c) => &mut c.connection_id,
        DaemonTcp::NewConnectionV2(c) => &mut c.connection.connection_id,
        DaemonTcp::Data(d) => &mut d.connection_id,
        DaemonTcp::Close(c) => &mut c.connection_id,
        DaemonTcp::HttpRequest(r) => &mut r.connection_id,
        DaemonTcp::HttpRequestFramed(r) => &mut r.connection_id,
        DaemonTcp::HttpRequestChunked(chunked) => match chunked {
            ChunkedRequest::StartV1(r) => &mut r.connection_id,
            ChunkedRequest::Body(b) => &mut b.connection_id,
            ChunkedRequest::ErrorV1(e) => &mut e.connection_id,
            ChunkedRequest::StartV2(s) => &mut s.connection_id,
            ChunkedRequest::ErrorV2(e) => &mut e.connection_id,
        },
        DaemonTcp::SubscribeResult(_) => return None,
    })
}

fn wrap(family: Family, tcp: DaemonTcp) -> DaemonMessage {
    match family {
        Family::Mirror => DaemonMessage::Tcp(tcp),
        Family::Steal => DaemonMessage::TcpSteal(tcp),
    }
}

fn pod_name(pod: &PodKey) -> String {
    format!("{}/{}", pod.0, pod.1)
}

impl Relay {
    async fn serve(
        mut self,
        mut cli_rx: mpsc::Receiver<Inbound>,
        mut events: mpsc::Receiver<Event>,
    ) -> RelayEnd {
        let mut registry_events = self.registry.subscribe();
        let mut commands = self.session.commands();
        // Warnings from the session's queue splitters (none without queue splits); the ones sent
        // before this connection first (held until the CLI is ready for logs).
        let (backlog, mut notices) = match self.session.spec.queues.as_ref() {
            Some(queues) => {
                let (backlog, live) = queues.notices();
                (backlog, Some(live))
            }
            None => (Vec::new(), None),
        };
        for notice in backlog {
            if let Err(end) = self.log(LogLevel::Warn, notice).await {
                return self.close(end).await;
            }
        }
        if self.session.is_ended() {
            return self
                .close(RelayEnd::Killed("the session has ended".into()))
                .await;
        }
        // The pods of the target now; later ones arrive through the registry's events.
        let initial: Vec<PodKey> = self
            .registry
            .agents()
            .into_iter()
            .filter(|a| (self.session.spec.pods)(a))
            .map(|a| a.key())
            .collect();
        for pod in &initial {
            self.open(pod.clone());
        }
        while !self.opening.is_empty() {
            match events.recv().await {
                Some(event) => {
                    if let Err(end) = self.event(event).await {
                        return self.close(end).await;
                    }
                }
                None => break,
            }
        }
        let available: Vec<PodKey> = self.pods.keys().cloned().collect();
        self.primary = self.session.primary(&available);
        if self.primary.is_none() {
            let why = if initial.is_empty() {
                format!("no registered agent serves {}", self.session.spec.target)
            } else {
                format!(
                    "the agents of {} did not open the session",
                    initial.iter().map(pod_name).collect::<Vec<_>>().join(", ")
                )
            };
            return self.close(RelayEnd::NoAgent(why)).await;
        }
        // An agent often registers before the pod shows Running in the watch caches, so its Up
        // event finds the selector false: look again now and then (open() skips known pods).
        let mut recheck = tokio::time::interval(POD_RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                _ = recheck.tick() => self.resync().await,
                frame = cli_rx.recv() => match frame {
                    None => Err(RelayEnd::ClientClosed),
                    Some(Err(e)) => Err(RelayEnd::BadClientFrame(e)),
                    Some(Ok(bytes)) => match decode_one::<ClientMessage>(&bytes) {
                        Ok(msg) => self.client(msg).await,
                        Err(e) => Err(RelayEnd::BadClientFrame(e)),
                    },
                },
                Some(event) = events.recv() => self.event(event).await,
                event = registry_events.recv() => match event {
                    Ok(AgentEvent::Up(pod)) => { self.pod_up(pod); Ok(()) }
                    Ok(AgentEvent::Down(pod)) => self.remove_pod(&pod, "its agent disconnected").await,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.resync().await,
                    Err(broadcast::error::RecvError::Closed) => Ok(()),
                },
                command = commands.recv() => match command {
                    Ok(command) => self.command(command).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => Ok(()),
                    Err(broadcast::error::RecvError::Closed) => Ok(()),
                },
                Some(notice) = next_notice(&mut notices) => self.log(LogLevel::Warn, notice).await,
            };
            if let Err(end) = step {
                return self.close(end).await;
            }
        }
    }

    /// Ends the connection: the CLI learns why (unless it left), the agent sessions close.
    async fn close(mut self, end: RelayEnd) -> RelayEnd {
        match &end {
            RelayEnd::ClientClosed | RelayEnd::WriterGone => {}
            other => {
                let _ = self
                    .cli_tx
                    .send(encode(&DaemonMessage::Close(other.to_string())))
                    .await;
            }
        }
        for (pod, _) in std::mem::take(&mut self.pods) {
            self.session.set_pod(&pod, false);
        }
        end
    }

    fn open(&mut self, pod: PodKey) {
        if self.pods.contains_key(&pod) || !self.opening.insert(pod.clone()) {
            return;
        }
        let registry = self.registry.clone();
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let result = registry.open_session(&pod).await;
            let _ = events.send(Event::Opened(pod, result)).await;
        });
    }

    fn pod_up(&mut self, pod: PodKey) {
        if let Some(agent) = self.registry.agent(&pod)
            && (self.session.spec.pods)(&agent)
        {
            self.open(pod);
        }
    }

    /// After missed registry events: open what is new, drop what is gone.
    async fn resync(&mut self) -> Result<(), RelayEnd> {
        let agents = self.registry.agents();
        let present: HashSet<PodKey> = agents.iter().map(|a| a.key()).collect();
        let gone: Vec<PodKey> = self
            .pods
            .keys()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for pod in gone {
            self.remove_pod(&pod, "its agent disconnected").await?;
        }
        for agent in agents {
            if (self.session.spec.pods)(&agent) {
                self.open(agent.key());
            }
        }
        Ok(())
    }

    async fn event(&mut self, event: Event) -> Result<(), RelayEnd> {
        match event {
            Event::Opened(pod, Ok(frames)) => {
                self.opening.remove(&pod);
                self.add_pod(pod, frames).await;
                Ok(())
            }
            Event::Opened(pod, Err(e)) => {
                self.opening.remove(&pod);
                warn!(pod = %pod_name(&pod), error = %e, "no session on this pod");
                Ok(())
            }
            Event::Pod(pod, None) => self.remove_pod(&pod, "its agent session closed").await,
            Event::Pod(pod, Some(Err(e))) => {
                self.remove_pod(&pod, &format!("its agent sent a bad frame: {e}"))
                    .await
            }
            Event::Pod(pod, Some(Ok(bytes))) => match decode_one::<DaemonMessage>(&bytes) {
                Ok(msg) => self.daemon(pod, msg).await,
                Err(e) => {
                    self.remove_pod(&pod, &format!("its agent sent a bad frame: {e}"))
                        .await
                }
            },
        }
    }

    async fn add_pod(&mut self, pod: PodKey, frames: Frames) {
        let Frames { tx, mut rx } = frames;
        let events = self.events_tx.clone();
        let key = pod.clone();
        let reader = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if events
                    .send(Event::Pod(key.clone(), Some(frame)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = events.send(Event::Pod(key, None)).await;
        });
        let link = PodLink { tx, reader };
        // A pod joining a running connection catches up: version, logs, subscriptions.
        let mut catch_up = Vec::new();
        // The session's key goes to every agent, so share links (`?mirrord-session=<key>`)
        // become baggage on every pod.
        if let Some(key) = &self.session.spec.key {
            catch_up.push(ClientMessage::ShareLink(ShareLinkRequest::RegisterKey(
                key.clone(),
            )));
        }
        if let Some(v) = &self.client_version {
            catch_up.push(ClientMessage::SwitchProtocolVersion(v.clone()));
        }
        if self.logs_ready {
            catch_up.push(ClientMessage::ReadyForLogs);
        }
        catch_up.extend(self.subscriptions.values().cloned());
        for msg in catch_up {
            if let Ok(bytes) = encode_to_vec(&msg) {
                let _ = link.tx.send(Bytes::from(bytes)).await;
            }
        }
        info!(pod = %pod_name(&pod), "pod joined the session");
        self.session.set_pod(&pod, true);
        self.pods.insert(pod, link);
    }

    async fn remove_pod(&mut self, pod: &PodKey, why: &str) -> Result<(), RelayEnd> {
        if self.pods.remove(pod).is_none() {
            return Ok(());
        }
        warn!(pod = %pod_name(pod), %why, "pod left the session");
        self.session.set_pod(pod, false);
        if self.primary.as_ref() == Some(pod) {
            return Err(RelayEnd::PrimaryGone(format!(
                "pod {} (serving env, files, DNS and outgoing traffic): {why}",
                pod_name(pod)
            )));
        }
        let mut closed = 0;
        for (family, id) in self.ids.drain_pod(pod) {
            self.to_cli(wrap(
                family,
                DaemonTcp::Close(TcpClose { connection_id: id }),
            ))
            .await?;
            closed += 1;
        }
        // The developer sees it in the CLI: this pod's traffic stops reaching them.
        let connections = match closed {
            0 => String::new(),
            n => format!(", {n} connection(s) through it closed"),
        };
        self.log(
            LogLevel::Warn,
            format!(
                "pod {} left the session ({why}){connections}; the target's other pods still reach you",
                pod_name(pod)
            ),
        )
        .await?;
        let keys: Vec<(Family, Port)> = self.pending.keys().copied().collect();
        for key in keys {
            self.subscribe_answered(key, pod, None).await?;
        }
        Ok(())
    }

    async fn to_cli(&self, msg: DaemonMessage) -> Result<(), RelayEnd> {
        self.cli_tx
            .send(encode(&msg))
            .await
            .map_err(|_| RelayEnd::WriterGone)
    }

    async fn log(&mut self, level: LogLevel, message: String) -> Result<(), RelayEnd> {
        let log = LogMessage { message, level };
        if self.logs_ready {
            self.to_cli(DaemonMessage::LogMessage(log)).await?;
        } else if self.early_logs.len() < MAX_EARLY_LOGS {
            self.early_logs.push(log);
        }
        Ok(())
    }

    async fn to_pod(&self, pod: &PodKey, msg: &ClientMessage) {
        if let (Some(link), Ok(bytes)) = (self.pods.get(pod), encode_to_vec(msg)) {
            // A closed pod link is noticed by its reader.
            let _ = link.tx.send(Bytes::from(bytes)).await;
        }
    }

    async fn to_all_pods(&self, msg: &ClientMessage) {
        let Ok(bytes) = encode_to_vec(msg) else {
            return;
        };
        let bytes = Bytes::from(bytes);
        for link in self.pods.values() {
            let _ = link.tx.send(bytes.clone()).await;
        }
    }

    async fn client(&mut self, mut msg: ClientMessage) -> Result<(), RelayEnd> {
        self.session.touch();
        if let Some((family, id)) = client_connection(&mut msg) {
            let cli_id = *id;
            let Some((pod, agent_id)) = self.ids.inward(family, cli_id) else {
                debug!(cli_id, "message for an unknown connection dropped");
                return Ok(());
            };
            *id = agent_id;
            let unsubscribe = matches!(
                msg,
                ClientMessage::Tcp(LayerTcp::ConnectionUnsubscribe(_))
                    | ClientMessage::TcpSteal(LayerTcpSteal::ConnectionUnsubscribe(_))
            );
            self.to_pod(&pod, &msg).await;
            if unsubscribe {
                self.ids.forget(family, cli_id);
            }
            return Ok(());
        }
        match msg {
            ClientMessage::Close => Err(RelayEnd::ClientClosed),
            ClientMessage::Ping => self.to_cli(DaemonMessage::Pong).await,
            ClientMessage::OperatorPong(_) => Ok(()),
            ClientMessage::SwitchProtocolVersion(version) => {
                let mut chosen = negotiate(&version);
                for pod in self.pods.keys() {
                    if let Some(agent) = self.registry.agent(pod)
                        && let Ok(v) = Version::parse(&agent.registration.protocol_version)
                    {
                        chosen = chosen.min(v);
                    }
                }
                chosen = chosen.min(PROTOCOL_VERSION);
                self.client_version = Some(version.clone());
                self.to_all_pods(&ClientMessage::SwitchProtocolVersion(version))
                    .await;
                self.to_cli(DaemonMessage::SwitchProtocolVersionResponse(chosen))
                    .await
            }
            ClientMessage::ReadyForLogs => {
                self.logs_ready = true;
                self.to_all_pods(&msg).await;
                for log in std::mem::take(&mut self.early_logs) {
                    self.to_cli(DaemonMessage::LogMessage(log)).await?;
                }
                Ok(())
            }
            ClientMessage::ShareLink(_) => {
                self.to_all_pods(&msg).await;
                Ok(())
            }
            ClientMessage::Tcp(LayerTcp::PortSubscribe(port)) => {
                self.subscribe(Family::Mirror, port, None, msg).await
            }
            ClientMessage::Tcp(LayerTcp::PortSubscribeFilteredHttp(port, ref filter)) => {
                let filter = filter.clone();
                self.subscribe(Family::Mirror, port, Some(filter), msg)
                    .await
            }
            ClientMessage::TcpSteal(LayerTcpSteal::PortSubscribe(ref steal)) => {
                let (port, filter) = match steal {
                    StealType::All(port) => (*port, None),
                    StealType::FilteredHttp(port, f) => {
                        (*port, Some(HttpFilter::Header(f.clone())))
                    }
                    StealType::FilteredHttpEx(port, f) => (*port, Some(f.clone())),
                };
                self.subscribe(Family::Steal, port, filter, msg).await
            }
            ClientMessage::Tcp(LayerTcp::PortUnsubscribe(port)) => {
                self.unsubscribe(Family::Mirror, port, msg).await;
                Ok(())
            }
            ClientMessage::TcpSteal(LayerTcpSteal::PortUnsubscribe(port)) => {
                self.unsubscribe(Family::Steal, port, msg).await;
                Ok(())
            }
            // Everything else has its state on one pod: env, files, DNS, outgoing, and the
            // messages the agent refuses (pause, VPN).
            other => {
                if let ClientMessage::FileRequest(request) = &other
                    && let Some(answer) = crate::coordinator::policy::enforce::file_request(
                        &self.table,
                        &self.session,
                        &mut self.files,
                        request,
                    )
                {
                    return match answer {
                        Some(answer) => self.to_cli(answer).await,
                        None => Ok(()),
                    };
                }
                if let Some(refused) = crate::coordinator::policy::enforce::client_request(
                    &self.table,
                    &self.session,
                    &other,
                    self.client_version.as_ref(),
                ) {
                    return self.to_cli(refused).await;
                }
                if let Some(primary) = self.primary.clone() {
                    self.to_pod(&primary, &other).await;
                }
                Ok(())
            }
        }
    }

    async fn subscribe(
        &mut self,
        family: Family,
        port: Port,
        filter: Option<HttpFilter>,
        msg: ClientMessage,
    ) -> Result<(), RelayEnd> {
        if let Some(refused) = crate::coordinator::policy::enforce::subscription(
            &self.table,
            &self.session,
            family == Family::Steal,
            port,
            filter.as_ref(),
            self.client_version.as_ref(),
        ) {
            self.log(LogLevel::Error, refused.text).await?;
            return self
                .to_cli(wrap(family, DaemonTcp::SubscribeResult(Err(refused.error))))
                .await;
        }
        let mode = match family {
            Family::Mirror => Mode::Mirror,
            Family::Steal => Mode::Steal,
        };
        // A filter the agents would refuse is not claimed: they answer with the error.
        let valid = filter
            .as_ref()
            .is_none_or(|f| RequestFilter::compile(f).is_ok());
        let decision = if valid {
            self.table
                .claim(&self.session, self.connection, port, mode, filter)
        } else {
            Decision::Accept
        };
        match decision {
            Decision::Refuse(refusal) => {
                let text = refusal.message(SystemTime::now());
                info!(port, %text, "subscription refused");
                self.log(LogLevel::Error, text).await?;
                self.to_cli(wrap(
                    family,
                    DaemonTcp::SubscribeResult(Err(ResponseError::PortAlreadyStolen(port))),
                ))
                .await
            }
            Decision::Wait { behind } => {
                self.held.insert((family, port), msg);
                self.log(
                    LogLevel::Warn,
                    format!(
                        "port {port} is stolen by session {behind:X}; this session gets it when \
                         that one lets go (on_concurrent_steal=continue)"
                    ),
                )
                .await?;
                self.to_cli(wrap(family, DaemonTcp::SubscribeResult(Ok(port))))
                    .await
            }
            Decision::Accept | Decision::AcceptOverriding(_) => {
                self.subscriptions.insert((family, port), msg.clone());
                if self.pods.is_empty() {
                    return self
                        .to_cli(wrap(family, DaemonTcp::SubscribeResult(Ok(port))))
                        .await;
                }
                self.pending.insert(
                    (family, port),
                    PendingSubscribe {
                        waiting: self.pods.keys().cloned().collect(),
                        error: None,
                    },
                );
                self.to_all_pods(&msg).await;
                Ok(())
            }
        }
    }

    async fn unsubscribe(&mut self, family: Family, port: Port, msg: ClientMessage) {
        self.subscriptions.remove(&(family, port));
        self.held.remove(&(family, port));
        let mode = match family {
            Family::Mirror => Mode::Mirror,
            Family::Steal => Mode::Steal,
        };
        self.table.release(&self.session, port, &mode);
        self.to_all_pods(&msg).await;
    }

    /// One pod answered a subscription (`result: None`: the pod left); the CLI gets one answer
    /// when every pod did.
    async fn subscribe_answered(
        &mut self,
        key: (Family, Port),
        pod: &PodKey,
        result: Option<Result<Port, ResponseError>>,
    ) -> Result<(), RelayEnd> {
        let Some(pending) = self.pending.get_mut(&key) else {
            return Ok(());
        };
        if !pending.waiting.remove(pod) {
            return Ok(());
        }
        if let Some(Err(e)) = result {
            pending.error.get_or_insert(e);
        }
        if !pending.waiting.is_empty() {
            return Ok(());
        }
        let error = self.pending.remove(&key).and_then(|p| p.error);
        let (family, port) = key;
        let answer = match error {
            None => Ok(port),
            Some(e) => {
                // Refused by an agent (its own second-line check, or a filter it rejects).
                self.subscriptions.remove(&key);
                let mode = match family {
                    Family::Mirror => Mode::Mirror,
                    Family::Steal => Mode::Steal,
                };
                self.table.release(&self.session, port, &mode);
                let unsubscribe = match family {
                    Family::Mirror => ClientMessage::Tcp(LayerTcp::PortUnsubscribe(port)),
                    Family::Steal => ClientMessage::TcpSteal(LayerTcpSteal::PortUnsubscribe(port)),
                };
                self.to_all_pods(&unsubscribe).await;
                Err(e)
            }
        };
        self.to_cli(wrap(family, DaemonTcp::SubscribeResult(answer)))
            .await
    }

    async fn daemon(&mut self, pod: PodKey, msg: DaemonMessage) -> Result<(), RelayEnd> {
        let (family, mut tcp) = match msg {
            DaemonMessage::Tcp(tcp) => (Family::Mirror, tcp),
            DaemonMessage::TcpSteal(tcp) => (Family::Steal, tcp),
            // Answered here, or never expected from an agent.
            DaemonMessage::SwitchProtocolVersionResponse(_)
            | DaemonMessage::Pong
            | DaemonMessage::OperatorPing(_) => return Ok(()),
            DaemonMessage::Close(reason) => {
                return self
                    .remove_pod(&pod, &format!("its agent closed the session: {reason}"))
                    .await;
            }
            DaemonMessage::LogMessage(mut log) => {
                log.message = format!("[{}] {}", pod.1, log.message);
                return self.to_cli(DaemonMessage::LogMessage(log)).await;
            }
            DaemonMessage::File(response) if self.primary.as_ref() == Some(&pod) => {
                let answers = crate::coordinator::policy::enforce::file_response(
                    &self.table,
                    &self.session,
                    &mut self.files,
                    response,
                );
                if let Some(again) = answers.again {
                    self.to_pod(&pod, &ClientMessage::FileRequest(again)).await;
                }
                for answer in answers.to_cli {
                    self.to_cli(answer).await?;
                }
                return Ok(());
            }
            mut other => {
                if self.primary.as_ref() == Some(&pod) {
                    let note = crate::coordinator::policy::enforce::daemon_answer(
                        &self.table,
                        &self.session,
                        &mut other,
                    );
                    if let Some(note) = note {
                        self.log(note.level, note.message).await?;
                    }
                    if let (DaemonMessage::GetEnvVarsResponse(Ok(env)), Some(queues)) =
                        (&mut other, &self.session.spec.queues)
                    {
                        queues.apply_env(&mut env.0);
                    }
                    return self.to_cli(other).await;
                }
                debug!(pod = %pod_name(&pod), "answer from a pod that is not primary dropped");
                return Ok(());
            }
        };
        if let DaemonTcp::SubscribeResult(result) = tcp {
            let port = match &result {
                Ok(port) => *port,
                Err(ResponseError::PortAlreadyStolen(port)) => *port,
                Err(_) => {
                    // Errors without a port: the oldest pending subscription of the family.
                    match self.pending.keys().filter(|(f, _)| *f == family).min() {
                        Some((_, port)) => *port,
                        None => return Ok(()),
                    }
                }
            };
            return self
                .subscribe_answered((family, port), &pod, Some(result))
                .await;
        }
        let closing = matches!(tcp, DaemonTcp::Close(_));
        if let Some(id) = daemon_connection(&mut tcp) {
            let cli_id = self.ids.outward(family, &pod, *id);
            *id = cli_id;
            self.to_cli(wrap(family, tcp)).await?;
            if closing {
                self.ids.forget(family, cli_id);
            }
        }
        Ok(())
    }

    async fn command(&mut self, command: Command) -> Result<(), RelayEnd> {
        match command {
            Command::Kill(reason) => Err(RelayEnd::Killed(reason)),
            Command::DropPort { port, reason } => {
                if self.subscriptions.remove(&(Family::Steal, port)).is_some() {
                    self.to_all_pods(&ClientMessage::TcpSteal(LayerTcpSteal::PortUnsubscribe(
                        port,
                    )))
                    .await;
                    self.log(LogLevel::Warn, reason).await?;
                }
                Ok(())
            }
            Command::Activate { port } => {
                if let Some(msg) = self.held.remove(&(Family::Steal, port)) {
                    self.subscriptions
                        .insert((Family::Steal, port), msg.clone());
                    self.to_all_pods(&msg).await;
                    self.log(
                        LogLevel::Warn,
                        format!("port {port} is now stolen by this session"),
                    )
                    .await?;
                }
                Ok(())
            }
        }
    }
}

/// The next queue-splitting warning; pending forever without queue splits (a lagging relay
/// skips the warnings it missed).
async fn next_notice(notices: &mut Option<broadcast::Receiver<String>>) -> Option<String> {
    let Some(receiver) = notices else {
        return std::future::pending().await;
    };
    loop {
        match receiver.recv().await {
            Ok(notice) => return Some(notice),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => {
                *notices = None;
                return std::future::pending().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notices_arrive_lagged_ones_are_skipped_and_none_waits_forever() {
        let (tx, rx) = broadcast::channel(2);
        let mut notices = Some(rx);
        for n in 0..3 {
            tx.send(format!("n{n}")).unwrap();
        }
        // Capacity 2: n0 was overwritten; the relay goes on with what is left.
        assert_eq!(next_notice(&mut notices).await.as_deref(), Some("n1"));
        assert_eq!(next_notice(&mut notices).await.as_deref(), Some("n2"));
        drop(tx);
        let wait = std::time::Duration::from_millis(50);
        assert!(
            tokio::time::timeout(wait, next_notice(&mut notices))
                .await
                .is_err()
        );
        assert!(notices.is_none(), "a closed channel is forgotten");
        assert!(
            tokio::time::timeout(wait, next_notice(&mut None))
                .await
                .is_err()
        );
    }

    #[test]
    fn connection_ids_never_collide_across_pods() {
        let mut ids = ConnectionIds::default();
        let a = ("ns".to_owned(), "a".to_owned());
        let b = ("ns".to_owned(), "b".to_owned());
        let x = ids.outward(Family::Steal, &a, 0);
        let y = ids.outward(Family::Steal, &b, 0);
        let z = ids.outward(Family::Mirror, &a, 0);
        assert_ne!(x, y);
        assert_ne!(x, z);
        assert_eq!(ids.outward(Family::Steal, &a, 0), x, "stable");
        assert_eq!(ids.inward(Family::Steal, y), Some((b.clone(), 0)));
        assert_eq!(ids.inward(Family::Mirror, y), None, "families are apart");
        let mut gone = ids.drain_pod(&a);
        gone.sort();
        assert_eq!(gone, vec![(Family::Mirror, z), (Family::Steal, x)]);
        assert_eq!(ids.inward(Family::Steal, x), None);
    }

    #[test]
    fn frames_hold_exactly_one_message() {
        let ping = encode_to_vec(&ClientMessage::Ping).unwrap();
        assert_eq!(decode_one::<ClientMessage>(&ping), Ok(ClientMessage::Ping));
        assert!(decode_one::<ClientMessage>(&[ping.clone(), ping].concat()).is_err());
        assert!(decode_one::<ClientMessage>(&[0x0a, 0x06]).is_err());
        assert!(decode_one::<ClientMessage>(&[0xff]).is_err());
    }
}
