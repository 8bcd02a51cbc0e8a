//! The coordinator's API through `Router::oneshot`: golden cases in `tests/data/coordinator/cases/`
//! (`BLESS=1` rewrites `expected.json`), credential and connect round trips, a `kube::Client` built
//! over the router performing the mirrord CLI's sequence, and a fuzz test.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use axum::{Router, body::Body, response::IntoResponse};
use base64::{Engine, engine::general_purpose::STANDARD};
use futures::future::BoxFuture;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use kube::core::DynamicObject;
use mirrord_operator::coordinator::{
    api::{
        router,
        state::{
            AgentRegistry, ApiLimits, ApiState, Authorizer, AuthorizerError, ConnectRequest,
            Connector, Decision, Identity, KillOutcome, License, LockedPort, NamespaceInventory,
            OperatorInfo, ResourceAttributes, SessionDirectory, SessionSummary, StaticInventory,
        },
    },
    credentials::UserCa,
};
use serde::Deserialize;
use serde_json::{Value, json};
use time::{Date, Month, OffsetDateTime};
use tower::{ServiceBuilder, ServiceExt};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/coordinator")
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// 2027-01-01T00:00:00Z: inside the fixture CA's validity.
fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_798_761_600).unwrap()
}

/// Denies `mallory` everything, and the `sessions/others` subresource to anyone outside `admins`.
#[derive(Default)]
struct TestAuthorizer {
    calls: Mutex<Vec<(String, ResourceAttributes)>>,
}

impl Authorizer for TestAuthorizer {
    fn authorize<'a>(
        &'a self,
        identity: &'a Identity,
        attributes: &'a ResourceAttributes,
    ) -> BoxFuture<'a, Result<Decision, AuthorizerError>> {
        self.calls
            .lock()
            .unwrap()
            .push((identity.user.clone(), attributes.clone()));
        let decision = if identity.user == "mallory" {
            Decision::Deny {
                reason: "no RBAC rule matched".into(),
            }
        } else if attributes.subresource == Some("others")
            && !identity.groups.iter().any(|g| g == "admins")
        {
            Decision::Deny {
                reason: String::new(),
            }
        } else {
            Decision::Allow
        };
        Box::pin(async move { Ok(decision) })
    }
}

#[derive(Default)]
struct TestSessions(Mutex<Vec<SessionSummary>>);

impl SessionDirectory for TestSessions {
    fn list(&self) -> Vec<SessionSummary> {
        self.0.lock().unwrap().clone()
    }
    fn kill<'a>(&'a self, id: u64, _reason: &'a str) -> BoxFuture<'a, KillOutcome> {
        let mut sessions = self.0.lock().unwrap();
        let before = sessions.len();
        sessions.retain(|s| s.id != id);
        let outcome = if sessions.len() < before {
            KillOutcome::Killed
        } else {
            KillOutcome::NotFound
        };
        Box::pin(async move { outcome })
    }
    fn kill_all<'a>(&'a self, _reason: &'a str) -> BoxFuture<'a, usize> {
        let killed = std::mem::take(&mut *self.0.lock().unwrap()).len();
        Box::pin(async move { killed })
    }
}

/// Answers 200 with what it was given, so tests can check the `ConnectRequest`.
struct EchoConnector;

impl Connector for EchoConnector {
    fn connect(&self, request: ConnectRequest) -> BoxFuture<'static, axum::response::Response> {
        let body = json!({
            "user": request.identity.user,
            "namespace": request.namespace,
            "target": request.target.to_string(),
            "params": request.params,
            "session_id": request.session_id,
            "client_cn": request.client.common_name,
            "user_id": request.client.user_id,
            "path": request.request.uri().path(),
        });
        Box::pin(async move { axum::Json(body).into_response() })
    }
    fn features(&self) -> Vec<&'static str> {
        vec!["LayerReconnect"]
    }
}

fn inventory() -> StaticInventory {
    let doc = read_json(&data().join("inventory.json"));
    let mut namespaces = BTreeMap::new();
    for (namespace, kinds) in doc.as_object().unwrap() {
        fn items<T: serde::de::DeserializeOwned>(kinds: &Value, key: &str) -> Vec<Arc<T>> {
            kinds[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|item| Arc::new(serde_json::from_value(item.clone()).unwrap()))
                .collect()
        }
        namespaces.insert(
            namespace.clone(),
            NamespaceInventory {
                pods: items(kinds, "pods"),
                deployments: items(kinds, "deployments"),
                replica_sets: items(kinds, "replica_sets"),
                stateful_sets: items(kinds, "stateful_sets"),
                jobs: items(kinds, "jobs"),
                cron_jobs: items(kinds, "cron_jobs"),
                rollouts: items::<DynamicObject>(kinds, "rollouts"),
            },
        );
    }
    StaticInventory { namespaces }
}

fn sessions() -> Vec<SessionSummary> {
    let doc = read_json(&data().join("sessions.json"));
    doc.as_array()
        .unwrap()
        .iter()
        .map(|s| SessionSummary {
            id: s["id"].as_u64().unwrap(),
            owner: s["owner"].as_str().unwrap().into(),
            user: s["user"].as_str().unwrap().into(),
            user_id: s["user_id"].as_str().map(Into::into),
            target: s["target"].as_str().unwrap().into(),
            namespace: s["namespace"].as_str().map(Into::into),
            duration_secs: s["duration_secs"].as_u64().unwrap(),
            key: s["key"].as_str().map(Into::into),
            locked_ports: s["locked_ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| LockedPort {
                    port: p["port"].as_u64().unwrap() as u16,
                    kind: p["kind"].as_str().unwrap().into(),
                    filter: p["filter"].as_str().map(Into::into),
                })
                .collect(),
            rmq: Vec::new(),
            sqs: Vec::new(),
            header_filter: s["header_filter"].as_str().map(Into::into),
            policies: Vec::new(),
        })
        .collect()
}

fn user_ca() -> UserCa {
    let cert = std::fs::read_to_string(data().join("user-ca.crt")).unwrap();
    let key = std::fs::read_to_string(data().join("user-ca.key")).unwrap();
    UserCa::from_pem(&cert, &key).unwrap()
}

struct Harness {
    state: ApiState,
    authorizer: Arc<TestAuthorizer>,
}

fn harness(connector: bool) -> Harness {
    let authorizer = Arc::new(TestAuthorizer::default());
    let info = OperatorInfo {
        operator_version: "3.250.0+mirrord-operator.test".into(),
        default_namespace: "mirrord".into(),
        license: License {
            name: "mirrord-operator (self-hosted)".into(),
            organization: "Example Org".into(),
            expire_at: Date::from_calendar_date(2099, Month::December, 31).unwrap(),
        },
    };
    let mut state = ApiState::new(info, user_ca(), authorizer.clone(), Arc::new(inventory()))
        .with_sessions(Arc::new(TestSessions(Mutex::new(sessions()))))
        .with_clock(Arc::new(now))
        .with_limits(ApiLimits {
            certificate_validity: time::Duration::days(7),
            max_body_bytes: 64 * 1024,
        });
    if connector {
        state = state.with_connector(Arc::new(EchoConnector));
    }
    Harness { state, authorizer }
}

fn alice() -> Identity {
    Identity {
        user: "alice".into(),
        groups: vec!["system:authenticated".into()],
        extra: BTreeMap::new(),
    }
}

async fn send(router: Router, request: Request<Body>) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    let response = router.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, headers, body.to_vec())
}

fn case_request(case: &Value) -> Request<Body> {
    let mut builder = Request::builder()
        .method(case["method"].as_str().unwrap())
        .uri(case["path"].as_str().unwrap());
    for (name, value) in case["headers"].as_object().unwrap() {
        builder = builder.header(name, value.as_str().unwrap());
    }
    let body = match &case["body"] {
        Value::Null => Body::empty(),
        Value::String(text) => Body::from(text.clone()),
        other => Body::from(other.to_string()),
    };
    let mut request = builder.body(body).unwrap();
    if let Some(identity) = case["identity"].as_object() {
        request.extensions_mut().insert(Identity {
            user: identity["user"].as_str().unwrap().into(),
            groups: identity["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_str().unwrap().into())
                .collect(),
            extra: BTreeMap::new(),
        });
    }
    request
}

#[tokio::test]
async fn golden_cases() {
    let bless = std::env::var_os("BLESS").is_some_and(|v| v == "1");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data().join("cases"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 46, "cases went missing: {}", dirs.len());
    let mut failures = Vec::new();
    for dir in &dirs {
        let case = read_json(&dir.join("request.json"));
        // Each case gets a fresh state: deletes must not leak into the next case.
        let harness = harness(false);
        let (status, headers, body) = send(router(harness.state), case_request(&case)).await;
        let content_type = headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "{}: every answer is JSON, got {content_type:?}",
            dir.display()
        );
        let body: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON: {e}", dir.display()));
        if status.as_u16() >= 400 {
            assert_eq!(body["kind"], "Status", "{}", dir.display());
            assert_eq!(body["code"], status.as_u16(), "{}", dir.display());
            assert!(body["reason"].is_string(), "{}", dir.display());
        }
        let actual = json!({ "status": status.as_u16(), "body": body });
        let expected_path = dir.join("expected.json");
        if bless {
            std::fs::write(
                &expected_path,
                serde_json::to_string_pretty(&actual).unwrap() + "\n",
            )
            .unwrap();
            continue;
        }
        let expected = if expected_path.exists() {
            read_json(&expected_path)
        } else {
            Value::Null
        };
        if expected != actual {
            failures.push(format!(
                "{}:\n  expected {expected}\n  actual   {actual}",
                dir.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) differ (BLESS=1 rewrites):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn request(method: &str, uri: &str, body: Body) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    request.extensions_mut().insert(alice());
    request
}

/// The exact credential request the CLI 3.250 sent (cli-capture-3.250.jsonl).
fn captured(path_contains: &str, method: &str) -> Value {
    let text = std::fs::read_to_string(data().join("cli-capture-3.250.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| {
            l["method"] == method
                && l["path"]
                    .as_str()
                    .is_some_and(|p| p.contains(path_contains))
        })
        .unwrap_or_else(|| panic!("no captured {method} {path_contains}"))
}

fn csr_public_key(csr_pem: &str) -> Vec<u8> {
    let der = rustls_pemfile::csr(&mut csr_pem.as_bytes())
        .unwrap()
        .unwrap();
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
    csr.certification_request_info
        .subject_pki
        .subject_public_key
        .data
        .to_vec()
}

use x509_parser::prelude::FromDer;

fn check_certificate(pem: &str, csr_pem: &str) -> String {
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        csr_public_key(csr_pem).as_slice(),
        "the certificate is for the CSR's key"
    );
    assert!(cert.validity().is_valid_at(now().into()));
    assert!(
        !cert
            .validity()
            .is_valid_at((now() + time::Duration::days(8)).into())
    );
    let ca = user_ca();
    assert_eq!(
        cert.issuer().to_string(),
        "CN=mirrord-operator user credentials (test fixture)"
    );
    let b64 = STANDARD.encode(&der);
    ca.verify_client(&b64, now()).expect("our CA signed it");
    b64
}

#[tokio::test]
async fn credential_from_the_captured_cli_request() {
    let captured = captured("mirrordclusteroperatorusercredentials", "POST");
    let body = captured["body"].as_str().unwrap();
    let csr = serde_json::from_str::<Value>(body).unwrap()["spec"]["csr"]
        .as_str()
        .unwrap()
        .to_owned();
    let harness = harness(false);
    let (status, _, answer) = send(
        router(harness.state),
        request(
            "POST",
            captured["path"].as_str().unwrap(),
            Body::from(body.to_owned()),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["kind"], "MirrordClusterOperatorUserCredential");
    assert_eq!(answer["spec"]["csr"], csr.as_str());
    assert_eq!(answer["spec"]["kind"], "regular");
    let name = answer["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("mirrord-operator-regular-cred-") && name.len() == 35);
    check_certificate(answer["status"]["certificate"].as_str().unwrap(), &csr);
    let calls = harness.authorizer.calls.lock().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].1.verb, calls[0].1.resource),
        ("create", "mirrordclusteroperatorusercredentials")
    );
}

#[tokio::test]
async fn legacy_certificate_accepts_both_body_forms() {
    let captured = captured("mirrordclusteroperatorusercredentials", "POST");
    let csr =
        serde_json::from_str::<Value>(captured["body"].as_str().unwrap()).unwrap()["spec"]["csr"]
            .as_str()
            .unwrap()
            .to_owned();
    let path = "/apis/operator.metalbear.co/v1/mirrordoperators/operator/certificate?";
    for body in [csr.clone(), serde_json::to_string(&csr).unwrap()] {
        let harness = harness(false);
        let (status, _, answer) = send(
            router(harness.state),
            request("POST", path, Body::from(body)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let pem: String = serde_json::from_slice(&answer).expect("a JSON string");
        check_certificate(&pem, &csr);
        let calls = harness.authorizer.calls.lock().unwrap();
        assert_eq!(calls[0].1.subresource, Some("certificate"));
        assert_eq!(calls[0].1.name.as_deref(), Some("operator"));
    }
}

async fn issue_certificate(state: &ApiState) -> String {
    let csr = mirrord_test_csr();
    let (_, _, answer) = send(
        router(state.clone()),
        request(
            "POST",
            "/apis/operator.metalbear.co/v1/mirrordclusteroperatorusercredentials",
            Body::from(json!({"spec": {"csr": csr, "kind": "regular"}}).to_string()),
        ),
    )
    .await;
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    check_certificate(answer["status"]["certificate"].as_str().unwrap(), &csr)
}

fn mirrord_test_csr() -> String {
    let captured = captured("mirrordclusteroperatorusercredentials", "POST");
    serde_json::from_str::<Value>(captured["body"].as_str().unwrap()).unwrap()["spec"]["csr"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn connect_reaches_the_connector_with_everything_it_needs() {
    let harness = harness(true);
    let der = issue_certificate(&harness.state).await;
    // The exact upgrade request of the capture (proxy form).
    let captured = captured("/proxy/namespaces/default/targets/deployment.web", "GET");
    let path = captured["path"].as_str().unwrap();
    let mut req = request("GET", path, Body::empty());
    for (name, value) in captured["headers"].as_object().unwrap() {
        if name != "x-client-der" && name != "host" {
            req.headers_mut().insert(
                name.parse::<http::HeaderName>().unwrap(),
                value.as_str().unwrap().parse().unwrap(),
            );
        }
    }
    req.headers_mut()
        .insert("x-client-der", der.parse().unwrap());
    harness.authorizer.calls.lock().unwrap().clear();
    let (status, _, answer) = send(router(harness.state.clone()), req).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["namespace"], "default");
    assert_eq!(answer["target"], "deployment/web");
    assert_eq!(answer["session_id"], 222103366819779980u64);
    assert_eq!(answer["params"]["on_concurrent_steal"], "abort");
    assert_eq!(answer["params"]["key"], "a0921");
    assert_eq!(answer["client_cn"], "vm");
    assert_eq!(
        answer["user_id"],
        "lsvW8Rf3vfpEkTJfZ5IL9o/3jWf+EYHJIsaATa42+dk"
    );
    {
        let calls = harness.authorizer.calls.lock().unwrap();
        assert_eq!(calls.len(), 1);
        let attributes = &calls[0].1;
        assert_eq!(
            (
                attributes.verb,
                attributes.resource,
                attributes.name.as_deref()
            ),
            ("proxy", "targets", Some("deployment.web"))
        );
    }

    // The plain form, with the parameters in x-mirrord-connect-params: verb `get`.
    let query = "connect=true&on_concurrent_steal=abort&key=k1&header_filter=%5Ex-user%3A+alice%24";
    let mut req = request(
        "GET",
        "/apis/operator.metalbear.co/v1/namespaces/default/targets/deployment.web.container.app?connect=true",
        Body::empty(),
    );
    req.headers_mut()
        .insert("x-session-id", "7".parse().unwrap());
    req.headers_mut()
        .insert("x-client-der", der.parse().unwrap());
    req.headers_mut().insert(
        "x-mirrord-connect-params",
        STANDARD.encode(query).parse().unwrap(),
    );
    harness.authorizer.calls.lock().unwrap().clear();
    let (status, _, answer) = send(router(harness.state.clone()), req).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["params"]["header_filter"], "^x-user: alice$");
    assert_eq!(answer["target"], "deployment/web/container/app");
    assert_eq!(harness.authorizer.calls.lock().unwrap()[0].1.verb, "get");

    // No certificate, a foreign certificate, no session id, an unknown target, the agent.
    let foreign_ca = UserCa::generate("foreign", now()).unwrap();
    let foreign = STANDARD.encode(
        foreign_ca
            .sign_csr(&mirrord_test_csr(), now(), time::Duration::days(1))
            .unwrap()
            .der,
    );
    let base = "/apis/operator.metalbear.co/v1/proxy/namespaces/default/targets";
    for (target, der, session, code) in [
        ("deployment.web", None, Some("1"), 401),
        ("deployment.web", Some(foreign.as_str()), Some("1"), 401),
        ("deployment.web", Some(der.as_str()), None, 400),
        ("deployment.web", Some(der.as_str()), Some("-1"), 400),
        ("deployment.nope", Some(der.as_str()), Some("1"), 404),
        (
            "deployment.web.container.mirrord-agent",
            Some(der.as_str()),
            Some("1"),
            422,
        ),
    ] {
        let mut req = request(
            "GET",
            &format!("{base}/{target}?connect=true"),
            Body::empty(),
        );
        if let Some(der) = der {
            req.headers_mut()
                .insert("x-client-der", der.parse().unwrap());
        }
        if let Some(session) = session {
            req.headers_mut()
                .insert("x-session-id", session.parse().unwrap());
        }
        let (status, _, body) = send(router(harness.state.clone()), req).await;
        assert_eq!(status.as_u16(), code, "{target} {der:?} {session:?}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], code);
    }
}

/// Only `db-0` has a connected agent.
struct OnlyDb;

impl AgentRegistry for OnlyDb {
    fn is_connected(&self, namespace: &str, pod: &str) -> bool {
        namespace == "default" && pod == "db-0"
    }
}

#[tokio::test]
async fn availability_follows_the_agent_registry() {
    let mut harness = harness(false);
    let targets = |state: ApiState| async move {
        let (_, _, body) = send(
            router(state),
            request(
                "GET",
                "/apis/operator.metalbear.co/v1/namespaces/default/targets",
                Body::empty(),
            ),
        )
        .await;
        let body: Value = serde_json::from_slice(&body).unwrap();
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["status"]["available"] == true)
            .map(|t| t["metadata"]["name"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let injected = targets(harness.state.clone()).await;
    assert!(injected.contains(&"deploy.web.container.app".to_owned()));
    harness.state = harness.state.with_agents(Arc::new(OnlyDb));
    assert_eq!(
        targets(harness.state).await,
        [
            "pod.db-0.container.postgres",
            "statefulset.db.container.postgres"
        ]
    );
}

#[tokio::test]
async fn supported_features_follow_the_state() {
    for (connector, expected) in [
        (
            false,
            vec!["ExtendableUserCredentials", "SessionManagement"],
        ),
        (
            true,
            vec![
                "ExtendableUserCredentials",
                "SessionManagement",
                "ProxyApi",
                "LayerReconnect",
            ],
        ),
    ] {
        let harness = harness(connector);
        let (_, _, body) = send(
            router(harness.state),
            request(
                "GET",
                "/apis/operator.metalbear.co/v1/mirrordoperators/operator",
                Body::empty(),
            ),
        )
        .await;
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["spec"]["supported_features"], json!(expected));
    }
}

#[tokio::test]
async fn openapi_documents_are_valid_and_cacheable() {
    let harness = harness(false);
    let app = router(harness.state);
    let (status, _, v2) = send(app.clone(), request("GET", "/openapi/v2", Body::empty())).await;
    assert_eq!(status, StatusCode::OK);
    let v2: Value = serde_json::from_slice(&v2).unwrap();
    assert_eq!(v2["swagger"], "2.0");
    assert!(
        v2["paths"]["/apis/operator.metalbear.co/v1/mirrordoperators/{name}"]["get"].is_object()
    );
    let (_, _, index) = send(app.clone(), request("GET", "/openapi/v3", Body::empty())).await;
    let index: Value = serde_json::from_slice(&index).unwrap();
    let url = index["paths"]["apis/operator.metalbear.co/v1"]["serverRelativeURL"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(url.starts_with("/openapi/v3/apis/operator.metalbear.co/v1?hash="));
    let (status, headers, v3) = send(app, request("GET", &url, Body::empty())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("etag").is_some());
    let v3: Value = serde_json::from_slice(&v3).unwrap();
    assert_eq!(v3["openapi"], "3.0.0");
    // For checking with an external validator: OPENAPI_DUMP=<dir> writes both documents.
    if let Some(dir) = std::env::var_os("OPENAPI_DUMP") {
        let dir = PathBuf::from(dir);
        std::fs::write(dir.join("v2.json"), v2.to_string()).unwrap();
        std::fs::write(dir.join("v3.json"), v3.to_string()).unwrap();
    }
    let gvks: Vec<&str> = v3["components"]["schemas"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|s| s["x-kubernetes-group-version-kind"][0]["kind"].as_str())
        .collect();
    for kind in [
        "MirrordOperator",
        "Target",
        "TargetList",
        "Session",
        "SessionList",
    ] {
        assert!(gvks.contains(&kind), "{kind} missing from {gvks:?}");
    }
}

// ---- The mirrord CLI's sequence, through a kube::Client built over the router ----

/// The CLI's view of `MirrordOperator` (operator-api.md 2.2–2.4): required keys are not `Option`.
#[derive(Debug, Deserialize)]
struct CliOperator {
    #[allow(dead_code)]
    metadata: Value,
    spec: CliSpec,
    status: Option<CliStatus>,
}

#[derive(Debug, Deserialize)]
struct CliSpec {
    operator_version: semver::Version,
    default_namespace: String,
    license: CliLicense,
    protocol_version: Option<String>,
    supported_features: Option<Vec<String>>,
    features: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct CliLicense {
    name: String,
    organization: String,
    expire_at: String,
    fingerprint: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CliStatus {
    sessions: Vec<CliSession>,
}

#[derive(Debug, Deserialize)]
struct CliSession {
    id: Option<String>,
    duration_secs: u64,
    user: String,
    target: String,
    namespace: Option<String>,
    locked_ports: Option<Vec<CliLockedPort>>,
}

#[derive(Debug, Deserialize)]
struct CliLockedPort {
    port: u16,
    kind: String,
    filter: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CliCredential {
    #[allow(dead_code)]
    metadata: Value,
    spec: CliCredentialSpec,
    status: Option<CliCredentialStatus>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CliCredentialSpec {
    csr: String,
    kind: String,
}

#[derive(Debug, Deserialize)]
struct CliCredentialStatus {
    certificate: String,
}

fn kube_client(state: ApiState) -> kube::Client {
    // What server's front-proxy layer does after verifying kube-apiserver's proxy certificate.
    let service = ServiceBuilder::new()
        .map_request(|mut request: Request<kube::client::Body>| {
            request.extensions_mut().insert(alice());
            request
        })
        .service(router(state));
    kube::Client::new(service, "default")
}

fn cli_request(captured: &Value, body: Vec<u8>) -> Request<Vec<u8>> {
    let mut builder = Request::builder()
        .method(captured["method"].as_str().unwrap())
        .uri(captured["path"].as_str().unwrap());
    for (name, value) in captured["headers"].as_object().unwrap() {
        if name != "host" && name != "content-length" {
            builder = builder.header(name, value.as_str().unwrap());
        }
    }
    builder.body(body).unwrap()
}

#[tokio::test]
async fn kube_client_runs_the_cli_sequence() {
    let harness = harness(true);
    let client = kube_client(harness.state.clone());

    // Step 1: GET the operator object, exactly as captured.
    let get = captured("/mirrordoperators/operator", "GET");
    assert_eq!(
        get["path"],
        "/apis/operator.metalbear.co/v1/mirrordoperators/operator"
    );
    let operator: CliOperator = client.request(cli_request(&get, Vec::new())).await.unwrap();
    let spec = &operator.spec;
    assert!(
        semver::VersionReq::parse(">=3.84.0")
            .unwrap()
            .matches(&spec.operator_version)
    );
    assert_eq!(
        spec.operator_version.build.as_str(),
        "mirrord-operator.test"
    );
    assert_eq!(spec.default_namespace, "mirrord");
    assert_eq!(spec.protocol_version.as_deref(), Some("1.29.0"));
    assert!(semver::Version::parse(spec.protocol_version.as_deref().unwrap()).is_ok());
    assert!(
        spec.features.is_none(),
        "legacy `features` may only hold ProxyApi; we leave it out"
    );
    let features = spec.supported_features.clone().unwrap();
    assert!(features.iter().any(|f| f == "ExtendableUserCredentials"));
    assert!(features.iter().any(|f| f == "ProxyApi"));
    assert_eq!(spec.license.name, "mirrord-operator (self-hosted)");
    assert_eq!(spec.license.organization, "Example Org");
    let parts: Vec<&str> = spec.license.expire_at.split('-').collect();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        [4, 2, 2],
        "expire_at is a YYYY-MM-DD date"
    );
    let expire = Date::from_calendar_date(
        parts[0].parse().unwrap(),
        Month::try_from(parts[1].parse::<u8>().unwrap()).unwrap(),
        parts[2].parse().unwrap(),
    )
    .unwrap();
    assert!(expire >= now().date(), "license not expired");
    assert_eq!(
        spec.license.fingerprint.as_deref(),
        Some(user_ca().fingerprint())
    );
    let status = operator
        .status
        .expect("status is present for `operator status`");
    assert_eq!(status.sessions.len(), 2);
    let alice_session = &status.sessions[0];
    assert_eq!(alice_session.id.as_deref(), Some("1F3113817E42E948"));
    assert_eq!(alice_session.duration_secs, 125);
    assert_eq!(alice_session.user, "alice/Alice@laptop");
    assert_eq!(alice_session.target, "deployment/web/container/app");
    assert_eq!(alice_session.namespace.as_deref(), Some("default"));
    let port = &alice_session.locked_ports.as_ref().unwrap()[0];
    assert_eq!((port.port, port.kind.as_str()), (8080, "steal"));
    assert_eq!(port.filter.as_deref(), Some("^x-user: alice$"));

    // Step 1b: discovery names the MirrordOperator kind.
    let resources = client
        .list_api_group_resources("operator.metalbear.co/v1")
        .await
        .unwrap();
    assert!(
        resources
            .resources
            .iter()
            .any(|r| r.kind == "MirrordOperator" && !r.name.contains('/'))
    );
    let groups = client.list_api_groups().await.unwrap();
    assert_eq!(groups.groups[0].name, "operator.metalbear.co");
    // Aggregated discovery (what kube-apiserver ≥ 1.30 and kubectl ask for first).
    let aggregated = client.list_api_groups_aggregated().await.unwrap();
    let version = &aggregated.items[0].versions[0];
    assert_eq!(version.version.as_deref(), Some("v1"));
    let operators = version
        .resources
        .iter()
        .find(|r| r.resource.as_deref() == Some("mirrordoperators"))
        .unwrap();
    assert_eq!(operators.scope.as_deref(), Some("Cluster"));
    assert_eq!(
        operators.subresources[0].subresource.as_deref(),
        Some("certificate")
    );
    let sessions = version
        .resources
        .iter()
        .find(|r| r.resource.as_deref() == Some("sessions"))
        .unwrap();
    assert_eq!(sessions.scope.as_deref(), Some("Namespaced"));
    assert_eq!(
        sessions.response_kind.as_ref().unwrap().kind.as_deref(),
        Some("Session")
    );

    // Step 3: the credential, exactly as captured.
    let post = captured("mirrordclusteroperatorusercredentials", "POST");
    let credential: CliCredential = client
        .request(cli_request(
            &post,
            post["body"].as_str().unwrap().as_bytes().to_vec(),
        ))
        .await
        .unwrap();
    assert_eq!(credential.spec.kind, "regular");
    let certificate = credential.status.expect("status.certificate").certificate;
    let der = check_certificate(&certificate, &credential.spec.csr);

    // `mirrord ls` lists from kube-apiserver; the operator only gates the kinds on the version
    // (checked above). The certified client then connects through the same router.
    let connect = captured("/proxy/namespaces/default/targets/deployment.web", "GET");
    let mut request = cli_request(&connect, Vec::new());
    request
        .headers_mut()
        .insert("x-client-der", der.parse().unwrap());
    let echoed: Value = client.request(request).await.unwrap();
    assert_eq!(echoed["session_id"], 222103366819779980u64);

    // kube's typed API reads our lists and objects.
    let resource = kube::discovery::ApiResource {
        group: "operator.metalbear.co".into(),
        version: "v1".into(),
        api_version: "operator.metalbear.co/v1".into(),
        kind: "Target".into(),
        plural: "targets".into(),
    };
    let targets: kube::Api<DynamicObject> =
        kube::Api::namespaced_with(client.clone(), "default", &resource);
    let list = targets.list(&Default::default()).await.unwrap();
    let names: Vec<_> = list
        .items
        .iter()
        .filter_map(|t| t.metadata.name.clone())
        .collect();
    assert!(
        names.contains(&"deploy.web.container.app".to_owned()),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("mirrord-agent")));
    let web = targets.get("deployment.web").await.unwrap();
    assert_eq!(
        web.data["spec"]["target"],
        json!({"deployment": "web", "container": "app"})
    );
    assert_eq!(web.data["status"]["available"], true);
}

#[tokio::test]
async fn admin_status_prints_what_the_cli_prints() {
    let harness = harness(false);
    let client = kube_client(harness.state);
    let printed = mirrord_operator::admin::fetch_status(&client)
        .await
        .unwrap();
    let golden = data().join("status.txt");
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&golden, &printed).unwrap();
    }
    assert_eq!(printed, std::fs::read_to_string(&golden).unwrap());
    assert!(printed.contains("Operator version: 3.250.0+mirrord-operator.test\n"));
    assert!(printed.contains("    expire at: 31-Dec-2099\n"));
    assert!(printed.contains("2m 5s"));
    assert!(printed.contains("Port: 8080, Type: steal, Filter: ^x-user: alice$"));

    // No operator: the same message as the CLI's.
    let empty = Router::new().fallback(|| async {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"kind": "Status", "apiVersion": "v1", "code": 404, "status": "Failure", "reason": "NotFound", "message": "404 page not found"})),
        )
    });
    let client = kube::Client::new(empty, "default");
    let error = mirrord_operator::admin::fetch_status(&client)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("mirrord operator was not found in the cluster")
    );
}

// ---- Fuzz: nothing panics, every answer is JSON ----

mod fuzz {
    use proptest::prelude::*;

    use super::*;

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("apis".to_owned()),
            Just("operator.metalbear.co".to_owned()),
            Just("v1".to_owned()),
            Just("namespaces".to_owned()),
            Just("targets".to_owned()),
            Just("proxy".to_owned()),
            Just("sessions".to_owned()),
            Just("mirrordoperators".to_owned()),
            Just("operator".to_owned()),
            Just("certificate".to_owned()),
            Just("mirrordclusteroperatorusercredentials".to_owned()),
            Just("deployment.web.container.app".to_owned()),
            "[a-zA-Z0-9%._~-]{0,12}",
        ]
    }

    fn method() -> impl Strategy<Value = http::Method> {
        prop_oneof![
            Just(http::Method::GET),
            Just(http::Method::POST),
            Just(http::Method::PUT),
            Just(http::Method::DELETE),
            Just(http::Method::PATCH),
            Just(http::Method::HEAD),
            Just(http::Method::OPTIONS),
        ]
    }

    fn header() -> impl Strategy<Value = (String, Vec<u8>)> {
        (
            prop_oneof![
                Just("x-client-der".to_owned()),
                Just("x-session-id".to_owned()),
                Just("x-mirrord-connect-params".to_owned()),
                Just("content-length".to_owned()),
                Just("content-type".to_owned()),
                "[a-z-]{1,10}",
            ],
            proptest::collection::vec(0x20u8..0x7f, 0..40),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn router_never_panics(
            method in method(),
            segments in proptest::collection::vec(segment(), 0..8),
            query in "[a-zA-Z0-9=&%+._-]{0,30}",
            headers in proptest::collection::vec(header(), 0..4),
            body in proptest::collection::vec(any::<u8>(), 0..256),
            identity in any::<bool>(),
            connector in any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut uri = format!("/{}", segments.join("/"));
            if !query.is_empty() {
                uri.push('?');
                uri.push_str(&query);
            }
            let Ok(uri) = uri.parse::<http::Uri>() else { return Ok(()) };
            let mut request = Request::builder().method(method.clone()).uri(uri).body(Body::from(body)).unwrap();
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (
                    name.parse::<http::HeaderName>(),
                    http::HeaderValue::from_bytes(&value),
                ) {
                    request.headers_mut().insert(name, value);
                }
            }
            if identity {
                request.extensions_mut().insert(alice());
            }
            let harness = harness(connector);
            let (status, _, body) = runtime.block_on(send(router(harness.state), request));
            if method != http::Method::HEAD {
                let body: Value = serde_json::from_slice(&body).expect("JSON answer");
                if status.as_u16() >= 400 {
                    prop_assert_eq!(&body["kind"], "Status");
                    prop_assert_eq!(&body["code"], status.as_u16());
                }
            }
            prop_assert!(status.as_u16() < 500 || status == StatusCode::NOT_IMPLEMENTED);
        }
    }
}
