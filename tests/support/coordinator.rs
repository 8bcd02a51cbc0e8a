//! The coordinator as session tests and benches run it in-process: the real API router (user
//! credentials, the session connector and directory) and agent hub, served on loopback and inside
//! pod network namespaces; a target inventory of Deployment `web` → ReplicaSet `web-1` → pods with
//! the injected agent; the real `mirrord-operator agent` dialling the hub; and a CLI client on the
//! probe's client core (`admin::probe::ProbeConnection`), one protocol message per Binary frame.
//!
//! Include it next to `netns.rs` (it uses `crate::netns`):
//! `#[path = "support/netns.rs"] mod netns;` and `#[path = "support/coordinator.rs"] mod coordinator;`.
#![allow(dead_code)] // Each test binary uses a different subset of the harness.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::ListenerExt;
use futures::SinkExt;
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Pod;
use mirrord_operator::admin::probe::{self, ProbeConnection, ProbeError};
use mirrord_operator::coordinator::agents::identity::StaticReviewer;
use mirrord_operator::coordinator::agents::{self, AgentRegistry, HubConfig};
use mirrord_operator::coordinator::api::router;
use mirrord_operator::coordinator::api::state::{
    AllowAll, ApiState, Identity, License, NamespaceInventory, OperatorInfo, StaticInventory,
};
use mirrord_operator::coordinator::credentials::UserCa;
use mirrord_operator::coordinator::queues::supervisor::SplitterIndex;
use mirrord_operator::coordinator::session::connector::{SUBPROTOCOL, SessionService};
use mirrord_operator::coordinator::session::{SessionTable, TableConfig};
use mirrord_operator::protocol::*;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
pub use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::{self, Message};
use tower::ServiceExt;

use crate::netns::{self, NetNs};

/// The app port of every pod (the agent redirects it).
pub const APP: u16 = 8080;
/// How long one answer may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Stands in for the front-proxy authentication (server's part): `x-test-user` becomes the
/// request's identity.
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

pub fn object<T: serde::de::DeserializeOwned>(value: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(value).unwrap())
}

/// A container spec without settings.
pub fn container(name: &str) -> Value {
    json!({"name": name, "image": "x"})
}

/// Running pod `name` (uid `uid-<name>`) of ReplicaSet `web-1`, with `containers`.
pub fn web_pod(name: &str, containers: Value) -> Arc<Pod> {
    object(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "rs-1"}]},
        "spec": {"containers": containers},
        "status": {"phase": "Running"}
    }))
}

/// A pod of `web` with the agent sidecar injected next to container `web`.
pub fn injected_pod(name: &str) -> Arc<Pod> {
    web_pod(name, json!([container("web"), container("mirrord-agent")]))
}

/// The pod template of a plain `web` Deployment.
pub fn web_template() -> Value {
    json!({"containers": [container("web")]})
}

/// Namespace `default`: Deployment `web` (`labels` when not null, pod template `template`) →
/// ReplicaSet `web-1` → `pods`.
pub fn web_inventory(pods: Vec<Arc<Pod>>, labels: Value, template: Value) -> StaticInventory {
    let mut metadata = json!({"name": "web", "namespace": "default", "uid": "deploy-1"});
    if !labels.is_null() {
        metadata["labels"] = labels;
    }
    let namespace = NamespaceInventory {
        pods,
        deployments: vec![object(json!({
            "metadata": metadata,
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"spec": template}}
        }))],
        replica_sets: vec![object(json!({
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

/// The in-process coordinator: agent hub, session table and the API router over them.
pub struct Coordinator {
    pub registry: Arc<AgentRegistry>,
    pub table: Arc<SessionTable>,
    pub service: Arc<SessionService>,
    /// The API router (credentials, operator status, sessions, connect), without the hub.
    pub api: Router,
}

impl Coordinator {
    /// Agents of `pods` (namespace `default`, token `token-<pod>`, uid `uid-<pod>`) may register;
    /// targets resolve through `inventory`; `queues` splits queues when given.
    pub fn new(
        pods: &[&str],
        inventory: StaticInventory,
        queues: Option<SplitterIndex>,
    ) -> Coordinator {
        let reviewer = pods.iter().fold(StaticReviewer::default(), |r, pod| {
            r.with_pod(
                &format!("token-{pod}"),
                "default",
                pod,
                &format!("uid-{pod}"),
            )
        });
        let registry = AgentRegistry::new(Arc::new(reviewer), HubConfig::default());
        let table = SessionTable::new(TableConfig::default());
        let inventory = Arc::new(inventory);
        let service = Arc::new(SessionService {
            registry: registry.clone(),
            table: table.clone(),
            inventory: inventory.clone(),
            queues,
        });
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/coordinator");
        let ca = UserCa::from_pem(
            &std::fs::read_to_string(data.join("user-ca.crt")).unwrap(),
            &std::fs::read_to_string(data.join("user-ca.key")).unwrap(),
        )
        .unwrap();
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
            .with_connector(Arc::new(service.clone()));
        let api = router(state).layer(axum::middleware::from_fn(identity));
        Coordinator {
            registry,
            table,
            service,
            api,
        }
    }

    /// Serves hub and API on a new loopback port and on `hubs` (listeners inside pod namespaces,
    /// where the agents dial 127.0.0.1); returns the loopback address. TCP_NODELAY on every
    /// accepted connection, as the coordinator's own listener (`server`) sets it.
    pub async fn serve(&self, hubs: Vec<std::net::TcpListener>) -> SocketAddr {
        let app = agents::router(self.registry.clone()).merge(self.api.clone());
        let cli = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let addr = cli.local_addr().unwrap();
        let hubs = hubs
            .into_iter()
            .map(|l| tokio::net::TcpListener::from_std(l).unwrap());
        for listener in std::iter::once(cli).chain(hubs) {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            tokio::spawn(axum::serve(listener, app.clone()).into_future());
        }
        addr
    }

    /// A request to the API router as `user` (a body of `{}` unless it is a `GET`); the answer's
    /// status and JSON body (`null` when it has none).
    pub async fn call(&self, request: http::request::Builder, user: &str) -> (u16, Value) {
        let body = if request.method_ref() == Some(&http::Method::GET) {
            axum::body::Body::empty()
        } else {
            axum::body::Body::from("{}")
        };
        let request = request
            .header("x-test-user", user)
            .header("content-type", "application/json")
            .body(body)
            .unwrap();
        let answer = self.api.clone().oneshot(request).await.unwrap();
        let status = answer.status().as_u16();
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// A user certificate from the credentials API for the CSR the real CLI sent (capture), as
    /// `x-client-der` (the probe's reading of the answer).
    pub async fn client_der(&self, user: &str) -> String {
        let capture = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/coordinator/cli-capture-3.250.jsonl"),
        )
        .unwrap();
        let csr: Value = capture
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|l| l["method"] == "POST")
            .unwrap();
        let request = http::Request::post(
            "/apis/operator.metalbear.co/v1/mirrordclusteroperatorusercredentials",
        )
        .header("content-type", "application/json")
        .header("x-test-user", user)
        .body(axum::body::Body::from(
            csr["body"].as_str().unwrap().to_owned(),
        ))
        .unwrap();
        let answer = self.api.clone().oneshot(request).await.unwrap();
        assert!(answer.status().is_success(), "{:?}", answer.status());
        let body = answer.into_body().collect().await.unwrap().to_bytes();
        probe::client_der(&serde_json::from_slice(&body).unwrap()).unwrap()
    }

    /// Waits until exactly `n` agents are registered.
    pub async fn wait_for_agents(&self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.registry.agents().len() != n {
            assert!(
                Instant::now() < deadline,
                "{} agents, expected {n}",
                self.registry.agents().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A hub listener on 127.0.0.1:`port` inside `ns` (the agents there dial it).
pub fn hub_listener(ns: &NetNs, port: u16) -> std::net::TcpListener {
    ns.run_in(|| {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    })
}

/// The file of pod `pod`'s service-account token (`token-<pod>`).
pub fn token_file(pod: &str) -> tempfile::NamedTempFile {
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), format!("token-{pod}")).unwrap();
    token
}

/// The real agent of pod `pod` in `ns`: dials the hub on 127.0.0.1:`hub_port` with `token`,
/// redirects [`APP`] with iptables under chain prefix `prefix`, takes env from the spec. Callers
/// add the file-system settings and the target's env (later `env` calls override these).
pub fn agent_command(ns: &NetNs, hub_port: u16, pod: &str, token: &Path, prefix: &str) -> Command {
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_mirrord-operator"));
    cmd.arg("agent")
        .env(
            "MIRRORD_AGENT_COORDINATOR_URL",
            format!("ws://127.0.0.1:{hub_port}"),
        )
        .env("MIRRORD_AGENT_TOKEN_FILE", token)
        .env("MIRRORD_AGENT_POD_NAME", pod)
        .env("MIRRORD_AGENT_POD_NAMESPACE", "default")
        .env("MIRRORD_AGENT_POD_UID", format!("uid-{pod}"))
        .env("MIRRORD_AGENT_POD_IP", netns::POD_ADDR.to_string())
        .env("MIRRORD_AGENT_TARGET_CONTAINER", "web")
        .env("MIRRORD_AGENT_TARGET_PORTS", APP.to_string())
        .env("MIRRORD_AGENT_REDIRECT", "iptables")
        .env("MIRRORD_AGENT_CHAIN_PREFIX", prefix)
        .env("MIRRORD_AGENT_ENV_MODE", "spec")
        .env("MIRRORD_AGENT_LOG_LEVEL", "warn")
        .stdout(Stdio::null());
    cmd
}

/// A runtime for one test: two worker threads, I/O and time.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The CLI's upgrade request (operator-api.md §5.4) for `target` in namespace `default` with
/// `query`, as `user` (`x-test-user`, `x-client-name`) with session id `id`.
pub fn upgrade_request(
    addr: SocketAddr,
    target: &str,
    query: &str,
    der: &str,
    id: u64,
    user: &str,
) -> Request {
    let url = format!(
        "ws://{addr}/apis/operator.metalbear.co/v1/proxy/namespaces/default/targets/{target}?{query}"
    );
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("sec-websocket-protocol", SUBPROTOCOL.parse().unwrap());
    headers.insert("x-session-id", id.to_string().parse().unwrap());
    headers.insert("x-client-der", der.parse().unwrap());
    headers.insert("x-client-name", user.parse().unwrap());
    headers.insert("x-mirrord-cli-version", "3.250.0".parse().unwrap());
    headers.insert("x-test-user", user.parse().unwrap());
    request
}

/// A CLI connection: the probe's client core plus the assertions tests make on the way.
pub struct Cli {
    pub conn: ProbeConnection<MaybeTlsStream<TcpStream>>,
}

impl Cli {
    /// Upgrades (Nagle off, as the CLI's HTTP client); the subprotocol must be echoed.
    pub async fn open(request: Request) -> Result<Cli, tungstenite::Error> {
        let (ws, response) =
            tokio_tungstenite::connect_async_with_config(request, None, true).await?;
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            SUBPROTOCOL,
            "subprotocol echoed"
        );
        Ok(Cli {
            conn: ProbeConnection::new(ws),
        })
    }

    pub async fn connect(request: Request) -> Cli {
        Cli::open(request).await.expect("the upgrade")
    }

    pub async fn send(&mut self, msg: ClientMessage) {
        self.conn.send(&msg).await.unwrap();
    }

    /// The next message, logs included; one message per Binary frame.
    pub async fn recv(&mut self) -> DaemonMessage {
        self.conn
            .recv_within(TIMEOUT, "a message")
            .await
            .expect("a valid message in time")
            .expect("stream open")
    }

    /// The next message that is not a log.
    pub async fn recv_no_log(&mut self) -> DaemonMessage {
        loop {
            match self.recv().await {
                DaemonMessage::LogMessage(_) => continue,
                other => return other,
            }
        }
    }

    pub async fn ask(&mut self, msg: ClientMessage) -> DaemonMessage {
        self.send(msg).await;
        self.recv_no_log().await
    }

    /// Ping → Pong; the Close of an earlier stolen connection may come first.
    pub async fn ping(&mut self) {
        self.send(ClientMessage::Ping).await;
        loop {
            match self.recv_no_log().await {
                DaemonMessage::Pong => return,
                DaemonMessage::TcpSteal(DaemonTcp::Close(_)) => continue,
                other => panic!("expected Pong, got {other:?}"),
            }
        }
    }

    /// The target's whole environment (`GetEnvVarsRequest` for `*`).
    pub async fn env(&mut self) -> std::collections::HashMap<String, String> {
        let answer = self
            .ask(ClientMessage::GetEnvVarsRequest(GetEnvVarsRequest {
                env_vars_filter: Default::default(),
                env_vars_select: ["*".to_owned()].into(),
            }))
            .await;
        let DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(env))) = answer else {
            panic!("expected an env answer, got {answer:?}")
        };
        env
    }

    /// Version 1.29.0, answered as asked.
    pub async fn negotiate(&mut self) {
        let v = semver::Version::new(1, 29, 0);
        assert_eq!(
            self.ask(ClientMessage::SwitchProtocolVersion(v.clone()))
                .await,
            DaemonMessage::SwitchProtocolVersionResponse(v)
        );
    }

    /// Expects the relay to end the connection, after a `Close` whose reason contains `text`.
    pub async fn expect_close(&mut self, text: &str) {
        loop {
            match self.recv().await {
                DaemonMessage::Close(reason) => {
                    assert!(reason.contains(text), "{reason:?} lacks {text:?}");
                    break;
                }
                DaemonMessage::LogMessage(_) | DaemonMessage::TcpSteal(DaemonTcp::Close(_)) => {}
                other => panic!("expected Close, got {other:?}"),
            }
        }
        match self.conn.recv_within(TIMEOUT, "the end").await {
            Ok(None) | Err(ProbeError::WebSocket(_)) => {}
            Err(ProbeError::Timeout(_)) => panic!("not closed in time"),
            other => panic!("expected the end, got {other:?}"),
        }
    }

    /// The next log line containing `text` (other messages and logs are skipped).
    pub async fn recv_log(&mut self, text: &str) -> LogMessage {
        loop {
            if let DaemonMessage::LogMessage(log) = self.recv().await
                && log.message.contains(text)
            {
                return log;
            }
        }
    }

    /// Queues `msg` without flushing: several such messages reach the coordinator at once with
    /// the next [`Self::send`].
    pub async fn feed(&mut self, msg: ClientMessage) {
        let bytes = mirrord_operator::protocol::codec::encode_to_vec(&msg).unwrap();
        self.conn
            .websocket()
            .feed(Message::binary(bytes))
            .await
            .unwrap();
    }

    /// A raw frame (tests send malformed ones).
    pub async fn send_frame(&mut self, bytes: Vec<u8>) {
        self.conn
            .websocket()
            .send(Message::binary(bytes))
            .await
            .unwrap();
    }

    /// Closes the WebSocket (a Close frame).
    pub async fn close(mut self) {
        self.conn.websocket().close(None).await.unwrap();
    }
}
