//! The two reviews the coordinator asks kube-apiserver for: SubjectAccessReview (may this user do
//! this? — the API handlers' [`Authorizer`]) and TokenReview (whose token is this? — agents dialing
//! in with their projected ServiceAccount token).

use futures::future::BoxFuture;
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec},
    authorization::v1::{
        ResourceAttributes as KubeAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    },
};
use kube::{Api, Client, api::PostParams};

use crate::coordinator::agents::identity::{
    TokenReview as HubTokenReview, TokenReviewer as HubTokenReviewer,
};
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

/// The hub's [`HubTokenReviewer`] by TokenReview against kube-apiserver, for one audience (agents'
/// tokens use [`crate::injection::TOKEN_AUDIENCE`]). Only the API call lives here: which pod the
/// answer names, and whether it is acceptable, is decided by `agents::identity::pod_identity`.
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

/// The parts of a TokenReview's answer the hub reads (pure, so tested). No status reads as
/// "not authenticated".
pub fn review_answer(review: &TokenReview) -> HubTokenReview {
    let Some(status) = review.status.as_ref() else {
        return HubTokenReview {
            error: Some("no status in the answer".into()),
            ..HubTokenReview::default()
        };
    };
    let user = status.user.clone().unwrap_or_default();
    HubTokenReview {
        authenticated: status.authenticated == Some(true),
        username: user.username.unwrap_or_default(),
        // An authenticator that ignores audiences answers with none: the hub refuses that.
        audiences: status.audiences.clone().unwrap_or_default(),
        extra: user.extra.unwrap_or_default(),
        error: status.error.clone(),
    }
}

impl HubTokenReviewer for KubeTokenReviewer {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<HubTokenReview, String>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: Some(vec![self.audience.clone()]),
                },
                ..Default::default()
            };
            match self.api.create(&PostParams::default(), &review).await {
                Ok(answered) => {
                    let answer = review_answer(&answered);
                    let outcome = if answer.authenticated {
                        "allowed"
                    } else {
                        "denied"
                    };
                    self.observer.reviewed("tokenreview", outcome);
                    Ok(answer)
                }
                Err(error) => {
                    self.observer.reviewed("tokenreview", "error");
                    Err(error.to_string())
                }
            }
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
    use std::collections::BTreeMap;

    use crate::coordinator::agents::identity::pod_identity;

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
        let identity = |authenticated, audiences| {
            pod_identity(&review_answer(&review(authenticated, audiences)))
        };
        let pod = identity(true, vec!["mirrord-operator"]).unwrap();
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str(), pod.uid.as_str()),
            ("apps", "web-1", "p-uid")
        );
        for (authenticated, audiences) in [
            (false, vec!["mirrord-operator"]),
            (true, vec![]),
            (true, vec!["other"]),
        ] {
            assert!(identity(authenticated, audiences).is_err());
        }
        assert!(pod_identity(&review_answer(&TokenReview::default())).is_err());
    }
}
