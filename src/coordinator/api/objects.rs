//! The JSON documents this API answers with, built from the state (pure).
//!
//! Key casing follows operator-api.md exactly: `MirrordOperator` spec/status and `Session` are
//! snake_case, the user credential's spec/status camelCase, `Target.spec.target` the CLI's union.

use serde_json::{Value, json};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{
    discovery::GROUP_VERSION,
    state::{ApiState, SessionSummary},
};
use crate::coordinator::targets::{TargetEntry, TargetRef};

/// The mirrord operator release whose API this coordinator implements (the CLI 3.250 contract).
pub const API_COMPAT_VERSION: &str = "3.250.0";
/// The mirrord-protocol version the agents and the relay speak.
pub const PROTOCOL_VERSION: &str = "1.29.0";
/// The only `mirrordoperators` object.
pub const OPERATOR_NAME: &str = "operator";

/// `spec.operator_version`: the API release we are compatible with, with this project's version as
/// semver build metadata (`3.250.0+mirrord-operator.0.1.0`). The CLI compares it with
/// `>=3.84.0` to decide what `mirrord ls` lists (build metadata is ignored by semver comparison),
/// and prints it whole, so a person reading `mirrord operator status` sees which release answers.
pub fn operator_version() -> String {
    format!(
        "{API_COMPAT_VERSION}+mirrord-operator.{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// `spec.supported_features`: only what works end to end with this state. Credentials and session
/// management are served here; the connect endpoint (`ProxyApi`) and whatever the connector
/// implements exist only with a connector.
pub fn supported_features(state: &ApiState) -> Vec<&'static str> {
    let mut features = vec!["ExtendableUserCredentials", "SessionManagement"];
    if let Some(connector) = &state.connector {
        features.push("ProxyApi");
        for feature in connector.features() {
            if !features.contains(&feature) {
                features.push(feature);
            }
        }
    }
    features
}

fn hex_id(id: u64) -> String {
    format!("{id:X}")
}

/// One `Session` (operator-api.md 2.4), snake_case.
pub fn session_json(session: &SessionSummary) -> Value {
    let mut doc = json!({
        "id": hex_id(session.id),
        "duration_secs": session.duration_secs,
        "user": session.user,
        "target": session.target,
        "namespace": session.namespace,
        "user_id": session.user_id,
        "locked_ports": session.locked_ports.iter().map(|p| json!({
            "port": p.port, "kind": p.kind, "filter": p.filter,
        })).collect::<Vec<_>>(),
    });
    if let Some(key) = &session.key {
        doc["key"] = json!(key);
    }
    if let Some(filter) = &session.header_filter {
        doc["http_filter"] = json!({ "headerFilter": filter });
    }
    // Not read by the mirrord CLI (it ignores unknown fields); shown by `mirrord-operator status`.
    if !session.policies.is_empty() {
        doc["policies"] = json!(session.policies);
    }
    if !session.rmq.is_empty() {
        doc["rmq"] = json!(session.rmq);
    }
    if !session.sqs.is_empty() {
        doc["sqs"] = json!(session.sqs);
    }
    doc
}

/// The `MirrordOperator` object (operator-api.md §2).
pub fn operator_object(state: &ApiState) -> Value {
    let info = &state.info;
    let ca = state.user_ca.load();
    let sessions: Vec<Value> = state.sessions.list().iter().map(session_json).collect();
    let mut status = json!({ "sessions": sessions });
    if let Some(stats) = state.sessions.statistics() {
        status["statistics"] = json!({ "dau": stats.dau, "mau": stats.mau });
    }
    json!({
        "apiVersion": GROUP_VERSION,
        "kind": "MirrordOperator",
        "metadata": { "name": OPERATOR_NAME },
        "spec": {
            "operator_version": info.operator_version,
            "default_namespace": info.default_namespace,
            "protocol_version": PROTOCOL_VERSION,
            "supported_features": supported_features(state),
            "license": {
                "name": info.license.name,
                "organization": info.license.organization,
                "expire_at": format!(
                    "{:04}-{:02}-{:02}",
                    info.license.expire_at.year(),
                    u8::from(info.license.expire_at.month()),
                    info.license.expire_at.day()
                ),
                "fingerprint": ca.fingerprint(),
            },
        },
        "status": status,
    })
}

/// A list envelope.
pub fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": GROUP_VERSION,
        "kind": format!("{kind}List"),
        "metadata": {},
        "items": items,
    })
}

/// A `Session` object (`SessionCrd`): `spec.session`, named by the hex id.
pub fn session_object(session: &SessionSummary) -> Value {
    let mut metadata = json!({ "name": hex_id(session.id) });
    if let Some(namespace) = &session.namespace {
        metadata["namespace"] = json!(namespace);
    }
    json!({
        "apiVersion": GROUP_VERSION,
        "kind": "Session",
        "metadata": metadata,
        "spec": { "session": session_json(session) },
    })
}

/// `Target.spec.target`: the CLI's untagged union (`{"deployment": "web", "container": "app"}`).
pub fn target_union(target: &TargetRef) -> Value {
    match target {
        TargetRef::Targetless => Value::Null,
        TargetRef::Label => json!({ "labels": {} }),
        TargetRef::Workload {
            kind,
            name,
            container,
        } => json!({ kind.json_key(): name, "container": container }),
    }
}

/// A `Target` object. `status` is ours (the CLI ignores it): whether a session could attach now.
pub fn target_object(namespace: &str, entry: &TargetEntry) -> Value {
    json!({
        "apiVersion": GROUP_VERSION,
        "kind": "Target",
        "metadata": { "name": entry.target.object_name(), "namespace": namespace },
        "spec": { "target": target_union(&entry.target) },
        "status": { "available": entry.available, "ready_pods": entry.ready_pods },
    })
}

/// The credential answer: the request echoed with `metadata.name` and `status.certificate`.
pub fn credential_object(
    name: &str,
    csr: &str,
    kind: &str,
    certificate_pem: &str,
    now: OffsetDateTime,
) -> Value {
    json!({
        "apiVersion": GROUP_VERSION,
        "kind": "MirrordClusterOperatorUserCredential",
        "metadata": {
            "name": name,
            "creationTimestamp": now.replace_nanosecond(0).unwrap_or(now).format(&Rfc3339).unwrap_or_default(),
        },
        "spec": { "csr": csr, "kind": kind },
        "status": { "certificate": certificate_pem },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_version_passes_the_cli_gate_and_names_this_release() {
        let version = semver::Version::parse(&operator_version()).unwrap();
        assert!(
            semver::VersionReq::parse(">=3.84.0")
                .unwrap()
                .matches(&version)
        );
        assert_eq!(
            version.build.as_str(),
            format!("mirrord-operator.{}", env!("CARGO_PKG_VERSION"))
        );
    }
}
