//! `mirrord-operator coordinator`: wires the pure API router to its Kubernetes parts and serves it
//! on the shared runtime (HTTPS asking for kube-apiserver's proxy certificate, health and metrics).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use axum::{Router, middleware};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::OwnerReference,
    kube_aggregator::pkg::apis::apiregistration::v1::APIService,
};
use kube::{Api, Client};

use super::{
    agents::{self, AgentRegistry, HubConfig},
    api::{
        self,
        objects::operator_version,
        state::{ApiLimits, ApiState, License, OperatorInfo},
    },
    config::CoordinatorArgs,
    error::CoordinatorError,
    kube::{
        authz_cache::CachedAuthorizer,
        caches::Caches,
        front_proxy::{self, Authn, SharedConfig},
        reviews::{KubeTokenReviewer, SarAuthorizer},
        user_ca,
    },
    metrics::Metrics,
    policy::{cache::PolicyCache, gate::PolicyGate},
    session::{SessionTable, TableConfig, connector::SessionService},
};
use crate::{
    server::{
        self as runtime, Health,
        shutdown::Shutdown,
        tls_source::{self, TlsObserver},
    },
    tls::{
        self, CertResolver, ServingCert, TlsError,
        files::ReloadObserver,
        self_managed::{CaBundleTarget, Reconciled, SelfManagedError},
    },
};

const CA_NAME: &str = "mirrord-operator coordinator CA";

/// Runs the coordinator until SIGTERM/SIGINT.
pub async fn run(args: CoordinatorArgs) -> Result<(), CoordinatorError> {
    // No drain: its sessions are long-lived connections that end with it anyway.
    run_until(args, runtime::on_os_signal(std::time::Duration::ZERO)).await
}

/// `YYYY-MM-DD`, the only form the CLI accepts for `expire_at`.
fn parse_date(text: &str) -> Option<time::Date> {
    let mut parts = text.trim().splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()
}

/// Runs the coordinator until `shutdown`.
pub async fn run_until(args: CoordinatorArgs, shutdown: Shutdown) -> Result<(), CoordinatorError> {
    let expire_at = parse_date(&args.license_expire_at)
        .ok_or_else(|| CoordinatorError::LicenseDate(args.license_expire_at.clone()))?;
    let client = Client::try_default()
        .await
        .map_err(CoordinatorError::NoCluster)?;
    let metrics = Arc::new(Metrics::default());
    let resolver = Arc::new(CertResolver::default());

    let requestheader: SharedConfig = Arc::new(ArcSwapOption::empty());
    tokio::spawn(front_proxy::watch(
        client.clone(),
        requestheader.clone(),
        shutdown.clone(),
    ));
    let caches = Caches::start(client.clone(), shutdown.clone()).await;
    let user_ca = user_ca::load_or_create(
        client.clone(),
        &args.server.namespace,
        &args.user_ca_secret_name,
        api_service_owner(&Api::all(client.clone()), &args.api_service_name).await,
        time::OffsetDateTime::now_utc(),
        args.user_ca_validity,
    )
    .await?;
    tracing::info!(
        fingerprint = user_ca.fingerprint(),
        "user-credential CA loaded"
    );

    let health = Arc::new(CoordinatorHealth {
        resolver: resolver.clone(),
        metrics: metrics.clone(),
        requestheader: requestheader.clone(),
        caches: caches.clone(),
        api_service_trusts_us: AtomicBool::new(false),
    });
    tls_source::start(
        &args.server,
        Some(client.clone()),
        args.server.self_managed(
            &args.tls_secret_name,
            &args.service_name,
            CA_NAME,
            CaBundleTarget::ApiService(args.api_service_name.clone()),
        ),
        resolver.clone(),
        health.clone(),
        shutdown.clone(),
    )?;
    tokio::spawn(watch_api_service(
        Api::all(client.clone()),
        args.api_service_name.clone(),
        health.clone(),
        args.server.cert_check_interval,
        shutdown.clone(),
    ));

    let info = OperatorInfo {
        operator_version: operator_version(),
        default_namespace: args.server.namespace.clone(),
        license: License {
            name: args.license_name.clone(),
            organization: args.organization.clone(),
            expire_at,
        },
    };
    let authorizer = Arc::new(CachedAuthorizer::new(
        SarAuthorizer::new(client.clone(), metrics.clone()),
        args.authz_cache_ttl,
        metrics.clone(),
    ));
    let limits = ApiLimits {
        certificate_validity: time::Duration::try_from(args.user_cert_validity)
            .unwrap_or(ApiLimits::default().certificate_validity),
        ..ApiLimits::default()
    };
    // Agents dial /agents/connect with their pod-bound token; CLI sessions reach them through the
    // API's connector. Agent routes authenticate by TokenReview, not by the front proxy.
    let registry = AgentRegistry::new(
        Arc::new(KubeTokenReviewer::new(
            client.clone(),
            crate::injection::TOKEN_AUDIENCE,
            metrics.clone(),
        )),
        HubConfig::default(),
    );
    let templates = caches.clone();
    let queue_splitters = super::queues::wiring::start(
        client.clone(),
        move |kind, namespace, name| templates.workload_template(kind, namespace, name),
        Arc::new(metrics.queues.clone()),
        shutdown.clone(),
    );
    let inventory = Arc::new(caches);
    let table = SessionTable::new(TableConfig::default());
    table.set_policy_gate(Arc::new(
        PolicyGate::new(Arc::new(PolicyCache::start(
            client.clone(),
            shutdown.clone(),
        )))
        .with_secret_authorizer(authorizer.clone()),
    ));
    let sessions = Arc::new(SessionService {
        registry: registry.clone(),
        table,
        inventory: inventory.clone(),
        queues: Some(queue_splitters),
    });
    let state = ApiState::new(info, user_ca, authorizer, inventory)
        .with_limits(limits)
        .with_sessions(Arc::new(sessions.clone()))
        .with_connector(Arc::new(sessions))
        .with_agents(registry.clone());
    tokio::spawn(user_ca::keep(
        Api::namespaced(client.clone(), &args.server.namespace),
        args.user_ca_secret_name.clone(),
        args.user_ca_validity,
        state.user_ca.clone(),
        args.server.cert_check_interval,
        {
            let metrics = metrics.clone();
            move |label| metrics.error(label)
        },
        shutdown.clone(),
    ));
    let router = authenticated(
        api::router(state),
        Authn {
            config: requestheader,
            observer: metrics.clone(),
        },
    )
    .merge(agents::router(registry));

    let listener = runtime::bind(args.server.listen).await?;
    let health_listener = runtime::bind(args.server.health_listen).await?;
    tracing::info!(listen = %args.server.listen, health = %args.server.health_listen, "coordinator serving");
    let health_task = tokio::spawn(runtime::serve_health(
        health_listener,
        runtime::health_router(health),
        shutdown.clone(),
    ));
    runtime::serve_tls(
        listener,
        tls::server_config_asking_client_cert(resolver),
        router,
        shutdown,
    )
    .await;
    health_task
        .await
        .map_err(|e| CoordinatorError::Health(std::io::Error::other(e)))?
        .map_err(CoordinatorError::Health)
}

/// An owner reference to the APIService, for the Secrets the coordinator creates (none when it
/// cannot be read: the Secret then outlives an uninstall, which is harmless).
async fn api_service_owner(api: &Api<APIService>, name: &str) -> Option<OwnerReference> {
    match api.get_opt(name).await {
        Ok(Some(service)) => Some(OwnerReference {
            api_version: "apiregistration.k8s.io/v1".into(),
            kind: "APIService".into(),
            name: service.metadata.name?,
            uid: service.metadata.uid?,
            ..Default::default()
        }),
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(%error, %name, "cannot read the APIService; the user CA Secret gets no owner");
            None
        }
    }
}

/// `router` behind front-proxy authentication: every request gets an `Identity` or a 401.
pub fn authenticated(router: Router, authn: Authn) -> Router {
    router.layer(middleware::from_fn_with_state(
        authn,
        front_proxy::authenticate,
    ))
}

/// What `/readyz` checks, and the coordinator's TLS observer.
struct CoordinatorHealth {
    resolver: Arc<CertResolver>,
    metrics: Arc<Metrics>,
    requestheader: SharedConfig,
    caches: Caches,
    /// The APIService's caBundle holds a CA that signed the certificate served now.
    api_service_trusts_us: AtomicBool,
}

impl Health for CoordinatorHealth {
    fn readiness(&self) -> Result<(), String> {
        if self.resolver.current().is_none() {
            return Err("no serving certificate yet".into());
        }
        if !self.api_service_trusts_us.load(Ordering::Acquire) {
            return Err(
                "the APIService's caBundle does not hold the serving certificate's CA yet".into(),
            );
        }
        if self.requestheader.load().is_none() {
            return Err(format!(
                "{}/{} not read yet",
                front_proxy::CONFIGMAP_NAMESPACE,
                front_proxy::CONFIGMAP_NAME
            ));
        }
        if !self.caches.synced() {
            return Err("workload caches not synced yet".into());
        }
        Ok(())
    }

    fn render_metrics(&self) -> String {
        self.metrics.render()
    }
}

impl ReloadObserver for CoordinatorHealth {
    fn loaded(&self, cert: &ServingCert) {
        self.metrics.loaded(cert);
    }

    fn failed(&self, error: &TlsError) {
        self.metrics.failed(error);
    }
}

impl TlsObserver for CoordinatorHealth {
    fn served(&self, cert: &ServingCert) {
        self.metrics.tls.served(cert);
    }

    fn reconciled(&self, done: &Reconciled) {
        self.metrics.tls.reconciled(&self.resolver, done);
    }

    fn reconcile_failed(&self, error: &SelfManagedError) {
        self.metrics.error(error.label());
    }
}

/// Checks, in every TLS mode, that the APIService's caBundle verifies the served certificate:
/// often until it does, then every `interval` (a rotation or a cainjector lag makes it false again).
async fn watch_api_service(
    api: Api<APIService>,
    name: String,
    health: Arc<CoordinatorHealth>,
    interval: Duration,
    mut shutdown: Shutdown,
) {
    loop {
        let trusted = match (health.resolver.current(), api.get_opt(&name).await) {
            (Some(served), Ok(Some(service))) => {
                let bundle = service.spec.and_then(|s| s.ca_bundle).map(|b| b.0);
                bundle.is_some_and(|bundle| tls::bundle_signs(&bundle, &served.key.cert[0]))
            }
            (_, Err(error)) => {
                tracing::warn!(%error, %name, "cannot read the APIService");
                false
            }
            _ => false,
        };
        let was = health.api_service_trusts_us.swap(trusted, Ordering::AcqRel);
        if was != trusted {
            tracing::info!(%name, trusted, "APIService caBundle vs the served certificate");
        }
        let wait = if trusted {
            interval
        } else {
            interval.min(Duration::from_secs(2))
        };
        if !shutdown.sleep(wait).await {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn license_dates_are_plain_dates() {
        assert_eq!(
            parse_date("2099-12-31"),
            time::Date::from_calendar_date(2099, time::Month::December, 31).ok()
        );
        for bad in ["2099-13-01", "2099-12-31T00:00:00Z", "tomorrow", ""] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }
}
