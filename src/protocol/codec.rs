//! Stream codec: concatenated bincode messages without framing (spec §1.1, §1.6).
//!
//! The only way to find a message boundary is to decode the message, so the decoder retries a
//! full parse of the buffered bytes whenever enough new bytes have arrived. Truncated input waits
//! for more bytes; any other decode error is fatal for the connection (the stream cannot be
//! resynchronised). Declared lengths are checked against [`MAX_MESSAGE_SIZE`] before allocating.

use std::marker::PhantomData;

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use bincode::enc::write::Writer;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};
use bytes::{Buf, BytesMut};

use super::messages::{ClientMessage, DaemonMessage};

/// Hard cap on one message: on the buffered size of an incomplete message and on the memory its
/// declared lengths may claim (bincode's limit, which counts `len × size_of::<T>()` per container).
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

type WireConfig = Configuration<LittleEndian, Varint, Limit<MAX_MESSAGE_SIZE>>;

/// bincode `standard()` with the decode limit; the byte layout is exactly `standard()`'s.
pub const fn wire_config() -> WireConfig {
    bincode::config::standard().with_limit::<MAX_MESSAGE_SIZE>()
}

/// Why a stream could not be decoded or a message could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not a valid message; the connection must be closed.
    #[error("malformed message: {0}")]
    Malformed(#[source] DecodeError),
    /// The message declares or needs more than [`MAX_MESSAGE_SIZE`] bytes.
    #[error("message exceeds the {limit}-byte limit")]
    TooLarge { limit: usize },
    /// The stream ended in the middle of a message.
    #[error("stream ended inside a message ({buffered} bytes buffered)")]
    TruncatedAtEof { buffered: usize },
    /// The value cannot be represented on the wire (e.g. a non-UTF-8 path).
    #[error("cannot encode message: {0}")]
    Encode(#[source] EncodeError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Outcome of one decode attempt on a byte slice.
#[derive(Debug)]
pub enum Decoded<M> {
    /// A whole message and the number of bytes it used.
    Message(M, usize),
    /// The bytes are a proper prefix of a message that is at least this long in total.
    Incomplete { needed: usize },
}

/// Decodes one message from the start of `bytes`.
pub fn decode_from_slice<M: Decode<()>>(bytes: &[u8]) -> Result<Decoded<M>, CodecError> {
    match bincode::decode_from_slice::<M, _>(bytes, wire_config()) {
        Ok((message, used)) => Ok(Decoded::Message(message, used)),
        Err(DecodeError::UnexpectedEnd { additional }) => {
            // The parse depends only on the bytes read so far, so at least this many are needed.
            let needed = bytes.len().saturating_add(additional.max(1));
            if needed > MAX_MESSAGE_SIZE {
                Err(CodecError::TooLarge {
                    limit: MAX_MESSAGE_SIZE,
                })
            } else {
                Ok(Decoded::Incomplete { needed })
            }
        }
        Err(DecodeError::LimitExceeded) => Err(CodecError::TooLarge {
            limit: MAX_MESSAGE_SIZE,
        }),
        Err(err) => Err(CodecError::Malformed(err)),
    }
}

/// Appends the encoding of `message` to `dst`. On error `dst` is left unchanged.
pub fn encode<M: Encode>(message: &M, dst: &mut BytesMut) -> Result<(), CodecError> {
    let start = dst.len();
    bincode::encode_into_writer(message, BytesMutWriter(dst), wire_config()).map_err(|err| {
        dst.truncate(start);
        CodecError::Encode(err)
    })
}

/// Encodes `message` into a fresh vector.
pub fn encode_to_vec<M: Encode>(message: &M) -> Result<Vec<u8>, CodecError> {
    bincode::encode_to_vec(message, wire_config()).map_err(CodecError::Encode)
}

struct BytesMutWriter<'a>(&'a mut BytesMut);

impl Writer for BytesMutWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Incremental decoder of `In` messages and encoder of `Out` messages over a byte buffer.
///
/// Implements `tokio_util::codec::{Decoder, Encoder}`, so it can drive a `Framed` stream.
#[derive(Debug)]
pub struct ProtocolCodec<In, Out> {
    /// Buffered length below which a retry cannot succeed (from the last `Incomplete`).
    needed: usize,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> Default for ProtocolCodec<In, Out> {
    fn default() -> Self {
        Self {
            needed: 0,
            _types: PhantomData,
        }
    }
}

/// Agent side: decodes `ClientMessage`, encodes `DaemonMessage`.
pub type DaemonCodec = ProtocolCodec<ClientMessage, DaemonMessage>;
/// Client side: decodes `DaemonMessage`, encodes `ClientMessage`.
pub type ClientCodec = ProtocolCodec<DaemonMessage, ClientMessage>;

impl<In: Decode<()>, Out> tokio_util::codec::Decoder for ProtocolCodec<In, Out> {
    type Item = In;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        if src.is_empty() || src.len() < self.needed {
            return Ok(None);
        }
        match decode_from_slice::<In>(src)? {
            Decoded::Message(message, used) => {
                src.advance(used);
                self.needed = 0;
                Ok(Some(message))
            }
            Decoded::Incomplete { needed } => {
                self.needed = needed;
                src.reserve(needed - src.len());
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, CodecError> {
        match self.decode(src)? {
            Some(message) => Ok(Some(message)),
            None if src.is_empty() => Ok(None),
            None => Err(CodecError::TruncatedAtEof {
                buffered: src.len(),
            }),
        }
    }
}

impl<In, Out: Encode> tokio_util::codec::Encoder<Out> for ProtocolCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, message: Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode(&message, dst)
    }
}

impl<In, Out: Encode> tokio_util::codec::Encoder<&Out> for ProtocolCodec<In, Out> {
    type Error = CodecError;

    fn encode(&mut self, message: &Out, dst: &mut BytesMut) -> Result<(), CodecError> {
        encode(message, dst)
    }
}

#[cfg(test)]
mod tests {
    use tokio_util::codec::Decoder;

    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn two_messages_split_across_reads() {
        // Ping, then SwitchProtocolVersion("1.29.0"), delivered as `07 0a 06 31` + the rest.
        let bytes = hex("070a06312e32392e30");
        let mut codec = DaemonCodec::default();
        let mut buf = BytesMut::from(&bytes[..4]);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(ClientMessage::Ping));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert_eq!(&buf[..], &bytes[1..4]);
        buf.extend_from_slice(&bytes[4..]);
        assert_eq!(
            codec.decode(&mut buf).unwrap(),
            Some(ClientMessage::SwitchProtocolVersion(
                crate::protocol::version::PROTOCOL_VERSION
            ))
        );
        assert!(buf.is_empty());
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn unknown_variant_is_fatal_with_reason() {
        let mut codec = DaemonCodec::default();
        let mut buf = BytesMut::from(&[0x12u8][..]);
        let err = codec.decode(&mut buf).unwrap_err();
        assert!(matches!(
            err,
            CodecError::Malformed(DecodeError::UnexpectedVariant { found: 18, .. })
        ));
        assert!(err.to_string().contains("malformed"), "{err}");
    }

    #[test]
    fn huge_declared_length_is_rejected_without_waiting() {
        // DaemonMessage::Close with a declared string length of 2^32 bytes.
        let mut codec = ClientCodec::default();
        let mut buf = BytesMut::from(&hex("00fd0000000001000000")[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::TooLarge { .. })
        ));
        // Just above the limit: rejected by the decode limit, not allocated.
        let mut buf = BytesMut::from(&hex("00fc01000001")[..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn large_message_below_the_limit_arrives_in_pieces() {
        let payload = vec![7u8; 1 << 20];
        let message =
            DaemonMessage::TcpSteal(crate::protocol::DaemonTcp::Data(crate::protocol::TcpData {
                connection_id: 3,
                bytes: payload.into(),
            }));
        let mut encoded = BytesMut::new();
        encode(&message, &mut encoded).unwrap();
        let mut codec = ClientCodec::default();
        let mut buf = BytesMut::new();
        let mut decoded = None;
        for chunk in encoded.chunks(64 * 1024) {
            assert!(decoded.is_none());
            buf.extend_from_slice(chunk);
            decoded = codec.decode(&mut buf).unwrap();
        }
        assert_eq!(decoded, Some(message));
    }

    #[test]
    fn eof_inside_a_message_is_an_error() {
        let mut codec = DaemonCodec::default();
        let mut buf = BytesMut::from(&hex("0a06312e")[..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(CodecError::TruncatedAtEof { buffered: 4 })
        ));
    }

    #[test]
    fn deeply_nested_filter_is_rejected_not_overflowed() {
        // LayerTcp::PortSubscribeFilteredHttp(80, Composite{all, [Composite{all, [...]}]}) nested
        // far beyond MAX_FILTER_DEPTH.
        let mut bytes = hex("010350");
        for _ in 0..10_000 {
            bytes.extend_from_slice(&[0x02, 0x01, 0x01]);
        }
        bytes.extend_from_slice(&hex("0001610000"));
        let err = decode_from_slice::<ClientMessage>(&bytes).unwrap_err();
        assert!(err.to_string().contains("nesting"), "{err}");
        // The depth counter was released on the error path: a normal filter still decodes.
        let ok = hex("02000250020103000d782d757365723a20616c69636501042f6170690300");
        assert!(matches!(
            decode_from_slice::<ClientMessage>(&ok).unwrap(),
            Decoded::Message(_, 30)
        ));
    }

    #[test]
    fn non_utf8_path_fails_to_encode_and_leaves_buffer_untouched() {
        use std::os::unix::ffi::OsStrExt;
        let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"/tmp/\xff"));
        let message = ClientMessage::FileRequest(crate::protocol::FileRequest::Unlink(
            crate::protocol::UnlinkRequest { pathname: path },
        ));
        let mut buf = BytesMut::from(&b"xy"[..]);
        assert!(matches!(
            encode(&message, &mut buf),
            Err(CodecError::Encode(_))
        ));
        assert_eq!(&buf[..], b"xy");
    }
}
