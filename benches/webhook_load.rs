//! Load test: the real webhook binary over TLS, side by side with bare axum + rustls endpoints that
//! answer a fixed AdmissionReview (same TLS stack, same accept loop, no admission logic), in one run
//! on one machine so the ratio is honest. Two bare endpoints: one answers the very bytes the webhook
//! answers for this request (captured from it at start), so the difference is the admission work
//! alone; one answers a small patch, which shows what moving the bigger answer costs. Closed-loop
//! rounds alternate between the servers, so a change in the machine's load hits all of them.
//! Prints Markdown tables for docs/benchmarks.md.
//!
//! `cargo bench --bench webhook_load` (or `make bench`). Knobs: LOAD_SECONDS (each closed-loop
//! round and the fixed-rate phase, default 5), LOAD_ROUNDS (default 3), LOAD_CONNECTIONS (default
//! 16), LOAD_RATE (fixed-rate phase, default 2000 req/s).

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const BARE_FLAG: &str = "--bare-server";

/// The bare endpoint runs in this binary: it gets the operator binary's allocator, so the two
/// servers differ only in the admission work.
#[global_allocator]
static ALLOCATOR: mirrord_operator::allocator::ByRole = mirrord_operator::allocator::ByRole;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A Deployment-created pod, as the API server sends it.
fn review_body() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "4b0f8a0e-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "staging", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "groups": ["system:serviceaccounts"]},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "api-6d4b7c9f8-", "namespace": "staging",
                    "labels": {"app": "api", "pod-template-hash": "6d4b7c9f8"},
                    "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-01T10:00:00Z"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-6d4b7c9f8",
                        "uid": "b1c2", "controller": true, "blockOwnerDeletion": true}]},
                "spec": {
                    "containers": [{"name": "api", "image": "registry.example.com/api:1.4.2",
                        "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
                        "env": [{"name": "PORT", "value": "8080"}, {"name": "DB_URL", "value": "postgres://db:5432/app"},
                                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                {"name": "GREETING", "value": "hello $(POD_NAME)"}],
                        "envFrom": [{"configMapRef": {"name": "api-config"}}],
                        "volumeMounts": [{"name": "config", "mountPath": "/etc/api", "readOnly": true},
                                         {"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}}],
                    "volumes": [{"name": "config", "configMap": {"name": "api-config"}},
                                {"name": "kube-api-access-x", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}],
                    "restartPolicy": "Always", "serviceAccountName": "default", "dnsPolicy": "ClusterFirst"
                }
            },
            "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap()
}

/// The small fixed answer: allowed, with a one-operation patch (what a trivial webhook would send).
fn small_reply() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "response": {"uid": "4b0f8a0e-0000-4000-8000-000000000001", "allowed": true, "patchType": "JSONPatch",
            "patch": "W3sib3AiOiJhZGQiLCJwYXRoIjoiL21ldGFkYXRhL2Fubm90YXRpb25zL3giLCJ2YWx1ZSI6InkifV0="}
    }))
    .unwrap()
}

/// Child mode: the bare axum + rustls endpoint, on the same accept loop as the webhook.
fn run_bare_server(certs: &str, reply_file: &str) {
    use axum::{Router, routing::post};
    use mirrord_operator::{server::shutdown, tls};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let resolver = Arc::new(tls::CertResolver::default());
        let files = tls::files::CertFiles {
            cert: format!("{certs}/tls.crt").into(),
            key: format!("{certs}/tls.key").into(),
        };
        resolver.swap(files.load().unwrap());
        let reply = Bytes::from(std::fs::read(reply_file).unwrap());
        let router = Router::new().route(
            "/mutate",
            post(move |_body: Bytes| {
                let reply = reply.clone();
                async move { ([(http::header::CONTENT_TYPE, "application/json")], reply) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        let (_trigger, shutdown) = shutdown::channel();
        mirrord_operator::server::serve_tls(
            listener,
            tls::server_config(resolver),
            router,
            shutdown,
        )
        .await;
    });
}

struct Server {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Resident and peak memory of the server process, in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// User + system CPU time a process has used so far (`/proc/<pid>/stat`, clock-tick resolution).
fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th overall.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields[11..13]
        .iter()
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(ticks as f64 / per_second)
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn start_webhook(certs: &str) -> Server {
    let (listen, health) = (free_addr(), free_addr());
    let child = Command::new(env!("CARGO_BIN_EXE_mirrord-operator"))
        .args([
            "webhook",
            "--tls-mode",
            "files",
            "--native-sidecar",
            "never",
            "--audit-interval",
            "0s",
        ])
        .args([
            "--listen",
            &listen.to_string(),
            "--health-listen",
            &health.to_string(),
        ])
        .args([
            "--tls-cert-file",
            &format!("{certs}/tls.crt"),
            "--tls-key-file",
            &format!("{certs}/tls.key"),
        ])
        .env("KUBECONFIG", format!("{certs}/no-cluster"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start the webhook");
    Server {
        name: "mirrord-operator webhook",
        child,
        addr: listen,
    }
}

fn start_bare(name: &'static str, certs: &str, reply: &[u8]) -> Server {
    let reply_file = format!("{certs}/{}.json", name.replace(' ', "-"));
    std::fs::write(&reply_file, reply).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([BARE_FLAG, certs, &reply_file])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the bare endpoint");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    Server {
        name,
        child,
        addr: line.trim().parse().expect("bare endpoint address"),
    }
}

#[derive(Clone)]
struct Client {
    connector: TlsConnector,
    body: Bytes,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

impl Client {
    async fn connect(&self, addr: SocketAddr) -> Sender {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = self
            .connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }

    /// The server's answer to the review, once it accepts connections (bounded wait).
    async fn fetch(&self, addr: SocketAddr) -> Bytes {
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut sender = self.connect(addr).await;
        let response = sender.send_request(self.request()).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap().to_bytes()
    }

    fn request(&self) -> Request<Full<Bytes>> {
        Request::post("/mutate")
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(self.body.clone()))
            .unwrap()
    }

    async fn send(&self, sender: &mut Sender) -> bool {
        match sender.send_request(self.request()).await {
            Ok(response) => {
                let ok = response.status() == 200;
                ok & response.into_body().collect().await.is_ok()
            }
            Err(_) => false,
        }
    }
}

struct Run {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    /// Open loop only: how late each request started against its schedule.
    lag: Histogram<u64>,
}

/// Closed loop: `connections` keep-alive connections, each sending back to back for `duration`.
/// With `rate`, open loop instead: each connection sends on a fixed schedule. Latency counts from the
/// moment a request is sent; how late the client started requests against the schedule is recorded
/// separately (`lag`), so a stall cannot hide (coordinated omission) without tokio's 1 ms timer
/// granularity being counted as server latency.
async fn load(
    client: &Client,
    addr: SocketAddr,
    connections: u64,
    duration: Duration,
    rate: Option<u64>,
) -> Run {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = client.connect(addr).await;
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut lag = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let (mut requests, mut errors) = (0u64, 0u64);
            let interval = rate.map(|r| Duration::from_secs_f64(connections as f64 / r as f64));
            let begin = Instant::now();
            let mut next = begin;
            while begin.elapsed() < duration {
                if interval.is_some() {
                    tokio::time::sleep_until(next.into()).await;
                }
                let sent = Instant::now();
                if interval.is_some() {
                    lag.saturating_record(sent.saturating_duration_since(next).as_micros() as u64);
                }
                if !client.send(&mut sender).await {
                    errors += 1;
                    sender = client.connect(addr).await;
                }
                requests += 1;
                latency.saturating_record(sent.elapsed().as_micros() as u64);
                if let Some(interval) = interval {
                    next += interval;
                }
            }
            (requests, errors, latency, lag)
        }));
    }
    let histogram = || Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut run = Run {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: histogram(),
        lag: histogram(),
    };
    for task in tasks {
        let (requests, errors, latency, lag) = task.await.unwrap();
        run.requests += requests;
        run.errors += errors;
        run.latency.add(latency).unwrap();
        run.lag.add(lag).unwrap();
    }
    run.elapsed = started.elapsed();
    run
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == BARE_FLAG) {
        return run_bare_server(&args[i + 1], &args[i + 2]);
    }
    let seconds: u64 = env_or("LOAD_SECONDS", 5);
    let rounds: usize = env_or("LOAD_ROUNDS", 3);
    let connections: u64 = env_or("LOAD_CONNECTIONS", 16);
    let rate: u64 = env_or("LOAD_RATE", 2000);
    let certs = tempfile::tempdir().unwrap();
    let certs_dir = certs.path().to_str().unwrap().to_string();
    let status = Command::new(env!("CARGO_BIN_EXE_mirrord-operator"))
        .args(["certs", "--out-dir", &certs_dir, "--dns-name", "localhost"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(certs.path().join("ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = Client {
        connector: TlsConnector::from(Arc::new(config)),
        body: Bytes::from(review_body()),
    };

    // The client gets one core's worth of threads; both servers are separate processes.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let webhook = start_webhook(&certs_dir);
    let answer = runtime.block_on(client.fetch(webhook.addr));
    assert!(
        answer.windows(8).any(|w| w == b"\"patch\":"),
        "the webhook did not inject: {}",
        String::from_utf8_lossy(&answer)
    );
    let servers = [
        webhook,
        start_bare("bare, same answer", &certs_dir, &answer),
        start_bare("bare, small answer", &certs_dir, &small_reply()),
    ];
    println!(
        "\nanswer sizes: webhook and \"bare, same answer\" {} bytes, \"bare, small answer\" {} bytes",
        answer.len(),
        small_reply().len()
    );
    std::thread::sleep(Duration::from_millis(500));
    let idle: Vec<_> = servers.iter().map(|s| s.memory_kib()).collect();
    for server in &servers {
        // Warm-up: connections, caches, allocator.
        runtime.block_on(load(
            &client,
            server.addr,
            connections,
            Duration::from_secs(1),
            None,
        ));
    }

    // Closed loop, rounds alternating between the servers.
    let mut rps = vec![Vec::new(); servers.len()];
    let mut cpu = vec![(0.0, 0.0); servers.len()];
    let mut latency: Vec<Histogram<u64>> = servers
        .iter()
        .map(|_| Histogram::new_with_bounds(1, 60_000_000, 3).unwrap())
        .collect();
    for _ in 0..rounds {
        for (i, server) in servers.iter().enumerate() {
            let pid = server.child.id().to_string();
            let before = (cpu_time(&pid), cpu_time("self"));
            let run = runtime.block_on(load(
                &client,
                server.addr,
                connections,
                Duration::from_secs(seconds),
                None,
            ));
            assert_eq!(run.errors, 0, "{} failed requests", server.name);
            let per_request = |before: Duration, after: Duration| {
                (after - before).as_secs_f64() * 1e6 / run.requests.max(1) as f64
            };
            cpu[i].0 += per_request(before.0, cpu_time(&pid)) / rounds as f64;
            cpu[i].1 += per_request(before.1, cpu_time("self")) / rounds as f64;
            rps[i].push(run.requests as f64 / run.elapsed.as_secs_f64());
            latency[i].add(&run.latency).unwrap();
        }
    }
    println!(
        "\n| server | closed loop, {connections} conns: req/s per round | p50 ms | p99 ms | max ms |"
    );
    println!("|---|---|---|---|---|");
    for (i, server) in servers.iter().enumerate() {
        let rounds: Vec<String> = rps[i].iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "| {} | {} | {} | {} | {} |",
            server.name,
            rounds.join(" / "),
            ms(latency[i].value_at_quantile(0.5)),
            ms(latency[i].value_at_quantile(0.99)),
            ms(latency[i].max()),
        );
    }
    let ratios = |bare: usize| {
        let mut r: Vec<f64> = rps[0].iter().zip(&rps[bare]).map(|(w, b)| w / b).collect();
        let text: Vec<String> = r.iter().map(|x| format!("{x:.2}")).collect();
        r.sort_by(f64::total_cmp);
        (text.join(" / "), r[r.len() / 2])
    };
    for (bare, what) in [(1, "same answer"), (2, "small answer")] {
        let (each, median) = ratios(bare);
        println!(
            "\nwebhook / bare ({what}) throughput ratio per round: {each} (median {median:.2})"
        );
    }
    // The ratios are bounded by the cores the load generator shares with the servers; this is what
    // each side spends.
    println!("\n| server | server CPU µs/request | load generator CPU µs/request |");
    println!("|---|---|---|");
    for (server, (server_cpu, client_cpu)) in servers.iter().zip(&cpu) {
        println!("| {} | {server_cpu:.1} | {client_cpu:.1} |", server.name);
    }

    // Open loop at a fixed rate: latency where the servers are not saturated.
    println!(
        "\n| server | {rate} req/s: req/s | p50 ms | p99 ms | max ms | errors | schedule lag p99 ms | RSS idle → after (KiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (server, idle) in servers.iter().zip(&idle) {
        let run = runtime.block_on(load(
            &client,
            server.addr,
            connections,
            Duration::from_secs(seconds),
            Some(rate),
        ));
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} | {} → {} |",
            server.name,
            run.requests as f64 / run.elapsed.as_secs_f64(),
            ms(run.latency.value_at_quantile(0.5)),
            ms(run.latency.value_at_quantile(0.99)),
            ms(run.latency.max()),
            run.errors,
            ms(run.lag.value_at_quantile(0.99)),
            idle.0,
            server.memory_kib().0
        );
    }
}
