//! Incoming traffic in real network namespaces: iptables rules, redirect, steal, mirror,
//! pass-through. Needs root (creates namespaces and iptables rules inside them only).

#[path = "support/netns.rs"]
mod netns;

use std::{
    convert::Infallible,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mirrord_operator::{
    agent::incoming::{
        Incoming, IncomingConfig, IncomingSession, Redirect,
        redirect::{Family, Redirector},
    },
    protocol::{
        ChunkedRequest, ChunkedRequestBodyV1, ChunkedRequestStartV2, ChunkedResponse,
        DaemonMessage, DaemonTcp, Filter, HttpFilter, HttpMethodFilter, HttpRequestMetadata,
        HttpResponse, InternalHttpBodyFrame, InternalHttpResponse, LayerTcp, LayerTcpSteal,
        ResponseError, StealType, TcpClose, TcpData,
    },
};
use netns::{CALLER_ADDR, CALLER_ADDR6, NetNs, POD_ADDR, POD_ADDR6};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn redirect_rules_follow_ports_and_stale_chains_are_removed() {
    let ns = NetNs::new("redir");
    ns.run_in(|| {
        rt().block_on(async {
            let r = Redirector::new("T1", 30777, 40000, false).await.unwrap();
            assert!(
                ns.nat_rules_with("T1-").is_empty(),
                "idle agent leaves no rules"
            );

            r.add_port(80).await.unwrap();
            r.add_port(8080).await.unwrap();
            r.add_port(80).await.unwrap();
            let rules = ns.nat_rules_with("T1-");
            assert_eq!(
                rules,
                vec![
                    ":T1-IN - [0:0]",
                    ":T1-OUT - [0:0]",
                    "-A PREROUTING -p tcp -j T1-IN",
                    "-A OUTPUT -p tcp -j T1-OUT",
                    "-A T1-IN -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 40000",
                    "-A T1-IN -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 40000",
                    "-A T1-OUT -m owner --gid-owner 30777 -j RETURN",
                    "-A T1-OUT -o lo -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 40000",
                    "-A T1-OUT -o lo -p tcp -m tcp --dport 8080 -j REDIRECT --to-ports 40000",
                ],
                "{rules:#?}"
            );

            r.remove_port(80).await.unwrap();
            let rules = ns.nat_rules_with("dport");
            assert_eq!(rules.len(), 2, "{rules:#?}");
            assert!(rules.iter().all(|l| l.contains("--dport 8080")));

            r.remove_port(8080).await.unwrap();
            assert!(
                ns.nat_rules_with("T1-").is_empty(),
                "last port removes the chains"
            );

            // A killed agent leaves its chains behind; the next start with the prefix removes them,
            // and leaves another agent's chains alone.
            r.add_port(9090).await.unwrap();
            let other = Redirector::new("T2", 30777, 40001, false).await.unwrap();
            other.add_port(9191).await.unwrap();
            std::mem::forget(r);
            let restarted = Redirector::new("T1", 30777, 40002, false).await.unwrap();
            assert!(ns.nat_rules_with("T1-").is_empty());
            assert_eq!(ns.nat_rules_with("T2-").len(), 7);
            other.remove_all().await.unwrap();
            assert!(ns.nat_rules_with("T2-").is_empty());
            restarted.remove_all().await.unwrap();
        })
    });
}

#[test]
fn ipv6_rules_are_managed_next_to_ipv4() {
    let ns = NetNs::new("redir6");
    ns.run_in(|| {
        rt().block_on(async {
            let r = Redirector::new("T6", 30777, 40000, true).await.unwrap();
            assert_eq!(r.families(), [Family::V4, Family::V6]);
            r.add_port(443).await.unwrap();
            let v6 = ns.output("ip6tables-save", &["-t", "nat"]);
            let v6 = String::from_utf8(v6.stdout).unwrap();
            assert!(
                v6.contains("-A T6-IN -p tcp -m tcp --dport 443 -j REDIRECT --to-ports 40000"),
                "{v6}"
            );
            assert!(
                v6.contains("-A T6-OUT -m owner --gid-owner 30777 -j RETURN"),
                "{v6}"
            );
            r.remove_all().await.unwrap();
            let v6 = ns.output("ip6tables-save", &["-t", "nat"]);
            assert!(!String::from_utf8(v6.stdout).unwrap().contains("T6-"));
            assert!(ns.nat_rules_with("T6-").is_empty());
        })
    });
}

#[test]
fn invalid_prefix_is_an_error_not_an_iptables_call() {
    let err = rt()
        .block_on(Redirector::new("-j ACCEPT", 1, 2, false))
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("invalid iptables chain prefix"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Engine tests: the agent's incoming engine runs in-process inside the namespace (a runtime built
// on a thread that entered it); the app is a real HTTP server, callers are real `curl` processes
// in the caller namespace (PREROUTING path) or the pod namespace (OUTPUT/loopback path).

const APP: u16 = 8080;
const RAW: u16 = 9000;
const GID: u32 = 30777;
const WAIT: Duration = Duration::from_secs(15);

fn mt_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn cfg(prefix: &str) -> IncomingConfig {
    let mut cfg = IncomingConfig::new(Redirect::Iptables, prefix.into(), GID);
    cfg.http_detection_timeout = Duration::from_millis(500);
    cfg
}

/// The "app": HTTP/1.1 and h2c on `APP`, answering `app <method> <path> <body>`; an `Upgrade`
/// request is switched to a raw echo. A raw TCP echo server on `RAW`. Both on `0.0.0.0`.
async fn start_apps() {
    start_apps_on(Ipv4Addr::UNSPECIFIED.into()).await;
}

/// `start_apps` bound to `ip` (`::` serves IPv6, and IPv4 too unless the host sets bindv6only).
async fn start_apps_on(ip: IpAddr) {
    let http = tokio::net::TcpListener::bind((ip, APP)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = http.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|mut req: Request<hyper::body::Incoming>| async move {
                    if req.headers().contains_key(header::UPGRADE) {
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            if let Ok(up) = on.await {
                                let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
                                let _ = tokio::io::copy(&mut r, &mut w).await;
                            }
                        });
                        let resp = Response::builder()
                            .status(101)
                            .header(header::CONNECTION, "upgrade")
                            .header(header::UPGRADE, "echo")
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        return Ok::<_, Infallible>(resp);
                    }
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let text = format!(
                        "app {} {} {}",
                        parts.method,
                        parts.uri.path(),
                        String::from_utf8_lossy(&body)
                    );
                    Ok(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let raw = tokio::net::TcpListener::bind((ip, RAW)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = raw.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// `curl` run as a real process inside namespace `ns`; returns stdout (asserts success).
async fn curl(ns: &str, args: &[&str]) -> String {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("ip")
            .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "10"])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("curl finished")
    .expect("curl ran");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Plays the mirrord client of one session.
struct Client {
    session: IncomingSession,
    rx: mpsc::Receiver<DaemonMessage>,
}

impl Client {
    fn new(incoming: &Arc<Incoming>) -> Client {
        let (tx, rx) = mpsc::channel(256);
        let session = incoming.session(tx, Some(semver::Version::new(1, 29, 0)));
        Client { session, rx }
    }

    async fn next(&mut self) -> DaemonMessage {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a message within the time limit")
            .expect("session channel open")
    }

    async fn next_steal(&mut self) -> DaemonTcp {
        match self.next().await {
            DaemonMessage::TcpSteal(m) => m,
            other => panic!("expected a steal message, got {other:?}"),
        }
    }

    async fn next_mirror(&mut self) -> DaemonTcp {
        match self.next().await {
            DaemonMessage::Tcp(m) => m,
            other => panic!("expected a mirror message, got {other:?}"),
        }
    }

    async fn steal(&mut self, steal: StealType) -> Result<u16, ResponseError> {
        self.session
            .handle_steal(LayerTcpSteal::PortSubscribe(steal))
            .await;
        match self.next_steal().await {
            DaemonTcp::SubscribeResult(r) => r,
            other => panic!("expected SubscribeResult, got {other:?}"),
        }
    }

    async fn mirror(&mut self, msg: LayerTcp) -> Result<u16, ResponseError> {
        self.session.handle_mirror(msg).await;
        match self.next_mirror().await {
            DaemonTcp::SubscribeResult(r) => r,
            other => panic!("expected SubscribeResult, got {other:?}"),
        }
    }

    async fn next_side(&mut self, steal: bool) -> DaemonTcp {
        if steal {
            self.next_steal().await
        } else {
            self.next_mirror().await
        }
    }

    /// A whole HTTP request (StartV2 plus its Body messages): head and concatenated body.
    async fn request(&mut self, steal: bool) -> (ChunkedRequestStartV2, Vec<u8>) {
        let start = match self.next_side(steal).await {
            DaemonTcp::HttpRequestChunked(ChunkedRequest::StartV2(start)) => start,
            other => panic!("expected StartV2, got {other:?}"),
        };
        let mut body = data_of(&start.request.body.frames);
        let mut done = start.request.body.is_last;
        while !done {
            match self.next_side(steal).await {
                DaemonTcp::HttpRequestChunked(ChunkedRequest::Body(b)) => {
                    assert_eq!(b.connection_id, start.connection_id);
                    body.extend(data_of(&b.frames));
                    done = b.is_last;
                }
                other => panic!("expected Body, got {other:?}"),
            }
        }
        (start, body)
    }

    async fn respond(&mut self, id: u64, status: u16, headers: &[(&str, &str)], body: &str) {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        self.session
            .handle_steal(LayerTcpSteal::HttpResponse(HttpResponse {
                port: APP,
                connection_id: id,
                request_id: 0,
                internal_response: InternalHttpResponse {
                    status: http::StatusCode::from_u16(status).unwrap(),
                    version: http::Version::HTTP_11,
                    headers: map,
                    body: Bytes::from(body.to_owned()).into(),
                },
            }))
            .await;
    }
}

fn data_of(frames: &[InternalHttpBodyFrame]) -> Vec<u8> {
    frames
        .iter()
        .filter_map(|f| match f {
            InternalHttpBodyFrame::Data(d) => Some(d.to_vec()),
            InternalHttpBodyFrame::Trailers(_) => None,
        })
        .flatten()
        .collect()
}

fn header_filter(re: &str) -> HttpFilter {
    HttpFilter::Header(Filter(re.into()))
}

/// Polls (bounded) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn header_filtered_steal_from_caller_host_and_loopback_others_reach_the_app() {
    let ns = NetNs::with_caller("steal");
    let caller = ns.caller_name().unwrap().to_owned();
    let pod = ns.name().to_owned();
    let url = format!("http://{POD_ADDR}:{APP}/hello");
    ns.run_in(|| {
        mt_rt().block_on(async {
            start_apps().await;
            let incoming = Incoming::start(cfg("STEAL")).await.unwrap();
            let mut alice = Client::new(&incoming);
            let filter = StealType::FilteredHttpEx(APP, header_filter("^x-user: alice$"));
            assert_eq!(alice.steal(filter).await, Ok(APP));

            // From the other host: PREROUTING.
            let req = tokio::spawn({
                let (caller, url) = (caller.clone(), url.clone());
                async move { curl(&caller, &["-i", "-H", "X-User: alice", &url]).await }
            });
            let (start, body) = alice.request(true).await;
            assert_eq!(start.request.method, http::Method::GET);
            assert_eq!(start.request.uri.path(), "/hello");
            assert_eq!(start.request.headers["x-user"], "alice");
            let HttpRequestMetadata::V1 { source, destination } = start.metadata;
            assert_eq!(source.ip(), std::net::IpAddr::from(CALLER_ADDR));
            assert_eq!(destination, format!("{POD_ADDR}:{APP}").parse().unwrap());
            assert!(body.is_empty());
            alice
                .respond(start.connection_id, 201, &[("x-from", "alice")], "stolen by alice")
                .await;
            let out = req.await.unwrap();
            assert!(out.starts_with("HTTP/1.1 201"), "{out}");
            assert!(out.contains("x-from: alice"), "{out}");
            assert!(out.contains("cache-control: no-cache, no-store, must-revalidate"), "{out}");
            assert!(out.ends_with("stolen by alice"), "{out}");
            assert!(matches!(alice.next_steal().await, DaemonTcp::Close(TcpClose { connection_id: id }) if id == start.connection_id));

            // Not matching: the app answers, the session sees nothing.
            assert_eq!(curl(&caller, &["-H", "x-user: bob", &url]).await, "app GET /hello ");

            // From inside the pod to loopback: OUTPUT.
            let req = tokio::spawn({
                let pod = pod.clone();
                async move {
                    curl(&pod, &["-H", "x-user: alice", &format!("http://127.0.0.1:{APP}/local")]).await
                }
            });
            let (start, _) = alice.request(true).await;
            assert_eq!(start.request.uri.path(), "/local");
            assert_eq!(start.connection_id, 1, "fresh id per request");
            alice.respond(start.connection_id, 200, &[], "local stolen").await;
            assert_eq!(req.await.unwrap(), "local stolen");
            assert!(matches!(alice.next_steal().await, DaemonTcp::Close(TcpClose { connection_id: 1 })));
            assert_eq!(
                curl(&pod, &[&format!("http://127.0.0.1:{APP}/direct")]).await,
                "app GET /direct "
            );
            assert!(alice.rx.try_recv().is_err(), "unmatched requests are not seen by the session");
            incoming.shutdown().await;
        })
    });
    assert!(
        ns.nat_rules_with("STEAL-").is_empty(),
        "shutdown removes the rules"
    );
}

/// The same filtered steal over IPv6: ip6tables `nat` REDIRECT, the `[::]` listener and
/// `IP6T_SO_ORIGINAL_DST`, from another host (PREROUTING) and over `::1` (OUTPUT).
#[test]
fn share_link_key_in_the_query_becomes_baggage_for_the_filter() {
    let ns = NetNs::with_caller("share");
    let caller = ns.caller_name().unwrap().to_owned();
    ns.run_in(|| {
        mt_rt().block_on(async {
            start_apps().await;
            let incoming = Incoming::start(cfg("SHLINK")).await.unwrap();
            let mut alice = Client::new(&incoming);
            let filter = StealType::FilteredHttpEx(
                APP,
                header_filter("^baggage: .*mirrord-session=k-alice"),
            );
            assert_eq!(alice.steal(filter).await, Ok(APP));
            let url = format!("http://{POD_ADDR}:{APP}/shop?mirrord-session=k-alice");

            // Not registered yet: the link reaches the app.
            assert_eq!(curl(&caller, &[&url]).await, "app GET /shop ");

            // Registered by the coordinator: the request carries the baggage and is stolen; the
            // baggage the caller sent is kept.
            alice.session.handle_share_link(
                mirrord_operator::protocol::ShareLinkRequest::RegisterKey("k-alice".into()),
            );
            let req = tokio::spawn({
                let (caller, url) = (caller.clone(), url.clone());
                async move { curl(&caller, &["-H", "baggage: tenant=7", &url]).await }
            });
            let (start, _) = alice.request(true).await;
            assert_eq!(
                start.request.headers["baggage"],
                "tenant=7,mirrord-session=k-alice"
            );
            alice
                .respond(start.connection_id, 200, &[], "shared with you")
                .await;
            assert_eq!(req.await.unwrap(), "shared with you");

            // Removed: the app again.
            alice.session.handle_share_link(
                mirrord_operator::protocol::ShareLinkRequest::RemoveKey("k-alice".into()),
            );
            assert_eq!(curl(&caller, &[&url]).await, "app GET /shop ");
        })
    });
}

#[test]
fn header_filtered_steal_over_ipv6_others_reach_the_app() {
    let ns = NetNs::with_caller_v6("steal6");
    let caller = ns.caller_name().unwrap().to_owned();
    let pod = ns.name().to_owned();
    let url = format!("http://[{POD_ADDR6}]:{APP}/hello");
    let nat6 = ns.output("ip6tables", &["-w", "-t", "nat", "-S"]);
    assert!(
        nat6.status.success(),
        "this kernel has no IPv6 nat table (ip6tables -t nat: {})",
        String::from_utf8_lossy(&nat6.stderr).trim()
    );
    ns.run_in(|| {
        mt_rt().block_on(async {
            start_apps_on(Ipv6Addr::UNSPECIFIED.into()).await;
            let incoming = Incoming::start(cfg("STEAL6")).await.unwrap();
            let mut alice = Client::new(&incoming);
            let filter = StealType::FilteredHttpEx(APP, header_filter("^x-user: alice$"));
            assert_eq!(alice.steal(filter).await, Ok(APP));
            let v6_rules = ns.nat6_rules_with("STEAL6-");
            assert!(
                v6_rules.iter().any(|r| r.starts_with("-A STEAL6-IN") && r.contains("--dport 8080")),
                "{v6_rules:#?}"
            );

            let req = tokio::spawn({
                let (caller, url) = (caller.clone(), url.clone());
                async move { curl(&caller, &["-g", "-H", "X-User: alice", &url]).await }
            });
            let (start, _) = alice.request(true).await;
            assert_eq!(start.request.uri.path(), "/hello");
            let HttpRequestMetadata::V1 { source, destination } = start.metadata;
            assert_eq!(source.ip(), IpAddr::from(CALLER_ADDR6));
            assert_eq!(destination, SocketAddr::from((POD_ADDR6, APP)));
            alice.respond(start.connection_id, 200, &[], "stolen over v6").await;
            assert_eq!(req.await.unwrap(), "stolen over v6");
            assert!(matches!(alice.next_steal().await, DaemonTcp::Close(TcpClose { connection_id: id }) if id == start.connection_id));

            // Not matching: passed through to the original IPv6 destination.
            assert_eq!(curl(&caller, &["-g", "-H", "x-user: bob", &url]).await, "app GET /hello ");

            // The pod to itself over ::1.
            let local = format!("http://[::1]:{APP}/local");
            let req = tokio::spawn({
                let (pod, local) = (pod.clone(), local.clone());
                async move { curl(&pod, &["-g", "-H", "x-user: alice", &local]).await }
            });
            let (start, _) = alice.request(true).await;
            assert_eq!(start.request.uri.path(), "/local");
            let HttpRequestMetadata::V1 { destination, .. } = start.metadata;
            assert_eq!(destination, SocketAddr::from((Ipv6Addr::LOCALHOST, APP)));
            alice.respond(start.connection_id, 200, &[], "local v6 stolen").await;
            assert_eq!(req.await.unwrap(), "local v6 stolen");
            assert!(matches!(alice.next_steal().await, DaemonTcp::Close(_)));
            assert_eq!(curl(&pod, &["-g", &local]).await, "app GET /local ");
            assert!(alice.rx.try_recv().is_err(), "unmatched requests are not seen by the session");
            incoming.shutdown().await;
        })
    });
    assert!(
        ns.nat6_rules_with("STEAL6-").is_empty() && ns.nat_rules_with("STEAL6-").is_empty(),
        "shutdown removes the rules of both families"
    );
}

#[test]
fn two_sessions_share_a_port_by_filter_unfiltered_is_refused_and_release_on_disconnect() {
    let ns = NetNs::with_caller("share");
    let caller = ns.caller_name().unwrap().to_owned();
    let url = format!("http://{POD_ADDR}:{APP}/p");
    ns.run_in(|| {
        mt_rt().block_on(async {
            start_apps().await;
            let incoming = Incoming::start(cfg("SHARE")).await.unwrap();
            let mut alice = Client::new(&incoming);
            let mut bob = Client::new(&incoming);
            let mut carol = Client::new(&incoming);
            let by_path = HttpFilter::Composite {
                all: true,
                filters: vec![
                    HttpFilter::Path(Filter("^/p$".into())),
                    header_filter("x-user: bob"),
                ],
            };
            assert_eq!(
                alice
                    .steal(StealType::FilteredHttp(APP, Filter("x-user: alice".into())))
                    .await,
                Ok(APP)
            );
            assert_eq!(
                bob.steal(StealType::FilteredHttpEx(APP, by_path)).await,
                Ok(APP)
            );
            assert_eq!(
                carol.steal(StealType::All(APP)).await,
                Err(ResponseError::PortAlreadyStolen(APP))
            );
            assert_eq!(ns.nat_rules_with("--dport 8080").len(), 2);

            for (user, client) in [("alice", &mut alice), ("bob", &mut bob)] {
                let req = tokio::spawn({
                    let (caller, url) = (caller.clone(), url.clone());
                    let h = format!("x-user: {user}");
                    async move { curl(&caller, &["-H", &h, &url]).await }
                });
                let (start, _) = client.request(true).await;
                client
                    .respond(start.connection_id, 200, &[], &format!("for {user}"))
                    .await;
                assert_eq!(req.await.unwrap(), format!("for {user}"));
                assert!(matches!(client.next_steal().await, DaemonTcp::Close(_)));
            }
            assert_eq!(
                curl(&caller, &["-H", "x-user: dave", &url]).await,
                "app GET /p "
            );

            // A session that goes away with a request in hand: the caller gets the agent's 502.
            let req = tokio::spawn({
                let (caller, url) = (caller.clone(), url.clone());
                async move { curl(&caller, &["-i", "-H", "x-user: alice", &url]).await }
            });
            alice.request(true).await;
            drop(alice);
            let out = req.await.unwrap();
            assert!(out.starts_with("HTTP/1.1 502"), "{out}");
            assert!(out.contains("mirrord-agent v"), "{out}");
            drop(bob);
            eventually("rules removed after both sessions left", || {
                ns.nat_rules_with("SHARE-").is_empty()
            })
            .await;
            assert_eq!(
                curl(&caller, &["-H", "x-user: alice", &url]).await,
                "app GET /p "
            );
            assert_eq!(carol.steal(StealType::All(APP)).await, Ok(APP));
            incoming.shutdown().await;
        })
    });
}

#[test]
fn mirror_copies_http_and_raw_tcp_while_the_app_answers() {
    let ns = NetNs::with_caller("mirror");
    let caller = ns.caller_name().unwrap().to_owned();
    ns.run_in(|| {
        mt_rt().block_on(async {
            start_apps().await;
            let incoming = Incoming::start(cfg("MIRROR")).await.unwrap();
            let mut m = Client::new(&incoming);
            let mut filtered = Client::new(&incoming);
            assert_eq!(m.mirror(LayerTcp::PortSubscribe(APP)).await, Ok(APP));
            assert_eq!(m.mirror(LayerTcp::PortSubscribe(RAW)).await, Ok(RAW));
            let only_post = HttpFilter::Method(HttpMethodFilter::Post);
            assert_eq!(
                filtered.mirror(LayerTcp::PortSubscribeFilteredHttp(APP, only_post)).await,
                Ok(APP)
            );

            let url = format!("http://{POD_ADDR}:{APP}/m");
            let out = curl(&caller, &["--data-binary", "ping", &url]).await;
            assert_eq!(out, "app POST /m ping", "the app still answers");
            for client in [&mut m, &mut filtered] {
                let (start, body) = client.request(false).await;
                assert_eq!(start.request.uri.path(), "/m");
                assert_eq!(body, b"ping");
                assert!(matches!(client.next_mirror().await, DaemonTcp::Close(TcpClose { connection_id: id }) if id == start.connection_id));
            }
            assert_eq!(curl(&caller, &[&url]).await, "app GET /m ");
            let (start, _) = m.request(false).await;
            assert_eq!(start.request.method, http::Method::GET);
            assert!(matches!(m.next_mirror().await, DaemonTcp::Close(_)));
            assert!(filtered.rx.try_recv().is_err(), "GET does not match the POST filter");

            // Raw TCP: the peer's bytes are copied, the echo server answers.
            let echoed = tokio::task::spawn_blocking(move || {
                NetNs::run_in_named(&caller, || {
                    let mut s = std::net::TcpStream::connect((POD_ADDR, RAW)).unwrap();
                    s.set_read_timeout(Some(WAIT)).unwrap();
                    s.write_all(b"hello raw\n").unwrap();
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    let mut out = String::new();
                    s.read_to_string(&mut out).unwrap();
                    out
                })
            })
            .await
            .unwrap();
            assert_eq!(echoed, "hello raw\n");
            let DaemonTcp::NewConnectionV2(conn) = m.next_mirror().await else { panic!("new connection") };
            let conn = conn.connection;
            assert_eq!(conn.destination_port, RAW);
            assert_eq!(conn.remote_address, std::net::IpAddr::from(CALLER_ADDR));
            let mut copied = Vec::new();
            loop {
                match m.next_mirror().await {
                    DaemonTcp::Data(d) if d.bytes.is_empty() => break,
                    DaemonTcp::Data(d) => copied.extend_from_slice(&d.bytes),
                    other => panic!("expected data, got {other:?}"),
                }
            }
            assert_eq!(copied, b"hello raw\n");
            assert!(matches!(m.next_mirror().await, DaemonTcp::Close(TcpClose { connection_id: id }) if id == conn.connection_id));
            incoming.shutdown().await;
        })
    });
}

#[test]
fn unfiltered_steal_whole_tcp_keepalive_chunked_h2c_and_upgrade() {
    let ns = NetNs::with_caller("whole");
    let caller = ns.caller_name().unwrap().to_owned();
    ns.run_in(|| {
        mt_rt().block_on(async {
            start_apps().await;
            let incoming = Incoming::start(cfg("WHOLE")).await.unwrap();
            let mut c = Client::new(&incoming);
            assert_eq!(c.steal(StealType::All(RAW)).await, Ok(RAW));
            assert_eq!(c.steal(StealType::All(APP)).await, Ok(APP));

            // Whole TCP connection.
            let peer = tokio::task::spawn_blocking({
                let caller = caller.clone();
                move || {
                    NetNs::run_in_named(&caller, || {
                        let mut s = std::net::TcpStream::connect((POD_ADDR, RAW)).unwrap();
                        s.set_read_timeout(Some(WAIT)).unwrap();
                        s.write_all(b"ping\n").unwrap();
                        let mut out = String::new();
                        s.read_to_string(&mut out).unwrap();
                        s.shutdown(std::net::Shutdown::Write).unwrap();
                        out
                    })
                }
            });
            let DaemonTcp::NewConnectionV2(conn) = c.next_steal().await else { panic!("new connection") };
            let conn = conn.connection;
            let id = conn.connection_id;
            assert!(matches!(c.next_steal().await, DaemonTcp::Data(d) if &d.bytes[..] == b"ping\n"));
            for bytes in [&b"pong\n"[..], b""] {
                c.session
                    .handle_steal(LayerTcpSteal::Data(TcpData { connection_id: id, bytes: Bytes::from_static(bytes).into() }))
                    .await;
            }
            assert_eq!(peer.await.unwrap(), "pong\n", "stolen: the echo app never saw it");
            assert!(matches!(c.next_steal().await, DaemonTcp::Data(d) if d.bytes.is_empty()));
            assert!(matches!(c.next_steal().await, DaemonTcp::Close(TcpClose { connection_id: i }) if i == id));

            // Keep-alive: two requests on one connection, and a chunked upload.
            let url = format!("http://{POD_ADDR}:{APP}");
            let req = tokio::spawn({
                let caller = caller.clone();
                let (a, b) = (format!("{url}/one"), format!("{url}/two"));
                async move {
                    curl(&caller, &["-H", "Transfer-Encoding: chunked", "--data-binary", "chunky", &a, &b]).await
                }
            });
            for path in ["/one", "/two"] {
                let (start, body) = c.request(true).await;
                assert_eq!(start.request.uri.path(), path);
                assert_eq!(body, b"chunky");
                c.respond(start.connection_id, 200, &[], &format!("[{path}]")).await;
                assert!(matches!(c.next_steal().await, DaemonTcp::Close(_)));
            }
            assert_eq!(req.await.unwrap(), "[/one][/two]");

            // h2c with prior knowledge, answered with a chunked response.
            let req = tokio::spawn({
                let (caller, url) = (caller.clone(), format!("{url}/h2"));
                async move { curl(&caller, &["--http2-prior-knowledge", &url]).await }
            });
            let (start, _) = c.request(true).await;
            assert_eq!(start.request.version, http::Version::HTTP_2);
            assert_eq!(start.request.uri.path(), "/h2");
            let id = start.connection_id;
            let head = HttpResponse {
                port: APP,
                connection_id: id,
                request_id: 0,
                internal_response: InternalHttpResponse {
                    status: http::StatusCode::OK,
                    version: http::Version::HTTP_2,
                    headers: http::HeaderMap::new(),
                    body: vec![InternalHttpBodyFrame::Data(Bytes::from_static(b"part1 ").into())],
                },
            };
            c.session
                .handle_steal(LayerTcpSteal::HttpResponseChunked(ChunkedResponse::Start(head)))
                .await;
            c.session
                .handle_steal(LayerTcpSteal::HttpResponseChunked(ChunkedResponse::Body(
                    ChunkedRequestBodyV1 {
                        frames: vec![InternalHttpBodyFrame::Data(Bytes::from_static(b"part2").into())],
                        is_last: true,
                        connection_id: id,
                        request_id: 0,
                    },
                )))
                .await;
            assert_eq!(req.await.unwrap(), "part1 part2");
            assert!(matches!(c.next_steal().await, DaemonTcp::Close(TcpClose { connection_id: i }) if i == id));

            // Upgrade: the client answers 101, then the id carries raw bytes both ways.
            let peer = tokio::task::spawn_blocking({
                let caller = caller.clone();
                move || {
                    NetNs::run_in_named(&caller, || {
                        let mut s = std::net::TcpStream::connect((POD_ADDR, APP)).unwrap();
                        s.set_read_timeout(Some(WAIT)).unwrap();
                        s.write_all(b"GET /ws HTTP/1.1\r\nHost: pod\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n").unwrap();
                        let mut head = Vec::new();
                        let mut byte = [0u8; 1];
                        while !head.ends_with(b"\r\n\r\n") {
                            s.read_exact(&mut byte).unwrap();
                            head.push(byte[0]);
                        }
                        s.write_all(b"abc").unwrap();
                        let mut reply = [0u8; 3];
                        s.read_exact(&mut reply).unwrap();
                        (String::from_utf8(head).unwrap(), reply)
                    })
                }
            });
            let (start, _) = c.request(true).await;
            let id = start.connection_id;
            c.respond(id, 101, &[("connection", "upgrade"), ("upgrade", "echo")], "").await;
            assert!(matches!(c.next_steal().await, DaemonTcp::Data(d) if &d.bytes[..] == b"abc"));
            c.session
                .handle_steal(LayerTcpSteal::Data(TcpData { connection_id: id, bytes: Bytes::from_static(b"ABC").into() }))
                .await;
            let (head, reply) = peer.await.unwrap();
            assert!(head.starts_with("HTTP/1.1 101"), "{head}");
            assert_eq!(&reply, b"ABC");

            // Unsubscribing gives the port back to the app; pass-through upgrades work too.
            c.session.handle_steal(LayerTcpSteal::PortUnsubscribe(APP)).await;
            let mut other = Client::new(&incoming);
            let filter = StealType::FilteredHttpEx(APP, header_filter("x-user: nobody"));
            assert_eq!(other.steal(filter).await, Ok(APP));
            let caller_h2 = caller.clone();
            let echoed = tokio::task::spawn_blocking(move || {
                NetNs::run_in_named(&caller, || {
                    let mut s = std::net::TcpStream::connect((POD_ADDR, APP)).unwrap();
                    s.set_read_timeout(Some(WAIT)).unwrap();
                    s.write_all(b"GET /ws HTTP/1.1\r\nHost: pod\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n").unwrap();
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        s.read_exact(&mut byte).unwrap();
                        head.push(byte[0]);
                    }
                    s.write_all(b"through").unwrap();
                    let mut reply = [0u8; 7];
                    s.read_exact(&mut reply).unwrap();
                    reply
                })
            })
            .await
            .unwrap();
            assert_eq!(&echoed, b"through", "the app's echo answered");
            let h2 = format!("http://{POD_ADDR}:{APP}/h2pass");
            assert_eq!(
                curl(&caller_h2, &["--http2-prior-knowledge", "--data-binary", "x", &h2]).await,
                "app POST /h2pass x",
                "h2c passed through to the app"
            );
            incoming.shutdown().await;
        })
    });
}

const RAW_HTTP: u16 = 8082;
const NOBODY: u16 = 8099;
const CHUNKED_ANSWER: &[u8] =
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n";
const SWITCH_ANSWER: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n\r\n";
const INTERIM_ANSWER: &[u8] =
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// An HTTP/1.1 app on raw sockets on `RAW_HTTP`, so the test knows every byte it sends: `/echo`
/// answers with the exact bytes of the request, `/chunked` and `/interim` with the answers above,
/// `/close` with a body delimited by closing the connection, `/switch` with a `101` nobody asked
/// for and then echoes raw bytes, HEAD with a head only. Returns the number of connections it
/// accepted.
async fn start_raw_http_app() -> Arc<AtomicUsize> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", RAW_HTTP))
        .await
        .unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some((request, method, path)) = read_request(&mut stream, &mut buf).await
                {
                    let answer = match (method.as_str(), path.as_str()) {
                        ("HEAD", _) => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec(),
                        (_, "/chunked") => CHUNKED_ANSWER.to_vec(),
                        (_, "/interim") => INTERIM_ANSWER.to_vec(),
                        (_, "/close") => b"HTTP/1.1 200 OK\r\n\r\nuntil close".to_vec(),
                        (_, "/switch") => SWITCH_ANSWER.to_vec(),
                        _ => echo_answer(&request),
                    };
                    if stream.write_all(&answer).await.is_err() || path == "/close" {
                        return;
                    }
                    if path == "/switch" {
                        let _ = stream.write_all(&buf).await;
                        let (mut r, mut w) = stream.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        return;
                    }
                }
            });
        }
    });
    accepted
}

/// One whole request (head and Content-Length or chunked body) from `stream`: its bytes, method
/// and path. `None` when the connection ends.
async fn read_request(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(Vec<u8>, String, String)> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = req.parse(buf) {
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let end = if header("transfer-encoding").is_some() {
                buf[head..]
                    .windows(5)
                    .position(|w| w == b"0\r\n\r\n")
                    .map(|at| head + at + 5)
            } else {
                let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
                (buf.len() >= head + length).then_some(head + length)
            };
            let (method, path) = (req.method?.to_owned(), req.path?.to_owned());
            if let Some(end) = end {
                return Some((buf.drain(..end).collect(), method, path));
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

fn echo_answer(request: &[u8]) -> Vec<u8> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
        request.len()
    );
    [head.as_bytes(), request].concat()
}

/// A connection from the caller namespace to `port` on the pod.
fn connect_from(caller: &str, port: u16) -> tokio::net::TcpStream {
    let stream = NetNs::run_in_named(caller, || {
        std::net::TcpStream::connect((POD_ADDR, port)).unwrap()
    });
    stream.set_nonblocking(true).unwrap();
    tokio::net::TcpStream::from_std(stream).unwrap()
}

/// Reads exactly `expected.len()` bytes and compares them with `expected`.
async fn expect_bytes(stream: &mut tokio::net::TcpStream, expected: &[u8]) {
    let mut got = vec![0u8; expected.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut got))
        .await
        .expect("the answer within the time limit")
        .expect("the answer");
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected)
    );
}

/// Reads one answer (Content-Length or chunked body without trailers): head text and body.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf) {
            let text = String::from_utf8_lossy(&buf[..head]).into_owned();
            let header = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            if header("transfer-encoding").is_some() {
                if buf.ends_with(b"0\r\n\r\n") {
                    let mut body = Vec::new();
                    let mut rest = &buf[head..];
                    loop {
                        let line = rest.windows(2).position(|w| w == b"\r\n").unwrap();
                        let size =
                            usize::from_str_radix(std::str::from_utf8(&rest[..line]).unwrap(), 16)
                                .unwrap();
                        if size == 0 {
                            return (text, body);
                        }
                        body.extend_from_slice(&rest[line + 2..line + 2 + size]);
                        rest = &rest[line + 4 + size..];
                    }
                }
            } else {
                let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
                if buf.len() >= head + length {
                    assert_eq!(buf.len(), head + length, "nothing after the answer");
                    return (text, buf[head..].to_vec());
                }
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("the answer within the time limit")
            .expect("the answer");
        assert!(n > 0, "connection closed mid-answer");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn unmatched_http1_is_relayed_byte_for_byte_and_later_requests_are_still_matched() {
    let ns = NetNs::with_caller("relay");
    let caller = ns.caller_name().unwrap().to_owned();
    ns.run_in(|| {
        mt_rt().block_on(async {
            let accepted = start_raw_http_app().await;
            let incoming = Incoming::start(cfg("RELAY")).await.unwrap();
            let mut alice = Client::new(&incoming);
            for port in [RAW_HTTP, NOBODY] {
                let filter = StealType::FilteredHttpEx(port, header_filter("^x-user: alice$"));
                assert_eq!(alice.steal(filter).await, Ok(port));
            }
            let mut peer = connect_from(&caller, RAW_HTTP);

            // Two pipelined requests in one write, the second with a chunked body: the app gets
            // their exact bytes (header-name case included), the peer gets the app's exact bytes.
            let get = b"GET /echo HTTP/1.1\r\nHost: pod\r\nX-Mixed-Case: Yes\r\n\r\n";
            let post = b"POST /echo HTTP/1.1\r\nHost: pod\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
            peer.write_all(&[&get[..], post].concat()).await.unwrap();
            for request in [&get[..], post] {
                expect_bytes(&mut peer, &echo_answer(request)).await;
            }
            // A body with a length, split over two writes.
            let put = b"PUT /echo HTTP/1.1\r\nHost: pod\r\nContent-Length: 10\r\n\r\n01234";
            peer.write_all(put).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            peer.write_all(b"56789").await.unwrap();
            expect_bytes(&mut peer, &echo_answer(&[&put[..], b"56789"].concat())).await;
            // A chunked answer with a trailer; a 103 before the 200; HEAD without a body.
            peer.write_all(b"GET /chunked HTTP/1.1\r\nHost: pod\r\n\r\n").await.unwrap();
            expect_bytes(&mut peer, CHUNKED_ANSWER).await;
            peer.write_all(b"GET /interim HTTP/1.1\r\nHost: pod\r\n\r\n").await.unwrap();
            expect_bytes(&mut peer, INTERIM_ANSWER).await;
            peer.write_all(b"HEAD /echo HTTP/1.1\r\nHost: pod\r\n\r\n").await.unwrap();
            expect_bytes(&mut peer, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").await;
            assert_eq!(accepted.load(Ordering::SeqCst), 1, "one kept connection to the app");
            assert!(alice.rx.try_recv().is_err(), "unmatched requests are not seen by the session");

            // A matching request on the same connection is stolen, and the requests after it
            // are still matched one by one.
            for path in ["/mine", "/again"] {
                let request = format!("GET {path} HTTP/1.1\r\nHost: pod\r\nX-User: alice\r\n\r\n");
                peer.write_all(request.as_bytes()).await.unwrap();
                let (start, _) = alice.request(true).await;
                assert_eq!(start.request.uri.path(), path);
                alice.respond(start.connection_id, 200, &[], "for alice").await;
                let (head, body) = read_answer(&mut peer).await;
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                assert_eq!(body, b"for alice");
                assert!(matches!(alice.next_steal().await, DaemonTcp::Close(_)));
                peer.write_all(b"GET /echo HTTP/1.1\r\nHost: pod\r\n\r\n").await.unwrap();
                let (_, body) = read_answer(&mut peer).await;
                assert!(body.starts_with(b"GET /echo HTTP/1.1\r\n"), "{body:?}");
            }

            // A body delimited by the end of the connection: relayed, then the peer's connection
            // ends too.
            let mut peer = connect_from(&caller, RAW_HTTP);
            peer.write_all(b"GET /close HTTP/1.1\r\nHost: pod\r\n\r\n").await.unwrap();
            let mut all = Vec::new();
            tokio::time::timeout(WAIT, peer.read_to_end(&mut all)).await.unwrap().unwrap();
            assert_eq!(String::from_utf8_lossy(&all), "HTTP/1.1 200 OK\r\n\r\nuntil close");

            // The peer asks to close: the agent closes after the answer.
            let mut peer = connect_from(&caller, RAW_HTTP);
            let last = b"GET /echo HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n";
            peer.write_all(last).await.unwrap();
            let mut all = Vec::new();
            tokio::time::timeout(WAIT, peer.read_to_end(&mut all)).await.unwrap().unwrap();
            assert_eq!(String::from_utf8_lossy(&all), String::from_utf8_lossy(&echo_answer(last)));

            // A 101 the request did not ask for: from then on bytes flow both ways untouched.
            let mut peer = connect_from(&caller, RAW_HTTP);
            peer.write_all(b"GET /switch HTTP/1.1\r\nHost: pod\r\n\r\nraw bytes").await.unwrap();
            expect_bytes(&mut peer, &[SWITCH_ANSWER, b"raw bytes"].concat()).await;
            peer.write_all(b" and more").await.unwrap();
            expect_bytes(&mut peer, b" and more").await;

            // Nothing listens behind the port: the agent's own 502, and the connection ends.
            let mut peer = connect_from(&caller, NOBODY);
            peer.write_all(b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n").await.unwrap();
            let mut all = Vec::new();
            tokio::time::timeout(WAIT, peer.read_to_end(&mut all)).await.unwrap().unwrap();
            let all = String::from_utf8_lossy(&all);
            assert!(all.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{all}");
            assert!(all.contains("mirrord-agent v"), "{all}");
            incoming.shutdown().await;
        })
    });
}

/// The agent process that `sigkill_mid_steal_…` starts and kills: this same test binary re-run
/// with `MO_TEST_AGENT_CHILD=<chain prefix>` inside the namespace. In a normal test run (variable
/// unset) it has nothing to do and returns.
#[test]
fn agent_child_process() {
    let Ok(prefix) = std::env::var("MO_TEST_AGENT_CHILD") else {
        return;
    };
    mt_rt().block_on(async {
        let incoming = Incoming::start(cfg(&prefix)).await.unwrap();
        let mut c = Client::new(&incoming);
        assert_eq!(c.steal(StealType::All(APP)).await, Ok(APP));
        println!("MO-CHILD READY");
        let (start, _) = c.request(true).await;
        println!("MO-CHILD STOLEN {}", start.request.uri.path());
        // Hold the stolen request unanswered until the parent kills this process.
        tokio::time::sleep(WAIT * 4).await;
    });
}

#[test]
fn sigkill_mid_steal_then_restart_removes_stale_rules_and_the_app_answers() {
    use std::io::BufRead;

    let ns = NetNs::with_caller("kill");
    let _site = ns.serve_hello(APP, "from the python app", WAIT);
    let url = format!("http://{POD_ADDR}:{APP}/hello.txt");
    let caller_curl = |url: &str| {
        ns.caller_command("curl")
            .args(["-sS", "--max-time", "10", url])
            .output()
            .unwrap()
    };
    assert_eq!(caller_curl(&url).stdout, b"from the python app");

    let mut agent = ns.command(std::env::current_exe().unwrap().to_str().unwrap());
    agent
        .args([
            "--exact",
            "agent_child_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("MO_TEST_AGENT_CHILD", "KILL")
        .stderr(std::process::Stdio::null());
    let (pid, stdout) = ns.spawn_piped(agent);
    let (line_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    // libtest may print its own text before ours on the same line.
    let wait_line = |marker: &str| loop {
        let line = lines.recv_timeout(WAIT).expect("agent child output");
        if let Some(at) = line.find(marker) {
            return line[at..].to_owned();
        }
    };
    wait_line("MO-CHILD READY");
    assert_eq!(
        ns.nat_rules_with("KILL-").len(),
        7,
        "{:#?}",
        ns.nat_rules_with("KILL-")
    );

    std::thread::scope(|s| {
        let pending = s.spawn(|| caller_curl(&url));
        assert_eq!(wait_line("MO-CHILD STOLEN"), "MO-CHILD STOLEN /hello.txt");
        ns.kill(pid);
        let out = pending.join().unwrap();
        assert!(
            !out.status.success(),
            "the stolen request dies with the agent"
        );
    });
    assert_eq!(
        ns.nat_rules_with("KILL-").len(),
        7,
        "a killed agent leaves its rules"
    );
    assert!(
        !caller_curl(&url).status.success(),
        "stale rules send traffic to a dead listener"
    );

    ns.run_in(|| {
        rt().block_on(async {
            let incoming = Incoming::start(cfg("KILL")).await.unwrap();
            assert!(
                ns.nat_rules_with("KILL-").is_empty(),
                "restart removed them"
            );
            incoming.shutdown().await;
        })
    });
    assert_eq!(caller_curl(&url).stdout, b"from the python app");
}
