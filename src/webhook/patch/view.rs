//! The parts of a Pod the patch builder reads. Deserializing only these (everything else in the
//! object is skipped unparsed) costs a fraction of k8s-openapi's full `Pod`, which the webhook
//! would otherwise build and throw away on every admission request; it also means a field this
//! crate does not know, or a newer API shape of a field it never reads, cannot fail a review.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, VolumeMount};
use serde::Deserialize;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    /// `None` when the object has no `metadata` at all (the patch must then add the whole map).
    #[serde(default)]
    pub metadata: Option<MetadataView>,
    #[serde(default)]
    pub spec: Option<SpecView>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataView {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub generate_name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub owner_references: Option<Vec<OwnerView>>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerView {
    pub api_version: String,
    pub kind: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SpecView {
    pub containers: Vec<ContainerView>,
    #[serde(default)]
    pub init_containers: Option<Vec<ContainerView>>,
    #[serde(default)]
    pub volumes: Option<Vec<VolumeView>>,
    #[serde(default)]
    pub host_network: Option<bool>,
    #[serde(default, rename = "hostPID")]
    pub host_pid: Option<bool>,
    #[serde(default)]
    pub share_process_namespace: Option<bool>,
    #[serde(default)]
    pub os: Option<OsView>,
}

/// A container of the pod: what the agent copies from its target (env, mounts, ports), and what
/// tells containers' processes apart in proc modes (command, args, env names).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView {
    pub name: String,
    #[serde(default)]
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// `Always` on an init container makes it a native sidecar.
    #[serde(default)]
    pub restart_policy: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<EnvVar>>,
    #[serde(default)]
    pub env_from: Option<Vec<EnvFromSource>>,
    #[serde(default)]
    pub volume_mounts: Option<Vec<VolumeMount>>,
    #[serde(default)]
    pub ports: Option<Vec<PortView>>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortView {
    pub container_port: i32,
}

/// A volume: only the name matters here.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct VolumeView {
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct OsView {
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_patch_needs_and_skips_the_rest() {
        let pod: PodView = serde_json::from_str(
            r#"{"apiVersion":"v1","kind":"Pod",
                "metadata":{"generateName":"web-","labels":{"app":"web"},
                    "ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet","name":"web-1","uid":"u"}],
                    "managedFields":[{"manager":"x","fieldsV1":{"f:spec":{}}}]},
                "spec":{"containers":[{"name":"web","image":"nginx","ports":[{"containerPort":80,"protocol":"TCP"}],
                    "resources":{"limits":{"cpu":"1"}},"livenessProbe":{"httpGet":{"port":"http"}},
                    "futureField":{"anything":[1,2,3]}}],
                    "hostPID":true,"volumes":[{"name":"data","emptyDir":{}}],"os":{"name":"linux"}},
                "status":{"phase":"Pending"}}"#,
        )
        .unwrap();
        let metadata = pod.metadata.unwrap();
        assert_eq!(metadata.generate_name.as_deref(), Some("web-"));
        assert_eq!(metadata.owner_references.unwrap()[0].kind, "ReplicaSet");
        let spec = pod.spec.unwrap();
        assert_eq!(
            spec.containers[0].ports.as_ref().unwrap()[0].container_port,
            80
        );
        assert_eq!(spec.host_pid, Some(true));
        assert_eq!(spec.volumes.unwrap()[0].name, "data");
        assert_eq!(spec.os.unwrap().name, "linux");
    }

    #[test]
    fn wrong_types_in_read_fields_are_errors() {
        for bad in [
            r#"{"spec":{"containers":"web"}}"#,
            r#"{"spec":{"containers":[{"name":1}]}}"#,
            r#"{"metadata":{"annotations":{"a":1}}}"#,
            r#"{"spec":{"containers":[{"name":"a","env":[{"name":5}]}]}}"#,
        ] {
            assert!(serde_json::from_str::<PodView>(bad).is_err(), "{bad}");
        }
    }
}
