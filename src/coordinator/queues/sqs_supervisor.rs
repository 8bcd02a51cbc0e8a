//! The SQS [`Broker`] for the [`super::supervisor::Supervisor`]: the registries' SQS queues,
//! split with the coordinator's own AWS client (credentials from the default chain: env, web
//! identity/IRSA, ECS, IMDS; `AWS_ENDPOINT_URL_SQS` / `AWS_ENDPOINT_URL` point it at an
//! SQS-compatible server). A preflight (`GetQueueUrl`) turns a missing queue or failing
//! credentials into a registry problem instead of a splitter retrying forever.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::PodSpec;

use super::crd::{MirrordWorkloadQueueRegistry, QueueRegistryStatus};
use super::metrics::SplitterMetrics;
use super::plan::{self, Planned, SplitKey, SplitPlan};
use super::sqs::{SqsSplitConfig, SqsSplitter};
use super::supervisor::{Broker, ProblemReason, SplitterIndex, View};

const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(10);

/// SQS through one SDK client.
pub struct Sqs {
    client: aws_sdk_sqs::Client,
    /// Applied to every splitter's config (tests shorten the waits).
    configure: fn(&mut SqsSplitConfig),
}

impl Sqs {
    pub fn new(client: aws_sdk_sqs::Client) -> Self {
        Sqs {
            client,
            configure: |_| {},
        }
    }

    pub fn with_config(client: aws_sdk_sqs::Client, configure: fn(&mut SqsSplitConfig)) -> Self {
        Sqs { client, configure }
    }

    async fn start_sqs(
        &self,
        split: &SplitPlan,
        metrics: Arc<dyn SplitterMetrics>,
    ) -> Result<SqsSplitter, (ProblemReason, String)> {
        let queue = super::sqs::queue_name(&split.original);
        let answer = tokio::time::timeout(
            PREFLIGHT_TIMEOUT,
            self.client.get_queue_url().queue_name(queue).send(),
        )
        .await;
        match answer {
            Ok(Ok(_)) => {}
            Ok(Err(e))
                if e.as_service_error()
                    .is_some_and(|e| e.is_queue_does_not_exist()) =>
            {
                return Err((
                    ProblemReason::QueueMissing,
                    format!("SQS queue {queue:?} does not exist"),
                ));
            }
            Ok(Err(e)) => {
                return Err((
                    ProblemReason::BrokerConnectionFailed,
                    format!(
                        "SQS GetQueueUrl {queue:?} failed (endpoint or credentials): {}",
                        aws_sdk_sqs::error::DisplayErrorContext(e)
                    ),
                ));
            }
            Err(_) => {
                return Err((
                    ProblemReason::BrokerConnectionFailed,
                    format!("SQS GetQueueUrl {queue:?} timed out after {PREFLIGHT_TIMEOUT:?}"),
                ));
            }
        }
        let mut config = SqsSplitConfig::new(split.original.clone());
        config.tags = split.sqs.tags.clone();
        config.envelope = split.sqs.envelope;
        (self.configure)(&mut config);
        SqsSplitter::spawn(self.client.clone(), config, [], metrics)
            .map_err(|e| (ProblemReason::ConsumerNotFound, e.to_string()))
    }
}

impl Broker for Sqs {
    type Splitter = SqsSplitter;

    fn plans(registry: &MirrordWorkloadQueueRegistry, template: Option<&PodSpec>) -> Planned {
        plan::sqs_plans(registry, template)
    }

    fn status(splits: &[SplitPlan]) -> QueueRegistryStatus {
        plan::sqs_status(splits)
    }

    fn start<'a>(
        &'a self,
        split: &'a SplitPlan,
        metrics: Arc<dyn SplitterMetrics>,
    ) -> BoxFuture<'a, Result<SqsSplitter, (ProblemReason, String)>> {
        Box::pin(self.start_sqs(split, metrics))
    }

    /// One AWS account and region for the coordinator: a queue is the same queue whichever
    /// namespace's registry names it (a second registry gets `QueueShared`).
    fn key(split: &SplitPlan) -> SplitKey {
        SplitKey {
            namespace: String::new(),
            secret: String::new(),
            original: super::sqs::queue_name(&split.original).to_owned(),
        }
    }

    fn stop(splitter: SqsSplitter) -> BoxFuture<'static, ()> {
        Box::pin(splitter.stop())
    }

    fn view(index: &SplitterIndex) -> &View<SqsSplitter> {
        index.sqs()
    }
}
