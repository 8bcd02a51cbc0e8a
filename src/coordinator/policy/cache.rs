//! Watch-fed caches of `MirrordPolicy` and `MirrordClusterPolicy`: checks read a snapshot,
//! nothing asks the API server per request.

use futures::StreamExt;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use super::crd::{MirrordClusterPolicy, MirrordPolicy};
use super::eval::{NamedPolicy, PolicyKind, PolicyRef};
use super::gate::PolicySource;
use crate::server::shutdown::Shutdown;

pub struct PolicyCache {
    namespaced: Store<MirrordPolicy>,
    cluster: Store<MirrordClusterPolicy>,
}

/// One reflector until `shutdown`, retried with backoff when the watch breaks (for example while
/// the CRDs are not installed yet).
fn reflect<K>(kind: &'static str, api: Api<K>, shutdown: Shutdown) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Clone + Eq + std::hash::Hash + Send + Sync + 'static,
{
    let writer = reflector::store::Writer::default();
    let store = writer.as_reader();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|object| object.managed_fields_mut().clear())
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.take_until(shutdown.wait()));
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                tracing::warn!(%error, kind, "policy watch failed; retrying");
            }
        }
    });
    store
}

impl PolicyCache {
    pub fn start(client: Client, shutdown: Shutdown) -> PolicyCache {
        PolicyCache {
            namespaced: reflect("MirrordPolicy", Api::all(client.clone()), shutdown.clone()),
            cluster: reflect("MirrordClusterPolicy", Api::all(client), shutdown),
        }
    }
}

impl PolicySource for PolicyCache {
    fn policies(&self) -> Vec<NamedPolicy> {
        let namespaced = self.namespaced.state().into_iter().map(|p| NamedPolicy {
            reference: PolicyRef {
                kind: PolicyKind::MirrordPolicy,
                namespace: p.namespace(),
                name: p.name_any(),
            },
            spec: p.spec.clone(),
        });
        let cluster = self.cluster.state().into_iter().map(|p| NamedPolicy {
            reference: PolicyRef {
                kind: PolicyKind::MirrordClusterPolicy,
                namespace: None,
                name: p.name_any(),
            },
            spec: p.spec.0.clone(),
        });
        let mut all: Vec<NamedPolicy> = namespaced.chain(cluster).collect();
        // Stores are hash maps: a stable order makes the first refusal reported stable.
        all.sort_by(|a, b| a.reference.cmp(&b.reference));
        all
    }
}
