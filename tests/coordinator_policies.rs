//! Policies enforced by the coordinator with a real agent: a network namespace plays a pod of
//! Deployment `web` (labelled `team: payments`) with the real `mirrord-operator agent` dialling the
//! hub. Through the real API router and relay, over WebSocket with the project's codec:
//! `requireProfile` refuses the connect with a 403 `metav1.Status` naming the policy; with a
//! profile the session runs; a steal without a filter is accepted, then refused with
//! `ResponseError::ForbiddenWithReason` once a policy is added mid-session, while a filtered steal
//! still goes through; after the policy is deleted the unfiltered steal is accepted again;
//! env values from a Secret the user may not `get` (SubjectAccessReview stand-in), through
//! `secretKeyRef` or `envFrom`, are left out;
//! `env.exclude` keeps a variable out of the agent's env answer; a hostname rule, fed by the
//! session's own DNS answer, refuses an outgoing connection; `fs` rules answer opens as missing,
//! local, or refused for writing while other files open on the target, and apply to `openat`,
//! stat/access, unlink/mkdirat/rename and directory listings, the coordinator's own answers kept in
//! request order; the env note written before `ReadyForLogs` arrives after it. Needs root
//! (namespaces, iptables).

#[path = "support/netns.rs"]
mod netns;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use mirrord_operator::coordinator::agents::identity::StaticReviewer;
use mirrord_operator::coordinator::agents::{self, AgentRegistry, HubConfig};
use mirrord_operator::coordinator::api::router;
use mirrord_operator::coordinator::api::state::{
    AllowAll, ApiState, Authorizer, AuthorizerError, Decision, Identity, License,
    NamespaceInventory, OperatorInfo, ResourceAttributes, StaticInventory,
};
use mirrord_operator::coordinator::credentials::UserCa;
use mirrord_operator::coordinator::policy::crd::{
    BlockedFeature, EnvPolicy, FsPolicy, LabelSelector, MirrordPolicySpec, NetworkPolicy,
    OutgoingPolicy, OutgoingRule,
};
use mirrord_operator::coordinator::policy::eval::{NamedPolicy, PolicyKind, PolicyRef};
use mirrord_operator::coordinator::policy::gate::{PolicyGate, PolicySource};
use mirrord_operator::coordinator::session::connector::{SUBPROTOCOL, SessionService};
use mirrord_operator::coordinator::session::{SessionTable, TableConfig};
use mirrord_operator::protocol::codec::{Decoded, decode_from_slice, encode_to_vec};
use mirrord_operator::protocol::*;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower::ServiceExt;

const APP: u16 = 8080;
const HUB_PORT: u16 = 47011;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Policies the test changes while sessions run, as the watch-fed cache would.
#[derive(Default)]
struct Live(Mutex<Vec<NamedPolicy>>);

impl PolicySource for Live {
    fn policies(&self) -> Vec<NamedPolicy> {
        self.0.lock().unwrap().clone()
    }
}

/// alice may `get` Secret `public` but not `db-creds`.
struct SecretsFor;

impl Authorizer for SecretsFor {
    fn authorize<'a>(
        &'a self,
        identity: &'a Identity,
        attributes: &'a ResourceAttributes,
    ) -> futures::future::BoxFuture<'a, Result<Decision, AuthorizerError>> {
        let allowed = attributes.resource == "secrets"
            && attributes.verb == "get"
            && identity.user == "alice"
            && attributes.name.as_deref() == Some("public");
        Box::pin(async move {
            Ok(if allowed {
                Decision::Allow
            } else {
                Decision::Deny {
                    reason: "no".into(),
                }
            })
        })
    }
}

fn policy(name: &str, spec: MirrordPolicySpec) -> NamedPolicy {
    NamedPolicy {
        reference: PolicyRef {
            kind: PolicyKind::MirrordPolicy,
            namespace: Some("default".into()),
            name: name.into(),
        },
        spec,
    }
}

async fn identity(mut request: axum::extract::Request, next: Next) -> Response {
    let user = request
        .headers()
        .get("x-test-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned();
    request.extensions_mut().insert(Identity {
        user,
        groups: vec!["system:authenticated".into()],
        extra: Default::default(),
    });
    next.run(request).await
}

fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(value).unwrap())
}

fn inventory() -> StaticInventory {
    let container = |name: &str| serde_json::json!({"name": name, "image": "x"});
    let namespace = NamespaceInventory {
        pods: vec![object(serde_json::json!({
            "metadata": {"name": "web-a", "namespace": "default", "uid": "uid-web-a",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "rs-1"}]},
            "spec": {"containers": [
                {"name": "web", "image": "x", "envFrom": [
                    {"secretRef": {"name": "db-creds"}, "prefix": "API_"},
                    {"secretRef": {"name": "public"}, "prefix": "PUB_"}
                ], "env": [
                    {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "db-creds", "key": "api"}}},
                    {"name": "PUBLIC_ID", "valueFrom": {"secretKeyRef": {"name": "public", "key": "id"}}}
                ]},
                container("mirrord-agent")
            ]},
            "status": {"phase": "Running"}
        }))],
        deployments: vec![object(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "deploy-1",
                "labels": {"team": "payments"}},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [container("web")]}}}
        }))],
        replica_sets: vec![object(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "default", "uid": "rs-1",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "deploy-1"}]},
            "spec": {"selector": {"matchLabels": {"app": "web"}}}
        }))],
        ..Default::default()
    };
    StaticInventory {
        namespaces: [("default".to_owned(), namespace)].into(),
    }
}

fn api(registry: Arc<AgentRegistry>, table: Arc<SessionTable>) -> axum::Router {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/coordinator");
    let ca = UserCa::from_pem(
        &std::fs::read_to_string(data.join("user-ca.crt")).unwrap(),
        &std::fs::read_to_string(data.join("user-ca.key")).unwrap(),
    )
    .unwrap();
    let inventory = Arc::new(inventory());
    let service = Arc::new(SessionService {
        registry,
        table,
        inventory: inventory.clone(),
        queues: None,
    });
    let info = OperatorInfo::new(
        "mirrord",
        License {
            name: "test".into(),
            organization: "test".into(),
            expire_at: time::Date::from_calendar_date(2099, time::Month::December, 31).unwrap(),
        },
    );
    let state = ApiState::new(info, ca, Arc::new(AllowAll), inventory)
        .with_sessions(Arc::new(service.clone()))
        .with_connector(Arc::new(service));
    router(state).layer(axum::middleware::from_fn(identity))
}

/// A user certificate for the CSR the real CLI sent (capture), as `x-client-der`.
async fn client_der(api: &axum::Router) -> String {
    let capture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/coordinator/cli-capture-3.250.jsonl"),
    )
    .unwrap();
    let csr: serde_json::Value = capture
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["method"] == "POST")
        .unwrap();
    let request =
        http::Request::post("/apis/operator.metalbear.co/v1/mirrordclusteroperatorusercredentials")
            .header("content-type", "application/json")
            .header("x-test-user", "alice")
            .body(axum::body::Body::from(
                csr["body"].as_str().unwrap().to_owned(),
            ))
            .unwrap();
    let answer = api.clone().oneshot(request).await.unwrap();
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let pem = answer["status"]["certificate"].as_str().unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(der)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn connect_request(
    addr: SocketAddr,
    der: &str,
    id: u64,
    profile: Option<&str>,
) -> http::Request<()> {
    let profile = profile.map(|p| format!("&profile={p}")).unwrap_or_default();
    let url = format!(
        "ws://{addr}/apis/operator.metalbear.co/v1/proxy/namespaces/default/targets/deployment.web?connect=true&on_concurrent_steal=abort{profile}&key=k"
    );
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("sec-websocket-protocol", SUBPROTOCOL.parse().unwrap());
    headers.insert("x-session-id", id.to_string().parse().unwrap());
    headers.insert("x-client-der", der.parse().unwrap());
    headers.insert("x-mirrord-cli-version", "3.250.0".parse().unwrap());
    headers.insert("x-test-user", "alice".parse().unwrap());
    request
}

async fn send(ws: &mut Ws, msg: ClientMessage) {
    ws.send(Message::binary(encode_to_vec(&msg).unwrap()))
        .await
        .unwrap();
}

/// The next message that is not a log.
async fn recv(ws: &mut Ws) -> DaemonMessage {
    loop {
        let frame = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("valid frame");
        let Message::Binary(bytes) = frame else {
            panic!("Binary frames only, got {frame:?}")
        };
        match decode_from_slice::<DaemonMessage>(&bytes).unwrap() {
            Decoded::Message(DaemonMessage::LogMessage(_), _) => continue,
            Decoded::Message(msg, _) => return msg,
            Decoded::Incomplete { .. } => panic!("truncated message"),
        }
    }
}

/// The next log line containing `text` (other messages and logs are skipped).
async fn recv_log(ws: &mut Ws, text: &str) -> LogMessage {
    loop {
        let frame = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("a log line in time")
            .expect("stream open")
            .expect("valid frame");
        let Message::Binary(bytes) = frame else {
            continue;
        };
        if let Decoded::Message(DaemonMessage::LogMessage(log), _) =
            decode_from_slice::<DaemonMessage>(&bytes).unwrap()
            && log.message.contains(text)
        {
            return log;
        }
    }
}

async fn subscribe(ws: &mut Ws, steal: StealType) -> Result<Port, ResponseError> {
    send(
        ws,
        ClientMessage::TcpSteal(LayerTcpSteal::PortSubscribe(steal)),
    )
    .await;
    match recv(ws).await {
        DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(result)) => result,
        other => panic!("expected SubscribeResult, got {other:?}"),
    }
}

async fn unsubscribe(ws: &mut Ws) {
    send(
        ws,
        ClientMessage::TcpSteal(LayerTcpSteal::PortUnsubscribe(APP)),
    )
    .await;
    send(ws, ClientMessage::Ping).await;
    assert_eq!(recv(ws).await, DaemonMessage::Pong);
}

#[test]
fn policies_refuse_at_connect_and_per_subscription() {
    let ns = netns::NetNs::with_caller("cp");
    let _site = ns.serve_hello(APP, "app of web-a", TIMEOUT);
    let root = tempfile::tempdir().unwrap();
    let mut token = tempfile::NamedTempFile::new().unwrap();
    write!(token, "token-web-a").unwrap();
    let hub = ns.run_in(|| {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, HUB_PORT)).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let reviewer =
            StaticReviewer::default().with_pod("token-web-a", "default", "web-a", "uid-web-a");
        let registry = AgentRegistry::new(Arc::new(reviewer), HubConfig::default());
        let table = SessionTable::new(TableConfig::default());
        let live = Arc::new(Live::default());
        table.set_policy_gate(Arc::new(
            PolicyGate::new(live.clone()).with_secret_authorizer(Arc::new(SecretsFor)),
        ));
        let api = api(registry.clone(), table.clone());
        let der = client_der(&api).await;
        let app = agents::router(registry.clone()).merge(api.clone());
        let cli_listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = cli_listener.local_addr().unwrap();
        for listener in [
            cli_listener,
            tokio::net::TcpListener::from_std(hub).unwrap(),
        ] {
            tokio::spawn(axum::serve(listener, app.clone()).into_future());
        }

        let mut cmd = ns.command(env!("CARGO_BIN_EXE_mirrord-operator"));
        cmd.arg("agent")
            .env(
                "MIRRORD_AGENT_COORDINATOR_URL",
                format!("ws://127.0.0.1:{HUB_PORT}"),
            )
            .env("MIRRORD_AGENT_TOKEN_FILE", token.path())
            .env("MIRRORD_AGENT_POD_NAME", "web-a")
            .env("MIRRORD_AGENT_POD_NAMESPACE", "default")
            .env("MIRRORD_AGENT_POD_UID", "uid-web-a")
            .env("MIRRORD_AGENT_POD_IP", netns::POD_ADDR.to_string())
            .env("MIRRORD_AGENT_TARGET_CONTAINER", "web")
            .env("MIRRORD_AGENT_TARGET_PORTS", APP.to_string())
            .env("MIRRORD_AGENT_REDIRECT", "iptables")
            .env("MIRRORD_AGENT_CHAIN_PREFIX", "CPTEST")
            .env("MIRRORD_AGENT_TARGET_ROOT", root.path())
            .env("MIRRORD_AGENT_FS_MODE", "volumes")
            .env("MIRRORD_AGENT_ENV_MODE", "spec")
            .env("MIRRORD_AGENT_LOG_LEVEL", "warn")
            .env("MIRRORD_TARGET_ENV_GREETING", "hello")
            .env("MIRRORD_TARGET_ENV_DB_PASSWORD", "hunter2")
            .env("MIRRORD_TARGET_ENV_API_KEY", "k-123")
            .env("MIRRORD_TARGET_ENV_PUBLIC_ID", "id-9")
            .env("MIRRORD_TARGET_ENV_API_TOKEN", "t-1")
            .env("MIRRORD_TARGET_ENV_PUB_NAME", "shop")
            .stdout(std::process::Stdio::null());
        ns.spawn(cmd);
        let deadline = Instant::now() + TIMEOUT;
        while registry.agents().is_empty() {
            assert!(Instant::now() < deadline, "the agent never registered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // requireProfile, selected by the deployment's labels: no profile → 403 Status.
        live.0.lock().unwrap().push(policy(
            "profile-required",
            MirrordPolicySpec {
                require_profile: true,
                selector: Some(LabelSelector {
                    match_labels: [("team".to_owned(), "payments".to_owned())].into(),
                    ..LabelSelector::default()
                }),
                ..MirrordPolicySpec::default()
            },
        ));
        let refused = tokio_tungstenite::connect_async(connect_request(addr, &der, 1, None)).await;
        let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
            panic!("expected an HTTP refusal, got {refused:?}")
        };
        assert_eq!(response.status(), 403);
        let status: serde_json::Value =
            serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "Forbidden");
        let message = status["message"].as_str().unwrap();
        assert!(
            message.contains("default/profile-required") && message.contains("requireProfile"),
            "{message}"
        );

        // With a profile the session runs; no steal rule yet: an unfiltered steal is accepted.
        let (mut ws, _) =
            tokio_tungstenite::connect_async(connect_request(addr, &der, 2, Some("read-only")))
                .await
                .unwrap();
        let v = semver::Version::new(1, 29, 0);
        send(&mut ws, ClientMessage::SwitchProtocolVersion(v.clone())).await;
        assert_eq!(
            recv(&mut ws).await,
            DaemonMessage::SwitchProtocolVersionResponse(v)
        );
        assert_eq!(subscribe(&mut ws, StealType::All(APP)).await, Ok(APP));
        unsubscribe(&mut ws).await;

        // Added while the session runs: applies to its next subscription.
        live.0.lock().unwrap().push(policy(
            "filters-only",
            MirrordPolicySpec {
                block: vec![BlockedFeature::StealWithoutFilter],
                target_path: Some("deploy/web*".into()),
                ..MirrordPolicySpec::default()
            },
        ));
        let refused = subscribe(&mut ws, StealType::All(APP)).await;
        let Err(ResponseError::ForbiddenWithReason {
            blocked_action,
            policy_name,
            reason,
        }) = refused
        else {
            panic!("expected ForbiddenWithReason, got {refused:?}")
        };
        assert_eq!(blocked_action, BlockedAction::Steal(StealType::All(APP)));
        assert_eq!(policy_name.as_deref(), Some("filters-only"));
        assert!(reason.contains("steal-without-filter"), "{reason}");
        let filtered = StealType::FilteredHttpEx(APP, HttpFilter::Header(Filter("x-me: 1".into())));
        assert_eq!(subscribe(&mut ws, filtered).await, Ok(APP));
        unsubscribe(&mut ws).await;

        // Deleted: stops applying.
        live.0
            .lock()
            .unwrap()
            .retain(|p| p.reference.name != "filters-only");
        assert_eq!(subscribe(&mut ws, StealType::All(APP)).await, Ok(APP));
        unsubscribe(&mut ws).await;

        // env.exclude: the variable never reaches the session.
        let env_request = || {
            ClientMessage::GetEnvVarsRequest(GetEnvVarsRequest {
                env_vars_filter: Default::default(),
                env_vars_select: ["*".to_owned()].into(),
            })
        };
        send(&mut ws, env_request()).await;
        let DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(env))) = recv(&mut ws).await else {
            panic!("an env answer")
        };
        assert_eq!(env.get("DB_PASSWORD").map(String::as_str), Some("hunter2"));
        // Secret-backed: alice may get Secret `public`, not `db-creds`.
        assert_eq!(env.get("PUBLIC_ID").map(String::as_str), Some("id-9"));
        assert!(!env.contains_key("API_KEY"), "{env:?}");
        // envFrom: `API_*` may come from `db-creds`, `PUB_*` from `public`.
        assert!(!env.contains_key("API_TOKEN"), "{env:?}");
        assert_eq!(env.get("PUB_NAME").map(String::as_str), Some("shop"));
        // The CLI's first env request comes before `ReadyForLogs`: the note why waits for it.
        send(&mut ws, ClientMessage::ReadyForLogs).await;
        let note = recv_log(&mut ws, "environment variables left out").await;
        assert!(
            note.message.contains("API_KEY")
                && note.message.contains("API_TOKEN")
                && note.message.contains("envFrom, prefix API_")
                && note.message.contains("db-creds"),
            "{note:?}"
        );
        assert_eq!(note.level, LogLevel::Warn);
        live.0.lock().unwrap().push(policy(
            "no-passwords",
            MirrordPolicySpec {
                env: Some(EnvPolicy {
                    exclude: vec!["*_PASSWORD".into()],
                }),
                ..MirrordPolicySpec::default()
            },
        ));
        send(&mut ws, env_request()).await;
        let DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(env))) = recv(&mut ws).await else {
            panic!("an env answer")
        };
        assert!(!env.contains_key("DB_PASSWORD"), "{env:?}");
        assert_eq!(env.get("GREETING").map(String::as_str), Some("hello"));

        // A hostname rule: the session resolves `localhost` through the agent, then connects.
        live.0.lock().unwrap().push(policy(
            "no-localhost",
            MirrordPolicySpec {
                network: Some(NetworkPolicy {
                    outgoing: Some(OutgoingPolicy {
                        block: vec![OutgoingRule {
                            hostname: Some("^localhost$".into()),
                            ..OutgoingRule::default()
                        }],
                        ..OutgoingPolicy::default()
                    }),
                    ..NetworkPolicy::default()
                }),
                ..MirrordPolicySpec::default()
            },
        ));
        send(
            &mut ws,
            ClientMessage::GetAddrInfoRequest(GetAddrInfoRequest {
                node: "localhost".into(),
            }),
        )
        .await;
        let dns = recv(&mut ws).await;
        assert!(
            matches!(
                dns,
                DaemonMessage::GetAddrInfoResponse(GetAddrInfoResponse(Ok(_)))
            ),
            "{dns:?}"
        );
        let target = SocketAddress::Ip(SocketAddr::from((Ipv4Addr::LOCALHOST, 47012)));
        send(
            &mut ws,
            ClientMessage::TcpOutgoing(LayerTcpOutgoing::Connect(LayerConnect {
                remote_address: target.clone(),
            })),
        )
        .await;
        let refused = recv(&mut ws).await;
        let DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Connect(Err(
            ResponseError::ForbiddenWithReason {
                blocked_action,
                policy_name,
                reason,
            },
        ))) = refused
        else {
            panic!("expected a refused connect, got {refused:?}")
        };
        assert_eq!(blocked_action, BlockedAction::OutgoingTcp(target));
        assert_eq!(policy_name.as_deref(), Some("no-localhost"));
        assert!(reason.contains("network.outgoing.block[0]"), "{reason}");

        // fs rules: missing, local, read-only; other paths open on the target.
        std::fs::create_dir_all(root.path().join("etc/app")).unwrap();
        std::fs::write(root.path().join("etc/app/config.yaml"), "pod: web-a\n").unwrap();
        std::fs::write(root.path().join("etc/app/tls.key"), "secret\n").unwrap();
        live.0.lock().unwrap().push(policy(
            "files",
            MirrordPolicySpec {
                fs: Some(FsPolicy {
                    read_only: vec!["^/etc/app/".into()],
                    local: vec!["\\.env$".into()],
                    not_found: vec!["^/var/run/secrets/".into(), "\\.key$".into()],
                }),
                ..MirrordPolicySpec::default()
            },
        ));
        let open = |path: &str, write: bool| {
            ClientMessage::FileRequest(FileRequest::Open(OpenFileRequest {
                path: path.into(),
                open_options: OpenOptionsInternal {
                    read: true,
                    write,
                    ..Default::default()
                },
            }))
        };
        send(&mut ws, open("/var/run/secrets/token", false)).await;
        let answer = recv(&mut ws).await;
        assert!(
            matches!(
                &answer,
                DaemonMessage::File(FileResponse::Open(Err(ResponseError::RemoteIO(e))))
                    if e.kind == ErrorKindInternal::NotFound
            ),
            "{answer:?}"
        );
        send(&mut ws, open("/app/.env", false)).await;
        assert_eq!(
            recv(&mut ws).await,
            DaemonMessage::File(FileResponse::Open(Err(ResponseError::OpenLocal)))
        );
        send(&mut ws, open("/etc/app/config.yaml", true)).await;
        let answer = recv(&mut ws).await;
        assert!(
            matches!(
                &answer,
                DaemonMessage::File(FileResponse::Open(Err(ResponseError::RemoteIO(e))))
                    if e.kind == ErrorKindInternal::PermissionDenied
            ),
            "{answer:?}"
        );
        send(&mut ws, open("/etc/app/config.yaml", false)).await;
        let answer = recv(&mut ws).await;
        assert!(
            matches!(answer, DaemonMessage::File(FileResponse::Open(Ok(_)))),
            "{answer:?}"
        );
        fs_rules_beyond_open(&mut ws, root.path()).await;

        // The sessions API shows the policies in force for the session.
        let request =
            http::Request::get("/apis/operator.metalbear.co/v1/mirrordoperators/operator")
                .header("x-test-user", "alice")
                .body(axum::body::Body::empty())
                .unwrap();
        let answer = api.clone().oneshot(request).await.unwrap();
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        let operator: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let sessions = operator["status"]["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 1, "{operator}");
        assert_eq!(
            sessions[0]["policies"],
            serde_json::json!([
                "MirrordPolicy default/profile-required",
                "MirrordPolicy default/no-passwords",
                "MirrordPolicy default/no-localhost",
                "MirrordPolicy default/files"
            ])
        );
        ws.close(None).await.unwrap();
    });
}

fn io_kind(answer: &DaemonMessage) -> Option<(Option<i32>, ErrorKindInternal)> {
    let DaemonMessage::File(response) = answer else {
        return None;
    };
    let error = match response {
        FileResponse::Open(Err(e)) => e,
        FileResponse::Xstat(Err(e)) => e,
        FileResponse::Access(Err(e)) => e,
        FileResponse::Unlink(Err(e)) => e,
        FileResponse::MakeDir(Err(e)) => e,
        FileResponse::Rename(Err(e)) => e,
        _ => return None,
    };
    match error {
        ResponseError::RemoteIO(io) => Some((io.raw_os_error, io.kind.clone())),
        _ => None,
    }
}

const ENOENT: (Option<i32>, ErrorKindInternal) = (Some(2), ErrorKindInternal::NotFound);
/// The coordinator's refusal (the agent itself answers writes with EROFS, 30).
const EACCES: (Option<i32>, ErrorKindInternal) = (Some(13), ErrorKindInternal::PermissionDenied);

/// `fs` rules on requests other than `Open` by absolute path, against the real agent: `openat`
/// through a directory fd, `stat`, `access`, unlink/mkdir/rename, directory listings without the
/// `notFound` entries, and the coordinator's own answer kept behind the agent's earlier one.
async fn fs_rules_beyond_open(ws: &mut Ws, root: &Path) {
    let file = |r| ClientMessage::FileRequest(r);
    let read = OpenOptionsInternal {
        read: true,
        ..Default::default()
    };
    send(
        ws,
        file(FileRequest::Open(OpenFileRequest {
            path: "/etc/app".into(),
            open_options: read,
        })),
    )
    .await;
    let DaemonMessage::File(FileResponse::Open(Ok(OpenFileResponse { fd: dir }))) = recv(ws).await
    else {
        panic!("/etc/app opens on the target")
    };
    let relative = |path: &str, write: bool| {
        file(FileRequest::OpenRelative(OpenRelativeFileRequest {
            relative_fd: dir,
            path: path.into(),
            open_options: OpenOptionsInternal {
                read: true,
                write,
                ..Default::default()
            },
        }))
    };
    send(ws, relative("config.yaml", true)).await;
    assert_eq!(io_kind(&recv(ws).await), Some(EACCES));
    send(ws, relative("tls.key", false)).await;
    assert_eq!(io_kind(&recv(ws).await), Some(ENOENT));
    send(ws, relative("../app/./config.yaml", false)).await;
    let answer = recv(ws).await;
    assert!(
        matches!(answer, DaemonMessage::File(FileResponse::Open(Ok(_)))),
        "{answer:?}"
    );

    // stat and access: a notFound path is not there, others are.
    let stat = |path: &str| {
        file(FileRequest::Xstat(XstatRequest {
            path: Some(path.into()),
            fd: None,
            follow_symlink: true,
        }))
    };
    send(ws, stat("/etc/app/tls.key")).await;
    assert_eq!(io_kind(&recv(ws).await), Some(ENOENT));
    send(
        ws,
        file(FileRequest::Xstat(XstatRequest {
            path: Some("tls.key".into()),
            fd: Some(dir),
            follow_symlink: true,
        })),
    )
    .await;
    assert_eq!(io_kind(&recv(ws).await), Some(ENOENT));
    send(
        ws,
        file(FileRequest::Access(AccessFileRequest {
            pathname: "/etc/app/tls.key".into(),
            mode: 0,
        })),
    )
    .await;
    assert_eq!(io_kind(&recv(ws).await), Some(ENOENT));
    send(ws, stat("/etc/app/config.yaml")).await;
    let answer = recv(ws).await;
    assert!(
        matches!(answer, DaemonMessage::File(FileResponse::Xstat(Ok(_)))),
        "{answer:?}"
    );

    // Changes to read-only paths: refused by the coordinator (EACCES, not the agent's EROFS).
    send(
        ws,
        file(FileRequest::Unlink(UnlinkRequest {
            pathname: "/etc/app/config.yaml".into(),
        })),
    )
    .await;
    assert_eq!(io_kind(&recv(ws).await), Some(EACCES));
    send(
        ws,
        file(FileRequest::MakeDirAt(MakeDirAtRequest {
            dirfd: dir,
            pathname: "new".into(),
            mode: 0o755,
        })),
    )
    .await;
    assert_eq!(io_kind(&recv(ws).await), Some(EACCES));
    send(
        ws,
        file(FileRequest::Rename(RenameRequest {
            old_path: "/tmp/x".into(),
            new_path: "/etc/app/x".into(),
        })),
    )
    .await;
    assert_eq!(io_kind(&recv(ws).await), Some(EACCES));
    assert!(root.join("etc/app/config.yaml").exists());

    // Listings leave out notFound entries, through both directory reads.
    send(
        ws,
        file(FileRequest::FdOpenDir(FdOpenDirRequest { remote_fd: dir })),
    )
    .await;
    let DaemonMessage::File(FileResponse::OpenDir(Ok(OpenDirResponse { fd: stream }))) =
        recv(ws).await
    else {
        panic!("the directory stream opens")
    };
    send(
        ws,
        file(FileRequest::ReadDirBatch(ReadDirBatchRequest {
            remote_fd: stream,
            amount: 64,
        })),
    )
    .await;
    let DaemonMessage::File(FileResponse::ReadDirBatch(Ok(batch))) = recv(ws).await else {
        panic!("a batch")
    };
    let names: Vec<&str> = batch.dir_entries.iter().map(|e| e.name.as_str()).collect();
    assert!(names.contains(&"config.yaml"), "{names:?}");
    assert!(!names.contains(&"tls.key"), "{names:?}");
    send(
        ws,
        file(FileRequest::GetDEnts64(GetDEnts64Request {
            remote_fd: dir,
            buffer_size: 4096,
        })),
    )
    .await;
    let DaemonMessage::File(FileResponse::GetDEnts64(Ok(dents))) = recv(ws).await else {
        panic!("dents")
    };
    let names: Vec<&str> = dents.entries.iter().map(|e| e.name.as_str()).collect();
    assert!(names.contains(&"config.yaml"), "{names:?}");
    assert!(!names.contains(&"tls.key"), "{names:?}");
    let sizes: u64 = dents
        .entries
        .iter()
        .map(|e| (20 + e.name.len() as u64).div_ceil(8) * 8)
        .sum();
    assert_eq!(dents.result_size, sizes);

    // Answers in request order: the agent's answers to the earlier requests, then the
    // coordinator's own refusal of the last one (written at once, the relay decides on it before
    // the agent answered them).
    const AHEAD: usize = 20;
    for _ in 0..AHEAD {
        let bytes = encode_to_vec(&stat("/etc/app/config.yaml")).unwrap();
        ws.feed(Message::binary(bytes)).await.unwrap();
    }
    send(ws, stat("/etc/app/tls.key")).await;
    for _ in 0..AHEAD {
        let answer = recv(ws).await;
        assert!(
            matches!(answer, DaemonMessage::File(FileResponse::Xstat(Ok(_)))),
            "{answer:?}"
        );
    }
    assert_eq!(io_kind(&recv(ws).await), Some(ENOENT));
}
