//! An in-memory view of the `MirrordWorkloadQueueRegistry` objects of all namespaces, fed by a
//! watch, so the webhook points queue env at output queues without an API call per admission.

use std::sync::Arc;

use futures::StreamExt;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};

use super::crd::MirrordWorkloadQueueRegistry;
use crate::server::shutdown::Shutdown;

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
        let (store, writer) = reflector::store();
        let stream = watcher(
            Api::<MirrordWorkloadQueueRegistry>::all(client),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(writer)
        .applied_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let stop = shutdown.wait();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    item = stream.next() => match item {
                        Some(Ok(_)) => {}
                        Some(Err(error)) => tracing::warn!(%error, "queue registry watch error; retrying with backoff"),
                        None => break,
                    },
                    _ = &mut stop => break,
                }
            }
        });
        QueueRegistryCache { store: Some(store) }
    }

    /// A fixed set of registries (tests, and running without a cluster).
    pub fn fixed(registries: impl IntoIterator<Item = MirrordWorkloadQueueRegistry>) -> Self {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for registry in registries {
            writer.apply_watcher_event(&watcher::Event::InitApply(registry));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        QueueRegistryCache { store: Some(store) }
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
