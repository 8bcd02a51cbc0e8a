//! One reconciliation of a RegistryMirror: validate the input, apply every child with server-side apply
//! (own field manager, so a second pass with the same input changes nothing), write the status.
//! Invalid input leaves the children as they were and is reported in the status and as an Event.

use std::{sync::Arc, time::Duration};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, StatefulSet},
    core::v1::{Secret, Service},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::controller::Action,
};
use serde_json::json;
use time::OffsetDateTime;

use super::{
    crd::{MirrorCondition, RegistryMirror, RegistryMirrorStatus},
    error::ReconcileError,
    input::{CacheVolume, Credentials, InputError, Upstream, validate_name, validate_spec},
    metrics::{ErrorLabel, Metrics, ReasonLabel},
    render::{
        self, MirrorInputs, Owner, RenderConfig, TLS_NOT_AFTER_ANNOTATION, TLS_SANS_ANNOTATION,
        TlsMaterial,
    },
};

/// Field manager of every server-side apply (and of the status).
pub const FIELD_MANAGER: &str = "registry-mirror-controller";
/// Invalid input is re-checked this often even without a change (Secrets are watched too).
pub const INVALID_REQUEUE: Duration = Duration::from_secs(300);
/// Healthy mirrors are re-applied this often, to undo drift the watches missed.
pub const RESYNC: Duration = Duration::from_secs(600);
/// Validity of the mirror's CA and serving certificate.
pub const TLS_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Both are reissued when less than this is left (a resync every [`RESYNC`] notices it in time).
pub const TLS_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Issues the TLS material for a set of SANs (real: rcgen; tests: fixed PEM).
pub type TlsIssuer = fn(&[String], OffsetDateTime) -> Result<TlsMaterial, crate::certs::CertError>;

pub struct Context {
    pub client: Client,
    pub render: RenderConfig,
    /// `source.host` of the Events (the pod name).
    pub instance: String,
    pub metrics: Arc<Metrics>,
    pub clock: fn() -> OffsetDateTime,
    pub issue_tls: TlsIssuer,
}

/// A CA and a serving certificate signed by it, for `sans`.
pub fn issue_tls(
    sans: &[String],
    now: OffsetDateTime,
) -> Result<TlsMaterial, crate::certs::CertError> {
    use crate::certs::{San, generate_ca, issue_serving};
    let parsed = sans
        .iter()
        .map(|s| s.parse::<San>())
        .collect::<Result<Vec<_>, _>>()?;
    let ca = generate_ca("registry-mirror CA", now, TLS_VALIDITY)?;
    let serving = issue_serving(&ca, &parsed, now, TLS_VALIDITY)?;
    Ok(TlsMaterial {
        ca_pem: ca.cert_pem,
        cert_pem: serving.cert_pem,
        key_pem: serving.key_pem,
        sans: sans.to_vec(),
        not_after: rfc3339(now + TLS_VALIDITY),
    })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The Ready condition, keeping the previous transition time while the status value stays.
fn ready_condition(
    previous: Option<&RegistryMirrorStatus>,
    generation: Option<i64>,
    status: &str,
    reason: &str,
    message: String,
    now: OffsetDateTime,
) -> MirrorCondition {
    let last = previous
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone());
    MirrorCondition {
        type_: "Ready".to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: last.unwrap_or_else(|| rfc3339(now)),
        observed_generation: generation,
    }
}

fn not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

async fn apply<K>(api: &Api<K>, obj: &K) -> Result<K, ReconcileError>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| ReconcileError::Apply {
        kind: K::kind(&()).into_owned(),
        name,
        source,
    })
}

/// Reads what the user gave and the credentials Secret; all problems are [`InputError`]s.
struct Validated {
    upstream: Upstream,
    cache: CacheVolume,
    credentials: Option<Credentials>,
}

async fn validate(
    mirror: &RegistryMirror,
    secrets: &Api<Secret>,
    namespace: &str,
) -> Result<Result<Validated, InputError>, ReconcileError> {
    let name = mirror.name_any();
    let (upstream, cache) = match validate_spec(&name, &mirror.spec) {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    let credentials = match &mirror.spec.credentials_secret {
        None => None,
        Some(secret_name) => match secrets.get(secret_name).await {
            Ok(secret) => {
                match Credentials::from_secret(namespace, secret_name, secret.data.as_ref()) {
                    Ok(c) => Some(c),
                    Err(e) => return Ok(Err(e)),
                }
            }
            Err(e) if not_found(&e) => {
                return Ok(Err(InputError::SecretNotFound {
                    namespace: namespace.to_owned(),
                    name: secret_name.clone(),
                }));
            }
            Err(source) => {
                return Err(ReconcileError::ReadSecret {
                    name: secret_name.clone(),
                    source,
                });
            }
        },
    };
    Ok(Ok(Validated {
        upstream,
        cache,
        credentials,
    }))
}

/// TLS material from the existing config Secret when it was issued for `sans` and is not due for
/// renewal, else a fresh CA and serving certificate (the pods restart through the config checksum and
/// the node agents follow the new CA).
fn reuse_or_issue(
    existing: Option<&Secret>,
    sans: &[String],
    ctx: &Context,
) -> Result<TlsMaterial, ReconcileError> {
    let reused = existing.and_then(|secret| {
        let issued_for = secret.annotations().get(TLS_SANS_ANNOTATION)?;
        if issued_for != &sans.join(",") {
            return None;
        }
        // No (or an unreadable) expiry: issued by an older controller; renew once.
        let not_after = secret.annotations().get(TLS_NOT_AFTER_ANNOTATION)?;
        let expires =
            OffsetDateTime::parse(not_after, &time::format_description::well_known::Rfc3339)
                .ok()?;
        if (ctx.clock)() + TLS_RENEW_BEFORE >= expires {
            return None;
        }
        let data = secret.data.as_ref()?;
        let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
        Some(TlsMaterial {
            ca_pem: text("ca.crt")?,
            cert_pem: text("tls.crt")?,
            key_pem: text("tls.key")?,
            sans: sans.to_vec(),
            not_after: not_after.clone(),
        })
    });
    match reused {
        Some(tls) => Ok(tls),
        None => Ok((ctx.issue_tls)(sans, (ctx.clock)())?),
    }
}

async fn write_status(
    api: &Api<RegistryMirror>,
    name: &str,
    status: &RegistryMirrorStatus,
) -> Result<(), ReconcileError> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map(|_| ())
    .map_err(|source| ReconcileError::Status {
        name: name.to_owned(),
        source,
    })
}

/// Reconciles one mirror (the controller's reconcile function).
pub async fn reconcile(
    mirror: Arc<RegistryMirror>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let name = mirror.name_any();
    let span =
        tracing::info_span!("reconcile", mirror = %name, generation = ?mirror.metadata.generation);
    let started = std::time::Instant::now();
    let result = tracing::Instrument::instrument(reconcile_inner(&mirror, &ctx), span).await;
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => {}
        Err(error) => {
            ctx.metrics.result("error");
            ctx.metrics
                .errors
                .get_or_create(&ErrorLabel {
                    error: error.metric_label(),
                })
                .inc();
        }
    }
    result
}

async fn reconcile_inner(mirror: &RegistryMirror, ctx: &Context) -> Result<Action, ReconcileError> {
    let name = mirror.name_any();
    if mirror.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the children through their ownerReferences.
        ctx.metrics.result("deleting");
        return Ok(Action::await_change());
    }
    let uid = mirror
        .metadata
        .uid
        .clone()
        .ok_or(ReconcileError::MissingMetadata("uid"))?;
    let ns = ctx.render.namespace.as_str();
    let client = ctx.client.clone();
    let mirrors: Api<RegistryMirror> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let generation = mirror.metadata.generation;
    let now = (ctx.clock)();

    // `kubectl get ds,statefulset,svc,registrymirror -l mirror=<name>` shows the mirror itself too.
    // (Only a valid name is a valid label value; an invalid one is reported below.)
    if validate_name(&name).is_ok() && mirror.labels().get(render::MIRROR_LABEL) != Some(&name) {
        mirrors
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {render::MIRROR_LABEL: &name}}})),
            )
            .await
            .map_err(|source| ReconcileError::Label {
                name: name.clone(),
                source,
            })?;
    }

    let validated = match validate(mirror, &secrets, ns).await? {
        Ok(v) => v,
        Err(invalid) => return report_invalid(mirror, ctx, &mirrors, invalid, now).await,
    };

    let owner = Owner {
        name: name.clone(),
        uid,
    };
    let service = apply(&services, &render::service(&ctx.render, &owner)).await?;
    let cluster_ip = service
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .filter(|ip| !ip.is_empty() && ip != "None")
        .ok_or_else(|| ReconcileError::NoClusterIp(render::child_name(&name)))?;
    apply(&services, &render::headless_service(&ctx.render, &owner)).await?;

    let secret_name = render::child_name(&name);
    let existing = match secrets.get(&secret_name).await {
        Ok(secret) => Some(secret),
        Err(e) if not_found(&e) => None,
        Err(source) => {
            return Err(ReconcileError::ReadSecret {
                name: secret_name,
                source,
            });
        }
    };
    let sans = render::tls_sans(&ctx.render, &name, &cluster_ip);
    let tls = reuse_or_issue(existing.as_ref(), &sans, ctx)?;
    let inputs = MirrorInputs {
        owner: &owner,
        upstream: &validated.upstream,
        credentials: validated.credentials.as_ref(),
        cache: &validated.cache,
        cluster_ip: &cluster_ip,
        tls: &tls,
    };
    apply(&secrets, &render::config_secret(&ctx.render, &inputs)).await?;
    let stateful_sets = Api::<StatefulSet>::namespaced(client.clone(), ns);
    let desired = render::stateful_set(&ctx.render, &inputs);
    let sts = match apply(&stateful_sets, &desired).await {
        // volumeClaimTemplates are immutable: a new spec.volumeClaimTemplate replaces the StatefulSet,
        // orphaning its pods (the new one adopts them) and keeping the existing volumes.
        Err(ReconcileError::Apply {
            source: kube::Error::Api(status),
            ..
        }) if status.code == 422 => {
            tracing::info!(%status.message, "replacing the StatefulSet (immutable field changed)");
            stateful_sets
                .delete(&desired.name_any(), &DeleteParams::orphan())
                .await
                .map_err(|source| ReconcileError::Apply {
                    kind: "StatefulSet".to_owned(),
                    name: desired.name_any(),
                    source,
                })?;
            apply(&stateful_sets, &desired).await?
        }
        other => other?,
    };
    apply(
        &Api::<DaemonSet>::namespaced(client.clone(), ns),
        &render::daemon_set(&ctx.render, &inputs),
    )
    .await?;

    let previous = mirror.status.as_ref();
    let status = RegistryMirrorStatus {
        observed_generation: generation,
        conditions: vec![ready_condition(
            previous,
            generation,
            "True",
            "Reconciled",
            format!(
                "mirroring {} through {}",
                validated.upstream.url(),
                render::child_name(&name)
            ),
            now,
        )],
        endpoint: Some(render::endpoint(&ctx.render, &name)),
        cluster_ip: Some(cluster_ip),
        ready_replicas: Some(
            sts.status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0),
        ),
    };
    if previous != Some(&status) {
        write_status(&mirrors, &name, &status).await?;
        tracing::info!(upstream = %validated.upstream.url(), "mirror reconciled");
    }
    ctx.metrics.result("applied");
    Ok(Action::requeue(RESYNC))
}

/// Invalid input: status condition and a Warning Event (once per distinct problem); children untouched.
async fn report_invalid(
    mirror: &RegistryMirror,
    ctx: &Context,
    mirrors: &Api<RegistryMirror>,
    invalid: InputError,
    now: OffsetDateTime,
) -> Result<Action, ReconcileError> {
    let name = mirror.name_any();
    let reason = invalid.reason();
    let message = invalid.to_string();
    tracing::warn!(reason, %message, "invalid RegistryMirror input; children left as they are");
    ctx.metrics.result("invalid");
    ctx.metrics
        .invalid_inputs
        .get_or_create(&ReasonLabel { reason })
        .inc();
    let previous = mirror.status.clone().unwrap_or_default();
    let status = RegistryMirrorStatus {
        observed_generation: mirror.metadata.generation,
        conditions: vec![ready_condition(
            Some(&previous),
            mirror.metadata.generation,
            "False",
            reason,
            message.clone(),
            now,
        )],
        ..previous.clone()
    };
    if status != previous {
        write_status(mirrors, &name, &status).await?;
        // An Event that cannot be written must not hide the status, which is already there.
        if let Err(error) = publish_warning(ctx, mirror, reason, &message, now).await {
            tracing::warn!(%error, "could not publish the Event");
        }
    }
    Ok(Action::requeue(INVALID_REQUEUE))
}

/// A Warning Event about the mirror. core/v1 in `default`, where Kubernetes keeps the Events of
/// cluster-scoped objects (`kubectl describe registrymirror` shows them); events.k8s.io/v1 refuses a
/// cluster-scoped `regarding` on Kubernetes 1.20.
async fn publish_warning(
    ctx: &Context,
    mirror: &RegistryMirror,
    reason: &str,
    message: &str,
    now: OffsetDateTime,
) -> Result<(), kube::Error> {
    let at = rfc3339(now);
    let event: k8s_openapi::api::core::v1::Event = serde_json::from_value(json!({
        "metadata": {"generateName": format!("{}.", mirror.name_any()), "namespace": "default"},
        "involvedObject": {
            "apiVersion": "k8s.osp.tech/v1",
            "kind": "RegistryMirror",
            "name": mirror.name_any(),
            "uid": mirror.metadata.uid,
            "resourceVersion": mirror.metadata.resource_version,
        },
        "type": "Warning",
        "reason": reason,
        "message": message,
        "action": "Reconcile",
        "source": {"component": FIELD_MANAGER, "host": ctx.instance},
        "reportingComponent": FIELD_MANAGER,
        "reportingInstance": ctx.instance,
        "firstTimestamp": at,
        "lastTimestamp": at,
        "count": 1,
    }))
    .expect("the Event matches core/v1");
    Api::<k8s_openapi::api::core::v1::Event>::namespaced(ctx.client.clone(), "default")
        .create(&PostParams::default(), &event)
        .await
        .map(|_| ())
}

/// Failed reconciliations are retried after a pause (the error is already counted and logged).
pub fn error_policy(
    mirror: Arc<RegistryMirror>,
    error: &ReconcileError,
    _ctx: Arc<Context>,
) -> Action {
    tracing::warn!(mirror = %mirror.name_any(), %error, "reconcile failed; retrying in 15s");
    Action::requeue(Duration::from_secs(15))
}
