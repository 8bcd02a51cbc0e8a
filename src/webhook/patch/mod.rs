//! Pure patch builder: pod + namespace defaults + injector config -> RFC 6902 patch or a skip reason.
//!
//! No I/O, no clock, no Kubernetes client: the same inputs always give the same bytes, so dry-run,
//! reinvocation and golden fixtures are safe. The contract is `injection.md`; choices made here:
//!
//! - Skips are checked in this order: excluded namespace (the request's, else the pod's), no
//!   containers, already injected, opted out, host network, Windows pod (an addition to the
//!   contract: injecting would get the pod rejected), and, once the knobs are resolved, a Job's pod
//!   without native sidecars (another addition: a regular sidecar never exits, so the Job would never
//!   complete; on 1.20-1.28 servers Jobs run without the agent, with a warning saying why).
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
mod queues;
mod view;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::value::RawValue;

use super::json::{push_array, push_str, push_str_in_str, push_value};
use crate::coordinator::queues::crd::QueueRegistrySpec;

pub use crate::injection::{
    AGENT_CONTAINER_NAME, EnvMode, FsMode, LogLevel, Redirect, TARGET_ENV_PREFIX, TARGET_ROOT,
    TOKEN_AUDIENCE, TOKEN_DIR, TOKEN_EXPIRATION_SECONDS, TOKEN_PATH, TOKEN_VOLUME_NAME,
    UnknownValue,
};
pub use container::{AgentContainer, NON_ROOT_UID, PROXY_CONTAINERS};
pub use knobs::{AgentDefaults, DefaultsError, ImageError, Knob, validate_image};
pub use quantity::{Quantity, QuantityError};
pub use queues::{QueueEnvUpdate, owning_workload};
pub use view::{
    ContainerView, MetadataView, OsView, OwnerView, PodView, PortView, SpecView, VolumeView,
};

pub const STATUS_ANNOTATION: &str = "agent.mirrord.metalbear.co/status";
pub const INJECT_LABEL: &str = "mirrord.metalbear.co/inject";
pub const KNOB_PREFIX: &str = "agent.mirrord.metalbear.co/";
pub const NAMESPACE_LABEL: &str = "mirrord-injection";
/// Namespace label of Pod Security Admission naming the enforced level.
pub const POD_SECURITY_ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

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
    /// A Job's pod where the agent would be a regular container (no native sidecars before
    /// Kubernetes 1.29, or the native-sidecar knob off): the agent never exits, so the pod never
    /// completes and neither does the Job.
    JobWithoutNativeSidecar,
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
            SkipReason::JobWithoutNativeSidecar => "job-without-native-sidecar",
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
            SkipReason::JobWithoutNativeSidecar => format!(
                "the pod belongs to a Job and native sidecars are unavailable (Kubernetes 1.29+, knob {KNOB_PREFIX}native-sidecar): as a regular container the agent would keep the Job from ever completing"
            ),
        };
        format!("{AGENT_CONTAINER_NAME} not injected: {why}")
    }
}

/// The status annotation's value: what was injected, by which version, with which knobs. Written
/// as JSON text (fields in this order, knobs sorted by name) inside the annotation's string.
struct Status<'a> {
    version: &'a str,
    token_volume: &'a str,
    knobs: &'a knobs::Knobs,
    /// Queue env vars pointed at output queues; written only when there are any.
    queues: &'a [QueueEnvUpdate],
}

impl Status<'_> {
    /// The annotation's value as a JSON string literal holding the status as JSON text.
    fn to_json_string(&self) -> Vec<u8> {
        let agent: &[&str] = &[AGENT_CONTAINER_NAME];
        let (containers, init_containers) = if self.knobs.native_sidecar {
            (&[][..], agent)
        } else {
            (agent, &[][..])
        };
        let list = |out: &mut Vec<u8>, items: &[&str]| {
            push_array(out, items, |out, item| push_str_in_str(out, item))
        };
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(br#""{\"version\":"#);
        push_str_in_str(&mut out, self.version);
        out.extend_from_slice(br#",\"containers\":"#);
        list(&mut out, containers);
        out.extend_from_slice(br#",\"initContainers\":"#);
        list(&mut out, init_containers);
        out.extend_from_slice(br#",\"volumes\":"#);
        list(&mut out, &[self.token_volume]);
        out.extend_from_slice(br#",\"knobs\":{"#);
        for (i, (name, value)) in self.knobs.sorted_values().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_str_in_str(&mut out, name);
            out.push(b':');
            push_str_in_str(&mut out, value);
        }
        out.push(b'}');
        if !self.queues.is_empty() {
            out.extend_from_slice(br#",\"queues\":"#);
            push_array(&mut out, self.queues, |out, update| {
                let fields = [
                    ("queue", &update.queue_id),
                    ("container", &update.container),
                    ("env", &update.env),
                    ("originalName", &update.original_name),
                    ("outputName", &update.output_name),
                ];
                out.push(b'{');
                for (i, (key, value)) in fields.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    push_str_in_str(out, key);
                    out.push(b':');
                    push_str_in_str(out, value);
                }
                out.push(b'}');
            });
        }
        out.extend_from_slice(br#"}""#);
        out
    }
}

/// Decides whether to inject the agent into `pod` and, if so, builds the patch.
pub fn decide<'a>(pod: &'a PodView, ctx: &PodContext<'_>, cfg: &'a InjectorConfig) -> Decision<'a> {
    decide_with_queues(pod, ctx, cfg, &[])
}

/// [`decide`], also pointing the queue env of a registered workload's pod at its output queues
/// (`registries`: the queue registries of the pod's namespace; see [`queues`]).
pub fn decide_with_queues<'a>(
    pod: &'a PodView,
    ctx: &PodContext<'_>,
    cfg: &'a InjectorConfig,
    registries: &[&QueueRegistrySpec],
) -> Decision<'a> {
    let decision = decide_inner(pod, ctx, cfg, registries);
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
    registries: &[&QueueRegistrySpec],
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
    if !knobs.native_sidecar && owned_by_job(pod) {
        return Decision::Skip(SkipReason::JobWithoutNativeSidecar);
    }
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

    // Nothing to look at (and nothing allocated) unless the namespace has queue registries.
    let queue_rewrites = if registries.is_empty() {
        queues::QueueRewrites::default()
    } else {
        queues::rewrites(pod, registries)
    };
    warnings.extend(queue_rewrites.warnings);
    let status = Status {
        version: &cfg.operator_version,
        token_volume: &token_volume,
        knobs,
        queues: &queue_rewrites.updates,
    }
    .to_json_string();
    let native_sidecar = knobs.native_sidecar;
    let reads_proc = knobs.env == EnvMode::Proc || knobs.fs == FsMode::Proc;

    let mut ops = Vec::with_capacity(4 + queue_rewrites.ops.len());
    // A pod decoded without metadata cannot tell an absent `metadata` from an empty one; adding the
    // whole object is right for both.
    ops.push(if metadata.is_none() {
        PatchOp {
            path: Cow::Borrowed("/metadata"),
            value: PatchValue::Status(status, StatusAt::InMetadata),
        }
    } else if annotations.is_none() {
        PatchOp {
            path: Cow::Borrowed("/metadata/annotations"),
            value: PatchValue::Status(status, StatusAt::InAnnotations),
        }
    } else {
        PatchOp {
            path: Cow::Borrowed(STATUS_ANNOTATION_POINTER),
            value: PatchValue::Status(status, StatusAt::Annotation),
        }
    });
    // With the agent as a regular container, the mirrord CLI (first container status not among its
    // known sidecars) and kubectl may pick `mirrord-agent`: name the app container as the default,
    // unless the pod already names one. The status op above made sure annotations exist.
    if !native_sidecar && !annotations.is_some_and(|a| a.contains_key(DEFAULT_CONTAINER_ANNOTATION))
    {
        ops.push(PatchOp {
            path: Cow::Borrowed(DEFAULT_CONTAINER_POINTER),
            value: PatchValue::Text(target.name.clone()),
        });
    }
    // Reading another container's /proc needs a shared PID namespace. Trade-off: every container of
    // the pod then sees the others' processes (and their /proc/<pid>/environ with SYS_PTRACE), and
    // the pause process becomes PID 1, so an app relying on being PID 1 for signal handling changes.
    // With hostPID the processes are visible already, and the apiserver refuses both together.
    if reads_proc && spec.share_process_namespace != Some(true) && spec.host_pid != Some(true) {
        if spec.share_process_namespace == Some(false) {
            warnings.push(
                "shareProcessNamespace: false is overridden to true: the agent reads the target through /proc (env or fs knob is proc)"
                    .to_owned(),
            );
        }
        ops.push(PatchOp {
            path: Cow::Borrowed("/spec/shareProcessNamespace"),
            value: PatchValue::True,
        });
    }
    ops.push(match spec.volumes {
        Some(_) => PatchOp {
            path: Cow::Borrowed("/spec/volumes/-"),
            value: PatchValue::TokenVolume(token_volume),
        },
        None => PatchOp {
            path: Cow::Borrowed("/spec/volumes"),
            value: PatchValue::TokenVolumeList(token_volume),
        },
    });
    // Env rewrites address the pod's own containers by index: before the agent is added.
    ops.extend(queue_rewrites.ops);
    let agent = Box::new(agent);
    ops.push(match (native_sidecar, &spec.init_containers) {
        (true, Some(_)) => PatchOp {
            path: Cow::Borrowed("/spec/initContainers/0"),
            value: PatchValue::Agent(agent),
        },
        (true, None) => PatchOp {
            path: Cow::Borrowed("/spec/initContainers"),
            value: PatchValue::AgentList(agent),
        },
        (false, _) => PatchOp {
            path: Cow::Borrowed("/spec/containers/-"),
            value: PatchValue::Agent(agent),
        },
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

/// Appends the projected ServiceAccount token volume (as k8s-openapi's `Volume`): a token for the
/// coordinator's audience, which the agent presents when it dials in.
fn write_token_volume(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(br#"{"name":"#);
    push_str(out, name);
    out.extend_from_slice(br#","projected":{"sources":[{"serviceAccountToken":{"audience":"#);
    push_str(out, TOKEN_AUDIENCE);
    out.extend_from_slice(br#","expirationSeconds":"#);
    push_value(out, &TOKEN_EXPIRATION_SECONDS);
    out.extend_from_slice(br#","path":"token"}}]}}"#);
}

/// The container `kubectl` (and the mirrord CLI) use when none is named.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";
const DEFAULT_CONTAINER_POINTER: &str =
    "/metadata/annotations/kubectl.kubernetes.io~1default-container";

/// The JSON pointer of the status annotation: [`STATUS_ANNOTATION`]'s `/` escaped as `~1`.
const STATUS_ANNOTATION_POINTER: &str = "/metadata/annotations/agent.mirrord.metalbear.co~1status";

/// One RFC 6902 `add` operation (the webhook only ever adds). Paths are constants; values are
/// written straight into the answer's JSON, never built as a `serde_json::Value` tree.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchOp<'a> {
    /// An RFC 6901 JSON Pointer (owned only for queue env rewrites, which index containers).
    pub path: Cow<'static, str>,
    pub value: PatchValue<'a>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PatchValue<'a> {
    Agent(Box<AgentContainer<'a>>),
    /// A list holding only the agent: the pod had no list to add it to.
    AgentList(Box<AgentContainer<'a>>),
    /// The token volume, by name.
    TokenVolume(String),
    /// A list holding only the token volume.
    TokenVolumeList(String),
    /// The status annotation's value (a JSON string literal), and where it goes.
    Status(Vec<u8>, StatusAt),
    True,
    /// A string value (a queue env var's new value).
    Text(String),
    /// An env entry for a container (a queue env var from the registry's fallbackName).
    EnvVar(k8s_openapi::api::core::v1::EnvVar),
    /// A list holding only that env entry: the container had no `env`.
    EnvVarList(k8s_openapi::api::core::v1::EnvVar),
}

/// How much of the annotation's surroundings the pod lacks, so the status op adds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusAt {
    /// `{"annotations": {STATUS_ANNOTATION: status}}`
    InMetadata,
    /// `{STATUS_ANNOTATION: status}`
    InAnnotations,
    /// The annotation's value itself.
    Annotation,
}

impl PatchValue<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            PatchValue::Agent(agent) => agent.write_json(out),
            PatchValue::AgentList(agent) => {
                out.push(b'[');
                agent.write_json(out);
                out.push(b']');
            }
            PatchValue::TokenVolume(name) => write_token_volume(out, name),
            PatchValue::TokenVolumeList(name) => {
                out.push(b'[');
                write_token_volume(out, name);
                out.push(b']');
            }
            PatchValue::Status(status, at) => {
                let entry = |out: &mut Vec<u8>| {
                    push_str(out, STATUS_ANNOTATION);
                    out.push(b':');
                    out.extend_from_slice(status);
                };
                match at {
                    StatusAt::InMetadata => {
                        out.extend_from_slice(br#"{"annotations":{"#);
                        entry(out);
                        out.extend_from_slice(b"}}");
                    }
                    StatusAt::InAnnotations => {
                        out.push(b'{');
                        entry(out);
                        out.push(b'}');
                    }
                    StatusAt::Annotation => out.extend_from_slice(status),
                }
            }
            PatchValue::True => out.extend_from_slice(b"true"),
            PatchValue::Text(text) => push_str(out, text),
            PatchValue::EnvVar(env) => push_value(out, env),
            PatchValue::EnvVarList(env) => push_value(out, std::slice::from_ref(env)),
        }
    }
}

impl PatchOp<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"op":"add","path":"#);
        push_str(out, &self.path);
        out.extend_from_slice(br#","value":"#);
        self.value.write_json(out);
        out.push(b'}');
    }
}

/// As the same JSON text [`to_json`] writes (for tests and tools that want a `serde_json::Value`).
impl Serialize for PatchOp<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = Vec::new();
        self.write_json(&mut out);
        let text = String::from_utf8(out).map_err(serde::ser::Error::custom)?;
        RawValue::from_string(text)
            .map_err(serde::ser::Error::custom)?
            .serialize(serializer)
    }
}

/// The patch as the JSON text the API server applies.
pub fn to_json(patch: &[PatchOp<'_>]) -> Vec<u8> {
    // Room for the agent container with a typical target's env and mount copies (about 6 KB).
    let mut out = Vec::with_capacity(8192);
    push_array(&mut out, patch, |out, op| op.write_json(out));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use k8s_openapi::api::core::v1::{
        ProjectedVolumeSource, ServiceAccountTokenProjection, Volume, VolumeProjection,
    };
    use serde_json::{Value, json};

    #[test]
    fn status_pointer_addresses_the_annotation() {
        // Read by another RFC 6901 implementation: the `/` inside the key is escaped.
        let mut doc = json!({ "metadata": { "annotations": { "a": "b" } } });
        let op = serde_json::from_value(
            json!({ "op": "add", "path": STATUS_ANNOTATION_POINTER, "value": "s" }),
        )
        .unwrap();
        json_patch::patch(&mut doc, &[op]).unwrap();
        assert_eq!(
            doc,
            json!({ "metadata": { "annotations": { "a": "b", STATUS_ANNOTATION: "s" } } })
        );
    }

    #[test]
    fn token_volume_is_what_k8s_openapi_writes() {
        let mut out = Vec::new();
        write_token_volume(&mut out, "mirrord-agent-token-1");
        let expected = Volume {
            name: "mirrord-agent-token-1".to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some("mirrord-operator".to_owned()),
                        expiration_seconds: Some(3600),
                        path: "token".to_owned(),
                    }),
                    ..VolumeProjection::default()
                }]),
                ..ProjectedVolumeSource::default()
            }),
            ..Volume::default()
        };
        assert_eq!(out, serde_json::to_vec(&expected).unwrap());
    }

    #[test]
    fn status_values_nest_json_text_in_a_string() {
        let status = br#""{\"v\":1}""#.to_vec();
        let written = |at| {
            let mut out = Vec::new();
            PatchValue::Status(status.clone(), at).write_json(&mut out);
            serde_json::from_slice::<Value>(&out).unwrap()
        };
        let text = json!(r#"{"v":1}"#);
        assert_eq!(written(StatusAt::Annotation), text);
        assert_eq!(
            written(StatusAt::InAnnotations),
            json!({ STATUS_ANNOTATION: text })
        );
        assert_eq!(
            written(StatusAt::InMetadata),
            json!({ "annotations": { STATUS_ANNOTATION: text } })
        );
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
            SkipReason::JobWithoutNativeSidecar,
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
