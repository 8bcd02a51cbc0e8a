//! The registry-mirror operator: `k8s.osp.tech/v1` RegistryMirror, its children and their reconcile.
//!
//! `crd` (the resource), `input` (validation, pure), `render` (children and nginx config, pure),
//! `reconcile` (one pass against the API), `node_agent` (the per-node containerd writer) and the
//! controller loop below.

pub mod crd;
pub mod error;
pub mod input;
pub mod metrics;
pub mod node_agent;
pub mod reconcile;
pub mod render;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::{DaemonSet, StatefulSet},
    core::v1::{Secret, Service},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller,
        controller::Error as ControllerRunError,
        reflector::{ObjectRef, Store},
        watcher,
    },
};

use crate::server::{
    shutdown::{self, Shutdown},
    telemetry::LogFormat,
};

use self::{
    crd::RegistryMirror,
    error::ControllerError,
    metrics::Metrics,
    reconcile::{Context, error_policy, reconcile},
    render::{MIRROR_LABEL, RenderConfig},
};

/// `mirrord-operator registry-mirror`: the controller, or one of its helpers.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RegistryMirrorArgs {
    #[command(subcommand)]
    pub command: Option<RegistryMirrorCommand>,
    #[command(flatten)]
    pub controller: ControllerArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum RegistryMirrorCommand {
    /// Keep this node's containerd hosts.toml for the upstream pointing at the mirror (DaemonSet).
    NodeAgent(node_agent::NodeAgentArgs),
    /// Print the RegistryMirror CustomResourceDefinition (JSON).
    Crd,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// Namespace of every mirror's children (and of the credentials Secrets).
    #[arg(long, env = "NAMESPACE", default_value = "kube-extra")]
    pub namespace: String,
    /// Seconds to wait before re-establishing a watch that failed (e.g. the CRD is not installed yet).
    #[arg(long, env = "SECONDS_BETWEEN_STREAMS", default_value_t = 30)]
    pub seconds_between_streams: u64,
    /// Image of the nginx cache pods.
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_MIRROR_NGINX_IMAGE",
        default_value = "docker.io/library/nginx:1.22"
    )]
    pub nginx_image: String,
    /// Image of the node agents (this operator's image).
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_MIRROR_AGENT_IMAGE",
        default_value = concat!("ghcr.io/mirrord-operator/mirrord-operator:", env!("CARGO_PKG_VERSION"))
    )]
    pub agent_image: String,
    /// containerd's registry config_path on the nodes.
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_MIRROR_HOSTS_DIR",
        default_value = "/etc/containerd/certs.d"
    )]
    pub hosts_dir: String,
    /// Plain-HTTP address of /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_HEALTH_LISTEN",
        default_value = "0.0.0.0:9444"
    )]
    pub health_listen: SocketAddr,
    /// Log format: text or json.
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

impl ControllerArgs {
    pub fn render_config(&self) -> RenderConfig {
        RenderConfig {
            namespace: self.namespace.clone(),
            nginx_image: self.nginx_image.clone(),
            agent_image: self.agent_image.clone(),
            hosts_dir: self.hosts_dir.clone(),
        }
    }
}

/// The watch backoff: always `SECONDS_BETWEEN_STREAMS`, like the original operator.
#[derive(Debug, Clone, Copy)]
pub struct FixedBackoff(pub Duration);

impl Iterator for FixedBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(self.0)
    }
}

impl kube::runtime::utils::Backoff for FixedBackoff {
    fn reset(&mut self) {}
}

/// Maps a child to its mirror through the `mirror` label. (`Controller::owns` cannot be used: it
/// looks the owner up in the child's namespace, and a RegistryMirror has none.)
fn by_label<K: Resource>(child: K) -> Option<ObjectRef<RegistryMirror>> {
    child
        .meta()
        .labels
        .as_ref()?
        .get(MIRROR_LABEL)
        .map(|name| ObjectRef::new(name))
}

/// The mirrors a Secret matters to: those naming it as credentials, and the one whose config it is.
fn secret_mirrors(
    store: &Store<RegistryMirror>,
    secret: &Secret,
) -> Vec<ObjectRef<RegistryMirror>> {
    let name = secret.name_any();
    let mut refs: Vec<_> = store
        .state()
        .iter()
        .filter(|m| m.spec.credentials_secret.as_deref() == Some(name.as_str()))
        .map(|m| ObjectRef::from_obj(m.as_ref()))
        .collect();
    refs.extend(by_label(secret.clone()));
    refs
}

fn health_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(|State(metrics): State<Arc<Metrics>>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
                    .into_response()
            }),
        )
        .with_state(metrics)
}

/// Runs the controller until SIGTERM/SIGINT.
pub async fn run(args: ControllerArgs) -> Result<(), ControllerError> {
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::os_signal().await;
        trigger.trigger();
    });
    let client = Client::try_default()
        .await
        .map_err(ControllerError::NoCluster)?;
    run_until(args, client, shutdown).await
}

/// Runs the controller with `client` until `shutdown`.
pub async fn run_until(
    args: ControllerArgs,
    client: Client,
    shutdown: Shutdown,
) -> Result<(), ControllerError> {
    let metrics = Arc::new(Metrics::default());
    let health = tokio::net::TcpListener::bind(args.health_listen)
        .await
        .map_err(|source| ControllerError::Bind {
            addr: args.health_listen,
            source,
        })?;
    let health_shutdown = shutdown.clone();
    let health_router = health_router(metrics.clone());
    tokio::spawn(async move {
        let served = axum::serve(health, health_router)
            .with_graceful_shutdown(health_shutdown.wait())
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "health server stopped");
        }
    });

    let ns = args.namespace.as_str();
    let children = watcher::Config::default().labels("app.kubernetes.io/name=registry-mirror");
    let backoff = FixedBackoff(Duration::from_secs(args.seconds_between_streams));
    let controller = Controller::new(
        Api::<RegistryMirror>::all(client.clone()),
        watcher::Config::default(),
    )
    .trigger_backoff(backoff);
    let store = controller.store();
    let ctx = Arc::new(Context {
        client: client.clone(),
        render: args.render_config(),
        instance: std::env::var("POD_NAME").unwrap_or_else(|_| "registry-mirror".to_owned()),
        metrics: metrics.clone(),
        clock: time::OffsetDateTime::now_utc,
        issue_tls: reconcile::issue_tls,
    });
    tracing::info!(
        namespace = ns,
        seconds_between_streams = args.seconds_between_streams,
        "registry-mirror controller starting"
    );
    controller
        .watches(
            Api::<StatefulSet>::namespaced(client.clone(), ns),
            children.clone(),
            by_label,
        )
        .watches(
            Api::<DaemonSet>::namespaced(client.clone(), ns),
            children.clone(),
            by_label,
        )
        .watches(
            Api::<Service>::namespaced(client.clone(), ns),
            children,
            by_label,
        )
        .watches(
            Api::<Secret>::namespaced(client.clone(), ns),
            watcher::Config::default(),
            move |secret| secret_mirrors(&store, &secret),
        )
        .graceful_shutdown_on(shutdown.wait())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            match result {
                Ok((mirror, _)) => tracing::debug!(mirror = %mirror.name, "reconciled"),
                Err(ControllerRunError::QueueError(error)) => {
                    metrics.watch_errors.inc();
                    tracing::warn!(
                        %error,
                        retry_in_s = args.seconds_between_streams,
                        "watch failed (is the RegistryMirror CRD installed? may the operator list it?)"
                    );
                }
                // Reconcile errors are logged by error_policy.
                Err(error) => tracing::debug!(%error, "reconcile did not succeed"),
            }
            std::future::ready(())
        })
        .await;
    tracing::info!("registry-mirror controller stopped");
    Ok(())
}

/// Entry point of `mirrord-operator registry-mirror [node-agent|crd]`.
pub fn main(args: RegistryMirrorArgs) -> std::process::ExitCode {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("building the tokio runtime")
    };
    fn report<E: std::fmt::Display>(result: Result<(), E>) -> std::process::ExitCode {
        match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(%error, "exiting");
                eprintln!("error: {error}");
                std::process::ExitCode::FAILURE
            }
        }
    }
    match args.command {
        Some(RegistryMirrorCommand::Crd) => {
            use std::io::Write;
            let crd = serde_json::to_string_pretty(&crd::crd()).expect("the CRD serializes");
            match writeln!(std::io::stdout(), "{crd}") {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(_) => std::process::ExitCode::FAILURE,
            }
        }
        Some(RegistryMirrorCommand::NodeAgent(agent)) => {
            crate::server::telemetry::init(LogFormat::Text, "info");
            report(runtime().block_on(node_agent::run(agent)))
        }
        None => {
            crate::server::telemetry::init(args.controller.log_format, "info");
            report(runtime().block_on(run(args.controller)))
        }
    }
}
