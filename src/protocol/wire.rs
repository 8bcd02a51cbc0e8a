//! Small wire-level building blocks shared by several message families.

use std::cell::Cell;
use std::fmt;
use std::ops::Deref;

use bincode::de::Decoder;
use bincode::de::read::Reader;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};
use bytes::Bytes;

/// Port number as carried on the wire (`u16` varint).
pub type Port = u16;
/// Connection identifier (`u64` varint), allocated by the agent.
pub type ConnectionId = u64;
/// HTTP request identifier within a connection (`u16` varint).
pub type RequestId = u16;

/// A data-carrying byte string (`bytes`: u64 varint length + raw bytes).
///
/// Backed by [`Bytes`] so that traffic can be forwarded without copying.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Payload(pub Bytes);

/// Bytes shown when debug-printing a payload; traffic can be megabytes and ends up in logs.
const PAYLOAD_DEBUG_PREFIX: usize = 64;

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() <= PAYLOAD_DEBUG_PREFIX {
            write!(f, "Payload({:?})", self.0)
        } else {
            let prefix = self.0.slice(..PAYLOAD_DEBUG_PREFIX);
            write!(f, "Payload({} bytes: {:?}...)", self.0.len(), prefix)
        }
    }
}

impl Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Payload {
    fn from(value: Vec<u8>) -> Self {
        Self(value.into())
    }
}

impl From<Bytes> for Payload {
    fn from(value: Bytes) -> Self {
        Self(value)
    }
}

impl From<&'static [u8]> for Payload {
    fn from(value: &'static [u8]) -> Self {
        Self(Bytes::from_static(value))
    }
}

impl From<&'static str> for Payload {
    fn from(value: &'static str) -> Self {
        Self(Bytes::from_static(value.as_bytes()))
    }
}

impl Encode for Payload {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.0.as_ref().encode(encoder)
    }
}

impl<Context> Decode<Context> for Payload {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let len = usize::decode(decoder)?;
        // Checked against the configured limit before anything is allocated.
        decoder.claim_bytes_read(len)?;
        // Slice readers can lend the bytes: copy them once instead of zero-filling a buffer
        // and copying into it.
        if let Some(bytes) = decoder.reader().peek_read(len) {
            let payload = Bytes::copy_from_slice(bytes);
            decoder.reader().consume(len);
            return Ok(Self(payload));
        }
        // Too few bytes buffered (or a reader without peeking): `read` reports how many are
        // missing, which the stream codec uses to wait.
        let mut buffer = vec![0; len];
        decoder.reader().read(&mut buffer)?;
        Ok(Self::from(buffer))
    }
}
bincode::impl_borrow_decode!(Payload);

/// 128-bit identifier of an outgoing connect request (a UUID chosen by the client).
///
/// On the wire it is the UUID read as a big-endian `u128`, written as a `u128` varint, so a random
/// UUID shows up as `FE` followed by its 16 bytes in reverse order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
pub struct Uid(pub u128);

impl Uid {
    /// Builds the identifier from the 16 UUID bytes in their usual (big-endian) order.
    pub const fn from_uuid_bytes(bytes: [u8; 16]) -> Self {
        Self(u128::from_be_bytes(bytes))
    }

    /// The 16 UUID bytes in their usual (big-endian) order.
    pub const fn to_uuid_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
}

impl fmt::Display for Uid {
    /// Hyphenated UUID form, e.g. `0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            v >> 96,
            (v >> 80) & 0xffff,
            (v >> 64) & 0xffff,
            (v >> 48) & 0xffff,
            v & 0xffff_ffff_ffff
        )
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uid({self})")
    }
}

/// Maximum nesting of `HttpFilter::Composite` accepted by the decoder.
///
/// The format itself has no limit, but unbounded recursion on attacker-controlled input would
/// overflow the stack (an abort, not a recoverable error). Real filters nest a handful of levels.
pub const MAX_FILTER_DEPTH: u32 = 64;

thread_local! {
    static FILTER_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Tracks recursion depth of filter decoding on this thread; released on drop, also on errors.
pub(crate) struct DepthGuard(());

impl DepthGuard {
    pub(crate) fn enter() -> Result<Self, DecodeError> {
        FILTER_DEPTH.with(|depth| {
            let next = depth.get() + 1;
            if next > MAX_FILTER_DEPTH {
                return Err(DecodeError::OtherString(format!(
                    "HttpFilter nesting exceeds {MAX_FILTER_DEPTH} levels"
                )));
            }
            depth.set(next);
            Ok(Self(()))
        })
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        FILTER_DEPTH.with(|depth| depth.set(depth.get().saturating_sub(1)));
    }
}

/// Error for a variant index of `type_name` outside `0..=max`.
pub(crate) fn unexpected_variant(
    type_name: &'static str,
    allowed: &'static bincode::error::AllowedEnumVariants,
    found: u32,
) -> DecodeError {
    DecodeError::UnexpectedVariant {
        type_name,
        allowed,
        found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_displays_as_uuid_and_keeps_byte_order() {
        let bytes = [
            0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x49, 0x78, 0x86, 0x95, 0xa4, 0xb3, 0xc2, 0xd1,
            0xe0, 0xf0,
        ];
        let uid = Uid::from_uuid_bytes(bytes);
        assert_eq!(uid.to_string(), "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f0");
        assert_eq!(uid.to_uuid_bytes(), bytes);
    }

    #[test]
    fn long_payloads_are_abbreviated_in_debug_output() {
        let short = Payload::from("abc");
        assert_eq!(format!("{short:?}"), "Payload(b\"abc\")");
        let long = Payload::from(vec![b'x'; 1000]);
        let text = format!("{long:?}");
        assert!(text.starts_with("Payload(1000 bytes: "), "{text}");
        assert!(text.len() < 200, "{text}");
    }
}
