//! The `mirrord-agent` container: target selection, env and mount copies, security context.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    sync::LazyLock,
};

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVarSource};
use serde::{Serialize, ser::SerializeStruct};
use serde_json::value::RawValue;

use super::{
    AGENT_CONTAINER_NAME, ContainerView, InjectorConfig, TARGET_ENV_PREFIX, TARGET_ROOT, TOKEN_DIR,
    TOKEN_PATH,
    knobs::{EnvMode, FsMode, Knobs, Redirect},
    quantity::Quantity,
};

/// Sidecars of other injectors (and our own) that are never the application.
pub const PROXY_CONTAINERS: [&str; 5] = [
    "istio-proxy",
    "linkerd-proxy",
    "daprd",
    "vault-agent",
    AGENT_CONTAINER_NAME,
];

/// Unprivileged uid for the agent when it needs no capability (distroless `nonroot`).
pub const NON_ROOT_UID: i64 = 65532;

/// The first container that is not a known proxy; if all are proxies, the first container.
/// Callers guarantee `containers` is not empty.
pub(crate) fn auto_target(containers: &[ContainerView]) -> &str {
    containers
        .iter()
        .find(|c| !PROXY_CONTAINERS.contains(&c.name.as_str()))
        .or_else(|| containers.first())
        .map_or("", |c| c.name.as_str())
}

/// Rewrites the `$(NAME)` references of a Kubernetes env value for which `declared(NAME)` holds to
/// `$(MIRRORD_TARGET_ENV_NAME)`. Scans exactly as the kubelet's expansion does: `$$` is an escape
/// (kept verbatim, so `$$(NAME)` stays a literal), `$(` opens a reference closed by the first `)`,
/// and an unclosed `$(` is literal text. Borrows `value` when there is nothing to rewrite.
pub(crate) fn rewrite_references(value: &str, declared: impl Fn(&str) -> bool) -> Cow<'_, str> {
    if !value.contains("$(") {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 2 * TARGET_ENV_PREFIX.len());
    let mut rest = value;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push_str("$$");
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            let Some(close) = inner.find(')') else {
                out.push_str(&rest[dollar..]);
                return Cow::Owned(out);
            };
            let name = &inner[..close];
            out.push_str("$(");
            if declared(name) {
                out.push_str(TARGET_ENV_PREFIX);
            }
            out.push_str(name);
            out.push(')');
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Whether `value` holds a `$(NAME)` reference with `declared(NAME)`.
fn references_any(value: &str, declared: impl Fn(&str) -> bool) -> bool {
    rewrite_references(value, declared) != value
}

/// Whether a reference to `name` that the target's `env` does not (yet) define may come from its
/// `envFrom`: then the agent's prefixed `envFrom` copy defines `MIRRORD_TARGET_ENV_<name>` too, so
/// the rewritten reference resolves to the same value. Service-link variables (`*_SERVICE_HOST`,
/// `*_SERVICE_PORT*`) are the same in every container of the pod and keep their name. Remaining
/// gap: a reference to a service link's `<SVC>_PORT*` variable in a container with `envFrom`.
fn may_come_from_env_from(target: &ContainerView, name: &str) -> bool {
    target.env_from.as_ref().is_some_and(|f| !f.is_empty())
        // What an env var name can be at all (relaxed validation: printable ASCII without `=`).
        && !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'=')
        && !name.ends_with("_SERVICE_HOST")
        && !name.contains("_SERVICE_PORT")
}

/// One entry of the agent's `env`. Borrowed from the config, the knobs' fixed spellings and the
/// target, so building the container allocates little; serialized as k8s-openapi's `EnvVar` would be.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AgentEnv<'a> {
    Plain {
        name: &'static str,
        value: Cow<'a, str>,
    },
    /// A copy of the target's variable, written as `MIRRORD_TARGET_ENV_<name>`.
    TargetCopy {
        name: &'a str,
        value: Option<Cow<'a, str>>,
        value_from: Option<ValueFrom<'a>>,
    },
}

/// What the agent learns about its pod through the downward API: (variable, `fieldPath`).
const DOWNWARD_API_ENV: [(&str, &str); 6] = [
    ("MIRRORD_AGENT_POD_NAME", "metadata.name"),
    ("MIRRORD_AGENT_POD_NAMESPACE", "metadata.namespace"),
    ("MIRRORD_AGENT_POD_UID", "metadata.uid"),
    ("MIRRORD_AGENT_POD_IP", "status.podIP"),
    ("MIRRORD_AGENT_POD_IPS", "status.podIPs"),
    ("MIRRORD_AGENT_NODE_NAME", "spec.nodeName"),
];

/// [`DOWNWARD_API_ENV`] as the JSON of `EnvVar`s with a `fieldRef`, rendered on first use: the
/// same for every pod, so no review pays for escaping it.
fn downward_api_env() -> &'static [Box<RawValue>] {
    static RENDERED: LazyLock<Vec<Box<RawValue>>> = LazyLock::new(|| {
        DOWNWARD_API_ENV
            .iter()
            .filter_map(|(name, path)| {
                serde_json::value::to_raw_value(&serde_json::json!({
                    "name": name,
                    "valueFrom": { "fieldRef": { "fieldPath": path } },
                }))
                .ok()
            })
            .collect()
    });
    &RENDERED
}

/// The agent's whole `env`: the downward-API variables first, then `rest`.
struct EnvList<'a, 'b>(&'b [AgentEnv<'a>]);

impl Serialize for EnvList<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let downward = downward_api_env();
        let mut seq = serializer.serialize_seq(Some(downward.len() + self.0.len()))?;
        for rendered in downward {
            seq.serialize_element(rendered)?;
        }
        for var in self.0 {
            seq.serialize_element(var)?;
        }
        seq.end()
    }
}

impl Serialize for AgentEnv<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut var = serializer.serialize_struct("EnvVar", 2)?;
        match self {
            AgentEnv::Plain { name, value } => {
                var.serialize_field("name", name)?;
                var.serialize_field("value", value)?;
            }
            AgentEnv::TargetCopy {
                name,
                value,
                value_from,
            } => {
                var.serialize_field("name", &Prefixed(TARGET_ENV_PREFIX, name))?;
                if let Some(value) = value {
                    var.serialize_field("value", value)?;
                }
                if let Some(value_from) = value_from {
                    var.serialize_field("valueFrom", value_from)?;
                }
            }
        }
        var.end()
    }
}

/// A target variable's `valueFrom`: the target's own, or a copy pinned to the target container
/// (boxed: it is rare and large, and every env entry would otherwise be that large).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ValueFrom<'a> {
    Borrowed(&'a EnvVarSource),
    Pinned(Box<EnvVarSource>),
}

impl Serialize for ValueFrom<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ValueFrom::Borrowed(source) => source.serialize(serializer),
            ValueFrom::Pinned(source) => source.serialize(serializer),
        }
    }
}

/// A string written as `prefix` followed by `rest`, without building it first.
struct Prefixed<'a>(&'a str, &'a str);

impl Serialize for Prefixed<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{}{}", self.0, self.1))
    }
}

/// Copies of the target's `env`: prefixed names, references rewritten to the copies where the
/// kubelet would resolve them in the target (variables defined earlier in the list, or possibly by
/// `envFrom`; a later one stays literal in both containers), and `resourceFieldRef`s pinned to the
/// target, since without a container name they would describe the agent's own resources.
fn copy_env<'a>(target: &'a ContainerView, into: &mut Vec<AgentEnv<'a>>) {
    let env = target.env.as_deref().unwrap_or_default();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    into.extend(env.iter().map(|var| {
        let value = var.value.as_deref().map(|v| {
            rewrite_references(v, |name| {
                seen.contains(name) || may_come_from_env_from(target, name)
            })
        });
        let value_from = var
            .value_from
            .as_ref()
            .map(|source| match &source.resource_field_ref {
                Some(field) if field.container_name.is_none() => {
                    let mut pinned = source.clone();
                    if let Some(field) = pinned.resource_field_ref.as_mut() {
                        field.container_name = Some(target.name.clone());
                    }
                    ValueFrom::Pinned(Box::new(pinned))
                }
                _ => ValueFrom::Borrowed(source),
            });
        seen.insert(&var.name);
        AgentEnv::TargetCopy {
            name: &var.name,
            value,
            value_from,
        }
    }));
}

/// Copies of the target's `envFrom`, with the prefix in front of the original one.
fn copy_env_from(target: &ContainerView) -> Vec<EnvFromSource> {
    target
        .env_from
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|source| EnvFromSource {
            prefix: Some(format!(
                "{TARGET_ENV_PREFIX}{}",
                source.prefix.as_deref().unwrap_or_default()
            )),
            ..source.clone()
        })
        .collect()
}

/// One of the agent's `volumeMounts`, read-only, at `under` + `path` (serialized as k8s-openapi's
/// `VolumeMount` would be).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentMount<'a> {
    name: Cow<'a, str>,
    under: &'static str,
    path: &'a str,
    sub_path: Option<&'a str>,
    sub_path_expr: Option<Cow<'a, str>>,
}

impl Serialize for AgentMount<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut mount = serializer.serialize_struct("VolumeMount", 5)?;
        mount.serialize_field("mountPath", &Prefixed(self.under, self.path))?;
        mount.serialize_field("name", &self.name)?;
        mount.serialize_field("readOnly", &true)?;
        if let Some(sub_path) = self.sub_path {
            mount.serialize_field("subPath", sub_path)?;
        }
        if let Some(expr) = &self.sub_path_expr {
            mount.serialize_field("subPathExpr", expr)?;
        }
        mount.end()
    }
}

/// The target's mounts, read-only under [`TARGET_ROOT`]. A `subPathExpr` expands with the
/// container's env, so its references follow the env copies; without those copies (env knob not
/// `spec`) a mount whose `subPathExpr` names a target variable cannot be reproduced and is left out.
fn copy_mounts<'a>(
    target: &'a ContainerView,
    env_copied: bool,
    into: &mut Vec<AgentMount<'a>>,
    warnings: &mut Vec<String>,
) {
    // subPathExpr sees the container's complete environment.
    let env_names: BTreeSet<&str> = target
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    let declared = |name: &str| env_names.contains(name) || may_come_from_env_from(target, name);
    for mount in target.volume_mounts.as_deref().unwrap_or_default() {
        let sub_path_expr = match mount.sub_path_expr.as_deref() {
            Some(expr) if env_copied => Some(rewrite_references(expr, declared)),
            Some(expr) if references_any(expr, declared) => {
                warnings.push(format!(
                    "volumeMount {:?} of container {:?} not given to the agent: its subPathExpr uses env that is not copied (env knob is not spec)",
                    mount.mount_path, target.name
                ));
                continue;
            }
            other => other.map(Cow::Borrowed),
        };
        into.push(AgentMount {
            name: Cow::Borrowed(&mount.name),
            under: if mount.mount_path.starts_with('/') {
                TARGET_ROOT
            } else {
                TARGET_ROOT_DIR
            },
            path: &mount.mount_path,
            sub_path: mount.sub_path.as_deref(),
            sub_path_expr,
        });
    }
}

/// [`TARGET_ROOT`] with the separator a relative mount path needs.
const TARGET_ROOT_DIR: &str = "/mirrord/target/";

/// Everything `agent_container` needs besides the config.
pub(crate) struct AgentInputs<'a, 'n> {
    pub knobs: Knobs,
    pub target: &'a ContainerView,
    /// The pod's other long-running containers (regular ones and native sidecars).
    pub neighbours: &'n [&'a ContainerView],
    pub token_volume: String,
}

/// What the agent matches in `/proc` to tell containers' main processes apart (the agent's
/// `--target-match`, see `agent::target`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Fingerprint<'a> {
    command: &'a [String],
    args: &'a [String],
    env_names: BTreeSet<&'a str>,
}

#[derive(Serialize)]
struct TargetMatch<'a> {
    target: Fingerprint<'a>,
    others: Vec<Fingerprint<'a>>,
}

/// The target's fingerprint and its neighbours'. Env names that more than one container declares
/// are left out: they cannot tell those containers apart.
fn target_match(target: &ContainerView, neighbours: &[&ContainerView]) -> String {
    fn names(c: &ContainerView) -> BTreeSet<&str> {
        c.env.iter().flatten().map(|v| v.name.as_str()).collect()
    }
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for name in std::iter::once(target)
        .chain(neighbours.iter().copied())
        .flat_map(names)
    {
        *count.entry(name).or_default() += 1;
    }
    fn fingerprint<'a>(c: &'a ContainerView, count: &BTreeMap<&str, usize>) -> Fingerprint<'a> {
        Fingerprint {
            command: c.command.as_deref().unwrap_or_default(),
            args: c.args.as_deref().unwrap_or_default(),
            env_names: names(c)
                .into_iter()
                .filter(|n| count.get(n) == Some(&1))
                .collect(),
        }
    }
    let matcher = TargetMatch {
        target: fingerprint(target, &count),
        others: neighbours.iter().map(|c| fingerprint(c, &count)).collect(),
    };
    serde_json::to_string(&matcher).unwrap_or_default()
}

/// The `mirrord-agent` container. It borrows from the pod and the config instead of building
/// k8s-openapi's `Container` (whose owned strings and maps were most of an admission's cost), and
/// serializes as that type would: same fields, same order.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentContainer<'a> {
    knobs: Knobs,
    env: Vec<AgentEnv<'a>>,
    env_from: Vec<EnvFromSource>,
    volume_mounts: Vec<AgentMount<'a>>,
    run_as_group: i64,
}

pub(crate) fn agent_container<'a>(
    inputs: AgentInputs<'a, '_>,
    cfg: &'a InjectorConfig,
    warnings: &mut Vec<String>,
) -> AgentContainer<'a> {
    let AgentInputs {
        knobs,
        target,
        neighbours,
        token_volume,
    } = inputs;

    let ports = target
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|p| p.container_port)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");

    let plain = |name, value| AgentEnv::Plain { name, value };
    // After the downward-API variables (written by `EnvList`).
    let mut env = Vec::with_capacity(16 + target.env.as_ref().map_or(0, Vec::len));
    env.push(plain(
        "MIRRORD_AGENT_COORDINATOR_URL",
        Cow::Borrowed(cfg.coordinator_url.as_str()),
    ));
    if let Some(ca) = &cfg.coordinator_ca_bundle {
        env.push(plain("MIRRORD_AGENT_COORDINATOR_CA", Cow::Borrowed(ca)));
    }
    env.extend([
        plain("MIRRORD_AGENT_LOG_LEVEL", knobs.log_level.as_str().into()),
        plain("MIRRORD_AGENT_REDIRECT", knobs.redirect.as_str().into()),
        plain("MIRRORD_AGENT_ENV_MODE", knobs.env.as_str().into()),
        plain("MIRRORD_AGENT_FS_MODE", knobs.fs.as_str().into()),
        plain(
            "MIRRORD_AGENT_TARGET_CONTAINER",
            Cow::Owned(knobs.target_container.clone()),
        ),
        plain("MIRRORD_AGENT_TARGET_PORTS", Cow::Owned(ports)),
        plain(
            "MIRRORD_AGENT_GROUP_ID",
            Cow::Owned(cfg.agent_group_id.to_string()),
        ),
        plain("MIRRORD_AGENT_TOKEN_FILE", TOKEN_PATH.into()),
    ]);
    if knobs.env == EnvMode::Proc || knobs.fs == FsMode::Proc {
        env.push(plain(
            "MIRRORD_AGENT_TARGET_MATCH",
            Cow::Owned(target_match(target, neighbours)),
        ));
    }
    if knobs.fs == FsMode::Volumes {
        env.push(plain("MIRRORD_AGENT_TARGET_ROOT", TARGET_ROOT.into()));
    }
    let env_copied = knobs.env == EnvMode::Spec;
    let env_from = if env_copied {
        copy_env(target, &mut env);
        copy_env_from(target)
    } else {
        Vec::new()
    };

    let mut volume_mounts = vec![AgentMount {
        name: Cow::Owned(token_volume),
        under: "",
        path: TOKEN_DIR,
        sub_path: None,
        sub_path_expr: None,
    }];
    if knobs.fs == FsMode::Volumes {
        copy_mounts(target, env_copied, &mut volume_mounts, warnings);
    }

    AgentContainer {
        knobs,
        env,
        env_from,
        volume_mounts,
        run_as_group: cfg.agent_group_id,
    }
}

impl AgentContainer<'_> {
    pub(crate) fn knobs(&self) -> &Knobs {
        &self.knobs
    }
}

impl Serialize for AgentContainer<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let knobs = &self.knobs;
        let mut container = serializer.serialize_struct("Container", 9)?;
        container.serialize_field("args", &["agent"])?;
        container.serialize_field("env", &EnvList(&self.env))?;
        if !self.env_from.is_empty() {
            container.serialize_field("envFrom", &self.env_from)?;
        }
        container.serialize_field("image", &knobs.image)?;
        container.serialize_field("name", AGENT_CONTAINER_NAME)?;
        container.serialize_field("resources", &Resources(knobs))?;
        if knobs.native_sidecar {
            container.serialize_field("restartPolicy", "Always")?;
        }
        container.serialize_field(
            "securityContext",
            &security_context(knobs, self.run_as_group),
        )?;
        container.serialize_field("volumeMounts", &self.volume_mounts)?;
        container.end()
    }
}

/// `resources`: requests always, limits when set (as `ResourceRequirements` with its maps).
struct Resources<'a>(&'a Knobs);

impl Serialize for Resources<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct CpuMemory<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            cpu: Option<&'a Quantity>,
            #[serde(skip_serializing_if = "Option::is_none")]
            memory: Option<&'a Quantity>,
        }
        let knobs = self.0;
        let mut resources = serializer.serialize_struct("ResourceRequirements", 2)?;
        if knobs.cpu_limit.is_some() || knobs.memory_limit.is_some() {
            resources.serialize_field(
                "limits",
                &CpuMemory {
                    cpu: knobs.cpu_limit.as_ref(),
                    memory: knobs.memory_limit.as_ref(),
                },
            )?;
        }
        resources.serialize_field(
            "requests",
            &CpuMemory {
                cpu: Some(&knobs.cpu_request),
                memory: Some(&knobs.memory_request),
            },
        )?;
        resources.end()
    }
}

/// The agent's `securityContext`, fields as k8s-openapi's `SecurityContext` writes them.
#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentSecurityContext {
    allow_privilege_escalation: bool,
    capabilities: AgentCapabilities,
    read_only_root_filesystem: bool,
    run_as_group: i64,
    run_as_non_root: bool,
    run_as_user: i64,
    seccomp_profile: Seccomp,
}

#[derive(Debug, PartialEq, Serialize)]
pub(crate) struct AgentCapabilities {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    add: Vec<&'static str>,
    drop: [&'static str; 1],
}

#[derive(Debug, PartialEq, Serialize)]
struct Seccomp {
    #[serde(rename = "type")]
    type_: &'static str,
}

/// Least privilege per knob. Capabilities added to a non-root container are not effective (Kubernetes
/// sets no ambient capabilities), so the agent runs as uid 0 exactly when it needs one: NET_ADMIN
/// for iptables redirection, SYS_PTRACE to read another process's `/proc/<pid>/environ` or `root`.
fn security_context(knobs: &Knobs, gid: i64) -> AgentSecurityContext {
    let mut add = Vec::new();
    if knobs.redirect == Redirect::Iptables {
        add.push("NET_ADMIN");
    }
    if knobs.env == EnvMode::Proc || knobs.fs == FsMode::Proc {
        add.push("SYS_PTRACE");
    }
    let root = !add.is_empty();
    AgentSecurityContext {
        allow_privilege_escalation: false,
        capabilities: AgentCapabilities { add, drop: ["ALL"] },
        read_only_root_filesystem: true,
        run_as_group: gid,
        run_as_non_root: !root,
        run_as_user: if root { 0 } else { NON_ROOT_UID },
        seccomp_profile: Seccomp {
            type_: "RuntimeDefault",
        },
    }
}
#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{EnvVar, VolumeMount};
    use serde_json::{Value, json};

    use super::*;

    fn plain(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.to_owned(),
            value: Some(value.to_owned()),
            value_from: None,
        }
    }

    /// The target's env copies as they are written into the patch.
    fn env_copies(target: &ContainerView) -> Vec<Value> {
        let mut env = Vec::new();
        copy_env(target, &mut env);
        env.iter()
            .map(|e| serde_json::to_value(e).unwrap())
            .collect()
    }

    fn container(name: &str) -> ContainerView {
        ContainerView {
            name: name.to_owned(),
            ..ContainerView::default()
        }
    }

    #[test]
    fn skips_proxies() {
        let pods = |names: &[&str]| names.iter().map(|n| container(n)).collect::<Vec<_>>();
        assert_eq!(auto_target(&pods(&["istio-proxy", "app"])), "app");
        assert_eq!(
            auto_target(&pods(&[
                "linkerd-proxy",
                "daprd",
                "vault-agent",
                "web",
                "x"
            ])),
            "web"
        );
        assert_eq!(
            auto_target(&pods(&["istio-proxy", "linkerd-proxy"])),
            "istio-proxy"
        );
        assert_eq!(auto_target(&pods(&["app", "istio-proxy"])), "app");
        assert_eq!(auto_target(&[]), "");
    }

    #[test]
    fn rewrites_declared_references_only() {
        let declared = |n: &str| matches!(n, "HOST" | "PORT");
        let r = |v: &str| rewrite_references(v, declared).into_owned();
        assert_eq!(
            r("http://$(HOST):$(PORT)/"),
            "http://$(MIRRORD_TARGET_ENV_HOST):$(MIRRORD_TARGET_ENV_PORT)/"
        );
        assert_eq!(r("$(OTHER)"), "$(OTHER)");
        assert_eq!(r("$$(HOST)"), "$$(HOST)");
        assert_eq!(r("$$$(HOST)"), "$$$(MIRRORD_TARGET_ENV_HOST)");
        assert_eq!(r("cost: 5$ $HOST"), "cost: 5$ $HOST");
        assert_eq!(r("$(HOST"), "$(HOST");
        assert_eq!(r("a$(HOST"), "a$(HOST");
        assert_eq!(r("$"), "$");
        assert_eq!(r("$$"), "$$");
        assert_eq!(r("$()"), "$()");
        assert_eq!(r("$((HOST))"), "$((HOST))");
        assert_eq!(r("é$(PORT)ü"), "é$(MIRRORD_TARGET_ENV_PORT)ü");
        assert!(references_any("x$(PORT)", declared));
        assert!(!references_any("x$$(PORT)", declared));
    }

    #[test]
    fn env_copy_follows_declaration_order() {
        let mut target = container("app");
        target.env = Some(vec![
            plain("A", "$(B)"),
            plain("B", "b"),
            plain("C", "$(A)-$(B)-$$(A)"),
            EnvVar {
                name: "CPU".to_owned(),
                value: None,
                value_from: Some(EnvVarSource {
                    resource_field_ref: Some(k8s_openapi::api::core::v1::ResourceFieldSelector {
                        resource: "limits.cpu".to_owned(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
        ]);
        assert_eq!(
            env_copies(&target),
            vec![
                json!({ "name": "MIRRORD_TARGET_ENV_A", "value": "$(B)" }),
                json!({ "name": "MIRRORD_TARGET_ENV_B", "value": "b" }),
                json!({
                    "name": "MIRRORD_TARGET_ENV_C",
                    "value": "$(MIRRORD_TARGET_ENV_A)-$(MIRRORD_TARGET_ENV_B)-$$(A)"
                }),
                json!({
                    "name": "MIRRORD_TARGET_ENV_CPU",
                    "valueFrom": { "resourceFieldRef": { "containerName": "app", "resource": "limits.cpu" } }
                }),
            ]
        );
    }

    #[test]
    fn env_from_names_are_rewritten_but_not_service_links() {
        let mut target = container("app");
        target.env = Some(vec![
            plain(
                "URL",
                "http://$(USER):$(PASS)@$(DB_SERVICE_HOST):$(DB_SERVICE_PORT_SQL)/",
            ),
            plain("USER", "me"),
        ]);
        let values = |t: &ContainerView| {
            env_copies(t)
                .into_iter()
                .map(|v| v["value"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        // Without envFrom, USER is not defined yet when URL expands and PASS nowhere: both literal.
        assert_eq!(
            values(&target)[0],
            "http://$(USER):$(PASS)@$(DB_SERVICE_HOST):$(DB_SERVICE_PORT_SQL)/"
        );
        // With envFrom both may come from it; the service links keep their names.
        target.env_from = Some(vec![EnvFromSource {
            secret_ref: Some(k8s_openapi::api::core::v1::SecretEnvSource {
                name: "db".to_owned(),
                optional: None,
            }),
            ..Default::default()
        }]);
        assert_eq!(
            values(&target)[0],
            "http://$(MIRRORD_TARGET_ENV_USER):$(MIRRORD_TARGET_ENV_PASS)@$(DB_SERVICE_HOST):$(DB_SERVICE_PORT_SQL)/"
        );
        assert_eq!(
            copy_env_from(&target)[0].prefix.as_deref(),
            Some("MIRRORD_TARGET_ENV_")
        );
    }

    #[test]
    fn target_match_leaves_out_shared_env_names() {
        let mut target = container("app");
        target.command = Some(vec!["/app".to_owned()]);
        target.env = Some(vec![plain("PORT", "1"), plain("LOG_LEVEL", "x")]);
        let mut proxy = container("proxy");
        proxy.args = Some(vec!["proxy".to_owned()]);
        proxy.env = Some(vec![plain("LOG_LEVEL", "y"), plain("ENVOY_UID", "0")]);
        assert_eq!(
            target_match(&target, &[&proxy]),
            r#"{"target":{"command":["/app"],"args":[],"envNames":["PORT"]},"others":[{"command":[],"args":["proxy"],"envNames":["ENVOY_UID"]}]}"#
        );
        assert_eq!(
            target_match(&target, &[]),
            r#"{"target":{"command":["/app"],"args":[],"envNames":["LOG_LEVEL","PORT"]},"others":[]}"#
        );
    }

    #[test]
    fn every_downward_api_variable_is_rendered() {
        let rendered: Vec<Value> = downward_api_env()
            .iter()
            .map(|raw| serde_json::from_str(raw.get()).unwrap())
            .collect();
        let expected: Vec<Value> = DOWNWARD_API_ENV
            .iter()
            .map(|(name, path)| json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": path } } }))
            .collect();
        assert_eq!(rendered, expected);
    }

    #[test]
    fn target_root_dir_is_the_target_root_with_a_separator() {
        assert_eq!(TARGET_ROOT_DIR, format!("{TARGET_ROOT}/"));
    }

    #[test]
    fn mounts_are_read_only_under_target_root() {
        let mut target = container("app");
        target.env = Some(vec![plain("POD", "p")]);
        target.volume_mounts = Some(vec![
            VolumeMount {
                name: "data".to_owned(),
                mount_path: "/data".to_owned(),
                mount_propagation: Some("HostToContainer".to_owned()),
                read_only: Some(false),
                sub_path: Some("x".to_owned()),
                ..Default::default()
            },
            VolumeMount {
                name: "logs".to_owned(),
                mount_path: "logs".to_owned(),
                sub_path_expr: Some("$(POD)".to_owned()),
                ..Default::default()
            },
        ]);
        let mounts = |env_copied: bool, warnings: &mut Vec<String>| {
            let mut mounts = Vec::new();
            copy_mounts(&target, env_copied, &mut mounts, warnings);
            serde_json::to_value(mounts).unwrap()
        };
        let mut warnings = Vec::new();
        assert_eq!(
            mounts(true, &mut warnings),
            json!([
                { "mountPath": "/mirrord/target/data", "name": "data", "readOnly": true, "subPath": "x" },
                { "mountPath": "/mirrord/target/logs", "name": "logs", "readOnly": true,
                  "subPathExpr": "$(MIRRORD_TARGET_ENV_POD)" },
            ])
        );
        assert!(warnings.is_empty());
        assert_eq!(mounts(false, &mut warnings).as_array().unwrap().len(), 1);
        assert_eq!(warnings.len(), 1);
    }
}
