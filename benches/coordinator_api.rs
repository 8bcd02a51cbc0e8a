//! The coordinator API's handlers in process (no TLS, no kube-apiserver): the operator object, the
//! targets list of a namespace with 200 Deployments × 5 pods, and signing a user certificate. The
//! numbers through kube-apiserver are in docs/benchmarks.md; these show how much of them is ours.

use std::{collections::BTreeMap, hint::black_box, sync::Arc};

use axum::body::Body;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::Pod,
};
use mirrord_operator::coordinator::{
    api::{
        router,
        state::{
            AllowAll, ApiState, Identity, License, NamespaceInventory, OperatorInfo,
            StaticInventory,
        },
    },
    credentials::UserCa,
};
use serde_json::json;
use time::{Date, Month, OffsetDateTime};
use tower::ServiceExt;

const DEPLOYMENTS: usize = 200;
const PODS_PER_DEPLOYMENT: usize = 5;

fn owner(kind: &str, name: &str, uid: &str) -> serde_json::Value {
    json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true}])
}

fn template() -> serde_json::Value {
    json!({"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [
        {"name": "app", "image": "app"}, {"name": "metrics", "image": "metrics"}]}})
}

/// One namespace: 200 Deployments, each with a ReplicaSet and 5 Running pods with the agent.
fn inventory() -> StaticInventory {
    let mut ns = NamespaceInventory::default();
    for d in 0..DEPLOYMENTS {
        let (name, uid, rs_uid) = (format!("svc-{d}"), format!("d-{d}"), format!("rs-{d}"));
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "team", "uid": uid},
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": template()},
        }))
        .unwrap();
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-7d9"), "namespace": "team", "uid": rs_uid,
                         "ownerReferences": owner("Deployment", &name, &uid)},
            "spec": {"selector": {"matchLabels": {"app": name}}, "template": template()},
        }))
        .unwrap();
        for p in 0..PODS_PER_DEPLOYMENT {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-7d9-{p}"), "namespace": "team",
                             "uid": format!("p-{d}-{p}"),
                             "ownerReferences": owner("ReplicaSet", &format!("{name}-7d9"), &rs_uid)},
                "spec": {"containers": [{"name": "app"}, {"name": "metrics"}, {"name": "mirrord-agent"}]},
                "status": {"phase": "Running"},
            }))
            .unwrap();
            ns.pods.push(Arc::new(pod));
        }
        ns.deployments.push(Arc::new(deployment));
        ns.replica_sets.push(Arc::new(rs));
    }
    StaticInventory {
        namespaces: BTreeMap::from([("team".to_owned(), ns)]),
    }
}

fn state() -> ApiState {
    let now = OffsetDateTime::from_unix_timestamp(1_798_761_600).unwrap();
    let info = OperatorInfo::new(
        "mirrord",
        License {
            name: "bench".into(),
            organization: "bench".into(),
            expire_at: Date::from_calendar_date(2099, Month::December, 31).unwrap(),
        },
    );
    ApiState::new(
        info,
        UserCa::generate("bench CA", now).unwrap(),
        Arc::new(AllowAll),
        Arc::new(inventory()),
    )
}

fn get(uri: &str) -> Request<Body> {
    let mut request = Request::get(uri).body(Body::empty()).unwrap();
    request.extensions_mut().insert(Identity {
        user: "bench".into(),
        ..Default::default()
    });
    request
}

/// A CSR like the CLI's (Ed25519, CN=vm), from cli-capture-3.250.jsonl.
const CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----\r\nMIGQMEICAQAwDTELMAkGA1UEAwwCdm0wLDAHBgMrZW4FAAMhAJbL1vEX9736RJEy\r\nX2eSC/aP941n/hGBySLGgE2uNvnZoAAwBwYDK2VwBQADQQCxVZ/eYsxSFPYXMfMP\r\n1nSgzg+Wj41rsIZiiOlshA5vjZTWC46CNx8tqazM/KCbt3OXvtEkCmCQigsT1XCF\r\nszwL\r\n-----END CERTIFICATE REQUEST-----\r\n";

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let state = state();
    let app = router(state.clone());
    let call = |uri: &'static str| {
        runtime.block_on(async {
            let response = app.clone().oneshot(get(uri)).await.unwrap();
            black_box(
                axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .unwrap(),
            )
        })
    };
    c.bench_function("api/get_operator", |b| {
        b.iter(|| call("/apis/operator.metalbear.co/v1/mirrordoperators/operator"))
    });
    c.bench_function("api/list_targets_200_deployments", |b| {
        b.iter(|| call("/apis/operator.metalbear.co/v1/namespaces/team/targets"))
    });
    c.bench_function("api/get_target_200_deployments", |b| {
        b.iter(|| call("/apis/operator.metalbear.co/v1/namespaces/team/targets/deployment.svc-150"))
    });
    let ca = state.user_ca.load_full();
    let now = OffsetDateTime::from_unix_timestamp(1_798_761_600).unwrap();
    c.bench_function("credentials/sign_csr", |b| {
        b.iter(|| black_box(ca.sign_csr(CSR, now, time::Duration::days(7)).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
