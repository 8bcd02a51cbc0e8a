//! Agent configuration: every flag also reads its `MIRRORD_AGENT_*` variable, because the webhook
//! configures the injected container through env only (`args: ["agent"]`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Args;

use super::error::AgentError;
use crate::injection::{self, EnvMode, FsMode, Redirect, TargetMatch, env};

/// `mirrord-operator agent`: the sidecar injected into target pods.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Name of the pod the agent runs in (downward API).
    #[arg(long, env = env::POD_NAME, default_value = "")]
    pub pod_name: String,
    /// Namespace of the pod (downward API).
    #[arg(long, env = env::POD_NAMESPACE, default_value = "")]
    pub pod_namespace: String,
    /// UID of the pod (downward API).
    #[arg(long, env = env::POD_UID, default_value = "")]
    pub pod_uid: String,
    /// Primary IP of the pod (downward API).
    #[arg(long, env = env::POD_IP)]
    pub pod_ip: Option<IpAddr>,
    /// All IPs of the pod, comma-separated (downward API `status.podIPs`).
    #[arg(long, env = env::POD_IPS, value_delimiter = ',')]
    pub pod_ips: Vec<IpAddr>,
    /// Node the pod runs on (downward API).
    #[arg(long, env = env::NODE_NAME, default_value = "")]
    pub node_name: String,
    /// Coordinator WebSocket base URL (`wss://host:port`); the agent dials `<url>/agents/connect`.
    #[arg(long, env = env::COORDINATOR_URL)]
    pub coordinator_url: Option<String>,
    /// PEM bundle the coordinator's certificate must chain to (the PEM text itself).
    #[arg(long, env = env::COORDINATOR_CA)]
    pub coordinator_ca: Option<String>,
    /// Projected ServiceAccount token, re-read on every dial.
    #[arg(
        long,
        env = env::TOKEN_FILE,
        default_value = injection::TOKEN_PATH
    )]
    pub token_file: PathBuf,
    /// tracing filter directive (e.g. `info`, `mirrord_operator::agent=debug`).
    #[arg(long, env = env::LOG_LEVEL, default_value = "info")]
    pub log_level: String,
    /// How incoming traffic is redirected to the agent.
    #[arg(
        long,
        env = env::REDIRECT,
        default_value = "iptables"
    )]
    pub redirect: Redirect,
    /// Where GetEnvVars takes the target's environment from.
    #[arg(
        long,
        env = env::ENV_MODE,
        default_value = "spec"
    )]
    pub env_mode: EnvMode,
    /// Where file requests are served from.
    #[arg(
        long,
        env = env::FS_MODE,
        default_value = "volumes"
    )]
    pub fs_mode: FsMode,
    /// Name of the target container (informational; reported to the coordinator).
    #[arg(long, env = env::TARGET_CONTAINER, default_value = "")]
    pub target_container: String,
    /// Root under which the target's volumes are mounted at their original paths (fs=volumes).
    #[arg(
        long,
        env = env::TARGET_ROOT,
        default_value = injection::TARGET_ROOT
    )]
    pub target_root: PathBuf,
    /// The target container's declared ports, comma-separated (reported to the coordinator);
    /// empty for a container that declares none, as the webhook renders it.
    #[arg(long, env = env::TARGET_PORTS, default_value = "", value_parser = port_list)]
    pub target_ports: PortList,
    /// PID of the target's main process, for env=proc and fs=proc; without it the agent finds
    /// the process itself (shared process namespace).
    #[arg(long, env = "MIRRORD_AGENT_TARGET_PID")]
    pub target_pid: Option<u32>,
    /// What the target's main process and those of the pod's other containers look like, to
    /// find the target when `--target-pid` is not set: JSON `{"target": F, "others": [F, ..]}`
    /// with `F = {"command": [..], "args": [..], "envNames": [..]}` (the webhook sets it from
    /// the pod spec).
    #[arg(long, env = env::TARGET_MATCH, value_parser = injection::parse_match)]
    pub target_match: Option<TargetMatch>,
    /// Group id the agent runs as; its traffic is exempted from the redirect rules.
    #[arg(long, env = env::GROUP_ID, default_value_t = injection::DEFAULT_AGENT_GROUP_ID)]
    pub agent_group_id: u32,
    /// Development mode: accept protocol connections directly on ADDR (one TCP connection is one
    /// session). Loopback only unless `--insecure-listen`.
    #[arg(long, env = "MIRRORD_AGENT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Allow `--listen` on a non-loopback address (no authentication!).
    #[arg(long, env = "MIRRORD_AGENT_INSECURE_LISTEN")]
    pub insecure_listen: bool,
    /// Serve `/healthz` and `/metrics` (Prometheus) over plain HTTP on ADDR.
    #[arg(long, env = "MIRRORD_AGENT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Prefix of the iptables chain names; defaults to one derived from the pod name, so a
    /// restarted agent finds the chains its killed predecessor left.
    #[arg(long, env = "MIRRORD_AGENT_CHAIN_PREFIX")]
    pub chain_prefix: Option<String>,
    /// Where passed-through traffic goes; default: each connection's original destination.
    #[arg(long, env = "MIRRORD_AGENT_APP_HOST")]
    pub app_host: Option<IpAddr>,
}

impl AgentArgs {
    /// Checks combinations clap cannot express; a bad combination is a clear start-up error.
    pub fn validate(&self) -> Result<(), AgentError> {
        if let Some(addr) = self.listen
            && !addr.ip().is_loopback()
            && !self.insecure_listen
        {
            return Err(AgentError::Config(format!(
                "--listen {addr} is not a loopback address; add --insecure-listen to accept \
                 unauthenticated sessions on it"
            )));
        }
        if self.listen.is_none() && self.coordinator_url.is_none() {
            return Err(AgentError::Config(
                "neither --listen nor --coordinator-url (MIRRORD_AGENT_COORDINATOR_URL) is set: \
                 the agent would serve nobody"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Chain name prefix: the flag (validated by the redirector at start), else `MRD` plus a
    /// hash of the pod name — stable across restarts of one pod's agent, so a restart finds the
    /// chains a killed predecessor left.
    pub fn chain_prefix(&self) -> String {
        if let Some(prefix) = &self.chain_prefix {
            return prefix.clone();
        }
        // FNV-1a: stable across builds, unlike `DefaultHasher`.
        let hash = self
            .pod_name
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        format!("MRD{:08X}", hash as u32)
    }
}

/// `--target-ports`: comma-separated ports, possibly none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

fn port_list(text: &str) -> Result<PortList, String> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().map_err(|e| format!("port {p:?}: {e}")))
        .collect::<Result<_, _>>()
        .map(PortList)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: AgentArgs,
    }

    fn parse(args: &[&str]) -> AgentArgs {
        Wrap::try_parse_from(std::iter::once("agent").chain(args.iter().copied()))
            .expect("parse")
            .args
    }

    #[test]
    fn listen_must_be_loopback_without_insecure_flag() {
        let args = parse(&["--listen", "10.0.0.1:7000"]);
        assert!(matches!(args.validate(), Err(AgentError::Config(_))));
        let args = parse(&["--listen", "10.0.0.1:7000", "--insecure-listen"]);
        args.validate().expect("insecure listen accepted");
        let args = parse(&["--listen", "127.0.0.1:7000"]);
        args.validate().expect("loopback accepted");
    }

    #[test]
    fn target_ports_may_be_empty() {
        assert_eq!(parse(&[]).target_ports, PortList(vec![]));
        assert_eq!(
            parse(&["--target-ports", ""]).target_ports,
            PortList(vec![])
        );
        assert_eq!(
            parse(&["--target-ports", "8080,9090"]).target_ports,
            PortList(vec![8080, 9090])
        );
        assert!(Wrap::try_parse_from(["agent", "--target-ports", "80,x"]).is_err());
        assert!(Wrap::try_parse_from(["agent", "--target-ports", "70000"]).is_err());
    }

    #[test]
    fn needs_a_way_to_receive_sessions() {
        let args = parse(&[]);
        assert!(matches!(args.validate(), Err(AgentError::Config(_))));
    }

    #[test]
    fn proc_modes_take_a_pid_or_a_match() {
        let args = parse(&["--listen", "127.0.0.1:1", "--env-mode", "proc"]);
        args.validate().expect("the target is found at run time");
        assert_eq!(args.target_match, None);
        let args = parse(&[
            "--listen",
            "127.0.0.1:1",
            "--fs-mode",
            "proc",
            "--target-pid",
            "42",
            "--target-match",
            r#"{"target":{"envNames":["PORT"]}}"#,
        ]);
        args.validate().expect("valid");
        assert_eq!(args.target_pid, Some(42));
        assert_eq!(args.target_match.unwrap().target.env_names.len(), 1);
        let bad = Wrap::try_parse_from(["agent", "--target-match", "PORT"]);
        assert!(bad.is_err(), "not JSON");
    }

    #[test]
    fn chain_prefix_defaults_to_the_pod_name() {
        let a = parse(&["--pod-name", "api-7d9f"]);
        assert_eq!(
            a.chain_prefix(),
            parse(&["--pod-name", "api-7d9f"]).chain_prefix()
        );
        assert_ne!(
            a.chain_prefix(),
            parse(&["--pod-name", "web-1"]).chain_prefix()
        );
        let set = parse(&["--chain-prefix", "T1"]);
        assert_eq!(set.chain_prefix(), "T1");
    }

    #[test]
    fn pod_ips_split_on_commas() {
        let args = parse(&["--pod-ips", "10.0.0.1,fd00::1"]);
        assert_eq!(args.pod_ips.len(), 2);
    }
}
