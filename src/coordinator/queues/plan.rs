//! Which splitters a registry asks for (pure): for each RMQ (or SQS) queue of a
//! `MirrordWorkloadQueueRegistry`, the original queue name read from the consumer Deployment's pod
//! template the same way admission reads it (`src/webhook/patch/queues.rs`), and the registry
//! status that records it.

use k8s_openapi::api::core::v1::PodSpec;

use super::crd::{
    MirrordWorkloadQueueRegistry, NameSource, QueueDetails, QueueNames, QueueRegistryStatus,
    SplitQueue,
};
use super::names;

/// One splitter to run: original queue of one registry queue id (either broker).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SplitPlan {
    pub namespace: String,
    pub registry: String,
    /// The consumer workload's name (sessions find their splits by target workload).
    pub consumer: String,
    pub queue_id: String,
    /// RMQ: Secret (same namespace) holding the broker URI under key `uri`; SQS: empty (the
    /// coordinator's own AWS credentials).
    pub secret: String,
    pub original: String,
    /// The env var that names it (the fallback's variable when the template lacks it).
    pub env: String,
    /// `queueProperties`, as JSON text (kept comparable; converted to AMQP arguments at start).
    pub queue_properties: Option<String>,
}

/// The RabbitMQ name the sessions and tests know.
pub type RmqPlan = SplitPlan;

/// Which broker's queues of a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Rmq,
    Sqs,
}

impl SplitPlan {
    pub fn output(&self) -> String {
        names::output_queue(&self.original)
    }
}

/// What a registry asks for, and why some of its queues cannot be split.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Planned {
    pub splits: Vec<SplitPlan>,
    pub problems: Vec<String>,
}

/// The RMQ splits of `registry`, given its consumer's pod template (`None`: the workload does not
/// exist, or is not a Deployment the coordinator knows).
pub fn rmq_plans(registry: &MirrordWorkloadQueueRegistry, template: Option<&PodSpec>) -> Planned {
    plans(registry, template, QueueKind::Rmq)
}

/// The SQS splits of `registry` (as [`rmq_plans`]; `secret` and `queue_properties` empty).
pub fn sqs_plans(registry: &MirrordWorkloadQueueRegistry, template: Option<&PodSpec>) -> Planned {
    plans(registry, template, QueueKind::Sqs)
}

/// The splits of `registry`'s queues of one `kind`; a registry without such queues asks for
/// nothing and has no problem of this kind.
pub fn plans(
    registry: &MirrordWorkloadQueueRegistry,
    template: Option<&PodSpec>,
    kind: QueueKind,
) -> Planned {
    let mut out = Planned::default();
    let of_kind = |queue| of_kind(kind, queue);
    if !registry.spec.queues.values().any(|q| of_kind(q).is_some()) {
        return out;
    }
    let namespace = registry.metadata.namespace.clone().unwrap_or_default();
    let name = registry.metadata.name.clone().unwrap_or_default();
    let consumer = &registry.spec.consumer;
    let Some(template) = template else {
        out.problems.push(format!(
            "{} {:?} not found in namespace {namespace:?}",
            consumer.workload_type.as_str(),
            consumer.name
        ));
        return out;
    };
    let containers: Vec<_> = match consumer.container.as_deref() {
        Some(wanted) => template
            .containers
            .iter()
            .filter(|c| c.name == wanted)
            .collect(),
        None => template.containers.iter().collect(),
    };
    if containers.is_empty() {
        out.problems.push(format!(
            "container {:?} not in {:?}'s pod template",
            consumer.container.as_deref().unwrap_or_default(),
            consumer.name
        ));
        return out;
    }
    for (queue_id, queue) in &registry.spec.queues {
        let Some((name_source, fallback_name, secret, queue_properties)) = of_kind(queue) else {
            continue;
        };
        let plan = |env: &str, original: &str| SplitPlan {
            namespace: namespace.clone(),
            registry: name.clone(),
            consumer: consumer.name.clone(),
            queue_id: queue_id.clone(),
            secret: secret.clone(),
            original: original.to_owned(),
            env: env.to_owned(),
            queue_properties: queue_properties.clone(),
        };
        let literal = containers
            .iter()
            .flat_map(|c| c.env.iter().flatten())
            .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?)))
            .filter(|(_, value)| !value.is_empty() && !names::is_derived(value));
        let before = out.splits.len();
        match name_source {
            NameSource::EnvVar(var) => {
                out.splits.extend(
                    literal
                        .filter(|(env, _)| env == var)
                        .map(|(env, value)| plan(env, value)),
                );
                if out.splits.len() == before
                    && let Some(fallback) = fallback_name
                {
                    out.splits.push(plan(var, fallback));
                }
            }
            NameSource::RegexPattern(pattern) => match regex::Regex::new(pattern) {
                Ok(re) => out.splits.extend(
                    literal
                        .filter(|(env, _)| re.is_match(env))
                        .map(|(env, value)| plan(env, value)),
                ),
                Err(_) => out.problems.push(format!(
                    "queue {queue_id:?}: regexPattern {pattern:?} is not a valid regex"
                )),
            },
        }
        if out.splits.len() == before && !out.problems.iter().any(|p| p.contains(queue_id)) {
            out.problems.push(format!(
                "queue {queue_id:?}: no literal env value names it in {:?}'s pod template and no fallbackName",
                consumer.name
            ));
        }
    }
    out.splits.sort();
    out.splits
        .dedup_by(|a, b| a.original == b.original && a.queue_id == b.queue_id);
    out
}

/// A queue of `kind`: its name source, fallback, Secret and properties.
fn of_kind(
    kind: QueueKind,
    queue: &SplitQueue,
) -> Option<(&NameSource, &Option<String>, String, Option<String>)> {
    match (kind, queue) {
        (QueueKind::Rmq, SplitQueue::Rmq(q)) => Some((
            &q.name_source,
            &q.fallback_name,
            q.cluster_properties.clone(),
            q.queue_properties.as_ref().map(|v| v.to_string()),
        )),
        (QueueKind::Sqs, SplitQueue::Sqs(q)) => {
            Some((&q.name_source, &q.fallback_name, String::new(), None))
        }
        _ => None,
    }
}

/// The registry status for RMQ `splits`: names per queue id (the first original of an id) and per
/// env.
pub fn rmq_status(splits: &[SplitPlan]) -> QueueRegistryStatus {
    QueueRegistryStatus {
        sqs_details: None,
        rmq_details: (!splits.is_empty()).then(|| details(splits)),
    }
}

/// The registry status for SQS `splits` (`sqsDetails`).
pub fn sqs_status(splits: &[SplitPlan]) -> QueueRegistryStatus {
    QueueRegistryStatus {
        sqs_details: (!splits.is_empty()).then(|| details(splits)),
        rmq_details: None,
    }
}

fn details(splits: &[SplitPlan]) -> QueueDetails {
    let mut details = QueueDetails::default();
    for split in splits {
        let names = QueueNames {
            original_name: split.original.clone(),
            output_name: split.output(),
        };
        details
            .queue_names
            .entry(split.queue_id.clone())
            .or_insert_with(|| names.clone());
        details.env_updates.insert(split.env.clone(), names);
    }
    details
}

/// One running splitter: namespace, Secret, original queue.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SplitKey {
    pub namespace: String,
    pub secret: String,
    pub original: String,
}

impl SplitKey {
    pub fn of(plan: &SplitPlan) -> Self {
        SplitKey {
            namespace: plan.namespace.clone(),
            secret: plan.secret.clone(),
            original: plan.original.clone(),
        }
    }
}

impl std::fmt::Display for SplitKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.secret, self.original)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry(
        queues: serde_json::Value,
        container: Option<&str>,
    ) -> MirrordWorkloadQueueRegistry {
        serde_json::from_value(json!({
            "apiVersion": "queues.mirrord.metalbear.co/v1alpha",
            "kind": "MirrordWorkloadQueueRegistry",
            "metadata": {"name": "reg", "namespace": "staging"},
            "spec": {"queues": queues, "consumer": {"name": "api", "container": container, "workloadType": "Deployment"}}
        }))
        .unwrap()
    }

    fn template(containers: serde_json::Value) -> PodSpec {
        serde_json::from_value(json!({ "containers": containers })).unwrap()
    }

    #[test]
    fn env_var_regex_and_fallback_give_originals() {
        let reg = registry(
            json!({
                "orders": {"queueType": "RMQ", "clusterProperties": "rmq", "nameSource": {"envVar": "ORDERS"}},
                "jobs": {"queueType": "RMQ", "clusterProperties": "rmq", "nameSource": {"regexPattern": "^JOB_"}},
                "late": {"queueType": "RMQ", "clusterProperties": "rmq", "nameSource": {"envVar": "LATE"}, "fallbackName": "late-q"},
                "sqs": {"queueType": "SQS", "nameSource": {"envVar": "SQS"}}
            }),
            None,
        );
        let spec = template(json!([{"name": "main", "env": [
            {"name": "ORDERS", "value": "orders"},
            {"name": "JOB_A", "value": "jobs-a"},
            {"name": "JOB_B", "value": "jobs-b-mirrord-output"},
            {"name": "SQS", "value": "s"}
        ]}]));
        let planned = rmq_plans(&reg, Some(&spec));
        assert_eq!(planned.problems, Vec::<String>::new());
        let got: Vec<_> = planned
            .splits
            .iter()
            .map(|p| (p.queue_id.as_str(), p.env.as_str(), p.original.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("jobs", "JOB_A", "jobs-a"),
                ("late", "LATE", "late-q"),
                ("orders", "ORDERS", "orders")
            ]
        );
        let status = rmq_status(&planned.splits);
        let details = status.rmq_details.unwrap();
        assert_eq!(
            details.queue_names["orders"].output_name,
            "orders-mirrord-output"
        );
        assert_eq!(details.env_updates["JOB_A"].original_name, "jobs-a");
    }

    #[test]
    fn missing_workload_container_or_name_is_a_problem() {
        let reg = registry(
            json!({"orders": {"queueType": "RMQ", "clusterProperties": "rmq", "nameSource": {"envVar": "ORDERS"}}}),
            Some("worker"),
        );
        assert!(rmq_plans(&reg, None).problems[0].contains("not found"));
        let spec = template(json!([{"name": "main", "env": [{"name": "ORDERS", "value": "o"}]}]));
        assert!(rmq_plans(&reg, Some(&spec)).problems[0].contains("worker"));
        let spec = template(json!([{"name": "worker"}]));
        let planned = rmq_plans(&reg, Some(&spec));
        assert!(planned.splits.is_empty());
        assert!(
            planned.problems[0].contains("no fallbackName"),
            "{planned:?}"
        );
        assert_eq!(rmq_status(&[]), QueueRegistryStatus::default());
    }

    #[test]
    fn sqs_queues_are_planned_apart_from_rmq_ones() {
        let reg = registry(
            json!({
                "orders": {"queueType": "RMQ", "clusterProperties": "rmq", "nameSource": {"envVar": "ORDERS"}},
                "mail": {"queueType": "SQS", "nameSource": {"envVar": "MAIL"}},
                "late": {"queueType": "SQS", "nameSource": {"envVar": "LATE"}, "fallbackName": "late.fifo"}
            }),
            None,
        );
        let spec = template(json!([{"name": "main", "env": [
            {"name": "ORDERS", "value": "orders"},
            {"name": "MAIL", "value": "https://sqs.eu-west-1.amazonaws.com/1/mail"}
        ]}]));
        let planned = sqs_plans(&reg, Some(&spec));
        assert_eq!(planned.problems, Vec::<String>::new());
        let got: Vec<_> = planned
            .splits
            .iter()
            .map(|p| (p.queue_id.as_str(), p.original.as_str(), p.secret.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("late", "late.fifo", ""),
                ("mail", "https://sqs.eu-west-1.amazonaws.com/1/mail", "")
            ]
        );
        let status = sqs_status(&planned.splits);
        assert!(status.rmq_details.is_none());
        assert_eq!(
            status.sqs_details.unwrap().queue_names["late"].output_name,
            "late-mirrord-output.fifo"
        );
        assert_eq!(rmq_plans(&reg, Some(&spec)).splits.len(), 1);
        // A registry without SQS queues asks for nothing and reports nothing for SQS.
        let rmq_only = registry(
            json!({"orders": {"queueType": "RMQ", "clusterProperties": "rmq", "nameSource": {"envVar": "ORDERS"}}}),
            None,
        );
        assert_eq!(sqs_plans(&rmq_only, None), Planned::default());
    }

    #[test]
    fn same_original_on_same_secret_is_one_splitter() {
        let reg = registry(
            json!({
                "a": {"queueType": "RMQ", "clusterProperties": "rmq", "nameSource": {"envVar": "A"}},
                "b": {"queueType": "RMQ", "clusterProperties": "rmq", "nameSource": {"envVar": "B"}}
            }),
            None,
        );
        let spec = template(json!([{"name": "main", "env": [
            {"name": "A", "value": "same"}, {"name": "B", "value": "same"}
        ]}]));
        let planned = rmq_plans(&reg, Some(&spec));
        assert_eq!(planned.splits.len(), 2);
        assert_eq!(
            SplitKey::of(&planned.splits[0]),
            SplitKey::of(&planned.splits[1])
        );
    }
}
