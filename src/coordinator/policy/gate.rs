//! Where the coordinator asks the policies: at connect and per port subscription. Policies are read
//! from the [`PolicySource`] (the watch-fed caches) at each check, so a policy added while a session
//! runs applies to its next subscriptions and a deleted one stops applying.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use kube::ResourceExt;

use super::eval::{
    self, Destination, HttpFilterRequest, IncomingMode, NamedPolicy, PolicyRef, Refusal, TargetInfo,
};
use super::files::FileAccess;
use super::secret_env::{HiddenEnv, SecretEnvSources};
use crate::coordinator::api::state::{
    Authorizer, Decision, Identity, NamespaceInventory, ResourceAttributes,
};
use crate::coordinator::targets::{TargetKind, TargetRef};
use crate::protocol::HttpFilter;

/// The policies in force now.
pub trait PolicySource: Send + Sync {
    fn policies(&self) -> Vec<NamedPolicy>;
}

/// A fixed list (tests, and a coordinator run without a cluster).
impl PolicySource for Vec<NamedPolicy> {
    fn policies(&self) -> Vec<NamedPolicy> {
        self.clone()
    }
}

/// Names a session's own DNS answers gave for an address, kept per session up to this many
/// addresses (older sessions resolving endlessly must not grow the coordinator).
const MAX_DNS_ADDRESSES: usize = 4096;

struct SessionEntry {
    target: TargetInfo,
    names: HashMap<IpAddr, BTreeSet<String>>,
    /// Env variables from Secrets the session's user may not `get`, with the reason.
    hidden_env: HiddenEnv,
}

/// The policy checks of every session, by session id.
pub struct PolicyGate {
    source: Arc<dyn PolicySource>,
    sessions: Mutex<HashMap<u64, SessionEntry>>,
    /// Asks whether a user may `get` a Secret (SubjectAccessReview); none: Secret env is not checked.
    secrets: Option<Arc<dyn Authorizer>>,
}

impl PolicyGate {
    pub fn new(source: Arc<dyn PolicySource>) -> PolicyGate {
        PolicyGate {
            source,
            sessions: Mutex::default(),
            secrets: None,
        }
    }

    /// Env values from Secrets reach a session only if its user may `get` the Secret.
    pub fn with_secret_authorizer(mut self, authorizer: Arc<dyn Authorizer>) -> PolicyGate {
        self.secrets = Some(authorizer);
        self
    }

    /// At connect, after [`PolicyGate::connect`]: one review per Secret the target container's env
    /// reads (`valueFrom.secretKeyRef`, `envFrom.secretRef`); the variables that may carry a Secret
    /// the user may not `get` (or that could not be reviewed) are hidden from the session's env
    /// answers (see [`super::secret_env`]).
    pub async fn review_secret_env(
        &self,
        session: u64,
        identity: &Identity,
        namespace: &str,
        sources: SecretEnvSources,
    ) {
        let Some(authorizer) = &self.secrets else {
            return;
        };
        let mut denied = BTreeMap::new();
        for secret in sources.secrets() {
            let attributes = ResourceAttributes {
                verb: "get",
                group: "",
                version: "v1",
                resource: "secrets",
                subresource: None,
                namespace: Some(namespace.to_owned()),
                name: Some(secret.clone()),
            };
            let why = match authorizer.authorize(identity, &attributes).await {
                Ok(Decision::Allow) => continue,
                Ok(Decision::Deny { .. }) => {
                    format!(
                        "user {} may not get Secret {namespace}/{secret}",
                        identity.user
                    )
                }
                Err(e) => format!("Secret {namespace}/{secret} could not be reviewed: {}", e.0),
            };
            denied.insert(secret, why);
        }
        let hidden = sources.hidden(&denied);
        if let Some(entry) = self.sessions().get_mut(&session) {
            entry.hidden_env = hidden;
        }
    }

    /// Why `name` is hidden from `session` as a Secret value, if it is.
    pub fn secret_env_hidden(&self, session: u64, name: &str) -> Option<String> {
        self.sessions()
            .get(&session)
            .and_then(|e| e.hidden_env.why(name).map(str::to_owned))
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SessionEntry>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn target(&self, session: u64) -> Option<TargetInfo> {
        self.sessions().get(&session).map(|e| e.target.clone())
    }

    /// At connect: the profile rules. On success the session's target is remembered for the
    /// checks of its subscriptions.
    pub fn connect(
        &self,
        session: u64,
        target: TargetInfo,
        profile: Option<&str>,
    ) -> Result<(), Refusal> {
        let policies = self.source.policies();
        eval::check_connect(&eval::applicable(&policies, &target), profile)?;
        self.sessions().insert(
            session,
            SessionEntry {
                target,
                names: HashMap::new(),
                hidden_env: HiddenEnv::default(),
            },
        );
        Ok(())
    }

    /// A mirror or steal subscription of `session` (unknown sessions pass: they never connected
    /// through [`PolicyGate::connect`]).
    pub fn incoming(
        &self,
        session: u64,
        mode: IncomingMode,
        port: u16,
        filter: Option<&HttpFilter>,
    ) -> Result<(), Refusal> {
        let Some(target) = self.target(session) else {
            return Ok(());
        };
        let policies = self.source.policies();
        let filter = filter.map(filter_request);
        eval::check_incoming(
            &eval::applicable(&policies, &target),
            mode,
            port,
            filter.as_ref(),
        )
    }

    /// The names of the policies that apply to `session` now (for `status` and the sessions API).
    pub fn applied(&self, session: u64) -> Vec<String> {
        let Some(target) = self.target(session) else {
            return Vec::new();
        };
        let policies = self.source.policies();
        eval::applicable(&policies, &target)
            .iter()
            .map(|p| p.reference.to_string())
            .collect()
    }

    /// The policy whose `env.exclude` keeps `name` from `session`, if any.
    pub fn env_excluded(&self, session: u64, name: &str) -> Option<PolicyRef> {
        let target = self.target(session)?;
        let policies = self.source.policies();
        eval::env_excluded(&eval::applicable(&policies, &target), name).cloned()
    }

    /// Remembers a DNS answer the session received, for hostname rules.
    pub fn resolved(&self, session: u64, name: &str, ip: IpAddr) {
        let mut sessions = self.sessions();
        let Some(entry) = sessions.get_mut(&session) else {
            return;
        };
        if entry.names.len() >= MAX_DNS_ADDRESSES && !entry.names.contains_key(&ip) {
            return;
        }
        let name = name.strip_suffix('.').unwrap_or(name).to_owned();
        entry.names.entry(ip).or_default().insert(name);
    }

    /// An outgoing connection or UDP socket of `session`; the host names come from its own DNS
    /// answers.
    pub fn outgoing(
        &self,
        session: u64,
        ip: IpAddr,
        port: u16,
        protocol: super::crd::Protocol,
    ) -> Result<(), Refusal> {
        let Some((target, hostnames)) = self.sessions().get(&session).map(|e| {
            let names = e.names.get(&ip).map(|n| n.iter().cloned().collect());
            (e.target.clone(), names.unwrap_or_default())
        }) else {
            return Ok(());
        };
        let policies = self.source.policies();
        let dest = Destination {
            ip,
            port,
            protocol,
            hostnames,
        };
        eval::check_outgoing(&eval::applicable(&policies, &target), &dest)
    }

    /// A file request of `session` on its target: the first path a rule applies to decides.
    pub fn file(&self, session: u64, access: &FileAccess) -> eval::FileDecision {
        let Some(target) = self.target(session) else {
            return eval::FileDecision::Remote;
        };
        let policies = self.source.policies();
        let applicable = eval::applicable(&policies, &target);
        access
            .paths
            .iter()
            .map(|path| eval::check_file(&applicable, path, access.op))
            .find(|d| *d != eval::FileDecision::Remote)
            .unwrap_or(eval::FileDecision::Remote)
    }

    /// The policies in force for `session` now, to check many paths at once (a directory
    /// listing).
    pub fn in_force(&self, session: u64) -> Vec<NamedPolicy> {
        let Some(target) = self.target(session) else {
            return Vec::new();
        };
        let policies = self.source.policies();
        eval::applicable(&policies, &target)
            .into_iter()
            .cloned()
            .collect()
    }

    pub fn forget(&self, session: u64) {
        self.sessions().remove(&session);
    }
}

/// The protocol's filter in the evaluation's terms; body and jq filters never satisfy a header
/// pattern, like path filters.
fn filter_request(filter: &HttpFilter) -> HttpFilterRequest {
    match filter {
        HttpFilter::Header(re) => HttpFilterRequest::Header(re.0.clone()),
        HttpFilter::Path(re) => HttpFilterRequest::Path(re.0.clone()),
        HttpFilter::Method(m) => HttpFilterRequest::Method(m.as_str().to_owned()),
        HttpFilter::Body(_) | HttpFilter::HeaderJq(_) => HttpFilterRequest::Path(String::new()),
        HttpFilter::Composite { all: true, filters } => {
            HttpFilterRequest::AllOf(filters.iter().map(filter_request).collect())
        }
        HttpFilter::Composite {
            all: false,
            filters,
        } => HttpFilterRequest::AnyOf(filters.iter().map(filter_request).collect()),
    }
}

/// The Secret-backed env of the target container of the first of `pods` found (the pods of one
/// workload share their template).
pub fn secret_env(
    inventory: &NamespaceInventory,
    pods: &[String],
    container: Option<&str>,
) -> SecretEnvSources {
    let Some(pod) = inventory
        .pods
        .iter()
        .find(|p| pods.iter().any(|name| *name == p.name_any()))
    else {
        return SecretEnvSources::default();
    };
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    containers
        .iter()
        .find(|c| container.is_none_or(|name| c.name == name))
        .map(SecretEnvSources::of)
        .unwrap_or_default()
}

/// The session's target for the evaluation: its path and the labels of the workload (or pod).
pub fn target_info(
    namespace: &str,
    target: &TargetRef,
    inventory: &NamespaceInventory,
) -> TargetInfo {
    let TargetRef::Workload { kind, name, .. } = target else {
        return TargetInfo {
            namespace: namespace.to_owned(),
            ..TargetInfo::default()
        };
    };
    fn find<K: ResourceExt>(objects: &[Arc<K>], name: &str) -> BTreeMap<String, String> {
        objects
            .iter()
            .find(|o| o.name_any() == name)
            .map(|o| o.labels().clone())
            .unwrap_or_default()
    }
    let labels = match kind {
        TargetKind::Deployment => find(&inventory.deployments, name),
        TargetKind::Pod => find(&inventory.pods, name),
        TargetKind::Rollout => find(&inventory.rollouts, name),
        TargetKind::Job => find(&inventory.jobs, name),
        TargetKind::CronJob => find(&inventory.cron_jobs, name),
        TargetKind::StatefulSet => find(&inventory.stateful_sets, name),
        TargetKind::ReplicaSet => find(&inventory.replica_sets, name),
        TargetKind::Service => BTreeMap::new(),
    };
    TargetInfo {
        namespace: namespace.to_owned(),
        path: Some(target.to_string()),
        labels,
        copy_target: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::policy::crd::{BlockedFeature, MirrordPolicySpec};
    use crate::coordinator::policy::eval::{PolicyKind, PolicyRef};
    use crate::protocol::Filter;

    /// A source whose policies change while a session runs.
    struct Live(Mutex<Vec<NamedPolicy>>);
    impl PolicySource for Live {
        fn policies(&self) -> Vec<NamedPolicy> {
            self.0.lock().unwrap().clone()
        }
    }

    fn no_unfiltered_steal() -> NamedPolicy {
        NamedPolicy {
            reference: PolicyRef {
                kind: PolicyKind::MirrordPolicy,
                namespace: Some("shop".into()),
                name: "filters-only".into(),
            },
            spec: MirrordPolicySpec {
                block: vec![BlockedFeature::StealWithoutFilter],
                target_path: Some("deploy/web*".into()),
                ..MirrordPolicySpec::default()
            },
        }
    }

    #[test]
    fn policies_added_and_deleted_while_a_session_runs() {
        let live = Arc::new(Live(Mutex::new(Vec::new())));
        let gate = PolicyGate::new(live.clone());
        let target = TargetInfo {
            namespace: "shop".into(),
            path: Some("deployment/web/container/app".into()),
            ..TargetInfo::default()
        };
        gate.connect(7, target, None).unwrap();
        assert!(gate.incoming(7, IncomingMode::Steal, 80, None).is_ok());
        live.0.lock().unwrap().push(no_unfiltered_steal());
        let refusal = gate.incoming(7, IncomingMode::Steal, 80, None).unwrap_err();
        assert_eq!(refusal.rule, "block: steal-without-filter");
        let filter = HttpFilter::Header(Filter("x-user: me".into()));
        assert!(
            gate.incoming(7, IncomingMode::Steal, 80, Some(&filter))
                .is_ok()
        );
        assert_eq!(gate.applied(7), vec!["MirrordPolicy shop/filters-only"]);
        live.0.lock().unwrap().clear();
        assert!(gate.incoming(7, IncomingMode::Steal, 80, None).is_ok());
        gate.forget(7);
        assert!(gate.applied(7).is_empty());
    }
}
