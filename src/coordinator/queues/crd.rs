//! The `queues.mirrord.metalbear.co/v1alpha` custom resources, drop-in with the YAML mirrord users
//! already have (operator-api.md §7.5). Their OpenAPI schemas are written by hand in the chart
//! (`templates/crds-queues.yaml`): these types derive no schema, so a field added here must be added
//! there too (`tests/queues_crds.rs` checks names, scope and printer columns against the chart).

use std::collections::BTreeMap;

use kube::CustomResource;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "queues.mirrord.metalbear.co";
pub const VERSION: &str = "v1alpha";

/// Which workload's pods consume the registered queues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueConsumer {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub workload_type: WorkloadType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadType {
    Deployment,
    Rollout,
}

impl WorkloadType {
    pub fn as_str(&self) -> &'static str {
        match self {
            WorkloadType::Deployment => "Deployment",
            WorkloadType::Rollout => "Rollout",
        }
    }
}

/// Where the consumer's container reads a queue's (or exchange's) name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NameSource {
    /// The value of this env var is the name.
    EnvVar(String),
    /// Every env var whose *name* matches this regex holds a name.
    RegexPattern(String),
}

/// `MirrordWorkloadQueueRegistry`: the admin's list of queues a workload consumes, by id.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "queues.mirrord.metalbear.co",
    version = "v1alpha",
    kind = "MirrordWorkloadQueueRegistry",
    plural = "mirrordworkloadqueueregistries",
    shortname = "qs",
    namespaced,
    status = "QueueRegistryStatus",
    schema = "disabled",
    printcolumn = r#"{"name":"Consumer","type":"string","jsonPath":".spec.consumer.name"}"#,
    printcolumn = r#"{"name":"Kind","type":"string","jsonPath":".spec.consumer.workloadType"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct QueueRegistrySpec {
    pub queues: BTreeMap<String, SplitQueue>,
    pub consumer: QueueConsumer,
    /// Seconds; mirrord's operator waits this long for a restart. Kept for drop-in YAML only: this
    /// operator never restarts the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_restart_timeout: Option<u32>,
}

/// One registered queue, tagged by `queueType`. A type this operator does not know parses as
/// [`SplitQueue::Unknown`] so that a registry written for a newer mirrord still loads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "queueType")]
pub enum SplitQueue {
    #[serde(rename = "SQS")]
    Sqs(SqsQueueDetails),
    #[serde(rename = "RMQ")]
    Rmq(RmqQueueDetails),
    #[serde(other)]
    Unknown,
}

impl SplitQueue {
    pub fn name_source(&self) -> Option<&NameSource> {
        match self {
            SplitQueue::Sqs(q) => Some(&q.name_source),
            SplitQueue::Rmq(q) => Some(&q.name_source),
            SplitQueue::Unknown => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SqsQueueDetails {
    pub name_source: NameSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names_from_json_map: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sns: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_event: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RmqQueueDetails {
    /// Name of a Secret in the registry's namespace holding the broker's AMQP URI (key `uri`).
    pub cluster_properties: String,
    pub name_source: NameSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names_from_json_map: Option<bool>,
    /// Queue arguments used when declaring the output and session queues (kept as given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_properties: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_source: Option<NameSource>,
}

/// An original queue name and the output queue the workload reads instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueNames {
    pub original_name: String,
    pub output_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueDetails {
    #[serde(default)]
    pub queue_names: BTreeMap<String, QueueNames>,
    #[serde(default)]
    pub direct_env_vars: BTreeMap<String, String>,
    #[serde(default)]
    pub env_updates: BTreeMap<String, QueueNames>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueRegistryStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqs_details: Option<QueueDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rmq_details: Option<QueueDetails>,
}

/// What a queue session has set up: names per queue id and env changes for the local process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionDetails {
    #[serde(default)]
    pub queue_names: BTreeMap<String, QueueNames>,
    #[serde(default)]
    pub env_updates: BTreeMap<String, QueueNames>,
}

/// The externally tagged session status of operator-api.md §7.5.2 (note the snake_case
/// `start_time_utc` inside camelCase objects: that is the shape the CLI parses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueueSessionStatus {
    Starting {
        start_time_utc: String,
    },
    RegisteringFilters(SessionDetails),
    Ready(SessionDetails),
    StartError {
        #[serde(rename = "statusCode")]
        status_code: u16,
        reason: String,
    },
    CleanupError {
        error: SessionCleanupError,
        details: Option<SessionDetails>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionCleanupError {
    pub status_code: u16,
    pub reason: String,
}

/// `MirrordRMQSession`: one developer's RabbitMQ split, cluster-scoped (its namespace in the spec).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "queues.mirrord.metalbear.co",
    version = "v1alpha",
    kind = "MirrordRMQSession",
    plural = "mirrordrmqsessions",
    status = "QueueSessionStatus",
    schema = "disabled",
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".spec.namespace"}"#,
    printcolumn = r#"{"name":"Consumer","type":"string","jsonPath":".spec.queueConsumer.name"}"#,
    printcolumn = r#"{"name":"Session","type":"string","jsonPath":".spec.sessionId"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RmqSessionSpec {
    pub namespace: String,
    /// queue id -> {header: regex}
    pub queue_filters: BTreeMap<String, BTreeMap<String, String>>,
    pub queue_consumer: QueueConsumer,
    /// The session id as lowercase hex of the u64 the CLI knows.
    pub session_id: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub output_queue_names: BTreeMap<String, String>,
}

/// `MirrordSQSSession`: one developer's SQS split.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "queues.mirrord.metalbear.co",
    version = "v1alpha",
    kind = "MirrordSQSSession",
    plural = "mirrordsqssessions",
    namespaced,
    status = "QueueSessionStatus",
    schema = "disabled",
    printcolumn = r#"{"name":"Consumer","type":"string","jsonPath":".spec.queueConsumer.name"}"#,
    printcolumn = r#"{"name":"Session","type":"string","jsonPath":".spec.sessionId"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SqsSessionSpec {
    /// queue id -> {attribute: regex}
    pub queue_filters: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub queue_jq_filters: BTreeMap<String, String>,
    pub queue_consumer: QueueConsumer,
    pub session_id: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub output_queue_names: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn registry_parses_mirrord_yaml_shapes() {
        let registry: MirrordWorkloadQueueRegistry = serde_json::from_value(json!({
            "apiVersion": "queues.mirrord.metalbear.co/v1alpha",
            "kind": "MirrordWorkloadQueueRegistry",
            "metadata": {"name": "api-queues", "namespace": "staging"},
            "spec": {
                "queues": {
                    "orders": {
                        "queueType": "RMQ",
                        "clusterProperties": "rmq-props",
                        "nameSource": {"envVar": "ORDERS_QUEUE"},
                        "fallbackName": "orders",
                        "exchangeSource": {"regexPattern": "^EXCHANGE_"},
                        "queueProperties": {"x-queue-type": "classic"}
                    },
                    "jobs": {
                        "queueType": "SQS",
                        "nameSource": {"regexPattern": "_QUEUE_NAME$"},
                        "tags": {"team": "a"},
                        "s3Event": true
                    },
                    "later": {"queueType": "Kafka", "whatever": 1}
                },
                "consumer": {"name": "api", "container": "main", "workloadType": "Deployment"},
                "workloadRestartTimeout": 60
            }
        }))
        .unwrap();
        let spec = &registry.spec;
        let SplitQueue::Rmq(rmq) = &spec.queues["orders"] else {
            panic!("orders is RMQ");
        };
        assert_eq!(rmq.cluster_properties, "rmq-props");
        assert_eq!(rmq.name_source, NameSource::EnvVar("ORDERS_QUEUE".into()));
        assert_eq!(
            rmq.exchange_source,
            Some(NameSource::RegexPattern("^EXCHANGE_".into()))
        );
        let SplitQueue::Sqs(sqs) = &spec.queues["jobs"] else {
            panic!("jobs is SQS");
        };
        assert_eq!(sqs.s3_event, Some(true));
        assert_eq!(spec.queues["later"], SplitQueue::Unknown);
        assert_eq!(spec.consumer.workload_type, WorkloadType::Deployment);
        // Round trip keeps the camelCase keys.
        let back = serde_json::to_value(&spec.queues["orders"]).unwrap();
        assert_eq!(back["clusterProperties"], "rmq-props");
        assert_eq!(back["queueType"], "RMQ");
    }

    #[test]
    fn session_status_is_externally_tagged_with_the_cli_keys() {
        let starting = QueueSessionStatus::Starting {
            start_time_utc: "2026-12-05T09:00:00Z".into(),
        };
        assert_eq!(
            serde_json::to_value(&starting).unwrap(),
            json!({"Starting": {"start_time_utc": "2026-12-05T09:00:00Z"}})
        );
        let error = QueueSessionStatus::StartError {
            status_code: 409,
            reason: "overlap".into(),
        };
        assert_eq!(
            serde_json::to_value(&error).unwrap(),
            json!({"StartError": {"statusCode": 409, "reason": "overlap"}})
        );
        let ready: QueueSessionStatus = serde_json::from_value(json!({"Ready": {
            "queueNames": {"orders": {"originalName": "orders", "outputName": "orders-out"}},
            "envUpdates": {}
        }}))
        .unwrap();
        let QueueSessionStatus::Ready(details) = ready else {
            panic!("ready")
        };
        assert_eq!(details.queue_names["orders"].output_name, "orders-out");
    }

    #[test]
    fn rmq_session_is_cluster_scoped_and_sqs_namespaced() {
        use kube::Resource;
        assert_eq!(MirrordRMQSession::plural(&()), "mirrordrmqsessions");
        assert_eq!(MirrordSQSSession::plural(&()), "mirrordsqssessions");
        assert_eq!(
            MirrordWorkloadQueueRegistry::api_version(&()),
            "queues.mirrord.metalbear.co/v1alpha"
        );
        let spec = RmqSessionSpec {
            namespace: "staging".into(),
            queue_filters: BTreeMap::from([(
                "orders".into(),
                BTreeMap::from([("tenant".into(), "^a$".into())]),
            )]),
            queue_consumer: QueueConsumer {
                name: "api".into(),
                container: None,
                workload_type: WorkloadType::Deployment,
            },
            session_id: "1f".into(),
            output_queue_names: BTreeMap::new(),
        };
        let value = serde_json::to_value(&spec).unwrap();
        assert!(value.get("outputQueueNames").is_none());
        assert_eq!(value["queueConsumer"]["workloadType"], "Deployment");
    }
}
