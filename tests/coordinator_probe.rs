//! `mirrord-operator probe`'s client core against the coordinator's API router served on loopback:
//! a user certificate from the credentials handler for the probe's own CSR, then a targetless
//! session (served by the coordinator in-process with the agent's session code): version, empty
//! environment, DNS, an outgoing connection to a loopback echo server, and a steal that is refused
//! with a reason (a targetless session has no pod to steal from). Also the errors the probe reports
//! for an unknown target (404 before the upgrade), and a targetless session listed and killed
//! through the sessions API like any other. No root needed.

#[path = "support/coordinator.rs"]
mod coordinator;
#[path = "support/netns.rs"]
mod netns;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use coordinator::Coordinator;
use http_body_util::BodyExt;
use mirrord_operator::admin::probe::{self, Outcome, Plan, ProbeConnection};
use mirrord_operator::coordinator::api::state::StaticInventory;
use mirrord_operator::coordinator::session::connector::SUBPROTOCOL;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

/// The coordinator with no targets (targetless sessions only), served on loopback.
async fn coordinator() -> (Coordinator, SocketAddr) {
    let coordinator = Coordinator::new(&[], StaticInventory::default(), None);
    let addr = coordinator.serve(Vec::new()).await;
    (coordinator, addr)
}

/// The probe's CSR through the credentials handler, as `x-client-der`.
async fn der(api: &Router) -> String {
    let body = serde_json::json!({
        "apiVersion": "operator.metalbear.co/v1",
        "kind": "MirrordClusterOperatorUserCredential",
        "metadata": {"generateName": "probe-"},
        "spec": {"csr": probe::csr_pem("jane").unwrap()},
    });
    let request =
        http::Request::post("/apis/operator.metalbear.co/v1/mirrordclusteroperatorusercredentials")
            .header("content-type", "application/json")
            .header("x-test-user", "jane")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
    let answer = api.clone().oneshot(request).await.unwrap();
    assert!(answer.status().is_success(), "{:?}", answer.status());
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    probe::client_der(&serde_json::from_slice(&body).unwrap()).unwrap()
}

fn upgrade_request(addr: SocketAddr, target: &str, der: &str) -> coordinator::Request {
    coordinator::upgrade_request(
        addr,
        target,
        "connect=true&on_concurrent_steal=abort",
        der,
        4242,
        "jane",
    )
}

/// A loopback server answering `pong` to the first read.
async fn echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..4 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 64];
            if stream.read(&mut buf).await.is_ok() {
                let _ = stream.write_all(b"pong").await;
            }
        }
    });
    addr
}

async fn run(
    conn: &mut ProbeConnection<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>,
    plan: &Plan,
) -> (Result<Outcome, probe::ProbeError>, Vec<Value>) {
    let mut events = Vec::new();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        probe::run_plan(conn, plan, &mut |e| events.push(e)),
    )
    .await
    .expect("the plan ends in time");
    (outcome, events)
}

fn event<'a>(events: &'a [Value], kind: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["event"] == kind)
        .unwrap_or_else(|| panic!("no {kind} event in {events:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targetless_session_runs_the_probe_plan() {
    let (coordinator, addr) = coordinator().await;
    let der = der(&coordinator.api).await;
    let echo = echo().await;

    let (ws, response) =
        tokio_tungstenite::connect_async(upgrade_request(addr, "targetless", &der))
            .await
            .expect("targetless sessions are served");
    assert_eq!(response.headers()["sec-websocket-protocol"], SUBPROTOCOL);
    let mut conn = ProbeConnection::new(ws);
    let plan = Plan {
        env: true,
        dns: vec!["localhost".into()],
        connect: Some(echo),
        send: "ping".into(),
        ..Default::default()
    };
    let (outcome, events) = run(&mut conn, &plan).await;
    assert_eq!(outcome.unwrap(), Outcome::Done, "{events:?}");
    assert_eq!(event(&events, "version")["version"], "1.29.0");
    assert_eq!(event(&events, "env")["vars"], serde_json::json!({}));
    let dns = event(&events, "dns");
    assert!(
        dns["addresses"]
            .as_array()
            .unwrap()
            .contains(&Value::from("127.0.0.1")),
        "{dns}"
    );
    assert_eq!(event(&events, "outgoing")["reply"], "pong");
    conn.close().await;

    // A steal has nothing to steal from: the session ends with the reason, no hang.
    let (ws, _) = tokio_tungstenite::connect_async(upgrade_request(addr, "targetless", &der))
        .await
        .unwrap();
    let mut conn = ProbeConnection::new(ws);
    let plan = Plan {
        steal: Some(8080),
        header_filter: Some("^x-user: jane$".into()),
        hold: 1,
        ..Default::default()
    };
    let (outcome, events) = run(&mut conn, &plan).await;
    match outcome.unwrap() {
        Outcome::Closed(reason) => assert!(reason.contains("not available"), "{reason}"),
        other => panic!("{other:?}: {events:?}"),
    }
}

/// The operator object's `status.sessions`, as `mirrord operator status` reads it.
async fn sessions(coordinator: &Coordinator) -> Value {
    let (_, operator) = coordinator
        .call(
            http::Request::get("/apis/operator.metalbear.co/v1/mirrordoperators/operator"),
            "jane",
        )
        .await;
    operator["status"]["sessions"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targetless_session_is_listed_and_can_be_killed() {
    let (coordinator, addr) = coordinator().await;
    let der = der(&coordinator.api).await;
    let (ws, _) = tokio_tungstenite::connect_async(upgrade_request(addr, "targetless", &der))
        .await
        .unwrap();
    let session = tokio::spawn(async move {
        let mut conn = ProbeConnection::new(ws);
        let plan = Plan {
            env: true,
            hold: 20,
            ..Default::default()
        };
        run(&mut conn, &plan).await
    });

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = sessions(&coordinator).await;
        if listed.as_array().is_some_and(|a| !a.is_empty()) {
            break listed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never listed: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(listed[0]["id"], "1092", "{listed}");
    assert_eq!(listed[0]["target"], "targetless", "{listed}");
    assert_eq!(listed[0]["user"], "jane/jane", "{listed}");

    let (killed, _) = coordinator
        .call(
            http::Request::delete("/apis/operator.metalbear.co/v1/sessions/4242"),
            "jane",
        )
        .await;
    assert!((200..300).contains(&killed), "{killed}");
    // The client learns why long before its 20 s hold ends, and the table forgets the session.
    let (outcome, events) = tokio::time::timeout(Duration::from_secs(10), session)
        .await
        .expect("the kill ends the connection")
        .unwrap();
    match outcome.unwrap() {
        Outcome::Closed(reason) => assert!(reason.contains("killed"), "{reason}"),
        other => panic!("{other:?}: {events:?}"),
    }
    assert_eq!(sessions(&coordinator).await, serde_json::json!([]));
    // Its id cannot be joined again: 410, which stops the CLI's reconnect loop.
    match tokio_tungstenite::connect_async(upgrade_request(addr, "targetless", &der)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 410)
        }
        other => panic!("a killed session was joined again: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_target_is_refused_before_the_upgrade() {
    let (coordinator, addr) = coordinator().await;
    let der = der(&coordinator.api).await;
    match tokio_tungstenite::connect_async(upgrade_request(addr, "deployment.web", &der)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 404);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                .into_owned();
            assert!(body.contains("NotFound") && body.contains("web"), "{body}");
        }
        other => panic!("{other:?}"),
    }
    assert!(probe::target_segment("deployment web").is_err());
}
