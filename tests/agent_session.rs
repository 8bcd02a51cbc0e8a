//! The real `mirrord-operator agent` process in its own network namespace, driven over
//! `--listen` by a client built on the protocol codec: negotiation, ping, env, DNS, files,
//! outgoing TCP/UDP, many sessions, bad input, SIGTERM. Needs root (creates namespaces).

#[path = "support/cli_messages.rs"]
mod cli_messages;
#[path = "support/netns.rs"]
mod netns;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use mirrord_operator::protocol::*;
use netns::NetNs;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const AGENT_PORT: u16 = 61337;
const TIMEOUT: Duration = Duration::from_secs(10);

fn agent_bin() -> &'static str {
    env!("CARGO_BIN_EXE_mirrord-operator")
}

/// A protocol client over one TCP connection.
struct Client {
    framed: Framed<TcpStream, ClientCodec>,
}

impl Client {
    async fn connect(ns: &NetNs) -> Client {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, AGENT_PORT));
        // The socket is created inside the namespace and keeps living there.
        let std_stream = ns.run_in(|| std::net::TcpStream::connect(addr).expect("connect agent"));
        std_stream.set_nonblocking(true).unwrap();
        let stream = TcpStream::from_std(std_stream).unwrap();
        Client {
            framed: Framed::new(stream, ClientCodec::default()),
        }
    }

    async fn send(&mut self, msg: ClientMessage) {
        self.framed.send(msg).await.expect("send");
    }

    async fn recv(&mut self) -> DaemonMessage {
        tokio::time::timeout(TIMEOUT, self.framed.next())
            .await
            .expect("agent answered in time")
            .expect("stream open")
            .expect("valid message")
    }

    /// Sends and returns the next message.
    async fn ask(&mut self, msg: ClientMessage) -> DaemonMessage {
        self.send(msg).await;
        self.recv().await
    }

    /// The stream ends (agent closed the session).
    async fn expect_eof(&mut self) {
        let next = tokio::time::timeout(TIMEOUT, self.framed.next())
            .await
            .expect("agent closed in time");
        assert!(
            matches!(next, None | Some(Err(_))),
            "expected EOF, got {next:?}"
        );
    }

    async fn handshake(&mut self) {
        assert_eq!(self.ask(ClientMessage::Ping).await, DaemonMessage::Pong);
        let v = semver::Version::new(1, 29, 0);
        assert_eq!(
            self.ask(ClientMessage::SwitchProtocolVersion(v.clone()))
                .await,
            DaemonMessage::SwitchProtocolVersionResponse(v)
        );
        self.send(ClientMessage::ReadyForLogs).await;
    }
}

/// `/etc/netns/<ns>/` files are bind-mounted over `/etc` by `ip netns exec` for the agent, so the
/// agent's resolver sees this namespace's own `hosts`. Removed on drop.
struct NetnsEtc(PathBuf);

impl NetnsEtc {
    fn new(ns: &NetNs, hosts: &str) -> NetnsEtc {
        let dir = Path::new("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&dir).unwrap();
        let guard = NetnsEtc(dir);
        std::fs::write(guard.0.join("hosts"), hosts).unwrap();
        guard
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // Only succeeds when no other test still uses it.
        let _ = std::fs::remove_dir("/etc/netns");
    }
}

/// The target's filesystem as the webhook would mount it, plus a secret outside it.
fn target_root() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("target");
    std::fs::create_dir_all(root.join("etc/app")).unwrap();
    std::fs::write(root.join("etc/app/config.yaml"), b"db: postgres\n").unwrap();
    std::fs::write(root.join("etc/app/other"), b"x").unwrap();
    std::os::unix::fs::symlink("config.yaml", root.join("etc/app/current")).unwrap();
    std::os::unix::fs::symlink("../../../secret", root.join("etc/app/escape")).unwrap();
    std::fs::write(tmp.path().join("secret"), b"SECRET").unwrap();
    (tmp, root)
}

fn agent_command(ns: &NetNs, root: &Path, extra_env: &[(&str, &str)]) -> Command {
    configure_agent(ns.command(agent_bin()), root, extra_env)
}

/// `cmd` runs the agent binary: the development flags every test uses, plus `extra_env`.
fn configure_agent(mut cmd: Command, root: &Path, extra_env: &[(&str, &str)]) -> Command {
    cmd.args(["agent", "--listen", &format!("127.0.0.1:{AGENT_PORT}")])
        .env("MIRRORD_AGENT_REDIRECT", "off")
        .env("MIRRORD_AGENT_CHAIN_PREFIX", "SESSTEST")
        .env("MIRRORD_AGENT_TARGET_ROOT", root)
        .env("MIRRORD_AGENT_FS_MODE", "volumes")
        .env("MIRRORD_AGENT_ENV_MODE", "spec")
        .env("MIRRORD_AGENT_LOG_LEVEL", "warn")
        .stdout(Stdio::null());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd
}

fn start_agent(ns: &NetNs, root: &Path, extra_env: &[(&str, &str)]) {
    ns.spawn(agent_command(ns, root, extra_env));
    ns.wait_for_port(SocketAddr::from((Ipv4Addr::LOCALHOST, AGENT_PORT)), TIMEOUT);
}

/// Kills the child on drop unless it was already reaped (test failure paths).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn negotiation_ping_env_and_dns_in_a_namespace() {
    let ns = NetNs::new("sess");
    let _etc = NetnsEtc::new(
        &ns,
        "127.0.0.1 localhost\n10.77.5.9 db.mirrord-test.internal db\nfd00::9 v6only.mirrord-test.internal\n",
    );
    let (_tmp, root) = target_root();
    start_agent(
        &ns,
        &root,
        &[
            ("MIRRORD_TARGET_ENV_DB_HOST", "db.mirrord-test.internal"),
            ("MIRRORD_TARGET_ENV_DB_PASSWORD", "hunter2"),
            ("MIRRORD_TARGET_ENV_PATH", "/usr/bin"),
            ("MIRRORD_TARGET_ENV_API_URL", "http://api"),
        ],
    );
    rt().block_on(async {
        let mut c = Client::connect(&ns).await;
        // Ping is answered before negotiation too.
        c.handshake().await;

        // An older client gets its own version back.
        let old = semver::Version::new(1, 19, 0);
        assert_eq!(
            c.ask(ClientMessage::SwitchProtocolVersion(old.clone()))
                .await,
            DaemonMessage::SwitchProtocolVersionResponse(old)
        );
        // A newer one gets ours.
        assert_eq!(
            c.ask(ClientMessage::SwitchProtocolVersion(semver::Version::new(
                1, 40, 0
            )))
            .await,
            DaemonMessage::SwitchProtocolVersionResponse(semver::Version::new(1, 29, 0))
        );

        // Env: the target's declared env (prefix stripped), with select/filter wildcards.
        let all = c
            .ask(ClientMessage::GetEnvVarsRequest(GetEnvVarsRequest {
                env_vars_filter: HashSet::new(),
                env_vars_select: HashSet::from(["*".to_owned()]),
            }))
            .await;
        let DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(all))) = all else {
            panic!("unexpected {all:?}")
        };
        assert_eq!(
            all.len(),
            3,
            "PATH is always excluded, agent env never leaks: {all:?}"
        );
        assert_eq!(all["DB_HOST"], "db.mirrord-test.internal");
        assert!(!all.keys().any(|k| k.starts_with("MIRRORD_")));
        let db = c
            .ask(ClientMessage::GetEnvVarsRequest(GetEnvVarsRequest {
                env_vars_filter: HashSet::from(["*PASSWORD".to_owned()]),
                env_vars_select: HashSet::from(["DB_*".to_owned()]),
            }))
            .await;
        let DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(db))) = db else {
            panic!("unexpected {db:?}")
        };
        assert_eq!(db.keys().collect::<Vec<_>>(), vec!["DB_HOST"]);

        // DNS through the namespace's resolver configuration; answers in request order.
        c.send(ClientMessage::GetAddrInfoRequestV2(GetAddrInfoRequestV2 {
            node: "db.mirrord-test.internal".into(),
            service_port: 5432,
            family: AddressFamily::Both,
            socktype: SockType::Stream,
            flags: 0,
            protocol: 0,
        }))
        .await;
        c.send(ClientMessage::GetAddrInfoRequest(GetAddrInfoRequest {
            node: "no-such-name.invalid".into(),
        }))
        .await;
        c.send(ClientMessage::GetAddrInfoRequestV2(GetAddrInfoRequestV2 {
            node: "v6only.mirrord-test.internal".into(),
            service_port: 0,
            family: AddressFamily::Ipv6Only,
            socktype: SockType::Any,
            flags: 0,
            protocol: 0,
        }))
        .await;
        let first = c.recv().await;
        let DaemonMessage::GetAddrInfoResponse(GetAddrInfoResponse(Ok(DnsLookup(records)))) = first
        else {
            panic!("unexpected {first:?}")
        };
        assert_eq!(
            records,
            vec![LookupRecord {
                name: "db.mirrord-test.internal.".into(),
                ip: IpAddr::from([10, 77, 5, 9]),
            }]
        );
        let second = c.recv().await;
        assert!(
            matches!(
                second,
                DaemonMessage::GetAddrInfoResponse(GetAddrInfoResponse(Err(
                    ResponseError::DnsLookup(_)
                )))
            ),
            "{second:?}"
        );
        let third = c.recv().await;
        let DaemonMessage::GetAddrInfoResponse(GetAddrInfoResponse(Ok(DnsLookup(v6)))) = third
        else {
            panic!("unexpected {third:?}")
        };
        assert_eq!(v6.len(), 1);
        assert_eq!(v6[0].ip, "fd00::9".parse::<IpAddr>().unwrap());

        // Unsupported features end the session with Close, as the reference does.
        assert!(matches!(
            c.ask(ClientMessage::PauseTargetRequest(true)).await,
            DaemonMessage::Close(_)
        ));
        c.expect_eof().await;
    });
}

fn open_ro(path: &str) -> ClientMessage {
    ClientMessage::FileRequest(FileRequest::Open(OpenFileRequest {
        path: path.into(),
        open_options: OpenOptionsInternal {
            read: true,
            ..Default::default()
        },
    }))
}

fn file(msg: DaemonMessage) -> FileResponse {
    match msg {
        DaemonMessage::File(f) => f,
        other => panic!("expected a file response, got {other:?}"),
    }
}

#[test]
fn files_of_the_target_read_only_and_jailed() {
    let ns = NetNs::new("files");
    let (_tmp, root) = target_root();
    start_agent(&ns, &root, &[]);
    rt().block_on(async {
        let mut c = Client::connect(&ns).await;
        c.handshake().await;

        let FileResponse::Open(Ok(OpenFileResponse { fd })) =
            file(c.ask(open_ro("/etc/app/current")).await)
        else {
            panic!("open failed")
        };
        assert_eq!(fd, 0);
        let read = file(
            c.ask(ClientMessage::FileRequest(FileRequest::ReadLimited(
                ReadLimitedFileRequest {
                    remote_fd: fd,
                    buffer_size: 128_000,
                    start_from: 4,
                },
            )))
            .await,
        );
        let FileResponse::ReadLimited(Ok(ReadFileResponse { bytes, read_amount })) = read else {
            panic!("unexpected {read:?}")
        };
        assert_eq!(&bytes[..], b"postgres\n");
        assert_eq!(read_amount, 9);

        // Close gets no answer: the next answer belongs to the next request.
        c.send(ClientMessage::FileRequest(FileRequest::Close(
            CloseFileRequest { fd },
        )))
        .await;
        let stat = file(
            c.ask(ClientMessage::FileRequest(FileRequest::Xstat(
                XstatRequest {
                    path: Some("/etc/app/config.yaml".into()),
                    fd: None,
                    follow_symlink: true,
                },
            )))
            .await,
        );
        let FileResponse::Xstat(Ok(XstatResponse { metadata })) = stat else {
            panic!("unexpected {stat:?}")
        };
        assert_eq!(metadata.size, 13);

        // Escapes through `..` and symlinks find nothing outside the root.
        for path in ["/../secret", "/etc/app/escape", "/etc/../../../secret"] {
            let r = file(c.ask(open_ro(path)).await);
            assert!(
                matches!(
                    &r,
                    FileResponse::Open(Err(ResponseError::RemoteIO(RemoteIOError {
                        raw_os_error: Some(2),
                        ..
                    })))
                ),
                "{path}: {r:?}"
            );
        }

        // Writes are refused with EROFS in the mapped response variant.
        let write_open = ClientMessage::FileRequest(FileRequest::Open(OpenFileRequest {
            path: "/etc/app/new".into(),
            open_options: OpenOptionsInternal {
                write: true,
                create: true,
                ..Default::default()
            },
        }));
        let r = file(c.ask(write_open).await);
        assert!(
            matches!(
                &r,
                FileResponse::Open(Err(ResponseError::RemoteIO(RemoteIOError {
                    raw_os_error: Some(30),
                    kind: ErrorKindInternal::ReadOnlyFilesystem
                })))
            ),
            "{r:?}"
        );
        let r = file(
            c.ask(ClientMessage::FileRequest(FileRequest::Unlink(
                UnlinkRequest {
                    pathname: "/etc/app/other".into(),
                },
            )))
            .await,
        );
        assert!(matches!(r, FileResponse::Unlink(Err(_))), "{r:?}");
        assert!(root.join("etc/app/other").exists());

        // Directory listing in batches, readlink, statfs.
        let FileResponse::Open(Ok(OpenFileResponse { fd: dir })) =
            file(c.ask(open_ro("/etc/app")).await)
        else {
            panic!("open dir failed")
        };
        let FileResponse::OpenDir(Ok(OpenDirResponse { fd: stream })) = file(
            c.ask(ClientMessage::FileRequest(FileRequest::FdOpenDir(
                FdOpenDirRequest { remote_fd: dir },
            )))
            .await,
        ) else {
            panic!("fdopendir failed")
        };
        let batch = file(
            c.ask(ClientMessage::FileRequest(FileRequest::ReadDirBatch(
                ReadDirBatchRequest {
                    remote_fd: stream,
                    amount: 128,
                },
            )))
            .await,
        );
        let FileResponse::ReadDirBatch(Ok(ReadDirBatchResponse { dir_entries, .. })) = batch else {
            panic!("unexpected {batch:?}")
        };
        let mut names: Vec<String> = dir_entries.into_iter().map(|e| e.name).collect();
        names.sort();
        assert_eq!(names, vec!["config.yaml", "current", "escape", "other"]);
        let link = file(
            c.ask(ClientMessage::FileRequest(FileRequest::ReadLink(
                ReadLinkFileRequest {
                    path: "/etc/app/current".into(),
                },
            )))
            .await,
        );
        assert_eq!(
            link,
            FileResponse::ReadLink(Ok(ReadLinkFileResponse {
                path: "config.yaml".into()
            }))
        );
        let fs = file(
            c.ask(ClientMessage::FileRequest(FileRequest::StatFsV2(
                StatFsRequestV2 {
                    path: "/etc".into(),
                },
            )))
            .await,
        );
        assert!(matches!(fs, FileResponse::XstatFsV2(Ok(_))), "{fs:?}");
        let bad_fd = file(
            c.ask(ClientMessage::FileRequest(FileRequest::Read(
                ReadFileRequest {
                    remote_fd: 4242,
                    buffer_size: 10,
                },
            )))
            .await,
        );
        assert_eq!(
            bad_fd,
            FileResponse::Read(Err(ResponseError::NotFound(4242)))
        );
    });
}

/// A TCP echo server (one connection: echoes until EOF, then closes) and a UDP echo socket,
/// both inside the namespace.
fn echo_servers(ns: &NetNs) -> (SocketAddr, SocketAddr) {
    let (tcp, udp) = ns.run_in(|| {
        (
            TcpListener::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        )
    });
    let (tcp_addr, udp_addr) = (tcp.local_addr().unwrap(), udp.local_addr().unwrap());
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = tcp.accept() {
            let mut buf = [0u8; 1024];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    });
    udp.set_read_timeout(Some(TIMEOUT)).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        if let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    (tcp_addr, udp_addr)
}

#[test]
fn outgoing_tcp_and_udp_from_inside_the_namespace() {
    let ns = NetNs::new("out");
    let (_tmp, root) = target_root();
    start_agent(&ns, &root, &[]);
    let (tcp_addr, udp_addr) = echo_servers(&ns);
    rt().block_on(async {
        let mut c = Client::connect(&ns).await;
        c.handshake().await;

        // Legacy connect to a closed port: refused with the errno, no id consumed.
        let refused = c
            .ask(ClientMessage::TcpOutgoing(LayerTcpOutgoing::Connect(
                LayerConnect {
                    remote_address: SocketAddress::Ip(SocketAddr::from((Ipv4Addr::LOCALHOST, 1))),
                },
            )))
            .await;
        assert!(
            matches!(
                refused,
                DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Connect(Err(
                    ResponseError::RemoteIO(RemoteIOError {
                        raw_os_error: Some(111),
                        kind: ErrorKindInternal::ConnectionRefused
                    })
                )))
            ),
            "{refused:?}"
        );

        let uid = Uid(0x0f1e_2d3c_4b5a_4978_8695_a4b3_c2d1_e0f0);
        let connected = c
            .ask(ClientMessage::TcpOutgoing(LayerTcpOutgoing::ConnectV2(
                LayerConnectV2 {
                    uid,
                    remote_address: SocketAddress::Ip(tcp_addr),
                },
            )))
            .await;
        let DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::ConnectV2(DaemonConnectV2 {
            uid: echoed,
            connect:
                Ok(DaemonConnect {
                    connection_id,
                    remote_address,
                    ..
                }),
        })) = connected
        else {
            panic!("unexpected {connected:?}")
        };
        assert_eq!(echoed, uid);
        assert_eq!(connection_id, 0, "the refused connect consumed no id");
        assert_eq!(remote_address, SocketAddress::Ip(tcp_addr));

        c.send(ClientMessage::TcpOutgoing(LayerTcpOutgoing::Write(
            LayerWrite {
                connection_id,
                bytes: Payload::from(b"hello agent".to_vec()),
            },
        )))
        .await;
        let mut echoed = Vec::new();
        while echoed.len() < 11 {
            match c.recv().await {
                DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Read(Ok(DaemonRead {
                    connection_id: 0,
                    bytes,
                }))) => echoed.extend_from_slice(&bytes),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(echoed, b"hello agent");
        // Half-close: the echo server sees EOF and closes; both sides done → Close(0).
        c.send(ClientMessage::TcpOutgoing(LayerTcpOutgoing::Write(
            LayerWrite {
                connection_id,
                bytes: Payload::default(),
            },
        )))
        .await;
        assert_eq!(
            c.recv().await,
            DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Close(0))
        );

        // UDP has its own ids, from 0.
        let udp = c
            .ask(ClientMessage::UdpOutgoing(LayerUdpOutgoing::Connect(
                LayerConnect {
                    remote_address: SocketAddress::Ip(udp_addr),
                },
            )))
            .await;
        let DaemonMessage::UdpOutgoing(DaemonUdpOutgoing::Connect(Ok(DaemonConnect {
            connection_id: 0,
            ..
        }))) = udp
        else {
            panic!("unexpected {udp:?}")
        };
        c.send(ClientMessage::UdpOutgoing(LayerUdpOutgoing::Write(
            LayerWrite {
                connection_id: 0,
                bytes: Payload::from(b"datagram".to_vec()),
            },
        )))
        .await;
        assert_eq!(
            c.recv().await,
            DaemonMessage::UdpOutgoing(DaemonUdpOutgoing::Read(Ok(DaemonRead {
                connection_id: 0,
                bytes: Payload::from(b"datagram".to_vec()),
            })))
        );
        c.send(ClientMessage::UdpOutgoing(LayerUdpOutgoing::Close(
            LayerClose { connection_id: 0 },
        )))
        .await;
        // Close has no reply: a ping right after gets the next answer.
        assert_eq!(c.ask(ClientMessage::Ping).await, DaemonMessage::Pong);
    });
}

#[test]
fn many_sessions_garbage_and_sigterm() {
    let ns = NetNs::new("life");
    let (_tmp, root) = target_root();
    let mut agent = ChildGuard(agent_command(&ns, &root, &[]).spawn().unwrap());
    ns.wait_for_port(SocketAddr::from((Ipv4Addr::LOCALHOST, AGENT_PORT)), TIMEOUT);
    let agent_pid = agent.0.id();
    let open_fds = move || {
        std::fs::read_dir(format!("/proc/{agent_pid}/fd"))
            .unwrap()
            .count()
    };
    let idle_fds = open_fds();
    rt().block_on(async {
        let mut clients = Vec::new();
        for _ in 0..20 {
            let mut c = Client::connect(&ns).await;
            c.handshake().await;
            // Every session holds an open file of the target.
            let opened = file(c.ask(open_ro("/etc/app/config.yaml")).await);
            assert!(matches!(opened, FileResponse::Open(Ok(_))), "{opened:?}");
            clients.push(c);
        }
        // A socket and a file per session; one less since `idle_fds` may count a transient fd.
        assert!(open_fds() >= idle_fds + 39, "sockets and files are held");
        for c in &mut clients {
            assert_eq!(c.ask(ClientMessage::Ping).await, DaemonMessage::Pong);
        }
        // Bytes that are no message: that session is dropped, the others live on.
        let mut bad = Client::connect(&ns).await;
        tokio::io::AsyncWriteExt::write_all(bad.framed.get_mut(), &[0xff, 0xff])
            .await
            .unwrap();
        bad.expect_eof().await;
        for c in &mut clients {
            assert_eq!(c.ask(ClientMessage::Ping).await, DaemonMessage::Pong);
        }
        // A client that leaves mid-way does not disturb the others either.
        clients.pop().unwrap().send(ClientMessage::Close).await;
        assert_eq!(
            clients[0].ask(ClientMessage::Ping).await,
            DaemonMessage::Pong
        );
        // Disconnected sessions release every fd they held (bounded wait: cleanup is async).
        // The idle count may include a transient fd (e.g. the readiness probe), hence `<=`.
        drop(clients);
        let deadline = std::time::Instant::now() + TIMEOUT;
        while open_fds() > idle_fds {
            assert!(
                std::time::Instant::now() < deadline,
                "fds leaked: {} open, {idle_fds} when idle",
                open_fds()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // SIGTERM: clean exit with status 0, in bounded time. The child is `ip netns exec`, which
    // execs the agent, so its pid is the agent's.
    let status = Command::new("kill")
        .args(["-TERM", &agent.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + TIMEOUT;
    let exit = loop {
        if let Some(exit) = agent.0.try_wait().unwrap() {
            break exit;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "SIGTERM exit status: {exit:?}");
}

#[test]
fn refuses_non_loopback_listen_without_insecure_flag() {
    let out = Command::new(agent_bin())
        .args(["agent", "--listen", "10.1.2.3:7000"])
        .env_remove("MIRRORD_AGENT_INSECURE_LISTEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--insecure-listen"), "{stderr}");
}

const APP: u16 = 8080;

fn steal_filtered(user: &str) -> ClientMessage {
    ClientMessage::TcpSteal(LayerTcpSteal::PortSubscribe(StealType::FilteredHttpEx(
        APP,
        HttpFilter::Header(Filter(format!("^x-mirrord-user: {user}$"))),
    )))
}

/// `curl` from the caller namespace (another "pod") to the app's port on the pod address.
fn curl(ns: &NetNs, header: Option<&str>) -> std::process::Output {
    let mut cmd = ns.caller_command("curl");
    cmd.args(["-sS", "--max-time", "10"]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!("http://{}:{APP}/hello.txt", netns::POD_ADDR))
        .output()
        .unwrap()
}

/// Waits for a stolen request on `c` and answers it with `body`; returns the request path.
async fn answer_stolen(c: &mut Client, body: &'static str) -> String {
    let (connection_id, path) = loop {
        match c.recv().await {
            DaemonMessage::TcpSteal(DaemonTcp::HttpRequestChunked(ChunkedRequest::StartV2(
                start,
            ))) => break (start.connection_id, start.request.uri.path().to_owned()),
            // Logs, and the Close that ends an earlier exchange.
            DaemonMessage::LogMessage(_) | DaemonMessage::TcpSteal(DaemonTcp::Close(_)) => continue,
            other => panic!("expected a stolen request, got {other:?}"),
        }
    };
    c.send(cli_messages::ok_response(APP, connection_id, body))
        .await;
    path
}

fn start_steal_agent(ns: &NetNs, root: &Path) -> u32 {
    let cmd = agent_command(
        ns,
        root,
        &[
            ("MIRRORD_AGENT_REDIRECT", "iptables"),
            ("MIRRORD_AGENT_CHAIN_PREFIX", "E2E"),
        ],
    );
    let pid = ns.spawn(cmd);
    ns.wait_for_port(SocketAddr::from((Ipv4Addr::LOCALHOST, AGENT_PORT)), TIMEOUT);
    pid
}

/// The whole path through the real process: `--listen` sessions subscribe with header filters,
/// iptables redirects the caller's requests, matching ones reach the right session, others the
/// app; an unfiltered steal is refused; SIGKILL mid-steal, restart: no stale rules, app answers.
#[test]
fn header_filtered_steal_through_the_agent_process_and_sigkill_restart() {
    let ns = NetNs::with_caller("steal");
    let _site = ns.serve_hello(APP, "from the app", TIMEOUT);
    assert_eq!(curl(&ns, None).stdout, b"from the app");

    let (_tmp, root) = target_root();
    let pid = start_steal_agent(&ns, &root);
    rt().block_on(async {
        let mut alice = Client::connect(&ns).await;
        alice.handshake().await;
        assert_eq!(
            alice.ask(steal_filtered("alice")).await,
            DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(Ok(APP)))
        );
        let mut bob = Client::connect(&ns).await;
        bob.handshake().await;
        assert_eq!(
            bob.ask(steal_filtered("bob")).await,
            DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(Ok(APP)))
        );
        let mut greedy = Client::connect(&ns).await;
        greedy.handshake().await;
        assert_eq!(
            greedy
                .ask(ClientMessage::TcpSteal(LayerTcpSteal::PortSubscribe(
                    StealType::All(APP)
                )))
                .await,
            DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(Err(
                ResponseError::PortAlreadyStolen(APP)
            )))
        );
        assert!(
            !ns.nat_rules_with("E2E").is_empty(),
            "subscribed port is redirected"
        );

        let ns_ref = &ns;
        let (alice_curl, alice_path) = tokio::join!(
            tokio::task::spawn_blocking({
                let name = ns_ref.caller_name().unwrap().to_owned();
                move || caller_curl(&name, Some("x-mirrord-user: alice"))
            }),
            answer_stolen(&mut alice, "stolen by alice"),
        );
        assert_eq!(alice_path, "/hello.txt");
        assert_eq!(alice_curl.unwrap().stdout, b"stolen by alice");
        let (bob_curl, _) = tokio::join!(
            tokio::task::spawn_blocking({
                let name = ns_ref.caller_name().unwrap().to_owned();
                move || caller_curl(&name, Some("x-mirrord-user: bob"))
            }),
            answer_stolen(&mut bob, "stolen by bob"),
        );
        assert_eq!(bob_curl.unwrap().stdout, b"stolen by bob");
        // Unmatched requests pass through to the app.
        let plain = tokio::task::spawn_blocking({
            let name = ns_ref.caller_name().unwrap().to_owned();
            move || caller_curl(&name, Some("x-mirrord-user: carol"))
        })
        .await
        .unwrap();
        assert_eq!(plain.stdout, b"from the app");

        // Mid-steal: a request alice never answers, then the agent is SIGKILLed.
        let pending = tokio::task::spawn_blocking({
            let name = ns_ref.caller_name().unwrap().to_owned();
            move || caller_curl(&name, Some("x-mirrord-user: alice"))
        });
        loop {
            match alice.recv().await {
                DaemonMessage::TcpSteal(DaemonTcp::HttpRequestChunked(_)) => break,
                DaemonMessage::LogMessage(_) | DaemonMessage::TcpSteal(DaemonTcp::Close(_)) => {
                    continue;
                }
                other => panic!("expected a stolen request, got {other:?}"),
            }
        }
        ns.kill(pid);
        let pending = pending.await.unwrap();
        assert_ne!(
            pending.stdout, b"from the app",
            "the stolen request died with the agent"
        );
    });
    assert!(
        !ns.nat_rules_with("E2E").is_empty(),
        "SIGKILL leaves the rules behind"
    );
    assert_ne!(
        curl(&ns, None).stdout,
        b"from the app",
        "stale redirect breaks the app"
    );

    // Restart with the same prefix: stale chains are gone before anyone subscribes.
    start_steal_agent(&ns, &root);
    assert!(
        ns.nat_rules_with("E2E").is_empty(),
        "stale rules remain: {:#?}",
        ns.nat_rules_with("E2E")
    );
    assert_eq!(curl(&ns, None).stdout, b"from the app");
}

fn caller_curl(caller_ns: &str, header: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        caller_ns,
        "curl",
        "-sS",
        "--max-time",
        "10",
    ]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    cmd.arg(format!("http://{}:{APP}/hello.txt", netns::POD_ADDR))
        .output()
        .unwrap()
}

/// SIGTERM with live subscriptions: the agent removes its rules and exits 0.
#[test]
fn sigterm_with_subscriptions_removes_every_rule() {
    let ns = NetNs::new("term");
    let (_tmp, root) = target_root();
    let mut agent = ChildGuard(
        agent_command(
            &ns,
            &root,
            &[
                ("MIRRORD_AGENT_REDIRECT", "iptables"),
                ("MIRRORD_AGENT_CHAIN_PREFIX", "TERM"),
            ],
        )
        .spawn()
        .unwrap(),
    );
    ns.wait_for_port(SocketAddr::from((Ipv4Addr::LOCALHOST, AGENT_PORT)), TIMEOUT);
    rt().block_on(async {
        let mut c = Client::connect(&ns).await;
        c.handshake().await;
        for port in [APP, 9090] {
            assert_eq!(
                c.ask(ClientMessage::TcpSteal(LayerTcpSteal::PortSubscribe(
                    StealType::All(port)
                )))
                .await,
                DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(Ok(port)))
            );
        }
        let rules = ns.nat_rules_with("TERM");
        assert!(
            rules.iter().any(|r| r.contains("--dport 9090")),
            "{rules:#?}"
        );
        let status = Command::new("kill")
            .args(["-TERM", &agent.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + TIMEOUT;
        let exit = loop {
            if let Some(exit) = agent.0.try_wait().unwrap() {
                break exit;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "agent ignored SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(exit.success(), "{exit:?}");
        c.expect_eof().await;
    });
    assert!(
        ns.nat_rules_with("TERM").is_empty(),
        "rules left after SIGTERM: {:#?}",
        ns.nat_rules_with("TERM")
    );
}

/// Mirror through the real process: the app keeps answering, the session gets a copy.
#[test]
fn mirror_through_the_agent_process_while_the_app_answers() {
    let ns = NetNs::with_caller("mirror");
    let _site = ns.serve_hello(APP, "from the app", TIMEOUT);
    let (_tmp, root) = target_root();
    ns.spawn(agent_command(
        &ns,
        &root,
        &[
            ("MIRRORD_AGENT_REDIRECT", "iptables"),
            ("MIRRORD_AGENT_CHAIN_PREFIX", "MIR"),
        ],
    ));
    ns.wait_for_port(SocketAddr::from((Ipv4Addr::LOCALHOST, AGENT_PORT)), TIMEOUT);
    rt().block_on(async {
        let mut c = Client::connect(&ns).await;
        c.handshake().await;
        assert_eq!(
            c.ask(ClientMessage::Tcp(LayerTcp::PortSubscribe(APP)))
                .await,
            DaemonMessage::Tcp(DaemonTcp::SubscribeResult(Ok(APP)))
        );
        let caller = ns.caller_name().unwrap().to_owned();
        let answer = tokio::task::spawn_blocking(move || caller_curl(&caller, None))
            .await
            .unwrap();
        assert_eq!(
            answer.stdout, b"from the app",
            "mirroring never alters traffic"
        );
        let copy = loop {
            match c.recv().await {
                DaemonMessage::Tcp(DaemonTcp::HttpRequestChunked(ChunkedRequest::StartV2(s))) => {
                    break s;
                }
                DaemonMessage::LogMessage(_) => continue,
                other => panic!("expected a mirrored request, got {other:?}"),
            }
        };
        assert_eq!(copy.request.uri.path(), "/hello.txt");
        assert_eq!(copy.request.method, http::Method::GET);
    });
}

/// env=proc and fs=proc: the target's live environment and its root, through `/proc/<pid>`.
#[test]
fn proc_modes_read_the_target_process() {
    let ns = NetNs::new("proc");
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("marker.txt"), "seen through /proc").unwrap();
    // `ip netns exec` execs `env`, which execs `sleep`: the pid stays the same.
    let mut target = ns.command("env");
    target.args(["APP_MODE=canary", "APP_REGION=eu", "sleep", "60"]);
    let target_pid = ns.spawn(target);
    // Wait (bounded) until the exec chain reached `sleep` with its environment.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !std::fs::read(format!("/proc/{target_pid}/environ"))
        .unwrap_or_default()
        .windows(14)
        .any(|w| w == b"APP_MODE=canar")
    {
        assert!(std::time::Instant::now() < deadline, "target did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_tmp, root) = target_root();
    let pid = target_pid.to_string();
    let mut cmd = agent_command(
        &ns,
        &root,
        &[
            ("MIRRORD_AGENT_ENV_MODE", "proc"),
            ("MIRRORD_AGENT_FS_MODE", "proc"),
            ("MIRRORD_AGENT_TARGET_PID", &pid),
        ],
    );
    cmd.env_remove("MIRRORD_AGENT_TARGET_ROOT");
    ns.spawn(cmd);
    ns.wait_for_port(SocketAddr::from((Ipv4Addr::LOCALHOST, AGENT_PORT)), TIMEOUT);
    rt().block_on(async {
        let mut c = Client::connect(&ns).await;
        c.handshake().await;
        let env = c
            .ask(ClientMessage::GetEnvVarsRequest(GetEnvVarsRequest {
                env_vars_filter: HashSet::new(),
                env_vars_select: HashSet::from(["APP_*".to_owned()]),
            }))
            .await;
        let DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(env))) = env else {
            panic!("unexpected {env:?}")
        };
        assert_eq!(env.len(), 2, "{env:?}");
        assert_eq!(env["APP_MODE"], "canary");
        // The target shares this test's mount namespace, so its root shows the temp dir.
        let path = site.path().join("marker.txt");
        let FileResponse::Open(Ok(OpenFileResponse { fd })) =
            file(c.ask(open_ro(path.to_str().unwrap())).await)
        else {
            panic!("open through /proc/<pid>/root failed")
        };
        let read = file(
            c.ask(ClientMessage::FileRequest(FileRequest::Read(
                ReadFileRequest {
                    remote_fd: fd,
                    buffer_size: 100,
                },
            )))
            .await,
        );
        let FileResponse::Read(Ok(ReadFileResponse { bytes, .. })) = read else {
            panic!("unexpected {read:?}")
        };
        assert_eq!(&bytes[..], b"seen through /proc");
    });
}

/// Host pid of the child of `parent` whose command name is `comm`, waiting (bounded) until the
/// child has exec'd it.
fn child_of(parent: u32, comm: &str) -> u32 {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": the name may hold spaces and parentheses.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let ppid = stat[close + 1..].split_whitespace().nth(1);
            if &stat[open + 1..close] == comm && ppid == Some(parent.to_string().as_str()) {
                return pid;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no child {comm:?} of {parent}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A pod with a shared PID namespace, made of real namespaces: a new PID namespace (with its own
/// `/proc`) whose PID 1 is the sandbox, and containers entered into it from outside by `nsenter`
/// — so, as under a container runtime, each container's first process has its parent outside
/// the namespace — each in its own mount namespace. Killing the sandbox (on `NetNs` drop, via
/// `unshare --kill-child`) kills every process of the PID namespace.
struct SharedPidPod<'a> {
    ns: &'a NetNs,
    /// Host pid of the sandbox (PID 1 inside).
    sandbox: u32,
}

impl<'a> SharedPidPod<'a> {
    fn new(ns: &'a NetNs) -> SharedPidPod<'a> {
        let mut unshare = ns.command("unshare");
        unshare.args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "sleep",
            "600",
        ]);
        let unshare = ns.spawn(unshare);
        // `sleep` runs once `/proc` of the namespace is mounted.
        let sandbox = child_of(unshare, "sleep");
        SharedPidPod { ns, sandbox }
    }

    /// `program` as a new container.
    fn container(&self, program: &str) -> Command {
        let mut cmd = self.ns.command("nsenter");
        cmd.args([
            "--target",
            &self.sandbox.to_string(),
            "--pid",
            "--mount",
            "--",
        ])
        .args(["unshare", "--mount", "--propagation", "private", program]);
        cmd
    }

    /// An app container running `sleep <secs>` with exactly `env`, and a tmpfs on `dir` holding
    /// `marker` that only its own mount namespace shows. Returns the nsenter pid and the host
    /// pid of the container's main process.
    fn start_app(&self, dir: &Path, marker: &str, env: &[&str], secs: &str) -> (u32, u32) {
        let mut cmd = self.container("sh");
        cmd.args([
            "-c",
            r#"mount -t tmpfs app "$1" && printf %s "$2" > "$1/marker" && shift 2 && exec env -i "$@""#,
            "app",
        ])
        .arg(dir)
        .arg(marker)
        .args(env)
        .args(["sleep", secs]);
        let nsenter = self.ns.spawn(cmd);
        (nsenter, child_of(nsenter, "sleep"))
    }
}

/// env=proc and fs=proc without `--target-pid`: in a shared-PID pod with a sidecar, the agent
/// finds the target container's main process from the webhook's match, reads its environ and
/// its root (its own mount namespace), answers a clear error while the target is down instead
/// of serving the sidecar, and finds the restarted target.
#[test]
fn proc_modes_find_the_target_container_and_follow_its_restart() {
    let ns = NetNs::new("procfind");
    let pod = SharedPidPod::new(&ns);
    let mounts = tempfile::tempdir().unwrap();
    let dir = mounts.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let marker = dir.join("marker");
    let marker = marker.to_str().unwrap();

    pod.start_app(&dir, "sidecar", &["SIDECAR_TOKEN=s"], "600");
    let (nsenter, app) = pod.start_app(&dir, "app 1", &["APP_MODE=canary", "APP_GEN=1"], "601");
    let matcher = r#"{"target":{"command":[],"args":["601"],"envNames":["APP_GEN","APP_MODE"]},
        "others":[{"command":[],"args":["600"],"envNames":["SIDECAR_TOKEN"]}]}"#;
    let (_tmp, root) = target_root();
    let mut agent = configure_agent(
        pod.container(agent_bin()),
        &root,
        &[
            ("MIRRORD_AGENT_ENV_MODE", "proc"),
            ("MIRRORD_AGENT_FS_MODE", "proc"),
            ("MIRRORD_AGENT_TARGET_MATCH", matcher),
        ],
    );
    agent.env_remove("MIRRORD_AGENT_TARGET_ROOT");
    ns.spawn(agent);
    ns.wait_for_port(SocketAddr::from((Ipv4Addr::LOCALHOST, AGENT_PORT)), TIMEOUT);
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "the markers exist only in the containers' mount namespaces"
    );

    let env_request = || {
        ClientMessage::GetEnvVarsRequest(GetEnvVarsRequest {
            env_vars_filter: HashSet::new(),
            env_vars_select: HashSet::from(["*".to_owned()]),
        })
    };
    rt().block_on(async {
        let mut c = Client::connect(&ns).await;
        c.handshake().await;
        let read_marker = async |c: &mut Client| {
            let FileResponse::Open(Ok(OpenFileResponse { fd })) = file(c.ask(open_ro(marker)).await)
            else {
                panic!("open {marker} through the target's root failed")
            };
            let read = file(
                c.ask(ClientMessage::FileRequest(FileRequest::Read(ReadFileRequest {
                    remote_fd: fd,
                    buffer_size: 100,
                })))
                .await,
            );
            let FileResponse::Read(Ok(ReadFileResponse { bytes, .. })) = read else {
                panic!("unexpected {read:?}")
            };
            String::from_utf8(bytes.to_vec()).unwrap()
        };
        let env = |answer: DaemonMessage| match answer {
            DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(env))) => env,
            other => panic!("unexpected {other:?}"),
        };

        let first = env(c.ask(env_request()).await);
        assert_eq!(first.len(), 2, "exactly the target's environ: {first:?}");
        assert_eq!((first["APP_MODE"].as_str(), first["APP_GEN"].as_str()), ("canary", "1"));
        assert_eq!(read_marker(&mut c).await, "app 1");

        // The target dies (its nsenter reaps it): a clear error, never the sidecar.
        // SAFETY: `app` is a process this test started.
        unsafe { libc::kill(app as i32, libc::SIGKILL) };
        let deadline = std::time::Instant::now() + TIMEOUT;
        while Path::new(&format!("/proc/{app}")).exists() {
            assert!(std::time::Instant::now() < deadline, "target not reaped");
            std::thread::sleep(Duration::from_millis(10));
        }
        ns.kill(nsenter);
        let down = c.ask(env_request()).await;
        let DaemonMessage::GetEnvVarsResponse(Err(ResponseError::RemoteIO(RemoteIOError {
            raw_os_error: Some(3),
            kind: ErrorKindInternal::Unknown(reason),
        }))) = &down
        else {
            panic!("expected ESRCH with a reason, got {down:?}")
        };
        assert!(reason.contains("no target process"), "{reason}");
        let open = file(c.ask(open_ro(marker)).await);
        assert!(
            matches!(&open, FileResponse::Open(Err(ResponseError::RemoteIO(e))) if e.raw_os_error == Some(3)),
            "{open:?}"
        );

        // The restarted target is found by the same session.
        pod.start_app(&dir, "app 2", &["APP_MODE=canary", "APP_GEN=2"], "601");
        let second = env(c.ask(env_request()).await);
        assert_eq!(second["APP_GEN"], "2");
        assert_eq!(read_marker(&mut c).await, "app 2");
    });
}
