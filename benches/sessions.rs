//! Session numbers for docs/benchmarks.md ("Sessions"), side by side in one run
//! (`cargo bench --bench sessions`, root: network namespaces and iptables):
//! * connect → first stolen request through the coordinator (the agent is already running in the
//!   pod), vs the baseline mirrord pays without an operator: spawning an agent for the session,
//!   then its first subscription and stolen request;
//! * a stolen request's round trip through coordinator + agent, vs through the agent alone (same
//!   answering client, so the difference is the coordinator), vs straight to the app;
//! * the coordinator's CPU per relayed request and the process RSS with 100 concurrent sessions on
//!   one target, each with its own (disjoint) header filter.
//!
//! The coordinator (agent hub + API router + session relay) runs in-process on its own tokio
//! runtime whose threads are named `coord`, so its CPU is read from those threads alone. The pod
//! is a network namespace with a real HTTP app and the real `mirrord-operator agent` dialling the
//! hub with iptables redirection, as in `tests/coordinator_sessions.rs`. HTTP clients run in the
//! pod's caller namespace (raw sockets, no curl process per request).

#[path = "../tests/support/agent_process.rs"]
mod agent_process;
#[path = "../tests/support/coordinator.rs"]
mod coordinator;
#[path = "../tests/support/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use agent_process::AgentProcess;
use coordinator::{APP, Cli, Coordinator, TIMEOUT};
use mirrord_operator::protocol::codec::{Decoded, decode_from_slice, encode_to_vec};
use mirrord_operator::protocol::*;
use netns::NetNs;

const HUB_PORT: u16 = 47101;
const DIRECT_AGENT_PORT: u16 = 61338;
const STARTS: usize = 20;
const ROUND_TRIPS: usize = 500;
const SESSIONS: usize = 100;
const RELAYED: usize = 2000;

fn steal(user: &str) -> ClientMessage {
    ClientMessage::TcpSteal(LayerTcpSteal::PortSubscribe(StealType::FilteredHttpEx(
        APP,
        HttpFilter::Header(Filter(format!("^x-user: {user}$"))),
    )))
}

/// The answer to a stolen request: `200` with a Content-Length so the client knows its end.
fn answer(start: &ChunkedRequestStartV2) -> ClientMessage {
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::CONTENT_LENGTH, "2".parse().unwrap());
    ClientMessage::TcpSteal(LayerTcpSteal::HttpResponse(HttpResponse {
        port: APP,
        connection_id: start.connection_id,
        request_id: start.request_id,
        internal_response: InternalHttpResponse {
            status: http::StatusCode::OK,
            version: http::Version::HTTP_11,
            headers,
            body: Payload::from(b"ok".to_vec()),
        },
    }))
}

fn stolen_start(msg: DaemonMessage) -> Option<ChunkedRequestStartV2> {
    match msg {
        DaemonMessage::TcpSteal(DaemonTcp::HttpRequestChunked(ChunkedRequest::StartV2(start))) => {
            Some(start)
        }
        _ => None,
    }
}

/// One request from the caller namespace to the pod's app port; returns once the whole response
/// (headers + Content-Length bytes, or until EOF without one) arrived.
fn http_get(caller: &str, user: &str) -> Duration {
    let started = Instant::now();
    let mut stream = NetNs::run_in_named(caller, || {
        std::net::TcpStream::connect((netns::POD_ADDR, APP)).expect("connect to the app")
    });
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    write!(
        stream,
        "GET /hello.txt HTTP/1.1\r\nHost: web\r\nx-user: {user}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).expect("read the response");
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = response.parse(&buf) {
            let length = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok());
            if length.is_some_and(|l| buf.len() >= head + l) {
                break;
            }
        }
        assert!(
            n > 0 || !buf.is_empty(),
            "connection closed without a response"
        );
        if n == 0 {
            break;
        }
    }
    started.elapsed()
}

/// A CLI connection through the coordinator's API for `deployment.web`.
async fn connect(addr: SocketAddr, der: &str, id: u64) -> Cli {
    Cli::connect(coordinator::upgrade_request(
        addr,
        "deployment.web",
        "connect=true&on_concurrent_steal=abort",
        der,
        id,
        "bench",
    ))
    .await
}

/// Version negotiation and a steal for `user`'s header.
async fn subscribe(cli: &mut Cli, user: &str) {
    cli.negotiate().await;
    assert_eq!(
        cli.ask(steal(user)).await,
        DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(Ok(APP)))
    );
}

/// Answers stolen requests until `n` were answered.
async fn serve(cli: &mut Cli, n: usize) {
    let mut answered = 0;
    while answered < n {
        if let Some(start) = stolen_start(cli.recv_no_log().await) {
            cli.send(answer(&start)).await;
            answered += 1;
        }
    }
}

/// Times of `STARTS` fresh sessions, each from connect to its first stolen request.
struct Starts {
    /// Connect → first stolen request answered.
    firsts: Vec<Duration>,
    /// The WebSocket upgrade alone.
    upgrades: Vec<Duration>,
    /// Version negotiation + steal subscription.
    subscribes: Vec<Duration>,
}

/// `STARTS` sessions one after the other (ids from `first_id`, users `<prefix><run>`): connect,
/// subscribe, answer one request from the caller namespace `caller`, close.
async fn starts(addr: SocketAddr, der: &str, caller: &str, first_id: u64, prefix: &str) -> Starts {
    let mut times = Starts {
        firsts: Vec::with_capacity(STARTS),
        upgrades: Vec::with_capacity(STARTS),
        subscribes: Vec::with_capacity(STARTS),
    };
    for run in 0..STARTS {
        let started = Instant::now();
        let mut cli = connect(addr, der, first_id + run as u64).await;
        times.upgrades.push(started.elapsed());
        let user = format!("{prefix}{run}");
        let subscribing = Instant::now();
        subscribe(&mut cli, &user).await;
        times.subscribes.push(subscribing.elapsed());
        let request = {
            let caller = caller.to_owned();
            tokio::task::spawn_blocking(move || http_get(&caller, &user))
        };
        serve(&mut cli, 1).await;
        times.firsts.push(started.elapsed());
        request.await.unwrap();
        cli.close().await;
    }
    times
}

/// A session straight to an agent (what mirrord without an operator uses), synchronous.
struct Direct {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl Direct {
    /// Starts an agent listening in `ns` and opens a session straight to it.
    fn start(ns: &NetNs) -> (AgentProcess, Direct) {
        let agent = AgentProcess::start(
            agent_command(ns, "SBBASE"),
            SocketAddr::from((Ipv4Addr::LOCALHOST, DIRECT_AGENT_PORT)),
        );
        let stream = ns.run_in(|| std::net::TcpStream::connect(agent.addr).unwrap());
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let direct = Direct {
            stream,
            buf: Vec::new(),
        };
        (agent, direct)
    }

    fn send(&mut self, msg: &ClientMessage) {
        self.stream.write_all(&encode_to_vec(msg).unwrap()).unwrap();
    }

    fn recv(&mut self) -> DaemonMessage {
        loop {
            if let Ok(Decoded::Message(msg, used)) = decode_from_slice::<DaemonMessage>(&self.buf) {
                self.buf.drain(..used);
                if !matches!(msg, DaemonMessage::LogMessage(_)) {
                    return msg;
                }
                continue;
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).expect("read from the agent");
            assert!(n > 0, "the agent closed the session");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn subscribe(&mut self, user: &str) {
        self.send(&ClientMessage::SwitchProtocolVersion(semver::Version::new(
            1, 29, 0,
        )));
        assert!(matches!(
            self.recv(),
            DaemonMessage::SwitchProtocolVersionResponse(_)
        ));
        self.send(&steal(user));
        assert_eq!(
            self.recv(),
            DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(Ok(APP)))
        );
    }

    fn serve_one(&mut self) {
        loop {
            if let Some(start) = stolen_start(self.recv()) {
                self.send(&answer(&start));
                return;
            }
        }
    }
}

fn agent_command(ns: &NetNs, prefix: &str) -> std::process::Command {
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_mirrord-operator"));
    cmd.env("MIRRORD_AGENT_TARGET_PORTS", APP.to_string())
        .env("MIRRORD_AGENT_REDIRECT", "iptables")
        .env("MIRRORD_AGENT_CHAIN_PREFIX", prefix)
        .env("MIRRORD_AGENT_FS_MODE", "off")
        .env("MIRRORD_AGENT_LOG_LEVEL", "warn");
    cmd
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(label: &str, mut values: Vec<Duration>) -> Duration {
    values.sort();
    let p50 = percentile(&values, 0.5);
    println!(
        "{label} ({} runs): p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        values.len(),
        ms(p50),
        ms(percentile(&values, 0.9)),
        ms(percentile(&values, 0.99)),
        ms(*values.last().unwrap()),
    );
    p50
}

/// CPU time (user + system) of this process's threads named `coord`.
fn coordinator_cpu() -> Duration {
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state …`: fields after the comm's closing parenthesis; utime, stime are the
        // 14th and 15th fields of the whole line.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with("(coord") {
            continue;
        }
        let fields: Vec<&str> = rest.split_whitespace().collect();
        total += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    Duration::from_secs_f64(total as f64 / ticks)
}

fn rss_kib(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Baseline: spawn an agent for the session in its own pod namespace, then subscribe and take
/// the first stolen request; and the stolen round trip through the agent alone.
fn baseline() -> Duration {
    let ns = NetNs::with_caller("sb");
    let _site = ns.serve_hello(APP, "app", TIMEOUT);
    let caller = ns.caller_name().unwrap().to_owned();
    // Before any agent ran here (a killed agent leaves its redirect behind).
    summary(
        "straight to the app (no agent)",
        (0..ROUND_TRIPS)
            .map(|_| http_get(&caller, "nobody"))
            .collect(),
    );
    let mut firsts = Vec::with_capacity(STARTS);
    for run in 0..STARTS {
        let started = Instant::now();
        let (_agent, mut direct) = Direct::start(&ns);
        let user = format!("base{run}");
        direct.subscribe(&user);
        let client = {
            let caller = caller.clone();
            std::thread::spawn(move || http_get(&caller, &user))
        };
        direct.serve_one();
        firsts.push(started.elapsed());
        client.join().unwrap();
    }
    let first = summary(
        "without an operator: spawn an agent + subscribe + first stolen request",
        firsts,
    );

    // Round trips through the agent alone (one long-lived session).
    let (agent, mut direct) = Direct::start(&ns);
    direct.subscribe("direct");
    let client = {
        let caller = caller.clone();
        std::thread::spawn(move || {
            (0..ROUND_TRIPS)
                .map(|_| http_get(&caller, "direct"))
                .collect::<Vec<_>>()
        })
    };
    for _ in 0..ROUND_TRIPS {
        direct.serve_one();
    }
    summary(
        "stolen round trip through the agent alone",
        client.join().unwrap(),
    );
    // A header no session filters on: the agent passes it through to the app.
    summary(
        "unmatched request through the agent's redirect to the app",
        (0..ROUND_TRIPS)
            .map(|_| http_get(&caller, "nobody"))
            .collect(),
    );
    drop(direct);
    drop(agent);
    first
}

fn main() {
    let baseline_first = baseline();

    let ns = NetNs::with_caller("sc");
    let _site = ns.serve_hello(APP, "app", TIMEOUT);
    let caller = ns.caller_name().unwrap().to_owned();
    let hub = coordinator::hub_listener(&ns, HUB_PORT);
    let token = coordinator::token_file("web-a");

    // The coordinator's own runtime: its threads are the ones whose CPU is counted.
    let coord_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("coord")
        .enable_all()
        .build()
        .unwrap();
    let (coord, cli_addr, der) = coord_runtime.block_on(async {
        let inventory = coordinator::web_inventory(
            vec![coordinator::injected_pod("web-a")],
            serde_json::Value::Null,
            coordinator::web_template(),
        );
        let coord = Coordinator::new(&["web-a"], inventory, None);
        let der = coord.client_der("bench").await;
        let cli_addr = coord.serve(vec![hub]).await;
        (coord, cli_addr, der)
    });

    let mut cmd = coordinator::agent_command(&ns, HUB_PORT, "web-a", token.path(), "SBCOORD");
    cmd.env("MIRRORD_AGENT_FS_MODE", "off");
    let agent_pid = ns.spawn(cmd);
    coord_runtime.block_on(coord.wait_for_agents(1));

    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("cli")
        .enable_all()
        .build()
        .unwrap();
    clients.block_on(async {
        // Connect → first stolen request, the agent already running in the pod.
        let cold = starts(cli_addr, &der, &caller, 0x5E5_0000, "first").await;
        let first = summary(
            "with the coordinator: connect + subscribe + first stolen request",
            cold.firsts,
        );
        println!(
            "  -> {:.2}x the time of spawning an agent per session",
            ms(first) / ms(baseline_first)
        );
        summary(
            "  of which the WebSocket upgrade (agent session opened)",
            cold.upgrades,
        );
        summary(
            "  of which version + steal subscription (the agent's iptables setup)",
            cold.subscribes,
        );

        // The same while another session already steals on the port: the agent's redirect is
        // up, so the subscription needs no iptables call (the shared-cluster steady state).
        let mut holder = connect(cli_addr, &der, 0x5E5_0F00).await;
        subscribe(&mut holder, "holder").await;
        let warm = starts(cli_addr, &der, &caller, 0x5E5_0800, "warm").await;
        summary(
            "with the coordinator, port already redirected for another session: connect + subscribe + first stolen request",
            warm.firsts,
        );
        holder.close().await;

        // Stolen round trips through coordinator + agent.
        let mut cli = connect(cli_addr, &der, 0x5E5_1000).await;
        subscribe(&mut cli, "relayed").await;
        let requests = {
            let caller = caller.clone();
            tokio::task::spawn_blocking(move || {
                (0..ROUND_TRIPS)
                    .map(|_| http_get(&caller, "relayed"))
                    .collect::<Vec<_>>()
            })
        };
        serve(&mut cli, ROUND_TRIPS).await;
        summary(
            "stolen round trip through coordinator + agent",
            requests.await.unwrap(),
        );
        cli.close().await;

        // 100 concurrent sessions, disjoint filters; requests spread over all of them.
        let rss_before = rss_kib("self");
        let agent_rss_before = rss_kib(&agent_pid.to_string());
        let mut servers = Vec::with_capacity(SESSIONS);
        for i in 0..SESSIONS {
            let mut cli = connect(cli_addr, &der, 0x5E5_2000 + i as u64).await;
            subscribe(&mut cli, &format!("u{i}")).await;
            servers.push(cli);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!(
            "{SESSIONS} sessions on one target: bench process RSS {:.1} MiB (+{:.1} MiB over one idle coordinator; includes the {SESSIONS} client WebSockets), agent RSS {:.1} MiB (+{:.1} MiB), {} sessions in the table",
            rss_kib("self") as f64 / 1024.0,
            (rss_kib("self") as f64 - rss_before as f64) / 1024.0,
            rss_kib(&agent_pid.to_string()) as f64 / 1024.0,
            (rss_kib(&agent_pid.to_string()) as f64 - agent_rss_before as f64) / 1024.0,
            coord.table.list().len(),
        );
        let per_session = RELAYED / SESSIONS;
        let tasks: Vec<_> = servers
            .into_iter()
            .map(|mut cli| tokio::spawn(async move { serve(&mut cli, per_session).await }))
            .collect();
        let cpu_before = coordinator_cpu();
        let started = Instant::now();
        let load = {
            let caller = caller.clone();
            tokio::task::spawn_blocking(move || {
                let threads: Vec<_> = (0..4)
                    .map(|t| {
                        let caller = caller.clone();
                        std::thread::spawn(move || {
                            for i in (t..RELAYED).step_by(4) {
                                http_get(&caller, &format!("u{}", i % SESSIONS));
                            }
                        })
                    })
                    .collect();
                for t in threads {
                    t.join().unwrap();
                }
            })
        };
        load.await.unwrap();
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = started.elapsed();
        let cpu = coordinator_cpu() - cpu_before;
        println!(
            "{RELAYED} stolen requests over {SESSIONS} sessions in {:.2} s ({:.0} req/s): coordinator CPU {:.1} µs per relayed request ({:.0} ms in total)",
            elapsed.as_secs_f64(),
            RELAYED as f64 / elapsed.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / RELAYED as f64,
            ms(cpu),
        );
    });
    ns.kill(agent_pid);
    drop(clients);
    drop(coord_runtime);
}
