//! Watch-fed caches (kube-runtime reflectors) of the workloads targets resolve to: pods,
//! deployments, replicasets, statefulsets, jobs, cronjobs (batch/v1, Kubernetes 1.21+), and Argo
//! Rollouts once their CRD exists (checked again every [`ROLLOUT_RECHECK`] until it does, so Argo
//! installed after the operator needs no restart).
//! Requests read snapshots of these stores; nothing asks the API server per request.

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicUsize, Ordering},
};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet, StatefulSet},
    batch::v1::{CronJob, Job},
    core::v1::{Pod, PodSpec},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::GroupVersionKind,
    core::DynamicObject,
    discovery,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use crate::{
    coordinator::api::state::{Inventory, NamespaceInventory},
    coordinator::queues::crd::WorkloadType,
    coordinator::targets::rollout_pod_template,
    server::shutdown::Shutdown,
};

/// The caches; cheap to clone.
#[derive(Clone)]
pub struct Caches {
    pods: Store<Pod>,
    deployments: Store<Deployment>,
    replica_sets: Store<ReplicaSet>,
    stateful_sets: Store<StatefulSet>,
    jobs: Store<Job>,
    cron_jobs: Option<Store<CronJob>>,
    /// Set once `argoproj.io/v1alpha1` serves Rollouts.
    rollouts: Arc<OnceLock<Store<DynamicObject>>>,
    /// Stores whose first list has not completed.
    pending: Arc<AtomicUsize>,
}

/// Runs one reflector into `writer` until `shutdown`, retrying with backoff when the watch breaks,
/// and counts it in `pending` until its first list completes.
fn reflect<K>(
    kind: &'static str,
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    pending: Arc<AtomicUsize>,
    shutdown: Shutdown,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync + 'static,
{
    let store = writer.as_reader();
    pending.fetch_add(1, Ordering::AcqRel);
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        // managedFields are most of an object's size and nothing here reads them.
        .modify(|object| object.managed_fields_mut().clear())
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.take_until(shutdown.wait()));
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                tracing::warn!(%error, kind, "watch failed; retrying");
            }
        }
    });
    let ready = store.clone();
    tokio::spawn(async move {
        if ready.wait_until_ready().await.is_ok() {
            tracing::info!(kind, "cache synced");
            pending.fetch_sub(1, Ordering::AcqRel);
        }
    });
    store
}

/// How often a coordinator without Rollouts asks whether their CRD was installed.
pub const ROLLOUT_RECHECK: Duration = Duration::from_secs(15);

fn rollout_kind() -> GroupVersionKind {
    GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout")
}

fn watch_rollouts(
    client: &Client,
    resource: kube::api::ApiResource,
    pending: Arc<AtomicUsize>,
    shutdown: Shutdown,
) -> Store<DynamicObject> {
    reflect(
        "Rollout",
        Api::<DynamicObject>::all_with(client.clone(), &resource),
        reflector::store::Writer::new(resource),
        pending,
        shutdown,
    )
}

/// Waits for the Rollout CRD, then watches Rollouts into `slot`. Not counted in readiness: the
/// coordinator serves already, and Rollouts appear in answers once listed.
async fn rollouts_once_installed(
    client: Client,
    slot: Arc<OnceLock<Store<DynamicObject>>>,
    mut shutdown: Shutdown,
) {
    while shutdown.sleep(ROLLOUT_RECHECK).await {
        if let Ok((resource, _)) = discovery::pinned_kind(&client, &rollout_kind()).await {
            tracing::info!("argoproj.io/v1alpha1 Rollouts are served now: watching them");
            let unready = Arc::new(AtomicUsize::new(0));
            let _ = slot.set(watch_rollouts(&client, resource, unready, shutdown.clone()));
            return;
        }
    }
}

impl Caches {
    /// Starts every reflector. CronJobs are watched only when `batch/v1` serves them (1.21+; a
    /// watch of a kind the server lacks would never sync), Rollouts once `argoproj.io/v1alpha1`
    /// serves them.
    pub async fn start(client: Client, shutdown: Shutdown) -> Caches {
        let pending = Arc::new(AtomicUsize::new(0));
        macro_rules! typed {
            ($kind:ty) => {
                reflect(
                    stringify!($kind),
                    Api::<$kind>::all(client.clone()),
                    reflector::store::Writer::default(),
                    pending.clone(),
                    shutdown.clone(),
                )
            };
        }
        let cron_job = GroupVersionKind::gvk("batch", "v1", "CronJob");
        let cron_jobs = match discovery::pinned_kind(&client, &cron_job).await {
            Ok(_) => Some(typed!(CronJob)),
            Err(error) => {
                tracing::info!(%error, "no batch/v1 CronJobs (Kubernetes before 1.21): not watching them");
                None
            }
        };
        let rollouts = Arc::new(OnceLock::new());
        match discovery::pinned_kind(&client, &rollout_kind()).await {
            Ok((resource, _)) => {
                let _ = rollouts.set(watch_rollouts(
                    &client,
                    resource,
                    pending.clone(),
                    shutdown.clone(),
                ));
            }
            Err(error) => {
                tracing::info!(%error, "no argoproj.io/v1alpha1 Rollouts: looking again every {ROLLOUT_RECHECK:?}");
                tokio::spawn(rollouts_once_installed(
                    client.clone(),
                    rollouts.clone(),
                    shutdown.clone(),
                ));
            }
        }
        Caches {
            pods: typed!(Pod),
            deployments: typed!(Deployment),
            replica_sets: typed!(ReplicaSet),
            stateful_sets: typed!(StatefulSet),
            jobs: typed!(Job),
            cron_jobs,
            rollouts,
            pending,
        }
    }

    /// True once every store has completed its first list.
    pub fn synced(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// A queue consumer's pod template (queue splitting reads the queue names in its env): a
    /// Deployment's, or a Rollout's (its own or its `workloadRef` Deployment's).
    pub fn workload_template(
        &self,
        kind: WorkloadType,
        namespace: &str,
        name: &str,
    ) -> Option<PodSpec> {
        let deployment = |name: &str| {
            let key = reflector::ObjectRef::new(name).within(namespace);
            Some(self.deployments.get(&key)?.spec.as_ref()?.template.clone())
        };
        let template = match kind {
            WorkloadType::Deployment => deployment(name)?,
            WorkloadType::Rollout => {
                let rollout = self.rollouts.get()?.find(|r| {
                    r.metadata.namespace.as_deref() == Some(namespace) && r.name_any() == name
                })?;
                rollout_pod_template(&rollout.data, deployment)?
            }
        };
        template.spec
    }
}

fn in_namespace<K>(store: &Store<K>, namespace: &str) -> Vec<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let mut objects: Vec<Arc<K>> = store
        .state()
        .into_iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
        .collect();
    // Stores are hash maps: sort so answers are stable.
    objects.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
    objects
}

impl Inventory for Caches {
    fn namespace(&self, namespace: &str) -> NamespaceInventory {
        NamespaceInventory {
            pods: in_namespace(&self.pods, namespace),
            deployments: in_namespace(&self.deployments, namespace),
            replica_sets: in_namespace(&self.replica_sets, namespace),
            stateful_sets: in_namespace(&self.stateful_sets, namespace),
            jobs: in_namespace(&self.jobs, namespace),
            cron_jobs: self
                .cron_jobs
                .as_ref()
                .map(|s| in_namespace(s, namespace))
                .unwrap_or_default(),
            rollouts: self
                .rollouts
                .get()
                .map(|s| in_namespace(s, namespace))
                .unwrap_or_default(),
        }
    }
}
