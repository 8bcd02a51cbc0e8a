//! Incoming-traffic message types, shaped like mirrord-protocol 1.29 (§3.7, §3.8).
//!
//! The engine is written against these until `crate::protocol` provides the wire types; variant and
//! field names follow the spec so that switching is a change of imports plus the body forms.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri, Version};

/// `Filter`: a regex source.
pub type Filter = String;

/// `HttpFilter` (§3.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpFilter {
    Header(Filter),
    Path(Filter),
    Composite { all: bool, filters: Vec<HttpFilter> },
    Method(HttpMethodFilter),
    Body(HttpBodyFilter),
    HeaderJq(String),
}

/// `HttpMethodFilter` (§3.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpMethodFilter {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other(String),
}

/// `HttpBodyFilter` (§3.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpBodyFilter {
    Json { query: String, matches: Filter },
}

/// `LayerTcp` (§3.7): the mirror requests.
#[derive(Clone, Debug)]
pub enum LayerTcp {
    PortSubscribe(u16),
    ConnectionUnsubscribe(u64),
    PortUnsubscribe(u16),
    PortSubscribeFilteredHttp(u16, HttpFilter),
}

/// `StealType` (§3.8).
#[derive(Clone, Debug)]
pub enum StealType {
    All(u16),
    FilteredHttp(u16, Filter),
    FilteredHttpEx(u16, HttpFilter),
}

/// `TcpData` (§3.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpData {
    pub connection_id: u64,
    pub bytes: Bytes,
}

/// `InternalHttpBodyFrame` (§3.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InternalHttpBodyFrame {
    Data(Bytes),
    Trailers(HeaderMap),
}

/// `InternalHttpResponse<B>` (§3.8).
#[derive(Clone, Debug)]
pub struct InternalHttpResponse<B> {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: B,
}

/// `HttpResponse<B>` (§3.8).
#[derive(Clone, Debug)]
pub struct HttpResponse<B> {
    pub port: u16,
    pub connection_id: u64,
    pub request_id: u16,
    pub internal_response: InternalHttpResponse<B>,
}

/// `ChunkedRequestBodyV1` (§3.8), used for both directions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedRequestBodyV1 {
    pub frames: Vec<InternalHttpBodyFrame>,
    pub is_last: bool,
    pub connection_id: u64,
    pub request_id: u16,
}

/// `ChunkedRequestErrorV1` (§3.8).
#[derive(Clone, Debug)]
pub struct ChunkedRequestErrorV1 {
    pub connection_id: u64,
    pub request_id: u16,
}

/// `ChunkedResponse` (§3.8).
#[derive(Clone, Debug)]
pub enum ChunkedResponse {
    Start(HttpResponse<Vec<InternalHttpBodyFrame>>),
    Body(ChunkedRequestBodyV1),
    Error(ChunkedRequestErrorV1),
}

/// `LayerTcpSteal` (§3.8): the steal requests and the client's answers.
#[derive(Clone, Debug)]
pub enum LayerTcpSteal {
    PortSubscribe(StealType),
    ConnectionUnsubscribe(u64),
    PortUnsubscribe(u16),
    Data(TcpData),
    HttpResponse(HttpResponse<Bytes>),
    HttpResponseFramed(HttpResponse<Vec<InternalHttpBodyFrame>>),
    HttpResponseChunked(ChunkedResponse),
}

/// `NewTcpConnectionV1` (§3.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTcpConnectionV1 {
    pub connection_id: u64,
    pub remote_address: IpAddr,
    pub destination_port: u16,
    pub source_port: u16,
    pub local_address: IpAddr,
}

/// `InternalHttpBodyNew` (§3.8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalHttpBodyNew {
    pub frames: Vec<InternalHttpBodyFrame>,
    pub is_last: bool,
}

/// `InternalHttpRequest<B>` (§3.8).
#[derive(Clone, Debug)]
pub struct InternalHttpRequest<B> {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub version: Version,
    pub body: B,
}

/// `ChunkedRequestStartV2` (§3.8); `metadata` is `HttpRequestMetadata::V1` and `transport` is
/// always plain TCP here (the agent does not terminate TLS).
#[derive(Clone, Debug)]
pub struct ChunkedRequestStartV2 {
    pub connection_id: u64,
    pub request_id: u16,
    pub request: InternalHttpRequest<InternalHttpBodyNew>,
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// `ChunkedRequest` (§3.8), the forms this agent sends.
#[derive(Clone, Debug)]
pub enum ChunkedRequest {
    StartV2(Box<ChunkedRequestStartV2>),
    Body(ChunkedRequestBodyV1),
}

/// `ResponseError` variants this engine produces in `SubscribeResult`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscribeError {
    /// The port is held by another session in a way that cannot be shared (§5.9, stricter than
    /// the reference agent).
    PortAlreadyStolen(u16),
    /// The filter cannot be served (bad regex, unsupported kind); `ForbiddenWithReason` on the wire.
    Refused { reason: String },
}

/// `DaemonTcp` (§3.7), the forms this agent sends.
#[derive(Clone, Debug)]
pub enum DaemonTcp {
    NewConnectionV1(NewTcpConnectionV1),
    Data(TcpData),
    Close(u64),
    SubscribeResult(Result<u16, SubscribeError>),
    HttpRequestChunked(ChunkedRequest),
    /// `NewConnectionV2` with `transport: Tcp`.
    NewConnectionV2(NewTcpConnectionV1),
}

/// What the engine sends to a session.
#[derive(Clone, Debug)]
pub enum IncomingMessage {
    /// `DaemonMessage::Tcp`.
    Mirror(DaemonTcp),
    /// `DaemonMessage::TcpSteal`.
    Steal(DaemonTcp),
    /// `DaemonMessage::LogMessage` with level warn.
    Warn(String),
}
