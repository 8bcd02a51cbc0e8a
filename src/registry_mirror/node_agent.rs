//! `mirrord-operator registry-mirror node-agent`: runs in the mirror's DaemonSet and keeps the node's
//! containerd pointed at the mirror for the upstream host, through `<hosts-dir>/<host>/hosts.toml` and
//! the mirror's CA beside it. It rewrites both when they drift and removes them when it stops (the
//! DaemonSet is gone or rolled), so a deleted mirror leaves nothing on the nodes.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use tracing::Instrument;

use crate::server::shutdown::{self, Shutdown};

use super::input::Upstream;

#[derive(Debug, Clone, clap::Args)]
pub struct NodeAgentArgs {
    /// Name of the RegistryMirror (names the CA file and marks the hosts.toml as ours).
    #[arg(long)]
    pub mirror: String,
    /// The upstream registry, as in spec.upstreamUrl.
    #[arg(long)]
    pub upstream: String,
    /// URL containerd pulls through: https://<service cluster IP>:443.
    #[arg(long)]
    pub endpoint: String,
    /// The mirror's CA certificate (PEM).
    #[arg(long)]
    pub ca_file: PathBuf,
    /// containerd's registry config_path on the node.
    #[arg(long, default_value = "/etc/containerd/certs.d")]
    pub hosts_dir: PathBuf,
    /// How often the files are checked and rewritten when they differ.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeAgentError {
    #[error(transparent)]
    Upstream(#[from] super::input::InputError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl NodeAgentError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| NodeAgentError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The first line of every hosts.toml this agent writes; only such files are ever removed.
fn marker(mirror: &str) -> String {
    format!(
        "# Written by mirrord-operator registry-mirror node-agent for RegistryMirror {mirror}; removed when it stops."
    )
}

/// Name of the CA file beside hosts.toml.
pub fn ca_file_name(mirror: &str) -> String {
    format!("registry-mirror-{mirror}-ca.crt")
}

/// containerd's hosts.toml: pull and resolve through the mirror, the upstream itself as fallback.
pub fn hosts_toml(mirror: &str, upstream: &Upstream, endpoint: &str, ca_path: &Path) -> String {
    format!(
        "{marker}\nserver = \"{server}\"\n\n[host.\"{endpoint}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{ca}\"\n",
        marker = marker(mirror),
        server = upstream.url(),
        ca = ca_path.display(),
    )
}

struct Files {
    dir: PathBuf,
    hosts: PathBuf,
    ca: PathBuf,
}

impl Files {
    fn new(args: &NodeAgentArgs, upstream: &Upstream) -> Self {
        let dir = args.hosts_dir.join(&upstream.host);
        Files {
            hosts: dir.join("hosts.toml"),
            ca: dir.join(ca_file_name(&args.mirror)),
            dir,
        }
    }
}

/// Writes `content` to `path` unless it is there already; atomic (rename), so containerd never reads
/// half a file. Returns whether it wrote.
fn write_if_changed(path: &Path, content: &[u8]) -> Result<bool, NodeAgentError> {
    if std::fs::read(path).is_ok_and(|current| current == content) {
        return Ok(false);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).map_err(NodeAgentError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(NodeAgentError::io(path))?;
    Ok(true)
}

/// One pass: makes the node's files match. Public for the tests.
pub fn sync_once(args: &NodeAgentArgs) -> Result<bool, NodeAgentError> {
    let upstream = Upstream::parse(&args.upstream)?;
    let files = Files::new(args, &upstream);
    let ca = std::fs::read(&args.ca_file).map_err(NodeAgentError::io(&args.ca_file))?;
    std::fs::create_dir_all(&files.dir).map_err(NodeAgentError::io(&files.dir))?;
    // The CA first: a hosts.toml naming a CA file that is not there yet fails pulls.
    let ca_written = write_if_changed(&files.ca, &ca)?;
    let toml = hosts_toml(&args.mirror, &upstream, &args.endpoint, &files.ca);
    let hosts_written = write_if_changed(&files.hosts, toml.as_bytes())?;
    Ok(ca_written || hosts_written)
}

/// Removes this mirror's files (hosts.toml only when it is still ours) and the directory if empty.
pub fn remove(args: &NodeAgentArgs) -> Result<(), NodeAgentError> {
    let upstream = Upstream::parse(&args.upstream)?;
    let files = Files::new(args, &upstream);
    let ours = std::fs::read_to_string(&files.hosts)
        .is_ok_and(|text| text.lines().next() == Some(marker(&args.mirror).as_str()));
    if ours {
        std::fs::remove_file(&files.hosts).map_err(NodeAgentError::io(&files.hosts))?;
    }
    match std::fs::remove_file(&files.ca) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(NodeAgentError::io(&files.ca)(e)),
    }
    // Fails harmlessly when something else lives in the directory.
    let _ = std::fs::remove_dir(&files.dir);
    Ok(())
}

/// Keeps the files current until `shutdown`, then removes them.
pub async fn run_until(args: NodeAgentArgs, mut shutdown: Shutdown) -> Result<(), NodeAgentError> {
    Upstream::parse(&args.upstream)?;
    let span = tracing::info_span!("node_agent", mirror = %args.mirror, upstream = %args.upstream);
    async move {
        loop {
            match sync_once(&args) {
                Ok(true) => tracing::info!(
                    endpoint = %args.endpoint,
                    hosts_dir = %args.hosts_dir.display(),
                    "containerd hosts.toml written"
                ),
                Ok(false) => tracing::debug!("containerd hosts.toml current"),
                // A transient failure (e.g. the CA not mounted yet) is retried next interval.
                Err(error) => tracing::warn!(%error, "could not write containerd hosts.toml"),
            }
            if !shutdown.sleep(args.interval).await {
                break;
            }
        }
        remove(&args)?;
        tracing::info!("containerd hosts.toml removed");
        Ok(())
    }
    .instrument(span)
    .await
}

/// Runs until SIGTERM/SIGINT.
pub async fn run(args: NodeAgentArgs) -> Result<(), NodeAgentError> {
    let (trigger, shutdown) = shutdown::channel();
    tokio::spawn(async move {
        shutdown::os_signal().await;
        trigger.trigger();
    });
    run_until(args, shutdown).await
}
