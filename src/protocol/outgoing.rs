//! Outgoing traffic: TCP, UDP, unix stream and unix seqpacket (spec §3.6).

use std::net::SocketAddr;
use std::path::PathBuf;

use bincode::{Decode, Encode};

use super::error::RemoteResult;
use super::wire::{ConnectionId, Payload, Uid};

/// Payload of `ClientMessage::TcpOutgoing` (TCP and unix stream sockets).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum LayerTcpOutgoing {
    Connect(LayerConnect),
    Write(LayerWrite),
    Close(LayerClose),
    ConnectV2(LayerConnectV2),
}

/// Payload of `ClientMessage::UdpOutgoing`; same layout as [`LayerTcpOutgoing`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum LayerUdpOutgoing {
    Connect(LayerConnect),
    Write(LayerWrite),
    Close(LayerClose),
    ConnectV2(LayerConnectV2),
}

/// Payload of `DaemonMessage::TcpOutgoing`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum DaemonTcpOutgoing {
    Connect(RemoteResult<DaemonConnect>),
    Read(RemoteResult<DaemonRead>),
    Close(ConnectionId),
    ConnectV2(DaemonConnectV2),
}

/// Payload of `DaemonMessage::UdpOutgoing`; same layout as [`DaemonTcpOutgoing`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum DaemonUdpOutgoing {
    Connect(RemoteResult<DaemonConnect>),
    Read(RemoteResult<DaemonRead>),
    Close(ConnectionId),
    ConnectV2(DaemonConnectV2),
}

/// Payload of `ClientMessage::SeqpacketOutgoing` (unix `SOCK_SEQPACKET`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum LayerSeqpacket {
    Write(LayerWrite),
    Close(LayerClose),
    ConnectV2(LayerConnectV2),
}

/// Payload of `DaemonMessage::SeqpacketOutgoing`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum DaemonSeqpacket {
    Read(RemoteResult<DaemonRead>),
    Close(ConnectionId),
    ConnectV2(DaemonConnectV2),
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LayerConnect {
    pub remote_address: SocketAddress,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LayerWrite {
    pub connection_id: ConnectionId,
    /// Empty = the client shut down its sending side.
    pub bytes: Payload,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LayerClose {
    pub connection_id: ConnectionId,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LayerConnectV2 {
    pub uid: Uid,
    pub remote_address: SocketAddress,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DaemonConnect {
    pub connection_id: ConnectionId,
    /// The connected peer.
    pub remote_address: SocketAddress,
    /// The agent-side local end.
    pub local_address: SocketAddress,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DaemonRead {
    pub connection_id: ConnectionId,
    /// Empty = the peer shut down its sending side.
    pub bytes: Payload,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DaemonConnectV2 {
    /// Copied from the request.
    pub uid: Uid,
    pub connect: RemoteResult<DaemonConnect>,
}

/// An IP or unix socket address. IPv6 flow-info and scope-id are not transmitted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub enum SocketAddress {
    Ip(SocketAddr),
    Unix(UnixAddr),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub enum UnixAddr {
    Pathname(PathBuf),
    /// The abstract name without the leading NUL byte.
    Abstract(Vec<u8>),
    Unnamed,
}

impl From<SocketAddr> for SocketAddress {
    fn from(addr: SocketAddr) -> Self {
        Self::Ip(addr)
    }
}
