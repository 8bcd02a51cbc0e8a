//! Flags every serving subcommand shares, flattened into its own flags. Every flag also reads a
//! `MIRRORD_OPERATOR_*` variable, which is how the Helm chart configures the Deployments.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::ValueEnum;

use super::telemetry::LogFormat;
use crate::certs::San;
use crate::tls::{
    rotation::IssuePolicy,
    self_managed::{CaBundleTarget, SelfManagedConfig},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TlsMode {
    /// Certificate and key files (`--tls-cert-file`, `--tls-key-file`), reloaded when they change.
    Files,
    /// A CA and serving certificate generated and rotated by the process, kept in a Secret shared by
    /// all replicas; the caBundle of the component's registration (MutatingWebhookConfiguration or
    /// APIService) is kept equal to the trusted CAs.
    SelfManaged,
    /// Files from a cert-manager Certificate's Secret; cainjector fills the caBundle.
    CertManager,
}

pub fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address of the HTTPS endpoint.
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

    /// The operator's own namespace: never injected; holds the self-managed TLS Secrets.
    #[arg(long, env = "MIRRORD_OPERATOR_NAMESPACE", default_value = "mirrord")]
    pub namespace: String,

    /// Extra DNS names or IPs for the self-managed certificate (e.g. 127.0.0.1 when the API server
    /// calls by URL). Comma-separated in the environment variable.
    #[arg(
        long = "tls-extra-san",
        env = "MIRRORD_OPERATOR_TLS_EXTRA_SANS",
        value_delimiter = ','
    )]
    pub tls_extra_sans: Vec<San>,

    /// Lifetime of a self-managed serving certificate; it is replaced after two thirds of it. The CA
    /// lives ten times as long and is rotated in stages: the next CA is published in caBundle from
    /// half of the CA's life and signs from two thirds.
    #[arg(long, env = "MIRRORD_OPERATOR_CERT_VALIDITY", default_value = "8760h", value_parser = duration)]
    pub cert_validity: Duration,

    /// How often certificate files are re-read and the self-managed certificate and caBundle checked.
    #[arg(long, env = "MIRRORD_OPERATOR_CERT_CHECK_INTERVAL", default_value = "60s", value_parser = duration)]
    pub cert_check_interval: Duration,

    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "MIRRORD_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl ServerArgs {
    /// DNS names and IPs of a self-managed serving certificate for Service `service`:
    /// <svc>, <svc>.<ns>, <svc>.<ns>.svc, <svc>.<ns>.svc.cluster.local, then --tls-extra-san.
    pub fn serving_sans(&self, service: &str) -> Vec<San> {
        let ns = &self.namespace;
        let mut sans: Vec<San> = [
            service.to_string(),
            format!("{service}.{ns}"),
            format!("{service}.{ns}.svc"),
            format!("{service}.{ns}.svc.cluster.local"),
        ]
        .into_iter()
        .map(San::Dns)
        .collect();
        sans.extend(self.tls_extra_sans.iter().cloned());
        sans.dedup();
        sans
    }

    /// The self-managed TLS of a component served as Service `service`: its CA (`ca_name`) and
    /// serving certificate kept in Secret `secret_name` of --namespace, trusted by `target`.
    pub fn self_managed(
        &self,
        secret_name: &str,
        service: &str,
        ca_name: &str,
        target: CaBundleTarget,
    ) -> SelfManagedConfig {
        SelfManagedConfig {
            namespace: self.namespace.clone(),
            secret_name: secret_name.to_owned(),
            target,
            issue: IssuePolicy {
                ca_name: ca_name.to_owned(),
                sans: self.serving_sans(service),
                validity: self.cert_validity,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        server: ServerArgs,
    }

    #[test]
    fn self_managed_names_the_service_in_the_operator_namespace() {
        let args =
            Wrap::try_parse_from(["x", "--namespace", "ops", "--tls-extra-san", "127.0.0.1"])
                .unwrap()
                .server;
        let cfg = args.self_managed(
            "svc-tls",
            "svc",
            "svc CA",
            CaBundleTarget::ApiService("v1.example".into()),
        );
        assert_eq!(cfg.namespace, "ops");
        assert_eq!(cfg.secret_name, "svc-tls");
        assert_eq!(cfg.issue.ca_name, "svc CA");
        assert_eq!(cfg.issue.validity, args.cert_validity);
        let sans: Vec<String> = cfg.issue.sans.iter().map(|s| format!("{s:?}")).collect();
        assert_eq!(sans.len(), 5, "{sans:?}");
        assert!(sans[3].contains("svc.ops.svc.cluster.local"), "{sans:?}");
        assert!(sans[4].contains("127.0.0.1"), "{sans:?}");
    }
}
