//! HTTP messages carried by mirror/steal (spec §3.8) and the http-serde-compatible encodings of
//! their components (spec §1.5).
//!
//! Upstream encodes `InternalHttpRequest`, `InternalHttpResponse` and `InternalHttpBodyFrame`
//! through bincode's serde bridge with http-serde. The bytes follow the ordinary layout rules,
//! so these types get hand-written `Encode`/`Decode` impls instead of a serde dependency.

use std::net::SocketAddr;

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{AllowedEnumVariants, DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};

use super::tcp::IncomingTrafficTransportType;
use super::wire::{ConnectionId, Payload, Port, RequestId, unexpected_variant};

/// An HTTP request delivered by the agent. `B` is the body form (see `DaemonTcp`).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct HttpRequest<B> {
    pub internal_request: InternalHttpRequest<B>,
    pub connection_id: ConnectionId,
    pub request_id: RequestId,
    /// Original destination port.
    pub port: Port,
}

/// An HTTP response sent by the client. Field order differs from [`HttpRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct HttpResponse<B> {
    pub port: Port,
    pub connection_id: ConnectionId,
    pub request_id: RequestId,
    pub internal_response: InternalHttpResponse<B>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalHttpRequest<B> {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub version: Version,
    pub body: B,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalHttpResponse<B> {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: B,
}

/// A complete body as a list of frames (`HttpRequestFramed` / `HttpResponseFramed`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct InternalHttpBody(pub Vec<InternalHttpBodyFrame>);

/// Body of `ChunkedRequestStartV2`: the frames available so far and whether that is all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct InternalHttpBodyNew {
    pub frames: Vec<InternalHttpBodyFrame>,
    /// True = the body is complete; no `Body` messages follow.
    pub is_last: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InternalHttpBodyFrame {
    Data(Payload),
    Trailers(HeaderMap),
}

/// Payload of `DaemonTcp::HttpRequestChunked`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ChunkedRequest {
    StartV1(HttpRequest<Vec<InternalHttpBodyFrame>>),
    Body(ChunkedRequestBodyV1),
    ErrorV1(ChunkedRequestErrorV1),
    StartV2(ChunkedRequestStartV2),
    ErrorV2(ChunkedRequestErrorV2),
}

/// Payload of `LayerTcpSteal::HttpResponseChunked`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ChunkedResponse {
    Start(HttpResponse<Vec<InternalHttpBodyFrame>>),
    Body(ChunkedRequestBodyV1),
    Error(ChunkedRequestErrorV1),
}

/// More body frames of a chunked request or response (used in both directions).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ChunkedRequestBodyV1 {
    pub frames: Vec<InternalHttpBodyFrame>,
    /// True = no more frames for this request/response.
    pub is_last: bool,
    pub connection_id: ConnectionId,
    pub request_id: RequestId,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ChunkedRequestErrorV1 {
    pub connection_id: ConnectionId,
    pub request_id: RequestId,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ChunkedRequestStartV2 {
    pub connection_id: ConnectionId,
    pub request_id: RequestId,
    pub request: InternalHttpRequest<InternalHttpBodyNew>,
    pub metadata: HttpRequestMetadata,
    pub transport: IncomingTrafficTransportType,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum HttpRequestMetadata {
    V1 {
        /// Remote peer address and port.
        source: SocketAddr,
        /// Original destination address and port; its port is the request's port.
        destination: SocketAddr,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ChunkedRequestErrorV2 {
    pub connection_id: ConnectionId,
    pub request_id: RequestId,
    pub error_message: String,
}

impl<B: Encode> Encode for InternalHttpRequest<B> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.method.as_str().encode(encoder)?;
        self.uri.to_string().encode(encoder)?;
        encode_headers(&self.headers, encoder)?;
        encode_version(self.version, encoder)?;
        self.body.encode(encoder)
    }
}

impl<Context, B: Decode<Context>> Decode<Context> for InternalHttpRequest<B> {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(Self {
            method: decode_method(decoder)?,
            uri: decode_uri(decoder)?,
            headers: decode_headers(decoder)?,
            version: decode_version(decoder)?,
            body: B::decode(decoder)?,
        })
    }
}

impl<'de, Context, B: BorrowDecode<'de, Context>> BorrowDecode<'de, Context>
    for InternalHttpRequest<B>
{
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Ok(Self {
            method: decode_method(decoder)?,
            uri: decode_uri(decoder)?,
            headers: decode_headers(decoder)?,
            version: decode_version(decoder)?,
            body: B::borrow_decode(decoder)?,
        })
    }
}

impl<B: Encode> Encode for InternalHttpResponse<B> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.status.as_u16().encode(encoder)?;
        encode_version(self.version, encoder)?;
        encode_headers(&self.headers, encoder)?;
        self.body.encode(encoder)
    }
}

impl<Context, B: Decode<Context>> Decode<Context> for InternalHttpResponse<B> {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(Self {
            status: decode_status(decoder)?,
            version: decode_version(decoder)?,
            headers: decode_headers(decoder)?,
            body: B::decode(decoder)?,
        })
    }
}

impl<'de, Context, B: BorrowDecode<'de, Context>> BorrowDecode<'de, Context>
    for InternalHttpResponse<B>
{
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, DecodeError> {
        Ok(Self {
            status: decode_status(decoder)?,
            version: decode_version(decoder)?,
            headers: decode_headers(decoder)?,
            body: B::borrow_decode(decoder)?,
        })
    }
}

impl Encode for InternalHttpBodyFrame {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        match self {
            Self::Data(data) => {
                0u32.encode(encoder)?;
                data.encode(encoder)
            }
            Self::Trailers(headers) => {
                1u32.encode(encoder)?;
                encode_headers(headers, encoder)
            }
        }
    }
}

impl<Context> Decode<Context> for InternalHttpBodyFrame {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        match u32::decode(decoder)? {
            0 => Ok(Self::Data(Payload::decode(decoder)?)),
            1 => Ok(Self::Trailers(decode_headers(decoder)?)),
            found => {
                const ALLOWED: AllowedEnumVariants = AllowedEnumVariants::Range { min: 0, max: 1 };
                Err(unexpected_variant("InternalHttpBodyFrame", &ALLOWED, found))
            }
        }
    }
}
bincode::impl_borrow_decode!(InternalHttpBodyFrame);

fn invalid(what: &str, detail: impl std::fmt::Display) -> DecodeError {
    DecodeError::OtherString(format!("invalid {what}: {detail}"))
}

fn decode_method<Context, D: Decoder<Context = Context>>(
    decoder: &mut D,
) -> Result<Method, DecodeError> {
    let text = String::decode(decoder)?;
    Method::from_bytes(text.as_bytes()).map_err(|_| invalid("HTTP method", format!("{text:?}")))
}

fn decode_uri<Context, D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Uri, DecodeError> {
    let text = String::decode(decoder)?;
    Uri::try_from(text.as_str()).map_err(|err| invalid("URI", format!("{text:?}: {err}")))
}

/// The five version strings http-serde knows; note `HTTP/2.0`, not `HTTP/2`.
const VERSIONS: [(Version, &str); 5] = [
    (Version::HTTP_09, "HTTP/0.9"),
    (Version::HTTP_10, "HTTP/1.0"),
    (Version::HTTP_11, "HTTP/1.1"),
    (Version::HTTP_2, "HTTP/2.0"),
    (Version::HTTP_3, "HTTP/3.0"),
];

fn encode_version<E: Encoder>(version: Version, encoder: &mut E) -> Result<(), EncodeError> {
    match VERSIONS.iter().find(|(known, _)| *known == version) {
        Some((_, text)) => text.encode(encoder),
        None => Err(EncodeError::OtherString(format!(
            "HTTP version {version:?} has no wire form"
        ))),
    }
}

fn decode_version<Context, D: Decoder<Context = Context>>(
    decoder: &mut D,
) -> Result<Version, DecodeError> {
    let text = String::decode(decoder)?;
    VERSIONS
        .iter()
        .find(|(_, known)| *known == text)
        .map(|(version, _)| *version)
        .ok_or_else(|| invalid("HTTP version", format!("{text:?}")))
}

fn decode_status<Context, D: Decoder<Context = Context>>(
    decoder: &mut D,
) -> Result<StatusCode, DecodeError> {
    let code = u16::decode(decoder)?;
    StatusCode::from_u16(code).map_err(|_| invalid("HTTP status code", code))
}

/// Header map: entry count = distinct names; per name (first-insertion order) the name, then all
/// its values as `list<bytes>`.
fn encode_headers<E: Encoder>(headers: &HeaderMap, encoder: &mut E) -> Result<(), EncodeError> {
    (headers.keys_len() as u64).encode(encoder)?;
    for name in headers.keys() {
        name.as_str().encode(encoder)?;
        let values = headers.get_all(name);
        (values.iter().count() as u64).encode(encoder)?;
        for value in values {
            value.as_bytes().encode(encoder)?;
        }
    }
    Ok(())
}

/// Mirrors the reference decoder: a repeated name with exactly one value replaces the earlier
/// values, several values are appended, zero values add nothing.
fn decode_headers<Context, D: Decoder<Context = Context>>(
    decoder: &mut D,
) -> Result<HeaderMap, DecodeError> {
    let entries = usize::decode(decoder)?;
    // Bounds the loop by the decode limit before any work is done.
    decoder.claim_container_read::<(String, Vec<Vec<u8>>)>(entries)?;
    let mut headers = HeaderMap::new();
    for _ in 0..entries {
        decoder.unclaim_bytes_read(size_of::<(String, Vec<Vec<u8>>)>());
        let name = String::decode(decoder)?;
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| invalid("header name", format!("{name:?}")))?;
        let count = usize::decode(decoder)?;
        decoder.claim_container_read::<Vec<u8>>(count)?;
        let mut values = Vec::new();
        for _ in 0..count {
            decoder.unclaim_bytes_read(size_of::<Vec<u8>>());
            let value = Vec::<u8>::decode(decoder)?;
            let value = HeaderValue::from_bytes(&value)
                .map_err(|_| invalid("header value", format!("{name}: {value:?}")))?;
            values.push(value);
        }
        let too_many = |_| invalid("header map", "more than http's maximum number of entries");
        if let [value] = values.as_slice() {
            headers.try_insert(&name, value.clone()).map_err(too_many)?;
        } else {
            for value in values {
                headers.try_append(&name, value).map_err(too_many)?;
            }
        }
    }
    Ok(headers)
}
