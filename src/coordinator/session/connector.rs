//! The API's [`Connector`] and [`SessionDirectory`] backed by the session table, the agent
//! registry and the relay (operator-api.md §5, §6).
//!
//! `connect` answers `metav1.Status` errors before the upgrade (bad `on_concurrent_steal` 400,
//! label targets 501, targetless served in-process (yet in the table), another user's session id 403, an ended session 410
//! `ReconnectNotPossible`, no connected agent 503 naming the pods), else 101 with the subprotocol
//! echoed (`v4.channel.k8s.io`) and relays the connection. Connections with the same
//! `x-session-id` join one session (§5.7); a reconnect within the window rejoins it (§5.10).

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::FromRequestParts;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use http::StatusCode;
use tokio::sync::broadcast;

use super::frames::Frames;
use super::relay::RelayEnd;
use super::{Command, JoinError, PodSelector, SessionSpec, SessionTable, attach};
use crate::coordinator::agents::{AgentInfo, AgentRegistry};
use crate::coordinator::api::error::ApiError;
use crate::coordinator::api::state::{
    ConnectRequest, Connector, Inventory, KillOutcome, LockedPort, SessionDirectory, SessionSummary,
};
use crate::coordinator::filters::OnConcurrentSteal;
use crate::coordinator::queues::{sessions::SessionQueues, supervisor::SplitterIndex};
use crate::coordinator::targets::{self, TargetKind, TargetRef};
use crate::protocol::MAX_MESSAGE_SIZE;

/// The subprotocol the CLI asks for and checks byte for byte (§5.5).
pub const SUBPROTOCOL: &str = "v4.channel.k8s.io";

/// Sessions for the API: connect, list, kill.
pub struct SessionService {
    pub registry: Arc<AgentRegistry>,
    pub table: Arc<SessionTable>,
    pub inventory: Arc<dyn Inventory>,
    /// Queue splitting (`rmq_splits`, `sqs_splits`, `sqs_jq_filters`); `None` refuses no connect
    /// but splits nothing.
    pub queues: Option<SplitterIndex>,
}

impl SessionService {
    /// The pods a target covers now and later: Running pods of the workload with an injected
    /// agent (from the inventory), whose agent serves the chosen container.
    fn selector(&self, namespace: &str, target: &TargetRef) -> PodSelector {
        let inventory = self.inventory.clone();
        let namespace = namespace.to_owned();
        let target = target.clone();
        Arc::new(move |agent: &AgentInfo| {
            if agent.pod.namespace != namespace {
                return false;
            }
            let Ok(entry) = targets::resolve(
                &inventory.namespace(&namespace),
                &target,
                &targets::has_agent,
            ) else {
                return false;
            };
            let container_ok = match &entry.target {
                TargetRef::Workload {
                    container: Some(c), ..
                } => {
                    agent.registration.target_container.is_empty()
                        || agent.registration.target_container == *c
                }
                _ => true,
            };
            container_ok && entry.ready_pods.contains(&agent.pod.name)
        })
    }

    fn spec(&self, request: &ConnectRequest) -> Result<SessionSpec, ApiError> {
        if !matches!(
            request.target,
            TargetRef::Workload { .. } | TargetRef::Targetless
        ) {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "NotImplemented",
                format!(
                    "{} sessions are not supported: every session runs on the pre-injected agents of a workload's pods",
                    request.target
                ),
            ));
        }
        let on_concurrent_steal = match request.params.get("on_concurrent_steal") {
            None => OnConcurrentSteal::Abort,
            Some(v) => v.parse().map_err(ApiError::bad_request)?,
        };
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let user = match (header("x-client-name"), header("x-client-hostname")) {
            (Some(name), Some(host)) => format!("{}/{name}@{host}", request.identity.user),
            (Some(name), None) => format!("{}/{name}", request.identity.user),
            _ => request.identity.user.clone(),
        };
        let targetless = matches!(request.target, TargetRef::Targetless);
        let target = match targets::resolve(
            &self.inventory.namespace(&request.namespace),
            &request.target,
            &targets::has_agent,
        ) {
            Ok(entry) => entry.target.to_string(),
            Err(_) => request.target.to_string(),
        };
        Ok(SessionSpec {
            id: request.session_id,
            owner: request.identity.user.clone(),
            user,
            user_id: Some(request.client.user_id.clone()),
            target,
            namespace: Some(request.namespace.clone()),
            key: request.params.get("key").cloned(),
            header_filter: request.params.get("header_filter").cloned(),
            on_concurrent_steal,
            // A targetless session covers no pod.
            pods: if targetless {
                Arc::new(|_: &AgentInfo| false)
            } else {
                self.selector(&request.namespace, &request.target)
            },
            queues: None,
        })
    }

    /// 503 naming the workload's agent-carrying pods that have no connected agent.
    fn no_agent(&self, request: &ConnectRequest) -> ApiError {
        let ready = targets::resolve(
            &self.inventory.namespace(&request.namespace),
            &request.target,
            &targets::has_agent,
        )
        .map(|e| e.ready_pods)
        .unwrap_or_default();
        let message = if ready.is_empty() {
            format!(
                "{} in namespace {:?} has no Running pod with an injected mirrord-agent (not injected, or not ready)",
                request.target, request.namespace
            )
        } else {
            format!(
                "no agent of {} in namespace {:?} is connected to the coordinator: pods {} run an injected agent that has not connected (yet)",
                request.target,
                request.namespace,
                ready.join(", ")
            )
        };
        ApiError::unavailable(message)
    }
}

impl Connector for Arc<SessionService> {
    fn connect(&self, request: ConnectRequest) -> BoxFuture<'static, Response> {
        let service = self.clone();
        Box::pin(async move {
            let targetless = matches!(request.target, TargetRef::Targetless);
            let spec = match service.spec(&request) {
                Ok(spec) => spec,
                Err(e) => return e.into_response(),
            };
            if let Some(gate) = service.table.policy_gate() {
                let inventory = service.inventory.namespace(&request.namespace);
                let target = crate::coordinator::policy::gate::target_info(
                    &request.namespace,
                    &request.target,
                    &inventory,
                );
                let profile = request.params.get("profile").map(String::as_str);
                if let Err(refusal) = gate.connect(spec.id, target, profile) {
                    return ApiError::forbidden(refusal.to_string()).into_response();
                }
                let resolved = targets::resolve(&inventory, &request.target, &targets::has_agent);
                if let Ok(entry) = resolved {
                    let container = match &entry.target {
                        TargetRef::Workload { container, .. } => container.as_deref(),
                        _ => None,
                    };
                    let secret_env = crate::coordinator::policy::gate::secret_env(
                        &inventory,
                        &entry.ready_pods,
                        container,
                    );
                    gate.review_secret_env(
                        spec.id,
                        &request.identity,
                        &request.namespace,
                        secret_env,
                    )
                    .await;
                }
            }
            if !targetless && !service.registry.agents().iter().any(|a| (spec.pods)(a)) {
                return service.no_agent(&request).into_response();
            }
            if let Some(existing) = service.table.get(spec.id)
                && existing.spec.owner != spec.owner
            {
                return ApiError::forbidden(JoinError::NotOwner(spec.id).to_string())
                    .into_response();
            }
            if service.table.is_ended(spec.id) {
                return ApiError::new(
                    StatusCode::GONE,
                    "ReconnectNotPossible",
                    JoinError::Ended(spec.id).to_string(),
                )
                .into_response();
            }
            let mut spec = spec;
            // Only the connect that creates the session starts its queue splits (409 naming the
            // other session on an overlapping filter); later connections join it.
            if let Some(splitters) = &service.queues
                && !targetless
                && service.table.get(spec.id).is_none()
            {
                let workload = match &request.target {
                    TargetRef::Workload {
                        kind: TargetKind::Deployment | TargetKind::Rollout,
                        name,
                        ..
                    } => Some(name.as_str()),
                    _ => None,
                };
                match SessionQueues::for_connect(
                    splitters,
                    &request.params,
                    &request.namespace,
                    workload,
                    spec.id,
                )
                .await
                {
                    Ok(queues) => spec.queues = queues,
                    Err(e) => {
                        let code = StatusCode::from_u16(e.status_code())
                            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                        return ApiError::new(code, e.reason(), e.to_string()).into_response();
                    }
                }
            }
            let (mut parts, _body) = request.request.into_parts();
            let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
                Ok(ws) => ws,
                Err(rejection) => {
                    return ApiError::bad_request(format!("not a WebSocket upgrade: {rejection}"))
                        .into_response();
                }
            };
            let (registry, table) = (service.registry.clone(), service.table.clone());
            ws.protocols([SUBPROTOCOL])
                .max_message_size(MAX_MESSAGE_SIZE)
                .on_upgrade(move |socket| async move {
                    // A join refused between the checks above and now ends the socket at once.
                    let frames = Frames::websocket(socket);
                    if targetless {
                        serve_targetless(table, spec, frames).await;
                    } else {
                        let _ = attach(registry, table, spec, frames).await;
                    }
                })
        })
    }

    fn features(&self) -> Vec<&'static str> {
        let mut features = vec!["LayerReconnect"];
        if self.queues.is_some() {
            features.extend([
                "RmqQueueSplitting",
                "SqsQueueSplitting",
                "SqsQueueSplittingDirect",
                "SqsQueueSplittingWithJqFilter",
            ]);
        }
        features
    }
}

/// A targetless session is served by the coordinator itself (`targetless.rs`), but lives in the
/// session table like any other: listed, killable, its id rejoinable within the reconnect window.
async fn serve_targetless(table: Arc<SessionTable>, spec: SessionSpec, frames: Frames) {
    let Ok((session, connection)) = table.join(spec) else {
        return;
    };
    let mut commands = session.commands();
    let ended = session.is_ended();
    let killed = async move {
        if ended {
            return RelayEnd::Killed("the session has ended".into()).to_string();
        }
        loop {
            match commands.recv().await {
                Ok(Command::Kill(reason)) => return RelayEnd::Killed(reason).to_string(),
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    };
    let end = super::targetless::serve(frames, killed).await;
    tracing::info!(session = %format!("{:X}", session.spec.id), user = %session.spec.user, ?end, "targetless connection ended");
    table.leave(&session, connection);
}

impl SessionDirectory for Arc<SessionService> {
    fn list(&self) -> Vec<SessionSummary> {
        let now = SystemTime::now();
        self.table
            .list()
            .into_iter()
            .map(|row| SessionSummary {
                id: row.id,
                owner: row.owner,
                user: row.user,
                user_id: row.user_id,
                target: row.target,
                namespace: row.namespace,
                duration_secs: now
                    .duration_since(row.started)
                    .map(|d| d.as_secs())
                    .unwrap_or_default(),
                key: row.key,
                locked_ports: row
                    .ports
                    .into_iter()
                    .map(|p| LockedPort {
                        port: p.port,
                        kind: p.kind,
                        filter: p.filter,
                    })
                    .collect(),
                rmq: self
                    .table
                    .get(row.id)
                    .and_then(|s| s.spec.queues.clone())
                    .and_then(|q| serde_json::to_value(q.object()?).ok())
                    .into_iter()
                    .collect(),
                sqs: self
                    .table
                    .get(row.id)
                    .and_then(|s| s.spec.queues.clone())
                    .and_then(|q| serde_json::to_value(q.sqs_object()?).ok())
                    .into_iter()
                    .collect(),
                header_filter: row.header_filter,
                policies: self
                    .table
                    .policy_gate()
                    .map(|gate| gate.applied(row.id))
                    .unwrap_or_default(),
            })
            .collect()
    }

    fn kill<'a>(&'a self, id: u64, reason: &'a str) -> BoxFuture<'a, KillOutcome> {
        Box::pin(async move {
            if self.table.kill(id, reason) {
                KillOutcome::Killed
            } else {
                KillOutcome::NotFound
            }
        })
    }

    fn kill_all<'a>(&'a self, reason: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move { self.table.kill_all(reason) })
    }
}
