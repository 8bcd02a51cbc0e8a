//! Which pod an agent is, from its token (pure).
//!
//! The agent presents a projected ServiceAccount token bound to its pod and to the audience
//! [`TOKEN_AUDIENCE`]. A TokenReview (sent with `spec.audiences: ["mirrord-operator"]`) answers
//! with the service account as `username` (`system:serviceaccount:<ns>:<sa>`), the audiences the
//! token is valid for, and — because the token is pod-bound — the pod in `user.extra`:
//! `authentication.kubernetes.io/pod-name` and `authentication.kubernetes.io/pod-uid`. The
//! connection is tied to exactly that pod (namespace from the username); the agent's own
//! `register` message must name the same pod, namespace and uid, or the link is refused.

use std::collections::BTreeMap;

use futures::future::BoxFuture;

use crate::link::{Registration, TOKEN_AUDIENCE};

pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// The parts of a TokenReview's `status` the hub reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenReview {
    pub authenticated: bool,
    pub username: String,
    pub audiences: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
    /// `status.error`, when the API server gave one.
    pub error: Option<String>,
}

/// Checks bearer tokens; implemented with the TokenReview API in production (coordinator/kube),
/// with a table in tests.
pub trait TokenReviewer: Send + Sync {
    /// Reviews `token` for the audience [`TOKEN_AUDIENCE`].
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenReview, String>>;
}

/// The pod an authenticated agent runs in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodIdentity {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkAuthError {
    #[error("no bearer token")]
    NoToken,
    #[error("the token review failed: {0}")]
    Review(String),
    #[error("token not authenticated{}", .0.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    NotAuthenticated(Option<String>),
    #[error("token audiences {0:?} do not include {TOKEN_AUDIENCE:?}")]
    Audience(Vec<String>),
    #[error("token user {0:?} is not a service account")]
    NotServiceAccount(String),
    #[error("token is not bound to a pod (no {0} in its extra)")]
    NotPodBound(&'static str),
    #[error("registration names pod {registered} but the token is bound to {token}")]
    PodMismatch { registered: String, token: String },
}

impl LinkAuthError {
    /// Metric/log label.
    pub fn label(&self) -> &'static str {
        match self {
            LinkAuthError::NoToken => "no_token",
            LinkAuthError::Review(_) => "review_failed",
            LinkAuthError::NotAuthenticated(_) => "not_authenticated",
            LinkAuthError::Audience(_) => "audience",
            LinkAuthError::NotServiceAccount(_) => "not_service_account",
            LinkAuthError::NotPodBound(_) => "not_pod_bound",
            LinkAuthError::PodMismatch { .. } => "pod_mismatch",
        }
    }
}

fn single<'a>(
    extra: &'a BTreeMap<String, Vec<String>>,
    key: &'static str,
) -> Result<&'a str, LinkAuthError> {
    match extra.get(key).map(Vec::as_slice) {
        Some([value]) if !value.is_empty() => Ok(value),
        _ => Err(LinkAuthError::NotPodBound(key)),
    }
}

/// The pod a reviewed token is bound to.
pub fn pod_identity(review: &TokenReview) -> Result<PodIdentity, LinkAuthError> {
    if !review.authenticated {
        return Err(LinkAuthError::NotAuthenticated(review.error.clone()));
    }
    if !review.audiences.iter().any(|a| a == TOKEN_AUDIENCE) {
        return Err(LinkAuthError::Audience(review.audiences.clone()));
    }
    let (namespace, service_account) = review
        .username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .ok_or_else(|| LinkAuthError::NotServiceAccount(review.username.clone()))?;
    Ok(PodIdentity {
        namespace: namespace.to_owned(),
        name: single(&review.extra, POD_NAME_EXTRA)?.to_owned(),
        uid: single(&review.extra, POD_UID_EXTRA)?.to_owned(),
        service_account: service_account.to_owned(),
    })
}

/// The agent's registration must name the pod its token is bound to.
pub fn check_registration(
    pod: &PodIdentity,
    registration: &Registration,
) -> Result<(), LinkAuthError> {
    if registration.pod_namespace != pod.namespace
        || registration.pod_name != pod.name
        || registration.pod_uid != pod.uid
    {
        return Err(LinkAuthError::PodMismatch {
            registered: format!(
                "{}/{} (uid {})",
                registration.pod_namespace, registration.pod_name, registration.pod_uid
            ),
            token: format!("{}/{} (uid {})", pod.namespace, pod.name, pod.uid),
        });
    }
    Ok(())
}

/// A reviewer answering from a fixed table: token → review. For tests and development.
#[derive(Debug, Clone, Default)]
pub struct StaticReviewer {
    pub tokens: BTreeMap<String, TokenReview>,
}

impl StaticReviewer {
    /// Adds a pod-bound token for `namespace/name` (service account `default`, right audience).
    pub fn with_pod(mut self, token: &str, namespace: &str, name: &str, uid: &str) -> Self {
        let extra = BTreeMap::from([
            (POD_NAME_EXTRA.to_owned(), vec![name.to_owned()]),
            (POD_UID_EXTRA.to_owned(), vec![uid.to_owned()]),
        ]);
        self.tokens.insert(
            token.to_owned(),
            TokenReview {
                authenticated: true,
                username: format!("system:serviceaccount:{namespace}:default"),
                audiences: vec![TOKEN_AUDIENCE.to_owned()],
                extra,
                error: None,
            },
        );
        self
    }
}

impl TokenReviewer for StaticReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenReview, String>> {
        let review = self.tokens.get(token).cloned().unwrap_or(TokenReview {
            error: Some("unknown token".into()),
            ..TokenReview::default()
        });
        Box::pin(async move { Ok(review) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review() -> TokenReview {
        StaticReviewer::default()
            .with_pod("t", "shop", "api-1", "uid-1")
            .tokens
            .remove("t")
            .unwrap()
    }

    fn registration(ns: &str, name: &str, uid: &str) -> Registration {
        Registration {
            pod_name: name.into(),
            pod_namespace: ns.into(),
            pod_uid: uid.into(),
            pod_ips: vec![],
            node_name: String::new(),
            target_container: "api".into(),
            target_ports: vec![8080],
            protocol_version: "1.29.0".into(),
            agent_version: "0.1.0".into(),
        }
    }

    #[test]
    fn a_pod_bound_token_names_its_pod() {
        let pod = pod_identity(&review()).unwrap();
        assert_eq!(
            pod,
            PodIdentity {
                namespace: "shop".into(),
                name: "api-1".into(),
                uid: "uid-1".into(),
                service_account: "default".into()
            }
        );
        check_registration(&pod, &registration("shop", "api-1", "uid-1")).unwrap();
        for (ns, name, uid) in [
            ("other", "api-1", "uid-1"),
            ("shop", "api-2", "uid-1"),
            ("shop", "api-1", "uid-2"),
        ] {
            assert!(matches!(
                check_registration(&pod, &registration(ns, name, uid)),
                Err(LinkAuthError::PodMismatch { .. })
            ));
        }
    }

    #[test]
    fn refusals() {
        let mut r = review();
        r.audiences = vec!["https://kubernetes.default.svc".into()];
        assert_eq!(pod_identity(&r).unwrap_err().label(), "audience");
        let mut r = review();
        r.authenticated = false;
        assert_eq!(pod_identity(&r).unwrap_err().label(), "not_authenticated");
        let mut r = review();
        r.username = "alice".into();
        assert_eq!(pod_identity(&r).unwrap_err().label(), "not_service_account");
        let mut r = review();
        r.extra.remove(POD_UID_EXTRA);
        assert_eq!(
            pod_identity(&r).unwrap_err(),
            LinkAuthError::NotPodBound(POD_UID_EXTRA)
        );
        let mut r = review();
        r.extra
            .insert(POD_NAME_EXTRA.into(), vec!["a".into(), "b".into()]);
        assert_eq!(pod_identity(&r).unwrap_err().label(), "not_pod_bound");
    }
}
