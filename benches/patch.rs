//! The pure patch builder and the whole admission decision (parse + patch + serialize), per fixture.
//! `cargo bench --bench patch`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Pod;
use mirrord_operator::webhook::{
    admission,
    patch::{self, AgentDefaults, InjectorConfig, PodContext},
};

fn config() -> InjectorConfig {
    InjectorConfig {
        agent_image: "ghcr.io/mirrord-operator/mirrord-operator:0.1.0".into(),
        native_sidecar: true,
        defaults: AgentDefaults::default(),
        coordinator_url: "wss://mirrord-operator.mirrord.svc:443/agents/connect".into(),
        coordinator_ca_bundle: None,
        agent_group_id: 30777,
        excluded_namespaces: ["kube-system", "kube-public", "kube-node-lease", "mirrord"]
            .map(String::from)
            .into(),
        operator_version: "0.1.0".into(),
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/data/{name}/review.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

fn benches(c: &mut Criterion) {
    let cfg = config();
    let mut group = c.benchmark_group("patch");
    group.throughput(Throughput::Elements(1));
    for name in [
        "deployment-pod",
        "all-knobs",
        "env-references",
        "istio-proxy-first",
    ] {
        let body = fixture(name);
        let review: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let pod: Pod = serde_json::from_value(review["request"]["object"].clone()).unwrap();
        let namespace = review["request"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        group.bench_function(format!("decide/{name}"), |b| {
            b.iter(|| {
                patch::decide(
                    black_box(&pod),
                    &PodContext {
                        namespace: &namespace,
                        namespace_annotations: None,
                        namespace_labels: None,
                    },
                    &cfg,
                )
            })
        });
        group.bench_function(format!("review/{name}"), |b| {
            b.iter(|| admission::review(black_box(&body), &cfg, |_| None))
        });
    }
    group.finish();
}

criterion_group!(patch_benches, benches);
criterion_main!(patch_benches);
