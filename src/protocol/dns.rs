//! DNS requests and responses (spec §3.5).

use std::net::IpAddr;

use bincode::{Decode, Encode};

use super::error::RemoteResult;

/// Payload of `ClientMessage::GetAddrInfoRequest` (old form: IPv4 only).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetAddrInfoRequest {
    pub node: String,
}

/// Payload of `ClientMessage::GetAddrInfoRequestV2`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetAddrInfoRequestV2 {
    pub node: String,
    pub service_port: u16,
    pub family: AddressFamily,
    pub socktype: SockType,
    pub flags: i32,
    pub protocol: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum AddressFamily {
    Ipv4Only,
    Ipv6Only,
    Both,
    Any,
    UnknownAddressFamilyFromNewerClient,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum SockType {
    Stream,
    Dgram,
    Any,
    UnknownSockTypeFromNewerClient,
}

/// Payload of `DaemonMessage::GetAddrInfoResponse`, the answer to both request forms.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct GetAddrInfoResponse(pub RemoteResult<DnsLookup>);

#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct DnsLookup(pub Vec<LookupRecord>);

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LookupRecord {
    /// Owner name of the answer record, fully qualified with a trailing dot.
    pub name: String,
    pub ip: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DnsLookupError {
    pub kind: ResolveErrorKindInternal,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ResolveErrorKindInternal {
    Message(String),
    NoConnections,
    /// DNS response code (0 NOERROR/NODATA, 3 NXDOMAIN, ...).
    NoRecordsFound(u16),
    Proto,
    Timeout,
    Unknown,
    NotFound,
    PermissionDenied,
}

/// Payload of `ClientMessage::ReverseDnsLookup` (sent by the operator).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReverseDnsLookupRequest {
    pub ip_address: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReverseDnsLookupResponse {
    pub hostname: RemoteResult<String>,
}
