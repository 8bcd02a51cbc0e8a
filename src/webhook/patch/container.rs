//! The `mirrord-agent` container: target selection, env and mount copies, security context.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    sync::LazyLock,
};

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVarSource};

use super::{ContainerView, InjectorConfig, knobs::Knobs};
use crate::{
    injection::{
        AGENT_CONTAINER_NAME, EnvMode, Fingerprint, FsMode, Redirect, TARGET_ENV_PREFIX,
        TARGET_ROOT, TOKEN_DIR, TOKEN_PATH, TargetMatch, env,
    },
    webhook::json::{push_array, push_prefixed, push_str, push_value},
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
/// target, so building the container allocates little; written as k8s-openapi's `EnvVar` would be.
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

/// [`env::DOWNWARD_API`] as the JSON of `EnvVar`s with a `fieldRef`, comma-separated, rendered on
/// first use: the same for every pod, so no review pays for writing it.
fn downward_api_env() -> &'static [u8] {
    static RENDERED: LazyLock<Vec<u8>> = LazyLock::new(|| {
        let mut out = Vec::new();
        for (i, (name, path)) in env::DOWNWARD_API.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(br#"{"name":"#);
            push_str(&mut out, name);
            out.extend_from_slice(br#","valueFrom":{"fieldRef":{"fieldPath":"#);
            push_str(&mut out, path);
            out.extend_from_slice(b"}}}");
        }
        out
    });
    &RENDERED
}

/// The agent's whole `env`: the downward-API variables first, then `rest`.
fn write_env(out: &mut Vec<u8>, rest: &[AgentEnv<'_>]) {
    out.push(b'[');
    out.extend_from_slice(downward_api_env());
    for var in rest {
        out.push(b',');
        var.write_json(out);
    }
    out.push(b']');
}

impl AgentEnv<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"name":"#);
        match self {
            AgentEnv::Plain { name, value } => {
                push_str(out, name);
                out.extend_from_slice(br#","value":"#);
                push_str(out, value);
            }
            AgentEnv::TargetCopy {
                name,
                value,
                value_from,
            } => {
                push_prefixed(out, TARGET_ENV_PREFIX, name);
                if let Some(value) = value {
                    out.extend_from_slice(br#","value":"#);
                    push_str(out, value);
                }
                if let Some(value_from) = value_from {
                    out.extend_from_slice(br#","valueFrom":"#);
                    push_value(out, value_from.source());
                }
            }
        }
        out.push(b'}');
    }
}

/// A target variable's `valueFrom`: the target's own, or a copy pinned to the target container
/// (boxed: it is rare and large, and every env entry would otherwise be that large).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ValueFrom<'a> {
    Borrowed(&'a EnvVarSource),
    Pinned(Box<EnvVarSource>),
}

impl ValueFrom<'_> {
    fn source(&self) -> &EnvVarSource {
        match self {
            ValueFrom::Borrowed(source) => source,
            ValueFrom::Pinned(source) => source,
        }
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

/// One of the agent's `volumeMounts`, read-only, at `under` + `path` (written as k8s-openapi's
/// `VolumeMount` would be).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentMount<'a> {
    name: Cow<'a, str>,
    under: &'static str,
    path: &'a str,
    sub_path: Option<&'a str>,
    sub_path_expr: Option<Cow<'a, str>>,
}

impl AgentMount<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"mountPath":"#);
        push_prefixed(out, self.under, self.path);
        out.extend_from_slice(br#","name":"#);
        push_str(out, &self.name);
        out.extend_from_slice(br#","readOnly":true"#);
        if let Some(sub_path) = self.sub_path {
            out.extend_from_slice(br#","subPath":"#);
            push_str(out, sub_path);
        }
        if let Some(expr) = &self.sub_path_expr {
            out.extend_from_slice(br#","subPathExpr":"#);
            push_str(out, expr);
        }
        out.push(b'}');
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
    fn fingerprint<'a>(
        c: &'a ContainerView,
        count: &BTreeMap<&str, usize>,
    ) -> Fingerprint<&'a str> {
        let strs = |v: &'a Option<Vec<String>>| v.iter().flatten().map(String::as_str).collect();
        Fingerprint {
            command: strs(&c.command),
            args: strs(&c.args),
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
/// is written as that type would be: same fields, same order.
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
        env::COORDINATOR_URL,
        Cow::Borrowed(cfg.coordinator_url.as_str()),
    ));
    if let Some(ca) = &cfg.coordinator_ca_bundle {
        env.push(plain(env::COORDINATOR_CA, Cow::Borrowed(ca)));
    }
    env.extend([
        plain(env::LOG_LEVEL, knobs.log_level.as_str().into()),
        plain(env::REDIRECT, knobs.redirect.as_str().into()),
        plain(env::ENV_MODE, knobs.env.as_str().into()),
        plain(env::FS_MODE, knobs.fs.as_str().into()),
        plain(
            env::TARGET_CONTAINER,
            Cow::Owned(knobs.target_container.clone()),
        ),
        plain(env::TARGET_PORTS, Cow::Owned(ports)),
        plain(env::GROUP_ID, Cow::Owned(cfg.agent_group_id.to_string())),
        plain(env::TOKEN_FILE, TOKEN_PATH.into()),
    ]);
    if knobs.env == EnvMode::Proc || knobs.fs == FsMode::Proc {
        env.push(plain(
            env::TARGET_MATCH,
            Cow::Owned(target_match(target, neighbours)),
        ));
    }
    if knobs.fs == FsMode::Volumes {
        env.push(plain(env::TARGET_ROOT, TARGET_ROOT.into()));
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

impl AgentContainer<'_> {
    /// Appends the container as JSON: the fields of k8s-openapi's `Container`, in its order.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        let knobs = &self.knobs;
        out.extend_from_slice(br#"{"args":["agent"],"env":"#);
        write_env(out, &self.env);
        if !self.env_from.is_empty() {
            out.extend_from_slice(br#","envFrom":"#);
            push_value(out, &self.env_from);
        }
        out.extend_from_slice(br#","image":"#);
        push_str(out, &knobs.image);
        out.extend_from_slice(br#","name":"#);
        push_str(out, AGENT_CONTAINER_NAME);
        out.extend_from_slice(br#","resources":"#);
        write_resources(out, knobs);
        if knobs.native_sidecar {
            out.extend_from_slice(br#","restartPolicy":"Always""#);
        }
        out.extend_from_slice(br#","securityContext":"#);
        write_security_context(out, knobs, self.run_as_group);
        out.extend_from_slice(br#","volumeMounts":"#);
        push_array(out, &self.volume_mounts, |out, mount| mount.write_json(out));
        out.push(b'}');
    }
}

/// `resources` (as `ResourceRequirements`): requests always, limits when set.
fn write_resources(out: &mut Vec<u8>, knobs: &Knobs) {
    out.push(b'{');
    if knobs.cpu_limit.is_some() || knobs.memory_limit.is_some() {
        out.extend_from_slice(br#""limits":{"#);
        if let Some(cpu) = &knobs.cpu_limit {
            out.extend_from_slice(br#""cpu":"#);
            push_str(out, cpu.as_str());
        }
        if let Some(memory) = &knobs.memory_limit {
            if knobs.cpu_limit.is_some() {
                out.push(b',');
            }
            out.extend_from_slice(br#""memory":"#);
            push_str(out, memory.as_str());
        }
        out.extend_from_slice(b"},");
    }
    out.extend_from_slice(br#""requests":{"cpu":"#);
    push_str(out, knobs.cpu_request.as_str());
    out.extend_from_slice(br#","memory":"#);
    push_str(out, knobs.memory_request.as_str());
    out.extend_from_slice(b"}}");
}

/// The agent's `securityContext` (fields in k8s-openapi's `SecurityContext` order), least
/// privilege per knob. Capabilities added to a non-root container are not effective (Kubernetes
/// sets no ambient capabilities), so the agent runs as uid 0 exactly when it needs one: NET_ADMIN
/// for iptables redirection, SYS_PTRACE to read another process's `/proc/<pid>/environ` or `root`.
fn write_security_context(out: &mut Vec<u8>, knobs: &Knobs, gid: i64) {
    let mut add: Vec<&str> = Vec::new();
    if knobs.redirect == Redirect::Iptables {
        add.push("NET_ADMIN");
    }
    if knobs.env == EnvMode::Proc || knobs.fs == FsMode::Proc {
        add.push("SYS_PTRACE");
    }
    let root = !add.is_empty();
    out.extend_from_slice(br#"{"allowPrivilegeEscalation":false,"capabilities":{"#);
    if root {
        out.extend_from_slice(br#""add":"#);
        push_array(out, &add, |out, cap| push_str(out, cap));
        out.push(b',');
    }
    out.extend_from_slice(br#""drop":["ALL"]},"readOnlyRootFilesystem":true,"runAsGroup":"#);
    push_value(out, &gid);
    out.extend_from_slice(br#","runAsNonRoot":"#);
    push_value(out, &!root);
    out.extend_from_slice(br#","runAsUser":"#);
    push_value(out, if root { &0 } else { &NON_ROOT_UID });
    out.extend_from_slice(br#","seccompProfile":{"type":"RuntimeDefault"}}"#);
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
            .map(|e| {
                let mut out = Vec::new();
                e.write_json(&mut out);
                serde_json::from_slice(&out).unwrap()
            })
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
        let rendered: Vec<Value> =
            serde_json::from_slice(&[b"[", downward_api_env(), b"]"].concat()).unwrap();
        let expected: Vec<Value> = env::DOWNWARD_API
            .iter()
            .map(|(name, path)| json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": path } } }))
            .collect();
        assert_eq!(rendered, expected);
    }

    fn knobs(limits: (Option<&str>, Option<&str>), redirect: Redirect, env: EnvMode) -> Knobs {
        Knobs {
            image: "registry.example/agent:1".to_owned(),
            cpu_request: "5m".parse().unwrap(),
            cpu_limit: limits.0.map(|q| q.parse().unwrap()),
            memory_request: "16Mi".parse().unwrap(),
            memory_limit: limits.1.map(|q| q.parse().unwrap()),
            log_level: super::super::LogLevel::Info,
            native_sidecar: false,
            redirect,
            env,
            fs: FsMode::Volumes,
            target_container: "app".to_owned(),
        }
    }

    /// Written text compared with what k8s-openapi writes for the same values.
    fn same_as_k8s_openapi<T: serde::de::DeserializeOwned + serde::Serialize>(out: &[u8]) -> T {
        let typed: T = serde_json::from_slice(out).unwrap();
        assert_eq!(
            std::str::from_utf8(out).unwrap(),
            serde_json::to_string(&typed).unwrap()
        );
        typed
    }

    #[test]
    fn resources_for_every_combination_of_limits() {
        use k8s_openapi::api::core::v1::ResourceRequirements;
        for limits in [
            (None, None),
            (Some("1"), None),
            (None, Some("64Mi")),
            (Some("1"), Some("64Mi")),
        ] {
            let mut out = Vec::new();
            write_resources(&mut out, &knobs(limits, Redirect::Off, EnvMode::Spec));
            let r: ResourceRequirements = same_as_k8s_openapi(&out);
            let get = |m: &Option<BTreeMap<String, _>>, k: &str| {
                m.as_ref()
                    .and_then(|m| m.get(k))
                    .map(|q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity| q.0.clone())
            };
            assert_eq!(get(&r.requests, "cpu").as_deref(), Some("5m"));
            assert_eq!(get(&r.requests, "memory").as_deref(), Some("16Mi"));
            assert_eq!(get(&r.limits, "cpu").as_deref(), limits.0);
            assert_eq!(get(&r.limits, "memory").as_deref(), limits.1);
            assert_eq!(r.limits.is_some(), limits != (None, None));
        }
    }

    #[test]
    fn security_context_adds_capabilities_only_as_root() {
        use k8s_openapi::api::core::v1::SecurityContext;
        for (redirect, env, caps) in [
            (Redirect::Off, EnvMode::Spec, vec![]),
            (Redirect::Iptables, EnvMode::Spec, vec!["NET_ADMIN"]),
            (Redirect::Off, EnvMode::Proc, vec!["SYS_PTRACE"]),
            (
                Redirect::Iptables,
                EnvMode::Proc,
                vec!["NET_ADMIN", "SYS_PTRACE"],
            ),
        ] {
            let mut out = Vec::new();
            write_security_context(&mut out, &knobs((None, None), redirect, env), 30777);
            let sc: SecurityContext = same_as_k8s_openapi(&out);
            let root = !caps.is_empty();
            let capabilities = sc.capabilities.unwrap();
            assert_eq!(capabilities.add.unwrap_or_default(), caps);
            assert_eq!(capabilities.drop.unwrap(), ["ALL"]);
            assert_eq!(sc.run_as_user, Some(if root { 0 } else { NON_ROOT_UID }));
            assert_eq!(sc.run_as_non_root, Some(!root));
            assert_eq!(sc.run_as_group, Some(30777));
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        }
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
            let mut out = Vec::new();
            push_array(&mut out, &mounts, |out, m| m.write_json(out));
            serde_json::from_slice::<Value>(&out).unwrap()
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
