//! The `policies.mirrord.metalbear.co/v1alpha` and `profiles.mirrord.metalbear.co/v1alpha` custom
//! resources (operator-api.md §8), drop-in with the manifests mirrord users already have. The chart's
//! copy (`charts/mirrord-operator/files/policies-crds.json`) is generated from these types and checked by
//! `tests/policies.rs` (`BLESS=1` rewrites it).

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const POLICY_GROUP: &str = "policies.mirrord.metalbear.co";
pub const PROFILE_GROUP: &str = "profiles.mirrord.metalbear.co";
pub const VERSION: &str = "v1alpha";

/// What a policy forbids outright.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum BlockedFeature {
    /// Any incoming-traffic steal.
    Steal,
    /// A steal without an HTTP filter (all traffic of the port).
    StealWithoutFilter,
    /// Incoming-traffic mirroring.
    Mirror,
    /// Scaling the original workload down for a copy target. Accepted, not applicable here: this
    /// operator never scales workloads.
    CopyTargetScaleDown,
}

impl BlockedFeature {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockedFeature::Steal => "steal",
            BlockedFeature::StealWithoutFilter => "steal-without-filter",
            BlockedFeature::Mirror => "mirror",
            BlockedFeature::CopyTargetScaleDown => "copy-target-scale-down",
        }
    }
}

/// A Kubernetes label selector (own type: k8s-openapi's derives no JSON schema here).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// `spec.env`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EnvPolicy {
    /// Names (globs with `*` and `?`) of variables never handed to a session.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// `spec.fs`: path regexes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FsPolicy {
    /// Opened on the target read-only; a write open is refused.
    #[serde(default)]
    pub read_only: Vec<String>,
    /// Never opened on the target: the session must use its local file.
    #[serde(default)]
    pub local: Vec<String>,
    /// Answered as missing.
    #[serde(default)]
    pub not_found: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<IncomingPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outgoing: Option<OutgoingPolicy>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IncomingPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_filter: Option<HttpFilterPolicy>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpFilterPolicy {
    /// A regex the session's header filter must match; implies a steal needs a filter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_filter: Option<String>,
}

/// `spec.network.outgoing`: no rules means everything is allowed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutgoingPolicy {
    /// When not empty, only destinations matching one of these rules are allowed.
    #[serde(default)]
    pub allow: Vec<OutgoingRule>,
    /// A destination matching one of these rules is always refused.
    #[serde(default)]
    pub block: Vec<OutgoingRule>,
}

/// One destination pattern; every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutgoingRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
    /// A regex over the host name, matched through the session's own DNS answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Empty means any port and protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct IpBlock {
    /// `a.b.c.d/n` or an IPv6 CIDR.
    pub cidr: String,
    /// CIDRs inside `cidr` that the rule does not cover.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PortRule {
    #[serde(default)]
    pub protocol: Protocol,
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Protocol {
    #[default]
    TCP,
    UDP,
}

/// Declares a namespaced resource and its cluster-scoped twin with the same spec (serde
/// transparent), the same group, version and printer columns, so the two CRDs cannot drift apart.
/// The spec struct is written inside the call; `Age` is the last column of both.
macro_rules! namespaced_and_cluster {
    (
        group = $group:literal,
        namespaced = ($kind:literal, $plural:literal, $short:literal, $doc:literal),
        cluster = ($ckind:literal, $cplural:literal, $cshort:literal, $cdoc:literal),
        columns = $columns:tt,
        $(#[$cluster_meta:meta])*
        pub struct $cluster_spec:ident;
        $(#[$meta:meta])*
        pub struct $spec:ident $body:tt
    ) => {
        namespaced_and_cluster!(@resource ($group, $kind, $plural, $short, $doc, [namespaced]),
            $columns, $(#[$meta])* pub struct $spec $body);
        namespaced_and_cluster!(@resource ($group, $ckind, $cplural, $cshort, $cdoc, []),
            $columns, $(#[$cluster_meta])* #[serde(transparent)] pub struct $cluster_spec(pub $spec););
    };
    (
        @resource ($group:literal, $kind:literal, $plural:literal, $short:literal, $doc:literal,
            [$($scope:ident)?]),
        [$($column:literal),*],
        $(#[$meta:meta])*
        pub struct $name:ident $($rest:tt)+
    ) => {
        #[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[kube(
            group = $group,
            version = "v1alpha",
            kind = $kind,
            plural = $plural,
            shortname = $short,
            $($scope,)?
            doc = $doc,
            $(printcolumn = $column,)*
            printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
        )]
        $(#[$meta])*
        pub struct $name $($rest)+
    };
}

namespaced_and_cluster! {
group = "policies.mirrord.metalbear.co",
namespaced = ("MirrordPolicy", "mirrordpolicies", "mpol",
    "What mirrord sessions may do to targets in this namespace."),
cluster = ("MirrordClusterPolicy", "mirrordclusterpolicies", "mcpol",
    "What mirrord sessions may do to targets in every namespace."),
columns = [
    r#"{"name":"Target-Path","type":"string","jsonPath":".spec.targetPath"}"#,
    r#"{"name":"Block","type":"string","jsonPath":".spec.block"}"#
],
/// `MirrordClusterPolicy`: the same spec, for targets in every namespace.
pub struct MirrordClusterPolicySpec;
/// The spec shared by `MirrordPolicy` (applies to targets in its own namespace) and
/// `MirrordClusterPolicy` (every namespace).
#[serde(rename_all = "camelCase")]
pub struct MirrordPolicySpec {
    /// Features refused on matching targets.
    pub block: Vec<BlockedFeature>,
    /// Glob (`*`, `?`) over the target path (`deploy/x[/container/c]`); absent means every target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_path: Option<String>,
    /// Labels of the targeted workload (or pod) the policy applies to; absent means every target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Whether the policy also applies to copy targets.
    #[serde(default)]
    pub applies_to_copy_targets: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<EnvPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs: Option<FsPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkPolicy>,
    /// Sessions must name a profile.
    #[serde(default)]
    pub require_profile: bool,
    /// When set, sessions must name one of these profiles (`name` or `ns/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_allowlist: Option<Vec<String>>,
}
}

/// One change a profile makes to the CLI's local config (the CLI applies them; the operator only
/// checks the profile's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FeatureChange {
    IncomingMirror,
    IncomingSteal,
    IncomingOff,
    DnsRemote,
    DnsOff,
    OutgoingRemote,
    OutgoingOff,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FeatureAdjustment {
    pub change: FeatureChange,
}

namespaced_and_cluster! {
group = "profiles.mirrord.metalbear.co",
namespaced = ("MirrordProfile", "mirrordprofiles", "mprof",
    "A named set of mirrord config changes, referenced as `ns/name` by the CLI's `profile`."),
cluster = ("MirrordClusterProfile", "mirrordclusterprofiles", "mcprof",
    "A named set of mirrord config changes, referenced by name by the CLI's `profile`."),
columns = [],
pub struct MirrordClusterProfileSpec;
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrordProfileSpec {
    #[serde(default)]
    pub feature_adjustments: Vec<FeatureAdjustment>,
}
}

/// The four CRDs as the chart installs them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        MirrordPolicy::crd(),
        MirrordClusterPolicy::crd(),
        MirrordProfile::crd(),
        MirrordClusterProfile::crd(),
    ]
}
