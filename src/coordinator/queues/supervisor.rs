//! Runs one splitter per original queue the cluster's `MirrordWorkloadQueueRegistry` objects ask
//! for, and says what went wrong on the registry: the coordinator calls [`Supervisor::reconcile`]
//! with snapshots of its watch-fed stores (no API call per registry except reading a broker Secret
//! when a RabbitMQ splitter starts). The broker-specific parts (which queues, how to start and
//! stop a splitter) are a [`Broker`]: [`Rmq`] (lapin) and [`super::sqs_supervisor::Sqs`].
//!
//! Before a splitter starts, a preflight connects and checks the original queue exists, so that a
//! missing queue or failing credentials become one clear problem on the registry (retried on the
//! next round) instead of a splitter reconnecting forever.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::PodSpec;
use lapin::{Connection, ConnectionProperties, options::QueueDeclareOptions, types::FieldTable};

use super::crd::{MirrordWorkloadQueueRegistry, QueueRegistryStatus, WorkloadType};
use super::metrics::SplitterMetrics;
use super::plan::{self, Planned, RmqPlan, SplitKey, SplitPlan};
use super::rabbitmq::{RmqSplitConfig, RmqSplitter, SplitterError};
use super::sqs::SqsSplitter;

/// Reads the broker URI (key `uri`) of a registry's `clusterProperties` Secret.
pub trait BrokerSecrets: Send + Sync {
    fn uri<'a>(
        &'a self,
        namespace: &'a str,
        secret: &'a str,
    ) -> BoxFuture<'a, Result<String, String>>;
}

/// Why a registry queue is not being split (the Event reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProblemReason {
    /// The consumer workload, container, or queue name cannot be found.
    ConsumerNotFound,
    /// The `clusterProperties` Secret or its `uri` key is missing.
    CredentialsMissing,
    /// Connecting or logging in to the broker failed.
    BrokerConnectionFailed,
    /// The original queue does not exist on the broker.
    QueueMissing,
    /// A splitter for the same original queue is already run for another registry.
    Shared,
}

impl ProblemReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProblemReason::ConsumerNotFound => "ConsumerNotFound",
            ProblemReason::CredentialsMissing => "CredentialsMissing",
            ProblemReason::BrokerConnectionFailed => "BrokerConnectionFailed",
            ProblemReason::QueueMissing => "QueueMissing",
            ProblemReason::Shared => "QueueShared",
        }
    }
}

/// What one round found for one registry: its new status and its problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryReport {
    pub namespace: String,
    pub name: String,
    pub status: QueueRegistryStatus,
    pub problems: Vec<(ProblemReason, String)>,
    /// Splitters of this registry running after this round.
    pub running: Vec<String>,
}

/// What differs between brokers for the supervisor.
pub trait Broker: Send + Sync + 'static {
    type Splitter: Send + Sync + 'static;
    /// The splits of this broker a registry asks for.
    fn plans(registry: &MirrordWorkloadQueueRegistry, template: Option<&PodSpec>) -> Planned;
    /// The registry status part for them.
    fn status(splits: &[SplitPlan]) -> QueueRegistryStatus;
    /// Checks the queue and starts its splitter, or says why not.
    fn start<'a>(
        &'a self,
        split: &'a SplitPlan,
        metrics: Arc<dyn SplitterMetrics>,
    ) -> BoxFuture<'a, Result<Self::Splitter, (ProblemReason, String)>>;
    /// Which splits are one splitter (RMQ: namespace, Secret, queue).
    fn key(split: &SplitPlan) -> SplitKey {
        SplitKey::of(split)
    }
    /// Stops a splitter no registry asks for any more.
    fn stop(splitter: Self::Splitter) -> BoxFuture<'static, ()>;
    /// This broker's part of the index.
    fn view(index: &SplitterIndex) -> &View<Self::Splitter>;
}

struct Running<S> {
    plan: SplitPlan,
    splitter: Arc<S>,
}

/// The splitters of one broker and what started them.
pub struct Supervisor<B: Broker = Rmq> {
    broker: B,
    metrics: Arc<dyn SplitterMetrics>,
    running: BTreeMap<SplitKey, Running<B::Splitter>>,
    index: SplitterIndex,
}

/// Running splitters of one broker with the plan each runs.
pub type View<S> = std::sync::RwLock<Vec<(SplitPlan, Arc<S>)>>;

/// A read-only view of the running splitters for session connects, updated by the supervisors:
/// a connect never waits for a reconcile round (whose preflights may take seconds).
#[derive(Clone, Default)]
pub struct SplitterIndex(Arc<Views>);

#[derive(Default)]
struct Views {
    rmq: View<RmqSplitter>,
    sqs: View<SqsSplitter>,
    /// Where sessions' objects go (none in most tests).
    records: std::sync::OnceLock<super::records::Records>,
}

fn find<S>(
    view: &View<S>,
    namespace: &str,
    consumer: &str,
    queue_id: &str,
) -> Vec<(SplitPlan, Arc<S>)> {
    let running = view.read().unwrap_or_else(|e| e.into_inner());
    running
        .iter()
        .filter(|(plan, _)| {
            plan.namespace == namespace && plan.consumer == consumer && plan.queue_id == queue_id
        })
        .cloned()
        .collect()
}

impl SplitterIndex {
    /// The running RabbitMQ splitters of `namespace`'s workload `consumer` for `queue_id`
    /// (several when a `regexPattern` names several queues).
    pub fn splitters_for(
        &self,
        namespace: &str,
        consumer: &str,
        queue_id: &str,
    ) -> Vec<(RmqPlan, Arc<RmqSplitter>)> {
        find(&self.0.rmq, namespace, consumer, queue_id)
    }

    /// The same for SQS.
    pub fn sqs_splitters_for(
        &self,
        namespace: &str,
        consumer: &str,
        queue_id: &str,
    ) -> Vec<(SplitPlan, Arc<SqsSplitter>)> {
        find(&self.0.sqs, namespace, consumer, queue_id)
    }

    /// Stores the sessions' `MirrordRMQSession` / `MirrordSQSSession` objects in `records` (set
    /// once; later calls are ignored).
    pub fn keep_records(&self, records: super::records::Records) {
        let _ = self.0.records.set(records);
    }

    pub fn records(&self) -> Option<&super::records::Records> {
        self.0.records.get()
    }

    pub(super) fn rmq(&self) -> &View<RmqSplitter> {
        &self.0.rmq
    }

    pub(super) fn sqs(&self) -> &View<SqsSplitter> {
        &self.0.sqs
    }
}

/// The RabbitMQ broker: URIs from the registries' `clusterProperties` Secrets.
pub struct Rmq {
    secrets: Arc<dyn BrokerSecrets>,
}

impl Supervisor<Rmq> {
    pub fn new(secrets: Arc<dyn BrokerSecrets>, metrics: Arc<dyn SplitterMetrics>) -> Self {
        Supervisor::with_broker(Rmq { secrets }, metrics, SplitterIndex::default())
    }
}

impl<B: Broker> Supervisor<B> {
    /// A supervisor publishing into `index` (shared by the brokers' supervisors).
    pub fn with_broker(broker: B, metrics: Arc<dyn SplitterMetrics>, index: SplitterIndex) -> Self {
        Supervisor {
            broker,
            metrics,
            running: BTreeMap::new(),
            index,
        }
    }

    /// The view sessions read.
    pub fn index(&self) -> SplitterIndex {
        self.index.clone()
    }

    fn publish_index(&self) {
        let view = self
            .running
            .values()
            .map(|r| (r.plan.clone(), r.splitter.clone()))
            .collect();
        *B::view(&self.index)
            .write()
            .unwrap_or_else(|e| e.into_inner()) = view;
    }

    /// Starts the splitters `registries` ask for that are not running, stops those no longer asked
    /// for (after confirming what they have in flight), and reports per registry.
    /// `template(kind, namespace, name)` is the consumer workload's pod template.
    pub async fn reconcile(
        &mut self,
        registries: &[Arc<MirrordWorkloadQueueRegistry>],
        template: impl Fn(WorkloadType, &str, &str) -> Option<PodSpec>,
    ) -> Vec<RegistryReport> {
        let mut reports = Vec::new();
        let mut wanted: BTreeMap<SplitKey, SplitPlan> = BTreeMap::new();
        let mut owner: BTreeMap<SplitKey, usize> = BTreeMap::new();
        for registry in registries {
            let namespace = registry.metadata.namespace.clone().unwrap_or_default();
            let consumer = &registry.spec.consumer;
            let spec = template(consumer.workload_type, &namespace, &consumer.name);
            let planned = B::plans(registry, spec.as_ref());
            let mut problems: Vec<_> = planned
                .problems
                .into_iter()
                .map(|p| (ProblemReason::ConsumerNotFound, p))
                .collect();
            for split in &planned.splits {
                let key = B::key(split);
                match wanted.get(&key) {
                    Some(first) if first.registry != split.registry => problems.push((
                        ProblemReason::Shared,
                        format!(
                            "queue {:?} is already split for registry {:?}",
                            split.original, first.registry
                        ),
                    )),
                    Some(_) => {}
                    None => {
                        wanted.insert(key.clone(), split.clone());
                        owner.insert(key, reports.len());
                    }
                }
            }
            reports.push(RegistryReport {
                namespace,
                name: registry.metadata.name.clone().unwrap_or_default(),
                status: B::status(&planned.splits),
                problems,
                running: Vec::new(),
            });
        }

        let stale: Vec<SplitKey> = self
            .running
            .iter()
            .filter(|(key, r)| wanted.get(*key) != Some(&r.plan))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some(running) = self.running.remove(&key) {
                tracing::info!(queue = %key, "registry no longer asks for this split; stopping its splitter");
                self.publish_index();
                stop::<B>(running.splitter).await;
            }
        }
        for (key, split) in wanted {
            let report = &mut reports[owner[&key]];
            if !self.running.contains_key(&key) {
                match self.broker.start(&split, self.metrics.clone()).await {
                    Ok(splitter) => {
                        self.running.insert(
                            key.clone(),
                            Running {
                                plan: split.clone(),
                                splitter: Arc::new(splitter),
                            },
                        );
                        self.publish_index();
                    }
                    Err(problem) => {
                        report.problems.push(problem);
                        continue;
                    }
                }
            }
            report.running.push(split.original.clone());
        }
        reports
    }

    /// Stops every splitter (coordinator shutdown).
    pub async fn stop_all(&mut self) {
        let running = std::mem::take(&mut self.running);
        self.publish_index();
        for (_, running) in running {
            stop::<B>(running.splitter).await;
        }
    }
}

impl Broker for Rmq {
    type Splitter = RmqSplitter;

    fn plans(registry: &MirrordWorkloadQueueRegistry, template: Option<&PodSpec>) -> Planned {
        plan::rmq_plans(registry, template)
    }

    fn status(splits: &[SplitPlan]) -> QueueRegistryStatus {
        plan::rmq_status(splits)
    }

    fn start<'a>(
        &'a self,
        split: &'a SplitPlan,
        metrics: Arc<dyn SplitterMetrics>,
    ) -> BoxFuture<'a, Result<RmqSplitter, (ProblemReason, String)>> {
        Box::pin(self.start_rmq(split, metrics))
    }

    fn stop(splitter: RmqSplitter) -> BoxFuture<'static, ()> {
        Box::pin(splitter.stop())
    }

    fn view(index: &SplitterIndex) -> &View<RmqSplitter> {
        index.rmq()
    }
}

impl Rmq {
    async fn start_rmq(
        &self,
        split: &SplitPlan,
        metrics: Arc<dyn SplitterMetrics>,
    ) -> Result<RmqSplitter, (ProblemReason, String)> {
        let uri = self
            .secrets
            .uri(&split.namespace, &split.secret)
            .await
            .map_err(|e| (ProblemReason::CredentialsMissing, e))?;
        preflight(&uri, &split.original).await?;
        let mut config = RmqSplitConfig::new(uri, split.original.clone());
        if let Some(properties) = &split.queue_properties {
            config.queue_arguments = queue_arguments(properties).map_err(|e| {
                (
                    ProblemReason::ConsumerNotFound,
                    format!("queueProperties of {:?}: {e}", split.queue_id),
                )
            })?;
        }
        // Sessions are added through the splitter once running; none exist at start yet (the
        // session half registers them again after a coordinator restart).
        RmqSplitter::spawn(config, [], metrics)
            .map_err(|e: SplitterError| (ProblemReason::ConsumerNotFound, e.to_string()))
    }
}

async fn stop<B: Broker>(splitter: Arc<B::Splitter>) {
    match Arc::try_unwrap(splitter) {
        Ok(splitter) => B::stop(splitter).await,
        // A session still holds it: it stops when the last holder drops it.
        Err(_) => tracing::warn!("splitter still used by a session; it stops when that ends"),
    }
}

/// Connects and passively declares `queue`: a clear reason instead of a reconnect loop.
async fn preflight(uri: &str, queue: &str) -> Result<(), (ProblemReason, String)> {
    let connect = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await;
    let connection = match connect {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            return Err((
                ProblemReason::BrokerConnectionFailed,
                format!("cannot connect to the broker (address or credentials): {error}"),
            ));
        }
        Err(_) => {
            return Err((
                ProblemReason::BrokerConnectionFailed,
                "connecting to the broker timed out after 10s".into(),
            ));
        }
    };
    let result = async {
        let channel = connection.create_channel().await?;
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
    }
    .await;
    let _ = connection.close(200, "preflight done".into()).await;
    match result {
        Ok(_) => Ok(()),
        Err(error) => match error.kind() {
            lapin::ErrorKind::ProtocolError(e) if e.get_id() == 404 => Err((
                ProblemReason::QueueMissing,
                format!("queue {queue:?} does not exist on the broker"),
            )),
            _ => Err((
                ProblemReason::BrokerConnectionFailed,
                format!("checking queue {queue:?}: {error}"),
            )),
        },
    }
}

/// `queueProperties` (a JSON object) as AMQP queue arguments: strings, integers, booleans.
fn queue_arguments(json: &str) -> Result<FieldTable, String> {
    use lapin::types::AMQPValue;
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let serde_json::Value::Object(map) = value else {
        return Err("not an object".into());
    };
    let mut table = FieldTable::default();
    for (key, value) in map {
        let value = match value {
            serde_json::Value::String(s) => AMQPValue::LongString(s.into()),
            serde_json::Value::Bool(b) => AMQPValue::Boolean(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(n) => AMQPValue::LongLongInt(n),
                None => return Err(format!("{key}: only integers are supported")),
            },
            other => return Err(format!("{key}: unsupported value {other}")),
        };
        table.insert(key.as_str().into(), value);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_properties_become_arguments() {
        let table =
            queue_arguments(r#"{"x-queue-type":"classic","x-max-length":10,"lazy":true}"#).unwrap();
        let inner = table.inner();
        assert_eq!(inner.len(), 3);
        assert!(queue_arguments("[1]").is_err());
        assert!(queue_arguments(r#"{"a":1.5}"#).is_err());
    }
}
