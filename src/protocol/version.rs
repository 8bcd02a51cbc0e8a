//! Protocol version, negotiation and the feature gates of spec §4.1.
//!
//! Every gate is a `>=X.Y.Z` requirement evaluated with semver rules, so a pre-release such as
//! `1.29.0-rc.1` matches none of them (spec §7.8). The agent evaluates them against the version
//! the client announced in `SwitchProtocolVersion`.

use std::sync::LazyLock;

use semver::{Comparator, Op, Prerelease, Version, VersionReq};

/// The protocol version this crate speaks, as text.
pub const PROTOCOL_VERSION_STR: &str = "1.29.0";

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: Version = Version::new(1, 29, 0);

/// Version assumed for a client until it sends `SwitchProtocolVersion` (last version without
/// negotiation).
pub const PRE_NEGOTIATION_VERSION: Version = Version::new(1, 2, 2);

/// The version the agent answers with: `min(PROTOCOL_VERSION, client)` in semver order.
pub fn negotiate(client: &Version) -> Version {
    if *client < PROTOCOL_VERSION {
        client.clone()
    } else {
        PROTOCOL_VERSION
    }
}

fn at_least(major: u64, minor: u64, patch: u64) -> VersionReq {
    VersionReq {
        comparators: vec![Comparator {
            op: Op::GreaterEq,
            major,
            minor: Some(minor),
            patch: Some(patch),
            pre: Prerelease::EMPTY,
        }],
    }
}

macro_rules! gates {
    ($($(#[$doc:meta])* $name:ident = ($major:literal, $minor:literal, $patch:literal);)*) => {
        $(
            $(#[$doc])*
            pub static $name: LazyLock<VersionReq> =
                LazyLock::new(|| at_least($major, $minor, $patch));
        )*

        /// Every gate with its name, in spec order (for logs and tests).
        pub fn all_gates() -> Vec<(&'static str, &'static VersionReq)> {
            vec![$((stringify!($name), &*$name)),*]
        }
    };
}

gates! {
    /// `DaemonTcp::HttpRequestFramed` and `LayerTcpSteal::HttpResponseFramed`.
    HTTP_FRAMED_VERSION = (1, 3, 0);
    /// `ClientMessage::ReadyForLogs`.
    CLIENT_READY_FOR_LOGS = (1, 3, 1);
    /// `DaemonTcp::Data` on a connection id used for a filtered HTTP request (HTTP upgrade).
    HTTP_FILTERED_UPGRADE_VERSION = (1, 5, 0);
    /// `FileRequest::ReadLink`.
    READLINK_VERSION = (1, 6, 0);
    /// `DaemonTcp::HttpRequestChunked` (StartV1/Body/ErrorV1).
    HTTP_CHUNKED_REQUEST_VERSION = (1, 7, 0);
    /// `LayerTcpSteal::HttpResponseChunked`.
    HTTP_CHUNKED_RESPONSE_VERSION = (1, 8, 1);
    /// `FileRequest::ReadDirBatch`.
    READDIR_BATCH_VERSION = (1, 9, 0);
    /// `HttpFilter::Composite`.
    HTTP_COMPOSITE_FILTER_VERSION = (1, 11, 0);
    /// `BlockedAction::Mirror` (operator).
    MIRROR_BLOCK_VERSION = (1, 12, 0);
    /// `FileRequest::MakeDir`, `MakeDirAt`.
    MKDIR_VERSION = (1, 13, 0);
    /// `ResponseError::OpenLocal` (operator).
    OPEN_LOCAL_VERSION = (1, 13, 3);
    /// `LogLevel::Info`: never send `Info` to older clients.
    INFO_LOG_VERSION = (1, 13, 4);
    /// `FileRequest::RemoveDir`, `Unlink`, `UnlinkAt`.
    RMDIR_VERSION = (1, 14, 0);
    /// `ClientMessage::GetAddrInfoRequestV2`.
    ADDRINFO_V2_VERSION = (1, 15, 0);
    /// `FileRequest::StatFs`.
    STATFS_VERSION = (1, 16, 0);
    /// `ResponseError::ForbiddenWithReason` (operator).
    MIRROR_POLICY_REASON_VERSION = (1, 17, 0);
    /// `FileRequest::XstatFsV2`, `StatFsV2`, `FileResponse::XstatFsV2`.
    STATFS_V2_VERSION = (1, 18, 0);
    /// `ChunkedRequest::StartV2`, `ErrorV2`.
    HTTP_CHUNKED_REQUEST_V2_VERSION = (1, 19, 0);
    /// `DaemonTcp::NewConnectionV2`; HTTP requests in mirror mode and for unfiltered steals.
    MODE_AGNOSTIC_HTTP_REQUESTS = (1, 19, 4);
    /// `DaemonMessage::OperatorPing` (operator).
    MIRRORD_OPERATOR_LATENCY_PING_PONG = (1, 19, 8);
    /// `HttpFilter::Method`.
    HTTP_METHOD_FILTER_VERSION = (1, 20, 0);
    /// `FileRequest::Rename`.
    RENAME_VERSION = (1, 21, 0);
    /// `LayerTcp::PortSubscribeFilteredHttp`.
    MIRROR_HTTP_FILTER_VERSION = (1, 21, 1);
    /// TCP and UDP `ConnectV2`.
    OUTGOING_CONNECT_V2 = (1, 22, 0);
    /// `HttpFilter::Body`.
    HTTP_BODY_JSON_FILTER_VERSION = (1, 23, 0);
    /// `FileRequest::Ftruncate`, `Futimens`, `Fchown`, `Fchmod`.
    COPYFILE_VERSION = (1, 24, 0);
    /// `ClientMessage::ReverseDnsLookup`.
    REVERSE_DNS_VERSION = (1, 25, 0);
    /// `HttpFilter::HeaderJq`.
    HTTP_HEADER_JQ_FILTER_VERSION = (1, 26, 0);
    /// `ClientMessage::SeqpacketOutgoing` / `DaemonMessage::SeqpacketOutgoing`.
    OUTGOING_SEQPACKET = (1, 27, 0);
    /// `ResponseError::SystemFailure` (operator).
    SYSTEM_FAILURE_VERSION = (1, 28, 0);
    /// `ClientMessage::ShareLink` (operator).
    SHARE_LINK_VERSION = (1, 29, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_version_text() {
        assert_eq!(PROTOCOL_VERSION.to_string(), PROTOCOL_VERSION_STR);
        assert_eq!(
            Version::parse(PROTOCOL_VERSION_STR).ok(),
            Some(PROTOCOL_VERSION)
        );
    }

    #[test]
    fn negotiation_picks_the_lower_version() {
        let old = Version::new(1, 19, 3);
        assert_eq!(negotiate(&old), old);
        assert_eq!(negotiate(&Version::new(1, 30, 0)), PROTOCOL_VERSION);
        let rc = Version::parse("1.29.0-rc.1").unwrap();
        assert_eq!(negotiate(&rc), rc);
    }

    #[test]
    fn gates_follow_semver_requirements() {
        assert_eq!(HTTP_FRAMED_VERSION.to_string(), ">=1.3.0");
        assert!(MODE_AGNOSTIC_HTTP_REQUESTS.matches(&Version::new(1, 19, 4)));
        assert!(!MODE_AGNOSTIC_HTTP_REQUESTS.matches(&Version::new(1, 19, 3)));
        assert!(!CLIENT_READY_FOR_LOGS.matches(&PRE_NEGOTIATION_VERSION));
        // A pre-release matches no gate, not even much older ones (spec §7.8).
        let rc = Version::parse("1.29.0-rc.1").unwrap();
        assert!(all_gates().iter().all(|(_, req)| !req.matches(&rc)));
        assert!(
            all_gates()
                .iter()
                .all(|(_, req)| req.matches(&PROTOCOL_VERSION))
        );
    }

    #[test]
    fn gate_table_is_complete_and_ordered() {
        let gates = all_gates();
        assert_eq!(gates.len(), 31);
        let versions: Vec<Version> = gates
            .iter()
            .map(|(_, req)| {
                let c = &req.comparators[0];
                Version::new(c.major, c.minor.unwrap(), c.patch.unwrap())
            })
            .collect();
        assert!(versions.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
