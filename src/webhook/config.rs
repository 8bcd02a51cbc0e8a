//! `mirrord-operator webhook` flags. Every flag also reads a `MIRRORD_OPERATOR_*` variable, which is
//! how the Helm chart configures the Deployment.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

use clap::ValueEnum;

use super::patch::{
    AgentDefaults, DefaultsError, EnvMode, FsMode, InjectorConfig, LogLevel, Quantity,
    QuantityError, Redirect,
};
use crate::{certs::San, telemetry::LogFormat};

/// Namespaces that are never injected, whatever their labels say.
pub const ALWAYS_EXCLUDED_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsMode {
    /// Certificate and key files (`--tls-cert-file`, `--tls-key-file`), reloaded when they change.
    Files,
    /// A CA and serving certificate generated and rotated by the webhook, kept in a Secret shared by
    /// all replicas; the MutatingWebhookConfiguration's caBundle is kept equal to the CA.
    SelfManaged,
    /// Files from a cert-manager Certificate's Secret; cainjector fills the caBundle.
    CertManager,
}

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

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[derive(Debug, Clone, clap::Args)]
pub struct WebhookArgs {
    /// Address of the HTTPS admission endpoint (POST /mutate).
    #[arg(long, env = "MIRRORD_OPERATOR_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Address of the plain-HTTP health and metrics endpoint (/healthz, /readyz, /metrics).
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_HEALTH_LISTEN",
        default_value = "0.0.0.0:9443"
    )]
    pub health_listen: SocketAddr,

    /// Where the serving certificate comes from.
    #[arg(long, env = "MIRRORD_OPERATOR_TLS_MODE", value_enum, default_value_t = TlsMode::Files)]
    pub tls_mode: TlsMode,

    /// PEM certificate chain (files and cert-manager modes); reloaded when it changes.
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_TLS_CERT_FILE",
        default_value = "/etc/mirrord-operator/tls/tls.crt"
    )]
    pub tls_cert_file: PathBuf,

    /// PEM private key (files and cert-manager modes); reloaded when it changes.
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_TLS_KEY_FILE",
        default_value = "/etc/mirrord-operator/tls/tls.key"
    )]
    pub tls_key_file: PathBuf,

    /// The operator's own namespace: never injected; holds the self-managed TLS Secret.
    #[arg(long, env = "MIRRORD_OPERATOR_NAMESPACE", default_value = "mirrord")]
    pub namespace: String,

    /// The webhook's Service name; the self-managed certificate is valid for <svc>, <svc>.<ns>,
    /// <svc>.<ns>.svc and <svc>.<ns>.svc.cluster.local.
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_SERVICE_NAME",
        default_value = "mirrord-operator"
    )]
    pub service_name: String,

    /// Extra DNS names or IPs for the self-managed certificate (e.g. 127.0.0.1 when the API server
    /// calls the webhook by URL). Comma-separated in the environment variable.
    #[arg(
        long = "tls-extra-san",
        env = "MIRRORD_OPERATOR_TLS_EXTRA_SANS",
        value_delimiter = ','
    )]
    pub tls_extra_sans: Vec<San>,

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

    /// Lifetime of a self-managed serving certificate; it is replaced after two thirds of it. The CA
    /// lives ten times as long and is rotated in stages: the next CA is published in caBundle from
    /// half of the CA's life and signs from two thirds.
    #[arg(long, env = "MIRRORD_OPERATOR_CERT_VALIDITY", default_value = "8760h", value_parser = duration)]
    pub cert_validity: Duration,

    /// How often certificate files are re-read and the self-managed certificate and caBundle checked.
    #[arg(long, env = "MIRRORD_OPERATOR_CERT_CHECK_INTERVAL", default_value = "60s", value_parser = duration)]
    pub cert_check_interval: Duration,

    /// Image of the injected mirrord-agent container (the per-pod `image` knob overrides it).
    #[arg(long, env = "MIRRORD_OPERATOR_AGENT_IMAGE", default_value = concat!("ghcr.io/mirrord-operator/mirrord-operator:", env!("CARGO_PKG_VERSION")))]
    pub agent_image: String,

    /// Inject the agent as a native sidecar (init container with restartPolicy Always) so Jobs finish.
    #[arg(long, env = "MIRRORD_OPERATOR_NATIVE_SIDECAR", value_enum, default_value_t = NativeSidecar::Auto)]
    pub native_sidecar: NativeSidecar,

    /// Where injected agents dial the coordinator. Default: wss://<svc>.<ns>.svc:443/agents/connect.
    #[arg(long, env = "MIRRORD_OPERATOR_COORDINATOR_URL")]
    pub coordinator_url: Option<String>,

    /// PEM bundle agents trust for the coordinator (self-managed mode uses its own CA when unset).
    #[arg(long, env = "MIRRORD_OPERATOR_COORDINATOR_CA_FILE")]
    pub coordinator_ca_file: Option<PathBuf>,

    /// Dedicated group id of the agent; its redirect rules exempt traffic of this group.
    #[arg(long, env = "MIRRORD_OPERATOR_AGENT_GROUP_ID", default_value_t = 30777)]
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

    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "MIRRORD_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl WebhookArgs {
    pub fn excluded_namespaces(&self) -> BTreeSet<String> {
        ALWAYS_EXCLUDED_NAMESPACES
            .iter()
            .map(|ns| ns.to_string())
            .chain(std::iter::once(self.namespace.clone()))
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
                "wss://{}.{}.svc:443/agents/connect",
                self.service_name, self.namespace
            )
        })
    }

    /// DNS names and IPs of the self-managed serving certificate.
    pub fn serving_sans(&self) -> Vec<San> {
        let (svc, ns) = (&self.service_name, &self.namespace);
        let mut sans: Vec<San> = [
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ]
        .into_iter()
        .map(San::Dns)
        .collect();
        sans.extend(self.tls_extra_sans.iter().cloned());
        sans.dedup();
        sans
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
