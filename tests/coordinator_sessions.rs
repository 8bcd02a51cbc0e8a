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
#[path = "support/coordinator.rs"]
mod coordinator;
#[path = "support/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use coordinator::{APP, Cli, Coordinator, TIMEOUT};
use mirrord_operator::protocol::*;
use netns::NetNs;

const HUB_PORT: u16 = 47001;
const ECHO_PORT: u16 = 47002;

/// Deployment `web` → ReplicaSet → Running pods `web-a`, `web-b`, each with the injected agent.
fn coordinator() -> Coordinator {
    let pods = vec![
        coordinator::injected_pod("web-a"),
        coordinator::injected_pod("web-b"),
    ];
    let inventory =
        coordinator::web_inventory(pods, serde_json::Value::Null, coordinator::web_template());
    Coordinator::new(&["web-a", "web-b"], inventory, None)
}

/// Alice's (or bob's) upgrade for `deployment.web`.
fn upgrade(addr: SocketAddr, der: &str, id: u64, user: &str) -> coordinator::Request {
    coordinator::upgrade_request(
        addr,
        "deployment.web",
        &format!("connect=true&on_concurrent_steal=abort&key=k-{user}"),
        der,
        id,
        user,
    )
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
        let token = coordinator::token_file(name);
        Pod {
            ns,
            name,
            _site: site,
            root,
            token,
        }
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
        let mut cmd =
            coordinator::agent_command(&self.ns, HUB_PORT, self.name, self.token.path(), "CSTEST");
        cmd.env("MIRRORD_AGENT_TARGET_ROOT", self.root.path())
            .env("MIRRORD_AGENT_FS_MODE", "volumes")
            .env(
                "MIRRORD_TARGET_ENV_GREETING",
                format!("hello from {}", self.name),
            );
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
    let hub_a = coordinator::hub_listener(&pod_a.ns, HUB_PORT);
    let hub_b = coordinator::hub_listener(&pod_b.ns, HUB_PORT);
    let runtime = coordinator::runtime();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
    runtime.block_on(async {
        let coordinator = coordinator();
        let (registry, table) = (&coordinator.registry, &coordinator.table);
        let der = coordinator.client_der("alice").await;
        let cli_addr = coordinator.serve(vec![hub_a, hub_b]).await;

        // Pod A's agent registers; pod B's comes later.
        pod_a.start_agent();
        coordinator.wait_for_agents(1).await;

        // Connection #1: version, env from the pod.
        let alice_id = 0xA11CE;
        let mut first = Cli::connect(upgrade(cli_addr, &der, alice_id, "alice")).await;
        first.negotiate().await;
        let env = first.env().await;
        assert_eq!(env["GREETING"], "hello from web-a");

        // Connection #2 of the same session (the internal proxy); #1 then closes.
        let mut alice = Cli::connect(upgrade(cli_addr, &der, alice_id, "alice")).await;
        alice.ping().await;
        first.close().await;
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
        coordinator.wait_for_agents(2).await;
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
        let mut bob = Cli::connect(upgrade(cli_addr, &der, 0xB0B, "bob")).await;
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
        bob.send_frame(vec![0xff, 0xff]).await;
        bob.expect_close("invalid frame").await;
        assert_eq!(registry.agents().len(), 2);
        alice.ping().await;

        eprintln!("step: agent B killed");
        // Pod B's agent dies (SIGKILL): the hub drops it within seconds, the session goes on with
        // pod A.
        pod_b.ns.kill(agent_b);
        let killed = Instant::now();
        coordinator.wait_for_agents(1).await;
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
        let (_, status) = coordinator
            .call(
                http::Request::get("/apis/operator.metalbear.co/v1/mirrordoperators/operator"),
                "alice",
            )
            .await;
        let sessions = &status["status"]["sessions"];
        assert_eq!(sessions[0]["id"], "A11CE", "{status}");
        assert_eq!(
            sessions[0]["target"], "deployment/web/container/web",
            "{status}"
        );
        assert_eq!(sessions[0]["locked_ports"][0]["port"], APP, "{status}");
        let (killed, _) = coordinator
            .call(
                http::Request::delete(format!(
                    "/apis/operator.metalbear.co/v1/sessions/{alice_id}"
                )),
                "alice",
            )
            .await;
        assert!((200..300).contains(&killed), "{killed}");
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
        match Cli::open(upgrade(cli_addr, &der, alice_id, "alice")).await {
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
