//! `mirrord-operator probe`: an admin's end-to-end check of a target without installing mirrord.
//! It runs the mirrord CLI's sequence (operator-api.md §10.1) through kube-apiserver with the
//! caller's kubeconfig: a user certificate from the credentials API (CSR → `x-client-der`), the
//! WebSocket upgrade on `proxy/namespaces/<ns>/targets/<target>` with `x-session-id`, version
//! negotiation, then the requested commands (env, files, DNS, an outgoing connection, a
//! header-filtered steal answered with a fixed body) and a hold. Everything it sees is printed as
//! one JSON object per line (`event` names the kind) so shell tests can assert on it.
//!
//! [`ProbeConnection`] and [`run_plan`] work on any WebSocket stream, so tests drive them against
//! the in-process API router as well.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::protocol::codec::{Decoded, decode_from_slice, encode_to_vec};
use crate::protocol::*;

/// The protocol version the probe asks for (the relay answers the minimum of this and the agents').
const VERSION: (u64, u64, u64) = (1, 29, 0);
/// How long one answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the hold pings (the CLI pings so the operator sees the session alive).
const PING_EVERY: Duration = Duration::from_secs(5);
/// Largest file content read and printed.
const FILE_LIMIT: u64 = 64 * 1024;

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// kubeconfig context to use (default: the current context).
    #[arg(long, env = "MIRRORD_OPERATOR_CONTEXT")]
    pub context: Option<String>,
    /// Act as this user (impersonation, like `kubectl --as`).
    #[arg(long = "as")]
    pub as_user: Option<String>,
    /// Namespace of the target.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Target as `deployment/NAME`, `pod/NAME`, `deployment/NAME/container/C`..., or `targetless`.
    #[arg(long)]
    pub target: String,
    /// Session id (`x-session-id`); random when unset. Two probes with one id share a session.
    #[arg(long)]
    pub session_id: Option<u64>,
    /// `x-client-name` (shown in `kubectl get sessions` as `<user>/<name>@<host>`).
    #[arg(long, default_value = "probe")]
    pub client_name: String,
    /// `on_concurrent_steal`: abort, continue or override.
    #[arg(long, default_value = "abort")]
    pub on_concurrent_steal: String,
    /// `rmq_splits` as the CLI sends it: `{"<queue id>": {"<header>": "<regex>"}}`.
    #[arg(long, value_parser = json_object)]
    pub rmq_splits: Option<String>,
    /// `sqs_splits` as the CLI sends it: `{"<queue id>": {"<attribute>": "<regex>"}}`.
    #[arg(long, value_parser = json_object)]
    pub sqs_splits: Option<String>,
    /// `sqs_jq_filters` as the CLI sends it: `{"<queue id>": "<jq program>"}`.
    #[arg(long, value_parser = json_object)]
    pub sqs_jq_filters: Option<String>,
    #[command(flatten)]
    pub plan: Plan,
}

/// A connect parameter that must be a JSON object (caught here rather than as the operator's 400).
fn json_object(text: &str) -> Result<String, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(_)) => Ok(text.to_owned()),
        Ok(_) => Err("expected a JSON object".into()),
        Err(e) => Err(format!("not JSON: {e}")),
    }
}

/// What to do once connected, in this order.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Plan {
    /// Print the target's environment.
    #[arg(long)]
    pub env: bool,
    /// Read a file of the target (repeatable).
    #[arg(long = "read-file")]
    pub files: Vec<String>,
    /// Resolve a name from the target (repeatable).
    #[arg(long)]
    pub dns: Vec<String>,
    /// Connect from the target to this address, send `--send` and print the first reply.
    #[arg(long)]
    pub connect: Option<SocketAddr>,
    /// What to send on `--connect`.
    #[arg(long, default_value = "ping")]
    pub send: String,
    /// Steal this port with `--header-filter`.
    #[arg(long)]
    pub steal: Option<u16>,
    /// Header filter regex for `--steal`.
    #[arg(long, requires = "steal")]
    pub header_filter: Option<String>,
    /// Steal every request of the port, without a filter (as `mirrord` does without
    /// `http_filter`).
    #[arg(long, requires = "steal", conflicts_with = "header_filter")]
    pub unfiltered: bool,
    /// Body answered to every stolen request.
    #[arg(long, default_value = "stolen by probe")]
    pub answer: String,
    /// Seconds to stay connected afterwards (answering stolen requests); 0 = leave at once.
    #[arg(long, default_value_t = 0)]
    pub hold: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Admin(#[from] super::AdminError),
    #[error("the target string {0:?} is not KIND/NAME[/container/CONTAINER]")]
    Target(String),
    #[error("making the CSR: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("getting a user certificate from the operator: {0}")]
    Credential(String),
    #[error("the WebSocket upgrade through the API server failed: {0}")]
    Upgrade(kube::Error),
    #[error("the connection failed: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("the operator sent a frame that is not one protocol message: {0}")]
    Frame(String),
    #[error("no answer within {ANSWER_TIMEOUT:?} while waiting for {0}")]
    Timeout(&'static str),
    #[error("the connection ended while waiting for {0}")]
    Ended(&'static str),
    #[error("unexpected answer while waiting for {0}: {1}")]
    Unexpected(&'static str, String),
}

impl ProbeError {
    /// Label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Admin(e) => e.label(),
            Self::Target(_) => "target",
            Self::Csr(_) => "csr",
            Self::Credential(_) => "credential",
            Self::Upgrade(_) => "upgrade",
            Self::WebSocket(_) => "websocket",
            Self::Frame(_) => "frame",
            Self::Timeout(_) => "timeout",
            Self::Ended(_) => "ended",
            Self::Unexpected(..) => "unexpected",
        }
    }
}

/// How a plan ended (the process exit code tells shells apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every step ran and the hold elapsed.
    Done,
    /// The steal was refused (another session's filter overlaps).
    Refused,
    /// The operator ended the session (`Close(reason)`, e.g. killed).
    Closed(String),
}

impl Outcome {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Done => 0,
            Self::Refused => 2,
            Self::Closed(_) => 3,
        }
    }
}

/// `deployment/web` → `deployment.web` (the path segment the CLI uses); `targetless` as is.
pub fn target_segment(target: &str) -> Result<String, ProbeError> {
    if target == "targetless" {
        return Ok(target.to_owned());
    }
    let parts: Vec<&str> = target.split('/').collect();
    let valid = matches!(parts.len(), 2 | 4)
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        && (parts.len() == 2 || parts[2] == "container");
    if !valid {
        return Err(ProbeError::Target(target.to_owned()));
    }
    Ok(parts.join("."))
}

/// One connection to the operator: one protocol message per Binary frame.
pub struct ProbeConnection<S> {
    ws: WebSocketStream<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ProbeConnection<S> {
    pub fn new(ws: WebSocketStream<S>) -> Self {
        ProbeConnection { ws }
    }

    pub async fn send(&mut self, msg: &ClientMessage) -> Result<(), ProbeError> {
        let bytes = encode_to_vec(msg).map_err(|e| ProbeError::Frame(e.to_string()))?;
        self.ws.send(Message::binary(bytes)).await?;
        Ok(())
    }

    /// The next message; `None` when the connection ended. Waits at most `wait`.
    pub async fn recv_within(
        &mut self,
        wait: Duration,
        what: &'static str,
    ) -> Result<Option<DaemonMessage>, ProbeError> {
        loop {
            let frame = match tokio::time::timeout(wait, self.ws.next()).await {
                Err(_) => return Err(ProbeError::Timeout(what)),
                Ok(None) | Ok(Some(Ok(Message::Close(_)))) => return Ok(None),
                Ok(Some(Err(error))) => return Err(error.into()),
                Ok(Some(Ok(frame))) => frame,
            };
            let bytes = match frame {
                Message::Binary(bytes) => bytes,
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return Err(ProbeError::Frame(format!("{other:?}"))),
            };
            return match decode_from_slice::<DaemonMessage>(&bytes) {
                Ok(Decoded::Message(msg, used)) if used == bytes.len() => Ok(Some(msg)),
                Ok(Decoded::Message(_, used)) => Err(ProbeError::Frame(format!(
                    "{} trailing bytes",
                    bytes.len() - used
                ))),
                Ok(Decoded::Incomplete { .. }) => Err(ProbeError::Frame("truncated".into())),
                Err(error) => Err(ProbeError::Frame(error.to_string())),
            };
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// The WebSocket itself, for frames that are not protocol messages (tests send malformed
    /// ones).
    pub fn websocket(&mut self) -> &mut WebSocketStream<S> {
        &mut self.ws
    }
}

/// Runs the plan, printing events through `emit`.
pub async fn run_plan<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut ProbeConnection<S>,
    plan: &Plan,
    emit: &mut (dyn FnMut(Value) + Send),
) -> Result<Outcome, ProbeError> {
    let mut step = Stepper { conn, emit };
    let version = semver::Version::new(VERSION.0, VERSION.1, VERSION.2);
    step.conn
        .send(&ClientMessage::SwitchProtocolVersion(version))
        .await?;
    match step.answer("version").await? {
        DaemonMessage::SwitchProtocolVersionResponse(v) => {
            (step.emit)(json!({"event": "version", "version": v.to_string()}))
        }
        DaemonMessage::Close(reason) => return Ok(step.closed(reason)),
        other => return Err(unexpected("version", other)),
    }
    step.conn.send(&ClientMessage::ReadyForLogs).await?;
    if plan.env {
        step.conn
            .send(&ClientMessage::GetEnvVarsRequest(GetEnvVarsRequest {
                env_vars_filter: Default::default(),
                env_vars_select: ["*".to_owned()].into(),
            }))
            .await?;
        match step.answer("env").await? {
            DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(vars))) => {
                (step.emit)(json!({"event": "env", "vars": vars}))
            }
            DaemonMessage::GetEnvVarsResponse(Err(e)) => {
                (step.emit)(json!({"event": "env", "error": format!("{e:?}")}))
            }
            DaemonMessage::Close(reason) => return Ok(step.closed(reason)),
            other => return Err(unexpected("env", other)),
        }
    }
    for path in &plan.files {
        if let Some(outcome) = step.read_file(path).await? {
            return Ok(outcome);
        }
    }
    for host in &plan.dns {
        step.conn
            .send(&ClientMessage::GetAddrInfoRequest(GetAddrInfoRequest {
                node: host.clone(),
            }))
            .await?;
        match step.answer("dns").await? {
            DaemonMessage::GetAddrInfoResponse(GetAddrInfoResponse(Ok(DnsLookup(records)))) => {
                let addresses: Vec<String> = records.iter().map(|r| r.ip.to_string()).collect();
                (step.emit)(json!({"event": "dns", "host": host, "addresses": addresses}))
            }
            DaemonMessage::GetAddrInfoResponse(GetAddrInfoResponse(Err(e))) => {
                (step.emit)(json!({"event": "dns", "host": host, "error": format!("{e:?}")}))
            }
            DaemonMessage::Close(reason) => return Ok(step.closed(reason)),
            other => return Err(unexpected("dns", other)),
        }
    }
    if let Some(remote) = plan.connect
        && let Some(outcome) = step.outgoing(remote, &plan.send).await?
    {
        return Ok(outcome);
    }
    if let Some(port) = plan.steal {
        let filter = plan.header_filter.clone().unwrap_or_else(|| ".*".into());
        let steal = if plan.unfiltered {
            StealType::All(port)
        } else {
            StealType::FilteredHttpEx(port, HttpFilter::Header(Filter(filter.clone())))
        };
        step.conn
            .send(&ClientMessage::TcpSteal(LayerTcpSteal::PortSubscribe(
                steal,
            )))
            .await?;
        match step.answer("the steal subscription").await? {
            DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(Ok(port))) => {
                let filter = (!plan.unfiltered).then_some(filter);
                (step.emit)(json!({"event": "subscribed", "port": port, "filter": filter}))
            }
            DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(Err(e))) => {
                (step.emit)(json!({"event": "refused", "port": port, "error": format!("{e:?}")}));
                return Ok(Outcome::Refused);
            }
            DaemonMessage::Close(reason) => return Ok(step.closed(reason)),
            other => return Err(unexpected("the steal subscription", other)),
        }
    }
    step.hold(Duration::from_secs(plan.hold), plan).await
}

fn unexpected(what: &'static str, msg: DaemonMessage) -> ProbeError {
    let mut text = format!("{msg:?}");
    text.truncate(300);
    ProbeError::Unexpected(what, text)
}

struct Stepper<'a, S> {
    conn: &'a mut ProbeConnection<S>,
    emit: &'a mut (dyn FnMut(Value) + Send),
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stepper<'_, S> {
    /// The next message that is not a log (logs are printed) nor a stray close of an earlier
    /// connection.
    async fn answer(&mut self, what: &'static str) -> Result<DaemonMessage, ProbeError> {
        loop {
            match self.conn.recv_within(ANSWER_TIMEOUT, what).await? {
                None => return Err(ProbeError::Ended(what)),
                Some(DaemonMessage::LogMessage(log)) => self.log(log),
                Some(DaemonMessage::TcpSteal(DaemonTcp::Close(_)) | DaemonMessage::Pong) => {}
                Some(other) => return Ok(other),
            }
        }
    }

    fn log(&mut self, log: LogMessage) {
        (self.emit)(
            json!({"event": "log", "level": format!("{:?}", log.level), "message": log.message}),
        )
    }

    fn closed(&mut self, reason: String) -> Outcome {
        (self.emit)(json!({"event": "closed", "reason": reason}));
        Outcome::Closed(reason)
    }

    async fn read_file(&mut self, path: &str) -> Result<Option<Outcome>, ProbeError> {
        self.conn
            .send(&ClientMessage::FileRequest(FileRequest::Open(
                OpenFileRequest {
                    path: path.into(),
                    open_options: OpenOptionsInternal {
                        read: true,
                        ..Default::default()
                    },
                },
            )))
            .await?;
        let fd = match self.answer("a file open").await? {
            DaemonMessage::File(FileResponse::Open(Ok(OpenFileResponse { fd }))) => fd,
            DaemonMessage::File(FileResponse::Open(Err(e))) => {
                (self.emit)(json!({"event": "file", "path": path, "error": format!("{e:?}")}));
                return Ok(None);
            }
            DaemonMessage::Close(reason) => return Ok(Some(self.closed(reason))),
            other => return Err(unexpected("a file open", other)),
        };
        self.conn
            .send(&ClientMessage::FileRequest(FileRequest::Read(
                ReadFileRequest {
                    remote_fd: fd,
                    buffer_size: FILE_LIMIT,
                },
            )))
            .await?;
        let event = match self.answer("a file read").await? {
            DaemonMessage::File(FileResponse::Read(Ok(read))) => {
                json!({"event": "file", "path": path,
                "content": String::from_utf8_lossy(read.bytes.0.as_ref())})
            }
            DaemonMessage::File(FileResponse::Read(Err(e))) => {
                json!({"event": "file", "path": path, "error": format!("{e:?}")})
            }
            DaemonMessage::Close(reason) => return Ok(Some(self.closed(reason))),
            other => return Err(unexpected("a file read", other)),
        };
        (self.emit)(event);
        // Close gets no answer.
        self.conn
            .send(&ClientMessage::FileRequest(FileRequest::Close(
                CloseFileRequest { fd },
            )))
            .await?;
        Ok(None)
    }

    async fn outgoing(
        &mut self,
        remote: SocketAddr,
        send: &str,
    ) -> Result<Option<Outcome>, ProbeError> {
        self.conn
            .send(&ClientMessage::TcpOutgoing(LayerTcpOutgoing::Connect(
                LayerConnect {
                    remote_address: SocketAddress::Ip(remote),
                },
            )))
            .await?;
        let connection_id = match self.answer("an outgoing connect").await? {
            DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Connect(Ok(c))) => c.connection_id,
            DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Connect(Err(e))) => {
                (self.emit)(
                    json!({"event": "outgoing", "remote": remote.to_string(), "error": format!("{e:?}")}),
                );
                return Ok(None);
            }
            DaemonMessage::Close(reason) => return Ok(Some(self.closed(reason))),
            other => return Err(unexpected("an outgoing connect", other)),
        };
        let write = |bytes: Vec<u8>| {
            ClientMessage::TcpOutgoing(LayerTcpOutgoing::Write(LayerWrite {
                connection_id,
                bytes: Payload::from(bytes),
            }))
        };
        self.conn.send(&write(send.as_bytes().to_vec())).await?;
        // Everything until the peer shuts its side (bounded: the servers probed answer and close).
        let mut reply = Vec::new();
        let (mut peer_closed, mut agent_closed) = (false, false);
        while !peer_closed && reply.len() < FILE_LIMIT as usize {
            match self.answer("an outgoing reply").await? {
                DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Read(Ok(read)))
                    if read.connection_id == connection_id =>
                {
                    peer_closed = read.bytes.0.is_empty();
                    reply.extend_from_slice(read.bytes.0.as_ref());
                }
                DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Close(id)) if id == connection_id => {
                    (peer_closed, agent_closed) = (true, true);
                }
                DaemonMessage::Close(reason) => return Ok(Some(self.closed(reason))),
                other => return Err(unexpected("an outgoing reply", other)),
            }
        }
        (self.emit)(json!({"event": "outgoing", "remote": remote.to_string(),
            "reply": String::from_utf8_lossy(&reply)}));
        // Shut our side; the agent then closes the connection (its Close is skipped later).
        if !agent_closed {
            self.conn.send(&write(Vec::new())).await?;
        }
        Ok(None)
    }

    /// Answers stolen requests with the plan's body until the hold ends or the operator closes.
    async fn hold(&mut self, hold: Duration, plan: &Plan) -> Result<Outcome, ProbeError> {
        let deadline = tokio::time::Instant::now() + hold;
        let mut next_ping = tokio::time::Instant::now() + PING_EVERY;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                (self.emit)(json!({"event": "done"}));
                return Ok(Outcome::Done);
            }
            if now >= next_ping {
                self.conn.send(&ClientMessage::Ping).await?;
                next_ping = now + PING_EVERY;
            }
            let wait = deadline.min(next_ping) - now;
            let msg = match self.conn.recv_within(wait, "the hold").await {
                Err(ProbeError::Timeout(_)) => continue,
                Err(e) => return Err(e),
                Ok(None) => {
                    (self.emit)(json!({"event": "disconnected"}));
                    return Err(ProbeError::Ended("the hold"));
                }
                Ok(Some(msg)) => msg,
            };
            match msg {
                DaemonMessage::TcpSteal(DaemonTcp::HttpRequestChunked(
                    ChunkedRequest::StartV2(start),
                )) => {
                    let request = &start.request;
                    let headers: serde_json::Map<String, Value> = request
                        .headers
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.as_str().to_owned(),
                                Value::from(String::from_utf8_lossy(v.as_bytes())),
                            )
                        })
                        .collect();
                    (self.emit)(
                        json!({"event": "request", "connection_id": start.connection_id,
                        "request_id": start.request_id, "method": request.method.as_str(),
                        "path": request.uri.to_string(), "headers": headers}),
                    );
                    let port = plan.steal.unwrap_or_default();
                    self.conn
                        .send(&ClientMessage::TcpSteal(LayerTcpSteal::HttpResponse(
                            HttpResponse {
                                port,
                                connection_id: start.connection_id,
                                request_id: start.request_id,
                                internal_response: InternalHttpResponse {
                                    status: http::StatusCode::OK,
                                    version: http::Version::HTTP_11,
                                    headers: http::HeaderMap::new(),
                                    body: Payload::from(plan.answer.as_bytes().to_vec()),
                                },
                            },
                        )))
                        .await?;
                }
                DaemonMessage::LogMessage(log) => self.log(log),
                DaemonMessage::Close(reason) => return Ok(self.closed(reason)),
                DaemonMessage::Pong | DaemonMessage::TcpSteal(DaemonTcp::Close(_)) => {}
                DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Close(_)) => {}
                other => {
                    let mut text = format!("{other:?}");
                    text.truncate(300);
                    (self.emit)(json!({"event": "other", "message": text}))
                }
            }
        }
    }
}

/// A fresh P-256 key and a CSR for it with `CN=<name>` (PEM).
pub fn csr_pem(name: &str) -> Result<String, ProbeError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    Ok(params.serialize_request(&key)?.pem()?)
}

/// The `status.certificate` of a credential answer as base64 DER (`x-client-der`).
pub fn client_der(credential: &Value) -> Result<String, ProbeError> {
    let pem = credential
        .pointer("/status/certificate")
        .and_then(Value::as_str)
        .ok_or_else(|| ProbeError::Credential("the answer has no status.certificate".into()))?;
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .ok_or_else(|| ProbeError::Credential("status.certificate holds no certificate".into()))?
        .map_err(|e| ProbeError::Credential(e.to_string()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(der))
}

fn random_session_id() -> u64 {
    let mut bytes = [0u8; 8];
    // SystemRandom only fails without an OS random source; fall back to the clock then.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = (nanos as u64 ^ u64::from(std::process::id())).to_le_bytes();
    }
    u64::from_le_bytes(bytes)
}

fn with_user(
    mut builder: http::request::Builder,
    as_user: &Option<String>,
) -> http::request::Builder {
    if let Some(user) = as_user {
        builder = builder.header("impersonate-user", user);
    }
    builder
}

fn print(event: Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{event}");
    let _ = out.flush();
}

/// `mirrord-operator probe`: prints JSON lines; exit code 0 done, 2 steal refused, 3 closed by
/// the operator, 1 error.
pub async fn probe(args: ProbeArgs) -> Result<Outcome, ProbeError> {
    let segment = target_segment(&args.target)?;
    let client = super::kube_client(args.context.clone()).await?;
    let credential = serde_json::to_vec(&json!({
        "apiVersion": "operator.metalbear.co/v1",
        "kind": "MirrordClusterOperatorUserCredential",
        "metadata": {"generateName": "probe-"},
        "spec": {"csr": csr_pem(&args.client_name)?},
    }))
    .map_err(|e| ProbeError::Credential(e.to_string()))?;
    let request = with_user(
        http::Request::post("/apis/operator.metalbear.co/v1/mirrordclusteroperatorusercredentials")
            .header("content-type", "application/json"),
        &args.as_user,
    )
    .body(credential)
    .map_err(|e| ProbeError::Credential(e.to_string()))?;
    let credential: Value = client
        .request(request)
        .await
        .map_err(|e| ProbeError::Credential(e.to_string()))?;
    let der = client_der(&credential)?;
    let id = args.session_id.unwrap_or_else(random_session_id);
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("connect", "true")
        .append_pair("on_concurrent_steal", &args.on_concurrent_steal)
        .append_pair("key", &format!("probe-{id:x}"));
    for (name, value) in [
        ("rmq_splits", &args.rmq_splits),
        ("sqs_splits", &args.sqs_splits),
        ("sqs_jq_filters", &args.sqs_jq_filters),
    ] {
        if let Some(value) = value {
            query.append_pair(name, value);
        }
    }
    let query = query.finish();
    let path = format!(
        "/apis/operator.metalbear.co/v1/proxy/namespaces/{}/targets/{segment}?{query}",
        args.namespace
    );
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let request = with_user(http::Request::get(&path), &args.as_user)
        .header("x-session-id", id.to_string())
        .header("x-client-der", der)
        .header("x-client-name", &args.client_name)
        .header("x-client-hostname", hostname.trim())
        .header("x-mirrord-cli-version", "3.250.0")
        .body(Vec::new())
        .map_err(|e| ProbeError::Credential(e.to_string()))?;
    let connection = match client.connect(request).await {
        Ok(connection) => connection,
        // A queue split overlapping another session's is refused before the upgrade (409 naming
        // that session): the same outcome as a refused steal.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            print(
                json!({"event": "refused", "session_id": format!("{id:X}"), "code": status.code,
                "reason": status.reason, "message": status.message}),
            );
            return Ok(Outcome::Refused);
        }
        Err(e) => return Err(ProbeError::Upgrade(e)),
    };
    print(
        json!({"event": "connected", "session_id": format!("{id:X}"), "target": args.target,
        "namespace": args.namespace}),
    );
    let mut conn = ProbeConnection::new(connection.into_stream());
    let outcome = run_plan(&mut conn, &args.plan, &mut print).await;
    conn.close().await;
    outcome
}

/// Entry point of the subcommand.
pub fn main(args: ProbeArgs, runtime: tokio::runtime::Runtime) -> ExitCode {
    match runtime.block_on(probe(args)) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(error) => {
            tracing::error!(%error, label = error.label(), "probe failed");
            print(json!({"event": "error", "kind": error.label(), "message": error.to_string()}));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_become_path_segments() {
        assert_eq!(target_segment("deployment/web").unwrap(), "deployment.web");
        assert_eq!(target_segment("targetless").unwrap(), "targetless");
        assert_eq!(
            target_segment("pod/web-1/container/app").unwrap(),
            "pod.web-1.container.app"
        );
        for bad in [
            "web",
            "deployment/",
            "a/b/c",
            "a/b/image/c",
            "pod/a b",
            "pod/x?y",
        ] {
            assert!(target_segment(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn csr_names_the_client() {
        let pem = csr_pem("jane").unwrap();
        let csr = rcgen::CertificateSigningRequestParams::from_pem(&pem).unwrap();
        let cn = csr
            .params
            .distinguished_name
            .get(&rcgen::DnType::CommonName)
            .cloned();
        assert!(
            matches!(cn, Some(rcgen::DnValue::Utf8String(ref s)) if s == "jane"),
            "{cn:?}"
        );
    }

    #[test]
    fn credential_without_certificate_is_a_clear_error() {
        let err = client_der(&json!({"status": {}})).unwrap_err();
        assert!(err.to_string().contains("status.certificate"), "{err}");
        let err = client_der(&json!({"status": {"certificate": "garbage"}})).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
    }
}
