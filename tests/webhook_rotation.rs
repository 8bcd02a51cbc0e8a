//! Certificate rotation while a client keeps sending: files replaced on disk, and the self-managed
//! rotations (serving certificate, staged CA) against a mocked API server that asserts the exact
//! calls. Zero failed requests allowed.

#[path = "support/webhook_client.rs"]
mod client;
#[path = "support/mock_api.rs"]
mod mock_api;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use client::TlsClient;
use http::{Method, Request};
use kube::client::Body;
use mirrord_operator::{
    certs::{self, PemPair, San},
    server::{self as runtime, shutdown},
    tls::{
        self, CertResolver,
        files::CertFiles,
        rotation::IssuePolicy,
        self_managed::{CaBundleTarget, Reconciled, SelfManaged, SelfManagedConfig},
    },
    webhook::{
        metrics::Metrics,
        namespaces::NamespaceCache,
        server::{self, WebhookState},
    },
};
use mock_api::ApiServer;
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
    tokio::spawn(runtime::serve_tls(
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

/// A client sending requests back to back on fresh connections.
struct Sending {
    /// Serials of the certificates answered with, in order, each once.
    serials: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    /// Resolves to the failed requests.
    task: tokio::task::JoinHandle<Vec<String>>,
}

fn keep_sending(client: TlsClient, addr: SocketAddr) -> Sending {
    let serials = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn({
        let (serials, stop) = (Arc::clone(&serials), Arc::clone(&stop));
        async move {
            let mut failures = Vec::new();
            // Bounded even if the test forgets to stop it.
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match client.post(addr, "/mutate", sample_review()).await {
                    Ok(reply) if reply.status == 200 => {
                        let mut serials = serials.lock().unwrap();
                        if serials.last() != Some(&reply.serial) {
                            serials.push(reply.serial);
                        }
                    }
                    Ok(reply) => failures.push(format!("status {}", reply.status)),
                    Err(error) => failures.push(error),
                }
            }
            failures
        }
    });
    Sending {
        serials,
        stop,
        task,
    }
}

impl Sending {
    /// Waits (bounded) until a request was answered with the certificate `serial`.
    async fn answered_with(&self, serial: &str) {
        wait_for(
            &format!("a reply with certificate {serial}"),
            Duration::from_secs(20),
            || self.serials.lock().unwrap().iter().any(|s| s == serial),
        )
        .await;
    }

    /// Stops the client; returns (serials answered with, failures).
    async fn finish(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.task.await.unwrap();
        let serials = self.serials.lock().unwrap().clone();
        (serials, failures)
    }
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

    let sender = keep_sending(
        TlsClient::trusting(ca.cert_pem.as_bytes(), "localhost"),
        served.addr,
    );
    sender.answered_with(&first_serial).await;
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
    sender
        .answered_with(&resolver.current().unwrap().serial)
        .await;
    let (serials, failures) = sender.finish().await;
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
    assert_eq!(metrics.tls.tls_reloads.get(), 1);
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

const SANS: [&str; 2] = ["mirrord-operator.mirrord.svc", "127.0.0.1"];

fn sans() -> Vec<San> {
    SANS.iter().map(|s| s.parse().unwrap()).collect()
}

/// A manager talking to a scripted API server.
fn self_managed(validity: Duration) -> (SelfManaged, ApiServer, Arc<CertResolver>) {
    let (client, api) = ApiServer::client();
    let resolver = Arc::new(CertResolver::default());
    let cfg = SelfManagedConfig {
        namespace: "mirrord".into(),
        secret_name: "mirrord-operator-tls".into(),
        target: CaBundleTarget::MutatingWebhook("mirrord-operator".into()),
        issue: IssuePolicy {
            ca_name: "mirrord-operator webhook CA".into(),
            sans: sans(),
            validity,
        },
    };
    let manager = SelfManaged::new(client, cfg, resolver.clone());
    (manager, api, resolver)
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404})
}

fn conflict() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409})
}

fn b64(text: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, text)
}

/// Checks a server-side apply of the caBundle: only `name` and `clientConfig.caBundle` of both entries,
/// under our field manager, forced.
async fn expect_ca_bundle_apply(request: Request<Body>, bundle_b64: &str) {
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
    assert_eq!(applied["webhooks"].as_array().unwrap().len(), 2);
    for webhook in applied["webhooks"].as_array().unwrap() {
        assert_eq!(webhook["clientConfig"]["caBundle"], bundle_b64);
        assert_eq!(
            webhook.as_object().unwrap().len(),
            2,
            "only name and clientConfig.caBundle are applied: {webhook}"
        );
        assert_eq!(webhook["clientConfig"].as_object().unwrap().len(), 1);
    }
}

/// First start: no Secret → create one (owned by the configuration, so uninstalling removes it) and
/// apply the caBundle. Returns the Secret as created (resourceVersion 1) and the caBundle (base64).
async fn expect_first_start(api: &mut ApiServer) -> (Value, String) {
    let (_, send) = api.expect(Method::GET, MWC_PATH).await;
    ApiServer::respond(send, 200, webhook_configuration(None));
    let (_, send) = api.expect(Method::GET, SECRET_PATH).await;
    ApiServer::respond(send, 404, not_found());
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
    ApiServer::respond(send, 201, secret.clone());
    let (request, send) = api.expect(Method::PATCH, MWC_PATH).await;
    let ca_b64 = b64(&pem_field(&secret, "ca.crt"));
    expect_ca_bundle_apply(request, &ca_b64).await;
    ApiServer::respond(send, 200, webhook_configuration(Some(&ca_b64)));
    (secret, ca_b64)
}

/// One pass; bounded, as a pass that makes a call the script does not answer would wait forever.
/// The reads every reconcile opens with: the webhook configuration (its caBundle
/// `ca_bundle_b64`), then the Secret.
async fn answer_reads(api: &mut ApiServer, ca_bundle_b64: &str, secret: Value) {
    let (_, send) = api.expect(Method::GET, MWC_PATH).await;
    ApiServer::respond(send, 200, webhook_configuration(Some(ca_bundle_b64)));
    let (_, send) = api.expect(Method::GET, SECRET_PATH).await;
    ApiServer::respond(send, 200, secret);
}

async fn reconcile(manager: &SelfManaged, now: OffsetDateTime) -> Reconciled {
    tokio::time::timeout(Duration::from_secs(30), manager.reconcile(now))
        .await
        .expect("the reconcile made a call the script did not answer")
        .unwrap()
}

/// No call was left unanswered or unexpected.
async fn expect_no_more_calls(api: &mut ApiServer) {
    assert!(
        tokio::time::timeout(Duration::from_millis(200), api.0.next_request())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_managed_creates_rotates_and_syncs_ca_bundle_with_exact_calls() {
    // Short enough that "two thirds later" is within the 5-minute back-dating of new certificates, so
    // certificates issued at a simulated future time are already valid for the real-time client.
    let (manager, mut api, resolver) = self_managed(Duration::from_secs(6 * 60));
    let t0 = OffsetDateTime::now_utc();

    // 1. First start: create the Secret, serve it, apply the caBundle.
    let (first, (secret, ca_b64)) =
        tokio::join!(reconcile(&manager, t0), expect_first_start(&mut api));
    assert!(first.secret_written && first.ca_bundle_synced && first.ca_bundle_patched);
    assert!(!first.reloaded, "the first certificate replaces none");
    assert_eq!(resolver.current().unwrap().serial, first.serial);

    // Serve that certificate and keep a client (trusting only the CA) busy through the rotation.
    let served = serve(resolver.clone()).await;
    let ca_pem = pem_field(&secret, "ca.crt");
    let sender = keep_sending(TlsClient::trusting(ca_pem.as_bytes(), SANS[0]), served.addr);
    sender.answered_with(&first.serial).await;

    // 2. Later, within its first two thirds of life: nothing to do, nothing written.
    let script = async {
        answer_reads(&mut api, &ca_b64, secret.clone()).await;
    };
    let (quiet, ()) = tokio::join!(reconcile(&manager, t0 + time::Duration::minutes(2)), script);
    assert!(!quiet.secret_written && !quiet.ca_bundle_patched && quiet.ca_bundle_synced);
    assert!(!quiet.reloaded);

    // 3. Past two thirds: a new serving certificate from the same CA, written with the resourceVersion
    // read (optimistic concurrency); the first attempt loses a race to another replica.
    let script = async {
        answer_reads(&mut api, &ca_b64, secret.clone()).await;
        let (request, send) = api.expect(Method::PUT, SECRET_PATH).await;
        assert_eq!(
            ApiServer::body(request).await["metadata"]["resourceVersion"],
            "1"
        );
        ApiServer::respond(send, 409, conflict());
        let (_, send) = api.expect(Method::GET, SECRET_PATH).await;
        ApiServer::respond(send, 200, secret.clone());
        let (request, send) = api.expect(Method::PUT, SECRET_PATH).await;
        let mut rotated = ApiServer::body(request).await;
        assert_eq!(pem_field(&rotated, "ca.crt"), ca_pem, "the CA is kept");
        assert_ne!(
            pem_field(&rotated, "tls.crt"),
            pem_field(&secret, "tls.crt")
        );
        assert_eq!(rotated["metadata"]["ownerReferences"][0]["uid"], "mwc-uid");
        rotated["metadata"]["resourceVersion"] = json!("2");
        ApiServer::respond(send, 200, rotated);
    };
    let (rotated, ()) = tokio::join!(
        reconcile(&manager, t0 + time::Duration::seconds(270)),
        script
    );
    assert!(rotated.secret_written && rotated.reloaded && !rotated.ca_bundle_patched);
    assert_ne!(rotated.serial, first.serial);
    assert_eq!(resolver.current().unwrap().serial, rotated.serial);
    sender.answered_with(&rotated.serial).await;
    let (serials, failures) = sender.finish().await;
    assert!(
        failures.is_empty(),
        "failed requests during rotation: {failures:?}"
    );
    assert_eq!(serials, vec![first.serial.clone(), rotated.serial.clone()]);
    expect_no_more_calls(&mut api).await;
}

fn x509_of(pem: &str) -> x509_parser::pem::Pem {
    x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1
}

fn serial_of(cert_pem: &str) -> String {
    x509_of(cert_pem)
        .parse_x509()
        .unwrap()
        .raw_serial_as_string()
}

fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
    let (cert, ca) = (x509_of(cert_pem), x509_of(ca_pem));
    let ca = ca.parse_x509().unwrap();
    let cert = cert.parse_x509().unwrap();
    cert.verify_signature(Some(ca.public_key())).is_ok()
}

fn set_pem(secret: &mut Value, key: &str, pem: &str) {
    secret["data"][key] = json!(b64(pem));
}

/// The staged CA rotation against the scripted API server: the next CA is published (current + next)
/// while the current one keeps signing; it is promoted only once the configuration holds it, and the
/// old CA stays trusted. A client that trusts only the caBundle published before the promotion — all
/// the API server knows — keeps sending through it without one failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_managed_stages_the_next_ca_before_promoting_it() {
    // The CA lives ten serving lifetimes, 300 s: its next CA is staged from 150 s and promoted from 200 s.
    // Certificates are back-dated 5 minutes, so those issued at these simulated times are already
    // valid for the real-time client.
    let validity = Duration::from_secs(30);
    let (manager, mut api, resolver) = self_managed(validity);
    let t0 = OffsetDateTime::now_utc();
    let at = |seconds| t0 + time::Duration::seconds(seconds);

    let (first, (secret, ca_b64)) =
        tokio::join!(reconcile(&manager, t0), expect_first_start(&mut api));
    let ca = PemPair {
        cert_pem: pem_field(&secret, "ca.crt"),
        key_pem: pem_field(&secret, "ca.key"),
    };

    // 1. Past half: stage. Our write loses the race to another replica that staged its own next CA;
    // we take theirs as it is and publish the current CA plus their next one.
    let their_next = certs::generate_ca("their next CA", at(155), validity * 10).unwrap();
    let their_serving = certs::issue_serving(&ca, &sans(), at(155), validity).unwrap();
    let mut theirs = secret.clone();
    set_pem(&mut theirs, "ca-next.crt", &their_next.cert_pem);
    set_pem(&mut theirs, "ca-next.key", &their_next.key_pem);
    set_pem(&mut theirs, "tls.crt", &their_serving.cert_pem);
    set_pem(&mut theirs, "tls.key", &their_serving.key_pem);
    theirs["metadata"]["resourceVersion"] = json!("2");
    let staged_bundle = format!("{}{}", ca.cert_pem, their_next.cert_pem);
    let staged_b64 = b64(&staged_bundle);
    let script = async {
        answer_reads(&mut api, &ca_b64, secret.clone()).await;
        let (request, send) = api.expect(Method::PUT, SECRET_PATH).await;
        let ours = ApiServer::body(request).await;
        assert_eq!(ours["metadata"]["resourceVersion"], "1");
        assert_eq!(
            pem_field(&ours, "ca.crt"),
            ca.cert_pem,
            "the current CA is kept"
        );
        let our_next = pem_field(&ours, "ca-next.crt");
        assert_ne!(our_next, ca.cert_pem);
        assert!(x509_of(&our_next).parse_x509().unwrap().is_ca());
        assert!(pem_field(&ours, "ca-next.key").contains("PRIVATE KEY"));
        assert!(
            signed_by(&pem_field(&ours, "tls.crt"), &ca.cert_pem),
            "the current CA still signs"
        );
        assert!(ours["data"].get("ca-previous.crt").is_none());
        ApiServer::respond(send, 409, conflict());
        let (_, send) = api.expect(Method::GET, SECRET_PATH).await;
        ApiServer::respond(send, 200, theirs.clone());
        let (request, send) = api.expect(Method::PATCH, MWC_PATH).await;
        expect_ca_bundle_apply(request, &staged_b64).await;
        ApiServer::respond(send, 200, webhook_configuration(Some(&staged_b64)));
    };
    let (staged, ()) = tokio::join!(reconcile(&manager, at(160)), script);
    assert!(!staged.secret_written && staged.ca_bundle_patched && staged.ca_bundle_synced);
    assert_eq!(staged.trust_bundle, staged_bundle, "current + next");
    assert_eq!(staged.serial, serial_of(&their_serving.cert_pem));
    assert!(staged.reloaded && staged.serial != first.serial);

    // What the API server holds from now on is all the client trusts.
    let served = serve(resolver.clone()).await;
    let sender = keep_sending(
        TlsClient::trusting(staged_bundle.as_bytes(), SANS[0]),
        served.addr,
    );
    sender.answered_with(&staged.serial).await;

    // 2. Past two thirds, but the configuration read back lacks the next CA (say, a replica of an older
    // version applied its own bundle mid-upgrade): no promotion. The serving certificate, due, is
    // renewed from the current CA, and current + next applied again.
    let script = async {
        answer_reads(&mut api, &ca_b64, theirs.clone()).await;
        let (request, send) = api.expect(Method::PUT, SECRET_PATH).await;
        let mut kept = ApiServer::body(request).await;
        assert_eq!(kept["metadata"]["resourceVersion"], "2");
        assert_eq!(pem_field(&kept, "ca.crt"), ca.cert_pem);
        assert_eq!(pem_field(&kept, "ca-next.crt"), their_next.cert_pem);
        assert_eq!(pem_field(&kept, "ca-next.key"), their_next.key_pem);
        assert!(signed_by(&pem_field(&kept, "tls.crt"), &ca.cert_pem));
        kept["metadata"]["resourceVersion"] = json!("3");
        ApiServer::respond(send, 200, kept.clone());
        let (request, send) = api.expect(Method::PATCH, MWC_PATH).await;
        expect_ca_bundle_apply(request, &staged_b64).await;
        ApiServer::respond(send, 200, webhook_configuration(Some(&staged_b64)));
        kept
    };
    let (held_back, kept) = tokio::join!(reconcile(&manager, at(205)), script);
    assert!(held_back.secret_written && held_back.reloaded && held_back.ca_bundle_patched);
    assert_eq!(held_back.serial, serial_of(&pem_field(&kept, "tls.crt")));
    sender.answered_with(&held_back.serial).await;

    // 3. The configuration holds the next CA: promotion. The bundle is already right, so nothing is
    // applied; the old CA stays in it.
    let script = async {
        answer_reads(&mut api, &staged_b64, kept.clone()).await;
        let (request, send) = api.expect(Method::PUT, SECRET_PATH).await;
        let mut promoted = ApiServer::body(request).await;
        assert_eq!(promoted["metadata"]["resourceVersion"], "3");
        assert_eq!(pem_field(&promoted, "ca.crt"), their_next.cert_pem);
        assert_eq!(pem_field(&promoted, "ca.key"), their_next.key_pem);
        assert_eq!(pem_field(&promoted, "ca-previous.crt"), ca.cert_pem);
        let data = promoted["data"].as_object().unwrap();
        assert!(!data.contains_key("ca-next.crt") && !data.contains_key("ca-next.key"));
        let tls = pem_field(&promoted, "tls.crt");
        assert!(signed_by(&tls, &their_next.cert_pem) && !signed_by(&tls, &ca.cert_pem));
        promoted["metadata"]["resourceVersion"] = json!("4");
        ApiServer::respond(send, 200, promoted);
        tls
    };
    let (promoted, promoted_tls) = tokio::join!(reconcile(&manager, at(210)), script);
    assert!(promoted.secret_written && promoted.reloaded);
    assert!(promoted.ca_bundle_synced && !promoted.ca_bundle_patched);
    assert_eq!(
        promoted.trust_bundle, staged_bundle,
        "the old CA is still trusted"
    );
    assert_eq!(promoted.serial, serial_of(&promoted_tls));
    assert_eq!(resolver.current().unwrap().serial, promoted.serial);
    sender.answered_with(&promoted.serial).await;
    let (serials, failures) = sender.finish().await;
    assert!(
        failures.is_empty(),
        "failed requests across the CA rotation: {failures:?}"
    );
    assert_eq!(serials, [staged.serial, held_back.serial, promoted.serial]);

    // The served certificate now chains to the new CA only.
    let new_ca_only = TlsClient::trusting(their_next.cert_pem.as_bytes(), SANS[0]);
    let reply = new_ca_only
        .post(served.addr, "/mutate", sample_review())
        .await;
    assert_eq!(reply.map(|r| r.status), Ok(200));
    let old_ca_only = TlsClient::trusting(ca.cert_pem.as_bytes(), SANS[0]);
    let refused = old_ca_only
        .post(served.addr, "/mutate", sample_review())
        .await;
    assert!(refused.is_err_and(|e| e.starts_with("TLS")));
    expect_no_more_calls(&mut api).await;
}
