//! Top-level messages (spec §2) and the rarely used payloads of §3.2–§3.4 and §3.11.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use bincode::{Decode, Encode};
use semver::Version;

use super::dns::{
    GetAddrInfoRequest, GetAddrInfoRequestV2, GetAddrInfoResponse, ReverseDnsLookupRequest,
    ReverseDnsLookupResponse,
};
use super::error::RemoteResult;
use super::file::{FileRequest, FileResponse};
use super::outgoing::{
    DaemonSeqpacket, DaemonTcpOutgoing, DaemonUdpOutgoing, LayerSeqpacket, LayerTcpOutgoing,
    LayerUdpOutgoing,
};
use super::tcp::{DaemonTcp, LayerTcp, LayerTcpSteal};
use super::wire::Payload;

/// Client → agent.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ClientMessage {
    /// The client ends the session.
    Close,
    /// Mirror.
    Tcp(LayerTcp),
    /// Steal.
    TcpSteal(LayerTcpSteal),
    TcpOutgoing(LayerTcpOutgoing),
    UdpOutgoing(LayerUdpOutgoing),
    FileRequest(FileRequest),
    GetEnvVarsRequest(GetEnvVarsRequest),
    Ping,
    GetAddrInfoRequest(GetAddrInfoRequest),
    /// Deprecated.
    PauseTargetRequest(bool),
    /// Version negotiation; semver as its string form (serde bridge upstream).
    SwitchProtocolVersion(#[bincode(with_serde)] Version),
    ReadyForLogs,
    Vpn(ClientVpn),
    GetAddrInfoRequestV2(GetAddrInfoRequestV2),
    /// Operator only.
    OperatorPong(u128),
    /// Operator only.
    ReverseDnsLookup(ReverseDnsLookupRequest),
    SeqpacketOutgoing(LayerSeqpacket),
    /// Operator only; no reply.
    ShareLink(ShareLinkRequest),
}

/// Agent → client.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum DaemonMessage {
    /// Fatal error / termination reason.
    Close(String),
    /// Mirror traffic and subscription results.
    Tcp(DaemonTcp),
    /// Steal traffic and subscription results (same enum as mirror).
    TcpSteal(DaemonTcp),
    TcpOutgoing(DaemonTcpOutgoing),
    UdpOutgoing(DaemonUdpOutgoing),
    /// Only after `ReadyForLogs`.
    LogMessage(LogMessage),
    File(FileResponse),
    Pong,
    GetEnvVarsResponse(RemoteResult<RemoteEnvVars>),
    GetAddrInfoResponse(GetAddrInfoResponse),
    /// Deprecated.
    PauseTarget(DaemonPauseTarget),
    SwitchProtocolVersionResponse(#[bincode(with_serde)] Version),
    Vpn(ServerVpn),
    /// Operator only; an agent must never send it.
    OperatorPing(u128),
    ReverseDnsLookup(RemoteResult<ReverseDnsLookupResponse>),
    SeqpacketOutgoing(DaemonSeqpacket),
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LogMessage {
    pub message: String,
    pub level: LogLevel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum LogLevel {
    Warn,
    Error,
    /// Only for clients matching `INFO_LOG_VERSION`.
    Info,
}

/// Payload of `ClientMessage::GetEnvVarsRequest`. Set order on the wire is unspecified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct GetEnvVarsRequest {
    /// Exclusion patterns.
    pub env_vars_filter: HashSet<String>,
    /// Inclusion patterns (empty = everything).
    pub env_vars_select: HashSet<String>,
}

/// Environment variables, name → value. Map order on the wire is unspecified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct RemoteEnvVars(pub HashMap<String, String>);

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ClientVpn {
    GetNetworkConfiguration,
    OpenSocket,
    Packet(Payload),
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ServerVpn {
    NetworkConfiguration(NetworkConfiguration),
    Packet(Payload),
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct NetworkConfiguration {
    pub ip: IpAddr,
    pub net_mask: IpAddr,
    pub gateway: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum DaemonPauseTarget {
    PauseResponse {
        changed: bool,
        container_paused: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ShareLinkRequest {
    RegisterKey(String),
    RemoveKey(String),
}
