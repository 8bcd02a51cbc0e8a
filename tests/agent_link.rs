//! The agent's production link against a small server that plays the coordinator: wss with a
//! private CA, bearer token (re-read on every dial), registration, a session WebSocket carrying
//! one protocol message per Binary frame, `sessionEnded`, and redial after the link drops.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use mirrord_operator::protocol::codec::{Decoded, decode_from_slice, encode_to_vec};
use mirrord_operator::protocol::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const TIMEOUT: Duration = Duration::from_secs(10);

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CA and a `localhost` serving certificate it signed: (CA PEM, TLS acceptor).
fn tls() -> (String, TlsAcceptor) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
        .unwrap();
    (ca.pem(), TlsAcceptor::from(Arc::new(config)))
}

/// Accepts one WebSocket over TLS; returns it with the request path and Authorization header.
// tungstenite's handshake callback type has a large error variant; not ours to shrink.
#[allow(clippy::result_large_err)]
async fn accept(
    listener: &TcpListener,
    acceptor: &TlsAcceptor,
) -> (WebSocketStream<TlsStream<TcpStream>>, String, String) {
    let (tcp, _) = tokio::time::timeout(TIMEOUT, listener.accept())
        .await
        .expect("agent dialled in time")
        .unwrap();
    let tls = acceptor.accept(tcp).await.expect("TLS handshake");
    let seen = Arc::new(Mutex::new((String::new(), String::new())));
    let seen_cb = seen.clone();
    let ws = tokio_tungstenite::accept_hdr_async(tls, move |req: &Request, resp: Response| {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        *seen_cb.lock().unwrap() = (req.uri().path().to_owned(), auth);
        Ok(resp)
    })
    .await
    .expect("WebSocket handshake");
    let (path, auth) = seen.lock().unwrap().clone();
    (ws, path, auth)
}

async fn next_frame<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(TIMEOUT, ws.next())
        .await
        .expect("frame in time")
        .expect("stream open")
        .expect("valid frame")
}

async fn ask<S>(ws: &mut WebSocketStream<S>, msg: ClientMessage) -> DaemonMessage
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::binary(encode_to_vec(&msg).unwrap()))
        .await
        .unwrap();
    loop {
        match next_frame(ws).await {
            Message::Binary(bytes) => match decode_from_slice::<DaemonMessage>(&bytes).unwrap() {
                Decoded::Message(msg, used) => {
                    assert_eq!(used, bytes.len(), "one message per frame");
                    return msg;
                }
                Decoded::Incomplete { .. } => panic!("truncated message in a frame"),
            },
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[tokio::test]
async fn registers_serves_sessions_and_redials_with_a_fresh_token() {
    let (ca_pem, acceptor) = tls();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "token-one\n").unwrap();

    let _agent = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_mirrord-operator"))
            .arg("agent")
            .env(
                "MIRRORD_AGENT_COORDINATOR_URL",
                format!("wss://localhost:{port}"),
            )
            .env("MIRRORD_AGENT_COORDINATOR_CA", &ca_pem)
            .env("MIRRORD_AGENT_TOKEN_FILE", &token_file)
            .env("MIRRORD_AGENT_POD_NAME", "api-7d9f-x2")
            .env("MIRRORD_AGENT_POD_NAMESPACE", "shop")
            .env("MIRRORD_AGENT_POD_IP", "10.244.1.7")
            .env("MIRRORD_AGENT_TARGET_PORTS", "8080,9090")
            .env("MIRRORD_AGENT_REDIRECT", "off")
            .env("MIRRORD_AGENT_FS_MODE", "off")
            .env("MIRRORD_AGENT_LOG_LEVEL", "warn")
            .env("MIRRORD_TARGET_ENV_GREETING", "hello")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Control link: path, bearer token, registration.
    let (mut control, path, auth) = accept(&listener, &acceptor).await;
    assert_eq!(path, "/agents/connect");
    assert_eq!(auth, "Bearer token-one");
    let Message::Text(register) = next_frame(&mut control).await else {
        panic!("expected a JSON registration")
    };
    let register: serde_json::Value = serde_json::from_str(&register).unwrap();
    assert_eq!(register["type"], "register");
    assert_eq!(register["podName"], "api-7d9f-x2");
    assert_eq!(register["podNamespace"], "shop");
    assert_eq!(register["podIps"], serde_json::json!(["10.244.1.7"]));
    assert_eq!(register["targetPorts"], serde_json::json!([8080, 9090]));
    assert_eq!(register["protocolVersion"], "1.29.0");

    // A session: the agent dials back, one protocol message per Binary frame.
    control
        .send(Message::text(
            r#"{"type":"openSession","sessionId":"sess-1"}"#,
        ))
        .await
        .unwrap();
    let (mut session, path, auth) = accept(&listener, &acceptor).await;
    assert_eq!(path, "/agents/sessions/sess-1");
    assert_eq!(auth, "Bearer token-one");
    assert_eq!(
        ask(&mut session, ClientMessage::Ping).await,
        DaemonMessage::Pong
    );
    let v = semver::Version::new(1, 29, 0);
    assert_eq!(
        ask(
            &mut session,
            ClientMessage::SwitchProtocolVersion(v.clone())
        )
        .await,
        DaemonMessage::SwitchProtocolVersionResponse(v)
    );
    let env = ask(
        &mut session,
        ClientMessage::GetEnvVarsRequest(GetEnvVarsRequest::default()),
    )
    .await;
    let DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(env))) = env else {
        panic!("unexpected {env:?}")
    };
    assert_eq!(env.get("GREETING").map(String::as_str), Some("hello"));
    session.close(None).await.unwrap();
    drop(session);

    // The agent reports the end of the session on the control link.
    loop {
        match next_frame(&mut control).await {
            Message::Text(text) => {
                let ended: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(
                    ended,
                    serde_json::json!({"type": "sessionEnded", "sessionId": "sess-1"})
                );
                break;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }

    // Token rotated, link lost: the agent redials with the new token and registers again.
    std::fs::write(&token_file, "token-two\n").unwrap();
    control.close(None).await.unwrap();
    drop(control);
    let (mut control, path, auth) = accept(&listener, &acceptor).await;
    assert_eq!(path, "/agents/connect");
    assert_eq!(auth, "Bearer token-two");
    let Message::Text(register) = next_frame(&mut control).await else {
        panic!("expected a JSON registration")
    };
    assert!(register.contains(r#""type":"register""#), "{register}");

    // A path-traversing session id is refused without dialling anything.
    control
        .send(Message::text(
            r#"{"type":"openSession","sessionId":"../connect"}"#,
        ))
        .await
        .unwrap();
    control
        .send(Message::text(
            r#"{"type":"openSession","sessionId":"sess-2"}"#,
        ))
        .await
        .unwrap();
    let (_session, path, _) = accept(&listener, &acceptor).await;
    assert_eq!(path, "/agents/sessions/sess-2");
}

#[test]
fn wss_without_a_ca_is_a_start_up_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_mirrord-operator"))
        .arg("agent")
        .env("MIRRORD_AGENT_COORDINATOR_URL", "wss://localhost:1")
        .env_remove("MIRRORD_AGENT_COORDINATOR_CA")
        .env("MIRRORD_AGENT_REDIRECT", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("MIRRORD_AGENT_COORDINATOR_CA"), "{stderr}");
}
