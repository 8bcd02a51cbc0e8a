//! Load through the agent vs direct, side by side in one run (needs root: it creates its own
//! network namespaces and iptables rules inside them only).
//!
//! A tiny HTTP/1.1 app listens on two ports inside the pod namespace. Port `AGENT` has a filtered
//! steal subscription whose filter never matches, so every request is redirected to the agent,
//! parsed, matched and passed through to the app (the common case on a shared pod); port `DIRECT`
//! is not subscribed. Keep-alive clients in the caller namespace (PREROUTING path) send requests
//! for a fixed time per round; rounds alternate direct/agent to spread machine noise evenly.
//! Prints a Markdown table (req/s, p50, p99) for `docs/benchmarks.md`.

#[path = "../tests/support/netns.rs"]
mod netns;

use std::{
    convert::Infallible,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use mirrord_operator::{
    agent::incoming::{Incoming, IncomingConfig, RedirectMode},
    protocol::{DaemonMessage, DaemonTcp, Filter, HttpFilter, LayerTcpSteal, StealType},
};
use netns::{NetNs, POD_ADDR};
use tokio::sync::mpsc;

const AGENT: u16 = 8080;
const DIRECT: u16 = 8081;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn serve_app(port: u16) {
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
                let svc = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

struct Round {
    requests: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

/// `connections` keep-alive clients hammering `port` for `duration`.
async fn load(port: u16, connections: u64, duration: Duration) -> Round {
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
            let mut hist = Histogram::<u64>::new(3).unwrap();
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
    let mut latency = Histogram::<u64>::new(3).unwrap();
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
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let seconds = env_or("AGENT_LOAD_SECONDS", 5);
    let rounds = env_or("AGENT_LOAD_ROUNDS", 3);
    let connections = env_or("AGENT_LOAD_CONNECTIONS", 8);
    let ns = NetNs::with_caller("bench");
    let caller = ns.caller_name().unwrap().to_owned();

    let pod_rt = ns.run_in(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            serve_app(AGENT).await;
            serve_app(DIRECT).await;
        });
        rt
    });
    let agent_rt = ns.run_in(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    });
    // `block_on` polls its future on the calling thread: call it from inside the namespace.
    let (incoming, _session, _rx) = ns.run_in(|| {
        agent_rt.block_on(async {
            let cfg = IncomingConfig::new(RedirectMode::Iptables, "BENCH".into(), 30777);
            let incoming = Incoming::start(cfg).await.unwrap();
            let (tx, mut rx) = mpsc::channel(1024);
            let mut session = incoming.session(tx, Some(semver::Version::new(1, 29, 0)));
            let never = HttpFilter::Header(Filter("^x-never-sent: ".into()));
            session
                .handle_steal(LayerTcpSteal::PortSubscribe(StealType::FilteredHttpEx(
                    AGENT, never,
                )))
                .await;
            let reply = rx.recv().await;
            assert!(
                matches!(
                    reply,
                    Some(DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(Ok(
                        AGENT
                    ))))
                ),
                "{reply:?}"
            );
            (incoming, session, rx)
        })
    });

    let results = NetNs::run_in_named(&caller, || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Warm-up: connections, caches, conntrack.
            load(DIRECT, connections, Duration::from_secs(1)).await;
            load(AGENT, connections, Duration::from_secs(1)).await;
            let mut direct = Vec::new();
            let mut agent = Vec::new();
            for _ in 0..rounds {
                direct.push(load(DIRECT, connections, Duration::from_secs(seconds)).await);
                agent.push(load(AGENT, connections, Duration::from_secs(seconds)).await);
            }
            (direct, agent)
        })
    });

    let summarize = |rounds: &[Round]| {
        let mut hist = Histogram::<u64>::new(3).unwrap();
        let (mut n, mut t) = (0u64, 0f64);
        for r in rounds {
            hist.add(&r.latency).unwrap();
            n += r.requests;
            t += r.elapsed.as_secs_f64();
        }
        (
            n as f64 / t,
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99),
        )
    };
    let (d_rps, d_p50, d_p99) = summarize(&results.0);
    let (a_rps, a_p50, a_p99) = summarize(&results.1);
    println!(
        "\n{rounds} rounds x {seconds}s per path, {connections} keep-alive connections, HTTP/1.1 GET, 2-byte body\n"
    );
    println!("| path | req/s | p50 (µs) | p99 (µs) |");
    println!("|---|---|---|---|");
    println!("| direct to the app | {d_rps:.0} | {d_p50} | {d_p99} |");
    println!("| through the agent (filtered port, no match) | {a_rps:.0} | {a_p50} | {a_p99} |");
    println!(
        "| ratio / added | {:.2}x | +{} | +{} |",
        a_rps / d_rps,
        a_p50 as i64 - d_p50 as i64,
        a_p99 as i64 - d_p99 as i64
    );
    for (i, (d, a)) in results.0.iter().zip(&results.1).enumerate() {
        println!(
            "round {i}: direct {:.0} req/s, agent {:.0} req/s",
            d.requests as f64 / d.elapsed.as_secs_f64(),
            a.requests as f64 / a.elapsed.as_secs_f64()
        );
    }
    ns.run_in(|| agent_rt.block_on(incoming.shutdown()));
    drop(pod_rt);
}
