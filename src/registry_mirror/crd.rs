//! The `k8s.osp.tech/v1` `RegistryMirror` custom resource (cluster-scoped). Field names are the users'
//! contract from the original operator: existing manifests must keep working.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of one mirror.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "k8s.osp.tech",
    version = "v1",
    kind = "RegistryMirror",
    plural = "registrymirrors",
    doc = "A pull-through cache of one container registry, with every node's containerd pointed at it.",
    shortname = "regmirror",
    status = "RegistryMirrorStatus",
    printcolumn = r#"{"name":"Upstream","type":"string","jsonPath":".spec.upstreamUrl"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Endpoint","type":"string","jsonPath":".status.endpoint"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RegistryMirrorSpec {
    /// The registry to mirror: a host with an optional port (`quay.example.com`, `registry:5000`),
    /// optionally prefixed with `https://` (the default) or `http://`.
    pub upstream_url: String,
    /// Name of a Secret in the operator's namespace with `username` and `password` keys, sent to the
    /// upstream as HTTP basic authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
    /// PersistentVolumeClaim template (`{metadata, spec}`) of the cache volume `image-store`. Missing
    /// fields default to ReadWriteOnce and 20Gi; the cache may fill about 80 % of the requested size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub volume_claim_template: Option<serde_json::Value>,
}

/// Observed state, written by the controller.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistryMirrorStatus {
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`: the children match the spec (False with a reason while the input is invalid).
    #[serde(default)]
    pub conditions: Vec<MirrorCondition>,
    /// Where nodes reach the mirror: `https://<service>.<namespace>.svc:443`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Cluster IP of the mirror's Service, which the node agents write into containerd's hosts.toml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<String>,
    /// Ready replicas of the cache StatefulSet, as last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
}

/// A condition in the usual Kubernetes shape (own type: k8s-openapi's has no JSON schema here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirrorCondition {
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    pub reason: String,
    #[serde(default)]
    pub message: String,
    /// RFC 3339; kept while `status` stays the same.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// The CRD as installed by the chart (`charts/mirrord-operator/files/registry-mirror-crd.json` is
/// checked against it by `tests/registry_mirror_render.rs`). Cluster-scoped: no `namespaced` above.
/// The status schema carries no `default`s: only the controller writes it, and Kubernetes 1.20 rejects
/// `default: ""` inside the conditions' items.
pub fn crd() -> CustomResourceDefinition {
    fn strip_defaults(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                map.remove("default");
                map.values_mut().for_each(strip_defaults);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip_defaults),
            _ => {}
        }
    }
    let mut crd = <RegistryMirror as kube::CustomResourceExt>::crd();
    for version in &mut crd.spec.versions {
        let status = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
            .and_then(|s| s.properties.as_mut())
            .and_then(|p| p.get_mut("status"));
        if let Some(status) = status {
            let mut json = serde_json::to_value(&*status).expect("a schema serializes");
            strip_defaults(&mut json);
            *status = serde_json::from_value(json).expect("a schema without defaults is a schema");
        }
    }
    crd
}
