//! The injected sidecar (issue 4): `mirrord-operator agent`.
//!
//! One process per pod, serving many mirrord-protocol sessions at once: env, files, DNS and
//! outgoing traffic per session here; incoming mirror/steal in `incoming`. It never exits when
//! idle; SIGTERM removes what it installed and exits 0.

pub mod config;
pub mod dns;
pub mod env;
pub mod error;
pub mod files;
pub mod incoming;
pub mod link;
pub mod listen;
pub mod metrics;
pub mod outgoing;
pub mod session;
pub mod target;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

pub use config::AgentArgs;
pub use error::AgentError;

use self::env::EnvSource;
use self::files::FsRoot;
use self::incoming::{Incoming, IncomingConfig};
use self::metrics::Metrics;
use self::session::AgentState;
use self::target::Target;
use crate::injection::FsMode;

/// Worker threads: the agent is a small sidecar; two keep one slow session from stalling others.
const WORKER_THREADS: usize = 2;

/// The agent-only executable, installed next to `mirrord-operator` (same crate, same version).
/// It links none of the webhook's code (kube, k8s-openapi, rcgen, axum's TLS server), so the
/// sidecar in every target pod maps ~2 MiB less (docs/agent.md, "Two executables, one command").
pub const AGENT_EXECUTABLE: &str = "mirrord-agent";

/// `mirrord-operator agent …`: replaces this process with [`AGENT_EXECUTABLE`] from the same
/// directory, same arguments and environment; without it (only `mirrord-operator` was copied)
/// the agent runs in this process.
pub fn exec_or_run(args: AgentArgs) -> ExitCode {
    use std::os::unix::process::CommandExt as _;

    if let Some(path) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(AGENT_EXECUTABLE)))
        .filter(|path| path.is_file())
    {
        // The subcommand is argv[1] (no option can precede it), so argv[2..] are the agent's.
        let error = std::process::Command::new(&path)
            .arg0(AGENT_EXECUTABLE)
            .args(std::env::args_os().skip(2))
            .exec();
        eprintln!(
            "warning: cannot run {}: {error}; running the agent inside mirrord-operator",
            path.display()
        );
    }
    run(args)
}

pub fn run(args: AgentArgs) -> ExitCode {
    init_tracing(&args.log_level);
    if let Err(e) = args.validate() {
        error!(error = %e, "agent cannot start");
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // What the pod gave the agent (downward API), so a person debugging sees it resolved.
    info!(
        pod = %args.pod_name,
        namespace = %args.pod_namespace,
        uid = %args.pod_uid,
        ip = ?args.pod_ip,
        node = %args.node_name,
        target = %args.target_container,
        redirect = ?args.redirect,
        "agent starting"
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "agent failed");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The agent's logging (also installed by the load bench, so spans cost what they cost here).
pub fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // stdout carries the "agent ready" line the mirrord CLI waits for; logs go to stderr.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn serve(args: AgentArgs) -> Result<(), AgentError> {
    // Installed first: from here on a SIGTERM always takes the cleanup path.
    let signals = Signals {
        term: signal(SignalKind::terminate())?,
        int: signal(SignalKind::interrupt())?,
    };
    let metrics = Arc::new(Metrics::new());
    let mut incoming_cfg =
        IncomingConfig::new(args.redirect, args.chain_prefix(), args.agent_group_id);
    incoming_cfg.app_host = args.app_host;
    // Starting removes stale chains of this prefix left by a killed predecessor.
    let incoming = Incoming::start(incoming_cfg)
        .await
        .map_err(|e| AgentError::Incoming(e.to_string()))?;
    let result = serve_sessions(&args, incoming.clone(), metrics, signals).await;
    // Every exit path (signal or fatal error) removes what the agent installed.
    incoming.shutdown().await;
    result
}

async fn serve_sessions(
    args: &AgentArgs,
    incoming: Arc<Incoming>,
    metrics: Arc<Metrics>,
    mut signals: Signals,
) -> Result<(), AgentError> {
    // Shared by env=proc and fs=proc, so both follow the same process.
    let target = Arc::new(Target::new(
        args.target_pid,
        args.target_match.clone().unwrap_or_default(),
        "/proc".into(),
    ));
    let fs_root = match args.fs_mode {
        FsMode::Volumes => FsRoot::Dir(args.target_root.clone()),
        FsMode::Proc => FsRoot::Process(target.clone()),
        FsMode::Off => FsRoot::Off,
    };
    let state = Arc::new(AgentState::new(
        EnvSource::new(args.env_mode, &target),
        fs_root,
        Some(incoming),
        metrics.clone(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = args.listen {
        let listener = listen::bind(addr).await?;
        info!(addr = %listener.local_addr()?, "accepting sessions directly (--listen)");
        tasks.spawn(listen::serve(listener, state.clone()));
    }
    if let Some(url) = &args.coordinator_url {
        let cfg = link::LinkConfig::new(
            url,
            args.coordinator_ca.as_deref(),
            args.token_file.clone(),
            link::registration(args),
        )?;
        tasks.spawn(link::run(cfg, state.clone()));
    }
    if let Some(addr) = args.metrics_listen {
        let listener = listen::bind(addr).await?;
        tasks.spawn(serve_metrics(listener, metrics));
    }
    // The mirrord CLI waits for this exact line (spec §5.12).
    // A closed stdout must not kill the agent, hence no println!.
    let _ = writeln!(
        std::io::stdout(),
        "agent ready - version {}",
        env!("CARGO_PKG_VERSION")
    );
    tokio::select! {
        _ = signals.term.recv() => info!("SIGTERM: shutting down"),
        _ = signals.int.recv() => info!("SIGINT: shutting down"),
        Some(done) = tasks.join_next() => {
            // A server task only returns on a fatal error.
            return match done {
                Ok(result) => result,
                Err(join) => Err(AgentError::Config(format!("server task failed: {join}"))),
            };
        }
    }
    tasks.abort_all();
    Ok(())
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> Result<(), AgentError> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.encode() }
            }),
        );
    axum::serve(listener, app).await?;
    Ok(())
}
