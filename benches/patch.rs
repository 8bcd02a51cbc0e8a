//! Cost of the webhook's pure part: `decide` on real fixture pods and on a large synthetic pod,
//! with and without serializing the patch as the handler does.

use std::{collections::BTreeMap, hint::black_box, path::Path};

use criterion::{Criterion, criterion_group, criterion_main};
use mirrord_operator::webhook::{
    admission,
    patch::{self, AgentDefaults, Decision, InjectorConfig, PodContext, PodView, decide},
};
use serde_json::{Value, json};

/// The operator binary's allocator: the review allocates enough for it to matter.
#[global_allocator]
static ALLOCATOR: mirrord_operator::allocator::ByRole = mirrord_operator::allocator::ByRole;

fn config() -> InjectorConfig {
    InjectorConfig {
        agent_image: "ghcr.io/mirrord-operator/mirrord-operator:0.1.0".to_owned(),
        native_sidecar: true,
        defaults: AgentDefaults::default(),
        coordinator_url: "wss://mirrord-operator.mirrord.svc:443/agents/connect".to_owned(),
        coordinator_ca_bundle: Some(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".to_owned(),
        ),
        agent_group_id: 30777,
        excluded_namespaces: ["kube-system".to_owned()].into(),
        operator_version: "0.1.0".to_owned(),
    }
}

fn fixture_pod(name: &str) -> PodView {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
        .join("review.json");
    let review: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::from_value(review["request"]["object"].clone()).unwrap()
}

/// 8 containers with 100 env entries (half with references) and 20 mounts each, 40 annotations.
fn large_pod() -> PodView {
    let containers: Vec<Value> = (0..8)
        .map(|c| {
            let env: Vec<Value> = (0..100)
                .map(|i| json!({ "name": format!("VAR_{i}"), "value": format!("x-$(VAR_{})-$$(VAR_0)", i / 2) }))
                .collect();
            let mounts: Vec<Value> =
                (0..20).map(|i| json!({ "name": format!("vol-{i}"), "mountPath": format!("/data/{i}") })).collect();
            json!({ "name": format!("c{c}"), "image": "app:1", "env": env, "volumeMounts": mounts,
                    "ports": [{ "containerPort": 8080 + c }] })
        })
        .collect();
    let volumes: Vec<Value> = (0..20)
        .map(|i| json!({ "name": format!("vol-{i}"), "emptyDir": {} }))
        .collect();
    let annotations: BTreeMap<String, String> = (0..40)
        .map(|i| (format!("example.com/a{i}"), "v".repeat(64)))
        .collect();
    serde_json::from_value(json!({
        "metadata": { "generateName": "big-", "annotations": annotations },
        "spec": { "containers": containers, "volumes": volumes }
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let cfg = config();
    let ctx = PodContext {
        namespace: "shop",
        namespace_annotations: None,
        namespace_labels: None,
    };
    for (name, pod) in [
        ("deployment-pod", fixture_pod("deployment-pod")),
        ("env-references", fixture_pod("env-references")),
        ("large-pod", large_pod()),
    ] {
        assert!(matches!(decide(&pod, &ctx, &cfg), Decision::Inject { .. }));
        c.bench_function(&format!("decide/{name}"), |b| {
            b.iter(|| decide(black_box(&pod), &ctx, &cfg))
        });
        c.bench_function(&format!("decide+serialize/{name}"), |b| {
            b.iter(|| match decide(black_box(&pod), &ctx, &cfg) {
                Decision::Inject { patch, .. } => patch::to_json(&patch),
                Decision::Skip(_) => Vec::new(),
            })
        });
    }
}

/// The whole admission decision as the HTTP handler runs it: parse the AdmissionReview body, decide,
/// serialize the response.
fn review(c: &mut Criterion) {
    let cfg = config();
    for name in ["deployment-pod", "env-references"] {
        let pretty = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data")
                .join(name)
                .join("review.json"),
        )
        .unwrap();
        // Compact, as the API server sends it (the fixtures are indented for reading).
        let body =
            serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&pretty).unwrap())
                .unwrap();
        assert_eq!(admission::review(&body, &cfg, |_| None).result, "injected");
        c.bench_function(&format!("review/{name}"), |b| {
            b.iter(|| admission::review(black_box(&body), &cfg, |_| None))
        });
    }
}

criterion_group!(benches, bench, review);
criterion_main!(benches);
