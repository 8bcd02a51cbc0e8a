//! A developer's queue splits for one mirrord session (operator-api.md §7.2, §7.4): the connect
//! parameters `rmq_splits` (`{queue_id: {header: regex}}`), `sqs_splits` (`{queue_id: {attribute:
//! regex}}`) and `sqs_jq_filters` (`{queue_id: jq}`) become one temporary queue per split
//! original queue, its filter registered on that queue's splitter, and the env the local process
//! must see (the queue's env var naming the temporary queue) for `GetEnvVarsResponse`. Ending it
//! removes the filters first, returns leftovers to the output queue, deletes the temporary queues.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::SessionNotices;
use super::crd::{
    MirrordRMQSession, MirrordSQSSession, QueueConsumer, QueueNames, QueueSessionStatus,
    RmqSessionSpec, SessionDetails, SqsSessionSpec, WorkloadType,
};
use super::filter::RegisterError;
use super::plan::{self, RmqPlan};
use super::rabbitmq::{RmqSplitter, SplitterError};
use super::records::{Records, StoredSession};
use super::sqs::{SqsSplitter, SqsSplitterError};
use super::supervisor::SplitterIndex;

/// An SQS split request: attribute filter and jq filter of one queue id.
pub type SqsSplit = (BTreeMap<String, String>, Option<String>);

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
    #[error(
        "queue {queue:?}: cannot tell whether your filter and session {other}'s can match the same message: {reason}"
    )]
    Undecided {
        queue: String,
        other: String,
        reason: String,
    },
    #[error("queue {queue:?}: {error}")]
    Splitter { queue: String, error: SplitterError },
    #[error("SQS queue {queue:?}: {error}")]
    Sqs {
        queue: String,
        error: SqsSplitterError,
    },
}

impl QueueSessionError {
    /// HTTP status for the connect answer.
    pub fn status_code(&self) -> u16 {
        match self {
            QueueSessionError::BadParameter(_) => 400,
            QueueSessionError::NotSplit { .. } => 404,
            QueueSessionError::Overlap { .. } | QueueSessionError::Undecided { .. } => 409,
            QueueSessionError::Sqs {
                error: SqsSplitterError::Filter(_),
                ..
            } => 400,
            QueueSessionError::Splitter { .. } | QueueSessionError::Sqs { .. } => 503,
        }
    }

    /// Metric label / `metav1.Status` reason.
    pub fn reason(&self) -> &'static str {
        match self {
            QueueSessionError::BadParameter(_) => "BadRequest",
            QueueSessionError::NotSplit { .. } => "NotFound",
            QueueSessionError::Overlap { .. } | QueueSessionError::Undecided { .. } => "Conflict",
            QueueSessionError::Sqs {
                error: SqsSplitterError::Filter(_),
                ..
            } => "BadRequest",
            QueueSessionError::Splitter { .. } | QueueSessionError::Sqs { .. } => {
                "ServiceUnavailable"
            }
        }
    }
}

/// Parses the `rmq_splits` connect parameter.
pub fn parse_rmq_splits(
    text: &str,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, QueueSessionError> {
    serde_json::from_str(text).map_err(|e| QueueSessionError::BadParameter(e.to_string()))
}

/// Parses the `sqs_splits` and `sqs_jq_filters` connect parameters into one request per queue id
/// (a queue with only a jq filter appears only in `sqs_jq_filters`, §7.2).
pub fn parse_sqs_splits(
    splits: Option<&str>,
    jq_filters: Option<&str>,
) -> Result<BTreeMap<String, SqsSplit>, QueueSessionError> {
    let bad =
        |name: &str, e: serde_json::Error| QueueSessionError::BadParameter(format!("{name}: {e}"));
    let splits: BTreeMap<String, BTreeMap<String, String>> = splits
        .map(|t| serde_json::from_str(t).map_err(|e| bad("sqs_splits", e)))
        .transpose()?
        .unwrap_or_default();
    let jq: BTreeMap<String, String> = jq_filters
        .map(|t| serde_json::from_str(t).map_err(|e| bad("sqs_jq_filters", e)))
        .transpose()?
        .unwrap_or_default();
    Ok(sqs_splits(splits, jq))
}

/// One request per queue id from the attribute filters and the jq filters by queue id (a
/// `MirrordSQSSession`'s `queueFilters` and `queueJqFilters` have the same shapes).
pub fn sqs_splits(
    filters: BTreeMap<String, BTreeMap<String, String>>,
    jq: BTreeMap<String, String>,
) -> BTreeMap<String, SqsSplit> {
    let mut out: BTreeMap<String, SqsSplit> = filters
        .into_iter()
        .map(|(id, filter)| (id, (filter, None)))
        .collect();
    for (id, program) in jq {
        out.entry(id).or_default().1 = Some(program);
    }
    out
}

/// The splitter a split is registered on.
enum SplitterRef {
    Rmq(Arc<RmqSplitter>),
    Sqs(Arc<SqsSplitter>),
}

/// One split queue of a running session.
struct Split {
    plan: RmqPlan,
    splitter: SplitterRef,
    /// The temporary queue as the local process names it (name, or URL when the app uses URLs).
    queue: String,
}

/// A session's splits of one broker; [`QueueSession::end`] undoes them.
pub struct QueueSession {
    key: String,
    splits: Vec<Split>,
}

/// The name the RabbitMQ tests know.
pub type RmqSession = QueueSession;

impl std::fmt::Debug for QueueSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSession")
            .field("key", &self.key)
            .field(
                "queues",
                &self.splits.iter().map(|s| &s.queue).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl QueueSession {
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
        let mut session = QueueSession {
            key,
            splits: Vec::new(),
        };
        for ((plan, splitter), filter) in targets {
            match splitter.add_session(&session.key, filter).await {
                Ok(queue) => session.splits.push(Split {
                    plan,
                    splitter: SplitterRef::Rmq(splitter),
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

    /// Registers SQS `splits` (queue id -> attribute filter, jq filter) for session `session_id`
    /// on the SQS splitters of `namespace`'s workload `consumer`; all or nothing. `notices` hears
    /// of a jq filter that breaks.
    pub async fn start_sqs(
        splitters: &SplitterIndex,
        namespace: &str,
        consumer: &str,
        session_id: u64,
        splits: &BTreeMap<String, SqsSplit>,
        notices: Option<&SessionNotices>,
    ) -> Result<QueueSession, QueueSessionError> {
        let key = format!("{session_id:x}");
        let mut targets = Vec::new();
        for (queue_id, filter) in splits {
            let found = splitters.sqs_splitters_for(namespace, consumer, queue_id);
            if found.is_empty() {
                return Err(QueueSessionError::NotSplit {
                    namespace: namespace.into(),
                    consumer: consumer.into(),
                    queue_id: queue_id.clone(),
                });
            }
            targets.extend(found.into_iter().map(|f| (f, filter)));
        }
        let mut session = QueueSession {
            key,
            splits: Vec::new(),
        };
        for ((plan, splitter), (attributes, jq)) in targets {
            match splitter
                .add_session_with(&session.key, attributes, jq.as_deref(), notices.cloned())
                .await
            {
                Ok(queue) => {
                    // The app names its queue as it named the original: by URL or by name.
                    let is_url = plan.original.contains("://");
                    session.splits.push(Split {
                        plan,
                        splitter: SplitterRef::Sqs(splitter),
                        queue: if is_url { queue.url } else { queue.name },
                    })
                }
                Err(error) => {
                    let queue = plan.original.clone();
                    let error = match error {
                        SqsSplitterError::Register(RegisterError::Overlap { other, witness }) => {
                            QueueSessionError::Overlap {
                                queue,
                                other,
                                witness,
                            }
                        }
                        SqsSplitterError::Register(RegisterError::Undecided { other, reason }) => {
                            QueueSessionError::Undecided {
                                queue,
                                other,
                                reason,
                            }
                        }
                        error => QueueSessionError::Sqs { queue, error },
                    };
                    session.end().await;
                    return Err(error);
                }
            }
        }
        tracing::info!(session = %session.key, namespace, consumer, queues = session.splits.len(), "SQS queue session started");
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
    /// there) or, with a `fallbackName`, one it lacks. A `namesFromJsonMap` variable becomes
    /// the JSON object of the session's queues.
    pub fn apply_env(&self, env: &mut HashMap<String, String>) {
        env.extend(plan::env_values(
            self.splits.iter().map(|s| (&s.plan, s.queue.clone())),
        ));
    }

    /// Per queue id and per env var: the original queue and the session's temporary queue
    /// (`outputName`); and the consumer workload.
    fn details(&self) -> (SessionDetails, QueueConsumer) {
        let mut details = SessionDetails::default();
        let mut consumer = None;
        for split in &self.splits {
            details
                .queue_names
                .entry(split.plan.queue_id.clone())
                .or_insert_with(|| QueueNames {
                    original_name: split.plan.original.clone(),
                    output_name: split.queue.clone(),
                });
            consumer.get_or_insert_with(|| split.plan.consumer.clone());
        }
        details.env_updates = plan::env_updates(
            self.splits
                .iter()
                .map(|s| (&s.plan, s.plan.original.clone(), s.queue.clone())),
        );
        let consumer = QueueConsumer {
            name: consumer.unwrap_or_default(),
            container: None,
            workload_type: WorkloadType::Deployment,
        };
        (details, consumer)
    }

    /// This session as a `MirrordRMQSession` in state `Ready`.
    fn object(
        &self,
        namespace: &str,
        filters: BTreeMap<String, BTreeMap<String, String>>,
    ) -> MirrordRMQSession {
        let (details, queue_consumer) = self.details();
        let mut object = MirrordRMQSession::new(
            &format!("{}-rmq", self.key),
            RmqSessionSpec {
                namespace: namespace.to_owned(),
                queue_filters: filters,
                queue_consumer,
                session_id: self.key.clone(),
                output_queue_names: BTreeMap::new(),
            },
        );
        object.status = Some(QueueSessionStatus::Ready(details));
        object
    }

    /// This session as a `MirrordSQSSession` in state `Ready` (§7.5.2).
    fn sqs_object(
        &self,
        namespace: &str,
        splits: &BTreeMap<String, SqsSplit>,
    ) -> MirrordSQSSession {
        let (details, queue_consumer) = self.details();
        let mut object = MirrordSQSSession::new(
            &format!("{}-sqs", self.key),
            SqsSessionSpec {
                queue_filters: splits
                    .iter()
                    .map(|(id, (filter, _))| (id.clone(), filter.clone()))
                    .collect(),
                queue_jq_filters: splits
                    .iter()
                    .filter_map(|(id, (_, jq))| Some((id.clone(), jq.clone()?)))
                    .collect(),
                queue_consumer,
                session_id: self.key.clone(),
                output_queue_names: BTreeMap::new(),
            },
        );
        object.metadata.namespace = Some(namespace.to_owned());
        object.status = Some(QueueSessionStatus::Ready(details));
        object
    }

    /// Ends the session on every queue; failures are logged (the queue is then left in place).
    pub async fn end(self) {
        for split in self.splits {
            let ended = match &split.splitter {
                SplitterRef::Rmq(s) => s
                    .remove_session(&self.key)
                    .await
                    .map(|e| e.returned)
                    .map_err(|e| e.to_string()),
                SplitterRef::Sqs(s) => s
                    .remove_session(&self.key)
                    .await
                    .map(|e| e.returned)
                    .map_err(|e| e.to_string()),
            };
            match ended {
                Ok(returned) => {
                    tracing::info!(session = %self.key, queue = %split.queue, returned, "queue session ended")
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
    /// The session id as lowercase hex.
    key: String,
    env: BTreeMap<String, String>,
    /// Where the objects are stored, when the coordinator stores them.
    records: Option<Records>,
    /// The session as a `MirrordRMQSession` (embedded in the operator status, §7.5.3).
    object: Option<MirrordRMQSession>,
    /// The session as a `MirrordSQSSession` (§7.5.2).
    sqs_object: Option<MirrordSQSSession>,
    /// Warnings from the splitters for the session's relays.
    notices: SessionNotices,
    sessions: std::sync::Mutex<Vec<QueueSession>>,
}

impl std::fmt::Debug for SessionQueues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionQueues")
            .field("env", &self.env)
            .finish()
    }
}

impl SessionQueues {
    /// The queue splits a connect asks for (`rmq_splits`, `sqs_splits`, `sqs_jq_filters`), started
    /// on the workload's splitters; `None` when it asks for none. `workload` is the target's
    /// Deployment or Rollout name. All or nothing across brokers too.
    pub async fn for_connect(
        splitters: &SplitterIndex,
        params: &BTreeMap<String, String>,
        namespace: &str,
        workload: Option<&str>,
        session_id: u64,
    ) -> Result<Option<Arc<SessionQueues>>, QueueSessionError> {
        let splits = match params.get("rmq_splits") {
            Some(text) => parse_rmq_splits(text)?,
            None => BTreeMap::new(),
        };
        let sqs_splits = parse_sqs_splits(
            params.get("sqs_splits").map(String::as_str),
            params.get("sqs_jq_filters").map(String::as_str),
        )?;
        if splits.is_empty() && sqs_splits.is_empty() {
            return Ok(None);
        }
        let Some(workload) = workload else {
            return Err(QueueSessionError::BadParameter(
                "queue splits need a deployment or rollout target".into(),
            ));
        };
        let mut env = HashMap::new();
        let mut sessions = Vec::new();
        let mut object = None;
        let notices = SessionNotices::default();
        if !splits.is_empty() {
            let session =
                QueueSession::start(splitters, namespace, workload, session_id, &splits).await?;
            session.apply_env(&mut env);
            object = Some(session.object(namespace, splits));
            sessions.push(session);
        }
        let mut sqs_object = None;
        if !sqs_splits.is_empty() {
            match QueueSession::start_sqs(
                splitters,
                namespace,
                workload,
                session_id,
                &sqs_splits,
                Some(&notices),
            )
            .await
            {
                Ok(session) => {
                    session.apply_env(&mut env);
                    sqs_object = Some(session.sqs_object(namespace, &sqs_splits));
                    sessions.push(session);
                }
                Err(error) => {
                    for session in sessions {
                        session.end().await;
                    }
                    return Err(error);
                }
            }
        }
        let queues = SessionQueues {
            key: format!("{session_id:x}"),
            env: env.into_iter().collect(),
            records: splitters.records().cloned(),
            object,
            sqs_object,
            notices,
            sessions: std::sync::Mutex::new(sessions),
        };
        if let Some(records) = &queues.records {
            records.started(&queues.key, queues.stored()).await;
        }
        Ok(Some(Arc::new(queues)))
    }

    /// The objects to store for this session.
    fn stored(&self) -> Vec<StoredSession> {
        let rmq = self.object.clone().map(StoredSession::Rmq);
        let sqs = self.sqs_object.clone().map(StoredSession::Sqs);
        rmq.into_iter().chain(sqs).collect()
    }

    /// The `MirrordRMQSession` object for the operator status, when the session splits RMQ queues.
    pub fn object(&self) -> Option<&MirrordRMQSession> {
        self.object.as_ref()
    }

    /// The `MirrordSQSSession` object, when the session splits SQS queues.
    pub fn sqs_object(&self) -> Option<&MirrordSQSSession> {
        self.sqs_object.as_ref()
    }

    /// Warnings for the developer so far and to come (each relay shows them to its CLI).
    pub fn notices(&self) -> (Vec<String>, tokio::sync::broadcast::Receiver<String>) {
        self.notices.subscribe()
    }

    /// The relay's hook on `GetEnvVarsResponse`.
    pub fn apply_env(&self, env: &mut HashMap<String, String>) {
        env.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// Ends the splits in the background (once; later calls do nothing), then removes the
    /// session's stored objects. Without a runtime the queues and objects are left in place (the
    /// next coordinator ends them as orphans).
    pub fn end(&self) {
        let taken = self
            .sessions
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        if taken.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(session = %self.key, "no runtime to end the queue session; its queues are left in place");
            return;
        };
        let (key, records, stored) = (self.key.clone(), self.records.clone(), self.stored());
        runtime.spawn(async move {
            for session in taken {
                session.end().await;
            }
            if let Some(records) = records {
                records.ended(&key, stored).await;
            }
        });
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

    #[test]
    fn sqs_splits_and_jq_filters_parameters() {
        let parsed = parse_sqs_splits(
            Some(r#"{"mail":{"tenant":"^a$"},"jobs":{"k":"v"}}"#),
            Some(r#"{"mail":".urgent","only_jq":".x > 1"}"#),
        )
        .unwrap();
        assert_eq!(parsed["mail"].0["tenant"], "^a$");
        assert_eq!(parsed["mail"].1.as_deref(), Some(".urgent"));
        assert_eq!(parsed["jobs"].1, None);
        assert!(parsed["only_jq"].0.is_empty());
        assert_eq!(parsed["only_jq"].1.as_deref(), Some(".x > 1"));
        assert!(parse_sqs_splits(None, None).unwrap().is_empty());
        for (splits, jq) in [(Some("[]"), None), (None, Some(r#"{"a":1}"#))] {
            assert_eq!(parse_sqs_splits(splits, jq).unwrap_err().status_code(), 400);
        }
    }
}
