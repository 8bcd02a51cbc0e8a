//! The coordinator's queue-splitting loop: registries from a watch, Deployment templates from the
//! coordinator's caches, broker Secrets read when a RabbitMQ splitter starts, the coordinator's
//! own AWS client for SQS; registry status patched when it changes and a Warning Event per new
//! problem; sessions stored as objects, and those an earlier coordinator left ended.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, future::BoxFuture};
use k8s_openapi::api::core::v1::{ObjectReference, PodSpec, Secret};
use kube::{
    Api, Client, Resource,
    api::{Patch, PatchParams},
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        reflector::Store,
    },
};

use super::crd::{MirrordWorkloadQueueRegistry, WorkloadType};
use super::metrics::SplitterMetrics;
use super::records::{KubeSessionRecords, Records, end_orphans};
use super::sqs_supervisor::Sqs;
use super::supervisor::{BrokerSecrets, RegistryReport, SplitterIndex, Supervisor};
use crate::server::{shutdown::Shutdown, watch::watch_all};

/// How often the registries are compared with the running splitters (and failed ones retried).
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);

/// Once no stored orphan is left, the stored sessions are listed only every this many rounds (a
/// session whose object could not be removed becomes an orphan of this process).
const ORPHAN_CHECK_ROUNDS: u32 = 12;

/// Reads `uri` from a Secret in the registry's namespace.
pub struct KubeSecrets(pub Client);

impl BrokerSecrets for KubeSecrets {
    fn uri<'a>(
        &'a self,
        namespace: &'a str,
        secret: &'a str,
    ) -> BoxFuture<'a, Result<String, String>> {
        async move {
            let found = Api::<Secret>::namespaced(self.0.clone(), namespace)
                .get_opt(secret)
                .await
                .map_err(|e| format!("cannot read Secret {namespace}/{secret}: {e}"))?;
            let secret_obj = found.ok_or_else(|| {
                format!("Secret {namespace}/{secret} (clusterProperties) does not exist")
            })?;
            let bytes = secret_obj
                .data
                .and_then(|mut d| d.remove("uri"))
                .ok_or_else(|| format!("Secret {namespace}/{secret} has no key \"uri\""))?;
            String::from_utf8(bytes.0)
                .map_err(|_| format!("Secret {namespace}/{secret}: \"uri\" is not UTF-8"))
        }
        .boxed()
    }
}

/// Starts the loop; the returned index is what session connects read.
pub fn start(
    client: Client,
    templates: impl Fn(WorkloadType, &str, &str) -> Option<PodSpec> + Send + Sync + 'static,
    metrics: Arc<dyn SplitterMetrics>,
    mut shutdown: Shutdown,
) -> SplitterIndex {
    let registries: Store<MirrordWorkloadQueueRegistry> = watch_all(
        client.clone(),
        "MirrordWorkloadQueueRegistry",
        shutdown.clone(),
    );
    let mut supervisor = Supervisor::new(Arc::new(KubeSecrets(client.clone())), metrics.clone());
    let index = supervisor.index();
    let records = Records::new(Arc::new(KubeSessionRecords(client.clone())));
    index.keep_records(records.clone());
    let sqs_index = index.clone();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "mirrord-operator-coordinator".into(),
            instance: std::env::var("HOSTNAME").ok(),
        },
    );
    tokio::spawn(async move {
        // The AWS client (default chain; no request until a registry names an SQS queue).
        let sqs_client = super::sqs::client_from_env(None).await;
        let mut sqs_supervisor =
            Supervisor::with_broker(Sqs::new(sqs_client), metrics, sqs_index.clone());
        let mut rounds_to_orphan_check = 0;
        // Problems already announced (registry, reason, message): one Event each, again only
        // after they cleared.
        let mut announced = BTreeSet::new();
        let _ = registries.wait_until_ready().await;
        loop {
            let snapshot = registries.state();
            let reports = supervisor.reconcile(&snapshot, &templates).await;
            let sqs_reports = sqs_supervisor.reconcile(&snapshot, &templates).await;
            let reports: Vec<_> = reports.into_iter().zip(sqs_reports).map(merge).collect();
            let mut current = BTreeSet::new();
            for (registry, report) in snapshot.iter().zip(&reports) {
                publish(
                    &client,
                    &recorder,
                    registry,
                    report,
                    &announced,
                    &mut current,
                )
                .await;
            }
            announced = current;
            // After the supervisors: an orphan needs its splitter running.
            if rounds_to_orphan_check == 0 {
                let orphans = end_orphans(&sqs_index, &records).await;
                rounds_to_orphan_check = if orphans.waiting.is_empty() {
                    ORPHAN_CHECK_ROUNDS
                } else {
                    1
                };
            }
            rounds_to_orphan_check -= 1;
            if !shutdown.sleep(RECONCILE_INTERVAL).await {
                break;
            }
        }
        supervisor.stop_all().await;
        sqs_supervisor.stop_all().await;
    });
    index
}

/// One registry's report from both brokers' supervisors (each fills its own status part).
fn merge((mut rmq, sqs): (RegistryReport, RegistryReport)) -> RegistryReport {
    rmq.status.sqs_details = sqs.status.sqs_details;
    for problem in sqs.problems {
        if !rmq.problems.contains(&problem) {
            rmq.problems.push(problem);
        }
    }
    rmq.running.extend(sqs.running);
    rmq
}

async fn publish(
    client: &Client,
    recorder: &Recorder,
    registry: &MirrordWorkloadQueueRegistry,
    report: &RegistryReport,
    announced: &BTreeSet<(String, String, &'static str, String)>,
    current: &mut BTreeSet<(String, String, &'static str, String)>,
) {
    let api = Api::<MirrordWorkloadQueueRegistry>::namespaced(client.clone(), &report.namespace);
    if registry.status.as_ref() != Some(&report.status) {
        let patch = serde_json::json!({ "status": report.status });
        if let Err(error) = api
            .patch_status(&report.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(%error, registry = %report.name, namespace = %report.namespace, "cannot update the queue registry status");
        }
    }
    let reference: ObjectReference = registry.object_ref(&());
    for (reason, message) in &report.problems {
        let key = (
            report.namespace.clone(),
            report.name.clone(),
            reason.as_str(),
            message.clone(),
        );
        if !announced.contains(&key) {
            tracing::warn!(registry = %report.name, namespace = %report.namespace, reason = reason.as_str(), %message, "queue registry problem");
            let event = Event {
                type_: EventType::Warning,
                reason: reason.as_str().into(),
                note: Some(message.chars().take(1000).collect()),
                action: "SplitQueue".into(),
                secondary: None,
            };
            if let Err(error) = recorder.publish(&event, &reference).await {
                tracing::warn!(%error, "cannot publish the queue registry event");
            }
        }
        current.insert(key);
    }
}
