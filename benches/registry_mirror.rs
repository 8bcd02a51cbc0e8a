//! The registry mirror's two numbers, printed as Markdown for `docs/benchmarks.md`:
//!
//! 1. **A cached blob through the mirror vs straight from the upstream**, same run, loopback only:
//!    Debian's docker-registry (htpasswd auth, plain HTTP) holds one image; nginx runs the controller's
//!    rendered config (TLS, as the cache pods serve it) in front of it. After one warming pull (a cache
//!    MISS) every mirror pull must be a HIT; rounds alternate direct/mirror so machine noise hits both.
//!    curl downloads to /dev/null, the same client both ways. Needs the Debian packages
//!    `docker-registry`, `nginx-light` and `apache2-utils`, and root (nginx drops to uid 65532).
//! 2. **Reconcile of 100 mirrors** against an in-process mock API server (tower-test; JSON both ways,
//!    no network): the first pass (everything created, a CA + serving certificate issued per mirror
//!    with rcgen) and the steady-state pass (nothing changed: no write at all), with the process's
//!    resident memory after each.
//!
//! Knobs: `REGISTRY_MIRROR_BENCH_MIB` (blob size, 64), `REGISTRY_MIRROR_BENCH_ROUNDS` (7),
//! `REGISTRY_MIRROR_BENCH_MIRRORS` (100).

#[path = "../tests/registry_mirror_support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{Request, Response, StatusCode};
use kube::{Client, client::Body};
use mirrord_operator::registry_mirror::{
    crd::RegistryMirror,
    input::Credentials,
    metrics::Metrics,
    reconcile::{Context, issue_tls, reconcile},
    render::RenderConfig,
};
use serde_json::{Value, json};
use support::{Mirror, PASSWORD, Registry, USER, header};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One download with curl to /dev/null: (seconds, bytes, HTTP status).
fn download(args: &[&str]) -> (f64, u64, u16) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "300", "-o", "/dev/null", "-w"])
        .arg("%{time_total} %{size_download} %{http_code}")
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut fields = text.split_whitespace();
    let mut next = || fields.next().unwrap_or("0").to_owned();
    (
        next().parse().unwrap_or(0.0),
        next().parse().unwrap_or(0),
        next().parse().unwrap_or(0),
    )
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn throughput() {
    let mib = env_or("REGISTRY_MIRROR_BENCH_MIB", 64);
    let rounds = env_or("REGISTRY_MIRROR_BENCH_ROUNDS", 7).max(1);
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(dir.path());
    // Not compressible in any useful way, like a real layer.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let layer: Vec<u8> = (0..mib << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let (_, _, digest) = registry.push_image("bench/app", "v1", &layer);
    let credentials = Credentials {
        username: USER.to_owned(),
        password: PASSWORD.to_owned(),
    };
    let mirror = Mirror::start(dir.path(), &registry.url(), Some(&credentials));
    let path = format!("/v2/bench/app/blobs/{digest}");

    // Warm the cache: a MISS, then the next one must be a HIT (or the numbers would be meaningless).
    let (_, headers, _) = mirror.fetch(&path, &["-I"]);
    assert!(headers.contains(" 200"), "mirror answered: {headers}");
    let (_, _, body) = mirror.fetch(&path, &[]);
    assert_eq!(body.len(), layer.len(), "warming pull");
    let (_, headers, _) = mirror.fetch(&path, &["-I"]);
    assert_eq!(
        header(&headers, "x-cache-status"),
        Some("HIT"),
        "not cached after the warming pull: {headers}"
    );
    let served_before = registry.served(&format!("/blobs/{digest}"));

    // A real upstream speaks TLS too: the same registry storage served over TLS is the fair "direct".
    let (tls_registry, tls_ca) = registry.tls_twin(dir.path());
    let auth = format!("{USER}:{PASSWORD}");
    let (plain_url, tls_url) = (
        format!("{}{path}", registry.url()),
        format!("{}{path}", tls_registry.url()),
    );
    let mirror_url = mirror.url(&path);
    let (ca, tls_ca) = (
        mirror.ca.to_str().unwrap().to_owned(),
        tls_ca.to_str().unwrap().to_owned(),
    );
    let mib_per_s = |args: &[&str], what: &str| {
        let (secs, bytes, status) = download(args);
        assert_eq!((status, bytes), (200, layer.len() as u64), "{what}");
        bytes as f64 / secs / (1 << 20) as f64
    };
    let (mut plain, mut tls, mut cached) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        plain.push(mib_per_s(&["-u", &auth, &plain_url], "direct HTTP pull"));
        tls.push(mib_per_s(
            &["--cacert", &tls_ca, "-u", &auth, &tls_url],
            "direct TLS pull",
        ));
        cached.push(mib_per_s(&["--cacert", &ca, &mirror_url], "mirror pull"));
    }
    // Every measured mirror pull came from the cache: the upstream saw only the direct HTTP ones.
    let served = registry.served(&format!("/blobs/{digest}")) - served_before;
    assert_eq!(served, rounds, "the upstream served mirror pulls too");
    let (p, t, c) = (median(&mut plain), median(&mut tls), median(&mut cached));
    println!("### Cached blob through the mirror vs direct ({mib} MiB, {rounds} rounds, median)\n");
    println!("| Path | MiB/s | Mirror / this |");
    println!("|---|---|---|");
    println!(
        "| direct from docker-registry over TLS (basic auth) | {t:.0} | **{:.2}×** |",
        c / t
    );
    println!(
        "| direct from docker-registry over plain HTTP (basic auth) | {p:.0} | {:.2}× |",
        c / p
    );
    println!("| through the mirror, cache HIT (nginx, TLS) | {c:.0} | 1.00× |\n");
}

/// The mock API server's state for many mirrors: mirrors by name, applied objects, Secrets.
#[derive(Default)]
struct ApiState {
    mirrors: BTreeMap<String, Value>,
    objects: BTreeMap<String, Value>,
    /// Server-side applies of children / patches of mirrors (labels, status).
    applies: usize,
    mirror_writes: usize,
}

const NS: &str = "kube-extra";
const MIRRORS: &str = "/apis/k8s.osp.tech/v1/registrymirrors/";

impl ApiState {
    fn answer(&mut self, method: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        if let Some(rest) = path.strip_prefix(MIRRORS) {
            self.mirror_writes += 1;
            let name = rest.trim_end_matches("/status");
            let mirror = self.mirrors.get_mut(name).expect("known mirror");
            json_patch::merge(mirror, body);
            return (StatusCode::OK, mirror.clone());
        }
        match method {
            "GET" => match self.objects.get(path) {
                Some(object) => (StatusCode::OK, object.clone()),
                None => (
                    StatusCode::NOT_FOUND,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
                ),
            },
            "PATCH" => {
                self.applies += 1;
                let mut object = body.clone();
                if path.contains("/services/") && object["spec"]["clusterIP"].is_null() {
                    object["spec"]["clusterIP"] = json!("10.96.0.42");
                }
                self.objects.insert(path.to_owned(), object.clone());
                (StatusCode::OK, object)
            }
            _ => (StatusCode::CREATED, body.clone()),
        }
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn reconcile_many() {
    let count = env_or("REGISTRY_MIRROR_BENCH_MIRRORS", 100);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let state = Arc::new(Mutex::new(ApiState::default()));
    for i in 0..count {
        let name = format!("m{i}");
        state.lock().unwrap().mirrors.insert(
            name.clone(),
            json!({"apiVersion": "k8s.osp.tech/v1", "kind": "RegistryMirror",
                   "metadata": {"name": name, "uid": format!("uid-{i}"), "generation": 1},
                   "spec": {"upstreamUrl": format!("registry-{i}.example.com")}}),
        );
    }
    let rss_start = rss_kib();
    let ctx = rt.block_on(async {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = state.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let method = request.method().to_string();
                let path = request.uri().path().to_owned();
                let bytes = request.into_body().collect_bytes().await.unwrap();
                let body = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                };
                let (status, answer) = server.lock().unwrap().answer(&method, &path, &body);
                send.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
        });
        Arc::new(Context {
            client: Client::new(service, "default"),
            render: RenderConfig {
                namespace: NS.to_owned(),
                nginx_image: "nginx:bench".to_owned(),
                agent_image: "operator:bench".to_owned(),
                hosts_dir: "/etc/containerd/certs.d".to_owned(),
            },
            instance: "bench".to_owned(),
            metrics: Arc::new(Metrics::default()),
            clock: time::OffsetDateTime::now_utc,
            issue_tls,
        })
    });
    let pass = |label: &str| -> (Duration, usize, usize) {
        let before = {
            let s = state.lock().unwrap();
            (s.applies, s.mirror_writes)
        };
        let mirrors: Vec<RegistryMirror> = state
            .lock()
            .unwrap()
            .mirrors
            .values()
            .map(|m| serde_json::from_value(m.clone()).unwrap())
            .collect();
        let started = Instant::now();
        rt.block_on(async {
            for mirror in mirrors {
                reconcile(Arc::new(mirror), ctx.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{label}: {e}"));
            }
        });
        let elapsed = started.elapsed();
        let s = state.lock().unwrap();
        (elapsed, s.applies - before.0, s.mirror_writes - before.1)
    };
    let (first, first_applies, first_writes) = pass("first pass");
    let rss_first = rss_kib();
    let (steady, steady_applies, steady_writes) = pass("steady pass");
    let rss_steady = rss_kib();
    assert_eq!(
        steady_writes, 0,
        "a pass over unchanged mirrors wrote their status"
    );
    println!("### Reconcile of {count} mirrors (mock API server in process, one thread)\n");
    println!("| Pass | Total | Per mirror | Applies | Mirror patches | RSS after |");
    println!("|---|---|---|---|---|---|");
    let row = |what: &str, d: Duration, applies: usize, writes: usize, rss: u64| {
        println!(
            "| {what} | {:.1} ms | {:.2} ms | {applies} | {writes} | {:.1} MiB (+{:.1}) |",
            d.as_secs_f64() * 1e3,
            d.as_secs_f64() * 1e3 / count as f64,
            rss as f64 / 1024.0,
            rss.saturating_sub(rss_start) as f64 / 1024.0
        )
    };
    row(
        "first (create all, issue certificates)",
        first,
        first_applies,
        first_writes,
        rss_first,
    );
    row(
        "steady (nothing changed)",
        steady,
        steady_applies,
        steady_writes,
        rss_steady,
    );
    println!();
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    reconcile_many();
    throughput();
}
