//! The two reviews the coordinator asks kube-apiserver for: SubjectAccessReview (may this user do
//! this? — the API handlers' [`Authorizer`]) and TokenReview (whose token is this? — agents dialing
//! in with their projected ServiceAccount token).

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{
        ResourceAttributes as KubeAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    },
};
use kube::{Api, Client, api::PostParams};

use crate::coordinator::api::state::{
    Authorizer, AuthorizerError, Decision, Identity, ResourceAttributes,
};

/// Reports review outcomes, to count them in the coordinator's metrics.
pub trait ReviewObserver: Send + Sync {
    /// `kind`: `subjectaccessreview` or `tokenreview`; `outcome`: `allowed`, `denied`, `error`.
    fn reviewed(&self, kind: &'static str, outcome: &'static str);
}

/// [`Authorizer`] by SubjectAccessReview, with the user, groups and extra the front proxy asserted.
pub struct SarAuthorizer {
    api: Api<SubjectAccessReview>,
    observer: std::sync::Arc<dyn ReviewObserver>,
}

impl SarAuthorizer {
    pub fn new(client: Client, observer: std::sync::Arc<dyn ReviewObserver>) -> Self {
        SarAuthorizer {
            api: Api::all(client),
            observer,
        }
    }
}

/// The review kube-apiserver would make for `identity` doing `attributes` (pure, so tested).
pub fn access_review(identity: &Identity, attributes: &ResourceAttributes) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(identity.user.clone()),
            groups: Some(identity.groups.clone()),
            extra: (!identity.extra.is_empty()).then(|| identity.extra.clone()),
            resource_attributes: Some(KubeAttributes {
                verb: Some(attributes.verb.into()),
                group: Some(attributes.group.into()),
                version: Some(attributes.version.into()),
                resource: Some(attributes.resource.into()),
                subresource: attributes.subresource.map(Into::into),
                namespace: attributes.namespace.clone(),
                name: attributes.name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The decision in a review's status: a denial keeps the reviewer's reason (or evaluation error).
pub fn decision(review: &SubjectAccessReview) -> Decision {
    match &review.status {
        Some(status) if status.allowed => Decision::Allow,
        Some(status) => Decision::Deny {
            reason: status
                .reason
                .clone()
                .filter(|r| !r.is_empty())
                .or_else(|| status.evaluation_error.clone())
                .unwrap_or_default(),
        },
        None => Decision::Deny {
            reason: "the SubjectAccessReview came back without a status".into(),
        },
    }
}

impl Authorizer for SarAuthorizer {
    fn authorize<'a>(
        &'a self,
        identity: &'a Identity,
        attributes: &'a ResourceAttributes,
    ) -> BoxFuture<'a, Result<Decision, AuthorizerError>> {
        Box::pin(async move {
            let review = access_review(identity, attributes);
            match self.api.create(&PostParams::default(), &review).await {
                Ok(answered) => {
                    let decision = decision(&answered);
                    let outcome = match decision {
                        Decision::Allow => "allowed",
                        Decision::Deny { .. } => "denied",
                    };
                    self.observer.reviewed("subjectaccessreview", outcome);
                    tracing::debug!(user = %identity.user, %attributes, outcome, "SubjectAccessReview");
                    Ok(decision)
                }
                Err(error) => {
                    self.observer.reviewed("subjectaccessreview", "error");
                    Err(AuthorizerError(error.to_string()))
                }
            }
        })
    }
}

/// Who a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    /// `system:serviceaccount:<namespace>:<name>` for ServiceAccount tokens.
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    /// For a pod-bound projected token: `authentication.kubernetes.io/pod-name` and `pod-uid`.
    pub extra: BTreeMap<String, Vec<String>>,
}

impl TokenOwner {
    /// The ServiceAccount's namespace, when the token is a ServiceAccount's.
    pub fn namespace(&self) -> Option<&str> {
        let rest = self.username.strip_prefix("system:serviceaccount:")?;
        rest.split_once(':').map(|(ns, _)| ns)
    }

    fn extra_one(&self, key: &str) -> Option<&str> {
        self.extra.get(key)?.first().map(String::as_str)
    }

    /// The pod a projected token is bound to.
    pub fn pod_name(&self) -> Option<&str> {
        self.extra_one("authentication.kubernetes.io/pod-name")
    }

    pub fn pod_uid(&self) -> Option<&str> {
        self.extra_one("authentication.kubernetes.io/pod-uid")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenReviewError {
    #[error("the token was refused: {0}")]
    Refused(String),
    #[error("TokenReview failed: {0}")]
    Api(#[from] kube::Error),
}

impl TokenReviewError {
    pub fn label(&self) -> &'static str {
        match self {
            TokenReviewError::Refused(_) => "token-refused",
            TokenReviewError::Api(_) => "tokenreview-api",
        }
    }
}

/// Checks a bearer token for the given audience. A trait so the agent hub can be tested without a
/// cluster.
pub trait TokenReviewer: Send + Sync {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenOwner, TokenReviewError>>;
}

/// [`TokenReviewer`] by TokenReview against kube-apiserver, for one audience (agents' tokens use
/// [`crate::injection::TOKEN_AUDIENCE`]).
pub struct KubeTokenReviewer {
    api: Api<TokenReview>,
    audience: String,
    observer: std::sync::Arc<dyn ReviewObserver>,
}

impl KubeTokenReviewer {
    pub fn new(
        client: Client,
        audience: impl Into<String>,
        observer: std::sync::Arc<dyn ReviewObserver>,
    ) -> Self {
        KubeTokenReviewer {
            api: Api::all(client),
            audience: audience.into(),
            observer,
        }
    }
}

/// The owner in a TokenReview's answer, or why it was refused (pure, so tested).
pub fn token_owner(review: &TokenReview, audience: &str) -> Result<TokenOwner, TokenReviewError> {
    let status = review
        .status
        .as_ref()
        .ok_or_else(|| TokenReviewError::Refused("no status in the answer".into()))?;
    if status.authenticated != Some(true) {
        return Err(TokenReviewError::Refused(
            status
                .error
                .clone()
                .unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    // An authenticator that ignores audiences answers with none: that is not ours.
    if !status.audiences.iter().flatten().any(|a| a == audience) {
        return Err(TokenReviewError::Refused(format!(
            "the token is not for the audience {audience:?}"
        )));
    }
    let user = status.user.clone().unwrap_or_default();
    Ok(TokenOwner {
        username: user.username.unwrap_or_default(),
        uid: user.uid.unwrap_or_default(),
        groups: user.groups.unwrap_or_default(),
        extra: user.extra.unwrap_or_default(),
    })
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenOwner, TokenReviewError>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: Some(vec![self.audience.clone()]),
                },
                ..Default::default()
            };
            let answered = self.api.create(&PostParams::default(), &review).await;
            let result = answered
                .map_err(TokenReviewError::from)
                .and_then(|answered| token_owner(&answered, &self.audience));
            let outcome = match &result {
                Ok(_) => "allowed",
                Err(TokenReviewError::Refused(_)) => "denied",
                Err(TokenReviewError::Api(_)) => "error",
            };
            self.observer.reviewed("tokenreview", outcome);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::{
        authentication::v1::{TokenReviewStatus, UserInfo},
        authorization::v1::SubjectAccessReviewStatus,
    };
    use serde_json::json;

    #[test]
    fn the_review_carries_the_user_and_the_exact_attributes() {
        let identity = Identity {
            user: "jane".into(),
            groups: vec!["dev".into()],
            extra: BTreeMap::from([("scopes".into(), vec!["a".into()])]),
        };
        let attributes = ResourceAttributes {
            verb: "proxy",
            group: "operator.metalbear.co",
            version: "v1",
            resource: "targets",
            subresource: None,
            namespace: Some("default".into()),
            name: Some("deployment.web".into()),
        };
        let review = serde_json::to_value(access_review(&identity, &attributes)).unwrap();
        assert_eq!(
            review["spec"],
            json!({
                "user": "jane", "groups": ["dev"], "extra": {"scopes": ["a"]},
                "resourceAttributes": {"verb": "proxy", "group": "operator.metalbear.co", "version": "v1",
                    "resource": "targets", "namespace": "default", "name": "deployment.web"}
            })
        );
    }

    #[test]
    fn denials_keep_the_reason() {
        let answered =
            |allowed, reason: Option<&str>, evaluation_error: Option<&str>| SubjectAccessReview {
                status: Some(SubjectAccessReviewStatus {
                    allowed,
                    reason: reason.map(Into::into),
                    evaluation_error: evaluation_error.map(Into::into),
                    ..Default::default()
                }),
                ..Default::default()
            };
        assert_eq!(decision(&answered(true, None, None)), Decision::Allow);
        assert_eq!(
            decision(&answered(false, Some("no RBAC policy matched"), None)),
            Decision::Deny {
                reason: "no RBAC policy matched".into()
            }
        );
        assert_eq!(
            decision(&answered(false, Some(""), Some("webhook down"))),
            Decision::Deny {
                reason: "webhook down".into()
            }
        );
        assert!(matches!(
            decision(&SubjectAccessReview::default()),
            Decision::Deny { .. }
        ));
    }

    #[test]
    fn a_token_is_accepted_only_for_our_audience() {
        let review = |authenticated, audiences: Vec<&str>| TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: Some(audiences.into_iter().map(Into::into).collect()),
                user: Some(UserInfo {
                    username: Some("system:serviceaccount:apps:default".into()),
                    uid: Some("u".into()),
                    extra: Some(BTreeMap::from([
                        (
                            "authentication.kubernetes.io/pod-name".into(),
                            vec!["web-1".into()],
                        ),
                        (
                            "authentication.kubernetes.io/pod-uid".into(),
                            vec!["p-uid".into()],
                        ),
                    ])),
                    ..Default::default()
                }),
                error: None,
            }),
            ..Default::default()
        };
        let owner =
            token_owner(&review(true, vec!["mirrord-operator"]), "mirrord-operator").unwrap();
        assert_eq!(owner.namespace(), Some("apps"));
        assert_eq!(owner.pod_name(), Some("web-1"));
        assert_eq!(owner.pod_uid(), Some("p-uid"));
        for (authenticated, audiences) in [
            (false, vec!["mirrord-operator"]),
            (true, vec![]),
            (true, vec!["other"]),
        ] {
            assert!(matches!(
                token_owner(&review(authenticated, audiences), "mirrord-operator"),
                Err(TokenReviewError::Refused(_))
            ));
        }
    }
}
