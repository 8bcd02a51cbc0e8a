//! The webhook binary over real TLS: certificates from `mirrord-operator certs`, a client that trusts
//! only `ca.crt`, and every row of injection.md's bad-input table.

#[path = "support/webhook_client.rs"]
mod client;

use client::{TlsClient, WebhookProcess, get, make_certs};
use serde_json::{Value, json};

fn review(object: Value, kind: Value, operation: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": kind,
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": kind,
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "staging",
            "operation": operation,
            "userInfo": {"username": "admin"},
            "object": object,
            "dryRun": false
        }
    }))
    .unwrap()
}

fn pod_kind() -> Value {
    json!({"group": "", "version": "v1", "kind": "Pod"})
}

fn app_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "api-7d9f-", "namespace": "staging", "labels": {"app": "api"}},
        "spec": {"containers": [{"name": "api", "image": "example/api:1", "ports": [{"containerPort": 8080}]}]}
    })
}

/// The patch as sent: Go's decoder accepts []byte as base64 or as an array of numbers.
fn patch_bytes(patch: &Value) -> Vec<u8> {
    match patch {
        Value::String(b64) => {
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap()
        }
        Value::Array(bytes) => bytes.iter().map(|b| b.as_u64().unwrap() as u8).collect(),
        other => panic!("unexpected patch encoding {other}"),
    }
}

fn metric(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn assert_admitted_with_warning(reply: &client::Reply, needle: &str) {
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    let response = &body["response"];
    assert_eq!(body["kind"], "AdmissionReview");
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true);
    assert!(
        response.get("patch").is_none(),
        "unexpected patch: {response}"
    );
    let warnings = response["warnings"]
        .as_array()
        .expect("a warning explains the decision");
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains(needle)),
        "no warning containing {needle:?}: {warnings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_admission_over_tls_and_answers_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let webhook = WebhookProcess::start_files(dir.path(), &["--native-sidecar", "never"]).await;
    let ca = std::fs::read(dir.path().join("ca.crt")).unwrap();
    let client = TlsClient::trusting(&ca, "localhost");
    let post = |body: Vec<u8>| {
        let client = client.clone();
        async move {
            client
                .post(webhook.listen, "/mutate", body)
                .await
                .expect("request over TLS")
        }
    };

    // A client that trusts another CA cannot talk to it.
    let other = tempfile::tempdir().unwrap();
    make_certs(other.path());
    let stranger = TlsClient::trusting(
        &std::fs::read(other.path().join("ca.crt")).unwrap(),
        "localhost",
    );
    assert!(
        stranger
            .post(webhook.listen, "/mutate", b"{}".to_vec())
            .await
            .is_err()
    );

    // The happy path: a Deployment's pod gets the sidecar.
    let reply = post(review(app_pod(), pod_kind(), "CREATE")).await;
    assert_eq!(reply.status, 200);
    let response = &reply.json()["response"];
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let patch: Value = serde_json::from_slice(&patch_bytes(&response["patch"])).unwrap();
    assert!(
        patch.to_string().contains("mirrord-agent"),
        "patch adds the agent: {patch}"
    );

    // Body not JSON.
    let reply = post(b"{not json".to_vec()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"], "not-json");
    // JSON, but not an AdmissionReview v1.
    let reply = post(
        br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":null}"#
            .to_vec(),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"], "not-admission-review");
    let reply = post(br#"[1,2,3]"#.to_vec()).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("AdmissionReview")
    );
    // Over 3 MiB.
    let mut huge = review(app_pod(), pod_kind(), "CREATE");
    huge.splice(
        1..1,
        format!("\"padding\":\"{}\",", "x".repeat(3 * 1024 * 1024)).into_bytes(),
    );
    let reply = post(huge).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"], "too-large");
    // No request.
    let reply =
        post(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec()).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"], "no-request");
    // Not a Pod.
    let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}});
    let reply = post(review(
        config_map,
        json!({"group": "", "version": "v1", "kind": "ConfigMap"}),
        "CREATE",
    ))
    .await;
    assert_admitted_with_warning(&reply, "only injects Pods on CREATE");
    // Not CREATE.
    let reply = post(review(app_pod(), pod_kind(), "UPDATE")).await;
    assert_admitted_with_warning(&reply, "only injects Pods on CREATE");
    // A Pod that does not deserialize.
    let broken = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": "not-a-list"}});
    let reply = post(review(broken, pod_kind(), "CREATE")).await;
    assert_admitted_with_warning(&reply, "could not read this Pod");

    let (status, metrics) = get(webhook.health, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        metric(
            &metrics,
            "mirrord_operator_admission_requests_total{result=\"injected\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "mirrord_operator_admission_requests_total{result=\"rejected\"}"
        ),
        5.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "mirrord_operator_admission_requests_total{result=\"allowed\"}"
        ),
        2.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "mirrord_operator_admission_errors_total{reason=\"bad-pod\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "mirrord_operator_admission_errors_total{reason=\"too-large\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "mirrord_operator_tls_certificate_expiry_timestamp_seconds"
        ) > 1.7e9,
        "{metrics}"
    );
    assert!(
        metrics.contains("mirrord_operator_admission_duration_seconds_bucket"),
        "{metrics}"
    );
    assert_eq!(get(webhook.health, "/healthz").await.unwrap().0, 200);
}

#[tokio::test]
async fn refuses_to_start_on_missing_or_mismatched_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(client::binary())
        .args([
            "webhook",
            "--tls-mode",
            "files",
            "--listen",
            "127.0.0.1:0",
            "--health-listen",
            "127.0.0.1:0",
        ])
        .arg("--tls-cert-file")
        .arg(dir.path().join("missing.crt"))
        .env("KUBECONFIG", dir.path().join("none"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("missing.crt"),
        "error names the file: {stderr}"
    );
}
