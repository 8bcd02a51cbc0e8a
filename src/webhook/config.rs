//! `mirrord-operator webhook` flags. Every flag also reads a `MIRRORD_OPERATOR_*` variable, which is
//! how the Helm chart configures the Deployment.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use clap::ValueEnum;

use super::patch::{
    AgentDefaults, DefaultsError, EnvMode, FsMode, InjectorConfig, LogLevel, Quantity,
    QuantityError, Redirect,
};
use crate::server::{ServerArgs, args::duration};

/// Namespaces that are never injected, whatever their labels say.
pub const ALWAYS_EXCLUDED_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NativeSidecar {
    /// Native sidecar (an init container with restartPolicy Always) when the API server is >= 1.29.
    Auto,
    Always,
    Never,
}

/// A resource limit flag: a quantity, or empty for no limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit(pub Option<Quantity>);

impl std::str::FromStr for Limit {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            Ok(Limit(None))
        } else {
            s.parse().map(|q| Limit(Some(q)))
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// After SIGTERM, how long to keep serving before closing: the API server routes to a pod
    /// until its endpoint removal reaches it, and a call to a pod that already closed fails (or
    /// times out), which with failurePolicy Fail refuses a pod during a rolling update.
    #[arg(long, env = "MIRRORD_OPERATOR_SHUTDOWN_DRAIN", default_value = "5s", value_parser = duration)]
    pub shutdown_drain: Duration,

    /// The webhook's Service name; the self-managed certificate is valid for <svc>, <svc>.<ns>,
    /// <svc>.<ns>.svc and <svc>.<ns>.svc.cluster.local (--namespace).
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_SERVICE_NAME",
        default_value = "mirrord-operator"
    )]
    pub service_name: String,

    /// Secret that holds the self-managed CA and serving certificate (in --namespace).
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_TLS_SECRET_NAME",
        default_value = "mirrord-operator-tls"
    )]
    pub tls_secret_name: String,

    /// MutatingWebhookConfiguration whose caBundle the self-managed mode keeps equal to its CA.
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_WEBHOOK_CONFIG_NAME",
        default_value = "mirrord-operator"
    )]
    pub webhook_config_name: String,

    /// Image of the injected mirrord-agent container (the per-pod `image` knob overrides it).
    #[arg(long, env = "MIRRORD_OPERATOR_AGENT_IMAGE", default_value = concat!("ghcr.io/mirrord-operator/mirrord-operator:", env!("CARGO_PKG_VERSION")))]
    pub agent_image: String,

    /// Inject the agent as a native sidecar (init container with restartPolicy Always) so Jobs finish.
    #[arg(long, env = "MIRRORD_OPERATOR_NATIVE_SIDECAR", value_enum, default_value_t = NativeSidecar::Auto)]
    pub native_sidecar: NativeSidecar,

    /// Base URL injected agents dial the coordinator at (they append /agents/connect).
    /// Default: wss://<svc>-coordinator.<ns>.svc:443, the chart's coordinator Service.
    #[arg(long, env = "MIRRORD_OPERATOR_COORDINATOR_URL")]
    pub coordinator_url: Option<String>,

    /// PEM bundle agents trust for the coordinator. When unset: the CA bundle of
    /// --coordinator-tls-secret-name, else (self-managed mode) the webhook's own CA.
    #[arg(long, env = "MIRRORD_OPERATOR_COORDINATOR_CA_FILE")]
    pub coordinator_ca_file: Option<PathBuf>,

    /// The coordinator's self-managed TLS Secret (in --namespace): agents trust the CAs it holds,
    /// re-read every --cert-check-interval.
    #[arg(long, env = "MIRRORD_OPERATOR_COORDINATOR_TLS_SECRET_NAME")]
    pub coordinator_tls_secret_name: Option<String>,

    /// Dedicated group id of the agent; its redirect rules exempt traffic of this group.
    #[arg(long, env = "MIRRORD_OPERATOR_AGENT_GROUP_ID", default_value_t = i64::from(crate::injection::DEFAULT_AGENT_GROUP_ID))]
    pub agent_group_id: i64,

    /// Default CPU request of the agent (knob `cpu-request`).
    #[arg(long, env = "MIRRORD_OPERATOR_AGENT_CPU_REQUEST", default_value = "5m")]
    pub agent_cpu_request: Quantity,

    /// Default CPU limit of the agent (knob `cpu-limit`); empty for none.
    #[arg(long, env = "MIRRORD_OPERATOR_AGENT_CPU_LIMIT", default_value = "")]
    pub agent_cpu_limit: Limit,

    /// Default memory request of the agent (knob `memory-request`).
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_AGENT_MEMORY_REQUEST",
        default_value = "16Mi"
    )]
    pub agent_memory_request: Quantity,

    /// Default memory limit of the agent (knob `memory-limit`); empty for none.
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_AGENT_MEMORY_LIMIT",
        default_value = "64Mi"
    )]
    pub agent_memory_limit: Limit,

    /// Default log level of the agent (knob `log-level`): trace, debug, info, warn or error.
    #[arg(long, env = "MIRRORD_OPERATOR_AGENT_LOG_LEVEL", default_value = "info")]
    pub agent_log_level: LogLevel,

    /// Default traffic redirection of the agent (knob `redirect`): iptables, port-swap or off.
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_AGENT_REDIRECT",
        default_value = "iptables"
    )]
    pub agent_redirect: Redirect,

    /// Default source of the target's environment (knob `env`): spec, proc or off.
    #[arg(long, env = "MIRRORD_OPERATOR_AGENT_ENV", default_value = "spec")]
    pub agent_env: EnvMode,

    /// Default source of the target's files (knob `fs`): volumes, proc or off.
    #[arg(long, env = "MIRRORD_OPERATOR_AGENT_FS", default_value = "volumes")]
    pub agent_fs: FsMode,

    /// More namespaces never to inject, besides kube-system, kube-public, kube-node-lease and
    /// --namespace. Comma-separated in the environment variable.
    #[arg(
        long = "exclude-namespace",
        env = "MIRRORD_OPERATOR_EXCLUDE_NAMESPACES",
        value_delimiter = ','
    )]
    pub exclude_namespaces: Vec<String>,

    /// How often pods in injection-enabled namespaces are checked for a missing sidecar (admitted while
    /// the webhook was down); 0s disables the audit.
    #[arg(long, env = "MIRRORD_OPERATOR_AUDIT_INTERVAL", default_value = "5m", value_parser = duration)]
    pub audit_interval: Duration,
}

impl WebhookArgs {
    pub fn excluded_namespaces(&self) -> BTreeSet<String> {
        ALWAYS_EXCLUDED_NAMESPACES
            .iter()
            .map(|ns| ns.to_string())
            .chain(std::iter::once(self.server.namespace.clone()))
            .chain(
                self.exclude_namespaces
                    .iter()
                    .filter(|ns| !ns.is_empty())
                    .cloned(),
            )
            .collect()
    }

    pub fn coordinator_url(&self) -> String {
        self.coordinator_url.clone().unwrap_or_else(|| {
            format!(
                "wss://{}-coordinator.{}.svc:443",
                self.service_name, self.server.namespace
            )
        })
    }

    /// The operator-wide knob defaults; refused at start when every injected pod would be invalid.
    pub fn agent_defaults(&self) -> Result<AgentDefaults, DefaultsError> {
        let defaults = AgentDefaults {
            cpu_request: self.agent_cpu_request.clone(),
            cpu_limit: self.agent_cpu_limit.0.clone(),
            memory_request: self.agent_memory_request.clone(),
            memory_limit: self.agent_memory_limit.0.clone(),
            log_level: self.agent_log_level,
            redirect: self.agent_redirect,
            env: self.agent_env,
            fs: self.agent_fs,
        };
        defaults.validate().map(|()| defaults)
    }

    /// The injector configuration, once the native-sidecar decision and the coordinator CA are known.
    pub fn injector_config(
        &self,
        defaults: AgentDefaults,
        native_sidecar: bool,
        coordinator_ca_bundle: Option<String>,
    ) -> InjectorConfig {
        InjectorConfig {
            agent_image: self.agent_image.clone(),
            native_sidecar,
            defaults,
            coordinator_url: self.coordinator_url(),
            coordinator_ca_bundle,
            agent_group_id: self.agent_group_id,
            excluded_namespaces: self.excluded_namespaces(),
            operator_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}
