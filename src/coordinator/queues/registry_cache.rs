//! An in-memory view of the `MirrordWorkloadQueueRegistry` objects of all namespaces, fed by a
//! watch, so the webhook points queue env at output queues without an API call per admission.

use std::sync::Arc;

use kube::{Client, runtime::reflector};

use super::crd::MirrordWorkloadQueueRegistry;
use crate::server::{
    shutdown::Shutdown,
    watch::{fixed_store, watch_all},
};

/// Empty (no registries) when no cluster is reachable.
#[derive(Clone, Default)]
pub struct QueueRegistryCache {
    store: Option<reflector::Store<MirrordWorkloadQueueRegistry>>,
}

impl std::fmt::Debug for QueueRegistryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueRegistryCache")
            .field("watching", &self.store.is_some())
            .finish()
    }
}

impl QueueRegistryCache {
    /// Starts a watch of all registries; the cache fills in the background. A cluster without the
    /// CRD only logs a warning per retry (the chart installs it).
    pub fn watch(client: Client, shutdown: Shutdown) -> Self {
        QueueRegistryCache {
            store: Some(watch_all(client, "MirrordWorkloadQueueRegistry", shutdown)),
        }
    }

    /// A fixed set of registries (tests, and running without a cluster).
    pub fn fixed(registries: impl IntoIterator<Item = MirrordWorkloadQueueRegistry>) -> Self {
        QueueRegistryCache {
            store: Some(fixed_store(registries)),
        }
    }

    /// The registries of `namespace` (empty, without allocating, when there are none at all).
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<MirrordWorkloadQueueRegistry>> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        let mut all = store.state();
        all.retain(|r| r.metadata.namespace.as_deref() == Some(namespace));
        all
    }
}
