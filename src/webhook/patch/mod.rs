//! Pure patch builder: pod + namespace defaults + injector config -> RFC 6902 patch or a skip reason.
//!
//! No I/O, no clock, no Kubernetes client: the same inputs always give the same bytes, so dry-run,
//! reinvocation and golden fixtures are safe. The contract is `injection.md`; choices made here:
//!
//! - Skips are checked in this order: excluded namespace (the request's, else the pod's), no
//!   containers, already injected, opted out, host network, Windows pod (an addition to the
//!   contract: injecting would get the pod rejected).
//! - Knobs: pod annotation, else namespace annotation, else operator default; an invalid value is
//!   skipped with a warning (at most 256 characters, value quoted and shortened). A request above its
//!   limit would be refused by the apiserver: the value from the more specific source wins and the
//!   other is moved to it (on a tie the limit wins).
//! - Under an enforced Pod Security level other than `privileged`, modes needing a capability fall
//!   back (redirect iptables -> off, env/fs proc -> spec/volumes) so the pod is not rejected.
//! - env/fs proc: the agent gets `MIRRORD_AGENT_TARGET_MATCH`, fingerprints (command, args, env
//!   names no other container declares) of the target and of the other long-running containers,
//!   to find the target's process in the shared PID namespace.
//! - The agent runs as uid 0 exactly when it adds a capability (non-root users do not get added
//!   capabilities), otherwise as 65532 with `runAsNonRoot`.
//! - env=spec copies follow the kubelet's expansion rules: a `$(NAME)` is rewritten to the prefixed
//!   copy when NAME is declared earlier in `env`, or may come from `envFrom` (whose copies carry the
//!   prefix too); `$$` escapes and service-link names are kept. Gap: a reference to a service
//!   link's `<SVC>_PORT*` variable in a container that has `envFrom` is rewritten and then unresolved.
//! - Only the pod fields the patch reads are parsed ([`PodView`]); the target's `env`, `envFrom` and
//!   `volumeMounts` entries are k8s-openapi types, so their fields newer than its API version are not
//!   copied.

mod container;
mod knobs;
mod quantity;
mod view;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    ProjectedVolumeSource, ServiceAccountTokenProjection, Volume, VolumeProjection,
};
use serde::{Serialize, ser::SerializeStruct};
use serde_json::{Value, json};

pub use container::{AgentContainer, NON_ROOT_UID, PROXY_CONTAINERS};
pub use knobs::{
    AgentDefaults, DefaultsError, EnvMode, FsMode, ImageError, Knob, LogLevel, Redirect,
    UnknownValue, validate_image,
};
pub use quantity::{Quantity, QuantityError};
pub use view::{
    ContainerView, MetadataView, OsView, OwnerView, PodView, PortView, SpecView, VolumeView,
};

pub const AGENT_CONTAINER_NAME: &str = "mirrord-agent";
pub const STATUS_ANNOTATION: &str = "agent.mirrord.metalbear.co/status";
pub const INJECT_LABEL: &str = "mirrord.metalbear.co/inject";
pub const KNOB_PREFIX: &str = "agent.mirrord.metalbear.co/";
pub const NAMESPACE_LABEL: &str = "mirrord-injection";
/// Namespace label of Pod Security Admission naming the enforced level.
pub const POD_SECURITY_ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";
/// Prefix of the target's env copies on the agent (the agent strips it to answer GetEnvVars).
pub const TARGET_ENV_PREFIX: &str = "MIRRORD_TARGET_ENV_";
/// Audience of the agent's projected ServiceAccount token, checked by the coordinator's TokenReview.
pub const TOKEN_AUDIENCE: &str = "mirrord-operator";
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3600;
pub const TOKEN_VOLUME_NAME: &str = "mirrord-agent-token";
pub const TOKEN_DIR: &str = "/var/run/secrets/mirrord.metalbear.co";
pub const TOKEN_PATH: &str = "/var/run/secrets/mirrord.metalbear.co/token";
/// Where the target's volumes appear, read-only, inside the agent (fs=volumes).
pub const TARGET_ROOT: &str = "/mirrord/target";

/// Operator-wide injection settings, resolved by the caller from flags and the server version.
#[derive(Debug, Clone)]
pub struct InjectorConfig {
    pub agent_image: String,
    pub native_sidecar: bool,
    pub defaults: AgentDefaults,
    pub coordinator_url: String,
    pub coordinator_ca_bundle: Option<String>,
    /// Dedicated runAsGroup: the agent's own traffic is exempted from its redirect rules by gid.
    pub agent_group_id: i64,
    pub excluded_namespaces: BTreeSet<String>,
    pub operator_version: String,
}

/// What the admission request tells us besides the pod.
#[derive(Debug, Clone, Copy)]
pub struct PodContext<'a> {
    /// `AdmissionRequest.namespace` (a pod being created may carry an empty `metadata.namespace`).
    pub namespace: &'a str,
    /// The namespace's annotations: knob values there are the namespace's defaults.
    pub namespace_annotations: Option<&'a BTreeMap<String, String>>,
    /// The namespace's labels: an enforced Pod Security level limits what the agent may ask for.
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision<'a> {
    Inject {
        patch: Vec<PatchOp<'a>>,
        /// Admission warnings: invalid knobs and their fallbacks, degraded features.
        warnings: Vec<String>,
        /// Knob names (as in the annotation key) whose value was rejected, once each.
        invalid_knobs: Vec<&'static str>,
    },
    Skip(SkipReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    AlreadyInjected,
    HostNetwork,
    OptedOut,
    ExcludedNamespace,
    NoContainers,
    /// `spec.os.name: windows`: the agent is a Linux program, and the apiserver rejects Linux-only
    /// securityContext fields (runAsGroup, capabilities, seccomp) on Windows pods.
    WindowsPod,
}

impl SkipReason {
    /// Metric label value.
    pub fn as_label(&self) -> &'static str {
        match self {
            SkipReason::AlreadyInjected => "already-injected",
            SkipReason::HostNetwork => "host-network",
            SkipReason::OptedOut => "opted-out",
            SkipReason::ExcludedNamespace => "excluded-namespace",
            SkipReason::NoContainers => "no-containers",
            SkipReason::WindowsPod => "windows-pod",
        }
    }

    /// The admission warning shown to whoever created the pod.
    pub fn warning(&self) -> String {
        let why = match self {
            SkipReason::AlreadyInjected => format!("the pod already has the {AGENT_CONTAINER_NAME} sidecar"),
            SkipReason::HostNetwork => {
                "the pod uses hostNetwork, where the agent's redirect rules would affect the whole node".to_owned()
            }
            SkipReason::OptedOut => format!("the pod is labelled {INJECT_LABEL}=false"),
            SkipReason::ExcludedNamespace => "the namespace is excluded from injection".to_owned(),
            SkipReason::NoContainers => "the pod has no containers".to_owned(),
            SkipReason::WindowsPod => "the pod runs on Windows; the agent is Linux-only".to_owned(),
        };
        format!("{AGENT_CONTAINER_NAME} not injected: {why}")
    }
}

/// The status annotation's value. Field order is the serialization order; maps are sorted.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status<'a> {
    version: &'a str,
    containers: Vec<&'a str>,
    init_containers: Vec<&'a str>,
    volumes: Vec<&'a str>,
    knobs: BTreeMap<&'static str, std::borrow::Cow<'a, str>>,
}

/// Decides whether to inject the agent into `pod` and, if so, builds the patch.
pub fn decide<'a>(pod: &'a PodView, ctx: &PodContext<'_>, cfg: &'a InjectorConfig) -> Decision<'a> {
    let decision = decide_inner(pod, ctx, cfg);
    match &decision {
        Decision::Skip(reason) => tracing::debug!(reason = reason.as_label(), "injection skipped"),
        Decision::Inject {
            patch,
            invalid_knobs,
            ..
        } => tracing::debug!(
            operations = patch.len(),
            ?invalid_knobs,
            "injection patch built"
        ),
    }
    decision
}

fn decide_inner<'a>(
    pod: &'a PodView,
    ctx: &PodContext<'_>,
    cfg: &'a InjectorConfig,
) -> Decision<'a> {
    let metadata = pod.metadata.as_ref();
    let namespace = if ctx.namespace.is_empty() {
        metadata
            .and_then(|m| m.namespace.as_deref())
            .unwrap_or_default()
    } else {
        ctx.namespace
    };
    if cfg.excluded_namespaces.contains(namespace) {
        return Decision::Skip(SkipReason::ExcludedNamespace);
    }
    let Some(spec) = pod.spec.as_ref().filter(|s| !s.containers.is_empty()) else {
        return Decision::Skip(SkipReason::NoContainers);
    };
    let annotations = metadata.and_then(|m| m.annotations.as_ref());
    let has_agent = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == AGENT_CONTAINER_NAME);
    if has_agent || annotations.is_some_and(|a| a.contains_key(STATUS_ANNOTATION)) {
        return Decision::Skip(SkipReason::AlreadyInjected);
    }
    let labels = metadata.and_then(|m| m.labels.as_ref());
    if labels
        .and_then(|l| l.get(INJECT_LABEL))
        .is_some_and(|v| v == "false")
    {
        return Decision::Skip(SkipReason::OptedOut);
    }
    if spec.host_network == Some(true) {
        return Decision::Skip(SkipReason::HostNetwork);
    }
    if spec.os.as_ref().is_some_and(|os| os.name == "windows") {
        return Decision::Skip(SkipReason::WindowsPod);
    }

    let container_names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let mut report = knobs::Report::default();
    let mut knobs = knobs::resolve(
        &knobs::Annotations {
            pod: annotations,
            namespace: ctx.namespace_annotations,
        },
        &knobs::Fallbacks {
            defaults: &cfg.defaults,
            image: &cfg.agent_image,
            native_sidecar: cfg.native_sidecar,
            containers: &container_names,
            auto_target: container::auto_target(&spec.containers),
        },
        &mut report,
    );
    let mut warnings = report.warnings;
    if let Some(level) = ctx
        .namespace_labels
        .and_then(|l| l.get(POD_SECURITY_ENFORCE_LABEL))
    {
        knobs::fit_pod_security(&mut knobs, level, &mut warnings);
    }
    let target = spec
        .containers
        .iter()
        .find(|c| c.name == knobs.target_container)
        .unwrap_or(&spec.containers[0]);

    // Containers that run next to the target: the other regular ones and native sidecars.
    let neighbours: Vec<&ContainerView> = spec
        .containers
        .iter()
        .filter(|c| !std::ptr::eq(*c, target))
        .chain(
            spec.init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always")),
        )
        .collect();

    let existing_volumes: BTreeSet<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let token_volume = unique_name(TOKEN_VOLUME_NAME, &existing_volumes);
    let agent = container::agent_container(
        container::AgentInputs {
            knobs,
            target,
            neighbours: &neighbours,
            token_volume: token_volume.clone(),
        },
        cfg,
        &mut warnings,
    );
    let knobs = agent.knobs();

    if !knobs.native_sidecar && owned_by_job(pod) {
        warnings.push(format!(
            "{AGENT_CONTAINER_NAME} injected as a regular container into a Job's pod: the Job will not complete while the agent runs (native sidecars need Kubernetes 1.29+)"
        ));
    }

    let status = Status {
        version: &cfg.operator_version,
        containers: if knobs.native_sidecar {
            vec![]
        } else {
            vec![AGENT_CONTAINER_NAME]
        },
        init_containers: if knobs.native_sidecar {
            vec![AGENT_CONTAINER_NAME]
        } else {
            vec![]
        },
        volumes: vec![&token_volume],
        knobs: knobs.as_map(),
    };
    let status = serde_json::to_string(&status).unwrap_or_default();

    let mut ops = Vec::new();
    // A pod decoded without metadata cannot tell an absent `metadata` from an empty one; adding the
    // whole object is right for both.
    if metadata.is_none() {
        ops.push(add(
            &["metadata"],
            PatchValue::Json(json!({ "annotations": { STATUS_ANNOTATION: status } })),
        ));
    } else if annotations.is_none() {
        ops.push(add(
            &["metadata", "annotations"],
            PatchValue::Json(json!({ STATUS_ANNOTATION: status })),
        ));
    } else {
        ops.push(add(
            &["metadata", "annotations", STATUS_ANNOTATION],
            PatchValue::Json(Value::String(status)),
        ));
    }
    // Reading another container's /proc needs a shared PID namespace. Trade-off: every container of
    // the pod then sees the others' processes (and their /proc/<pid>/environ with SYS_PTRACE), and
    // the pause process becomes PID 1, so an app relying on being PID 1 for signal handling changes.
    // With hostPID the processes are visible already, and the apiserver refuses both together.
    if (knobs.env == EnvMode::Proc || knobs.fs == FsMode::Proc)
        && spec.share_process_namespace != Some(true)
        && spec.host_pid != Some(true)
    {
        if spec.share_process_namespace == Some(false) {
            warnings.push(
                "shareProcessNamespace: false is overridden to true: the agent reads the target through /proc (env or fs knob is proc)"
                    .to_owned(),
            );
        }
        ops.push(add(
            &["spec", "shareProcessNamespace"],
            PatchValue::Json(Value::Bool(true)),
        ));
    }
    let volume = token_volume_source(&token_volume);
    ops.push(match spec.volumes {
        Some(_) => add(
            &["spec", "volumes", "-"],
            PatchValue::Volume(Box::new(volume)),
        ),
        None => add(&["spec", "volumes"], PatchValue::Volumes(vec![volume])),
    });
    ops.push(match (knobs.native_sidecar, &spec.init_containers) {
        (true, Some(_)) => add(
            &["spec", "initContainers", "0"],
            PatchValue::Agent(Box::new(agent)),
        ),
        (true, None) => add(&["spec", "initContainers"], PatchValue::Agents(vec![agent])),
        (false, _) => add(
            &["spec", "containers", "-"],
            PatchValue::Agent(Box::new(agent)),
        ),
    });

    Decision::Inject {
        patch: ops,
        warnings,
        invalid_knobs: report.invalid_knobs,
    }
}

fn owned_by_job(pod: &PodView) -> bool {
    pod.metadata
        .iter()
        .flat_map(|m| m.owner_references.iter().flatten())
        .any(|o| o.kind == "Job" && o.api_version.starts_with("batch/"))
}

/// `base`, or `base-1`, `base-2`, ... : the first name not in `taken`.
fn unique_name(base: &str, taken: &BTreeSet<&str>) -> String {
    let mut name = base.to_owned();
    let mut n = 0u64;
    while taken.contains(name.as_str()) {
        n += 1;
        name = format!("{base}-{n}");
    }
    name
}

fn token_volume_source(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(TOKEN_AUDIENCE.to_owned()),
                    expiration_seconds: Some(TOKEN_EXPIRATION_SECONDS),
                    path: "token".to_owned(),
                }),
                ..VolumeProjection::default()
            }]),
            ..ProjectedVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// RFC 6901 reference token escaping (`~` → `~0`, `/` → `~1`), appended to `out`.
fn push_escaped_token(out: &mut String, token: &str) {
    for c in token.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
}

/// One RFC 6902 `add` operation. The webhook only ever adds, and serializes the typed value straight
/// into the response instead of through a `serde_json::Value` tree (most of the patch's cost).
#[derive(Debug, Clone, PartialEq)]
pub struct PatchOp<'a> {
    /// An RFC 6901 JSON Pointer, tokens escaped.
    pub path: String,
    pub value: PatchValue<'a>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PatchValue<'a> {
    Agent(Box<AgentContainer<'a>>),
    Agents(Vec<AgentContainer<'a>>),
    Volume(Box<Volume>),
    Volumes(Vec<Volume>),
    Json(Value),
}

impl Serialize for PatchOp<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut op = serializer.serialize_struct("PatchOp", 3)?;
        op.serialize_field("op", "add")?;
        op.serialize_field("path", &self.path)?;
        op.serialize_field("value", &self.value)?;
        op.end()
    }
}

/// The patch as the JSON text the API server applies.
pub fn to_json(patch: &[PatchOp<'_>]) -> Result<Vec<u8>, serde_json::Error> {
    // Room for the agent container with a typical target's env and mount copies (about 6 KB).
    let mut out = Vec::with_capacity(8192);
    serde_json::to_writer(&mut out, patch)?;
    Ok(out)
}

fn add<'a>(tokens: &[&str], value: PatchValue<'a>) -> PatchOp<'a> {
    let mut path = String::with_capacity(64);
    for token in tokens {
        path.push('/');
        push_escaped_token(&mut path, token);
    }
    PatchOp { path, value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_pointer_tokens() {
        let escape_token = |token: &str| {
            let mut out = String::new();
            push_escaped_token(&mut out, token);
            out
        };
        assert_eq!(
            escape_token("agent.mirrord.metalbear.co/status"),
            "agent.mirrord.metalbear.co~1status"
        );
        assert_eq!(escape_token("a~b"), "a~0b");
        assert_eq!(escape_token("~1"), "~01");
        assert_eq!(escape_token("/~"), "~1~0");
        assert_eq!(
            add(
                &["metadata", "annotations", STATUS_ANNOTATION],
                PatchValue::Json(Value::Null)
            )
            .path,
            "/metadata/annotations/agent.mirrord.metalbear.co~1status"
        );
        // The escaped pointer addresses exactly the key it was built from, read by another library.
        let mut doc = json!({ "m": { "a/b~c": 1, "a": { "b~c": 2 } } });
        let op = add(&["m", "a/b~c"], PatchValue::Json(json!(3)));
        let op: json_patch::PatchOperation =
            serde_json::from_value(serde_json::to_value(op).unwrap()).unwrap();
        json_patch::patch(&mut doc, &[op]).unwrap();
        assert_eq!(doc, json!({ "m": { "a/b~c": 3, "a": { "b~c": 2 } } }));
    }

    #[test]
    fn unique_names_get_a_suffix() {
        let taken = BTreeSet::from(["mirrord-agent-token", "mirrord-agent-token-1"]);
        assert_eq!(
            unique_name("mirrord-agent-token", &taken),
            "mirrord-agent-token-2"
        );
        assert_eq!(unique_name("other", &taken), "other");
    }

    #[test]
    fn skip_reasons_have_labels_and_sentences() {
        for reason in [
            SkipReason::AlreadyInjected,
            SkipReason::HostNetwork,
            SkipReason::OptedOut,
            SkipReason::ExcludedNamespace,
            SkipReason::NoContainers,
            SkipReason::WindowsPod,
        ] {
            assert!(
                reason
                    .as_label()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-')
            );
            assert!(reason.warning().starts_with("mirrord-agent not injected: "));
        }
    }
}
