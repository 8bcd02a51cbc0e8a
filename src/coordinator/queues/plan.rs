//! Which splitters a registry asks for (pure): for each RMQ (or SQS) queue of a
//! `MirrordWorkloadQueueRegistry`, the original queue name read from the consumer Deployment's pod
//! template the same way admission reads it (`src/webhook/patch/queues.rs`), and the registry
//! status that records it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;

use super::crd::{
    MirrordWorkloadQueueRegistry, NameSource, QueueDetails, QueueNames, QueueRegistryStatus,
    SplitQueue,
};
use super::names;
use super::sqs_filter::Envelope;

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
    /// `namesFromJsonMap`: the key under which the env var's JSON object names this queue.
    pub json_key: Option<String>,
    /// `queueProperties`, as JSON text (kept comparable; converted to AMQP arguments at start).
    pub queue_properties: Option<String>,
    /// SQS: the registry's `tags`, `sns` and `s3Event` (empty for RabbitMQ).
    pub sqs: SqsOptions,
}

/// What an SQS registry queue adds to its split.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SqsOptions {
    pub tags: BTreeMap<String, String>,
    pub envelope: Envelope,
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
        let Some(of) = of_kind(queue) else {
            continue;
        };
        let plan = |env: &str, original: &str, json_key: Option<&str>| SplitPlan {
            namespace: namespace.clone(),
            registry: name.clone(),
            consumer: consumer.name.clone(),
            queue_id: queue_id.clone(),
            secret: of.secret.clone(),
            original: original.to_owned(),
            env: env.to_owned(),
            json_key: json_key.map(str::to_owned),
            queue_properties: of.queue_properties.clone(),
            sqs: of.sqs.clone(),
        };
        // One split per queue an env value names: the value itself, or each value of its JSON
        // object with `namesFromJsonMap`.
        let split_value = |out: &mut Planned, env: &str, value: &str| {
            if !of.json_map {
                if !names::is_derived(value) {
                    out.splits.push(plan(env, value, None));
                }
                return;
            }
            match names::json_map_names(value) {
                Some(queues) => out.splits.extend(
                    queues
                        .iter()
                        .filter(|(_, queue)| !names::is_derived(queue))
                        .map(|(key, queue)| plan(env, queue, Some(key))),
                ),
                None => out.problems.push(format!(
                    "queue {queue_id:?}: env {env:?} is not a JSON object of queue names (namesFromJsonMap)"
                )),
            }
        };
        let literal: Vec<_> = containers
            .iter()
            .flat_map(|c| c.env.iter().flatten())
            .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?)))
            .filter(|(_, value)| !value.is_empty())
            .collect();
        let before = out.splits.len();
        match of.name_source {
            NameSource::EnvVar(var) => {
                let mut found = false;
                for (env, value) in literal.iter().filter(|(env, _)| env == var) {
                    found = true;
                    split_value(&mut out, env, value);
                }
                if !found && let Some(fallback) = of.fallback_name {
                    split_value(&mut out, var, fallback);
                }
            }
            NameSource::RegexPattern(pattern) => match regex::Regex::new(pattern) {
                Ok(re) => {
                    for (env, value) in literal.iter().filter(|(env, _)| re.is_match(env)) {
                        split_value(&mut out, env, value);
                    }
                }
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

/// A registry queue's fields that planning reads, for either broker.
struct OfKind<'a> {
    name_source: &'a NameSource,
    fallback_name: Option<&'a str>,
    json_map: bool,
    secret: String,
    queue_properties: Option<String>,
    sqs: SqsOptions,
}

/// A queue of `kind`, or `None` for the other broker's.
fn of_kind(kind: QueueKind, queue: &SplitQueue) -> Option<OfKind<'_>> {
    match (kind, queue) {
        (QueueKind::Rmq, SplitQueue::Rmq(q)) => Some(OfKind {
            name_source: &q.name_source,
            fallback_name: q.fallback_name.as_deref(),
            json_map: q.names_from_json_map == Some(true),
            secret: q.cluster_properties.clone(),
            queue_properties: q.queue_properties.as_ref().map(|v| v.to_string()),
            sqs: SqsOptions::default(),
        }),
        (QueueKind::Sqs, SplitQueue::Sqs(q)) => Some(OfKind {
            name_source: &q.name_source,
            fallback_name: q.fallback_name.as_deref(),
            json_map: q.names_from_json_map == Some(true),
            secret: String::new(),
            queue_properties: None,
            sqs: SqsOptions {
                tags: q.tags.clone().unwrap_or_default(),
                envelope: Envelope {
                    sns: q.sns == Some(true),
                    s3_event: q.s3_event == Some(true),
                },
            },
        }),
        _ => None,
    }
}

/// The value of each split env var, given each split's queue name (original, output, or a
/// session's queue): the name itself, or with `namesFromJsonMap` the JSON object of all the
/// variable's keys.
pub fn env_values<'a>(
    named: impl IntoIterator<Item = (&'a SplitPlan, String)>,
) -> BTreeMap<String, String> {
    let mut values = BTreeMap::new();
    let mut maps: BTreeMap<&str, BTreeMap<&str, String>> = BTreeMap::new();
    for (plan, name) in named {
        match &plan.json_key {
            Some(key) => {
                maps.entry(&plan.env).or_default().insert(key, name);
            }
            None => {
                values.insert(plan.env.clone(), name);
            }
        }
    }
    for (env, map) in maps {
        values.insert(env.to_owned(), names::json_map_text(&map));
    }
    values
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
        details
            .queue_names
            .entry(split.queue_id.clone())
            .or_insert_with(|| QueueNames {
                original_name: split.original.clone(),
                output_name: split.output(),
            });
    }
    details.env_updates = env_updates(splits.iter().map(|s| (s, s.original.clone(), s.output())));
    details
}

/// Per env var: its value naming the originals and naming `to` (the registry's output queues, or
/// a session's queues).
pub fn env_updates<'a>(
    named: impl IntoIterator<Item = (&'a SplitPlan, String, String)> + Clone,
) -> BTreeMap<String, QueueNames> {
    let originals = env_values(
        named
            .clone()
            .into_iter()
            .map(|(p, original, _)| (p, original)),
    );
    let mut to = env_values(named.into_iter().map(|(p, _, to)| (p, to)));
    originals
        .into_iter()
        .map(|(env, original_name)| {
            let output_name = to.remove(&env).unwrap_or_default();
            (
                env,
                QueueNames {
                    original_name,
                    output_name,
                },
            )
        })
        .collect()
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
    fn json_maps_give_one_split_per_queue_and_sqs_options_ride_along() {
        let reg = registry(
            json!({
                "all": {"queueType": "SQS", "nameSource": {"envVar": "MAP"}, "namesFromJsonMap": true,
                    "sns": true, "tags": {"team": "a"}},
                "bad": {"queueType": "SQS", "nameSource": {"envVar": "NOT_A_MAP"}, "namesFromJsonMap": true}
            }),
            None,
        );
        let spec = template(json!([{"name": "main", "env": [
            {"name": "MAP", "value": r#"{"x": "orders", "y": "jobs", "z": "done-mirrord-output"}"#},
            {"name": "NOT_A_MAP", "value": "orders"}
        ]}]));
        let planned = sqs_plans(&reg, Some(&spec));
        assert_eq!(planned.problems.len(), 1, "{:?}", planned.problems);
        assert!(planned.problems[0].contains("NOT_A_MAP"));
        let got: Vec<_> = planned
            .splits
            .iter()
            .map(|p| (p.original.as_str(), p.json_key.as_deref()))
            .collect();
        assert_eq!(got, [("jobs", Some("y")), ("orders", Some("x"))]);
        let options = &planned.splits[0].sqs;
        assert!(options.envelope.sns && !options.envelope.s3_event);
        assert_eq!(options.tags["team"], "a");
        let values = env_values(planned.splits.iter().map(|p| (p, p.output())));
        assert_eq!(
            values["MAP"],
            r#"{"x":"orders-mirrord-output","y":"jobs-mirrord-output"}"#
        );
        // RMQ plans of the same registry: none, and no SQS options on RMQ queues.
        assert_eq!(rmq_plans(&reg, Some(&spec)), Planned::default());
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
