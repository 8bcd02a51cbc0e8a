//! A developer's RabbitMQ split for one mirrord session (operator-api.md §7.2, §7.4): the connect
//! parameter `rmq_splits` (`{queue_id: {header: regex}}`) becomes one temporary queue per split
//! original queue, its filter registered on that queue's splitter, and the env the local process
//! must see (the queue's env var naming the temporary queue) for `GetEnvVarsResponse`. Ending it
//! removes the filters first, returns leftovers to the output queue, deletes the temporary queues.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::crd::{
    MirrordRMQSession, QueueConsumer, QueueNames, QueueSessionStatus, RmqSessionSpec,
    SessionDetails, WorkloadType,
};
use super::filter::RegisterError;
use super::plan::RmqPlan;
use super::rabbitmq::{RmqSplitter, SplitterError};
use super::supervisor::SplitterIndex;

/// Why a queue session cannot start (answered at connect as a `metav1.Status`).
#[derive(Debug, thiserror::Error)]
pub enum QueueSessionError {
    #[error("rmq_splits is not a JSON object of {{queue_id: {{header: regex}}}}: {0}")]
    BadParameter(String),
    #[error(
        "queue id {queue_id:?} of workload {consumer:?} in namespace {namespace:?} has no running splitter (no MirrordWorkloadQueueRegistry names it, or its registry reports a problem)"
    )]
    NotSplit {
        namespace: String,
        consumer: String,
        queue_id: String,
    },
    #[error(
        "queue {queue:?}: your filter can match the same message as session {other}'s (e.g. {witness})"
    )]
    Overlap {
        queue: String,
        other: String,
        witness: String,
    },
    #[error("queue {queue:?}: {error}")]
    Splitter { queue: String, error: SplitterError },
}

impl QueueSessionError {
    /// HTTP status for the connect answer.
    pub fn status_code(&self) -> u16 {
        match self {
            QueueSessionError::BadParameter(_) => 400,
            QueueSessionError::NotSplit { .. } => 404,
            QueueSessionError::Overlap { .. } => 409,
            QueueSessionError::Splitter { .. } => 503,
        }
    }

    /// Metric label / `metav1.Status` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            QueueSessionError::BadParameter(_) => "BadRequest",
            QueueSessionError::NotSplit { .. } => "NotFound",
            QueueSessionError::Overlap { .. } => "Conflict",
            QueueSessionError::Splitter { .. } => "ServiceUnavailable",
        }
    }
}

/// Parses the `rmq_splits` connect parameter.
pub fn parse_rmq_splits(
    text: &str,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, QueueSessionError> {
    serde_json::from_str(text).map_err(|e| QueueSessionError::BadParameter(e.to_string()))
}

/// One split queue of a running session.
struct Split {
    plan: RmqPlan,
    splitter: Arc<RmqSplitter>,
    queue: String,
}

/// A session's RabbitMQ splits; [`RmqSession::end`] undoes them.
pub struct RmqSession {
    key: String,
    splits: Vec<Split>,
}

impl std::fmt::Debug for RmqSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RmqSession")
            .field("key", &self.key)
            .field(
                "queues",
                &self.splits.iter().map(|s| &s.queue).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl RmqSession {
    /// Registers `splits` (queue id -> filter) for session `session_id` on the splitters of
    /// `namespace`'s workload `consumer`. All or nothing: a refusal removes what was added.
    pub async fn start(
        splitters: &SplitterIndex,
        namespace: &str,
        consumer: &str,
        session_id: u64,
        splits: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<RmqSession, QueueSessionError> {
        let key = format!("{session_id:x}");
        let mut targets = Vec::new();
        for (queue_id, filter) in splits {
            let found = splitters.splitters_for(namespace, consumer, queue_id);
            if found.is_empty() {
                return Err(QueueSessionError::NotSplit {
                    namespace: namespace.into(),
                    consumer: consumer.into(),
                    queue_id: queue_id.clone(),
                });
            }
            targets.extend(found.into_iter().map(|f| (f, filter)));
        }
        let mut session = RmqSession {
            key,
            splits: Vec::new(),
        };
        for ((plan, splitter), filter) in targets {
            match splitter.add_session(&session.key, filter).await {
                Ok(queue) => session.splits.push(Split {
                    plan,
                    splitter,
                    queue,
                }),
                Err(error) => {
                    let error = match error {
                        SplitterError::Register(RegisterError::Overlap { other, witness }) => {
                            QueueSessionError::Overlap {
                                queue: plan.original.clone(),
                                other,
                                witness,
                            }
                        }
                        error => QueueSessionError::Splitter {
                            queue: plan.original.clone(),
                            error,
                        },
                    };
                    session.end().await;
                    return Err(error);
                }
            }
        }
        tracing::info!(session = %session.key, namespace, consumer, queues = session.splits.len(), "queue session started");
        Ok(session)
    }

    /// The session's temporary queues by original queue.
    pub fn queues(&self) -> BTreeMap<String, String> {
        self.splits
            .iter()
            .map(|s| (s.plan.original.clone(), s.queue.clone()))
            .collect()
    }

    /// Points the queue env vars of the remote environment at the session's temporary queues
    /// (the hook for `GetEnvVarsResponse`): a variable the pod has (it names the output queue
    /// there) or, with a `fallbackName`, one it lacks.
    pub fn apply_env(&self, env: &mut HashMap<String, String>) {
        for split in &self.splits {
            env.insert(split.plan.env.clone(), split.queue.clone());
        }
    }

    /// This session as a `MirrordRMQSession` in state `Ready`: per queue id the original queue and
    /// the session's temporary queue (`outputName`), per env var the same.
    fn object(
        &self,
        namespace: &str,
        filters: BTreeMap<String, BTreeMap<String, String>>,
    ) -> MirrordRMQSession {
        let mut details = SessionDetails::default();
        let mut consumer = None;
        for split in &self.splits {
            let names = QueueNames {
                original_name: split.plan.original.clone(),
                output_name: split.queue.clone(),
            };
            details
                .queue_names
                .entry(split.plan.queue_id.clone())
                .or_insert_with(|| names.clone());
            details.env_updates.insert(split.plan.env.clone(), names);
            consumer.get_or_insert_with(|| split.plan.consumer.clone());
        }
        let mut object = MirrordRMQSession::new(
            &format!("{}-rmq", self.key),
            RmqSessionSpec {
                namespace: namespace.to_owned(),
                queue_filters: filters,
                queue_consumer: QueueConsumer {
                    name: consumer.unwrap_or_default(),
                    container: None,
                    workload_type: WorkloadType::Deployment,
                },
                session_id: self.key.clone(),
                output_queue_names: BTreeMap::new(),
            },
        );
        object.status = Some(QueueSessionStatus::Ready(details));
        object
    }

    /// Ends the session on every queue; failures are logged (the queue is then left in place).
    pub async fn end(self) {
        for split in self.splits {
            match split.splitter.remove_session(&self.key).await {
                Ok(ended) => {
                    tracing::info!(session = %self.key, queue = %split.queue, returned = ended.returned, "queue session ended")
                }
                Err(error) => {
                    tracing::warn!(session = %self.key, queue = %split.queue, %error, "queue session cleanup failed")
                }
            }
        }
    }
}

/// A mirrord session's queue splits as the session table holds them: the env for
/// `GetEnvVarsResponse`, ended once when the session ends (or when dropped, e.g. a connect whose
/// upgrade failed).
pub struct SessionQueues {
    env: BTreeMap<String, String>,
    /// The session as a `MirrordRMQSession` (embedded in the operator status, §7.5.3).
    object: MirrordRMQSession,
    session: std::sync::Mutex<Option<RmqSession>>,
}

impl std::fmt::Debug for SessionQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionQueues")
            .field("env", &self.env)
            .finish()
    }
}

impl SessionQueues {
    /// The queue splits a connect asks for (`rmq_splits`), started on the workload's splitters;
    /// `None` when it asks for none. `workload` is the target's Deployment or Rollout name.
    pub async fn for_connect(
        splitters: &SplitterIndex,
        params: &BTreeMap<String, String>,
        namespace: &str,
        workload: Option<&str>,
        session_id: u64,
    ) -> Result<Option<Arc<SessionQueues>>, QueueSessionError> {
        let Some(text) = params.get("rmq_splits") else {
            return Ok(None);
        };
        let splits = parse_rmq_splits(text)?;
        if splits.is_empty() {
            return Ok(None);
        }
        let Some(workload) = workload else {
            return Err(QueueSessionError::BadParameter(
                "rmq_splits needs a deployment or rollout target".into(),
            ));
        };
        let session =
            RmqSession::start(splitters, namespace, workload, session_id, &splits).await?;
        let mut env = HashMap::new();
        session.apply_env(&mut env);
        let object = session.object(namespace, splits);
        Ok(Some(Arc::new(SessionQueues {
            env: env.into_iter().collect(),
            object,
            session: std::sync::Mutex::new(Some(session)),
        })))
    }

    /// The `MirrordRMQSession` object for the operator status.
    pub fn object(&self) -> &MirrordRMQSession {
        &self.object
    }

    /// The relay's hook on `GetEnvVarsResponse`.
    pub fn apply_env(&self, env: &mut HashMap<String, String>) {
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// Ends the splits in the background (once; later calls do nothing).
    pub fn end(&self) {
        let taken = self.session.lock().ok().and_then(|mut s| s.take());
        if let Some(session) = taken {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(session.end());
                }
                Err(_) => tracing::warn!(
                    ?session,
                    "no runtime to end the queue session; its queues are left in place"
                ),
            }
        }
    }
}

impl Drop for SessionQueues {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmq_splits_parameter() {
        let parsed = parse_rmq_splits(r#"{"orders":{"tenant":"^a$"}}"#).unwrap();
        assert_eq!(parsed["orders"]["tenant"], "^a$");
        for bad in ["", "[]", r#"{"orders":"x"}"#, r#"{"orders":{"h":1}}"#] {
            let error = parse_rmq_splits(bad).unwrap_err();
            assert_eq!(error.status_code(), 400, "{bad}");
        }
    }
}
