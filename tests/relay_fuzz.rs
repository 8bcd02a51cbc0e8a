//! The session relay fuzzed from both sides (proptest): arbitrary, garbage and oversized frames
//! from the CLI side end only that connection with a reason; garbage from one agent's session
//! drops only that pod. Never a panic or a hang (every wait is bounded), and a well-behaved session
//! on the same agents keeps working. The hub is the real agent router on loopback; the agents are
//! in-process peers speaking the link contract (register, openSession → session WebSocket).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use mirrord_operator::coordinator::agents::identity::StaticReviewer;
use mirrord_operator::coordinator::agents::{self, AgentRegistry, HubConfig};
use mirrord_operator::coordinator::filters::OnConcurrentSteal;
use mirrord_operator::coordinator::session::frames::Frames;
use mirrord_operator::coordinator::session::relay::{self, RelayEnd};
use mirrord_operator::coordinator::session::{SessionSpec, SessionTable, TableConfig};
use mirrord_operator::link::{AgentControl, CONNECT_PATH, CoordinatorControl, Registration};
use mirrord_operator::protocol::codec::{Decoded, decode_from_slice, encode_to_vec};
use mirrord_operator::protocol::*;
use proptest::prelude::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const TIMEOUT: Duration = Duration::from_secs(5);

/// What an in-process agent does on each session it is asked to open.
#[derive(Clone)]
enum Behaviour {
    /// Answers version and ping like the real agent.
    Good,
    /// Answers the version, then sends these frames.
    Garbage(Arc<Vec<Vec<u8>>>),
    /// Like `Good`, and reports every message it received.
    Record(tokio::sync::mpsc::UnboundedSender<ClientMessage>),
}

/// Registers as pod `name` with the hub at `addr` and serves every session it is asked to open.
async fn fake_agent(addr: std::net::SocketAddr, name: &'static str, behaviour: Behaviour) {
    let dial = |path: String| async move {
        let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer token-{name}").parse().unwrap(),
        );
        tokio_tungstenite::connect_async(request).await.unwrap().0
    };
    let mut control = dial(CONNECT_PATH.to_owned()).await;
    let register = AgentControl::Register(Registration {
        pod_name: name.into(),
        pod_namespace: "default".into(),
        pod_uid: format!("uid-{name}"),
        pod_ips: vec!["10.0.0.1".into()],
        node_name: "node".into(),
        target_container: "web".into(),
        target_ports: vec![8080],
        protocol_version: "1.29.0".into(),
        agent_version: "test".into(),
    });
    control
        .send(Message::text(serde_json::to_string(&register).unwrap()))
        .await
        .unwrap();
    while let Some(Ok(frame)) = control.next().await {
        let Message::Text(text) = frame else { continue };
        let Ok(CoordinatorControl::OpenSession { session_id }) = serde_json::from_str(&text) else {
            continue;
        };
        let mut session = dial(mirrord_operator::link::session_path(&session_id)).await;
        let behaviour = behaviour.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = session.next().await {
                let Message::Binary(bytes) = frame else {
                    continue;
                };
                let Ok(Decoded::Message(msg, _)) = decode_from_slice::<ClientMessage>(&bytes)
                else {
                    continue;
                };
                if let Behaviour::Record(seen) = &behaviour {
                    let _ = seen.send(msg.clone());
                }
                let answer = match msg {
                    ClientMessage::SwitchProtocolVersion(v) => {
                        DaemonMessage::SwitchProtocolVersionResponse(v)
                    }
                    ClientMessage::Ping => DaemonMessage::Pong,
                    _ => continue,
                };
                let version = matches!(answer, DaemonMessage::SwitchProtocolVersionResponse(_));
                if session
                    .send(Message::binary(encode_to_vec(&answer).unwrap()))
                    .await
                    .is_err()
                {
                    return;
                }
                if let (true, Behaviour::Garbage(frames)) = (version, &behaviour) {
                    for frame in frames.iter() {
                        if session.send(Message::binary(frame.clone())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

struct Hub {
    registry: Arc<AgentRegistry>,
    table: Arc<SessionTable>,
    next_id: u64,
}

impl Hub {
    /// The hub on loopback with agents `web-a` (good) and `web-b` (`b`).
    async fn start(b: Behaviour) -> Hub {
        let reviewer = StaticReviewer::default()
            .with_pod("token-web-a", "default", "web-a", "uid-web-a")
            .with_pod("token-web-b", "default", "web-b", "uid-web-b");
        let registry = AgentRegistry::new(Arc::new(reviewer), HubConfig::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(listener, agents::router(registry.clone())).into_future());
        tokio::spawn(fake_agent(addr, "web-a", Behaviour::Good));
        tokio::spawn(fake_agent(addr, "web-b", b));
        tokio::time::timeout(TIMEOUT, async {
            while registry.agents().len() != 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("both agents registered");
        Hub {
            registry,
            table: SessionTable::new(TableConfig::default()),
            next_id: 1,
        }
    }

    /// A session over both pods; returns the CLI's end and the relay's task.
    fn session(&mut self) -> (Frames, tokio::task::JoinHandle<RelayEnd>) {
        self.session_with_key(None)
    }

    fn session_with_key(
        &mut self,
        key: Option<&str>,
    ) -> (Frames, tokio::task::JoinHandle<RelayEnd>) {
        let id = self.next_id;
        self.next_id += 1;
        let spec = SessionSpec {
            id,
            owner: "u".into(),
            user: "u".into(),
            user_id: None,
            target: "deployment/web".into(),
            namespace: Some("default".into()),
            key: key.map(str::to_owned),
            header_filter: None,
            on_concurrent_steal: OnConcurrentSteal::Abort,
            pods: Arc::new(|_| true),
            queues: None,
        };
        let (session, connection) = self.table.join(spec).unwrap();
        let (cli, relay_end) = Frames::pair();
        let task = tokio::spawn(relay::run(
            self.registry.clone(),
            self.table.clone(),
            session,
            connection,
            relay_end,
        ));
        (cli, task)
    }
}

async fn send(cli: &Frames, msg: &ClientMessage) {
    cli.tx
        .send(Bytes::from(encode_to_vec(msg).unwrap()))
        .await
        .unwrap();
}

/// The next non-log message, or `None` when the relay closed the connection.
async fn recv(cli: &mut Frames) -> Option<DaemonMessage> {
    loop {
        let frame = tokio::time::timeout(TIMEOUT, cli.rx.recv())
            .await
            .expect("the relay answered or closed in time")?
            .expect("the relay sends valid frames");
        match decode_from_slice::<DaemonMessage>(&frame).expect("decodable") {
            Decoded::Message(DaemonMessage::LogMessage(_), _) => continue,
            Decoded::Message(msg, used) => {
                assert_eq!(used, frame.len(), "one message per frame");
                return Some(msg);
            }
            Decoded::Incomplete { .. } => panic!("truncated message from the relay"),
        }
    }
}

/// A healthy session: version negotiated and a ping answered.
async fn healthy(cli: &mut Frames) {
    let v = semver::Version::new(1, 29, 0);
    send(cli, &ClientMessage::SwitchProtocolVersion(v.clone())).await;
    assert_eq!(
        recv(cli).await,
        Some(DaemonMessage::SwitchProtocolVersionResponse(v))
    );
    send(cli, &ClientMessage::Ping).await;
    assert_eq!(recv(cli).await, Some(DaemonMessage::Pong));
}

/// Frames a fuzzer finds interesting: random bytes, a valid message with trailing bytes, a
/// truncated one, and a large one (a 1 MiB garbage payload).
fn frame() -> impl Strategy<Value = Vec<u8>> {
    let ping = encode_to_vec(&ClientMessage::Ping).unwrap();
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..64),
        1 => prop::collection::vec(any::<u8>(), 1..8).prop_map({
            let ping = ping.clone();
            move |tail| [ping.clone(), tail].concat()
        }),
        1 => (0u8..=255).prop_map(|tag| vec![tag, 0x0a]),
        1 => Just(vec![0x5a; 1 << 20]),
    ]
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_key_is_registered_with_every_agent_as_a_share_link() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let mut hub = Hub::start(Behaviour::Record(seen_tx)).await;
    let (mut cli, task) = hub.session_with_key(Some("k-alice"));
    healthy(&mut cli).await;
    let first = tokio::time::timeout(TIMEOUT, seen.recv())
        .await
        .expect("web-b got a message")
        .unwrap();
    assert_eq!(
        first,
        ClientMessage::ShareLink(ShareLinkRequest::RegisterKey("k-alice".into())),
        "the key is registered before anything else"
    );
    drop(cli);
    let _ = tokio::time::timeout(TIMEOUT, task)
        .await
        .expect("relay ended");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn garbage_from_the_cli_ends_only_that_connection(frames in prop::collection::vec(frame(), 1..6)) {
        rt().block_on(async {
            let mut hub = Hub::start(Behaviour::Good).await;
            let (mut bystander, bystander_task) = hub.session();
            healthy(&mut bystander).await;
            let (mut fuzzed, task) = hub.session();
            for frame in &frames {
                if fuzzed.tx.send(Bytes::from(frame.clone())).await.is_err() {
                    break;
                }
            }
            // Valid messages get answers; the first bad frame ends the connection with a Close.
            let mut closed_with = None;
            while let Some(msg) = recv(&mut fuzzed).await {
                if let DaemonMessage::Close(reason) = msg {
                    closed_with = Some(reason);
                }
            }
            let end = tokio::time::timeout(TIMEOUT, task).await.expect("relay ended").expect("no panic");
            let all_valid = frames.iter().all(|f| matches!(
                decode_from_slice::<ClientMessage>(f),
                Ok(Decoded::Message(_, used)) if used == f.len()
            ));
            if !all_valid {
                assert!(matches!(end, RelayEnd::BadClientFrame(_)), "{end:?}");
                let reason = closed_with.expect("a Close with the reason");
                assert!(reason.contains("invalid frame"), "{reason}");
            }
            // The other session and both agents are unaffected.
            assert_eq!(hub.registry.agents().len(), 2);
            send(&bystander, &ClientMessage::Ping).await;
            assert_eq!(recv(&mut bystander).await, Some(DaemonMessage::Pong));
            drop(bystander);
            let _ = tokio::time::timeout(TIMEOUT, bystander_task).await.expect("bystander ended");
        });
    }

    #[test]
    fn garbage_from_an_agent_drops_only_that_pod(frames in prop::collection::vec(frame(), 1..4)) {
        rt().block_on(async {
            let mut hub = Hub::start(Behaviour::Garbage(Arc::new(frames.clone()))).await;
            let (mut cli, task) = hub.session();
            let v = semver::Version::new(1, 29, 0);
            send(&cli, &ClientMessage::SwitchProtocolVersion(v.clone())).await;
            assert_eq!(recv(&mut cli).await, Some(DaemonMessage::SwitchProtocolVersionResponse(v)));
            // web-a (the primary: lowest name) is good, so the session goes on whatever web-b
            // sent; pings keep being answered.
            for _ in 0..3 {
                send(&cli, &ClientMessage::Ping).await;
                assert_eq!(recv(&mut cli).await, Some(DaemonMessage::Pong));
            }
            assert!(!task.is_finished(), "the CLI connection must survive a bad agent");
            // A frame that is not exactly one agent message drops web-b from the session.
            let all_valid = frames.iter().all(|f| matches!(
                decode_from_slice::<DaemonMessage>(f),
                Ok(Decoded::Message(_, used)) if used == f.len()
            ));
            if !all_valid {
                tokio::time::timeout(TIMEOUT, async {
                    while hub.table.list()[0].pods != ["web-a"] {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("web-b still in the session: {:?}", hub.table.list()));
                send(&cli, &ClientMessage::Ping).await;
                assert_eq!(recv(&mut cli).await, Some(DaemonMessage::Pong));
            }
            // The agents stay registered: a bad session frame is not a bad control link.
            assert_eq!(hub.registry.agents().len(), 2);
            drop(cli);
            let end = tokio::time::timeout(TIMEOUT, task).await.expect("relay ended").expect("no panic");
            assert!(matches!(end, RelayEnd::ClientClosed), "{end:?}");
        });
    }
}
