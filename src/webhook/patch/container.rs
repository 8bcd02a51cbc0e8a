//! The `mirrord-agent` container: target selection, env and mount copies, security context.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, EnvFromSource, EnvVar, EnvVarSource, ObjectFieldSelector,
        ResourceRequirements, SeccompProfile, SecurityContext, VolumeMount,
    },
    apimachinery::pkg::api::resource::Quantity as K8sQuantity,
};
use serde::Serialize;

use super::{
    AGENT_CONTAINER_NAME, ContainerView, InjectorConfig, TARGET_ENV_PREFIX, TARGET_ROOT, TOKEN_DIR,
    TOKEN_PATH,
    knobs::{EnvMode, FsMode, Knobs, Redirect},
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
/// and an unclosed `$(` is literal text.
pub(crate) fn rewrite_references(value: &str, declared: impl Fn(&str) -> bool) -> String {
    let mut out = String::with_capacity(value.len());
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
                return out;
            };
            let name = &inner[..close];
            if declared(name) {
                out.push_str("$(");
                out.push_str(TARGET_ENV_PREFIX);
                out.push_str(name);
                out.push(')');
            } else {
                out.push_str("$(");
                out.push_str(name);
                out.push(')');
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
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

/// Copies of the target's `env`: prefixed names, references rewritten to the copies where the
/// kubelet would resolve them in the target (variables defined earlier in the list, or possibly by
/// `envFrom`; a later one stays literal in both containers), and `resourceFieldRef`s pinned to the
/// target, since without a container name they would describe the agent's own resources.
fn copy_env(target: &ContainerView) -> Vec<EnvVar> {
    let env = target.env.as_deref().unwrap_or_default();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    env.iter()
        .map(|var| {
            let value = var.value.as_deref().map(|v| {
                rewrite_references(v, |name| {
                    seen.contains(name) || may_come_from_env_from(target, name)
                })
            });
            let value_from = var.value_from.clone().map(|mut source| {
                if let Some(field) = source.resource_field_ref.as_mut() {
                    field
                        .container_name
                        .get_or_insert_with(|| target.name.clone());
                }
                source
            });
            seen.insert(&var.name);
            EnvVar {
                name: format!("{TARGET_ENV_PREFIX}{}", var.name),
                value,
                value_from,
            }
        })
        .collect()
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

/// The target's mounts, read-only under [`TARGET_ROOT`]. A `subPathExpr` expands with the
/// container's env, so its references follow the env copies; without those copies (env knob not
/// `spec`) a mount whose `subPathExpr` names a target variable cannot be reproduced and is left out.
fn copy_mounts(
    target: &ContainerView,
    env_copied: bool,
    warnings: &mut Vec<String>,
) -> Vec<VolumeMount> {
    // subPathExpr sees the container's complete environment.
    let env_names: BTreeSet<&str> = target
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    let declared = |name: &str| env_names.contains(name) || may_come_from_env_from(target, name);
    let mut mounts = Vec::new();
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
            other => other.map(str::to_owned),
        };
        let separator = if mount.mount_path.starts_with('/') {
            ""
        } else {
            "/"
        };
        mounts.push(VolumeMount {
            name: mount.name.clone(),
            mount_path: format!("{TARGET_ROOT}{separator}{}", mount.mount_path),
            read_only: Some(true),
            sub_path: mount.sub_path.clone(),
            sub_path_expr,
            ..VolumeMount::default()
        });
    }
    mounts
}

fn plain(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: path.to_owned(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// Everything `agent_container` needs besides the config.
pub(crate) struct AgentInputs<'a> {
    pub knobs: &'a Knobs,
    pub target: &'a ContainerView,
    /// The pod's other long-running containers (regular ones and native sidecars).
    pub neighbours: &'a [&'a ContainerView],
    pub token_volume: &'a str,
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

pub(crate) fn agent_container(
    inputs: &AgentInputs<'_>,
    cfg: &InjectorConfig,
    warnings: &mut Vec<String>,
) -> Container {
    let AgentInputs {
        knobs,
        target,
        neighbours,
        token_volume,
    } = *inputs;

    let ports: Vec<String> = target
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|p| p.container_port)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|p| p.to_string())
        .collect();

    let mut env = vec![
        field("MIRRORD_AGENT_POD_NAME", "metadata.name"),
        field("MIRRORD_AGENT_POD_NAMESPACE", "metadata.namespace"),
        field("MIRRORD_AGENT_POD_UID", "metadata.uid"),
        field("MIRRORD_AGENT_POD_IP", "status.podIP"),
        field("MIRRORD_AGENT_POD_IPS", "status.podIPs"),
        field("MIRRORD_AGENT_NODE_NAME", "spec.nodeName"),
        plain("MIRRORD_AGENT_COORDINATOR_URL", &cfg.coordinator_url),
    ];
    if let Some(ca) = &cfg.coordinator_ca_bundle {
        env.push(plain("MIRRORD_AGENT_COORDINATOR_CA", ca));
    }
    env.extend([
        plain("MIRRORD_AGENT_LOG_LEVEL", knobs.log_level.as_str()),
        plain("MIRRORD_AGENT_REDIRECT", knobs.redirect.as_str()),
        plain("MIRRORD_AGENT_ENV_MODE", knobs.env.as_str()),
        plain("MIRRORD_AGENT_FS_MODE", knobs.fs.as_str()),
        plain("MIRRORD_AGENT_TARGET_CONTAINER", &knobs.target_container),
        plain("MIRRORD_AGENT_TARGET_PORTS", ports.join(",")),
        plain("MIRRORD_AGENT_GROUP_ID", cfg.agent_group_id.to_string()),
        plain("MIRRORD_AGENT_TOKEN_FILE", TOKEN_PATH),
    ]);
    if knobs.env == EnvMode::Proc || knobs.fs == FsMode::Proc {
        env.push(plain(
            "MIRRORD_AGENT_TARGET_MATCH",
            target_match(target, neighbours),
        ));
    }
    if knobs.fs == FsMode::Volumes {
        env.push(plain("MIRRORD_AGENT_TARGET_ROOT", TARGET_ROOT));
    }
    let env_copied = knobs.env == EnvMode::Spec;
    let env_from = if env_copied {
        env.extend(copy_env(target));
        copy_env_from(target)
    } else {
        Vec::new()
    };

    let mut volume_mounts = vec![VolumeMount {
        name: token_volume.to_owned(),
        mount_path: TOKEN_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    if knobs.fs == FsMode::Volumes {
        volume_mounts.extend(copy_mounts(target, env_copied, warnings));
    }

    let requests = BTreeMap::from([
        ("cpu".to_owned(), K8sQuantity(knobs.cpu_request.to_string())),
        (
            "memory".to_owned(),
            K8sQuantity(knobs.memory_request.to_string()),
        ),
    ]);
    let mut limits = BTreeMap::new();
    if let Some(cpu) = &knobs.cpu_limit {
        limits.insert("cpu".to_owned(), K8sQuantity(cpu.to_string()));
    }
    if let Some(memory) = &knobs.memory_limit {
        limits.insert("memory".to_owned(), K8sQuantity(memory.to_string()));
    }

    Container {
        name: AGENT_CONTAINER_NAME.to_owned(),
        image: Some(knobs.image.clone()),
        args: Some(vec!["agent".to_owned()]),
        env: Some(env),
        env_from: (!env_from.is_empty()).then_some(env_from),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            limits: (!limits.is_empty()).then_some(limits),
            ..ResourceRequirements::default()
        }),
        security_context: Some(security_context(knobs, cfg.agent_group_id)),
        volume_mounts: Some(volume_mounts),
        restart_policy: knobs.native_sidecar.then(|| "Always".to_owned()),
        ..Container::default()
    }
}

/// Least privilege per knob. Capabilities added to a non-root container are not effective (Kubernetes
/// sets no ambient capabilities), so the agent runs as uid 0 exactly when it needs one: NET_ADMIN
/// for iptables redirection, SYS_PTRACE to read another process's `/proc/<pid>/environ` or `root`.
fn security_context(knobs: &Knobs, gid: i64) -> SecurityContext {
    let mut add = Vec::new();
    if knobs.redirect == Redirect::Iptables {
        add.push("NET_ADMIN".to_owned());
    }
    if knobs.env == EnvMode::Proc || knobs.fs == FsMode::Proc {
        add.push("SYS_PTRACE".to_owned());
    }
    let root = !add.is_empty();
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            add: root.then_some(add),
            drop: Some(vec!["ALL".to_owned()]),
        }),
        read_only_root_filesystem: Some(true),
        run_as_group: Some(gid),
        run_as_non_root: Some(!root),
        run_as_user: Some(if root { 0 } else { NON_ROOT_UID }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..SecurityContext::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let r = |v: &str| rewrite_references(v, declared);
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
        let copies = copy_env(&target);
        let values: Vec<_> = copies
            .iter()
            .map(|v| (v.name.as_str(), v.value.as_deref()))
            .collect();
        assert_eq!(
            values,
            vec![
                ("MIRRORD_TARGET_ENV_A", Some("$(B)")),
                ("MIRRORD_TARGET_ENV_B", Some("b")),
                (
                    "MIRRORD_TARGET_ENV_C",
                    Some("$(MIRRORD_TARGET_ENV_A)-$(MIRRORD_TARGET_ENV_B)-$$(A)")
                ),
                ("MIRRORD_TARGET_ENV_CPU", None),
            ]
        );
        let field = copies[3]
            .value_from
            .as_ref()
            .unwrap()
            .resource_field_ref
            .as_ref()
            .unwrap();
        assert_eq!(field.container_name.as_deref(), Some("app"));
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
            copy_env(t)
                .into_iter()
                .map(|v| v.value.unwrap())
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
        let mut warnings = Vec::new();
        let mounts = copy_mounts(&target, true, &mut warnings);
        assert_eq!(mounts[0].mount_path, "/mirrord/target/data");
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(mounts[0].mount_propagation, None);
        assert_eq!(mounts[0].sub_path.as_deref(), Some("x"));
        assert_eq!(mounts[1].mount_path, "/mirrord/target/logs");
        assert_eq!(
            mounts[1].sub_path_expr.as_deref(),
            Some("$(MIRRORD_TARGET_ENV_POD)")
        );
        assert!(warnings.is_empty());
        let mounts = copy_mounts(&target, false, &mut warnings);
        assert_eq!(mounts.len(), 1);
        assert_eq!(warnings.len(), 1);
    }
}
