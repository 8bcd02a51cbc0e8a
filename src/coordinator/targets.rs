//! Targets (operator-api.md §4): the names the CLI puts in URLs, and the `Target` objects computed
//! from the inventory. Pure: no I/O, the inventory snapshot comes in as an argument.

use std::fmt;

use k8s_openapi::{
    api::core::v1::{Pod, PodSpec, PodTemplateSpec},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::{coordinator::api::state::NamespaceInventory, webhook::patch::STATUS_ANNOTATION};

/// The annotation kubectl and the mirrord CLI read to pick a pod's container.
const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";

/// The injected agent container; never a target itself.
pub const AGENT_CONTAINER: &str = crate::webhook::patch::AGENT_CONTAINER_NAME;

/// The kinds of workload a target can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetKind {
    Deployment,
    Pod,
    Rollout,
    Job,
    CronJob,
    StatefulSet,
    Service,
    ReplicaSet,
}

impl TargetKind {
    pub const ALL: [TargetKind; 8] = [
        Self::Deployment,
        Self::Pod,
        Self::Rollout,
        Self::Job,
        Self::CronJob,
        Self::StatefulSet,
        Self::Service,
        Self::ReplicaSet,
    ];

    /// The prefix of the connect URL name (`deployment.web`), also the `mirrord ls` path kind
    /// (`deployment/web`).
    pub fn url_prefix(self) -> &'static str {
        match self {
            Self::Deployment => "deployment",
            Self::Pod => "pod",
            Self::Rollout => "rollout",
            Self::Job => "job",
            Self::CronJob => "cronjob",
            Self::StatefulSet => "statefulset",
            Self::Service => "service",
            Self::ReplicaSet => "replicaset",
        }
    }

    /// The prefix of object names (`TargetCrd::urlfied_name`): like the URL form but `deploy`.
    pub fn object_prefix(self) -> &'static str {
        match self {
            Self::Deployment => "deploy",
            other => other.url_prefix(),
        }
    }

    /// The key of the `Target` JSON union (`{"deployment": "web", "container": null}`).
    pub fn json_key(self) -> &'static str {
        match self {
            Self::CronJob => "cron_job",
            Self::StatefulSet => "stateful_set",
            Self::ReplicaSet => "replica_set",
            other => other.url_prefix(),
        }
    }

    /// Accepts both encodings of operator-api.md §4.2.
    fn from_prefix(prefix: &str) -> Option<Self> {
        if prefix == "deploy" {
            return Some(Self::Deployment);
        }
        Self::ALL
            .into_iter()
            .find(|kind| kind.url_prefix() == prefix)
    }
}

/// A parsed target name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TargetRef {
    /// `targetless`: a session with no pod.
    Targetless,
    /// `label`: the selector and container travel in the `label_target` connect parameter.
    Label,
    Workload {
        kind: TargetKind,
        name: String,
        container: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetNameError {
    #[error(
        "target name {0:?} is not of the form <type>.<name>[.container.<container>] (types: deployment or deploy, pod, rollout, job, cronjob, statefulset, service, replicaset), targetless or label"
    )]
    Malformed(String),
    #[error("{0:?} is not a valid Kubernetes object name")]
    BadName(String),
    #[error("{0:?} is not a valid container name")]
    BadContainer(String),
    #[error(
        "the container {AGENT_CONTAINER:?} is the mirrord agent injected beside your app; target the app container instead (e.g. {0}.container.<app container>, or leave the container out)"
    )]
    AgentContainer(String),
}

impl TargetRef {
    /// Parses the last path segment under `targets/` (either encoding of operator-api.md §4.2).
    pub fn parse(segment: &str) -> Result<Self, TargetNameError> {
        match segment {
            "targetless" => return Ok(Self::Targetless),
            "label" => return Ok(Self::Label),
            _ => {}
        }
        let malformed = || TargetNameError::Malformed(segment.to_owned());
        let (prefix, rest) = segment.split_once('.').ok_or_else(malformed)?;
        let kind = TargetKind::from_prefix(prefix).ok_or_else(malformed)?;
        // Container names are DNS labels (no dots), object names may have dots: split at the last
        // `.container.`.
        let (name, container) = match rest.rsplit_once(".container.") {
            Some((name, container)) => (name, Some(container)),
            None => (rest, None),
        };
        if !is_dns_subdomain(name) {
            return Err(TargetNameError::BadName(name.to_owned()));
        }
        if let Some(container) = container {
            if !is_dns_label(container) {
                return Err(TargetNameError::BadContainer(container.to_owned()));
            }
            if container == AGENT_CONTAINER {
                return Err(TargetNameError::AgentContainer(format!(
                    "{}.{name}",
                    kind.url_prefix()
                )));
            }
        }
        Ok(Self::Workload {
            kind,
            name: name.to_owned(),
            container: container.map(str::to_owned),
        })
    }

    /// The object name (`deploy.web.container.app`, `targetless`).
    pub fn object_name(&self) -> String {
        match self {
            Self::Targetless => "targetless".into(),
            Self::Label => "label".into(),
            Self::Workload {
                kind,
                name,
                container,
            } => match container {
                Some(c) => format!("{}.{name}.container.{c}", kind.object_prefix()),
                None => format!("{}.{name}", kind.object_prefix()),
            },
        }
    }

    /// The SubjectAccessReview resource name kube-apiserver uses: the URL segment as sent.
    /// Exposed so policies and RBAC `resourceNames` can be written as `deployment.NAME`.
    pub fn url_name(&self) -> String {
        match self {
            Self::Workload {
                kind,
                name,
                container,
            } => match container {
                Some(c) => format!("{}.{name}.container.{c}", kind.url_prefix()),
                None => format!("{}.{name}", kind.url_prefix()),
            },
            other => other.object_name(),
        }
    }
}

impl fmt::Display for TargetRef {
    /// The `mirrord ls` / session display form: `deployment/web/container/app`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Targetless => f.write_str("targetless"),
            Self::Label => f.write_str("label"),
            Self::Workload {
                kind,
                name,
                container,
            } => {
                write!(f, "{}/{name}", kind.url_prefix())?;
                if let Some(c) = container {
                    write!(f, "/container/{c}")?;
                }
                Ok(())
            }
        }
    }
}

/// One target of the list: a workload and one of its app containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetEntry {
    /// Always a [`TargetRef::Workload`] with the container set.
    pub target: TargetRef,
    /// Whether a session could attach now: at least one Running pod with an injected agent.
    pub available: bool,
    /// Names of the workload's Running pods that carry an agent.
    pub ready_pods: Vec<String>,
}

/// A workload found in the inventory: its kind, name, app containers (template order, the agent
/// left out), the container to use when none is named, and its pods.
struct Workload<'a> {
    kind: TargetKind,
    name: String,
    containers: Vec<String>,
    default_container: Option<String>,
    pods: Vec<&'a Pod>,
}

/// All targets of a namespace, one per (workload, app container), sorted by kind then name.
/// Decides whether a Running pod carries an agent a session can use. [`has_agent`] until the agent
/// registry is wired in; then also "its agent is connected".
pub type AgentCheck<'a> = &'a dyn Fn(&Pod) -> bool;

pub fn list_targets(inventory: &NamespaceInventory, agent: AgentCheck<'_>) -> Vec<TargetEntry> {
    let mut out: Vec<TargetEntry> = workloads(inventory)
        .into_iter()
        .flat_map(|w| {
            let ready = ready_pods(&w.pods, agent);
            w.containers
                .iter()
                .map(move |c| TargetEntry {
                    target: TargetRef::Workload {
                        kind: w.kind,
                        name: w.name.clone(),
                        container: Some(c.clone()),
                    },
                    available: !ready.is_empty(),
                    ready_pods: ready.clone(),
                })
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort_by_key(|entry| entry.target.object_name());
    out
}

/// Why a named target cannot be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{target} has no container named {container:?} (containers: {known})")]
    NoSuchContainer {
        target: String,
        container: String,
        known: String,
    },
    #[error("{0} has no app container")]
    NoContainer(String),
    #[error("{0} is not a workload target")]
    NotAWorkload(String),
}

/// Resolves a workload target: fills in the container (the named one, else the
/// `kubectl.kubernetes.io/default-container` of the template, else the first app container).
pub fn resolve(
    inventory: &NamespaceInventory,
    target: &TargetRef,
    agent: AgentCheck<'_>,
) -> Result<TargetEntry, ResolveError> {
    let TargetRef::Workload {
        kind,
        name,
        container,
    } = target
    else {
        return Err(ResolveError::NotAWorkload(target.to_string()));
    };
    let workload = workloads(inventory)
        .into_iter()
        .find(|w| w.kind == *kind && w.name == *name)
        .ok_or_else(|| ResolveError::NotFound(target.to_string()))?;
    let container = match container {
        Some(c) if workload.containers.contains(c) => c.clone(),
        Some(c) => {
            return Err(ResolveError::NoSuchContainer {
                target: format!("{}/{}", kind.url_prefix(), name),
                container: c.clone(),
                known: workload.containers.join(", "),
            });
        }
        None => workload
            .default_container
            .clone()
            .filter(|c| workload.containers.contains(c))
            .or_else(|| workload.containers.first().cloned())
            .ok_or_else(|| ResolveError::NoContainer(target.to_string()))?,
    };
    let ready = ready_pods(&workload.pods, agent);
    Ok(TargetEntry {
        target: TargetRef::Workload {
            kind: *kind,
            name: name.clone(),
            container: Some(container),
        },
        available: !ready.is_empty(),
        ready_pods: ready,
    })
}

/// Running pods with an injected agent (the container, or the webhook's status annotation).
fn ready_pods(pods: &[&Pod], agent: AgentCheck<'_>) -> Vec<String> {
    let mut names: Vec<String> = pods
        .iter()
        .filter(|pod| {
            pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") && agent(pod)
        })
        .filter_map(|pod| pod.metadata.name.clone())
        .collect();
    names.sort();
    names
}

/// Whether the pod carries the injected agent.
pub fn has_agent(pod: &Pod) -> bool {
    let in_spec = pod.spec.as_ref().is_some_and(|spec| {
        spec.containers.iter().any(|c| c.name == AGENT_CONTAINER)
            || spec
                .init_containers
                .iter()
                .flatten()
                .any(|c| c.name == AGENT_CONTAINER)
    });
    in_spec
        || pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(STATUS_ANNOTATION))
}

fn app_containers(spec: Option<&PodSpec>) -> Vec<String> {
    spec.map(|s| {
        s.containers
            .iter()
            .map(|c| c.name.clone())
            .filter(|n| n != AGENT_CONTAINER)
            .collect()
    })
    .unwrap_or_default()
}

fn default_container(meta: Option<&ObjectMeta>) -> Option<String> {
    meta?.annotations.as_ref()?.get(DEFAULT_CONTAINER).cloned()
}

fn uid(meta: &ObjectMeta) -> Option<&str> {
    meta.uid.as_deref()
}

fn owned_by(meta: &ObjectMeta, owner_uids: &[&str]) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| owner_uids.contains(&o.uid.as_str()))
}

fn pods_of<'a>(inventory: &'a NamespaceInventory, owner_uids: &[&str]) -> Vec<&'a Pod> {
    inventory
        .pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| owned_by(&p.metadata, owner_uids))
        .collect()
}

/// ReplicaSets owned by any of `owner_uids`.
fn replica_set_uids<'a>(inventory: &'a NamespaceInventory, owner_uids: &[&str]) -> Vec<&'a str> {
    inventory
        .replica_sets
        .iter()
        .filter(|rs| owned_by(&rs.metadata, owner_uids))
        .filter_map(|rs| uid(&rs.metadata))
        .collect()
}

fn workloads(inventory: &NamespaceInventory) -> Vec<Workload<'_>> {
    let mut out = Vec::new();
    for pod in &inventory.pods {
        let Some(name) = pod.metadata.name.clone() else {
            continue;
        };
        out.push(Workload {
            kind: TargetKind::Pod,
            name,
            containers: app_containers(pod.spec.as_ref()),
            default_container: default_container(Some(&pod.metadata)),
            pods: vec![pod.as_ref()],
        });
    }
    for d in &inventory.deployments {
        let Some(name) = d.metadata.name.clone() else {
            continue;
        };
        let template = d.spec.as_ref().map(|s| &s.template);
        let rs = uid(&d.metadata)
            .map(|u| replica_set_uids(inventory, &[u]))
            .unwrap_or_default();
        out.push(Workload {
            kind: TargetKind::Deployment,
            name,
            containers: app_containers(template.and_then(|t| t.spec.as_ref())),
            default_container: default_container(template.and_then(|t| t.metadata.as_ref())),
            pods: pods_of(inventory, &rs),
        });
    }
    for rs in &inventory.replica_sets {
        let Some(name) = rs.metadata.name.clone() else {
            continue;
        };
        let template = rs.spec.as_ref().and_then(|s| s.template.as_ref());
        out.push(Workload {
            kind: TargetKind::ReplicaSet,
            name,
            containers: app_containers(template.and_then(|t| t.spec.as_ref())),
            default_container: default_container(template.and_then(|t| t.metadata.as_ref())),
            pods: uid(&rs.metadata)
                .map(|u| pods_of(inventory, &[u]))
                .unwrap_or_default(),
        });
    }
    for sts in &inventory.stateful_sets {
        let Some(name) = sts.metadata.name.clone() else {
            continue;
        };
        let template = sts.spec.as_ref().map(|s| &s.template);
        out.push(Workload {
            kind: TargetKind::StatefulSet,
            name,
            containers: app_containers(template.and_then(|t| t.spec.as_ref())),
            default_container: default_container(template.and_then(|t| t.metadata.as_ref())),
            pods: uid(&sts.metadata)
                .map(|u| pods_of(inventory, &[u]))
                .unwrap_or_default(),
        });
    }
    for job in &inventory.jobs {
        let Some(name) = job.metadata.name.clone() else {
            continue;
        };
        let template = job.spec.as_ref().map(|s| &s.template);
        out.push(Workload {
            kind: TargetKind::Job,
            name,
            containers: app_containers(template.and_then(|t| t.spec.as_ref())),
            default_container: default_container(template.and_then(|t| t.metadata.as_ref())),
            pods: uid(&job.metadata)
                .map(|u| pods_of(inventory, &[u]))
                .unwrap_or_default(),
        });
    }
    for cj in &inventory.cron_jobs {
        let Some(name) = cj.metadata.name.clone() else {
            continue;
        };
        let template = cj
            .spec
            .as_ref()
            .and_then(|s| s.job_template.spec.as_ref())
            .map(|s| &s.template);
        let jobs: Vec<&str> = uid(&cj.metadata)
            .map(|u| {
                inventory
                    .jobs
                    .iter()
                    .filter(|j| owned_by(&j.metadata, &[u]))
                    .filter_map(|j| uid(&j.metadata))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Workload {
            kind: TargetKind::CronJob,
            name,
            containers: app_containers(template.and_then(|t| t.spec.as_ref())),
            default_container: default_container(template.and_then(|t| t.metadata.as_ref())),
            pods: pods_of(inventory, &jobs),
        });
    }
    for rollout in &inventory.rollouts {
        let Some(name) = rollout.metadata.name.clone() else {
            continue;
        };
        let (containers, default) = rollout_template(inventory, &rollout.data);
        let rs = uid(&rollout.metadata)
            .map(|u| replica_set_uids(inventory, &[u]))
            .unwrap_or_default();
        out.push(Workload {
            kind: TargetKind::Rollout,
            name,
            containers,
            default_container: default,
            pods: pods_of(inventory, &rs),
        });
    }
    out
}

/// A Rollout's containers and default container, from its pod template.
fn rollout_template(
    inventory: &NamespaceInventory,
    data: &serde_json::Value,
) -> (Vec<String>, Option<String>) {
    let template = rollout_pod_template(data, |name| {
        inventory
            .deployments
            .iter()
            .find(|d| d.metadata.name.as_deref() == Some(name))
            .and_then(|d| d.spec.as_ref())
            .map(|s| s.template.clone())
    });
    let template = template.as_ref();
    (
        app_containers(template.and_then(|t| t.spec.as_ref())),
        default_container(template.and_then(|t| t.metadata.as_ref())),
    )
}

/// A Rollout's pod template (its object's JSON): `spec.template`, or the template of the
/// Deployment its `spec.workloadRef` names (`deployment(name)`, same namespace).
pub fn rollout_pod_template(
    data: &serde_json::Value,
    deployment: impl Fn(&str) -> Option<PodTemplateSpec>,
) -> Option<PodTemplateSpec> {
    let spec = &data["spec"];
    if let Some(template) = spec.get("template").filter(|t| t.is_object()) {
        return serde_json::from_value(template.clone()).ok();
    }
    let reference = &spec["workloadRef"];
    if reference["kind"] == "Deployment" {
        return deployment(reference["name"].as_str()?);
    }
    None
}

/// RFC 1123 subdomain, as Kubernetes object names.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label_part)
}

/// RFC 1123 label, as container names.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_label_part(s)
}

fn is_dns_label_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(kind: TargetKind, name: &str, container: Option<&str>) -> TargetRef {
        TargetRef::Workload {
            kind,
            name: name.into(),
            container: container.map(Into::into),
        }
    }

    #[test]
    fn rollout_templates_inline_or_by_workload_ref() {
        let web: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "spec": {"containers": [{"name": "web", "env": [{"name": "Q", "value": "orders"}]}]}
        }))
        .unwrap();
        let deployments = |name: &str| (name == "web").then(|| web.clone());
        let inline = serde_json::json!({"spec": {"template": {
            "metadata": {"annotations": {"kubectl.kubernetes.io/default-container": "app"}},
            "spec": {"containers": [{"name": "app"}, {"name": "side"}]}}}});
        let template = rollout_pod_template(&inline, deployments).unwrap();
        let names: Vec<_> = template
            .spec
            .unwrap()
            .containers
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["app", "side"]);
        let by_ref = serde_json::json!({"spec": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}});
        assert_eq!(
            rollout_pod_template(&by_ref, deployments),
            Some(web.clone())
        );
        for none in [
            serde_json::json!({"spec": {"workloadRef": {"kind": "Deployment", "name": "gone"}}}),
            serde_json::json!({"spec": {"workloadRef": {"kind": "StatefulSet", "name": "web"}}}),
            serde_json::json!({"spec": {}}),
            serde_json::json!({"spec": {"template": {"spec": {"containers": "not a list"}}}}),
        ] {
            assert_eq!(rollout_pod_template(&none, deployments), None, "{none}");
        }
    }

    #[test]
    fn parses_both_encodings() {
        assert_eq!(
            TargetRef::parse("deployment.web").unwrap(),
            workload(TargetKind::Deployment, "web", None)
        );
        assert_eq!(
            TargetRef::parse("deploy.web.container.app").unwrap(),
            workload(TargetKind::Deployment, "web", Some("app"))
        );
        assert_eq!(
            TargetRef::parse("pod.web-1.example.container.c").unwrap(),
            workload(TargetKind::Pod, "web-1.example", Some("c"))
        );
        assert_eq!(
            TargetRef::parse("cronjob.nightly").unwrap(),
            workload(TargetKind::CronJob, "nightly", None)
        );
        assert_eq!(
            TargetRef::parse("targetless").unwrap(),
            TargetRef::Targetless
        );
        assert_eq!(TargetRef::parse("label").unwrap(), TargetRef::Label);
    }

    #[test]
    fn round_trips_names() {
        let t = TargetRef::parse("deployment.web.container.app").unwrap();
        assert_eq!(t.url_name(), "deployment.web.container.app");
        assert_eq!(t.object_name(), "deploy.web.container.app");
        assert_eq!(t.to_string(), "deployment/web/container/app");
        for kind in TargetKind::ALL {
            let t = workload(kind, "x", None);
            assert_eq!(TargetRef::parse(&t.url_name()).unwrap(), t);
            assert_eq!(TargetRef::parse(&t.object_name()).unwrap(), t);
        }
    }

    #[test]
    fn refuses_bad_names() {
        for bad in [
            "",
            "deployment",
            "deployment.",
            "widget.x",
            "deployment.Web",
            "deployment.web.container.",
            "deployment.web.container.A",
            "deployment..x",
        ] {
            assert!(TargetRef::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_the_agent_container() {
        let err = TargetRef::parse("deployment.web.container.mirrord-agent").unwrap_err();
        assert!(matches!(err, TargetNameError::AgentContainer(_)));
        assert!(err.to_string().contains("target the app container"));
    }

    proptest::proptest! {
        /// Any string either parses into a name that prints back to an equivalent form, or is
        /// refused; never a panic.
        #[test]
        fn parse_never_panics_and_round_trips(segment in "[a-z0-9.-]{0,40}|\\PC{0,40}") {
            if let Ok(target) = TargetRef::parse(&segment) {
                proptest::prop_assert_eq!(TargetRef::parse(&target.url_name()).unwrap(), target.clone());
                proptest::prop_assert_eq!(TargetRef::parse(&target.object_name()).unwrap(), target);
            }
        }
    }
}
