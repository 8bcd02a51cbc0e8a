//! Load through the agent vs direct, side by side in one run (needs root: it creates its own
//! network namespaces and iptables rules inside them only).
//!
//! A tiny HTTP/1.1 app listens on two ports inside the pod namespace. Port `agent` has a filtered
//! steal subscription whose filter never matches, so every request is redirected to the agent,
//! parsed, matched and passed through to the app (the common case on a shared pod); port `direct`
//! is not subscribed. Clients in the caller namespace (PREROUTING path) measure, with
//! rounds alternating direct/agent to spread machine noise evenly:
//!
//! * closed loop: keep-alive connections sending back to back — saturation throughput (its latency
//!   is mostly queueing, so it is printed but not the latency figure);
//! * open loop: a fixed request rate, each connection on its own schedule; latency counts from the
//!   scheduled send time (wrk2-style, so a stall delays every later request and is counted), and
//!   how late the sender itself woke up is printed as "schedule lag";
//! * CPU per request of each runtime (`load`, `app`, `agent`, one worker each) in the closed loop,
//!   which moves less with machine noise than req/s and shows where the agent's cost is.
//!
//! Each app workload (`AGENT_LOAD_APP_WORK_US`, default `0,50`: the app answers at once, or after
//! burning that much CPU per request) gets its own pair of ports and rows. Prints Markdown tables
//! for `docs/benchmarks.md`. Knobs: `AGENT_LOAD_SECONDS` (5), `AGENT_LOAD_ROUNDS` (3),
//! `AGENT_LOAD_CONNECTIONS` (8), `AGENT_LOAD_RATES` (`2000,5000`), `AGENT_LOAD_OPEN_SECONDS` (5),
//! `AGENT_LOAD_OPEN_ROUNDS` (2).

#[path = "../tests/support/netns.rs"]
mod netns;

use std::{
    collections::HashMap,
    convert::Infallible,
    io::{Read, Write},
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mirrord_operator::{
    agent::incoming::{Incoming, IncomingConfig, Redirect},
    protocol::{DaemonMessage, DaemonTcp, Filter, HttpFilter, LayerTcpSteal, StealType},
};
use netns::{NetNs, POD_ADDR};
use tokio::sync::mpsc;

/// Port pair of workload `i`: `FIRST_PORT + 2i` through the agent, the next one direct.
const FIRST_PORT: u16 = 8080;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &str) -> Vec<u64> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

/// The app: answers `ok` after burning `work` of CPU (a stand-in for real request handling).
async fn serve_app(port: u16, work: Duration) {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<hyper::body::Incoming>| async move {
                    let start = Instant::now();
                    while start.elapsed() < work {
                        std::hint::spin_loop();
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// CPU used by threads of one name.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    /// Time on a CPU (schedstat: exact), µs.
    run_us: f64,
    /// Tick-sampled user and system time, only for the kernel's share of `run_us`.
    user_ticks: u64,
    system_ticks: u64,
}

impl Cpu {
    fn minus(self, before: Cpu) -> Cpu {
        Cpu {
            run_us: self.run_us - before.run_us,
            user_ticks: self.user_ticks - before.user_ticks,
            system_ticks: self.system_ticks - before.system_ticks,
        }
    }

    fn add(&mut self, other: Cpu) {
        self.run_us += other.run_us;
        self.user_ticks += other.user_ticks;
        self.system_ticks += other.system_ticks;
    }
}

/// CPU used so far by this process's threads, summed by thread name (`load`, `app`, `agent`: the
/// three runtimes).
fn cpu_by_thread() -> HashMap<String, Cpu> {
    let mut by_name: HashMap<String, Cpu> = HashMap::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let read = |file| std::fs::read_to_string(task.path().join(file));
        // A thread that ended meanwhile has no files any more.
        let (Ok(stat), Ok(schedstat)) = (read("stat"), read("schedstat")) else {
            continue;
        };
        // `pid (comm) state ppid …`: comm may hold spaces, the fields after it are fixed.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let run_ns: u64 = schedstat.split(' ').next().unwrap().parse().unwrap();
        by_name
            .entry(stat[open + 1..close].to_owned())
            .or_default()
            .add(Cpu {
                run_us: run_ns as f64 / 1000.0,
                user_ticks: fields[11].parse().unwrap(),
                system_ticks: fields[12].parse().unwrap(),
            });
    }
    by_name
}

/// CPU of each runtime during closed-loop rounds.
#[derive(Clone, Copy, Default)]
struct RoundCpu {
    threads: [Cpu; 3],
}

impl RoundCpu {
    const NAMES: [&str; 3] = ["load", "app", "agent"];

    fn between(before: &HashMap<String, Cpu>, after: &HashMap<String, Cpu>) -> RoundCpu {
        let mut cpu = RoundCpu::default();
        for (i, name) in Self::NAMES.iter().enumerate() {
            let get = |m: &HashMap<String, Cpu>| m.get(*name).copied().unwrap_or_default();
            cpu.threads[i] = get(after).minus(get(before));
        }
        cpu
    }

    /// `run µs per request (kernel share)` of thread group `i`.
    fn cell(&self, i: usize, requests: u64) -> String {
        let c = self.threads[i];
        let ticks = (c.user_ticks + c.system_ticks).max(1) as f64;
        format!(
            "{:.1} ({:.0}% kernel)",
            c.run_us / requests.max(1) as f64,
            100.0 * c.system_ticks as f64 / ticks
        )
    }

    fn total(&self, requests: u64) -> f64 {
        self.threads.iter().map(|c| c.run_us).sum::<f64>() / requests.max(1) as f64
    }
}

struct Round {
    requests: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    /// Open loop only: how late each request was sent against its schedule.
    lag: Histogram<u64>,
    /// Closed loop only.
    cpu: RoundCpu,
}

impl Round {
    fn merge(rounds: &[Round]) -> Round {
        let mut all = Round {
            requests: 0,
            elapsed: Duration::ZERO,
            latency: histogram(),
            lag: histogram(),
            cpu: RoundCpu::default(),
        };
        for r in rounds {
            all.requests += r.requests;
            all.elapsed += r.elapsed;
            all.latency.add(&r.latency).unwrap();
            all.lag.add(&r.lag).unwrap();
            for (sum, c) in all.cpu.threads.iter_mut().zip(r.cpu.threads) {
                sum.add(c);
            }
        }
        all
    }

    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
}

/// Closed loop: `connections` keep-alive hyper clients sending back to back for `duration`.
async fn closed_loop(port: u16, connections: u64, duration: Duration) -> Round {
    let cpu_before = cpu_by_thread();
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect((POD_ADDR, port))
                .await
                .unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut hist = histogram();
            let mut n = 0;
            while Instant::now() < deadline {
                let req = Request::get("/bench")
                    .header("host", "app")
                    .header("x-request-id", n.to_string())
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let t = Instant::now();
                let resp = sender.send_request(req).await.unwrap();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"ok");
                hist.record(t.elapsed().as_micros() as u64).unwrap();
                n += 1;
            }
            (n, hist)
        }));
    }
    let mut latency = histogram();
    let mut requests = 0;
    for task in tasks {
        let (n, hist) = task.await.unwrap();
        requests += n;
        latency.add(hist).unwrap();
    }
    Round {
        requests,
        elapsed: start.elapsed(),
        latency,
        lag: histogram(),
        cpu: RoundCpu::between(&cpu_before, &cpu_by_thread()),
    }
}

/// Open loop: `rate` requests per second in total over `connections` keep-alive connections, one
/// blocking thread each (a precise sleep, unlike tokio's 1 ms timer), schedules staggered. Must run
/// in the caller namespace (the threads inherit it).
fn open_loop(port: u16, connections: u64, rate: u64, duration: Duration) -> Round {
    let interval = Duration::from_secs_f64(connections as f64 / rate as f64);
    let begin = Instant::now() + Duration::from_millis(20);
    let threads: Vec<_> = (0..connections)
        .map(|i| {
            let thread = std::thread::Builder::new().name("open-load".into());
            thread.spawn(move || {
                // Wake up on time: the default 50 µs timer slack would be counted as latency.
                // SAFETY: changes only this thread's timer slack.
                unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
                let mut stream = std::net::TcpStream::connect((POD_ADDR, port)).unwrap();
                stream.set_nodelay(true).unwrap();
                let (mut latency, mut lag) = (histogram(), histogram());
                let mut buf = vec![0u8; 4096];
                let mut next = begin + interval.mul_f64(i as f64 / connections as f64);
                let end = begin + duration;
                let mut n = 0u64;
                while next < end {
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let sent = Instant::now();
                    lag.saturating_record(sent.saturating_duration_since(next).as_micros() as u64);
                    let req =
                        format!("GET /bench HTTP/1.1\r\nhost: app\r\nx-request-id: {n}\r\n\r\n");
                    stream.write_all(req.as_bytes()).unwrap();
                    read_ok(&mut stream, &mut buf);
                    latency.saturating_record(next.elapsed().as_micros() as u64);
                    next += interval;
                    n += 1;
                }
                (n, latency, lag)
            })
        })
        .collect();
    let mut round = Round {
        requests: 0,
        elapsed: duration,
        latency: histogram(),
        lag: histogram(),
        cpu: RoundCpu::default(),
    };
    for t in threads {
        let (n, latency, lag) = t.unwrap().join().unwrap();
        round.requests += n;
        round.latency.add(latency).unwrap();
        round.lag.add(lag).unwrap();
    }
    round
}

/// Reads one response (head plus a Content-Length body) and checks it is the app's `ok`.
fn read_ok(stream: &mut std::net::TcpStream, buf: &mut [u8]) {
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).unwrap();
        assert!(n > 0, "connection closed mid-response");
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = resp.parse(&buf[..filled]).unwrap() {
            assert_eq!(resp.code, Some(200));
            let len: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap();
            if filled >= head + len {
                assert_eq!(&buf[head..head + len], b"ok");
                assert_eq!(filled, head + len, "one response at a time");
                return;
            }
        }
    }
}

fn added(agent: u64, direct: u64) -> String {
    format!("{:+}", agent as i64 - direct as i64)
}

struct Workload {
    work_us: u64,
    closed: (Vec<Round>, Vec<Round>),
    open: Vec<(u64, Vec<Round>, Vec<Round>)>,
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let seconds = env_or("AGENT_LOAD_SECONDS", 5);
    let rounds = env_or("AGENT_LOAD_ROUNDS", 3);
    let connections = env_or("AGENT_LOAD_CONNECTIONS", 8);
    let rates = env_list("AGENT_LOAD_RATES", "2000,5000");
    let open_seconds = env_or("AGENT_LOAD_OPEN_SECONDS", 5);
    let open_rounds = env_or("AGENT_LOAD_OPEN_ROUNDS", 2);
    let work = env_list("AGENT_LOAD_APP_WORK_US", "0,50");
    let ports = |i: usize| (FIRST_PORT + 2 * i as u16, FIRST_PORT + 2 * i as u16 + 1);
    // The agent binary's logging at its default level: enabled spans are part of the cost.
    mirrord_operator::agent::init_tracing("info");
    let ns = NetNs::with_caller("bench");
    let caller = ns.caller_name().unwrap().to_owned();

    let pod_rt = ns.run_in(|| {
        let rt = runtime("app");
        rt.block_on(async {
            for (i, us) in work.iter().enumerate() {
                let (agent, direct) = ports(i);
                serve_app(agent, Duration::from_micros(*us)).await;
                serve_app(direct, Duration::from_micros(*us)).await;
            }
        });
        rt
    });
    let agent_rt = ns.run_in(|| runtime("agent"));
    // `block_on` polls its future on the calling thread: call it from inside the namespace.
    let (incoming, _session, _rx) = ns.run_in(|| {
        agent_rt.block_on(async {
            let cfg = IncomingConfig::new(Redirect::Iptables, "BENCH".into(), 30777);
            let incoming = Incoming::start(cfg).await.unwrap();
            let (tx, mut rx) = mpsc::channel(1024);
            let mut session = incoming.session(tx, Some(semver::Version::new(1, 29, 0)));
            for i in 0..work.len() {
                let port = ports(i).0;
                let never = HttpFilter::Header(Filter("^x-never-sent: ".into()));
                session
                    .handle_steal(LayerTcpSteal::PortSubscribe(StealType::FilteredHttpEx(
                        port, never,
                    )))
                    .await;
                let reply = rx.recv().await;
                assert!(
                    matches!(
                        reply,
                        Some(DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(Ok(p)))) if p == port
                    ),
                    "{reply:?}"
                );
            }
            (incoming, session, rx)
        })
    });

    let results: Vec<Workload> = NetNs::run_in_named(&caller, || {
        let rt = runtime("load");
        work.iter()
            .enumerate()
            .map(|(i, &work_us)| {
                let (agent, direct) = ports(i);
                let closed = rt.block_on(async {
                    // Warm-up: connections, caches, conntrack.
                    closed_loop(direct, connections, Duration::from_secs(1)).await;
                    closed_loop(agent, connections, Duration::from_secs(1)).await;
                    let (mut d, mut a) = (Vec::new(), Vec::new());
                    for _ in 0..rounds {
                        d.push(
                            closed_loop(direct, connections, Duration::from_secs(seconds)).await,
                        );
                        a.push(closed_loop(agent, connections, Duration::from_secs(seconds)).await);
                    }
                    (d, a)
                });
                let open = rates
                    .iter()
                    .map(|&rate| {
                        let (mut d, mut a) = (Vec::new(), Vec::new());
                        let span = Duration::from_secs(open_seconds);
                        for _ in 0..open_rounds {
                            d.push(open_loop(direct, connections, rate, span));
                            a.push(open_loop(agent, connections, rate, span));
                        }
                        (rate, d, a)
                    })
                    .collect();
                Workload {
                    work_us,
                    closed,
                    open,
                }
            })
            .collect()
    });

    println!(
        "\n{connections} keep-alive connections, HTTP/1.1 GET, 2-byte body; closed loop {rounds} \
         rounds x {seconds}s per path, open loop {open_rounds} rounds x {open_seconds}s per path and rate\n"
    );
    println!("| app work | path | load | req/s | p50 µs | p99 µs | max µs | schedule lag p99 µs |");
    println!("|---|---|---|---|---|---|---|---|");
    let row = |work: u64, path: &str, load: &str, r: &Round| {
        let lag = if r.lag.is_empty() {
            "—".to_owned()
        } else {
            r.lag.value_at_quantile(0.99).to_string()
        };
        println!(
            "| {work} µs | {path} | {load} | {:.0} | {} | {} | {} | {lag} |",
            r.rate(),
            r.latency.value_at_quantile(0.5),
            r.latency.value_at_quantile(0.99),
            r.latency.max(),
        );
    };
    for w in &results {
        let (d, a) = (Round::merge(&w.closed.0), Round::merge(&w.closed.1));
        row(w.work_us, "direct", "closed loop", &d);
        row(w.work_us, "agent", "closed loop", &a);
        for (rate, d, a) in &w.open {
            let load = format!("{rate} req/s");
            row(w.work_us, "direct", &load, &Round::merge(d));
            row(w.work_us, "agent", &load, &Round::merge(a));
        }
    }
    println!(
        "\n| app work | throughput ratio (closed loop) | rate | added p50 µs | added p99 µs |"
    );
    println!("|---|---|---|---|---|");
    for w in &results {
        let (d, a) = (Round::merge(&w.closed.0), Round::merge(&w.closed.1));
        for (rate, od, oa) in &w.open {
            let (od, oa) = (Round::merge(od), Round::merge(oa));
            println!(
                "| {} µs | {:.2}x | {rate} req/s | {} | {} |",
                w.work_us,
                a.rate() / d.rate(),
                added(
                    oa.latency.value_at_quantile(0.5),
                    od.latency.value_at_quantile(0.5)
                ),
                added(
                    oa.latency.value_at_quantile(0.99),
                    od.latency.value_at_quantile(0.99)
                ),
            );
        }
    }
    println!(
        "\nCPU per request in the closed loop, µs on a CPU (schedstat) and the kernel's share of it \
         (tick-sampled); what the agent adds is the difference of the totals:\n"
    );
    println!("| app work | path | load | app | agent | total µs |");
    println!("|---|---|---|---|---|---|");
    for w in &results {
        for (path, rounds) in [("direct", &w.closed.0), ("agent", &w.closed.1)] {
            let r = Round::merge(rounds);
            println!(
                "| {} µs | {path} | {} | {} | {} | {:.1} |",
                w.work_us,
                r.cpu.cell(0, r.requests),
                r.cpu.cell(1, r.requests),
                r.cpu.cell(2, r.requests),
                r.cpu.total(r.requests)
            );
        }
    }
    for w in &results {
        let per_round = |rs: &[Round]| {
            rs.iter()
                .map(|r| format!("{:.0}", r.rate()))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        println!(
            "\n{} µs app, closed-loop req/s per round: direct {}; agent {}",
            w.work_us,
            per_round(&w.closed.0),
            per_round(&w.closed.1)
        );
        for (rate, d, a) in &w.open {
            let p50s = |rs: &[Round]| {
                rs.iter()
                    .map(|r| r.latency.value_at_quantile(0.5).to_string())
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            println!(
                "{} µs app, {rate} req/s p50 per round: direct {}; agent {}",
                w.work_us,
                p50s(d),
                p50s(a)
            );
        }
    }
    ns.run_in(|| agent_rt.block_on(incoming.shutdown()));
    drop(pod_rt);
}
