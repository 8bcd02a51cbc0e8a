//! An in-memory view of Namespaces, fed by a watch, so admission never calls the API server: knob
//! defaults come from namespace annotations, Pod Security levels from labels, and the audit reads the
//! injection label.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::{Client, runtime::reflector};

use crate::server::{
    shutdown::Shutdown,
    watch::{fixed_store, watch_all},
};

/// Empty when no cluster is reachable (files mode in development): then no namespace has defaults.
#[derive(Clone, Default)]
pub struct NamespaceCache {
    store: Option<reflector::Store<Namespace>>,
}

impl std::fmt::Debug for NamespaceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceCache")
            .field("watching", &self.store.is_some())
            .finish()
    }
}

impl NamespaceCache {
    /// Starts a watch of all Namespaces; the cache fills in the background.
    pub fn watch(client: Client, shutdown: Shutdown) -> Self {
        NamespaceCache {
            store: Some(watch_all(client, "Namespace", shutdown)),
        }
    }

    /// Waits (bounded) for the first full list, so early admissions see namespace defaults.
    pub async fn wait_ready(&self, timeout: std::time::Duration) -> bool {
        match &self.store {
            Some(store) => tokio::time::timeout(timeout, store.wait_until_ready())
                .await
                .is_ok_and(|r| r.is_ok()),
            None => true,
        }
    }

    /// A fixed set of namespaces (tests, and running without a cluster).
    pub fn fixed(namespaces: impl IntoIterator<Item = Namespace>) -> Self {
        NamespaceCache {
            store: Some(fixed_store(namespaces)),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<Namespace>> {
        self.store.as_ref()?.get(&reflector::ObjectRef::new(name))
    }

    /// All cached namespaces (for the audit).
    pub fn all(&self) -> Vec<Arc<Namespace>> {
        self.store.as_ref().map(|s| s.state()).unwrap_or_default()
    }

    pub fn is_watching(&self) -> bool {
        self.store.is_some()
    }
}
