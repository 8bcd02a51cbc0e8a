//! `ResponseError` and the types nested in it (spec §3.9).

use std::io;

use bincode::{Decode, Encode};

use super::dns::DnsLookupError;
use super::outgoing::SocketAddress;
use super::tcp::{Filter, HttpFilter, StealType};
use super::wire::Port;

/// The protocol's "remote result": `00` + value, or `01` + [`ResponseError`].
pub type RemoteResult<T> = Result<T, ResponseError>;

/// Error half of every [`RemoteResult`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode, thiserror::Error)]
pub enum ResponseError {
    #[error("ids exhausted for operation {0}")]
    IdsExhausted(String),
    #[error("resource {0} not found")]
    NotFound(u64),
    #[error("remote fd {0} is not a directory")]
    NotDirectory(u64),
    #[error("remote fd {0} is a directory, not a file")]
    NotFile(u64),
    #[error("remote I/O error: {0:?}")]
    RemoteIO(RemoteIOError),
    #[error("DNS lookup failed: {0:?}")]
    DnsLookup(DnsLookupError),
    #[error("remote error: {0:?}")]
    Remote(RemoteError),
    #[error("port {0} is already stolen")]
    PortAlreadyStolen(Port),
    #[error("operation not implemented")]
    NotImplemented,
    #[error("{blocked_action:?} forbidden by policy {policy_name:?}")]
    Forbidden {
        blocked_action: BlockedAction,
        policy_name: Option<String>,
    },
    #[error("failed to strip path prefix: {0}")]
    StripPrefix(String),
    #[error("file should be opened locally")]
    OpenLocal,
    #[error("{blocked_action:?} forbidden by policy {policy_name:?}: {reason}")]
    ForbiddenWithReason {
        blocked_action: BlockedAction,
        policy_name: Option<String>,
        reason: String,
    },
    #[error("system failure (code {code}, can_retry {can_retry}): {message}")]
    SystemFailure {
        can_retry: bool,
        code: u32,
        message: String,
    },
}

/// An OS-level failure on the agent side.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RemoteIOError {
    /// Linux errno, when the failure came from the OS.
    pub raw_os_error: Option<i32>,
    pub kind: ErrorKindInternal,
}

/// Error category of a [`RemoteIOError`] (41 variants, wire order).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum ErrorKindInternal {
    NotFound,
    PermissionDenied,
    ConnectionRefused,
    ConnectionReset,
    HostUnreachable,
    NetworkUnreachable,
    ConnectionAborted,
    NotConnected,
    AddrInUse,
    AddrNotAvailable,
    NetworkDown,
    BrokenPipe,
    AlreadyExists,
    WouldBlock,
    NotADirectory,
    IsADirectory,
    DirectoryNotEmpty,
    ReadOnlyFilesystem,
    FilesystemLoop,
    StaleNetworkFileHandle,
    InvalidInput,
    InvalidData,
    TimedOut,
    WriteZero,
    StorageFull,
    NotSeekable,
    FilesystemQuotaExceeded,
    FileTooLarge,
    ResourceBusy,
    ExecutableFileBusy,
    Deadlock,
    CrossesDevices,
    TooManyLinks,
    InvalidFilename,
    ArgumentListTooLong,
    Interrupted,
    Unsupported,
    UnexpectedEof,
    OutOfMemory,
    Other,
    /// Textual kind of an error without a dedicated variant.
    Unknown(String),
}

impl From<io::ErrorKind> for ErrorKindInternal {
    /// Same-named variants, quota → `FilesystemQuotaExceeded`, anything else (including
    /// "filesystem loop", as the reference agent does) → `Unknown(<kind text>)`.
    fn from(kind: io::ErrorKind) -> Self {
        use io::ErrorKind as K;
        match kind {
            K::NotFound => Self::NotFound,
            K::PermissionDenied => Self::PermissionDenied,
            K::ConnectionRefused => Self::ConnectionRefused,
            K::ConnectionReset => Self::ConnectionReset,
            K::HostUnreachable => Self::HostUnreachable,
            K::NetworkUnreachable => Self::NetworkUnreachable,
            K::ConnectionAborted => Self::ConnectionAborted,
            K::NotConnected => Self::NotConnected,
            K::AddrInUse => Self::AddrInUse,
            K::AddrNotAvailable => Self::AddrNotAvailable,
            K::NetworkDown => Self::NetworkDown,
            K::BrokenPipe => Self::BrokenPipe,
            K::AlreadyExists => Self::AlreadyExists,
            K::WouldBlock => Self::WouldBlock,
            K::NotADirectory => Self::NotADirectory,
            K::IsADirectory => Self::IsADirectory,
            K::DirectoryNotEmpty => Self::DirectoryNotEmpty,
            K::ReadOnlyFilesystem => Self::ReadOnlyFilesystem,
            K::StaleNetworkFileHandle => Self::StaleNetworkFileHandle,
            K::InvalidInput => Self::InvalidInput,
            K::InvalidData => Self::InvalidData,
            K::TimedOut => Self::TimedOut,
            K::WriteZero => Self::WriteZero,
            K::StorageFull => Self::StorageFull,
            K::NotSeekable => Self::NotSeekable,
            K::QuotaExceeded => Self::FilesystemQuotaExceeded,
            K::FileTooLarge => Self::FileTooLarge,
            K::ResourceBusy => Self::ResourceBusy,
            K::ExecutableFileBusy => Self::ExecutableFileBusy,
            K::Deadlock => Self::Deadlock,
            K::CrossesDevices => Self::CrossesDevices,
            K::TooManyLinks => Self::TooManyLinks,
            K::InvalidFilename => Self::InvalidFilename,
            K::ArgumentListTooLong => Self::ArgumentListTooLong,
            K::Interrupted => Self::Interrupted,
            K::Unsupported => Self::Unsupported,
            K::UnexpectedEof => Self::UnexpectedEof,
            K::OutOfMemory => Self::OutOfMemory,
            K::Other => Self::Other,
            other => Self::Unknown(other.to_string()),
        }
    }
}

impl From<&io::Error> for RemoteIOError {
    fn from(error: &io::Error) -> Self {
        Self {
            raw_os_error: error.raw_os_error(),
            kind: error.kind().into(),
        }
    }
}

impl From<io::Error> for ResponseError {
    fn from(error: io::Error) -> Self {
        Self::RemoteIO(RemoteIOError::from(&error))
    }
}

/// Legacy remote errors (`ResponseError::Remote`); not produced by the reference agent.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum RemoteError {
    NameserverNotFound,
    AddressParsing(String),
    InvalidAddress(SocketAddress),
    ConnectTimedOut(SocketAddress),
    BadHttpFilterRegex(Filter, String),
    BadHttpFilterExRegex(HttpFilter, String),
}

/// What an operator policy blocked.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum BlockedAction {
    Steal(StealType),
    Mirror(Port),
    OutgoingTcp(SocketAddress),
    OutgoingUdp(SocketAddress),
}
