//! Queue splitting through the coordinator's session relay, end to end on this machine: a real
//! RabbitMQ node (loopback), the splitter supervisor, the real `mirrord-operator agent` in a
//! network namespace playing a pod of Deployment `web` (its env names the output queue, as
//! admission leaves it), and a CLI client on the project's codec. A connect with `rmq_splits`
//! gets its temporary queue in `GetEnvVarsResponse`, receives only its messages, an overlapping
//! connect is refused 409 naming the first session, and killing the session returns the unread
//! messages to the output queue and deletes the temporary queue. Needs root and `rabbitmq-server`.

#[path = "support/netns.rs"]
mod netns;
#[path = "support/rabbitmq.rs"]
mod rabbitmq;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use futures::{FutureExt, SinkExt, StreamExt, future::BoxFuture};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::PodSpec;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use mirrord_operator::coordinator::agents::identity::StaticReviewer;
use mirrord_operator::coordinator::agents::{self, AgentRegistry, HubConfig};
use mirrord_operator::coordinator::api::router;
use mirrord_operator::coordinator::api::state::{
    AllowAll, ApiState, Connector, Identity, License, NamespaceInventory, OperatorInfo,
    SessionDirectory, StaticInventory,
};
use mirrord_operator::coordinator::credentials::UserCa;
use mirrord_operator::coordinator::queues::{
    crd::MirrordWorkloadQueueRegistry,
    metrics::NoMetrics,
    supervisor::{BrokerSecrets, Supervisor},
};
use mirrord_operator::coordinator::session::connector::{SUBPROTOCOL, SessionService};
use mirrord_operator::coordinator::session::{SessionTable, TableConfig};
use mirrord_operator::protocol::codec::{Decoded, decode_from_slice, encode_to_vec};
use mirrord_operator::protocol::*;
use netns::NetNs;
use rabbitmq::RabbitNode;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower::ServiceExt;

const HUB_PORT: u16 = 47011;
const TIMEOUT: Duration = Duration::from_secs(10);

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

/// Deployment `web` (env ORDERS=orders in its template) → ReplicaSet → Running pod `web-a`.
fn template() -> serde_json::Value {
    json!({"containers": [{"name": "web", "image": "x", "env": [{"name": "ORDERS", "value": "orders"}]}]})
}

fn inventory() -> StaticInventory {
    let namespace = NamespaceInventory {
        pods: vec![object(json!({
            "metadata": {"name": "web-a", "namespace": "default", "uid": "uid-web-a",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "rs-1"}]},
            "spec": {"containers": [{"name": "web", "image": "x"}, {"name": "mirrord-agent", "image": "x"}]},
            "status": {"phase": "Running"}
        }))],
        deployments: vec![object(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "deploy-1"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"spec": template()}}
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

struct Secrets(String);

impl BrokerSecrets for Secrets {
    fn uri<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<String, String>> {
        let uri = self.0.clone();
        async move { Ok(uri) }.boxed()
    }
}

async fn client_der(api: &Router) -> String {
    let capture = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
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

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(
    addr: SocketAddr,
    der: &str,
    id: u64,
    user: &str,
    rmq_splits: &str,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let url = format!(
        "ws://{addr}/apis/operator.metalbear.co/v1/proxy/namespaces/default/targets/deployment.web?connect=true&rmq_splits={}",
        percent(rmq_splits)
    );
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("sec-websocket-protocol", SUBPROTOCOL.parse().unwrap());
    headers.insert("x-session-id", id.to_string().parse().unwrap());
    headers.insert("x-client-der", der.parse().unwrap());
    headers.insert("x-client-name", user.parse().unwrap());
    headers.insert("x-mirrord-cli-version", "3.250.0".parse().unwrap());
    headers.insert("x-test-user", user.parse().unwrap());
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

async fn ask(ws: &mut Ws, msg: ClientMessage) -> DaemonMessage {
    ws.send(Message::binary(encode_to_vec(&msg).unwrap()))
        .await
        .unwrap();
    loop {
        let frame = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("an answer in time")
            .expect("open")
            .expect("frame");
        let Message::Binary(bytes) = frame else {
            continue;
        };
        let Decoded::Message(msg, _) = decode_from_slice::<DaemonMessage>(&bytes).unwrap() else {
            panic!("truncated message")
        };
        if !matches!(msg, DaemonMessage::LogMessage(_)) {
            return msg;
        }
    }
}

async fn publish(uri: &str, tenant: &str, count: usize) {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert("tenant".into(), AMQPValue::LongString(tenant.into()));
    for i in 0..count {
        channel
            .basic_publish(
                "".into(),
                "orders".into(),
                BasicPublishOptions::default(),
                format!("{tenant}-{i}").as_bytes(),
                BasicProperties::default().with_headers(headers.clone()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let _ = conn.close(200, "done".into()).await;
}

async fn wait_depth(node: &RabbitNode, queue: &str, want: Option<u64>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let depth = node.queue_depth(queue);
        if depth == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue}: depth {depth:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn rmq_split_through_the_relay_env_overlap_and_cleanup() {
    let node = RabbitNode::start();
    let uri = node.uri();
    let ns = NetNs::new("qs");
    let hub = ns.run_in(|| {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, HUB_PORT)).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    });
    let mut token = tempfile::NamedTempFile::new().unwrap();
    write!(token, "token-web-a").unwrap();
    let root = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The broker has the producers' queue; the supervisor runs its splitter.
        let conn = Connection::connect(&uri, ConnectionProperties::default())
            .await
            .unwrap();
        conn.create_channel()
            .await
            .unwrap()
            .queue_declare(
                "orders".into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = conn.close(200, "declared".into()).await;
        let registry: Arc<MirrordWorkloadQueueRegistry> = object(json!({
            "apiVersion": "queues.mirrord.metalbear.co/v1alpha",
            "kind": "MirrordWorkloadQueueRegistry",
            "metadata": {"name": "web-queues", "namespace": "default"},
            "spec": {
                "queues": {"orders": {"queueType": "RMQ", "clusterProperties": "rmq", "nameSource": {"envVar": "ORDERS"}}},
                "consumer": {"name": "web", "workloadType": "Deployment"}
            }
        }));
        let mut supervisor = Supervisor::new(Arc::new(Secrets(uri.clone())), Arc::new(NoMetrics));
        let reports = supervisor
            .reconcile(&[registry], |_, name| {
                (name == "web").then(|| serde_json::from_value::<PodSpec>(template()).unwrap())
            })
            .await;
        assert_eq!(reports[0].running, ["orders"], "{reports:?}");
        let supervisor = Arc::new(tokio::sync::Mutex::new(supervisor));

        let reviewer =
            StaticReviewer::default().with_pod("token-web-a", "default", "web-a", "uid-web-a");
        let registry = AgentRegistry::new(Arc::new(reviewer), HubConfig::default());
        let table = SessionTable::new(TableConfig::default());
        let inventory = Arc::new(inventory());
        let service = Arc::new(SessionService {
            registry: registry.clone(),
            table: table.clone(),
            inventory: inventory.clone(),
            queues: Some(supervisor.lock().await.index()),
        });
        assert!(service.features().contains(&"RmqQueueSplitting"));
        let ca = UserCa::from_pem(
            &std::fs::read_to_string("tests/data/coordinator/user-ca.crt").unwrap(),
            &std::fs::read_to_string("tests/data/coordinator/user-ca.key").unwrap(),
        )
        .unwrap();
        let info = OperatorInfo::new(
            "mirrord",
            License {
                name: "test".into(),
                organization: "test".into(),
                expire_at: time::Date::from_calendar_date(2099, time::Month::December, 31)
                    .unwrap(),
            },
        );
        let state = ApiState::new(info, ca, Arc::new(AllowAll), inventory)
            .with_sessions(Arc::new(service.clone()))
            .with_connector(Arc::new(service.clone()));
        let api = router(state).layer(axum::middleware::from_fn(identity));
        let der = client_der(&api).await;
        let app = agents::router(registry.clone()).merge(api);
        let cli_listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let cli_addr = cli_listener.local_addr().unwrap();
        for listener in [cli_listener, tokio::net::TcpListener::from_std(hub).unwrap()] {
            tokio::spawn(axum::serve(listener, app.clone()).into_future());
        }

        // The pod's agent: its container env names the output queue, as admission left it.
        let mut cmd = ns.command(env!("CARGO_BIN_EXE_mirrord-operator"));
        cmd.arg("agent")
            .env("MIRRORD_AGENT_COORDINATOR_URL", format!("ws://127.0.0.1:{HUB_PORT}"))
            .env("MIRRORD_AGENT_TOKEN_FILE", token.path())
            .env("MIRRORD_AGENT_POD_NAME", "web-a")
            .env("MIRRORD_AGENT_POD_NAMESPACE", "default")
            .env("MIRRORD_AGENT_POD_UID", "uid-web-a")
            .env("MIRRORD_AGENT_POD_IP", "127.0.0.1")
            .env("MIRRORD_AGENT_TARGET_CONTAINER", "web")
            .env("MIRRORD_AGENT_TARGET_PORTS", "8080")
            .env("MIRRORD_AGENT_REDIRECT", "iptables")
            .env("MIRRORD_AGENT_CHAIN_PREFIX", "QSTEST")
            .env("MIRRORD_AGENT_TARGET_ROOT", root.path())
            .env("MIRRORD_AGENT_FS_MODE", "volumes")
            .env("MIRRORD_AGENT_ENV_MODE", "spec")
            .env("MIRRORD_AGENT_LOG_LEVEL", "warn")
            .env("MIRRORD_TARGET_ENV_ORDERS", "orders-mirrord-output")
            .stdout(Stdio::null());
        ns.spawn(cmd);
        let deadline = Instant::now() + TIMEOUT;
        while registry.agents().is_empty() {
            assert!(Instant::now() < deadline, "the agent did not connect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // Alice's session: its env names her temporary queue.
        let alice_id = 0xA11CE;
        let mut alice = connect(cli_addr, &der, alice_id, "alice", r#"{"orders":{"tenant":"^alice$"}}"#)
            .await
            .expect("alice connects");
        let v = semver::Version::new(1, 29, 0);
        assert_eq!(
            ask(&mut alice, ClientMessage::SwitchProtocolVersion(v.clone())).await,
            DaemonMessage::SwitchProtocolVersionResponse(v)
        );
        let env = ask(
            &mut alice,
            ClientMessage::GetEnvVarsRequest(GetEnvVarsRequest {
                env_vars_filter: Default::default(),
                env_vars_select: ["*".to_owned()].into(),
            }),
        )
        .await;
        let DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(env))) = env else {
            panic!("{env:?}")
        };
        assert_eq!(env["ORDERS"], "orders-mirrord-a11ce");

        // Bob's filter can match alice's messages: refused before the upgrade, naming her.
        let refused = connect(cli_addr, &der, 0xB0B, "bob", r#"{"orders":{"tenant":"^(alice|bob)$"}}"#).await;
        let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
            panic!("bob's overlapping split must be refused");
        };
        assert_eq!(response.status(), 409);
        let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
        assert!(body.contains("a11ce"), "{body}");
        assert!(table.get(0xB0B).is_none());

        publish(&uri, "alice", 6).await;
        publish(&uri, "carol", 4).await;
        wait_depth(&node, "orders-mirrord-a11ce", Some(6)).await;
        wait_depth(&node, "orders-mirrord-output", Some(4)).await;

        // The session ends: her unread messages go back to the output queue, her queue goes.
        // The operator status embeds her session as a MirrordRMQSession (§7.5.3).
        let listed = service.list();
        let row = listed.iter().find(|s| s.id == alice_id).unwrap();
        assert_eq!(row.rmq.len(), 1);
        assert_eq!(
            row.rmq[0]["status"]["Ready"]["queueNames"]["orders"]["outputName"],
            "orders-mirrord-a11ce"
        );
        assert_eq!(row.rmq[0]["spec"]["queueFilters"]["orders"]["tenant"], "^alice$");
        let _ = service.kill(alice_id, "test over").await;
        drop(alice);
        wait_depth(&node, "orders-mirrord-a11ce", None).await;
        wait_depth(&node, "orders-mirrord-output", Some(10)).await;
        supervisor.lock().await.stop_all().await;
    });
}
