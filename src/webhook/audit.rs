//! Finds pods that should carry the agent but do not (admitted while the webhook was unreachable with
//! failurePolicy Ignore — the most common complaint about Istio's and Linkerd's injectors) and reports
//! them: a gauge per namespace, a log line per pod, and a Warning Event on the pod's owner.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::ListParams,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use super::{
    metrics::{Metrics, NamespaceLabel},
    namespaces::NamespaceCache,
    patch::{AGENT_CONTAINER_NAME, INJECT_LABEL, NAMESPACE_LABEL, STATUS_ANNOTATION},
};
use crate::server::shutdown::Shutdown;

pub const EVENT_REASON: &str = "NotInjected";

/// A running (or pending) pod that injection should have reached but did not.
pub fn is_uninjected(pod: &Pod) -> bool {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some()
        || meta
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(STATUS_ANNOTATION))
    {
        return false;
    }
    if meta
        .labels
        .as_ref()
        .and_then(|l| l.get(INJECT_LABEL))
        .is_some_and(|v| v == "false")
    {
        return false;
    }
    let Some(spec) = &pod.spec else { return false };
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    let has_agent = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == AGENT_CONTAINER_NAME);
    // A Job's pod is skipped by the webhook on servers without native sidecars (the agent would keep
    // the Job from completing), and recreating it is not what fixes a Job: never reported.
    let job = meta
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "Job" && o.api_version.starts_with("batch/"));
    !finished
        && !has_agent
        && !job
        && spec.host_network != Some(true)
        && !spec.containers.is_empty()
}

/// The controller owning the pod (e.g. its ReplicaSet or Job), else the pod itself.
pub fn event_target(pod: &Pod) -> ObjectReference {
    let namespace = pod.namespace();
    match pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    {
        Some(owner) => ObjectReference {
            api_version: Some(owner.api_version.clone()),
            kind: Some(owner.kind.clone()),
            name: Some(owner.name.clone()),
            uid: Some(owner.uid.clone()),
            namespace,
            ..Default::default()
        },
        None => pod.object_ref(&()),
    }
}

pub struct Audit {
    client: Client,
    namespaces: NamespaceCache,
    excluded: BTreeSet<String>,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    /// Namespaces reported non-zero last time, so their gauge returns to zero when fixed.
    reported: std::sync::Mutex<BTreeSet<String>>,
}

impl Audit {
    pub fn new(
        client: Client,
        namespaces: NamespaceCache,
        excluded: BTreeSet<String>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: "mirrord-operator".into(),
            instance: std::env::var("HOSTNAME").ok(),
        };
        Audit {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            namespaces,
            excluded,
            metrics,
            reported: Default::default(),
        }
    }

    fn injection_enabled(&self) -> Vec<String> {
        self.namespaces
            .all()
            .iter()
            .filter(|ns| {
                ns.labels()
                    .get(NAMESPACE_LABEL)
                    .is_some_and(|v| v == "enabled")
            })
            .map(|ns| ns.name_any())
            .filter(|name| !self.excluded.contains(name))
            .collect()
    }

    /// One pass; returns the uninjected pods found, by namespace.
    pub async fn pass(&self) -> Result<BTreeMap<String, Vec<String>>, kube::Error> {
        let mut candidates: Vec<Pod> = Vec::new();
        for namespace in self.injection_enabled() {
            candidates.extend(
                Api::<Pod>::namespaced(self.client.clone(), &namespace)
                    .list(&ListParams::default())
                    .await?
                    .items,
            );
        }
        // Pods that opted in from namespaces without the label.
        let opted_in = ListParams::default().labels(&format!("{INJECT_LABEL}=true"));
        candidates.extend(
            Api::<Pod>::all(self.client.clone())
                .list(&opted_in)
                .await?
                .items
                .into_iter()
                .filter(|p| {
                    let ns = p.namespace().unwrap_or_default();
                    !self.excluded.contains(&ns)
                        && self
                            .namespaces
                            .all()
                            .iter()
                            .find(|n| n.name_any() == ns)
                            .is_none_or(|n| !n.labels().contains_key(NAMESPACE_LABEL))
                }),
        );
        let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for pod in candidates.iter().filter(|p| is_uninjected(p)) {
            if !seen.insert(pod.uid()) {
                continue;
            }
            let (namespace, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
            let target = event_target(pod);
            tracing::warn!(%namespace, pod = %name, owner = ?target.name, "pod runs without the mirrord-agent sidecar (admitted while the webhook was unreachable?); recreate it to inject");
            let event = Event {
                type_: EventType::Warning,
                reason: EVENT_REASON.into(),
                note: Some(format!(
                    "Pod {name} was admitted without the mirrord-agent sidecar, probably while the mirrord-operator webhook was unreachable; recreate it (e.g. kubectl rollout restart) to inject it"
                )),
                action: "Audit".into(),
                secondary: (target.kind.as_deref() != Some("Pod")).then(|| pod.object_ref(&())),
            };
            if let Err(error) = self.recorder.publish(&event, &target).await {
                tracing::warn!(%error, %namespace, pod = %name, "could not record the NotInjected event");
            }
            found.entry(namespace).or_default().push(name);
        }
        let mut reported = self.reported.lock().expect("audit lock poisoned");
        for namespace in reported.iter().filter(|ns| !found.contains_key(*ns)) {
            self.metrics
                .uninjected_pods
                .get_or_create(&NamespaceLabel {
                    namespace: namespace.clone(),
                })
                .set(0);
        }
        for (namespace, pods) in &found {
            self.metrics
                .uninjected_pods
                .get_or_create(&NamespaceLabel {
                    namespace: namespace.clone(),
                })
                .set(pods.len() as i64);
        }
        *reported = found.keys().cloned().collect();
        Ok(found)
    }

    /// Runs a pass at start and every `interval` until shutdown.
    pub async fn run(self, interval: Duration, mut shutdown: Shutdown) {
        if !self.namespaces.wait_ready(Duration::from_secs(30)).await {
            tracing::warn!("namespace cache not ready after 30s; auditing with what is known");
        }
        loop {
            match self.pass().await {
                Ok(found) if found.is_empty() => {
                    tracing::debug!("audit: every pod that should be injected is")
                }
                Ok(found) => tracing::info!(
                    namespaces = found.len(),
                    pods = found.values().map(Vec::len).sum::<usize>(),
                    "audit found pods without the sidecar"
                ),
                Err(error) => {
                    tracing::warn!(%error, "audit pass failed");
                    self.metrics.error("audit");
                }
            }
            if !shutdown.sleep(interval).await {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn finds_only_pods_that_should_have_been_injected() {
        let plain = pod(
            serde_json::json!({"metadata":{"name":"a","namespace":"n"},"spec":{"containers":[{"name":"app"}]}}),
        );
        assert!(is_uninjected(&plain));
        let injected = pod(
            serde_json::json!({"metadata":{"name":"a"},"spec":{"containers":[{"name":"app"},{"name":"mirrord-agent"}]}}),
        );
        assert!(!is_uninjected(&injected));
        let native = pod(
            serde_json::json!({"metadata":{"name":"a"},"spec":{"initContainers":[{"name":"mirrord-agent"}],"containers":[{"name":"app"}]}}),
        );
        assert!(!is_uninjected(&native));
        let opted_out = pod(
            serde_json::json!({"metadata":{"name":"a","labels":{"mirrord.metalbear.co/inject":"false"}},"spec":{"containers":[{"name":"app"}]}}),
        );
        assert!(!is_uninjected(&opted_out));
        let host = pod(
            serde_json::json!({"metadata":{"name":"a"},"spec":{"hostNetwork":true,"containers":[{"name":"app"}]}}),
        );
        assert!(!is_uninjected(&host));
        let done = pod(
            serde_json::json!({"metadata":{"name":"a"},"spec":{"containers":[{"name":"app"}]},"status":{"phase":"Succeeded"}}),
        );
        assert!(!is_uninjected(&done));
        let job = pod(
            serde_json::json!({"metadata":{"name":"a","ownerReferences":[{"apiVersion":"batch/v1","kind":"Job","name":"once","uid":"u"}]},"spec":{"containers":[{"name":"app"}]}}),
        );
        assert!(!is_uninjected(&job));
    }

    #[test]
    fn events_go_to_the_controlling_owner() {
        let owned = pod(
            serde_json::json!({"metadata":{"name":"web-1","namespace":"n","ownerReferences":[
            {"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-7d","uid":"u1","controller":true}]},
            "spec":{"containers":[{"name":"app"}]}}),
        );
        let target = event_target(&owned);
        assert_eq!(
            (
                target.kind.as_deref(),
                target.name.as_deref(),
                target.namespace.as_deref()
            ),
            (Some("ReplicaSet"), Some("web-7d"), Some("n"))
        );
        let bare = pod(
            serde_json::json!({"metadata":{"name":"solo","namespace":"n","uid":"u2"},"spec":{"containers":[{"name":"app"}]}}),
        );
        assert_eq!(event_target(&bare).kind.as_deref(), Some("Pod"));
    }
}
