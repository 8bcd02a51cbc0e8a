//! Sessions: the table of live sessions (what `sessions` and `MirrordOperator.status.sessions`
//! show, what kill ends), the central port claims that keep two sessions from owning the same
//! request, and the relay that fans one CLI connection out to the agents of every pod of the
//! target (`relay`).
//!
//! A session is keyed by the CLI's `x-session-id`; it may have several CLI connections at once
//! (operator-api.md §5.7: connection #1 and the internal proxy's #2), each relayed on its own, and
//! lives on for [`TableConfig::reconnect_window`] after its last connection closes (§5.10).

pub mod connector;
pub mod frames;
pub mod relay;
pub mod targetless;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::broadcast;
use tracing::info;

use super::agents::{AgentInfo, AgentRegistry, PodKey};
use super::filters::{Claim, Decision, Mode, OnConcurrentSteal, decide};
use crate::protocol::HttpFilter;

#[derive(Debug, Clone)]
pub struct TableConfig {
    /// How long a session without connections waits for a reconnect (§5.10).
    pub reconnect_window: Duration,
    /// How long an ended session's id is remembered (a reconnect then gets 410).
    pub ended_memory: Duration,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            reconnect_window: Duration::from_secs(60),
            ended_memory: Duration::from_secs(600),
        }
    }
}

/// Which pods a session covers (the resolved target). Evaluated on every registered agent, also
/// on agents that register later (scale-up, rollout).
pub type PodSelector = Arc<dyn Fn(&AgentInfo) -> bool + Send + Sync>;

/// What a new session is (from the connect request).
#[derive(Clone)]
pub struct SessionSpec {
    pub id: u64,
    /// The Kubernetes user (ownership checks).
    pub owner: String,
    /// Display name.
    pub user: String,
    pub user_id: Option<String>,
    /// `deployment/web/container/app`, `targetless`, …
    pub target: String,
    pub namespace: Option<String>,
    pub key: Option<String>,
    pub header_filter: Option<String>,
    pub on_concurrent_steal: OnConcurrentSteal,
    pub pods: PodSelector,
    /// Queue splits (`rmq_splits`): env for the CLI, ended with the session.
    pub queues: Option<Arc<crate::coordinator::queues::sessions::SessionQueues>>,
}

/// Sent to every relay of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// End the session; the reason goes to the CLI as `Close(reason)`.
    Kill(String),
    /// Another session overrode this one's steal on `port` (`on_concurrent_steal=override`).
    DropPort { port: u16, reason: String },
    /// A held-back subscription (`continue`) may now go to the agents.
    Activate { port: u16 },
}

/// One live session.
pub struct SessionState {
    pub spec: SessionSpec,
    pub started: SystemTime,
    last_activity: AtomicU64,
    connections: AtomicUsize,
    ended: AtomicBool,
    /// Pods with an agent session, and how many of the session's connections have one there.
    pods: Mutex<BTreeMap<PodKey, usize>>,
    /// The pod that serves env, files, DNS and outgoing traffic: stable for the session.
    primary: Mutex<Option<PodKey>>,
    commands: broadcast::Sender<Command>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl std::fmt::Debug for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionState")
            .field("id", &format_args!("{:X}", self.spec.id))
            .field("user", &self.spec.user)
            .field("target", &self.spec.target)
            .finish_non_exhaustive()
    }
}

impl SessionState {
    pub fn touch(&self) {
        self.last_activity.store(unix_now(), Ordering::Relaxed);
    }

    pub fn last_activity(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.last_activity.load(Ordering::Relaxed))
    }

    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    pub fn commands(&self) -> broadcast::Receiver<Command> {
        self.commands.subscribe()
    }

    pub fn pods(&self) -> Vec<PodKey> {
        lock(&self.pods).keys().cloned().collect()
    }

    fn set_pod(&self, pod: &PodKey, present: bool) {
        let mut pods = lock(&self.pods);
        if present {
            *pods.entry(pod.clone()).or_default() += 1;
        } else if let Some(n) = pods.get_mut(pod) {
            *n -= 1;
            if *n == 0 {
                pods.remove(pod);
            }
        }
    }

    /// The session's primary pod: the current one if still among `available`, else the first.
    pub fn primary(&self, available: &[PodKey]) -> Option<PodKey> {
        let mut primary = lock(&self.primary);
        if primary.as_ref().is_none_or(|p| !available.contains(p)) {
            *primary = available.iter().min().cloned();
        }
        primary.clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A port claim with who holds it.
#[derive(Debug, Clone)]
pub struct ClaimEntry {
    pub claim: Claim,
    /// The claiming session's target key (`namespace/target`).
    pub target: String,
    /// The relay connection that made it (released when that connection ends).
    pub connection: u64,
    /// `false`: held back behind another session's steal (`continue`).
    pub active: bool,
}

/// A locked port, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortLock {
    pub port: u16,
    pub kind: String,
    pub filter: Option<String>,
}

/// What the `sessions` API and `status.sessions` show about one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub id: u64,
    pub owner: String,
    pub user: String,
    pub user_id: Option<String>,
    pub target: String,
    pub namespace: Option<String>,
    pub key: Option<String>,
    pub header_filter: Option<String>,
    pub pods: Vec<String>,
    pub ports: Vec<PortLock>,
    pub started: SystemTime,
    pub last_activity: SystemTime,
    pub duration_secs: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    /// The id belongs to a session that ended (killed, or its reconnect window passed): the
    /// Connector answers 410 `ReconnectNotPossible`.
    #[error("session {0:X} has ended")]
    Ended(u64),
    /// Another user's session has this id.
    #[error("session {0:X} belongs to another user")]
    NotOwner(u64),
}

#[derive(Default)]
struct TableInner {
    sessions: HashMap<u64, Arc<SessionState>>,
    ended: HashMap<u64, Instant>,
    /// `(namespace, port)` → claims of every session. Two claims compete when they are on the
    /// same target or their sessions share a pod (a pod target and its deployment's target), so
    /// the key is the namespace, not the target.
    claims: HashMap<(String, u16), Vec<ClaimEntry>>,
}

impl TableInner {
    /// Whether sessions `a` (on target `a_target`) and `b` can receive the same port's traffic:
    /// same target, or a pod both sessions are attached to right now (pods are read at decision
    /// time, so a deployment's scaled-up pod counts as soon as the session reaches it).
    fn same_workload(&self, a: u64, a_target: &str, b: &ClaimEntry) -> bool {
        if a_target == b.target {
            return true;
        }
        let pods = |id| self.sessions.get(&id).map(|s| s.pods()).unwrap_or_default();
        let theirs = pods(b.claim.session);
        pods(a).iter().any(|p| theirs.contains(p))
    }
}

/// Every live session of this coordinator.
#[derive(Default)]
pub struct SessionTable {
    inner: Mutex<TableInner>,
    config: TableConfig,
    next_connection: AtomicU64,
    /// The policy checks (docs/policies.md), set once at start; none means no policies.
    policy: std::sync::OnceLock<Arc<crate::coordinator::policy::gate::PolicyGate>>,
}

/// Display form of a filter in the table.
pub fn filter_text(filter: &HttpFilter) -> String {
    match filter {
        HttpFilter::Header(re) => format!("header={}", re.0),
        HttpFilter::Path(re) => format!("path={}", re.0),
        HttpFilter::Method(m) => format!("method={}", m.as_str()),
        HttpFilter::Composite { all, filters } => format!(
            "{}({})",
            if *all { "all_of" } else { "any_of" },
            filters
                .iter()
                .map(filter_text)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        HttpFilter::Body(_) => "body".into(),
        HttpFilter::HeaderJq(q) => format!("jq={}", q.0),
    }
}

impl SessionTable {
    pub fn new(config: TableConfig) -> Arc<SessionTable> {
        Arc::new(SessionTable {
            inner: Mutex::default(),
            config,
            next_connection: AtomicU64::new(1),
            policy: std::sync::OnceLock::new(),
        })
    }

    /// Turns policy enforcement on (once; later calls are ignored).
    pub fn set_policy_gate(&self, gate: Arc<crate::coordinator::policy::gate::PolicyGate>) {
        let _ = self.policy.set(gate);
    }

    pub fn policy_gate(&self) -> Option<&Arc<crate::coordinator::policy::gate::PolicyGate>> {
        self.policy.get()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TableInner> {
        lock(&self.inner)
    }

    /// The session with `spec.id`, created if new; one more connection counted on it.
    pub fn join(&self, spec: SessionSpec) -> Result<(Arc<SessionState>, u64), JoinError> {
        let mut inner = self.lock();
        let memory = self.config.ended_memory;
        inner.ended.retain(|_, at| at.elapsed() < memory);
        if inner.ended.contains_key(&spec.id) {
            return Err(JoinError::Ended(spec.id));
        }
        let session = match inner.sessions.get(&spec.id) {
            Some(existing) if existing.spec.owner != spec.owner => {
                return Err(JoinError::NotOwner(spec.id));
            }
            Some(existing) => existing.clone(),
            None => {
                let state = Arc::new(SessionState {
                    spec: spec.clone(),
                    started: SystemTime::now(),
                    last_activity: AtomicU64::new(unix_now()),
                    connections: AtomicUsize::new(0),
                    ended: AtomicBool::new(false),
                    pods: Mutex::default(),
                    primary: Mutex::default(),
                    commands: broadcast::channel(64).0,
                });
                info!(session = %format!("{:X}", spec.id), user = %spec.user, target = %spec.target, "session started");
                inner.sessions.insert(spec.id, state.clone());
                state
            }
        };
        session.connections.fetch_add(1, Ordering::AcqRel);
        session.touch();
        Ok((
            session,
            self.next_connection.fetch_add(1, Ordering::Relaxed),
        ))
    }

    /// A connection of `session` ended: its claims go; the session goes too once no connection
    /// came back within the reconnect window.
    pub fn leave(self: &Arc<Self>, session: &Arc<SessionState>, connection: u64) {
        self.release_connection(session.spec.id, connection);
        if session.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            let table = self.clone();
            let session = session.clone();
            let window = self.config.reconnect_window;
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                if session.connections.load(Ordering::Acquire) == 0 {
                    table.end(&session, "no connection came back");
                }
            });
        }
    }

    fn end(&self, session: &Arc<SessionState>, why: &str) {
        let id = session.spec.id;
        if let Some(gate) = self.policy_gate() {
            gate.forget(id);
        }
        let waiting = {
            let mut inner = self.lock();
            if inner
                .sessions
                .get(&id)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                inner.sessions.remove(&id);
            }
            inner.ended.insert(id, Instant::now());
            let mut touched = Vec::new();
            for ((namespace, port), claims) in inner.claims.iter_mut() {
                let before = claims.len();
                claims.retain(|c| c.claim.session != id);
                if claims.len() != before {
                    touched.push((namespace.clone(), *port));
                }
            }
            touched
        };
        session.ended.store(true, Ordering::Release);
        if let Some(queues) = &session.spec.queues {
            queues.end();
        }
        info!(session = %format!("{id:X}"), %why, "session ended");
        for (namespace, port) in waiting {
            self.wake_waiting(&namespace, port);
        }
    }

    /// Ends a session now: its relays send `Close(reason)` and drop their agent sessions (the
    /// agents then drop its subscriptions and restore the app's traffic).
    pub fn kill(&self, id: u64, reason: &str) -> bool {
        let Some(session) = self.lock().sessions.get(&id).cloned() else {
            return false;
        };
        let _ = session.commands.send(Command::Kill(reason.to_owned()));
        self.end(&session, reason);
        true
    }

    pub fn kill_all(&self, reason: &str) -> usize {
        let ids: Vec<u64> = self.lock().sessions.keys().copied().collect();
        ids.into_iter().filter(|id| self.kill(*id, reason)).count()
    }

    /// Whether `id` belongs to a session that ended recently (a reconnect gets 410).
    pub fn is_ended(&self, id: u64) -> bool {
        let mut inner = self.lock();
        let memory = self.config.ended_memory;
        inner.ended.retain(|_, at| at.elapsed() < memory);
        inner.ended.contains_key(&id)
    }

    pub fn get(&self, id: u64) -> Option<Arc<SessionState>> {
        self.lock().sessions.get(&id).cloned()
    }

    /// The table, sorted by start.
    pub fn list(&self) -> Vec<SessionRow> {
        let inner = self.lock();
        let now = SystemTime::now();
        let mut rows: Vec<SessionRow> = inner
            .sessions
            .values()
            .map(|s| {
                let mut ports: Vec<PortLock> = inner
                    .claims
                    .iter()
                    .flat_map(|((_, port), claims)| {
                        claims
                            .iter()
                            .filter(|c| c.claim.session == s.spec.id)
                            .map(move |c| PortLock {
                                port: *port,
                                kind: match (&c.claim.mode, c.active) {
                                    (Mode::Mirror, _) => "mirror".into(),
                                    (Mode::Steal, true) => "steal".into(),
                                    (Mode::Steal, false) => "steal (waiting)".into(),
                                },
                                filter: c.claim.filter.as_ref().map(filter_text),
                            })
                    })
                    .collect();
                ports.sort_by(|a, b| (a.port, &a.kind).cmp(&(b.port, &b.kind)));
                ports.dedup();
                SessionRow {
                    id: s.spec.id,
                    owner: s.spec.owner.clone(),
                    user: s.spec.user.clone(),
                    user_id: s.spec.user_id.clone(),
                    target: s.spec.target.clone(),
                    namespace: s.spec.namespace.clone(),
                    key: s.spec.key.clone(),
                    header_filter: s.spec.header_filter.clone(),
                    pods: s.pods().into_iter().map(|(_, name)| name).collect(),
                    ports,
                    started: s.started,
                    last_activity: s.last_activity(),
                    duration_secs: now
                        .duration_since(s.started)
                        .map(|d| d.as_secs())
                        .unwrap_or_default(),
                }
            })
            .collect();
        rows.sort_by_key(|r| (r.started, r.id));
        rows
    }

    /// Decides a subscription centrally and records it when accepted. Other sessions' steals
    /// that an `override` removes are told to drop the port.
    pub fn claim(
        &self,
        session: &SessionState,
        connection: u64,
        port: u16,
        mode: Mode,
        filter: Option<HttpFilter>,
    ) -> Decision {
        let target = target_key(&session.spec);
        let id = session.spec.id;
        let mut inner = self.lock();
        let key = (claims_namespace(&session.spec), port);
        let others: Vec<Claim> = inner
            .claims
            .get(&key)
            .into_iter()
            .flatten()
            .filter(|c| c.claim.session != id && c.active && inner.same_workload(id, &target, c))
            .map(|c| c.claim.clone())
            .collect();
        let claims = inner.claims.entry(key).or_default();
        let decision = decide(
            port,
            &mode,
            filter.as_ref(),
            session.spec.on_concurrent_steal,
            &others,
        );
        let entry = |active| ClaimEntry {
            claim: Claim {
                session: id,
                user: session.spec.user.clone(),
                since: SystemTime::now(),
                mode: mode.clone(),
                filter: filter.clone(),
            },
            target: target.clone(),
            connection,
            active,
        };
        // A session re-subscribing the same port replaces its own claim of that mode.
        let same = |c: &ClaimEntry| c.claim.session == id && c.claim.mode == mode;
        match &decision {
            Decision::Accept => {
                claims.retain(|c| !same(c));
                claims.push(entry(true));
            }
            Decision::Wait { .. } => {
                claims.retain(|c| !same(c));
                claims.push(entry(false));
            }
            Decision::AcceptOverriding(losers) => {
                claims.retain(|c| {
                    let overridden =
                        losers.contains(&c.claim.session) && c.claim.mode == Mode::Steal;
                    !(same(c) || overridden)
                });
                claims.push(entry(true));
                let reason = format!(
                    "session {id:X} of {} took port {port} (on_concurrent_steal=override)",
                    session.spec.user
                );
                for loser in losers {
                    if let Some(s) = inner.sessions.get(loser) {
                        let _ = s.commands.send(Command::DropPort {
                            port,
                            reason: reason.clone(),
                        });
                    }
                }
            }
            Decision::Refuse(_) => {}
        }
        decision
    }

    /// `session` unsubscribed `port` (mode).
    pub fn release(&self, session: &SessionState, port: u16, mode: &Mode) {
        let namespace = claims_namespace(&session.spec);
        if let Some(claims) = self.lock().claims.get_mut(&(namespace.clone(), port)) {
            claims.retain(|c| !(c.claim.session == session.spec.id && c.claim.mode == *mode));
        }
        self.wake_waiting(&namespace, port);
    }

    fn release_connection(&self, id: u64, connection: u64) {
        let touched: Vec<(String, u16)> = {
            let mut inner = self.lock();
            let mut touched = Vec::new();
            for (key, claims) in inner.claims.iter_mut() {
                let before = claims.len();
                claims.retain(|c| !(c.claim.session == id && c.connection == connection));
                if before != claims.len() {
                    touched.push(key.clone());
                }
            }
            inner.claims.retain(|_, c| !c.is_empty());
            touched
        };
        for (namespace, port) in touched {
            self.wake_waiting(&namespace, port);
        }
    }

    /// Held-back claims on a port are decided again; those now accepted are activated.
    fn wake_waiting(&self, namespace: &str, port: u16) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let key = (namespace.to_owned(), port);
        let Some(mut claims) = inner.claims.remove(&key) else {
            return;
        };
        for i in 0..claims.len() {
            if claims[i].active {
                continue;
            }
            let (me, my_target) = (claims[i].claim.session, claims[i].target.clone());
            let others: Vec<Claim> = claims
                .iter()
                .filter(|c| {
                    c.active && c.claim.session != me && inner.same_workload(me, &my_target, c)
                })
                .map(|c| c.claim.clone())
                .collect();
            if decide(
                port,
                &claims[i].claim.mode,
                claims[i].claim.filter.as_ref(),
                OnConcurrentSteal::Abort,
                &others,
            ) == Decision::Accept
            {
                claims[i].active = true;
                if let Some(s) = inner.sessions.get(&claims[i].claim.session) {
                    let _ = s.commands.send(Command::Activate { port });
                }
            }
        }
        inner.claims.insert(key, claims);
    }
}

/// Joins (or starts) the session of `spec` with one more CLI connection and relays it until it
/// ends. What a Connector calls once the WebSocket is upgraded.
pub async fn attach(
    registry: Arc<AgentRegistry>,
    table: Arc<SessionTable>,
    spec: SessionSpec,
    cli: frames::Frames,
) -> Result<relay::RelayEnd, JoinError> {
    let (session, connection) = table.join(spec)?;
    Ok(relay::run(registry, table, session, connection, cli).await)
}

/// Claims are grouped per namespace (see `TableInner::claims`).
fn claims_namespace(spec: &SessionSpec) -> String {
    spec.namespace.clone().unwrap_or_default()
}

/// A session's target within its namespace.
fn target_key(spec: &SessionSpec) -> String {
    format!(
        "{}/{}",
        spec.namespace.as_deref().unwrap_or(""),
        spec.target
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::filters::RefusalKind;
    use crate::protocol::Filter;

    fn spec(id: u64, user: &str, on: OnConcurrentSteal) -> SessionSpec {
        SessionSpec {
            id,
            owner: user.into(),
            user: user.into(),
            user_id: None,
            target: "deployment/web".into(),
            namespace: Some("default".into()),
            key: None,
            header_filter: None,
            on_concurrent_steal: on,
            pods: Arc::new(|_| true),
            queues: None,
        }
    }

    fn header(re: &str) -> Option<HttpFilter> {
        Some(HttpFilter::Header(Filter(re.into())))
    }

    #[tokio::test]
    async fn claims_kill_and_reconnect() {
        let table = SessionTable::new(TableConfig {
            reconnect_window: Duration::from_millis(50),
            ..TableConfig::default()
        });
        let (alice, c1) = table
            .join(spec(1, "alice", OnConcurrentSteal::Abort))
            .unwrap();
        let (bob, c2) = table
            .join(spec(2, "bob", OnConcurrentSteal::Abort))
            .unwrap();
        assert_eq!(
            table
                .join(spec(1, "mallory", OnConcurrentSteal::Abort))
                .unwrap_err(),
            JoinError::NotOwner(1)
        );
        assert_eq!(
            table.claim(&alice, c1, 80, Mode::Steal, header("^x-user: alice$")),
            Decision::Accept
        );
        let Decision::Refuse(r) = table.claim(&bob, c2, 80, Mode::Steal, header("x-user: ali"))
        else {
            panic!("overlap accepted")
        };
        assert!(matches!(r.why, RefusalKind::Overlap(_)));
        assert_eq!(
            table.claim(&bob, c2, 80, Mode::Steal, header("^x-user: bob$")),
            Decision::Accept
        );
        assert_eq!(
            table.claim(&bob, c2, 81, Mode::Mirror, None),
            Decision::Accept
        );
        let rows = table.list();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].ports.len(), 2, "{rows:?}");
        assert_eq!(
            rows[0].ports[0].filter.as_deref(),
            Some("header=^x-user: alice$")
        );

        let mut commands = alice.commands();
        assert!(table.kill(1, "killed by admin"));
        assert_eq!(
            commands.recv().await.unwrap(),
            Command::Kill("killed by admin".into())
        );
        assert!(alice.is_ended());
        assert_eq!(
            table
                .join(spec(1, "alice", OnConcurrentSteal::Abort))
                .unwrap_err(),
            JoinError::Ended(1)
        );
        // Bob's last connection goes; a reconnect in the window keeps the session.
        table.leave(&bob, c2);
        let (bob_again, c3) = table
            .join(spec(2, "bob", OnConcurrentSteal::Abort))
            .unwrap();
        assert!(Arc::ptr_eq(&bob, &bob_again));
        assert!(
            table.list()[0].ports.is_empty(),
            "claims of the old connection released"
        );
        table.leave(&bob, c3);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(table.list().is_empty());
        assert!(bob.is_ended());
    }

    #[tokio::test]
    async fn continue_waits_and_override_evicts() {
        let table = SessionTable::new(TableConfig::default());
        let (a, ca) = table.join(spec(1, "a", OnConcurrentSteal::Abort)).unwrap();
        let (b, cb) = table
            .join(spec(2, "b", OnConcurrentSteal::Continue))
            .unwrap();
        let (c, cc) = table
            .join(spec(3, "c", OnConcurrentSteal::Override))
            .unwrap();
        assert_eq!(table.claim(&a, ca, 80, Mode::Steal, None), Decision::Accept);
        assert_eq!(
            table.claim(&b, cb, 80, Mode::Steal, None),
            Decision::Wait { behind: 1 }
        );
        let mut b_commands = b.commands();
        table.release(&a, 80, &Mode::Steal);
        assert_eq!(
            b_commands.recv().await.unwrap(),
            Command::Activate { port: 80 }
        );
        let mut b_commands = b.commands();
        assert_eq!(
            table.claim(&c, cc, 80, Mode::Steal, header("x")),
            Decision::AcceptOverriding(vec![2])
        );
        assert!(matches!(
            b_commands.recv().await.unwrap(),
            Command::DropPort { port: 80, .. }
        ));
    }

    fn on_target(id: u64, user: &str, target: &str) -> SessionSpec {
        SessionSpec {
            target: target.into(),
            ..spec(id, user, OnConcurrentSteal::Abort)
        }
    }

    fn pod(name: &str) -> PodKey {
        ("default".into(), name.into())
    }

    #[tokio::test]
    async fn a_pod_target_and_its_deployment_see_each_others_claims() {
        let table = SessionTable::new(TableConfig::default());
        let (dep, cd) = table.join(on_target(1, "dep", "deployment/web")).unwrap();
        dep.set_pod(&pod("web-1"), true);
        dep.set_pod(&pod("web-2"), true);
        let (one, c1) = table.join(on_target(2, "one", "pod/web-1")).unwrap();
        one.set_pod(&pod("web-1"), true);
        let (other, co) = table.join(on_target(3, "other", "pod/api-1")).unwrap();
        other.set_pod(&pod("api-1"), true);

        assert_eq!(
            table.claim(&one, c1, 80, Mode::Steal, None),
            Decision::Accept
        );
        // The deployment covers web-1: its unfiltered steal meets the pod session's.
        let Decision::Refuse(r) = table.claim(&dep, cd, 80, Mode::Steal, None) else {
            panic!("deployment steal accepted over its pod's steal")
        };
        assert_eq!(r.other_session, 2);
        // A pod of another workload in the same namespace is independent.
        assert_eq!(
            table.claim(&other, co, 80, Mode::Steal, None),
            Decision::Accept
        );
        // Overlapping filters are found across the two targets as well.
        table.release(&one, 80, &Mode::Steal);
        assert_eq!(
            table.claim(&dep, cd, 80, Mode::Steal, header("^x-user: a")),
            Decision::Accept
        );
        assert!(matches!(
            table.claim(&one, c1, 80, Mode::Steal, header("^x-user: alice")),
            Decision::Refuse(_)
        ));
        assert_eq!(
            table.claim(&one, c1, 80, Mode::Steal, header("^x-user: bob$")),
            Decision::Accept
        );
        // Pods are read at decision time: once the deployment session leaves web-1 (scale
        // down), the pod session no longer competes with it.
        dep.set_pod(&pod("web-1"), false);
        assert_eq!(
            table.claim(&one, c1, 81, Mode::Steal, None),
            Decision::Accept
        );
        assert_eq!(
            table.claim(&dep, cd, 81, Mode::Steal, None),
            Decision::Accept
        );
    }
}
