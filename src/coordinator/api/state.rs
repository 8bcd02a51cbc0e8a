//! The interface between the pure API handlers and the rest of the coordinator.
//!
//! Everything a handler needs from the outside world comes in through [`ApiState`]:
//! - [`Identity`]: who is asking. The front-proxy authentication layer (owned by `coordinator/kube`)
//!   verifies kube-apiserver's proxy certificate and inserts an `Identity` as an axum request
//!   extension. A request that reaches a handler without one is answered 401 (defence in depth: the
//!   router must never serve a request nobody authenticated).
//! - [`Authorizer`]: may this identity do this? Implemented with SubjectAccessReview in production;
//!   the handlers compute the [`ResourceAttributes`] kube-apiserver itself would use for the path.
//! - [`Inventory`]: a snapshot of the workloads of one namespace (reflector stores in production).
//! - [`SessionDirectory`]: live sessions (implemented by `coordinator/session`).
//! - [`Connector`]: the WebSocket session endpoint (implemented by `coordinator/session`); absent
//!   until then, and `supported_features` follows from whether it is there.
//! - [`OperatorInfo`] and the user-credential CA ([`UserCa`]).

use std::{collections::BTreeMap, fmt, sync::Arc};

use arc_swap::ArcSwap;
use axum::{body::Body, response::Response};
use futures::future::BoxFuture;
use http::{HeaderMap, Request};
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet, StatefulSet},
    batch::v1::{CronJob, Job},
    core::v1::Pod,
};
use kube::core::DynamicObject;
use time::OffsetDateTime;

use crate::coordinator::{credentials::UserCa, targets::TargetRef};

/// The authenticated user, as kube-apiserver's front proxy asserted it (`X-Remote-User`,
/// `X-Remote-Group`, `X-Remote-Extra-*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
    /// Extra attributes, keys lowercased and unescaped as the requestheader convention says.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The attributes of a SubjectAccessReview `resourceAttributes`, for the one API group this server
/// serves. Computed per route by the router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceAttributes {
    /// `get`, `list`, `create`, `delete`, `deletecollection`, `proxy`.
    pub verb: &'static str,
    /// Always `operator.metalbear.co` today; kept so the trait reads like the Kubernetes type.
    pub group: &'static str,
    pub version: &'static str,
    pub resource: &'static str,
    pub subresource: Option<&'static str>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl fmt::Display for ResourceAttributes {
    /// Reads like kube-apiserver's own denial text: `get` on `targets` "deployment.web" in namespace
    /// "default" (group operator.metalbear.co).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(subresource) = self.subresource {
            write!(f, "/{subresource}")?;
        }
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        write!(f, " in API group {:?}", self.group)?;
        match &self.namespace {
            Some(namespace) => write!(f, " in the namespace {namespace:?}"),
            None => write!(f, " at the cluster scope"),
        }
    }
}

/// What the authorizer decided. A denial carries the reviewer's reason (may be empty).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny { reason: String },
}

/// The authorizer could not decide (API server unreachable, …): answered 500/503, never "allow".
#[derive(Debug, thiserror::Error)]
#[error("authorization check failed: {0}")]
pub struct AuthorizerError(pub String);

/// Asks whether `identity` may act on `attributes`. Dyn-compatible (boxed future) so the state can
/// hold `Arc<dyn Authorizer>`.
pub trait Authorizer: Send + Sync {
    fn authorize<'a>(
        &'a self,
        identity: &'a Identity,
        attributes: &'a ResourceAttributes,
    ) -> BoxFuture<'a, Result<Decision, AuthorizerError>>;
}

/// Allows everything. For tests and for development setups only; production uses
/// SubjectAccessReview.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize<'a>(
        &'a self,
        _identity: &'a Identity,
        _attributes: &'a ResourceAttributes,
    ) -> BoxFuture<'a, Result<Decision, AuthorizerError>> {
        Box::pin(async { Ok(Decision::Allow) })
    }
}

/// The workloads of one namespace at one moment. Shared `Arc`s, as reflector stores hand them out.
#[derive(Clone, Debug, Default)]
pub struct NamespaceInventory {
    pub pods: Vec<Arc<Pod>>,
    pub deployments: Vec<Arc<Deployment>>,
    pub replica_sets: Vec<Arc<ReplicaSet>>,
    pub stateful_sets: Vec<Arc<StatefulSet>>,
    pub jobs: Vec<Arc<Job>>,
    pub cron_jobs: Vec<Arc<CronJob>>,
    /// `argoproj.io/v1alpha1` Rollouts (no typed crate; read through `spec.selector`,
    /// `spec.template` / `spec.workloadRef`).
    pub rollouts: Vec<Arc<DynamicObject>>,
}

/// Read access to the watch-fed caches. Synchronous: a snapshot is a copy of `Arc`s, no I/O.
pub trait Inventory: Send + Sync {
    /// Everything cached in `namespace` (empty when the namespace is unknown).
    fn namespace(&self, namespace: &str) -> NamespaceInventory;
    /// The namespaces that have cached objects, for cluster-wide lists (`kubectl get targets -A`).
    /// The default (no namespaces) makes that list empty; implementations with caches override it.
    fn namespaces(&self) -> Vec<String> {
        Vec::new()
    }
}

/// An [`Inventory`] held in memory, for tests and fixtures.
#[derive(Clone, Debug, Default)]
pub struct StaticInventory {
    pub namespaces: BTreeMap<String, NamespaceInventory>,
}

impl Inventory for StaticInventory {
    fn namespace(&self, namespace: &str) -> NamespaceInventory {
        self.namespaces.get(namespace).cloned().unwrap_or_default()
    }
    fn namespaces(&self) -> Vec<String> {
        self.namespaces.keys().cloned().collect()
    }
}

/// Which pods have a connected agent. Implemented by `coordinator/agents`; without it a target
/// counts as available when a Running pod has an injected agent.
pub trait AgentRegistry: Send + Sync {
    fn is_connected(&self, namespace: &str, pod: &str) -> bool;
}

/// One port a session holds on its target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedPort {
    pub port: u16,
    /// `steal`, `mirror`, … (free text to the CLI).
    pub kind: String,
    /// The HTTP filter, if the subscription has one.
    pub filter: Option<String>,
}

/// What the API shows about one live session (`status.sessions[]`, `Session` objects).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    /// The CLI's `x-session-id`; shown as uppercase hex.
    pub id: u64,
    /// The Kubernetes user that opened it (from [`Identity::user`]); used for ownership checks.
    pub owner: String,
    /// Display name: `<k8s user>/<x-client-name>@<x-client-hostname>` or what the directory chooses.
    pub user: String,
    /// base64 (standard, no padding) of the user certificate's public key (operator-api.md 2.4).
    pub user_id: Option<String>,
    /// `deployment/web/container/app`, `targetless`, …
    pub target: String,
    pub namespace: Option<String>,
    pub duration_secs: u64,
    pub key: Option<String>,
    pub locked_ports: Vec<LockedPort>,
    /// The informational `header_filter` of the connect URL.
    pub header_filter: Option<String>,
    /// The policies that apply to the session now (`MirrordPolicy ns/name`, docs/policies.md).
    pub policies: Vec<String>,
    /// The session's queue splits as `MirrordRMQSession` objects (operator-api.md §7.5.3).
    pub rmq: Vec<serde_json::Value>,
    /// The same as `MirrordSQSSession` objects (§7.5.2).
    pub sqs: Vec<serde_json::Value>,
}

/// Result of killing one session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillOutcome {
    Killed,
    NotFound,
}

/// The live sessions. Implemented by `coordinator/session`; [`NoSessions`] until then.
pub trait SessionDirectory: Send + Sync {
    fn list(&self) -> Vec<SessionSummary>;
    /// Ends one session; `reason` is sent to the CLI (as a protocol `Close`) and logged.
    fn kill<'a>(&'a self, id: u64, reason: &'a str) -> BoxFuture<'a, KillOutcome>;
    /// Ends every session; returns how many were ended.
    fn kill_all<'a>(&'a self, reason: &'a str) -> BoxFuture<'a, usize>;
    /// Usage counts for `status.statistics`; `None` (the default) leaves them out rather than
    /// inventing numbers.
    fn statistics(&self) -> Option<UsageStatistics> {
        None
    }
}

/// `status.statistics` (operator-api.md 2.4): distinct users over the last day and month.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageStatistics {
    pub dau: u64,
    pub mau: u64,
}

/// A directory with no sessions (before the session core exists, and in tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSessions;

impl SessionDirectory for NoSessions {
    fn list(&self) -> Vec<SessionSummary> {
        Vec::new()
    }
    fn kill<'a>(&'a self, _id: u64, _reason: &'a str) -> BoxFuture<'a, KillOutcome> {
        Box::pin(async { KillOutcome::NotFound })
    }
    fn kill_all<'a>(&'a self, _reason: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async { 0 })
    }
}

/// The user certificate a request presented in `x-client-der`, after [`UserCa::verify_client`]
/// checked it was signed by this coordinator's CA and is valid now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificate {
    /// Subject CN (the CLI puts the lowercased local hostname there).
    pub common_name: String,
    /// base64 (standard, no padding) of the subject public key bytes: the CLI's `user_id`.
    pub user_id: String,
}

/// Everything a [`Connector`] gets for `GET …/targets/{name}?connect=true` (and the `/proxy/` form).
/// Authentication, authorization (`get` or `proxy` on `targets`), the client certificate and the
/// target name have been checked; the target exists in the inventory unless it is targetless.
pub struct ConnectRequest {
    pub identity: Identity,
    pub namespace: String,
    pub target: TargetRef,
    /// The connect parameters (operator-api.md 5.2): from the URL query, or decoded from
    /// `x-mirrord-connect-params` when present. Keys as sent, values percent-decoded.
    pub params: BTreeMap<String, String>,
    /// `x-session-id`, parsed as a decimal u64 (required: a connect without it is refused 400).
    pub session_id: u64,
    pub client: ClientCertificate,
    /// The original headers (`x-client-name`, `x-client-hostname`, `x-mirrord-cli-version`, …).
    pub headers: HeaderMap,
    /// The whole request, for the WebSocket upgrade (`axum::extract::ws::WebSocketUpgrade`
    /// extracts from its parts; `hyper::upgrade::on` takes it).
    pub request: Request<Body>,
}

/// Opens a session for a connect request: answers 101 and relays, or a `metav1.Status` error.
pub trait Connector: Send + Sync {
    fn connect(&self, request: ConnectRequest) -> BoxFuture<'static, Response>;

    /// `NewOperatorFeature` names (operator-api.md 2.5) the connector implements end to end, beyond
    /// `ProxyApi` which the router adds whenever a connector is present (e.g. `LayerReconnect`).
    /// They go into `spec.supported_features`.
    fn features(&self) -> Vec<&'static str> {
        Vec::new()
    }
}

/// The license block of `spec.license`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct License {
    pub name: String,
    pub organization: String,
    /// `YYYY-MM-DD` (a date, not a datetime: the CLI refuses anything else).
    pub expire_at: time::Date,
}

/// Static facts about this operator, fixed at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorInfo {
    /// What `spec.operator_version` says (normally from [`OperatorInfo::new`]).
    pub operator_version: String,
    /// Where the operator runs (`spec.default_namespace`).
    pub default_namespace: String,
    pub license: License,
}

impl OperatorInfo {
    /// The info of this build: `operator_version` is `objects::operator_version()`
    /// (`3.250.0+mirrord-operator.<crate version>`, see docs/coordinator.md).
    pub fn new(default_namespace: impl Into<String>, license: License) -> Self {
        Self {
            operator_version: super::objects::operator_version(),
            default_namespace: default_namespace.into(),
            license,
        }
    }
}

/// How long a user certificate is valid and how big request bodies may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    pub certificate_validity: time::Duration,
    /// Larger bodies are answered 413.
    pub max_body_bytes: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            certificate_validity: time::Duration::days(30),
            max_body_bytes: 64 * 1024,
        }
    }
}

/// The clock the handlers read (certificate validity, session durations). Injected so tests are
/// deterministic.
pub type Clock = Arc<dyn Fn() -> OffsetDateTime + Send + Sync>;

/// The state every handler receives. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub info: Arc<OperatorInfo>,
    /// The CA that signs user credentials; swapped when it rotates (the fingerprint follows it).
    pub user_ca: Arc<ArcSwap<UserCa>>,
    pub authorizer: Arc<dyn Authorizer>,
    pub inventory: Arc<dyn Inventory>,
    pub sessions: Arc<dyn SessionDirectory>,
    pub connector: Option<Arc<dyn Connector>>,
    pub agents: Option<Arc<dyn AgentRegistry>>,
    pub limits: ApiLimits,
    pub clock: Clock,
}

impl ApiState {
    /// A state with no sessions, no connector, the system clock and default limits.
    pub fn new(
        info: OperatorInfo,
        user_ca: UserCa,
        authorizer: Arc<dyn Authorizer>,
        inventory: Arc<dyn Inventory>,
    ) -> Self {
        Self {
            info: Arc::new(info),
            user_ca: Arc::new(ArcSwap::from_pointee(user_ca)),
            authorizer,
            inventory,
            sessions: Arc::new(NoSessions),
            connector: None,
            agents: None,
            limits: ApiLimits::default(),
            clock: Arc::new(OffsetDateTime::now_utc),
        }
    }

    pub fn with_sessions(mut self, sessions: Arc<dyn SessionDirectory>) -> Self {
        self.sessions = sessions;
        self
    }

    pub fn with_connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connector = Some(connector);
        self
    }

    pub fn with_agents(mut self, agents: Arc<dyn AgentRegistry>) -> Self {
        self.agents = Some(agents);
        self
    }

    /// Whether `pod` (in `namespace`) has an agent a session can attach to: injected, and
    /// connected when a registry is configured.
    pub fn pod_has_agent(&self, namespace: &str, pod: &Pod) -> bool {
        crate::coordinator::targets::has_agent(pod)
            && self.agents.as_ref().is_none_or(|registry| {
                pod.metadata
                    .name
                    .as_deref()
                    .is_some_and(|name| registry.is_connected(namespace, name))
            })
    }

    pub fn with_limits(mut self, limits: ApiLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }
}
