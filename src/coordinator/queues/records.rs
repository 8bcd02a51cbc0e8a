//! Queue sessions as `MirrordRMQSession` / `MirrordSQSSession` objects in the cluster: written when
//! a session's splits start, deleted when they end, so `kubectl get mirrordrmqsessions` shows who
//! splits what. They also outlive a coordinator that dies mid-session: the next coordinator finds
//! them ([`end_orphans`]), registers each one's filters again on its splitters and ends it the
//! normal way (filter off, unread messages back to the output queue, temporary queue deleted).
//! Sessions do not survive a coordinator restart (the CLI's reconnect gets 410), but their
//! messages do.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use futures::{FutureExt, future::BoxFuture};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};

use super::crd::{MirrordRMQSession, MirrordSQSSession};
use super::sessions::{QueueSession, QueueSessionError, sqs_splits};
use super::supervisor::SplitterIndex;

/// The label on the objects this coordinator writes (and the selector it lists them by).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "mirrord-operator");

/// One stored queue session object.
#[derive(Debug, Clone)]
pub enum StoredSession {
    Rmq(MirrordRMQSession),
    Sqs(MirrordSQSSession),
}

impl StoredSession {
    /// The session key (lowercase hex of the session id).
    pub fn key(&self) -> &str {
        match self {
            StoredSession::Rmq(o) => &o.spec.session_id,
            StoredSession::Sqs(o) => &o.spec.session_id,
        }
    }

    fn describe(&self) -> String {
        match self {
            StoredSession::Rmq(o) => format!("MirrordRMQSession {}", o.name_any()),
            StoredSession::Sqs(o) => format!(
                "MirrordSQSSession {}/{}",
                o.namespace().unwrap_or_default(),
                o.name_any()
            ),
        }
    }
}

/// Where session objects are kept. Writes are best effort: a session works without its object
/// (the operator status still shows it), so failures are logged, not returned.
pub trait SessionRecords: Send + Sync {
    fn save(&self, object: StoredSession) -> BoxFuture<'_, ()>;
    fn remove(&self, object: StoredSession) -> BoxFuture<'_, ()>;
    fn list(&self) -> BoxFuture<'_, Result<Vec<StoredSession>, String>>;
}

/// The records of one coordinator process: the store and the sessions this process runs (any
/// other stored session is an orphan).
#[derive(Clone)]
pub struct Records {
    store: Arc<dyn SessionRecords>,
    live: Arc<Mutex<HashSet<String>>>,
}

impl Records {
    pub fn new(store: Arc<dyn SessionRecords>) -> Records {
        Records {
            store,
            live: Arc::default(),
        }
    }

    /// Marks the session live, then stores its objects.
    pub async fn started(&self, key: &str, objects: Vec<StoredSession>) {
        self.live_set().insert(key.to_owned());
        for object in objects {
            self.store.save(object).await;
        }
    }

    /// Removes the session's objects, then forgets it.
    pub async fn ended(&self, key: &str, objects: Vec<StoredSession>) {
        for object in objects {
            self.store.remove(object).await;
        }
        self.live_set().remove(key);
    }

    fn live_set(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What [`end_orphans`] did in one round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OrphanRound {
    /// Session keys ended and their objects removed.
    pub ended: BTreeSet<String>,
    /// Session keys whose splitter is not running (yet): tried again next round.
    pub waiting: BTreeSet<String>,
}

/// Ends every stored session this process does not run: a coordinator that died mid-session left
/// it. Each is registered again with its stored filters (so its temporary queue is known to the
/// splitter) and ended at once. One whose splitter is not running yet (a restart's first
/// rounds) or whose filter now overlaps a live session waits for a later round.
pub async fn end_orphans(index: &SplitterIndex, records: &Records) -> OrphanRound {
    let mut round = OrphanRound::default();
    let stored = match records.store.list().await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(%error, "listing stored queue sessions failed");
            return round;
        }
    };
    for object in stored {
        let key = object.key().to_owned();
        if records.live_set().contains(&key) {
            continue;
        }
        let Ok(id) = u64::from_str_radix(&key, 16) else {
            tracing::warn!(object = %object.describe(), "stored queue session has no valid session id; removed");
            records.store.remove(object).await;
            continue;
        };
        let started = match &object {
            StoredSession::Rmq(o) => {
                QueueSession::start(
                    index,
                    &o.spec.namespace,
                    &o.spec.queue_consumer.name,
                    id,
                    &o.spec.queue_filters,
                )
                .await
            }
            StoredSession::Sqs(o) => {
                let splits = sqs_splits(
                    o.spec.queue_filters.clone(),
                    o.spec.queue_jq_filters.clone(),
                );
                QueueSession::start_sqs(
                    index,
                    &o.namespace().unwrap_or_default(),
                    &o.spec.queue_consumer.name,
                    id,
                    &splits,
                    None,
                )
                .await
            }
        };
        match started {
            Ok(session) => {
                session.end().await;
                tracing::info!(session = %key, object = %object.describe(), "queue session of an earlier coordinator ended");
                records.store.remove(object).await;
                round.ended.insert(key);
            }
            Err(error @ QueueSessionError::NotSplit { .. }) => {
                tracing::debug!(session = %key, %error, "orphaned queue session waits for its splitter");
                round.waiting.insert(key);
            }
            Err(error) => {
                tracing::warn!(session = %key, %error, "orphaned queue session could not be ended; trying again");
                round.waiting.insert(key);
            }
        }
    }
    round
}

/// Records in memory: for tests, which play two coordinators over one store.
#[derive(Default)]
pub struct MemoryRecords(Mutex<Vec<StoredSession>>);

impl SessionRecords for MemoryRecords {
    fn save(&self, object: StoredSession) -> BoxFuture<'_, ()> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(object);
        async {}.boxed()
    }

    fn remove(&self, object: StoredSession) -> BoxFuture<'_, ()> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|o| {
                o.key() != object.key()
                    || std::mem::discriminant(o) != std::mem::discriminant(&object)
            });
        async {}.boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<StoredSession>, String>> {
        let all = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        async move { Ok(all) }.boxed()
    }
}

/// The objects in the cluster through the Kubernetes API.
pub struct KubeSessionRecords(pub Client);

async fn save_object<K>(api: Api<K>, mut object: K)
where
    K: Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let name = object.name_any();
    object
        .meta_mut()
        .labels
        .get_or_insert_with(Default::default)
        .insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    // The status is a subresource: the create drops it, a status patch sets it.
    let status = serde_json::to_value(&object)
        .ok()
        .and_then(|v| v.get("status").cloned());
    if let Err(error) = api.create(&PostParams::default(), &object).await {
        tracing::warn!(%name, %error, kind = %K::kind(&K::DynamicType::default()), "storing the queue session failed");
        return;
    }
    if let Some(status) = status {
        let patch = serde_json::json!({ "status": status });
        if let Err(error) = api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(%name, %error, "storing the queue session's status failed");
        }
    }
}

async fn remove_object<K>(api: Api<K>, name: String)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    match api.delete(&name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => tracing::warn!(%name, %error, "removing the stored queue session failed"),
    }
}

impl SessionRecords for KubeSessionRecords {
    fn save(&self, object: StoredSession) -> BoxFuture<'_, ()> {
        async move {
            match object {
                StoredSession::Rmq(o) => save_object(Api::all(self.0.clone()), o).await,
                StoredSession::Sqs(o) => {
                    let namespace = o.namespace().unwrap_or_default();
                    save_object(Api::namespaced(self.0.clone(), &namespace), o).await
                }
            }
        }
        .boxed()
    }

    fn remove(&self, object: StoredSession) -> BoxFuture<'_, ()> {
        async move {
            match object {
                StoredSession::Rmq(o) => {
                    remove_object::<MirrordRMQSession>(Api::all(self.0.clone()), o.name_any()).await
                }
                StoredSession::Sqs(o) => {
                    let namespace = o.namespace().unwrap_or_default();
                    remove_object::<MirrordSQSSession>(
                        Api::namespaced(self.0.clone(), &namespace),
                        o.name_any(),
                    )
                    .await
                }
            }
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<StoredSession>, String>> {
        async move {
            let params =
                ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
            let rmq = Api::<MirrordRMQSession>::all(self.0.clone())
                .list(&params)
                .await
                .map_err(|e| format!("listing MirrordRMQSessions: {e}"))?;
            let sqs = Api::<MirrordSQSSession>::all(self.0.clone())
                .list(&params)
                .await
                .map_err(|e| format!("listing MirrordSQSSessions: {e}"))?;
            Ok(rmq
                .items
                .into_iter()
                .map(StoredSession::Rmq)
                .chain(sqs.items.into_iter().map(StoredSession::Sqs))
                .collect())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn rmq(key: &str) -> StoredSession {
        StoredSession::Rmq(MirrordRMQSession::new(
            &format!("{key}-rmq"),
            super::super::crd::RmqSessionSpec {
                namespace: "shop".into(),
                queue_filters: [("orders".into(), [("x".into(), "^a$".into())].into())].into(),
                queue_consumer: super::super::crd::QueueConsumer {
                    name: "api".into(),
                    container: None,
                    workload_type: super::super::crd::WorkloadType::Deployment,
                },
                session_id: key.into(),
                output_queue_names: BTreeMap::new(),
            },
        ))
    }

    #[tokio::test]
    async fn live_sessions_are_not_orphans_and_bad_ids_are_dropped() {
        let store = Arc::new(MemoryRecords::default());
        let records = Records::new(store.clone());
        records.started("a11ce", vec![rmq("a11ce")]).await;
        store.save(rmq("b0b")).await;
        store.save(rmq("not-hex")).await;
        // No splitter runs: b0b waits, a11ce is this process's own, not-hex is removed.
        let round = end_orphans(&SplitterIndex::default(), &records).await;
        assert_eq!(round.waiting, BTreeSet::from(["b0b".to_owned()]));
        assert!(round.ended.is_empty());
        let keys: Vec<String> = store
            .list()
            .await
            .unwrap()
            .iter()
            .map(|o| o.key().to_owned())
            .collect();
        assert_eq!(keys, ["a11ce", "b0b"]);
        records.ended("a11ce", vec![rmq("a11ce")]).await;
        let left = store.list().await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].key(), "b0b");
    }
}
