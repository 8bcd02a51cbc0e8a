//! mirrord-protocol 1.29 codec (issue 4; wire spec: the design doc `mirrord-protocol.md`).
//!
//! Pure encoding logic, no I/O. Type and variant names follow the upstream crate so the spec's
//! tables map one to one onto this API; every type is re-exported at `protocol::`.
//!
//! * `messages`: [`ClientMessage`], [`DaemonMessage`] and small top-level payloads.
//! * `tcp`, `http`: mirror/steal and HTTP forms; `outgoing`, `file`, `dns`, `error`: the other
//!   feature groups. These modules are private; everything is re-exported here.
//! * [`codec`]: stream decoder/encoder with a size cap; [`version`]: negotiation and gates;
//!   [`wire`]: shared building blocks ([`Payload`], [`Uid`]).

pub mod codec;
mod dns;
mod error;
mod file;
mod http;
mod messages;
mod outgoing;
mod tcp;
pub mod version;
pub mod wire;

pub use codec::{ClientCodec, CodecError, DaemonCodec, MAX_MESSAGE_SIZE, ProtocolCodec};
pub use dns::*;
pub use error::*;
pub use file::*;
pub use http::*;
pub use messages::*;
pub use outgoing::*;
pub use tcp::*;
pub use wire::{ConnectionId, MAX_FILTER_DEPTH, Payload, Port, RequestId, Uid};
