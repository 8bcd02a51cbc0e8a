//! The coordinator's agent hub and session relay with real agent processes: two network
//! namespaces play two pods of one Deployment, each with a real HTTP app and the real
//! `mirrord-operator agent` dialling the hub (`/agents/connect`, token checked by a test
//! TokenReviewer) with real iptables redirection. A client built on the project's codec runs the
//! CLI's sequence over the relay: version, env, a file, DNS, an outgoing connection, a
//! header-filtered steal receiving requests sent to **both** pods (the second pod joins
//! mid-session and gets the subscription replayed) while unmatched ones reach the apps, an
//! overlapping filter refused with the other session named, a disjoint one accepted and
//! receiving only its requests, garbage that ends only its own session, and a kill after which
//! the app gets its traffic back. Needs root (namespaces, iptables).

#[path = "support/cli_messages.rs"]
mod cli_messages;
#[path = "support/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use mirrord_operator::coordinator::agents::identity::StaticReviewer;
use mirrord_operator::coordinator::agents::{self, AgentRegistry, HubConfig};
use mirrord_operator::coordinator::api::router;
use mirrord_operator::coordinator::api::state::{
    AllowAll, ApiState, Identity, License, NamespaceInventory, OperatorInfo, StaticInventory,
};
use mirrord_operator::coordinator::credentials::UserCa;
use mirrord_operator::coordinator::session::connector::{SUBPROTOCOL, SessionService};
use mirrord_operator::coordinator::session::{SessionTable, TableConfig};
use mirrord_operator::protocol::codec::{Decoded, decode_from_slice, encode_to_vec};
use mirrord_operator::protocol::*;
use netns::NetNs;
use std::path::Path;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower::ServiceExt;

const APP: u16 = 8080;
const HUB_PORT: u16 = 47001;
const ECHO_PORT: u16 = 47002;
const TIMEOUT: Duration = Duration::from_secs(10);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

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

fn object<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(value).unwrap())
}

/// Deployment `web` → ReplicaSet → Running pods `web-a`, `web-b`, each with the injected agent.
fn inventory() -> StaticInventory {
    let container = |name: &str| serde_json::json!({"name": name, "image": "x"});
    let pod = |name: &str| {
        object(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "rs-1"}]},
            "spec": {"containers": [container("web"), container("mirrord-agent")]},
            "status": {"phase": "Running"}
        }))
    };
    let namespace = NamespaceInventory {
        pods: vec![pod("web-a"), pod("web-b")],
        deployments: vec![object(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "deploy-1"},
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

/// The coordinator's API router with the session service as connector and directory.
fn api(registry: Arc<AgentRegistry>, table: Arc<SessionTable>) -> Router {
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

/// A user certificate from the API for the CSR the real CLI sent (capture), as `x-client-der`.
async fn client_der(api: &Router) -> String {
    let capture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/coordinator/cli-capture-3.250.jsonl"),
    )
    .unwrap();
    let csr_request: serde_json::Value = capture
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["method"] == "POST")
        .unwrap();
    let request =
        http::Request::post("/apis/operator.metalbear.co/v1/mirrordclusteroperatorusercredentials")
            .header("content-type", "application/json")
            .header("x-test-user", "alice")
            .body(axum::body::Body::from(
                csr_request["body"].as_str().unwrap().to_owned(),
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

/// One pod: its namespace (with a caller namespace), app, target root and agent settings.
struct Pod {
    ns: NetNs,
    name: &'static str,
    _site: tempfile::TempDir,
    root: tempfile::TempDir,
    token: tempfile::NamedTempFile,
}

impl Pod {
    fn new(name: &'static str) -> Pod {
        let ns = NetNs::with_caller("cs");
        let site = ns.serve_hello(APP, &format!("app of {name}"), TIMEOUT);
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc/app")).unwrap();
        std::fs::write(
            root.path().join("etc/app/config.yaml"),
            format!("pod: {name}\n"),
        )
        .unwrap();
        let mut token = tempfile::NamedTempFile::new().unwrap();
        write!(token, "token-{name}").unwrap();
        Pod {
            ns,
            name,
            _site: site,
            root,
            token,
        }
    }

    /// A hub listener inside this pod's namespace (agents dial 127.0.0.1 there).
    fn hub_listener(&self) -> std::net::TcpListener {
        self.ns.run_in(|| {
            let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, HUB_PORT)).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        })
    }

    /// A TCP server in the pod answering `pong from <pod>` to anything (for outgoing traffic).
    fn echo(&self) {
        let listener = self
            .ns
            .run_in(|| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, ECHO_PORT)).unwrap());
        let name = self.name;
        std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let Ok(mut stream) = stream else { return };
                let mut buf = [0u8; 64];
                if stream.read(&mut buf).is_ok() {
                    let _ = stream.write_all(format!("pong from {name}").as_bytes());
                }
            }
        });
    }

    fn start_agent(&self) -> u32 {
        let mut cmd = self.ns.command(env!("CARGO_BIN_EXE_mirrord-operator"));
        cmd.arg("agent")
            .env(
                "MIRRORD_AGENT_COORDINATOR_URL",
                format!("ws://127.0.0.1:{HUB_PORT}"),
            )
            .env("MIRRORD_AGENT_TOKEN_FILE", self.token.path())
            .env("MIRRORD_AGENT_POD_NAME", self.name)
            .env("MIRRORD_AGENT_POD_NAMESPACE", "default")
            .env("MIRRORD_AGENT_POD_UID", format!("uid-{}", self.name))
            .env("MIRRORD_AGENT_POD_IP", netns::POD_ADDR.to_string())
            .env("MIRRORD_AGENT_TARGET_CONTAINER", "web")
            .env("MIRRORD_AGENT_TARGET_PORTS", APP.to_string())
            .env("MIRRORD_AGENT_REDIRECT", "iptables")
            .env("MIRRORD_AGENT_CHAIN_PREFIX", "CSTEST")
            .env("MIRRORD_AGENT_TARGET_ROOT", self.root.path())
            .env("MIRRORD_AGENT_FS_MODE", "volumes")
            .env("MIRRORD_AGENT_ENV_MODE", "spec")
            .env("MIRRORD_AGENT_LOG_LEVEL", "warn")
            .env(
                "MIRRORD_TARGET_ENV_GREETING",
                format!("hello from {}", self.name),
            )
            .stdout(Stdio::null());
        self.ns.spawn(cmd)
    }

    /// `curl` from the caller namespace to the app's port on the pod address.
    fn curl(&self, header: Option<&str>) -> String {
        let mut cmd: Command = self.ns.caller_command("curl");
        cmd.args(["-sS", "--max-time", "10"]);
        if let Some(h) = header {
            cmd.args(["-H", h]);
        }
        let out = cmd
            .arg(format!("http://{}:{APP}/hello.txt", netns::POD_ADDR))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A CLI connection built on the codec: one message per Binary frame.
struct Cli {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Cli {
    /// The CLI's upgrade request (operator-api.md §5.4), through the API router.
    async fn connect(addr: SocketAddr, der: &str, id: u64, user: &str) -> Cli {
        Cli::try_connect(addr, der, id, user).await.unwrap()
    }

    async fn try_connect(
        addr: SocketAddr,
        der: &str,
        id: u64,
        user: &str,
    ) -> Result<Cli, tokio_tungstenite::tungstenite::Error> {
        let url = format!(
            "ws://{addr}/apis/operator.metalbear.co/v1/proxy/namespaces/default/targets/deployment.web?connect=true&on_concurrent_steal=abort&key=k-{user}"
        );
        let mut request = url.into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert("sec-websocket-protocol", SUBPROTOCOL.parse().unwrap());
        headers.insert("x-session-id", id.to_string().parse().unwrap());
        headers.insert("x-client-der", der.parse().unwrap());
        headers.insert("x-client-name", user.parse().unwrap());
        headers.insert("x-mirrord-cli-version", "3.250.0".parse().unwrap());
        headers.insert("x-test-user", user.parse().unwrap());
        let (ws, response) = tokio_tungstenite::connect_async(request).await?;
        assert_eq!(
            response.headers()["sec-websocket-protocol"],
            SUBPROTOCOL,
            "subprotocol echoed"
        );
        Ok(Cli { ws })
    }

    async fn send(&mut self, msg: ClientMessage) {
        self.ws
            .send(Message::binary(encode_to_vec(&msg).unwrap()))
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> DaemonMessage {
        let frame = tokio::time::timeout(TIMEOUT, self.ws.next())
            .await
            .expect("a message in time")
            .expect("stream open")
            .expect("valid frame");
        let Message::Binary(bytes) = frame else {
            panic!("the relay must send Binary frames only, got {frame:?}")
        };
        match decode_from_slice::<DaemonMessage>(&bytes).unwrap() {
            Decoded::Message(msg, used) => {
                assert_eq!(used, bytes.len(), "one message per frame");
                msg
            }
            Decoded::Incomplete { .. } => panic!("truncated message"),
        }
    }

    /// The next message that is not a log.
    async fn recv_no_log(&mut self) -> DaemonMessage {
        loop {
            match self.recv().await {
                DaemonMessage::LogMessage(_) => continue,
                other => return other,
            }
        }
    }

    async fn ask(&mut self, msg: ClientMessage) -> DaemonMessage {
        self.send(msg).await;
        self.recv_no_log().await
    }

    /// Ping → Pong; the Close of an earlier stolen connection may come first.
    async fn ping(&mut self) {
        self.send(ClientMessage::Ping).await;
        loop {
            match self.recv_no_log().await {
                DaemonMessage::Pong => return,
                DaemonMessage::TcpSteal(DaemonTcp::Close(_)) => continue,
                other => panic!("expected Pong, got {other:?}"),
            }
        }
    }

    async fn negotiate(&mut self) {
        let v = semver::Version::new(1, 29, 0);
        assert_eq!(
            self.ask(ClientMessage::SwitchProtocolVersion(v.clone()))
                .await,
            DaemonMessage::SwitchProtocolVersionResponse(v)
        );
    }

    /// Expects the relay to end the connection, after a `Close` whose reason contains `text`.
    async fn expect_close(&mut self, text: &str) {
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
        let end = tokio::time::timeout(TIMEOUT, self.ws.next())
            .await
            .expect("closed in time");
        assert!(
            matches!(end, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
            "{end:?}"
        );
    }
}

fn steal(filter: &str) -> ClientMessage {
    ClientMessage::TcpSteal(LayerTcpSteal::PortSubscribe(StealType::FilteredHttpEx(
        APP,
        HttpFilter::Header(Filter(filter.into())),
    )))
}

/// Waits for a stolen request and answers it with `body`; returns its connection id.
async fn answer_stolen(cli: &mut Cli, body: &str) -> u64 {
    let connection_id = loop {
        match cli.recv_no_log().await {
            DaemonMessage::TcpSteal(DaemonTcp::HttpRequestChunked(ChunkedRequest::StartV2(
                start,
            ))) => break start.connection_id,
            DaemonMessage::TcpSteal(DaemonTcp::Close(_)) => continue,
            other => panic!("expected a stolen request, got {other:?}"),
        }
    };
    cli.send(cli_messages::ok_response(APP, connection_id, body))
        .await;
    connection_id
}

/// curl on a blocking thread while the client answers.
async fn curl_stolen(pod: &Pod, header: &str, cli: &mut Cli, body: &str) -> u64 {
    let (ns_name, header) = (pod.ns.caller_name().unwrap().to_owned(), header.to_owned());
    let curl = tokio::task::spawn_blocking(move || {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns_name,
                "curl",
                "-sS",
                "--max-time",
                "10",
                "-H",
                &header,
            ])
            .arg(format!("http://{}:{APP}/hello.txt", netns::POD_ADDR))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    let id = answer_stolen(cli, body).await;
    assert_eq!(curl.await.unwrap(), body);
    id
}

async fn wait_for_agents(registry: &AgentRegistry, n: usize) {
    let deadline = Instant::now() + TIMEOUT;
    while registry.agents().len() != n {
        assert!(
            Instant::now() < deadline,
            "{} agents, expected {n}",
            registry.agents().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn open_file(path: &str) -> ClientMessage {
    ClientMessage::FileRequest(FileRequest::Open(OpenFileRequest {
        path: std::path::PathBuf::from(path),
        open_options: OpenOptionsInternal {
            read: true,
            ..Default::default()
        },
    }))
}

#[test]
fn two_pods_one_session_steal_overlap_kill() {
    let pod_a = Pod::new("web-a");
    let pod_b = Pod::new("web-b");
    pod_a.echo();
    let hub_a = pod_a.hub_listener();
    let hub_b = pod_b.hub_listener();
    let runtime = rt();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    runtime.block_on(async {
        let reviewer = StaticReviewer::default()
            .with_pod("token-web-a", "default", "web-a", "uid-web-a")
            .with_pod("token-web-b", "default", "web-b", "uid-web-b");
        let registry = AgentRegistry::new(Arc::new(reviewer), HubConfig::default());
        let table = SessionTable::new(TableConfig::default());
        let api = api(registry.clone(), table.clone());
        let der = client_der(&api).await;
        let app = agents::router(registry.clone()).merge(api.clone());
        let cli_listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let cli_addr = cli_listener.local_addr().unwrap();
        for listener in [
            cli_listener,
            tokio::net::TcpListener::from_std(hub_a).unwrap(),
            tokio::net::TcpListener::from_std(hub_b).unwrap(),
        ] {
            tokio::spawn(axum::serve(listener, app.clone()).into_future());
        }

        // Pod A's agent registers; pod B's comes later.
        pod_a.start_agent();
        wait_for_agents(&registry, 1).await;

        // Connection #1: version, env from the pod.
        let alice_id = 0xA11CE;
        let mut first = Cli::connect(cli_addr, &der, alice_id, "alice").await;
        first.negotiate().await;
        let env = first
            .ask(ClientMessage::GetEnvVarsRequest(GetEnvVarsRequest {
                env_vars_filter: Default::default(),
                env_vars_select: ["*".to_owned()].into(),
            }))
            .await;
        let DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(env))) = env else {
            panic!("{env:?}")
        };
        assert_eq!(env["GREETING"], "hello from web-a");

        // Connection #2 of the same session (the internal proxy); #1 then closes.
        let mut alice = Cli::connect(cli_addr, &der, alice_id, "alice").await;
        alice.ping().await;
        first.ws.close(None).await.unwrap();
        alice.negotiate().await;
        alice.send(ClientMessage::ReadyForLogs).await;

        // A file, DNS and an outgoing connection, all from the pod.
        assert_eq!(
            alice.ask(open_file("/etc/app/config.yaml")).await,
            DaemonMessage::File(FileResponse::Open(Ok(OpenFileResponse { fd: 0 })))
        );
        let read = alice
            .ask(ClientMessage::FileRequest(FileRequest::Read(
                ReadFileRequest {
                    remote_fd: 0,
                    buffer_size: 100,
                },
            )))
            .await;
        let DaemonMessage::File(FileResponse::Read(Ok(read))) = read else {
            panic!("{read:?}")
        };
        assert_eq!(read.bytes.0.as_ref(), b"pod: web-a\n");
        let dns = alice
            .ask(ClientMessage::GetAddrInfoRequest(GetAddrInfoRequest {
                node: "localhost".into(),
            }))
            .await;
        let DaemonMessage::GetAddrInfoResponse(GetAddrInfoResponse(Ok(DnsLookup(records)))) = dns
        else {
            panic!("{dns:?}")
        };
        assert!(
            records
                .iter()
                .any(|r| r.ip == std::net::IpAddr::from(Ipv4Addr::LOCALHOST))
        );
        let connect = alice
            .ask(ClientMessage::TcpOutgoing(LayerTcpOutgoing::Connect(
                LayerConnect {
                    remote_address: SocketAddress::Ip(SocketAddr::from((
                        Ipv4Addr::LOCALHOST,
                        ECHO_PORT,
                    ))),
                },
            )))
            .await;
        let DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Connect(Ok(connected))) = connect else {
            panic!("{connect:?}")
        };
        alice
            .send(ClientMessage::TcpOutgoing(LayerTcpOutgoing::Write(
                LayerWrite {
                    connection_id: connected.connection_id,
                    bytes: Payload::from(b"ping".to_vec()),
                },
            )))
            .await;
        let echoed = alice.recv_no_log().await;
        let DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Read(Ok(echoed))) = echoed else {
            panic!("{echoed:?}")
        };
        assert_eq!(echoed.bytes.0.as_ref(), b"pong from web-a");
        // Both sides shut down: EOF from the server, then the agent's Close.
        alice
            .send(ClientMessage::TcpOutgoing(LayerTcpOutgoing::Write(
                LayerWrite {
                    connection_id: connected.connection_id,
                    bytes: Payload::from(Vec::new()),
                },
            )))
            .await;
        loop {
            match alice.recv_no_log().await {
                DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Read(Ok(_))) => continue,
                DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Close(id)) => {
                    assert_eq!(id, connected.connection_id);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }

        // A header-filtered steal: subscribed on pod A, replayed to pod B when it joins.
        assert_eq!(
            alice.ask(steal("^x-user: alice$")).await,
            DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(Ok(APP)))
        );
        let agent_b = pod_b.start_agent();
        wait_for_agents(&registry, 2).await;
        let deadline = Instant::now() + TIMEOUT;
        while table.list()[0].pods.len() != 2 {
            assert!(
                Instant::now() < deadline,
                "pod B never joined: {:?}",
                table.list()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("step: steal on both pods");
        let from_a = curl_stolen(&pod_a, "x-user: alice", &mut alice, "alice on a").await;
        // The replayed subscription may take a moment to reach pod B's redirect rules.
        let deadline = Instant::now() + TIMEOUT;
        while !pod_b
            .ns
            .nat_rules_with("CSTEST")
            .iter()
            .any(|r| r.contains(&format!("--dport {APP}")))
        {
            assert!(Instant::now() < deadline, "pod B never redirected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("step: pod B");
        let from_b = curl_stolen(&pod_b, "x-user: alice", &mut alice, "alice on b").await;
        assert_ne!(
            from_a, from_b,
            "connection ids from two pods must not collide"
        );
        assert_eq!(pod_a.curl(None), "app of web-a");
        assert_eq!(pod_b.curl(Some("x-user: carol")), "app of web-b");

        eprintln!("step: bob");
        // Bob: an overlapping filter is refused with alice named; a disjoint one is accepted.
        let mut bob = Cli::connect(cli_addr, &der, 0xB0B, "bob").await;
        bob.negotiate().await;
        bob.send(ClientMessage::ReadyForLogs).await;
        bob.send(steal("x-user: ali")).await;
        let DaemonMessage::LogMessage(log) = bob.recv().await else {
            panic!("expected the refusal's explanation")
        };
        assert!(
            log.message.contains("A11CE")
                && log.message.contains("alice")
                && log.message.contains("x-user: ali"),
            "{}",
            log.message
        );
        assert_eq!(
            bob.recv().await,
            DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(Err(
                ResponseError::PortAlreadyStolen(APP)
            )))
        );
        assert_eq!(
            bob.ask(steal("^x-user: bob$")).await,
            DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(Ok(APP)))
        );
        curl_stolen(&pod_b, "x-user: bob", &mut bob, "bob on b").await;
        curl_stolen(&pod_a, "x-user: alice", &mut alice, "alice again").await;
        let rows = table.list();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].user, "alice/alice");
        assert_eq!(rows[0].pods, ["web-a", "web-b"]);
        assert_eq!(
            rows[0].ports[0].filter.as_deref(),
            Some("header=^x-user: alice$")
        );

        eprintln!("step: garbage");
        // Garbage from bob ends bob's session only.
        bob.ws
            .send(Message::binary(vec![0xff, 0xff]))
            .await
            .unwrap();
        bob.expect_close("invalid frame").await;
        assert_eq!(registry.agents().len(), 2);
        alice.ping().await;

        eprintln!("step: agent B killed");
        // Pod B's agent dies (SIGKILL): the hub drops it within seconds, the session goes on with
        // pod A.
        pod_b.ns.kill(agent_b);
        let killed = Instant::now();
        wait_for_agents(&registry, 1).await;
        assert!(
            killed.elapsed() < Duration::from_secs(8),
            "{:?}",
            killed.elapsed()
        );
        let deadline = Instant::now() + TIMEOUT;
        while table.list()[0].pods != ["web-a"] {
            assert!(Instant::now() < deadline, "{:?}", table.list());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Alice is told (she said ReadyForLogs): a warning naming the pod and why.
        loop {
            match alice.recv().await {
                DaemonMessage::LogMessage(log) if log.message.contains("web-b") => {
                    assert_eq!(log.level, LogLevel::Warn, "{log:?}");
                    assert!(log.message.contains("left the session"), "{log:?}");
                    break;
                }
                DaemonMessage::LogMessage(_) | DaemonMessage::TcpSteal(DaemonTcp::Close(_)) => {}
                other => panic!("expected the pod-loss warning, got {other:?}"),
            }
        }
        alice.ping().await;
        curl_stolen(&pod_a, "x-user: alice", &mut alice, "alice after b").await;

        eprintln!("step: kill");
        // Kill alice: the CLI gets the reason, the pods' apps get alice's requests back.
        let status = api
            .clone()
            .oneshot(
                http::Request::get("/apis/operator.metalbear.co/v1/mirrordoperators/operator")
                    .header("x-test-user", "alice")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status: serde_json::Value =
            serde_json::from_slice(&status.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        let sessions = &status["status"]["sessions"];
        assert_eq!(sessions[0]["id"], "A11CE", "{status}");
        assert_eq!(
            sessions[0]["target"], "deployment/web/container/web",
            "{status}"
        );
        assert_eq!(sessions[0]["locked_ports"][0]["port"], APP, "{status}");
        let killed = api
            .clone()
            .oneshot(
                http::Request::delete(format!(
                    "/apis/operator.metalbear.co/v1/sessions/{alice_id}"
                ))
                .header("x-test-user", "alice")
                .header("content-type", "application/json")
                .body(axum::body::Body::from("{}"))
                .unwrap(),
            )
            .await
            .unwrap();
        assert!(killed.status().is_success(), "{:?}", killed.status());
        alice.expect_close("killed").await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let body = tokio::task::block_in_place(|| pod_a.curl(Some("x-user: alice")));
            if body == "app of web-a" {
                break;
            }
            assert!(Instant::now() < deadline, "still stolen: {body:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A reconnect of the killed session is refused before the upgrade: 410
        // ReconnectNotPossible (the CLI stops retrying on it).
        match Cli::try_connect(cli_addr, &der, alice_id, "alice").await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 410);
                let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                    .into_owned();
                assert!(body.contains("ReconnectNotPossible"), "{body}");
            }
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("a killed session was joined again"),
        }
    });
    drop(runtime);
}
