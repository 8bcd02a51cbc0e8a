//! Incoming traffic: mirror (`LayerTcp`), steal (`LayerTcpSteal`), the shared `DaemonTcp`, and
//! HTTP filters (spec §3.7, §3.8).

use std::net::IpAddr;

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{AllowedEnumVariants, DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};

use super::error::RemoteResult;
use super::http::{ChunkedRequest, ChunkedResponse, HttpRequest, HttpResponse, InternalHttpBody};
use super::wire::{ConnectionId, DepthGuard, Payload, Port, unexpected_variant};

/// Payload of `ClientMessage::Tcp` (mirror).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum LayerTcp {
    PortSubscribe(Port),
    ConnectionUnsubscribe(ConnectionId),
    PortUnsubscribe(Port),
    PortSubscribeFilteredHttp(Port, HttpFilter),
}

/// Payload of `ClientMessage::TcpSteal`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum LayerTcpSteal {
    PortSubscribe(StealType),
    ConnectionUnsubscribe(ConnectionId),
    PortUnsubscribe(Port),
    Data(TcpData),
    /// Legacy form: whole body as one byte string.
    HttpResponse(HttpResponse<Payload>),
    HttpResponseFramed(HttpResponse<InternalHttpBody>),
    HttpResponseChunked(ChunkedResponse),
}

/// Payload of both `DaemonMessage::Tcp` (mirror) and `DaemonMessage::TcpSteal` (steal).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum DaemonTcp {
    NewConnectionV1(NewTcpConnectionV1),
    Data(TcpData),
    Close(TcpClose),
    /// The subscribed port on success.
    SubscribeResult(RemoteResult<Port>),
    /// Legacy form: whole body as one byte string.
    HttpRequest(HttpRequest<Payload>),
    HttpRequestFramed(HttpRequest<InternalHttpBody>),
    HttpRequestChunked(ChunkedRequest),
    NewConnectionV2(NewTcpConnectionV2),
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct NewTcpConnectionV1 {
    pub connection_id: ConnectionId,
    /// IP of the remote peer that opened the connection.
    pub remote_address: IpAddr,
    /// Original destination port (before redirection).
    pub destination_port: Port,
    /// Port of the remote peer.
    pub source_port: Port,
    /// Local IP of the redirected socket accepted by the agent.
    pub local_address: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct NewTcpConnectionV2 {
    pub connection: NewTcpConnectionV1,
    pub transport: IncomingTrafficTransportType,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum IncomingTrafficTransportType {
    Tcp,
    /// The original connection was TLS, terminated by the agent; values negotiated with the peer.
    Tls {
        alpn_protocol: Option<Vec<u8>>,
        server_name: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TcpData {
    pub connection_id: ConnectionId,
    /// Empty = the sending side shut down.
    pub bytes: Payload,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct TcpClose {
    pub connection_id: ConnectionId,
}

/// What a steal subscription takes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub enum StealType {
    /// Every connection/request on the port.
    All(Port),
    /// Legacy: same as `FilteredHttpEx(port, HttpFilter::Header(filter))`.
    FilteredHttp(Port, Filter),
    FilteredHttpEx(Port, HttpFilter),
}

impl StealType {
    pub fn port(&self) -> Port {
        match self {
            Self::All(port) | Self::FilteredHttp(port, _) | Self::FilteredHttpEx(port, _) => *port,
        }
    }
}

/// A regex source (newtype over `str`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Filter(pub String);

/// A JSONPath expression (newtype over `str`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct JsonPathQuery(pub String);

/// A jq program source (newtype over `str`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct JqQuery(pub String);

/// HTTP request filter. Decoded by hand only to bound the nesting of `Composite`
/// ([`super::wire::MAX_FILTER_DEPTH`]); the layout is the derive layout.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HttpFilter {
    Header(Filter),
    Path(Filter),
    Composite { all: bool, filters: Vec<HttpFilter> },
    Method(HttpMethodFilter),
    Body(HttpBodyFilter),
    HeaderJq(JqQuery),
}

impl Encode for HttpFilter {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        match self {
            Self::Header(filter) => {
                0u32.encode(encoder)?;
                filter.encode(encoder)
            }
            Self::Path(filter) => {
                1u32.encode(encoder)?;
                filter.encode(encoder)
            }
            Self::Composite { all, filters } => {
                2u32.encode(encoder)?;
                all.encode(encoder)?;
                filters.encode(encoder)
            }
            Self::Method(method) => {
                3u32.encode(encoder)?;
                method.encode(encoder)
            }
            Self::Body(body) => {
                4u32.encode(encoder)?;
                body.encode(encoder)
            }
            Self::HeaderJq(query) => {
                5u32.encode(encoder)?;
                query.encode(encoder)
            }
        }
    }
}

impl<Context> Decode<Context> for HttpFilter {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let _depth = DepthGuard::enter()?;
        Ok(match u32::decode(decoder)? {
            0 => Self::Header(Filter::decode(decoder)?),
            1 => Self::Path(Filter::decode(decoder)?),
            2 => Self::Composite {
                all: bool::decode(decoder)?,
                filters: Vec::<HttpFilter>::decode(decoder)?,
            },
            3 => Self::Method(HttpMethodFilter::decode(decoder)?),
            4 => Self::Body(HttpBodyFilter::decode(decoder)?),
            5 => Self::HeaderJq(JqQuery::decode(decoder)?),
            found => {
                const ALLOWED: AllowedEnumVariants = AllowedEnumVariants::Range { min: 0, max: 5 };
                return Err(unexpected_variant("HttpFilter", &ALLOWED, found));
            }
        })
    }
}

impl<'de, Context> BorrowDecode<'de, Context> for HttpFilter {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Self::decode(decoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
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
    /// Any other method, as its text.
    Other(String),
}

impl HttpMethodFilter {
    /// The method text this filter matches (variants 0–8 stand for the upper-case names).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
            Self::Other(method) => method,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub enum HttpBodyFilter {
    Json {
        query: JsonPathQuery,
        matches: Filter,
    },
}
