//! The coordinator's Kubernetes calls against a scripted API server that asserts the exact requests:
//! the self-managed certificate whose caBundle goes to the APIService, and a SubjectAccessReview.

use std::{sync::Arc, time::Duration};

use http::Method;
use mirrord_operator::{
    certs::San,
    coordinator::{
        api::state::{Authorizer, Decision, Identity, ResourceAttributes},
        kube::reviews::SarAuthorizer,
        metrics::Metrics,
    },
    tls::{
        CertResolver,
        rotation::IssuePolicy,
        self_managed::{CaBundleTarget, SelfManaged, SelfManagedConfig},
    },
};
use serde_json::{Value, json};

#[path = "support/mock_api.rs"]
mod mock_api;
use mock_api::ApiServer;

const API_SERVICE_PATH: &str =
    "/apis/apiregistration.k8s.io/v1/apiservices/v1.operator.metalbear.co";
const SECRET_PATH: &str = "/api/v1/namespaces/mirrord/secrets/mirrord-operator-coordinator-tls";

fn api_service(ca_bundle: Option<&str>) -> Value {
    let mut spec = json!({
        "group": "operator.metalbear.co", "version": "v1", "groupPriorityMinimum": 1000,
        "versionPriority": 15,
        "service": {"name": "mirrord-operator-coordinator", "namespace": "mirrord", "port": 443}
    });
    if let Some(bundle) = ca_bundle {
        spec["caBundle"] = json!(bundle);
    }
    json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": "v1.operator.metalbear.co", "uid": "apisvc-uid"}, "spec": spec})
}

#[tokio::test]
async fn self_managed_tls_keeps_the_api_service_ca_bundle() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (client, mut api) = ApiServer::client();
    let resolver = Arc::new(CertResolver::default());
    let manager = SelfManaged::new(
        client,
        SelfManagedConfig {
            namespace: "mirrord".into(),
            secret_name: "mirrord-operator-coordinator-tls".into(),
            target: CaBundleTarget::ApiService("v1.operator.metalbear.co".into()),
            issue: IssuePolicy {
                ca_name: "mirrord-operator coordinator CA".into(),
                sans: vec![San::Dns("mirrord-operator-coordinator.mirrord.svc".into())],
                validity: Duration::from_secs(3600),
            },
        },
        resolver.clone(),
    );
    let script = async {
        let (_, send) = api.expect(Method::GET, API_SERVICE_PATH).await;
        ApiServer::respond(send, 200, api_service(None));
        let (_, send) = api.expect(Method::GET, SECRET_PATH).await;
        ApiServer::respond(
            send,
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        );
        let (request, send) = api
            .expect(Method::POST, "/api/v1/namespaces/mirrord/secrets")
            .await;
        let mut secret = ApiServer::body(request).await;
        let owner = &secret["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].as_str()),
            (Some("APIService"), Some("apisvc-uid"))
        );
        secret["metadata"]["resourceVersion"] = json!("1");
        ApiServer::respond(send, 201, secret.clone());
        let (request, send) = api.expect(Method::PATCH, API_SERVICE_PATH).await;
        // A merge patch: Kubernetes before 1.22 panics on an apply to an APIService.
        assert_eq!(
            request.headers()["content-type"],
            "application/merge-patch+json"
        );
        let query = request.uri().query().unwrap_or_default().to_string();
        assert!(query.contains("fieldManager=mirrord-operator"), "{query}");
        let applied = ApiServer::body(request).await;
        // Only the caBundle: every other field stays Helm's.
        assert_eq!(applied["spec"].as_object().unwrap().len(), 1, "{applied}");
        let ca_b64 = secret["data"]["ca.crt"].as_str().unwrap().to_string();
        assert_eq!(applied["spec"]["caBundle"], ca_b64);
        ApiServer::respond(send, 200, api_service(Some(&ca_b64)));
    };
    let (done, ()) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(30),
            manager.reconcile(time::OffsetDateTime::now_utc())
        ),
        script
    );
    let done = done
        .expect("reconcile waited on an unanswered call")
        .unwrap();
    assert!(done.secret_written && done.ca_bundle_patched && done.ca_bundle_synced);
    assert_eq!(resolver.current().unwrap().serial, done.serial);
}

#[tokio::test]
async fn authorization_asks_a_subject_access_review_with_the_user_and_attributes() {
    let (client, mut api) = ApiServer::client();
    let authorizer = SarAuthorizer::new(client, Arc::new(Metrics::default()));
    let identity = Identity {
        user: "jane".into(),
        groups: vec!["dev".into(), "system:authenticated".into()],
        extra: Default::default(),
    };
    let attributes = ResourceAttributes {
        verb: "list",
        group: "operator.metalbear.co",
        version: "v1",
        resource: "targets",
        subresource: None,
        namespace: Some("apps".into()),
        name: None,
    };
    let script = async {
        for (allowed, reason) in [(true, ""), (false, "no RBAC policy matched")] {
            let (request, send) = api
                .expect(
                    Method::POST,
                    "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                )
                .await;
            let mut review = ApiServer::body(request).await;
            assert_eq!(
                review["spec"],
                json!({"user": "jane", "groups": ["dev", "system:authenticated"],
                    "resourceAttributes": {"verb": "list", "group": "operator.metalbear.co",
                        "version": "v1", "resource": "targets", "namespace": "apps"}})
            );
            review["status"] = json!({"allowed": allowed, "reason": reason});
            ApiServer::respond(send, 201, review);
        }
    };
    let decisions = async {
        let first = authorizer.authorize(&identity, &attributes).await.unwrap();
        let second = authorizer.authorize(&identity, &attributes).await.unwrap();
        (first, second)
    };
    let ((first, second), ()) = tokio::join!(decisions, script);
    assert_eq!(first, Decision::Allow);
    assert_eq!(
        second,
        Decision::Deny {
            reason: "no RBAC policy matched".into()
        }
    );
}
