//! Golden vectors of the upstream mirrord-protocol 1.29 codec (spec §6).

use bytes::BytesMut;
use mirrord_operator::protocol::codec::{Decoded, decode_from_slice, encode_to_vec};
use mirrord_operator::protocol::{
    ChunkedResponse, ClientCodec, ClientMessage, CodecError, DaemonCodec, DaemonMessage,
    LayerTcpSteal,
};
use tokio_util::codec::Decoder;

struct Vector {
    name: String,
    direction: String,
    bytes: Vec<u8>,
}

fn hex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd hex length");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn vectors() -> Vec<Vector> {
    let text = include_str!("data/mirrord-protocol-vectors.jsonl");
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).expect("vector line is JSON");
            let field = |key: &str| value[key].as_str().expect(key).to_owned();
            Vector {
                name: field("name"),
                direction: field("direction"),
                bytes: hex(&field("hex")),
            }
        })
        .collect()
}

#[derive(Debug, PartialEq)]
enum Msg {
    Client(Box<ClientMessage>),
    Daemon(Box<DaemonMessage>),
}

fn decode_whole(vector: &Vector) -> Result<Msg, String> {
    fn one<M: bincode::Decode<()>>(bytes: &[u8]) -> Result<M, String> {
        match decode_from_slice::<M>(bytes).map_err(|err| err.to_string())? {
            Decoded::Message(message, used) if used == bytes.len() => Ok(message),
            Decoded::Message(_, used) => Err(format!("used {used} of {} bytes", bytes.len())),
            Decoded::Incomplete { needed } => Err(format!("incomplete, needs {needed}")),
        }
    }
    match vector.direction.as_str() {
        "client" => one(&vector.bytes).map(|m| Msg::Client(Box::new(m))),
        "daemon" => one(&vector.bytes).map(|m| Msg::Daemon(Box::new(m))),
        other => Err(format!("unknown direction {other}")),
    }
}

fn encode(message: &Msg) -> Vec<u8> {
    match message {
        Msg::Client(m) => encode_to_vec(m.as_ref()).expect("encode"),
        Msg::Daemon(m) => encode_to_vec(m.as_ref()).expect("encode"),
    }
}

/// The one vector whose set has two elements; its byte order is unspecified.
const SET_VECTOR: &str = "client_get_env_vars_two_select";

#[test]
fn every_vector_decodes_and_reencodes_identically() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 176);
    let mut failures = Vec::new();
    for vector in &vectors {
        match decode_whole(vector) {
            Err(err) => failures.push(format!("{}: decode failed: {err}", vector.name)),
            Ok(message) => {
                let encoded = encode(&message);
                if vector.name == SET_VECTOR {
                    // Compare as a set: re-decode and compare values.
                    let again = Vector {
                        name: vector.name.clone(),
                        direction: vector.direction.clone(),
                        bytes: encoded,
                    };
                    if decode_whole(&again).as_ref() != Ok(&message) {
                        failures.push(format!("{}: set did not round-trip", vector.name));
                    }
                } else if encoded != vector.bytes {
                    failures.push(format!(
                        "{}: re-encoded {:02x?} != {:02x?}",
                        vector.name, encoded, vector.bytes
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing vectors:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

mod expected {
    //! Values constructed by hand from the vectors' descriptions (spec §6), at least one per
    //! message family.

    use std::collections::{HashMap, HashSet};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::path::PathBuf;

    use ::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
    use mirrord_operator::protocol::*;
    use semver::Version as SemVer;

    use super::Msg;

    const UID: Uid = Uid::from_uuid_bytes([
        0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x49, 0x78, 0x86, 0x95, 0xa4, 0xb3, 0xc2, 0xd1, 0xe0,
        0xf0,
    ]);

    fn c(message: ClientMessage) -> Msg {
        Msg::Client(Box::new(message))
    }

    fn d(message: DaemonMessage) -> Msg {
        Msg::Daemon(Box::new(message))
    }

    fn ip(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn sock(addr: IpAddr, port: u16) -> SocketAddr {
        SocketAddr::new(addr, port)
    }

    fn peer() -> SocketAddr {
        sock(ip(10, 1, 2, 3), 54321)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn string_set(items: &[&str]) -> HashSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn alice() -> HttpFilter {
        HttpFilter::Header(Filter("x-user: alice".into()))
    }

    fn steal(filter: HttpFilter) -> ClientMessage {
        ClientMessage::TcpSteal(LayerTcpSteal::PortSubscribe(StealType::FilteredHttpEx(
            80, filter,
        )))
    }

    fn new_connection(id: u64, dst: u16, src: u16) -> NewTcpConnectionV1 {
        NewTcpConnectionV1 {
            connection_id: id,
            remote_address: ip(10, 1, 2, 3),
            destination_port: dst,
            source_port: src,
            local_address: ip(10, 244, 1, 7),
        }
    }

    fn tls_h2() -> IncomingTrafficTransportType {
        IncomingTrafficTransportType::Tls {
            alpn_protocol: Some(b"h2".to_vec()),
            server_name: Some("api.example.com".into()),
        }
    }

    fn request(
        method: Method,
        uri: &str,
        headers: HeaderMap,
        version: Version,
        body: InternalHttpBodyNew,
    ) -> InternalHttpRequest<InternalHttpBodyNew> {
        InternalHttpRequest {
            method,
            uri: uri.parse::<Uri>().unwrap(),
            headers,
            version,
            body,
        }
    }

    fn start_v2(
        connection_id: u64,
        request: InternalHttpRequest<InternalHttpBodyNew>,
        dst_port: u16,
        transport: IncomingTrafficTransportType,
    ) -> ChunkedRequest {
        ChunkedRequest::StartV2(ChunkedRequestStartV2 {
            connection_id,
            request_id: 0,
            request,
            metadata: HttpRequestMetadata::V1 {
                source: peer(),
                destination: sock(ip(10, 244, 1, 7), dst_port),
            },
            transport,
        })
    }

    fn complete() -> InternalHttpBodyNew {
        InternalHttpBodyNew {
            frames: vec![],
            is_last: true,
        }
    }

    fn file(response: FileResponse) -> Msg {
        d(DaemonMessage::File(response))
    }

    fn file_req(request: FileRequest) -> Msg {
        c(ClientMessage::FileRequest(request))
    }

    pub fn values() -> Vec<(&'static str, Msg)> {
        vec![
            // Control.
            (
                "client_switch_protocol_version",
                c(ClientMessage::SwitchProtocolVersion(SemVer::new(1, 29, 0))),
            ),
            (
                "client_switch_protocol_version_prerelease",
                c(ClientMessage::SwitchProtocolVersion(
                    SemVer::parse("1.30.0-rc.1+build.7").unwrap(),
                )),
            ),
            ("client_ping", c(ClientMessage::Ping)),
            ("daemon_pong", d(DaemonMessage::Pong)),
            ("daemon_close", d(DaemonMessage::Close("bye".into()))),
            (
                "daemon_log_message_info",
                d(DaemonMessage::LogMessage(LogMessage {
                    message: "note".into(),
                    level: LogLevel::Info,
                })),
            ),
            ("daemon_operator_ping", d(DaemonMessage::OperatorPing(300))),
            // Environment (the set-valued vector is compared as a set by PartialEq on HashSet).
            (
                "client_get_env_vars_two_select",
                c(ClientMessage::GetEnvVarsRequest(GetEnvVarsRequest {
                    env_vars_filter: HashSet::new(),
                    env_vars_select: string_set(&["A", "B"]),
                })),
            ),
            (
                "client_get_env_vars_filter_and_select",
                c(ClientMessage::GetEnvVarsRequest(GetEnvVarsRequest {
                    env_vars_filter: string_set(&["SECRET_*"]),
                    env_vars_select: string_set(&["DB_*"]),
                })),
            ),
            (
                "daemon_get_env_vars_response_ok",
                d(DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(
                    HashMap::from([("DB_HOST".into(), "db.svc".into())]),
                )))),
            ),
            (
                "daemon_get_env_vars_response_err_system_failure",
                d(DaemonMessage::GetEnvVarsResponse(Err(
                    ResponseError::SystemFailure {
                        can_retry: true,
                        code: 1,
                        message: "agent lost".into(),
                    },
                ))),
            ),
            // DNS.
            (
                "client_get_addr_info_request_v2_defaults",
                c(ClientMessage::GetAddrInfoRequestV2(GetAddrInfoRequestV2 {
                    node: "db".into(),
                    service_port: 0,
                    family: AddressFamily::Ipv4Only,
                    socktype: SockType::Any,
                    flags: -1,
                    protocol: 0,
                })),
            ),
            (
                "daemon_get_addr_info_response_ok_two_records",
                d(DaemonMessage::GetAddrInfoResponse(GetAddrInfoResponse(Ok(
                    DnsLookup(vec![
                        LookupRecord {
                            name: "example.com.".into(),
                            ip: ip(93, 184, 216, 34),
                        },
                        LookupRecord {
                            name: "example.com.".into(),
                            ip: "2606:2800:220:1:248:1893:25c8:1946".parse().unwrap(),
                        },
                    ]),
                )))),
            ),
            (
                "daemon_get_addr_info_response_err_no_records",
                d(DaemonMessage::GetAddrInfoResponse(GetAddrInfoResponse(
                    Err(ResponseError::DnsLookup(DnsLookupError {
                        kind: ResolveErrorKindInternal::NoRecordsFound(3),
                    })),
                ))),
            ),
            (
                "daemon_reverse_dns_lookup_ok",
                d(DaemonMessage::ReverseDnsLookup(Ok(
                    ReverseDnsLookupResponse {
                        hostname: Ok("gw.local".into()),
                    },
                ))),
            ),
            // Outgoing TCP / unix stream.
            (
                "client_tcp_outgoing_connect_v2",
                c(ClientMessage::TcpOutgoing(LayerTcpOutgoing::ConnectV2(
                    LayerConnectV2 {
                        uid: UID,
                        remote_address: SocketAddress::Ip(sock(
                            IpAddr::V6(Ipv6Addr::LOCALHOST),
                            8080,
                        )),
                    },
                ))),
            ),
            (
                "client_tcp_outgoing_connect_unix_abstract",
                c(ClientMessage::TcpOutgoing(LayerTcpOutgoing::Connect(
                    LayerConnect {
                        remote_address: SocketAddress::Unix(UnixAddr::Abstract(b"bus".to_vec())),
                    },
                ))),
            ),
            (
                "daemon_tcp_outgoing_connect_ok",
                d(DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Connect(Ok(
                    DaemonConnect {
                        connection_id: 0,
                        remote_address: SocketAddress::Ip(sock(ip(10, 0, 0, 5), 5432)),
                        local_address: SocketAddress::Ip(sock(ip(10, 244, 1, 7), 40000)),
                    },
                )))),
            ),
            (
                "daemon_tcp_outgoing_connect_v2_err_timeout",
                d(DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::ConnectV2(
                    DaemonConnectV2 {
                        uid: UID,
                        connect: Err(ResponseError::RemoteIO(RemoteIOError {
                            raw_os_error: None,
                            kind: ErrorKindInternal::TimedOut,
                        })),
                    },
                ))),
            ),
            (
                "daemon_tcp_outgoing_connect_unix_ok",
                d(DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Connect(Ok(
                    DaemonConnect {
                        connection_id: 2,
                        remote_address: SocketAddress::Unix(UnixAddr::Pathname(
                            "/var/run/app.sock".into(),
                        )),
                        local_address: SocketAddress::Unix(UnixAddr::Unnamed),
                    },
                )))),
            ),
            (
                "daemon_tcp_outgoing_connect_err_remote_connect_timed_out",
                d(DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Connect(Err(
                    ResponseError::Remote(RemoteError::ConnectTimedOut(SocketAddress::Ip(sock(
                        ip(10, 0, 0, 5),
                        5432,
                    )))),
                )))),
            ),
            (
                "daemon_tcp_outgoing_read_eof",
                d(DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Read(Ok(
                    DaemonRead {
                        connection_id: 0,
                        bytes: Payload::default(),
                    },
                )))),
            ),
            // Outgoing UDP.
            (
                "client_udp_outgoing_write",
                c(ClientMessage::UdpOutgoing(LayerUdpOutgoing::Write(
                    LayerWrite {
                        connection_id: 0,
                        bytes: vec![1, 2, 3].into(),
                    },
                ))),
            ),
            (
                "daemon_udp_outgoing_connect_v2_ok",
                d(DaemonMessage::UdpOutgoing(DaemonUdpOutgoing::ConnectV2(
                    DaemonConnectV2 {
                        uid: UID,
                        connect: Ok(DaemonConnect {
                            connection_id: 0,
                            remote_address: SocketAddress::Ip(sock(ip(10, 96, 0, 10), 53)),
                            local_address: SocketAddress::Ip(sock(ip(0, 0, 0, 0), 33333)),
                        }),
                    },
                ))),
            ),
            // Outgoing seqpacket.
            (
                "client_seqpacket_connect_v2",
                c(ClientMessage::SeqpacketOutgoing(LayerSeqpacket::ConnectV2(
                    LayerConnectV2 {
                        uid: UID,
                        remote_address: SocketAddress::Unix(UnixAddr::Pathname("/run/s".into())),
                    },
                ))),
            ),
            (
                "daemon_seqpacket_read",
                d(DaemonMessage::SeqpacketOutgoing(DaemonSeqpacket::Read(Ok(
                    DaemonRead {
                        connection_id: 0,
                        bytes: "p".into(),
                    },
                )))),
            ),
            // Mirror.
            (
                "client_mirror_port_subscribe_high_port",
                c(ClientMessage::Tcp(LayerTcp::PortSubscribe(8080))),
            ),
            (
                "client_mirror_port_subscribe_filtered_http",
                c(ClientMessage::Tcp(LayerTcp::PortSubscribeFilteredHttp(
                    80,
                    alice(),
                ))),
            ),
            (
                "daemon_mirror_new_connection_v2_tls",
                d(DaemonMessage::Tcp(DaemonTcp::NewConnectionV2(
                    NewTcpConnectionV2 {
                        connection: new_connection(1, 443, 54322),
                        transport: tls_h2(),
                    },
                ))),
            ),
            (
                "daemon_mirror_new_connection_v1",
                d(DaemonMessage::Tcp(DaemonTcp::NewConnectionV1(
                    new_connection(0, 80, 54321),
                ))),
            ),
            (
                "daemon_mirror_http_request_chunked_start_v2",
                d(DaemonMessage::Tcp(DaemonTcp::HttpRequestChunked(start_v2(
                    7,
                    request(
                        Method::GET,
                        "/",
                        headers(&[("host", "a")]),
                        Version::HTTP_11,
                        complete(),
                    ),
                    80,
                    IncomingTrafficTransportType::Tcp,
                )))),
            ),
            // Steal subscriptions and results.
            (
                "client_steal_port_subscribe_filtered_http_legacy",
                c(ClientMessage::TcpSteal(LayerTcpSteal::PortSubscribe(
                    StealType::FilteredHttp(80, Filter("x-user: alice".into())),
                ))),
            ),
            (
                "client_steal_port_subscribe_composite_all",
                c(steal(HttpFilter::Composite {
                    all: true,
                    filters: vec![
                        alice(),
                        HttpFilter::Path(Filter("/api".into())),
                        HttpFilter::Method(HttpMethodFilter::Get),
                    ],
                })),
            ),
            (
                "client_steal_port_subscribe_method_other",
                c(steal(HttpFilter::Method(HttpMethodFilter::Other(
                    "PURGE".into(),
                )))),
            ),
            (
                "client_steal_port_subscribe_body_json",
                c(steal(HttpFilter::Body(HttpBodyFilter::Json {
                    query: JsonPathQuery("$.user".into()),
                    matches: Filter("^alice$".into()),
                }))),
            ),
            (
                "client_steal_port_subscribe_header_jq",
                c(steal(HttpFilter::HeaderJq(JqQuery(
                    "test(\"alice\")".into(),
                )))),
            ),
            (
                "client_steal_data_eof",
                c(ClientMessage::TcpSteal(LayerTcpSteal::Data(TcpData {
                    connection_id: 5,
                    bytes: Payload::default(),
                }))),
            ),
            (
                "daemon_steal_subscribe_result_err_forbidden",
                d(DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(Err(
                    ResponseError::Forbidden {
                        blocked_action: BlockedAction::Steal(StealType::All(80)),
                        policy_name: Some("p".into()),
                    },
                )))),
            ),
            (
                "daemon_steal_subscribe_result_err_forbidden_with_reason",
                d(DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(Err(
                    ResponseError::ForbiddenWithReason {
                        blocked_action: BlockedAction::Mirror(80),
                        policy_name: None,
                        reason: "no".into(),
                    },
                )))),
            ),
            (
                "daemon_steal_new_connection_v2",
                d(DaemonMessage::TcpSteal(DaemonTcp::NewConnectionV2(
                    NewTcpConnectionV2 {
                        connection: new_connection(0, 80, 54321),
                        transport: IncomingTrafficTransportType::Tcp,
                    },
                ))),
            ),
            // Steal: HTTP requests.
            (
                "daemon_steal_http_request_chunked_start_v2_get",
                d(DaemonMessage::TcpSteal(DaemonTcp::HttpRequestChunked(
                    start_v2(
                        0,
                        request(
                            Method::GET,
                            "/api/v1/users?id=7",
                            headers(&[("host", "example.com"), ("x-user", "alice")]),
                            Version::HTTP_11,
                            complete(),
                        ),
                        80,
                        IncomingTrafficTransportType::Tcp,
                    ),
                ))),
            ),
            (
                "daemon_steal_http_request_chunked_start_v2_post",
                d(DaemonMessage::TcpSteal(DaemonTcp::HttpRequestChunked(
                    start_v2(
                        1,
                        request(
                            Method::POST,
                            "/submit",
                            headers(&[
                                ("content-type", "application/json"),
                                ("content-length", "16"),
                            ]),
                            Version::HTTP_11,
                            InternalHttpBodyNew {
                                frames: vec![InternalHttpBodyFrame::Data(
                                    "{\"user\":\"alice\"}".into(),
                                )],
                                is_last: false,
                            },
                        ),
                        80,
                        IncomingTrafficTransportType::Tcp,
                    ),
                ))),
            ),
            (
                "daemon_steal_http_request_chunked_start_v2_h2_tls",
                d(DaemonMessage::TcpSteal(DaemonTcp::HttpRequestChunked(
                    start_v2(
                        2,
                        request(
                            Method::GET,
                            "https://api.example.com/",
                            HeaderMap::new(),
                            Version::HTTP_2,
                            complete(),
                        ),
                        443,
                        tls_h2(),
                    ),
                ))),
            ),
            (
                "daemon_steal_http_request_chunked_body_trailers",
                d(DaemonMessage::TcpSteal(DaemonTcp::HttpRequestChunked(
                    ChunkedRequest::Body(ChunkedRequestBodyV1 {
                        frames: vec![InternalHttpBodyFrame::Trailers(headers(&[(
                            "x-checksum",
                            "abc",
                        )]))],
                        is_last: true,
                        connection_id: 1,
                        request_id: 0,
                    }),
                ))),
            ),
            (
                "daemon_steal_http_request_chunked_error_v2",
                d(DaemonMessage::TcpSteal(DaemonTcp::HttpRequestChunked(
                    ChunkedRequest::ErrorV2(ChunkedRequestErrorV2 {
                        connection_id: 1,
                        request_id: 0,
                        error_message: "reset".into(),
                    }),
                ))),
            ),
            (
                "daemon_steal_http_request_chunked_start_v1",
                d(DaemonMessage::TcpSteal(DaemonTcp::HttpRequestChunked(
                    ChunkedRequest::StartV1(HttpRequest {
                        internal_request: InternalHttpRequest {
                            method: Method::GET,
                            uri: Uri::from_static("/"),
                            headers: headers(&[("host", "a")]),
                            version: Version::HTTP_11,
                            body: vec![],
                        },
                        connection_id: 3,
                        request_id: 0,
                        port: 80,
                    }),
                ))),
            ),
            (
                "daemon_steal_http_request_framed",
                d(DaemonMessage::TcpSteal(DaemonTcp::HttpRequestFramed(
                    HttpRequest {
                        internal_request: InternalHttpRequest {
                            method: Method::PUT,
                            uri: Uri::from_static("/x"),
                            headers: HeaderMap::new(),
                            version: Version::HTTP_11,
                            body: InternalHttpBody(vec![InternalHttpBodyFrame::Data("ab".into())]),
                        },
                        connection_id: 4,
                        request_id: 0,
                        port: 80,
                    },
                ))),
            ),
            (
                "daemon_steal_http_request_legacy",
                d(DaemonMessage::TcpSteal(DaemonTcp::HttpRequest(
                    HttpRequest {
                        internal_request: InternalHttpRequest {
                            method: Method::GET,
                            uri: Uri::from_static("/"),
                            headers: HeaderMap::new(),
                            version: Version::HTTP_10,
                            body: Payload::default(),
                        },
                        connection_id: 5,
                        request_id: 0,
                        port: 80,
                    },
                ))),
            ),
            // Steal: HTTP responses.
            (
                "client_steal_http_response_chunked_start_multi_value_header",
                c(ClientMessage::TcpSteal(LayerTcpSteal::HttpResponseChunked(
                    ChunkedResponse::Start(HttpResponse {
                        port: 80,
                        connection_id: 0,
                        request_id: 0,
                        internal_response: InternalHttpResponse {
                            status: StatusCode::OK,
                            version: Version::HTTP_11,
                            headers: headers(&[
                                ("set-cookie", "a=1"),
                                ("set-cookie", "b=2"),
                                ("x-y", "z"),
                            ]),
                            body: vec![],
                        },
                    }),
                ))),
            ),
            (
                "client_steal_http_response_chunked_start_with_frame",
                c(ClientMessage::TcpSteal(LayerTcpSteal::HttpResponseChunked(
                    ChunkedResponse::Start(HttpResponse {
                        port: 80,
                        connection_id: 0,
                        request_id: 0,
                        internal_response: InternalHttpResponse {
                            status: StatusCode::NOT_FOUND,
                            version: Version::HTTP_11,
                            headers: HeaderMap::new(),
                            body: vec![InternalHttpBodyFrame::Data("nf".into())],
                        },
                    }),
                ))),
            ),
            (
                "client_steal_http_response_chunked_error",
                c(ClientMessage::TcpSteal(LayerTcpSteal::HttpResponseChunked(
                    ChunkedResponse::Error(ChunkedRequestErrorV1 {
                        connection_id: 0,
                        request_id: 0,
                    }),
                ))),
            ),
            (
                "client_steal_http_response_framed",
                c(ClientMessage::TcpSteal(LayerTcpSteal::HttpResponseFramed(
                    HttpResponse {
                        port: 80,
                        connection_id: 0,
                        request_id: 0,
                        internal_response: InternalHttpResponse {
                            status: StatusCode::OK,
                            version: Version::HTTP_11,
                            headers: headers(&[("content-length", "2")]),
                            body: InternalHttpBody(vec![InternalHttpBodyFrame::Data("ok".into())]),
                        },
                    },
                ))),
            ),
            (
                "client_steal_http_response_legacy",
                c(ClientMessage::TcpSteal(LayerTcpSteal::HttpResponse(
                    HttpResponse {
                        port: 80,
                        connection_id: 0,
                        request_id: 0,
                        internal_response: InternalHttpResponse {
                            status: StatusCode::BAD_GATEWAY,
                            version: Version::HTTP_11,
                            headers: HeaderMap::new(),
                            body: "bad".into(),
                        },
                    },
                ))),
            ),
            // Files.
            (
                "client_file_open_relative",
                file_req(FileRequest::OpenRelative(OpenRelativeFileRequest {
                    relative_fd: 1,
                    path: "hosts".into(),
                    open_options: OpenOptionsInternal {
                        read: true,
                        write: true,
                        create: true,
                        ..Default::default()
                    },
                })),
            ),
            (
                "client_file_xstat_path",
                file_req(FileRequest::Xstat(XstatRequest {
                    path: Some(PathBuf::from("/etc/hosts")),
                    fd: None,
                    follow_symlink: true,
                })),
            ),
            (
                "client_file_seek_current",
                file_req(FileRequest::Seek(SeekFileRequest {
                    fd: 0,
                    seek_from: SeekFromInternal::Current(-5),
                })),
            ),
            (
                "client_file_futimens",
                file_req(FileRequest::Futimens(FutimensRequest {
                    fd: 0,
                    times: Some([
                        Timespec {
                            tv_sec: 1,
                            tv_nsec: 2,
                        },
                        Timespec {
                            tv_sec: 3,
                            tv_nsec: -1,
                        },
                    ]),
                })),
            ),
            (
                "client_file_unlink_at",
                file_req(FileRequest::UnlinkAt(UnlinkAtRequest {
                    dirfd: None,
                    pathname: "/tmp/f".into(),
                    flags: 0,
                })),
            ),
            (
                "daemon_file_read_ok",
                file(FileResponse::Read(Ok(ReadFileResponse {
                    bytes: "127.0.0.1 localhost\n".into(),
                    read_amount: 20,
                }))),
            ),
            (
                "daemon_file_xstat_ok",
                file(FileResponse::Xstat(Ok(XstatResponse {
                    metadata: MetadataInternal {
                        device_id: 2049,
                        inode: 1234567,
                        mode: 0o100644,
                        hard_links: 1,
                        user_id: 0,
                        group_id: 0,
                        rdevice_id: 0,
                        size: 220,
                        access_time: 1700000000123456789,
                        modification_time: 1700000000000000000,
                        creation_time: -1,
                        block_size: 4096,
                        blocks: 8,
                    },
                }))),
            ),
            (
                "daemon_file_xstatfs_v2_ok",
                file(FileResponse::XstatFsV2(Ok(XstatFsResponseV2 {
                    metadata: FsMetadataInternalV2 {
                        filesystem_type: 61267,
                        block_size: 4096,
                        blocks: 1000,
                        blocks_free: 500,
                        blocks_available: 400,
                        files: 64,
                        files_free: 32,
                        filesystem_id: [1, -2],
                        name_len: 255,
                        fragment_size: 4096,
                        flags: 32,
                    },
                }))),
            ),
            (
                "daemon_file_read_dir_batch_ok",
                file(FileResponse::ReadDirBatch(Ok(ReadDirBatchResponse {
                    fd: 2,
                    dir_entries: vec![
                        DirEntryInternal {
                            inode: 131,
                            position: 0,
                            name: "hosts".into(),
                            file_type: 8,
                        },
                        DirEntryInternal {
                            inode: 300,
                            position: 1,
                            name: "ssl".into(),
                            file_type: 4,
                        },
                    ],
                }))),
            ),
            (
                "daemon_file_open_err_unknown_kind",
                file(FileResponse::Open(Err(ResponseError::RemoteIO(
                    RemoteIOError {
                        raw_os_error: Some(5),
                        kind: ErrorKindInternal::Unknown("x".into()),
                    },
                )))),
            ),
            (
                "daemon_file_write_err_read_only",
                file(FileResponse::Write(Err(ResponseError::RemoteIO(
                    RemoteIOError {
                        raw_os_error: Some(30),
                        kind: ErrorKindInternal::ReadOnlyFilesystem,
                    },
                )))),
            ),
            (
                "daemon_file_access_ok",
                file(FileResponse::Access(Ok(AccessFileResponse))),
            ),
            (
                "daemon_file_make_dir_ok",
                file(FileResponse::MakeDir(Ok(()))),
            ),
            (
                "daemon_file_unlink_err_not_found_fd",
                file(FileResponse::Unlink(Err(ResponseError::NotFound(7)))),
            ),
            (
                "daemon_file_fchmod_err_not_implemented",
                file(FileResponse::Fchmod(Err(ResponseError::NotImplemented))),
            ),
            // Other top-level variants.
            (
                "client_pause_target_request",
                c(ClientMessage::PauseTargetRequest(true)),
            ),
            (
                "daemon_pause_target",
                d(DaemonMessage::PauseTarget(
                    DaemonPauseTarget::PauseResponse {
                        changed: true,
                        container_paused: false,
                    },
                )),
            ),
            (
                "daemon_vpn_network_configuration",
                d(DaemonMessage::Vpn(ServerVpn::NetworkConfiguration(
                    NetworkConfiguration {
                        ip: ip(10, 0, 0, 2),
                        net_mask: ip(255, 255, 255, 0),
                        gateway: ip(10, 0, 0, 1),
                    },
                ))),
            ),
            (
                "client_share_link_register_key",
                c(ClientMessage::ShareLink(ShareLinkRequest::RegisterKey(
                    "k1".into(),
                ))),
            ),
            (
                "client_vpn_get_network_configuration",
                c(ClientMessage::Vpn(ClientVpn::GetNetworkConfiguration)),
            ),
        ]
    }
}

#[test]
fn decoded_values_match_the_descriptions() {
    let vectors = vectors();
    let expected = expected::values();
    let mut failures = Vec::new();
    for (name, want) in &expected {
        let Some(vector) = vectors.iter().find(|v| v.name == *name) else {
            failures.push(format!("{name}: no such vector"));
            continue;
        };
        match decode_whole(vector) {
            Ok(got) if got == *want => {}
            Ok(got) => failures.push(format!("{name}: decoded {got:?}\n  expected {want:?}")),
            Err(err) => failures.push(format!("{name}: {err}")),
        }
        // Encoding the hand-built value must give the golden bytes (except for the set).
        if *name != SET_VECTOR && encode(want) != vector.bytes {
            failures.push(format!("{name}: hand-built value encodes differently"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(expected.len() >= 60, "sample shrank to {}", expected.len());
}

#[test]
fn set_valued_vector_decodes_in_either_order() {
    // Both byte orders the reference encoder produces decode to the same set.
    let a = hex("06000201410142");
    let b = hex("06000201420141");
    let decode = |bytes: &[u8]| match decode_from_slice::<ClientMessage>(bytes).unwrap() {
        Decoded::Message(m, used) if used == bytes.len() => m,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(decode(&a), decode(&b));
}

/// Feeds `bytes` split at every point into a fresh stream codec and checks that the first chunk
/// alone yields nothing (when it is a proper prefix) and both chunks yield exactly `want`.
fn check_splits<C, M>(name: &str, bytes: &[u8], want: &M, failures: &mut Vec<String>)
where
    C: Decoder<Item = M, Error = CodecError> + Default,
    M: PartialEq + std::fmt::Debug,
{
    for split in 0..=bytes.len() {
        let mut codec = C::default();
        let mut buf = BytesMut::from(&bytes[..split]);
        let first = codec.decode(&mut buf);
        if split < bytes.len() {
            match first {
                Ok(None) if buf.len() == split => {}
                other => {
                    failures.push(format!("{name}: prefix of {split} bytes gave {other:?}"));
                    continue;
                }
            }
            buf.extend_from_slice(&bytes[split..]);
            match codec.decode(&mut buf) {
                Ok(Some(got)) if got == *want && buf.is_empty() => {}
                other => failures.push(format!("{name}: split at {split} gave {other:?}")),
            }
        } else {
            match first {
                Ok(Some(got)) if got == *want && buf.is_empty() => {}
                other => failures.push(format!("{name}: whole message gave {other:?}")),
            }
        }
    }
}

#[test]
fn every_split_point_of_every_vector_decodes_the_same_message() {
    let mut failures = Vec::new();
    let mut splits = 0;
    for vector in vectors() {
        splits += vector.bytes.len() + 1;
        match decode_whole(&vector) {
            Ok(Msg::Client(want)) => {
                check_splits::<DaemonCodec, _>(&vector.name, &vector.bytes, &*want, &mut failures)
            }
            Ok(Msg::Daemon(want)) => {
                check_splits::<ClientCodec, _>(&vector.name, &vector.bytes, &*want, &mut failures)
            }
            Err(err) => failures.push(format!("{}: {err}", vector.name)),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // 2 307 proper prefixes (spec §1.6) plus one whole message per vector.
    assert_eq!(splits, 2307 + 176);
}

/// All vectors of one direction back to back on one stream, read in chunks of several sizes.
#[test]
fn concatenated_vectors_decode_in_order_for_any_chunk_size() {
    let vectors = vectors();
    for direction in ["client", "daemon"] {
        let selected: Vec<&Vector> = vectors
            .iter()
            .filter(|v| v.direction == direction)
            .collect();
        let stream: Vec<u8> = selected.iter().flat_map(|v| v.bytes.clone()).collect();
        let want: Vec<Msg> = selected.iter().map(|v| decode_whole(v).unwrap()).collect();
        for chunk in [1, 2, 3, 7, 16, 61, 4096] {
            let mut got = Vec::new();
            let mut buf = BytesMut::new();
            let mut client = DaemonCodec::default();
            let mut daemon = ClientCodec::default();
            for piece in stream.chunks(chunk) {
                buf.extend_from_slice(piece);
                loop {
                    let next = if direction == "client" {
                        client
                            .decode(&mut buf)
                            .unwrap()
                            .map(|m| Msg::Client(Box::new(m)))
                    } else {
                        daemon
                            .decode(&mut buf)
                            .unwrap()
                            .map(|m| Msg::Daemon(Box::new(m)))
                    };
                    match next {
                        Some(message) => got.push(message),
                        None => break,
                    }
                }
            }
            assert!(buf.is_empty(), "{direction}, chunk {chunk}: leftover bytes");
            assert!(got == want, "{direction}, chunk {chunk}: messages differ");
        }
    }
}

mod fuzz {
    //! Property tests: malformed input never panics or loops; generated values round-trip.

    use std::net::{IpAddr, SocketAddr};

    use proptest::prelude::*;

    use super::*;
    use mirrord_operator::protocol::*;

    /// Decodes `bytes` as a stream split at `cuts`; returns how many messages came out. Every
    /// call either consumes bytes, waits for more, or fails, so the loop is bounded.
    fn drain<C>(bytes: &[u8], cuts: &[usize]) -> usize
    where
        C: Decoder<Error = CodecError> + Default,
        C::Item: std::fmt::Debug,
    {
        let mut codec = C::default();
        let mut buf = BytesMut::new();
        let mut count = 0;
        let mut start = 0;
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        ends.push(bytes.len());
        ends.sort_unstable();
        for end in ends {
            buf.extend_from_slice(&bytes[start..end.max(start)]);
            start = end.max(start);
            for _ in 0..=bytes.len() {
                let before = buf.len();
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => {
                        assert!(buf.len() < before, "a message consumed no bytes");
                        count += 1;
                    }
                    Ok(None) => break,
                    Err(_) => return count,
                }
            }
        }
        let _ = codec.decode_eof(&mut buf);
        count
    }

    /// A decoded value must survive encode → decode unchanged (decoding also accepts
    /// non-canonical input, so the bytes themselves may differ).
    fn reencodes<M>(bytes: &[u8]) -> Result<(), TestCaseError>
    where
        M: bincode::Decode<()> + bincode::Encode + PartialEq + std::fmt::Debug,
    {
        if let Ok(Decoded::Message(message, _)) = decode_from_slice::<M>(bytes) {
            let encoded = encode_to_vec(&message).expect("a decoded value encodes");
            match decode_from_slice::<M>(&encoded) {
                Ok(Decoded::Message(again, used)) => {
                    prop_assert_eq!(used, encoded.len());
                    prop_assert_eq!(again, message);
                }
                other => prop_assert!(false, "re-decoding failed: {other:?}"),
            }
        }
        Ok(())
    }

    /// Parsed once: proptest calls this for every case.
    fn golden() -> &'static [Vec<u8>] {
        static GOLDEN: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
        GOLDEN.get_or_init(|| vectors().into_iter().map(|v| v.bytes).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            cuts in proptest::collection::vec(any::<usize>(), 0..4),
        ) {
            drain::<DaemonCodec>(&bytes, &cuts);
            drain::<ClientCodec>(&bytes, &cuts);
            reencodes::<ClientMessage>(&bytes)?;
            reencodes::<DaemonMessage>(&bytes)?;
        }

        /// Mutated golden vectors reach deep into every message family.
        #[test]
        fn mutated_vectors_never_panic(
            index in any::<prop::sample::Index>(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            truncate in any::<Option<prop::sample::Index>>(),
            cuts in proptest::collection::vec(any::<usize>(), 0..3),
        ) {
            let mut bytes = index.get(golden()).clone();
            for (at, value) in &edits {
                let position = at.index(bytes.len());
                bytes[position] = *value;
            }
            if let Some(at) = truncate {
                bytes.truncate(at.index(bytes.len() + 1));
            }
            drain::<DaemonCodec>(&bytes, &cuts);
            drain::<ClientCodec>(&bytes, &cuts);
            reencodes::<ClientMessage>(&bytes)?;
            reencodes::<DaemonMessage>(&bytes)?;
        }
    }

    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9_./*-]{0,12}"
    }

    fn payload() -> impl Strategy<Value = Payload> {
        proptest::collection::vec(any::<u8>(), 0..32).prop_map(Payload::from)
    }

    fn socket_address() -> impl Strategy<Value = SocketAddress> {
        prop_oneof![
            // Flow-info and scope-id are not on the wire, so generate them as zero.
            (any::<IpAddr>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddress::Ip(SocketAddr::new(ip, port))),
            text().prop_map(|p| SocketAddress::Unix(UnixAddr::Pathname(p.into()))),
            proptest::collection::vec(any::<u8>(), 0..8)
                .prop_map(|a| SocketAddress::Unix(UnixAddr::Abstract(a))),
            Just(SocketAddress::Unix(UnixAddr::Unnamed)),
        ]
    }

    fn response_error() -> impl Strategy<Value = ResponseError> {
        prop_oneof![
            text().prop_map(ResponseError::IdsExhausted),
            any::<u64>().prop_map(ResponseError::NotFound),
            (any::<Option<i32>>(), text()).prop_map(|(raw_os_error, kind)| {
                ResponseError::RemoteIO(RemoteIOError {
                    raw_os_error,
                    kind: ErrorKindInternal::Unknown(kind),
                })
            }),
            any::<u16>().prop_map(ResponseError::PortAlreadyStolen),
            Just(ResponseError::NotImplemented),
            (any::<bool>(), any::<u32>(), text()).prop_map(|(can_retry, code, message)| {
                ResponseError::SystemFailure {
                    can_retry,
                    code,
                    message,
                }
            }),
        ]
    }

    fn http_filter() -> impl Strategy<Value = HttpFilter> {
        let leaf = prop_oneof![
            text().prop_map(|f| HttpFilter::Header(Filter(f))),
            text().prop_map(|f| HttpFilter::Path(Filter(f))),
            (0..10usize, text()).prop_map(|(i, other)| {
                let methods = [
                    HttpMethodFilter::Get,
                    HttpMethodFilter::Head,
                    HttpMethodFilter::Post,
                    HttpMethodFilter::Put,
                    HttpMethodFilter::Delete,
                    HttpMethodFilter::Connect,
                    HttpMethodFilter::Options,
                    HttpMethodFilter::Trace,
                    HttpMethodFilter::Patch,
                    HttpMethodFilter::Other(other),
                ];
                HttpFilter::Method(methods[i].clone())
            }),
            (text(), text()).prop_map(|(q, m)| HttpFilter::Body(HttpBodyFilter::Json {
                query: JsonPathQuery(q),
                matches: Filter(m),
            })),
            text().prop_map(|q| HttpFilter::HeaderJq(JqQuery(q))),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            (any::<bool>(), proptest::collection::vec(inner, 0..4))
                .prop_map(|(all, filters)| HttpFilter::Composite { all, filters })
        })
    }

    fn client_message() -> impl Strategy<Value = ClientMessage> {
        prop_oneof![
            Just(ClientMessage::Close),
            Just(ClientMessage::Ping),
            Just(ClientMessage::ReadyForLogs),
            any::<u16>().prop_map(|p| ClientMessage::Tcp(LayerTcp::PortSubscribe(p))),
            (any::<u16>(), http_filter())
                .prop_map(|(p, f)| ClientMessage::Tcp(LayerTcp::PortSubscribeFilteredHttp(p, f))),
            (any::<u16>(), http_filter()).prop_map(|(p, f)| ClientMessage::TcpSteal(
                LayerTcpSteal::PortSubscribe(StealType::FilteredHttpEx(p, f))
            )),
            (any::<u64>(), payload()).prop_map(|(connection_id, bytes)| ClientMessage::TcpSteal(
                LayerTcpSteal::Data(TcpData {
                    connection_id,
                    bytes
                })
            )),
            (any::<u128>(), socket_address()).prop_map(|(uid, remote_address)| {
                ClientMessage::TcpOutgoing(LayerTcpOutgoing::ConnectV2(LayerConnectV2 {
                    uid: Uid(uid),
                    remote_address,
                }))
            }),
            (any::<u64>(), payload()).prop_map(|(connection_id, bytes)| {
                ClientMessage::UdpOutgoing(LayerUdpOutgoing::Write(LayerWrite {
                    connection_id,
                    bytes,
                }))
            }),
            (text(), any::<u16>(), 0..5u8, any::<i32>()).prop_map(|(node, port, f, flags)| {
                let family = [
                    AddressFamily::Ipv4Only,
                    AddressFamily::Ipv6Only,
                    AddressFamily::Both,
                    AddressFamily::Any,
                    AddressFamily::UnknownAddressFamilyFromNewerClient,
                ][f as usize];
                ClientMessage::GetAddrInfoRequestV2(GetAddrInfoRequestV2 {
                    node,
                    service_port: port,
                    family,
                    socktype: SockType::Stream,
                    flags,
                    protocol: -flags.saturating_abs(),
                })
            }),
            (
                proptest::collection::hash_set(text(), 0..4),
                proptest::collection::hash_set(text(), 0..4)
            )
                .prop_map(|(env_vars_filter, env_vars_select)| {
                    ClientMessage::GetEnvVarsRequest(GetEnvVarsRequest {
                        env_vars_filter,
                        env_vars_select,
                    })
                }),
            (any::<u64>(), any::<i64>(), payload()).prop_map(|(fd, offset, bytes)| {
                ClientMessage::FileRequest(if offset % 2 == 0 {
                    FileRequest::Seek(SeekFileRequest {
                        fd,
                        seek_from: SeekFromInternal::End(offset),
                    })
                } else {
                    FileRequest::Write(WriteFileRequest {
                        fd,
                        write_bytes: bytes,
                    })
                })
            }),
            (text(), any::<[bool; 6]>()).prop_map(|(path, f)| {
                ClientMessage::FileRequest(FileRequest::Open(OpenFileRequest {
                    path: path.into(),
                    open_options: OpenOptionsInternal {
                        read: f[0],
                        write: f[1],
                        append: f[2],
                        truncate: f[3],
                        create: f[4],
                        create_new: f[5],
                    },
                }))
            }),
            (any::<u64>(), any::<Option<[(i64, i64); 2]>>()).prop_map(|(fd, times)| {
                ClientMessage::FileRequest(FileRequest::Futimens(FutimensRequest {
                    fd,
                    times: times.map(|t| t.map(|(tv_sec, tv_nsec)| Timespec { tv_sec, tv_nsec })),
                }))
            }),
            (0u64..1000, 0u64..1000, 0u64..1000).prop_map(|(a, b, c)| {
                ClientMessage::SwitchProtocolVersion(semver::Version::new(a, b, c))
            }),
            any::<u128>().prop_map(ClientMessage::OperatorPong),
        ]
    }

    fn daemon_message() -> impl Strategy<Value = DaemonMessage> {
        prop_oneof![
            text().prop_map(DaemonMessage::Close),
            Just(DaemonMessage::Pong),
            (text(), 0..3u8).prop_map(|(message, l)| DaemonMessage::LogMessage(LogMessage {
                message,
                level: [LogLevel::Warn, LogLevel::Error, LogLevel::Info][l as usize],
            })),
            proptest::result::maybe_ok(any::<u16>(), response_error())
                .prop_map(|r| DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(r))),
            (
                any::<u64>(),
                any::<IpAddr>(),
                any::<u16>(),
                any::<u16>(),
                any::<IpAddr>()
            )
                .prop_map(|(id, remote, dst, src, local)| {
                    DaemonMessage::Tcp(DaemonTcp::NewConnectionV1(NewTcpConnectionV1 {
                        connection_id: id,
                        remote_address: remote,
                        destination_port: dst,
                        source_port: src,
                        local_address: local,
                    }))
                }),
            (
                any::<u128>(),
                proptest::result::maybe_ok(
                    (any::<u64>(), socket_address(), socket_address()),
                    response_error()
                )
            )
                .prop_map(|(uid, connect)| {
                    DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::ConnectV2(DaemonConnectV2 {
                        uid: Uid(uid),
                        connect: connect.map(|(connection_id, remote_address, local_address)| {
                            DaemonConnect {
                                connection_id,
                                remote_address,
                                local_address,
                            }
                        }),
                    }))
                }),
            proptest::result::maybe_ok(
                proptest::collection::vec((text(), any::<IpAddr>()), 0..4),
                response_error()
            )
            .prop_map(|records| {
                DaemonMessage::GetAddrInfoResponse(GetAddrInfoResponse(records.map(|r| {
                    DnsLookup(
                        r.into_iter()
                            .map(|(name, ip)| LookupRecord { name, ip })
                            .collect(),
                    )
                })))
            }),
            proptest::collection::hash_map(text(), text(), 0..4)
                .prop_map(|vars| DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(vars)))),
            (payload(), any::<u64>()).prop_map(|(bytes, read_amount)| {
                DaemonMessage::File(FileResponse::ReadLimited(Ok(ReadFileResponse {
                    bytes,
                    read_amount,
                })))
            }),
            (
                any::<u64>(),
                proptest::collection::vec((any::<u64>(), text(), any::<u8>()), 0..4)
            )
                .prop_map(|(fd, entries)| {
                    DaemonMessage::File(FileResponse::ReadDirBatch(Ok(ReadDirBatchResponse {
                        fd,
                        dir_entries: entries
                            .into_iter()
                            .enumerate()
                            .map(|(i, (inode, name, file_type))| DirEntryInternal {
                                inode,
                                position: i as u64,
                                name,
                                file_type,
                            })
                            .collect(),
                    })))
                }),
            any::<u128>().prop_map(DaemonMessage::OperatorPing),
        ]
    }

    /// HTTP heads with generated header maps (lower-case token names, visible-ASCII values).
    fn http_response() -> impl Strategy<Value = ClientMessage> {
        (
            100u16..1000,
            0..5usize,
            proptest::collection::vec(("[a-z][a-z0-9-]{0,8}", "[ -~]{0,12}"), 0..6),
            proptest::collection::vec(payload(), 0..3),
        )
            .prop_map(|(status, version, headers, frames)| {
                let mut map = ::http::HeaderMap::new();
                for (name, value) in headers {
                    map.append(
                        ::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        ::http::HeaderValue::from_str(&value).unwrap(),
                    );
                }
                let versions = [
                    ::http::Version::HTTP_09,
                    ::http::Version::HTTP_10,
                    ::http::Version::HTTP_11,
                    ::http::Version::HTTP_2,
                    ::http::Version::HTTP_3,
                ];
                ClientMessage::TcpSteal(LayerTcpSteal::HttpResponseChunked(ChunkedResponse::Start(
                    HttpResponse {
                        port: 80,
                        connection_id: 1,
                        request_id: 2,
                        internal_response: InternalHttpResponse {
                            status: ::http::StatusCode::from_u16(status).unwrap(),
                            version: versions[version],
                            headers: map.clone(),
                            body: frames
                                .into_iter()
                                .map(InternalHttpBodyFrame::Data)
                                .chain([InternalHttpBodyFrame::Trailers(map)])
                                .collect(),
                        },
                    },
                )))
            })
    }

    fn round_trip<M>(message: &M) -> Result<(), TestCaseError>
    where
        M: bincode::Decode<()> + bincode::Encode + PartialEq + std::fmt::Debug,
    {
        let bytes = encode_to_vec(message).expect("encode");
        match decode_from_slice::<M>(&bytes) {
            Ok(Decoded::Message(decoded, used)) => {
                prop_assert_eq!(used, bytes.len());
                prop_assert_eq!(&decoded, message);
            }
            other => prop_assert!(false, "decoding failed: {other:?}"),
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn generated_client_messages_round_trip(message in client_message()) {
            round_trip(&message)?;
        }

        #[test]
        fn generated_daemon_messages_round_trip(message in daemon_message()) {
            round_trip(&message)?;
        }

        #[test]
        fn generated_http_responses_round_trip(message in http_response()) {
            round_trip(&message)?;
        }
    }
}

/// Spec §1.3/§1.5/§1.6: what the reference decoder rejects is fatal here too, with a reason;
/// what it tolerates (non-shortest varints, upper-case header names) is accepted.
#[test]
fn malformed_inputs_are_rejected_with_reasons() {
    let client = |h: &str| decode_from_slice::<ClientMessage>(&hex(h));
    // Outcome without the message type, so both directions fit in one table.
    let c = |h: &str| client(h).map(|d| format!("{d:?}"));
    let daemon = |h: &str| decode_from_slice::<DaemonMessage>(&hex(h)).map(|d| format!("{d:?}"));
    let rejected = [
        ("FF varint marker", "Reserved", c("ff")),
        ("unknown ClientMessage index", "found: 18", c("12")),
        ("unknown DaemonMessage index", "found: 16", daemon("10")),
        (
            "u16 with a u32 marker",
            "expected: U16, found: U32",
            c("0100fc50000000"),
        ),
        ("bool 02", "InvalidBooleanValue(2)", c("0902")),
        ("option tag 02", "Option", c("050902")),
        ("invalid UTF-8", "Utf8", daemon("0001ff")),
        (
            "semver with a v prefix",
            "major version",
            c("0a06763 12e302e30".replace(' ', "").as_str()),
        ),
        (
            "semver with two components",
            "minor version",
            c("0a03312e30"),
        ),
        (
            "HTTP/2 instead of HTTP/2.0",
            "invalid HTTP version",
            c("0204500000fbf60106485454502f320003626164"),
        ),
        (
            "status 99",
            "status code: 99",
            c("02045000006308485454502f312e310003626164"),
        ),
        (
            "status 1000",
            "status code: 1000",
            c("0204500000fbe80308485454502f312e310003626164"),
        ),
        (
            "header name with a space",
            "invalid header name",
            c("0205500000c808485454502f312e310108626164206e616d650101320100026f6b"),
        ),
        (
            "header value with a newline",
            "invalid header value",
            c("0205500000c808485454502f312e31010e636f6e74656e742d6c656e67746801010a0100026f6b"),
        ),
        (
            "URI with a space",
            "invalid URI",
            daemon(
                "02040347455403 2f2078 0008485454502f312e3000050050"
                    .replace(' ', "")
                    .as_str(),
            ),
        ),
        (
            "method with a space",
            "invalid HTTP method",
            daemon("020403472054012f0008485454502f312e3000050050"),
        ),
        (
            "InternalHttpBodyFrame index 2",
            "InternalHttpBodyFrame",
            daemon("0206010102000100"),
        ),
        ("HttpFilter index 6", "\"HttpFilter\"", c("0200025006")),
    ];
    let mut failures = Vec::new();
    for (what, reason_part, result) in rejected {
        match result {
            Err(CodecError::Malformed(reason)) if reason.to_string().contains(reason_part) => {}
            other => failures.push(format!("{what}: {other:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Non-shortest enum index (FB 07 00 = 7 = Ping) is accepted.
    assert!(matches!(
        client("fb0700"),
        Ok(Decoded::Message(ClientMessage::Ping, 3))
    ));
    // Upper-case header names are lowercased; re-encoding gives the canonical vector.
    let upper = "0205500000c808485454502f312e31010e436f6e74656e742d4c656e6774680101320100026f6b";
    let Ok(Decoded::Message(message, _)) = client(upper) else {
        panic!("upper-case header name rejected");
    };
    assert_eq!(
        encode_to_vec(&message).unwrap(),
        hex("0205500000c808485454502f312e31010e636f6e74656e742d6c656e6774680101320100026f6b")
    );
}

/// Spec §1.5: a repeated header name with one value replaces, with several values appends,
/// with zero values adds nothing.
#[test]
fn repeated_header_names_follow_the_reference_decoder() {
    // Response head with headers: a: [1], a: [2] → a: 2; b: [1], b: [2, 3] → b: 1, 2, 3;
    // c: [] → nothing.
    let bytes = hex(concat!(
        "0206005000",
        "00c808485454502f312e31",
        "05",
        "016101013101610101 32",
        "0162010131016202013201 33",
        "016300",
        "00"
    )
    .replace(' ', "")
    .as_str());
    let Ok(Decoded::Message(
        ClientMessage::TcpSteal(LayerTcpSteal::HttpResponseChunked(ChunkedResponse::Start(
            response,
        ))),
        used,
    )) = decode_from_slice::<ClientMessage>(&bytes)
    else {
        panic!("did not decode");
    };
    assert_eq!(used, bytes.len());
    let headers = &response.internal_response.headers;
    let values =
        |name: &str| -> Vec<&[u8]> { headers.get_all(name).iter().map(|v| v.as_bytes()).collect() };
    assert_eq!(values("a"), [b"2"]);
    assert_eq!(values("b"), [b"1", b"2", b"3"]);
    assert!(values("c").is_empty());
    assert_eq!(headers.keys_len(), 2);
}
