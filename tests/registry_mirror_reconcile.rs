//! The reconcile against a mock API server (tower-test) that records every call: create, a second pass
//! that changes nothing, an update on a changed spec, a rotated credentials Secret, bad input (status +
//! Event, children untouched) and deletion (no calls: the garbage collector owns that).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, Ordering},
    },
};

use http::{Request, Response, StatusCode};
use kube::{Client, client::Body, runtime::controller::Action};
use mirrord_operator::registry_mirror::{
    crd::RegistryMirror,
    metrics::Metrics,
    reconcile::{Context, RESYNC, TLS_RENEW_BEFORE, TLS_VALIDITY, reconcile},
    render::{RenderConfig, TlsMaterial},
};
use serde_json::{Value, json};
use time::OffsetDateTime;

const NS: &str = "kube-extra";
const MIRRORS: &str = "/apis/k8s.osp.tech/v1/registrymirrors";
const APPLY: &str = "?&force=true&fieldManager=registry-mirror-controller";

/// One recorded call: method, path with query, and the JSON body (Null when none).
#[derive(Debug, Clone, PartialEq)]
struct Call {
    method: String,
    uri: String,
    body: Value,
}

impl Call {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.uri)
    }
}

/// The state the fake apiserver keeps: the mirror, Secrets, applied objects.
#[derive(Default)]
struct State {
    mirror: Value,
    secrets: BTreeMap<String, Value>,
    objects: BTreeMap<String, Value>,
    calls: Vec<Call>,
}

fn status_error(code: u16, reason: &str) -> (StatusCode, Value) {
    (
        StatusCode::from_u16(code).unwrap(),
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code, "message": reason}),
    )
}

fn merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

impl State {
    fn answer(&mut self, method: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        let mirror_path = format!(
            "{MIRRORS}/{}",
            self.mirror["metadata"]["name"].as_str().unwrap()
        );
        let secrets = format!("/api/v1/namespaces/{NS}/secrets/");
        match method {
            "PATCH" if path == mirror_path || path == format!("{mirror_path}/status") => {
                merge(&mut self.mirror, body);
                (StatusCode::OK, self.mirror.clone())
            }
            "GET" if path.starts_with(&secrets) => {
                let name = &path[secrets.len()..];
                match self.secrets.get(name) {
                    Some(secret) => (StatusCode::OK, secret.clone()),
                    None => status_error(404, "NotFound"),
                }
            }
            // Server-side apply: the object as applied, plus what the server fills in.
            "PATCH" => {
                let mut object = body.clone();
                if path.contains("/services/") && object["spec"]["clusterIP"].is_null() {
                    object["spec"]["clusterIP"] = json!("10.96.0.42");
                }
                if path.contains("/secrets/") {
                    let name = path.rsplit('/').next().unwrap().to_owned();
                    self.secrets.insert(name, object.clone());
                }
                self.objects.insert(path.to_owned(), object.clone());
                (StatusCode::OK, object)
            }
            "POST" if path.contains("/events") => (StatusCode::CREATED, body.clone()),
            _ => status_error(405, "MethodNotAllowed"),
        }
    }
}

struct Harness {
    state: Arc<Mutex<State>>,
    ctx: Arc<Context>,
}

fn fixed_now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
}

/// The clock of the renewal test only (the other tests use `fixed_now`), in Unix seconds.
static MOVABLE_NOW: AtomicI64 = AtomicI64::new(1_800_000_000);

fn movable_now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(MOVABLE_NOW.load(Ordering::SeqCst)).unwrap()
}

/// Fixed PEM that names the issue time, so a reissued certificate differs.
fn fixture_tls(
    sans: &[String],
    now: OffsetDateTime,
) -> Result<TlsMaterial, mirrord_operator::certs::CertError> {
    let stamp = now.unix_timestamp();
    Ok(TlsMaterial {
        ca_pem: format!("CA {stamp}\n"),
        cert_pem: format!("CERT {stamp}\n"),
        key_pem: format!("KEY {stamp}\n"),
        sans: sans.to_vec(),
        not_after: (now + TLS_VALIDITY)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
    })
}

impl Harness {
    fn new(mirror: Value) -> Self {
        Self::with_clock(mirror, fixed_now)
    }

    fn with_clock(mirror: Value, clock: fn() -> OffsetDateTime) -> Self {
        let state = Arc::new(Mutex::new(State {
            mirror,
            ..State::default()
        }));
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server_state = state.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let uri = request.uri().to_string();
                let path = request.uri().path().to_owned();
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                };
                let (status, answer) = {
                    let mut state = server_state.lock().unwrap();
                    state.calls.push(Call {
                        method: method.clone(),
                        uri,
                        body: body.clone(),
                    });
                    state.answer(&method, &path, &body)
                };
                send.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
        });
        let client = Client::new(service, "default");
        let ctx = Arc::new(Context {
            client,
            render: RenderConfig {
                namespace: NS.to_owned(),
                nginx_image: "nginx:test".to_owned(),
                agent_image: "operator:test".to_owned(),
                hosts_dir: "/etc/containerd/certs.d".to_owned(),
            },
            instance: "test".to_owned(),
            metrics: Arc::new(Metrics::default()),
            clock,
            issue_tls: fixture_tls,
        });
        Harness { state, ctx }
    }

    /// Runs one reconcile of the mirror as the server now has it; returns its action and the calls.
    async fn pass(&self) -> (Action, Vec<Call>) {
        let mirror: RegistryMirror =
            serde_json::from_value(self.state.lock().unwrap().mirror.clone()).unwrap();
        let action = reconcile(Arc::new(mirror), self.ctx.clone())
            .await
            .expect("reconcile succeeds");
        let calls = std::mem::take(&mut self.state.lock().unwrap().calls);
        (action, calls)
    }

    fn edit_mirror(&self, patch: Value) {
        let mut state = self.state.lock().unwrap();
        merge(&mut state.mirror, &patch);
        let generation = state.mirror["metadata"]["generation"].as_i64().unwrap_or(1);
        state.mirror["metadata"]["generation"] = json!(generation + 1);
    }

    fn put_secret(&self, name: &str, data: Value) {
        self.state.lock().unwrap().secrets.insert(
            name.to_owned(),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "data": data}),
        );
    }
}

fn mirror(spec: Value) -> Value {
    json!({
        "apiVersion": "k8s.osp.tech/v1", "kind": "RegistryMirror",
        "metadata": {"name": "quay", "uid": "uid-quay", "generation": 1},
        "spec": spec,
    })
}

fn lines(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::line).collect()
}

fn apply_path(group_path: &str, plural: &str, name: &str) -> String {
    format!("PATCH {group_path}/namespaces/{NS}/{plural}/{name}{APPLY}")
}

/// The applies of one healthy pass, in order.
fn applies(name: &str) -> Vec<String> {
    let child = format!("registry-mirror-{name}");
    vec![
        apply_path("/api/v1", "services", &child),
        apply_path("/api/v1", "services", &format!("{child}-headless")),
        format!("GET /api/v1/namespaces/{NS}/secrets/{child}"),
        apply_path("/api/v1", "secrets", &child),
        apply_path("/apis/apps/v1", "statefulsets", &child),
        apply_path("/apis/apps/v1", "daemonsets", &child),
    ]
}

fn find<'a>(calls: &'a [Call], needle: &str) -> &'a Call {
    calls
        .iter()
        .find(|c| c.uri.contains(needle))
        .unwrap_or_else(|| panic!("no call to {needle}: {:#?}", lines(calls)))
}

fn secret_conf(calls: &[Call]) -> String {
    let secret = find(calls, "/secrets/registry-mirror-quay?");
    let b64 = secret.body["data"]["nginx.conf"].as_str().unwrap();
    use base64::Engine;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn create_then_second_pass_is_a_no_op() {
    let h = Harness::new(mirror(json!({"upstreamUrl": "quay.example.com"})));
    let (action, first) = h.pass().await;
    assert_eq!(action, Action::requeue(RESYNC));
    let mut expected = vec![format!("PATCH {MIRRORS}/quay?")];
    expected.extend(applies("quay"));
    expected.push(format!("PATCH {MIRRORS}/quay/status?"));
    assert_eq!(lines(&first), expected);
    assert_eq!(
        first[0].body,
        json!({"metadata": {"labels": {"mirror": "quay"}}})
    );
    let status = &first.last().unwrap().body["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(
        status["endpoint"],
        "https://registry-mirror-quay.kube-extra.svc:443"
    );
    assert_eq!(status["clusterIp"], "10.96.0.42");
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "True");
    assert_eq!(status["conditions"][0]["reason"], "Reconciled");
    assert_eq!(
        status["conditions"][0]["lastTransitionTime"],
        "2027-01-15T08:00:00Z"
    );
    let ds = find(&first, "/daemonsets/");
    let args = ds.body["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert!(
        args.as_array()
            .unwrap()
            .contains(&json!("https://10.96.0.42:443")),
        "the node agent dials the Service IP: {args}"
    );

    // Same input: the same applies with the same bodies, no label patch, no status write.
    let (_, second) = h.pass().await;
    assert_eq!(lines(&second), applies("quay"));
    for call in &second {
        if call.method == "PATCH" {
            let before = first.iter().find(|c| c.uri == call.uri).unwrap();
            assert_eq!(
                before.body, call.body,
                "{} changed on a no-op pass",
                call.uri
            );
        }
    }
}

#[tokio::test]
async fn changed_spec_updates_the_children_and_status() {
    let h = Harness::new(mirror(json!({"upstreamUrl": "quay.example.com"})));
    let (_, first) = h.pass().await;
    h.edit_mirror(json!({"spec": {"upstreamUrl": "https://registry.corp.example:5000"}}));
    let (_, second) = h.pass().await;
    let mut expected = applies("quay");
    expected.push(format!("PATCH {MIRRORS}/quay/status?"));
    assert_eq!(lines(&second), expected);
    assert!(secret_conf(&second).contains("proxy_pass https://registry.corp.example:5000;"));
    let checksum = |calls: &[Call]| {
        find(calls, "/statefulsets/").body["spec"]["template"]["metadata"]["annotations"]
            ["k8s.osp.tech/config-checksum"]
            .clone()
    };
    assert_ne!(checksum(&first), checksum(&second), "pods must restart");
    let status = &second.last().unwrap().body["status"];
    assert_eq!(status["observedGeneration"], 2);
    // Ready stayed True: the transition time is kept.
    assert_eq!(
        status["conditions"][0]["lastTransitionTime"],
        "2027-01-15T08:00:00Z"
    );
}

#[tokio::test]
async fn rotated_credentials_are_rendered() {
    let h = Harness::new(mirror(
        json!({"upstreamUrl": "quay.example.com", "credentialsSecret": "pull"}),
    ));
    h.put_secret("pull", json!({"username": "dXNlcg==", "password": "b25l"})); // user / one
    let (_, first) = h.pass().await;
    assert_eq!(
        first[1].line(),
        format!("GET /api/v1/namespaces/{NS}/secrets/pull")
    );
    assert!(secret_conf(&first).contains("Authorization \"Basic dXNlcjpvbmU=\""));
    h.put_secret("pull", json!({"username": "dXNlcg==", "password": "dHdv"})); // user / two
    let (_, second) = h.pass().await;
    let mut expected = vec![format!("GET /api/v1/namespaces/{NS}/secrets/pull")];
    expected.extend(applies("quay"));
    assert_eq!(lines(&second), expected, "a new password changes no status");
    assert!(secret_conf(&second).contains("Authorization \"Basic dXNlcjp0d28=\""));
}

fn secret_data(calls: &[Call], key: &str) -> String {
    let secret = find(calls, "/secrets/registry-mirror-quay?");
    secret.body["data"][key].as_str().unwrap().to_owned()
}

fn sts_checksum(calls: &[Call]) -> String {
    let sts = find(calls, "/statefulsets/registry-mirror-quay?");
    sts.body["spec"]["template"]["metadata"]["annotations"]["k8s.osp.tech/config-checksum"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The CA and serving certificate are kept while they are valid for long enough and reissued (new
/// expiry annotation, new pod checksum) once less than TLS_RENEW_BEFORE is left.
#[tokio::test]
async fn certificates_are_renewed_before_they_expire() {
    let h = Harness::with_clock(
        mirror(json!({"upstreamUrl": "quay.example.com"})),
        movable_now,
    );
    let start = MOVABLE_NOW.load(Ordering::SeqCst);
    let (_, first) = h.pass().await;
    let (cert, checksum) = (secret_data(&first, "tls.crt"), sts_checksum(&first));
    let not_after = find(&first, "/secrets/registry-mirror-quay?").body["metadata"]["annotations"]
        ["k8s.osp.tech/tls-not-after"]
        .clone();
    assert_eq!(
        not_after,
        json!("2028-01-15T08:00:00Z"),
        "issued for TLS_VALIDITY"
    );

    // Just outside the renewal window: the same material.
    let keep = TLS_VALIDITY - TLS_RENEW_BEFORE - std::time::Duration::from_secs(3600);
    MOVABLE_NOW.store(start + keep.as_secs() as i64, Ordering::SeqCst);
    let (_, kept) = h.pass().await;
    assert_eq!(secret_data(&kept, "tls.crt"), cert);
    assert_eq!(sts_checksum(&kept), checksum);

    // Inside it: a new CA and certificate, a new expiry, and the pods restart.
    let renew = TLS_VALIDITY - TLS_RENEW_BEFORE + std::time::Duration::from_secs(3600);
    MOVABLE_NOW.store(start + renew.as_secs() as i64, Ordering::SeqCst);
    let (_, renewed) = h.pass().await;
    assert_ne!(secret_data(&renewed, "tls.crt"), cert);
    assert_ne!(
        secret_data(&renewed, "ca.crt"),
        secret_data(&first, "ca.crt")
    );
    assert_ne!(sts_checksum(&renewed), checksum);
    assert_ne!(
        find(&renewed, "/secrets/registry-mirror-quay?").body["metadata"]["annotations"]["k8s.osp.tech/tls-not-after"],
        not_after
    );

    // And the renewed material is then kept.
    let (_, after) = h.pass().await;
    assert_eq!(
        secret_data(&after, "tls.crt"),
        secret_data(&renewed, "tls.crt")
    );
}

#[tokio::test]
async fn bad_input_reports_and_leaves_children_alone() {
    let h = Harness::new(mirror(json!({"upstreamUrl": "quay.example.com"})));
    h.pass().await;
    h.edit_mirror(json!({"spec": {"credentialsSecret": "absent"}}));
    let (action, calls) = h.pass().await;
    assert_eq!(
        lines(&calls),
        vec![
            format!("GET /api/v1/namespaces/{NS}/secrets/absent"),
            format!("PATCH {MIRRORS}/quay/status?"),
            "POST /api/v1/namespaces/default/events?".to_owned(),
        ],
        "no child is touched"
    );
    assert_ne!(action, Action::await_change());
    let status = &calls[1].body["status"];
    assert_eq!(status["conditions"][0]["status"], "False");
    assert_eq!(status["conditions"][0]["reason"], "SecretNotFound");
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(
        status["endpoint"], "https://registry-mirror-quay.kube-extra.svc:443",
        "the last good endpoint stays"
    );
    let event = &calls[2].body;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "SecretNotFound");
    assert_eq!(event["involvedObject"]["kind"], "RegistryMirror");
    assert_eq!(event["involvedObject"]["name"], "quay");
    assert_eq!(event["involvedObject"]["uid"], "uid-quay");
    assert_eq!(event["metadata"]["namespace"], "default");

    // The same problem again: no second status write or Event.
    let (_, again) = h.pass().await;
    assert_eq!(
        lines(&again),
        vec![format!("GET /api/v1/namespaces/{NS}/secrets/absent")]
    );

    // Malformed URL: reported without reading anything.
    h.edit_mirror(
        json!({"spec": {"upstreamUrl": "quay.example.com/x", "credentialsSecret": null}}),
    );
    let (_, calls) = h.pass().await;
    assert_eq!(
        lines(&calls),
        vec![
            format!("PATCH {MIRRORS}/quay/status?"),
            "POST /api/v1/namespaces/default/events?".to_owned(),
        ]
    );
    assert_eq!(calls[1].body["reason"], "InvalidUpstreamUrl");

    // Fixed: everything is applied again and Ready turns True.
    h.edit_mirror(json!({"spec": {"upstreamUrl": "quay.example.com"}}));
    let (_, calls) = h.pass().await;
    let mut expected = applies("quay");
    expected.push(format!("PATCH {MIRRORS}/quay/status?"));
    assert_eq!(lines(&calls), expected);
    assert_eq!(
        calls.last().unwrap().body["status"]["conditions"][0]["reason"],
        "Reconciled"
    );
}

#[tokio::test]
async fn deleting_mirror_makes_no_calls() {
    let h = Harness::new(mirror(json!({"upstreamUrl": "quay.example.com"})));
    h.pass().await;
    h.state.lock().unwrap().mirror["metadata"]["deletionTimestamp"] = json!("2027-01-15T09:00:00Z");
    let (action, calls) = h.pass().await;
    assert_eq!(action, Action::await_change());
    assert!(calls.is_empty(), "children go with their owner: {calls:#?}");
    // Each child the first pass applied names the mirror as its controlling owner.
    for (path, object) in &h.state.lock().unwrap().objects {
        let owner = &object["metadata"]["ownerReferences"][0];
        assert_eq!(owner["uid"], "uid-quay", "{path}");
        assert_eq!(owner["controller"], true, "{path}");
    }
}

#[tokio::test]
async fn invalid_name_is_reported() {
    let mut m = mirror(json!({"upstreamUrl": "quay.example.com"}));
    m["metadata"]["name"] = json!("quay.example.com");
    let h = Harness::new(m);
    let (_, calls) = h.pass().await;
    assert_eq!(
        lines(&calls),
        vec![
            format!("PATCH {MIRRORS}/quay.example.com/status?"),
            "POST /api/v1/namespaces/default/events?".to_owned(),
        ]
    );
    assert_eq!(calls[1].body["reason"], "InvalidName");
}
