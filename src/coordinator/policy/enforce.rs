//! The relay's hooks: mirror/steal subscriptions and outgoing connections checked against the
//! policies (and file requests against `fs`: missing, local, or refused for writing), answered in the
//! protocol as the CLI shows it (`ResponseError::ForbiddenWithReason`, or
//! `Forbidden` for clients older than protocol 1.17); env answers filtered by `env.exclude`; DNS
//! answers remembered for hostname rules.

use semver::Version;
use tracing::{debug, info};

use super::crd::Protocol;
use super::eval::IncomingMode;
use super::eval::{self, FileDecision, NamedPolicy, Refusal};
use super::files::{self, Answers, FileTracker};
use crate::coordinator::session::{SessionState, SessionTable};
use crate::protocol::version::MIRROR_POLICY_REASON_VERSION;
use crate::protocol::{
    BlockedAction, ClientMessage, DaemonConnectV2, DaemonMessage, DaemonTcpOutgoing,
    DaemonUdpOutgoing, FileRequest, FileResponse, GetAddrInfoResponse, HttpFilter,
    LayerTcpOutgoing, LayerUdpOutgoing, LogLevel, LogMessage, Port, RemoteEnvVars, ResponseError,
    SocketAddress, StealType,
};

/// A refused subscription: the text for the CLI's log and the error for `SubscribeResult`.
pub struct Refused {
    pub text: String,
    pub error: ResponseError,
}

pub fn subscription(
    table: &SessionTable,
    session: &SessionState,
    steal: bool,
    port: Port,
    filter: Option<&HttpFilter>,
    client_version: Option<&Version>,
) -> Option<Refused> {
    let gate = table.policy_gate()?;
    let mode = if steal {
        IncomingMode::Steal
    } else {
        IncomingMode::Mirror
    };
    let refusal = gate.incoming(session.spec.id, mode, port, filter).err()?;
    let text = refusal.to_string();
    info!(port, %text, "subscription refused by policy");
    let blocked_action = match (steal, filter) {
        (false, _) => BlockedAction::Mirror(port),
        (true, None) => BlockedAction::Steal(StealType::All(port)),
        (true, Some(f)) => BlockedAction::Steal(StealType::FilteredHttpEx(port, f.clone())),
    };
    let error = forbidden(&refusal, blocked_action, client_version);
    Some(Refused { text, error })
}

fn forbidden(
    refusal: &Refusal,
    blocked_action: BlockedAction,
    client_version: Option<&Version>,
) -> ResponseError {
    let policy_name = Some(refusal.policy.name.clone());
    if client_version.is_some_and(|v| MIRROR_POLICY_REASON_VERSION.matches(v)) {
        ResponseError::ForbiddenWithReason {
            blocked_action,
            policy_name,
            reason: refusal.to_string(),
        }
    } else {
        ResponseError::Forbidden {
            blocked_action,
            policy_name,
        }
    }
}

/// A client request the coordinator answers itself because a policy refuses it (outgoing TCP
/// connects and UDP sockets to IP addresses); `None` lets it go to the agent.
pub fn client_request(
    table: &SessionTable,
    session: &SessionState,
    msg: &ClientMessage,
    client_version: Option<&Version>,
) -> Option<DaemonMessage> {
    let gate = table.policy_gate()?;
    let (udp, uid, address) = match msg {
        ClientMessage::TcpOutgoing(LayerTcpOutgoing::Connect(c)) => {
            (false, None, &c.remote_address)
        }
        ClientMessage::TcpOutgoing(LayerTcpOutgoing::ConnectV2(c)) => {
            (false, Some(c.uid), &c.remote_address)
        }
        ClientMessage::UdpOutgoing(LayerUdpOutgoing::Connect(c)) => (true, None, &c.remote_address),
        ClientMessage::UdpOutgoing(LayerUdpOutgoing::ConnectV2(c)) => {
            (true, Some(c.uid), &c.remote_address)
        }
        _ => return None,
    };
    let SocketAddress::Ip(addr) = address else {
        return None;
    };
    let protocol = if udp { Protocol::UDP } else { Protocol::TCP };
    let refusal = gate
        .outgoing(session.spec.id, addr.ip(), addr.port(), protocol)
        .err()?;
    info!(%addr, text = %refusal, "outgoing connection refused by policy");
    let action = if udp {
        BlockedAction::OutgoingUdp(address.clone())
    } else {
        BlockedAction::OutgoingTcp(address.clone())
    };
    let error = forbidden(&refusal, action, client_version);
    Some(match (udp, uid) {
        (false, None) => DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Connect(Err(error))),
        (false, Some(uid)) => {
            DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::ConnectV2(DaemonConnectV2 {
                uid,
                connect: Err(error),
            }))
        }
        (true, None) => DaemonMessage::UdpOutgoing(DaemonUdpOutgoing::Connect(Err(error))),
        (true, Some(uid)) => {
            DaemonMessage::UdpOutgoing(DaemonUdpOutgoing::ConnectV2(DaemonConnectV2 {
                uid,
                connect: Err(error),
            }))
        }
    })
}

/// A file request: `Some(answer)` when the coordinator answers it itself because an `fs` rule
/// applies (the answer is `None` while the agent still owes earlier answers: it follows them);
/// `None`: it goes to the agent, tracked.
pub fn file_request(
    table: &SessionTable,
    session: &SessionState,
    files: &mut FileTracker,
    request: &FileRequest,
) -> Option<Option<DaemonMessage>> {
    let gate = table.policy_gate()?;
    let access = files.access(request);
    if let Some(access) = &access {
        let decision = gate.file(session.spec.id, access);
        if let Some(error) = files::refusal(request, access, &decision) {
            match &decision {
                FileDecision::Refused(refusal) => {
                    info!(paths = ?access.paths, text = %refusal, "file request refused by policy")
                }
                _ => debug!(paths = ?access.paths, ?decision, "file request answered by policy"),
            }
            let answer = request.error_response(error).map(DaemonMessage::File)?;
            return Some(files.answered(answer));
        }
    }
    files.forwarded(request, access);
    None
}

/// An agent's file answer on its way to the CLI, through the connection's tracker.
pub fn file_response(
    table: &SessionTable,
    session: &SessionState,
    files: &mut FileTracker,
    response: FileResponse,
) -> Answers {
    let Some(gate) = table.policy_gate() else {
        return Answers {
            to_cli: vec![DaemonMessage::File(response)],
            again: None,
        };
    };
    files.response(response, || {
        let policies = gate.in_force(session.spec.id);
        eval::not_found_matcher(&policies.iter().collect::<Vec<&NamedPolicy>>())
    })
}

/// An agent's answer on its way to the CLI: env variables a policy excludes are removed (the CLI
/// is told which, by log), DNS answers are remembered. Returns the log line to send, if any.
pub fn daemon_answer(
    table: &SessionTable,
    session: &SessionState,
    msg: &mut DaemonMessage,
) -> Option<LogMessage> {
    let gate = table.policy_gate()?;
    let id = session.spec.id;
    match msg {
        DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(vars))) => {
            let mut removed = Vec::new();
            vars.retain(|name, _| {
                if let Some(policy) = gate.env_excluded(id, name) {
                    removed.push(format!("{name} ({policy})"));
                    return false;
                }
                if let Some(why) = gate.secret_env_hidden(id, name) {
                    removed.push(format!("{name} ({why})"));
                    return false;
                }
                true
            });
            if removed.is_empty() {
                return None;
            }
            info!(removed = removed.len(), "env variables excluded by policy");
            Some(LogMessage {
                message: format!("environment variables left out: {}", removed.join(", ")),
                level: LogLevel::Warn,
            })
        }
        DaemonMessage::GetAddrInfoResponse(GetAddrInfoResponse(Ok(lookup))) => {
            for record in &lookup.0 {
                gate.resolved(id, &record.name, record.ip);
            }
            None
        }
        _ => None,
    }
}
