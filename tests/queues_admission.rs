//! Admission half of queue splitting: golden fixtures in `tests/data/queues/<case>/` (`pod.json`,
//! `registries.json` in, `expected.json` out; `BLESS=1` rewrites the expectations). Each case is
//! also checked by applying the patch: queue env values point at output queues, a second
//! admission of the patched pod changes nothing, and without registries the patch is exactly the
//! one the webhook builds today.

use std::{
    fs,
    path::{Path, PathBuf},
};

use mirrord_operator::coordinator::queues::crd::{MirrordWorkloadQueueRegistry, QueueRegistrySpec};
use mirrord_operator::webhook::patch::{
    AgentDefaults, Decision, InjectorConfig, PatchOp, PodContext, PodView, STATUS_ANNOTATION,
    SkipReason, decide, decide_with_queues,
};
use serde_json::{Value, json};

fn config() -> InjectorConfig {
    InjectorConfig {
        agent_image: "ghcr.io/mirrord-operator/mirrord-operator:0.1.0".to_owned(),
        native_sidecar: true,
        defaults: AgentDefaults::default(),
        coordinator_url: "wss://mirrord-operator.mirrord.svc:443/agents/connect".to_owned(),
        coordinator_ca_bundle: None,
        agent_group_id: 30777,
        excluded_namespaces: ["kube-system".to_owned()].into(),
        operator_version: "0.1.0".to_owned(),
    }
}

fn read(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/queues");
    let mut dirs: Vec<PathBuf> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn is_queue_op(op: &Value) -> bool {
    op["path"]
        .as_str()
        .is_some_and(|p| p.starts_with("/spec/containers/") && p.contains("/env"))
}

fn status_of(pod: &Value) -> Value {
    let text = pod["metadata"]["annotations"][STATUS_ANNOTATION]
        .as_str()
        .expect("status annotation");
    serde_json::from_str(text).unwrap()
}

#[test]
fn queue_fixtures_match_expectations() {
    let bless = std::env::var_os("BLESS").is_some_and(|v| v == "1");
    let cfg = config();
    let ctx = PodContext {
        namespace: "staging",
        namespace_annotations: None,
        namespace_labels: None,
    };
    let mut failures = Vec::new();
    let cases = cases();
    assert!(cases.len() >= 5, "queue fixtures went missing");
    for dir in cases {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let pod_json = read(&dir.join("pod.json"));
        let pod: PodView = serde_json::from_value(pod_json.clone()).unwrap();
        let registries: Vec<MirrordWorkloadQueueRegistry> =
            serde_json::from_value(read(&dir.join("registries.json"))).unwrap();
        let specs: Vec<&QueueRegistrySpec> = registries.iter().map(|r| &r.spec).collect();

        let Decision::Inject {
            patch, warnings, ..
        } = decide_with_queues(&pod, &ctx, &cfg, &specs)
        else {
            panic!("{name}: not injected");
        };
        let ops: Vec<Value> = patch
            .iter()
            .map(|op| serde_json::to_value(op).unwrap())
            .collect();
        let mut patched = pod_json.clone();
        json_patch::patch(
            &mut patched,
            &serde_json::from_value::<json_patch::Patch>(Value::Array(ops.clone())).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{name}: patch does not apply: {e}"));
        let status = status_of(&patched);
        let actual = json!({
            "queueOps": ops.iter().filter(|op| is_queue_op(op)).collect::<Vec<_>>(),
            "statusQueues": status.get("queues").cloned().unwrap_or(Value::Null),
            "warnings": warnings,
        });

        // Every recorded update is what the patched pod's env now says.
        for update in status["queues"].as_array().into_iter().flatten() {
            let container = patched["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["name"] == update["container"])
                .unwrap();
            let values: Vec<&Value> = container["env"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["name"] == update["env"])
                .map(|e| &e["value"])
                .collect();
            assert!(
                values.contains(&&update["outputName"]),
                "{name}: {update} not in {values:?}"
            );
        }

        // Reinvocation: the patched pod is left alone.
        let again: PodView = serde_json::from_value(patched).unwrap();
        assert_eq!(
            decide_with_queues(&again, &ctx, &cfg, &specs),
            Decision::Skip(SkipReason::AlreadyInjected),
            "{name}"
        );

        // Without registries (or without a match) the patch is today's, byte for byte, minus the
        // queue ops and the status's `queues`.
        let Decision::Inject { patch: plain, .. } = decide(&pod, &ctx, &cfg) else {
            panic!("{name}")
        };
        let strip = |ops: &[PatchOp<'_>]| -> Vec<Value> {
            ops.iter()
                .map(|op| serde_json::to_value(op).unwrap())
                .filter(|op| !is_queue_op(op))
                .map(|mut op| {
                    if op["path"] == "/metadata/annotations" {
                        let status = op["value"][STATUS_ANNOTATION].as_str().unwrap();
                        let mut status: Value = serde_json::from_str(status).unwrap();
                        status.as_object_mut().unwrap().remove("queues");
                        op["value"][STATUS_ANNOTATION] = Value::String(status.to_string());
                    }
                    op
                })
                .collect()
        };
        assert_eq!(strip(&patch), strip(&plain), "{name}");

        let expected_path = dir.join("expected.json");
        let expected = if expected_path.exists() {
            read(&expected_path)
        } else {
            Value::Null
        };
        if bless && actual != expected {
            let mut text = serde_json::to_string_pretty(&actual).unwrap();
            text.push('\n');
            fs::write(&expected_path, text).unwrap();
        } else if actual != expected {
            failures.push(format!(
                "{name}: expected\n{}\ngot\n{}",
                serde_json::to_string_pretty(&expected).unwrap(),
                serde_json::to_string_pretty(&actual).unwrap()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn no_registries_is_exactly_decide() {
    let cfg = config();
    let ctx = PodContext {
        namespace: "staging",
        namespace_annotations: None,
        namespace_labels: None,
    };
    for dir in cases() {
        let pod: PodView = serde_json::from_value(read(&dir.join("pod.json"))).unwrap();
        assert_eq!(
            decide_with_queues(&pod, &ctx, &cfg, &[]),
            decide(&pod, &ctx, &cfg)
        );
    }
}
