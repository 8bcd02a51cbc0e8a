//! `mirrord-operator coordinator` flags. Every flag also reads a `MIRRORD_OPERATOR_*` variable, which
//! is how the Helm chart configures the Deployment; the shared server flags are flattened in.

use std::time::Duration;

use crate::server::{ServerArgs, args::duration};

#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// The coordinator's Service name; the self-managed certificate is valid for <svc>, <svc>.<ns>,
    /// <svc>.<ns>.svc and <svc>.<ns>.svc.cluster.local (--namespace).
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_COORDINATOR_SERVICE_NAME",
        default_value = "mirrord-operator-coordinator"
    )]
    pub service_name: String,

    /// Secret that holds the self-managed CA and serving certificate (in --namespace).
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_COORDINATOR_TLS_SECRET_NAME",
        default_value = "mirrord-operator-coordinator-tls"
    )]
    pub tls_secret_name: String,

    /// APIService whose caBundle the self-managed mode keeps, and whose caBundle must hold the
    /// serving certificate's CA before the coordinator reports ready.
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_API_SERVICE_NAME",
        default_value = "v1.operator.metalbear.co"
    )]
    pub api_service_name: String,

    /// Secret that holds the CA signing user credentials (created when missing, in --namespace).
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_USER_CA_SECRET_NAME",
        default_value = "mirrord-operator-user-ca"
    )]
    pub user_ca_secret_name: String,

    /// Lifetime of a user-credential CA the coordinator creates. It is replaced after 2/3 of it;
    /// the replaced CA's certificates stay accepted until they expire.
    #[arg(long, env = "MIRRORD_OPERATOR_USER_CA_VALIDITY", default_value = "87600h", value_parser = duration)]
    pub user_ca_validity: Duration,

    /// How long an allowing SubjectAccessReview is reused for the same user and request
    /// attributes; 0s asks kube-apiserver for every request. A revoked RoleBinding takes effect
    /// within this time (denials are never cached).
    #[arg(long, env = "MIRRORD_OPERATOR_AUTHZ_CACHE_TTL", default_value = "10s", value_parser = duration)]
    pub authz_cache_ttl: Duration,

    /// Lifetime of the user certificates the coordinator issues.
    #[arg(long, env = "MIRRORD_OPERATOR_USER_CERT_VALIDITY", default_value = "720h", value_parser = duration)]
    pub user_cert_validity: Duration,

    /// `spec.license.name` of the MirrordOperator object.
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_LICENSE_NAME",
        default_value = "mirrord-operator (open source)"
    )]
    pub license_name: String,

    /// `spec.license.organization` of the MirrordOperator object.
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_ORGANIZATION",
        default_value = "self-hosted"
    )]
    pub organization: String,

    /// `spec.license.expire_at` (YYYY-MM-DD); the CLI refuses an operator whose license expired.
    #[arg(
        long,
        env = "MIRRORD_OPERATOR_LICENSE_EXPIRE_AT",
        default_value = "2099-12-31"
    )]
    pub license_expire_at: String,
}
