//! Targets (operator-api.md §4): the names the CLI puts in URLs, and the `Target` objects computed
//! from the inventory. Pure: no I/O, the inventory snapshot comes in as an argument.

use std::fmt;

/// The injected agent container; never a target itself.
pub const AGENT_CONTAINER: &str = "mirrord-agent";

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
}
