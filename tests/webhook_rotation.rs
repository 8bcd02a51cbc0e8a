//! Certificate rotation while a client keeps sending: files replaced on disk, and the self-managed
//! rotation against a mocked API server that asserts the exact calls. Zero failed requests allowed.

#[path = "support/webhook_client.rs"]
mod client;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use client::TlsClient;
use http::{Method, Request, Response};
use kube::client::Body;
use mirrord_operator::{
    certs::{self, San},
    shutdown,
    tls::{self, CertResolver, files::CertFiles},
    webhook::{
        metrics::Metrics,
        namespaces::NamespaceCache,
        self_managed::{SelfManaged, SelfManagedConfig},
        server::{self, WebhookState},
    },
};
use serde_json::{Value, json};
use time::OffsetDateTime;

fn sample_review() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": "n", "operation": "CREATE",
            "userInfo": {}, "object": {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "a"}]}}}
    }))
    .unwrap()
}

/// The webhook's flag defaults.
#[derive(clap::Parser)]
struct Defaults {
    #[command(flatten)]
    args: mirrord_operator::webhook::config::WebhookArgs,
}

struct Served {
    addr: SocketAddr,
    _trigger: shutdown::ShutdownTrigger,
}

async fn serve(resolver: Arc<CertResolver>) -> Served {
    let (trigger, shutdown) = shutdown::channel();
    let args = Defaults::parse_from(["webhook"]).args;
    let cfg = args.injector_config(args.agent_defaults().unwrap(), false, None);
    let state = WebhookState::new(
        cfg,
        NamespaceCache::default(),
        Arc::new(Metrics::default()),
        resolver.clone(),
        true,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve_tls(
        listener,
        tls::server_config(resolver),
        server::admission_router(state),
        shutdown,
    ));
    Served {
        addr,
        _trigger: trigger,
    }
}

/// Sends requests back to back on fresh connections until `stop`; returns (serials seen in order, failures).
fn keep_sending(
    client: TlsClient,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, Vec<String>)> {
    tokio::spawn(async move {
        let (mut serials, mut failures) = (Vec::<String>::new(), Vec::new());
        // Bounded even if the test forgets to stop it.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            match client.post(addr, "/mutate", sample_review()).await {
                Ok(reply) if reply.status == 200 => {
                    if serials.last() != Some(&reply.serial) {
                        serials.push(reply.serial);
                    }
                }
                Ok(reply) => failures.push(format!("status {}", reply.status)),
                Err(error) => failures.push(error),
            }
        }
        (serials, failures)
    })
}

async fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_mode_swaps_a_replaced_certificate_without_failing_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let ca = certs::generate_ca("ca", now, Duration::from_secs(3600)).unwrap();
    let sans = [San::Dns("localhost".into())];
    let first = certs::issue_serving(&ca, &sans, now, Duration::from_secs(600)).unwrap();
    let files = CertFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    write(&files.cert, &first.cert_pem);
    write(&files.key, &first.key_pem);

    let resolver = Arc::new(CertResolver::default());
    resolver.swap(files.load().unwrap());
    let first_serial = resolver.current().unwrap().serial.clone();
    let metrics = Arc::new(Metrics::default());
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(tls::files::watch(
        files.clone(),
        resolver.clone(),
        Duration::from_millis(50),
        metrics.clone(),
        shutdown,
    ));
    let served = serve(resolver.clone()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(
        TlsClient::trusting(ca.cert_pem.as_bytes(), "localhost"),
        served.addr,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Like a cert-manager renewal: same CA, new key; the key lands first, so for a moment the pair
    // does not match and the old certificate must stay in service.
    let second = certs::issue_serving(&ca, &sans, now, Duration::from_secs(600)).unwrap();
    write(&files.key, &second.key_pem);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        resolver.current().unwrap().serial,
        first_serial,
        "a mismatched pair must not be served"
    );
    write(&files.cert, &second.cert_pem);
    wait_for("the new certificate", Duration::from_secs(10), || {
        resolver.current().unwrap().serial != first_serial
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (serials, failures) = sender.await.unwrap();
    trigger.trigger();
    assert!(
        failures.is_empty(),
        "failed requests during rotation: {failures:?}"
    );
    assert_eq!(
        serials.len(),
        2,
        "the client saw exactly the old then the new certificate: {serials:?}"
    );
    assert_eq!(serials[0], first_serial);
    assert_eq!(metrics.tls_reloads.get(), 1);
}

/// A scripted API server: each call must be the next expected one.
struct ApiServer(tower_test::mock::Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    async fn expect(
        &mut self,
        method: Method,
        path: &str,
    ) -> (
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        let (request, send) = tokio::time::timeout(Duration::from_secs(10), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no {method} {path} within 10s"))
            .expect("client dropped");
        assert_eq!(request.method(), method, "{}", request.uri());
        assert_eq!(request.uri().path(), path);
        (request, send)
    }

    async fn respond(
        send: tower_test::mock::SendResponse<Response<Body>>,
        status: u16,
        body: Value,
    ) {
        let response = Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        send.send_response(response);
    }

    async fn body(request: Request<Body>) -> Value {
        let bytes = request.into_body().collect_bytes().await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }
}

const SECRET_PATH: &str = "/api/v1/namespaces/mirrord/secrets/mirrord-operator-tls";
const MWC_PATH: &str =
    "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/mirrord-operator";

fn webhook_configuration(ca_bundle: Option<&str>) -> Value {
    let client_config = match ca_bundle {
        Some(b64) => json!({"url": "https://127.0.0.1:1/mutate", "caBundle": b64}),
        None => json!({"url": "https://127.0.0.1:1/mutate"}),
    };
    let webhooks: Vec<Value> = ["namespace.inject.mirrord.metalbear.co", "object.inject.mirrord.metalbear.co"]
        .iter()
        .map(|name| json!({"name": name, "clientConfig": client_config, "admissionReviewVersions": ["v1"], "sideEffects": "None"}))
        .collect();
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "mirrord-operator", "resourceVersion": "7", "uid": "mwc-uid"},
        "webhooks": webhooks
    })
}

fn pem_field(secret: &Value, key: &str) -> String {
    let b64 = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("secret has no {key}"));
    String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_managed_creates_rotates_and_syncs_ca_bundle_with_exact_calls() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let mut api = ApiServer(handle);
    let resolver = Arc::new(CertResolver::default());
    // Short enough that "two thirds later" is within the 5-minute back-dating of new certificates, so
    // certificates issued at a simulated future time are already valid for the real-time client.
    let validity = Duration::from_secs(6 * 60);
    let cfg = SelfManagedConfig {
        namespace: "mirrord".into(),
        secret_name: "mirrord-operator-tls".into(),
        webhook_config_name: "mirrord-operator".into(),
        sans: vec![
            San::Dns("mirrord-operator.mirrord.svc".into()),
            San::Ip([127, 0, 0, 1].into()),
        ],
        validity,
    };
    let manager = SelfManaged::new(client, cfg, resolver.clone());
    let t0 = OffsetDateTime::now_utc();

    // 1. First start: no Secret → create one (owned by the configuration, so uninstalling removes it),
    // serve it, apply the caBundle.
    let script = async {
        let (_, send) = api.expect(Method::GET, MWC_PATH).await;
        ApiServer::respond(send, 200, webhook_configuration(None)).await;
        let (_, send) = api.expect(Method::GET, SECRET_PATH).await;
        ApiServer::respond(send, 404, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})).await;
        let (request, send) = api
            .expect(Method::POST, "/api/v1/namespaces/mirrord/secrets")
            .await;
        let mut secret = ApiServer::body(request).await;
        assert_eq!(secret["type"], "kubernetes.io/tls");
        let owner = &secret["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].as_str()),
            (Some("MutatingWebhookConfiguration"), Some("mwc-uid"))
        );
        secret["metadata"]["resourceVersion"] = json!("1");
        ApiServer::respond(send, 201, secret.clone()).await;
        let (request, send) = api.expect(Method::PATCH, MWC_PATH).await;
        assert_eq!(
            request.headers()["content-type"],
            "application/apply-patch+yaml"
        );
        let query = request.uri().query().unwrap_or_default().to_string();
        assert!(
            query.contains("fieldManager=mirrord-operator") && query.contains("force=true"),
            "{query}"
        );
        let applied = ApiServer::body(request).await;
        let ca_b64 = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            pem_field(&secret, "ca.crt"),
        );
        assert_eq!(applied["webhooks"].as_array().unwrap().len(), 2);
        for webhook in applied["webhooks"].as_array().unwrap() {
            assert_eq!(webhook["clientConfig"]["caBundle"], ca_b64);
            assert_eq!(
                webhook.as_object().unwrap().len(),
                2,
                "only name and clientConfig.caBundle are applied: {webhook}"
            );
            assert_eq!(webhook["clientConfig"].as_object().unwrap().len(), 1);
        }
        ApiServer::respond(send, 200, webhook_configuration(Some(&ca_b64))).await;
        (secret, ca_b64)
    };
    let (first, (secret, ca_b64)) = tokio::join!(manager.reconcile(t0), script);
    let first = first.unwrap();
    assert!(first.secret_written && first.ca_bundle_synced && first.ca_bundle_patched);
    assert_eq!(resolver.current().unwrap().serial, first.serial);

    // Serve that certificate and keep a client (trusting only the CA) busy through the rotation.
    let served = serve(resolver.clone()).await;
    let ca_pem = pem_field(&secret, "ca.crt");
    let stop = Arc::new(AtomicBool::new(false));
    let sender = keep_sending(
        TlsClient::trusting(ca_pem.as_bytes(), "mirrord-operator.mirrord.svc"),
        served.addr,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 2. Later, within its first two thirds of life: nothing to do, nothing written.
    let script = async {
        let (_, send) = api.expect(Method::GET, MWC_PATH).await;
        ApiServer::respond(send, 200, webhook_configuration(Some(&ca_b64))).await;
        let (_, send) = api.expect(Method::GET, SECRET_PATH).await;
        ApiServer::respond(send, 200, secret.clone()).await;
    };
    let (quiet, ()) = tokio::join!(manager.reconcile(t0 + time::Duration::minutes(2)), script);
    let quiet = quiet.unwrap();
    assert!(!quiet.secret_written && !quiet.ca_bundle_patched && quiet.ca_bundle_synced);

    // 3. Past two thirds: a new serving certificate from the same CA, written with the resourceVersion
    // read (optimistic concurrency); the first attempt loses a race to another replica.
    let script = async {
        let (_, send) = api.expect(Method::GET, MWC_PATH).await;
        ApiServer::respond(send, 200, webhook_configuration(Some(&ca_b64))).await;
        let (_, send) = api.expect(Method::GET, SECRET_PATH).await;
        ApiServer::respond(send, 200, secret.clone()).await;
        let (request, send) = api.expect(Method::PUT, SECRET_PATH).await;
        assert_eq!(
            ApiServer::body(request).await["metadata"]["resourceVersion"],
            "1"
        );
        ApiServer::respond(send, 409, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409})).await;
        let (_, send) = api.expect(Method::GET, SECRET_PATH).await;
        ApiServer::respond(send, 200, secret.clone()).await;
        let (request, send) = api.expect(Method::PUT, SECRET_PATH).await;
        let mut rotated = ApiServer::body(request).await;
        assert_eq!(pem_field(&rotated, "ca.crt"), ca_pem, "the CA is kept");
        assert_ne!(
            pem_field(&rotated, "tls.crt"),
            pem_field(&secret, "tls.crt")
        );
        assert_eq!(rotated["metadata"]["ownerReferences"][0]["uid"], "mwc-uid");
        rotated["metadata"]["resourceVersion"] = json!("2");
        ApiServer::respond(send, 200, rotated).await;
    };
    let (rotated, ()) = tokio::join!(manager.reconcile(t0 + time::Duration::seconds(270)), script);
    let rotated = rotated.unwrap();
    assert!(rotated.secret_written && !rotated.ca_bundle_patched);
    assert_ne!(rotated.serial, first.serial);
    let new_serial = rotated.serial.clone();
    wait_for(
        "the client to see the rotated certificate",
        Duration::from_secs(10),
        || resolver.current().is_some_and(|c| c.serial == new_serial),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (serials, failures) = sender.await.unwrap();
    assert!(
        failures.is_empty(),
        "failed requests during rotation: {failures:?}"
    );
    assert_eq!(serials, vec![first.serial.clone(), rotated.serial.clone()]);
    // No call was left unanswered or unexpected.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), api.0.next_request())
            .await
            .is_err()
    );
}
