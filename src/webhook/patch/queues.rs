//! Queue splitting at admission (pure): a pod of a workload named by a
//! `MirrordWorkloadQueueRegistry`'s `consumer` reads each registered queue's *output* queue
//! instead of the original, so that starting or ending a queue session never restarts it.
//!
//! - The workload comes from the pod alone (no API call): a ReplicaSet owner, the
//!   `pod-template-hash` (Deployment) or `rollouts-pod-template-hash` (Argo Rollout) label, and
//!   `generateName` = `<workload>-<hash>-`.
//! - Containers: the registry's `consumer.container`, else every container of the pod.
//! - `nameSource.envVar`: a literal `value` is rewritten to the output name; a variable absent from
//!   `env` gets `fallbackName`'s output name appended (an explicit entry overrides `envFrom`), in
//!   the consumer container only; a `valueFrom` entry cannot be read here and is left with a
//!   warning. `nameSource.regexPattern`: every literal env entry whose name matches is rewritten.
//! - `namesFromJsonMap`: the value (or `fallbackName`) is a JSON object whose values name
//!   queues; each value is rewritten (keys kept, re-serialized with sorted keys).
//! - A value that already is an output name is left alone (reinvocation).
//! - Each rewrite is recorded under `queues` in the status annotation.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::EnvVar;

use super::{ContainerView, PatchOp, PatchValue, PodView};
use crate::coordinator::queues::{
    crd::{NameSource, QueueRegistrySpec, SplitQueue, WorkloadType},
    names,
};

/// One env var pointed at an output queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEnvUpdate {
    pub queue_id: String,
    pub container: String,
    pub env: String,
    pub original_name: String,
    pub output_name: String,
}

#[derive(Debug, Default)]
pub(super) struct QueueRewrites {
    pub ops: Vec<PatchOp<'static>>,
    pub updates: Vec<QueueEnvUpdate>,
    pub warnings: Vec<String>,
}

/// The Deployment or Rollout that owns the pod through a ReplicaSet, read from the pod alone.
pub fn owning_workload(pod: &PodView) -> Option<(WorkloadType, &str)> {
    let metadata = pod.metadata.as_ref()?;
    let by_replica_set = metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "ReplicaSet" && o.api_version == "apps/v1");
    if !by_replica_set {
        return None;
    }
    let labels = metadata.labels.as_ref()?;
    let (kind, hash) = if let Some(hash) = labels.get("rollouts-pod-template-hash") {
        (WorkloadType::Rollout, hash)
    } else {
        (WorkloadType::Deployment, labels.get("pod-template-hash")?)
    };
    let name = metadata
        .generate_name
        .as_deref()?
        .strip_suffix('-')?
        .strip_suffix(hash.as_str())?
        .strip_suffix('-')?;
    (!name.is_empty()).then_some((kind, name))
}

/// The env rewrites for `pod` given the registries of its namespace (any workload).
pub(super) fn rewrites(pod: &PodView, registries: &[&QueueRegistrySpec]) -> QueueRewrites {
    let mut out = QueueRewrites::default();
    let Some((kind, workload)) = owning_workload(pod) else {
        return out;
    };
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    // Containers that got a new `env` list in this patch (later appends use `/-`).
    let mut env_created = BTreeSet::new();
    for registry in registries
        .iter()
        .filter(|r| r.consumer.workload_type == kind && r.consumer.name == workload)
    {
        let named = registry.consumer.container.as_deref();
        if let Some(name) = named
            && !spec.containers.iter().any(|c| c.name == name)
        {
            out.warnings.push(format!(
                "queue splitting: container {name:?} named by the queue registry is not in the pod; queue env not rewritten"
            ));
            continue;
        }
        for (index, container) in spec.containers.iter().enumerate() {
            let is_consumer = match named {
                Some(name) => container.name == name,
                None => index == 0,
            };
            if named.is_some() && !is_consumer {
                continue;
            }
            for (queue_id, queue) in &registry.queues {
                let (source, fallback, json_map) = match queue {
                    SplitQueue::Sqs(q) => (&q.name_source, &q.fallback_name, q.names_from_json_map),
                    SplitQueue::Rmq(q) => (&q.name_source, &q.fallback_name, q.names_from_json_map),
                    SplitQueue::Unknown => continue,
                };
                let target = Target {
                    queue_id,
                    index,
                    container,
                    json_map: json_map == Some(true),
                };
                match source {
                    NameSource::EnvVar(var) => {
                        let found = rewrite_matching(&mut out, &target, |name| name == var);
                        if !found && is_consumer {
                            match fallback {
                                Some(fallback) => {
                                    append_fallback(&mut out, &target, var, fallback, &mut env_created)
                                }
                                None => out.warnings.push(format!(
                                    "queue splitting: env {var:?} for queue {queue_id:?} is not in container {:?} and the registry has no fallbackName",
                                    container.name
                                )),
                            }
                        }
                    }
                    NameSource::RegexPattern(pattern) => match regex::Regex::new(pattern) {
                        Ok(re) => {
                            rewrite_matching(&mut out, &target, |name| re.is_match(name));
                        }
                        Err(_) => {
                            if is_consumer {
                                out.warnings.push(format!(
                                    "queue splitting: regexPattern {pattern:?} of queue {queue_id:?} is not a valid regex"
                                ));
                            }
                        }
                    },
                }
            }
        }
    }
    out
}

struct Target<'a> {
    queue_id: &'a str,
    index: usize,
    container: &'a ContainerView,
    /// `namesFromJsonMap`: values are JSON objects whose values name queues.
    json_map: bool,
}

impl Target<'_> {
    /// The value pointing at the output queues instead of the originals: `None` when there is
    /// nothing to rewrite (already output names) or, with `Err`, why it cannot be.
    fn output_value(&self, value: &str) -> Result<Option<String>, String> {
        if !self.json_map {
            return Ok((!names::is_derived(value)).then(|| names::output_queue(value)));
        }
        let output = names::rewrite_json_map(value, |queue| {
            if names::is_derived(queue) {
                queue.to_owned()
            } else {
                names::output_queue(queue)
            }
        })
        .ok_or_else(|| {
            format!(
                "queue splitting: queue {:?} uses namesFromJsonMap but the value in container {:?} is not a JSON object of queue names; not rewritten",
                self.queue_id, self.container.name
            )
        })?;
        // Unchanged: every queue in it already is an output name (reinvocation).
        Ok((names::json_map_names(value) != names::json_map_names(&output)).then_some(output))
    }
}

/// Rewrites the literal env entries whose name `matches`; true when any entry matched.
fn rewrite_matching(
    out: &mut QueueRewrites,
    target: &Target<'_>,
    matches: impl Fn(&str) -> bool,
) -> bool {
    let mut found = false;
    for (j, env) in target.container.env.iter().flatten().enumerate() {
        if !matches(&env.name) {
            continue;
        }
        found = true;
        match (&env.value, &env.value_from) {
            (Some(value), _) if !value.is_empty() => {
                let output = match target.output_value(value) {
                    Ok(Some(output)) => output,
                    Ok(None) => continue,
                    Err(warning) => {
                        out.warnings.push(warning);
                        continue;
                    }
                };
                out.ops.push(PatchOp {
                    path: format!("/spec/containers/{}/env/{j}/value", target.index).into(),
                    value: PatchValue::Text(output.clone()),
                });
                record(out, target, &env.name, value, output);
            }
            (_, Some(_)) => out.warnings.push(format!(
                "queue splitting: env {:?} of container {:?} comes from valueFrom, which admission cannot read; it still names the original queue",
                env.name, target.container.name
            )),
            _ => {}
        }
    }
    found
}

fn append_fallback(
    out: &mut QueueRewrites,
    target: &Target<'_>,
    var: &str,
    fallback: &str,
    env_created: &mut BTreeSet<usize>,
) {
    let output = match target.output_value(fallback) {
        Ok(output) => output.unwrap_or_else(|| fallback.to_owned()),
        Err(warning) => {
            out.warnings.push(warning);
            return;
        }
    };
    let entry = EnvVar {
        name: var.to_owned(),
        value: Some(output.clone()),
        value_from: None,
    };
    let op = if target.container.env.is_some() || !env_created.insert(target.index) {
        PatchOp {
            path: format!("/spec/containers/{}/env/-", target.index).into(),
            value: PatchValue::EnvVar(entry),
        }
    } else {
        PatchOp {
            path: format!("/spec/containers/{}/env", target.index).into(),
            value: PatchValue::EnvVarList(entry),
        }
    };
    out.ops.push(op);
    record(out, target, var, fallback, output);
}

fn record(out: &mut QueueRewrites, target: &Target<'_>, env: &str, original: &str, output: String) {
    out.updates.push(QueueEnvUpdate {
        queue_id: target.queue_id.to_owned(),
        container: target.container.name.clone(),
        env: env.to_owned(),
        original_name: original.to_owned(),
        output_name: output,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> PodView {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn workload_comes_from_generate_name_and_hash_label() {
        let p = pod(serde_json::json!({
            "metadata": {"generateName": "api-7d9f8b6c5-", "labels": {"pod-template-hash": "7d9f8b6c5"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d9f8b6c5", "uid": "u"}]},
            "spec": {"containers": [{"name": "app"}]}
        }));
        assert_eq!(owning_workload(&p), Some((WorkloadType::Deployment, "api")));
        let p = pod(serde_json::json!({
            "metadata": {"generateName": "web-v2-abc-", "labels": {"rollouts-pod-template-hash": "abc", "pod-template-hash": "zzz"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-v2-abc", "uid": "u"}]},
            "spec": {"containers": [{"name": "app"}]}
        }));
        assert_eq!(owning_workload(&p), Some((WorkloadType::Rollout, "web-v2")));
        // A bare pod, a Job's pod, or a name that does not fit the hash: no workload.
        for metadata in [
            serde_json::json!({"name": "x"}),
            serde_json::json!({"generateName": "job-", "labels": {"pod-template-hash": "1"},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "job", "uid": "u"}]}),
            serde_json::json!({"generateName": "api-other-", "labels": {"pod-template-hash": "7d9f"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api", "uid": "u"}]}),
        ] {
            let p = pod(
                serde_json::json!({"metadata": metadata, "spec": {"containers": [{"name": "a"}]}}),
            );
            assert_eq!(owning_workload(&p), None);
        }
    }
}
