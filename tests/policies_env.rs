//! Secret-backed env (docs/policies.md): which variables of a container spec are hidden from a user
//! who may not `get` some of its Secrets (`valueFrom.secretKeyRef`, `envFrom.secretRef` with prefix
//! and order rules, `$(NAME)` expansion), against `tests/data/policies_env/expected.json`
//! (`BLESS=1` rewrites it).

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Container;
use mirrord_operator::coordinator::policy::secret_env::{SecretEnvSources, references};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Case {
    case: String,
    container: Container,
    denied: Vec<String>,
    names: Vec<String>,
}

#[test]
fn hidden_variables_match_expectations() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/policies_env");
    let cases: Vec<Case> =
        serde_json::from_str(&std::fs::read_to_string(data.join("cases.json")).unwrap()).unwrap();
    let out: Vec<Value> = cases
        .into_iter()
        .map(|case| {
            let sources = SecretEnvSources::of(&case.container);
            let denied: BTreeMap<String, String> = case
                .denied
                .iter()
                .map(|s| (s.clone(), format!("user bob may not get Secret shop/{s}")))
                .collect();
            let hidden = sources.hidden(&denied);
            let names: BTreeMap<&str, Value> = case
                .names
                .iter()
                .map(|n| (n.as_str(), json!(hidden.why(n))))
                .collect();
            json!({ "case": case.case, "reviewed": sources.secrets(), "hidden": names })
        })
        .collect();
    let text = serde_json::to_string_pretty(&out).unwrap() + "\n";
    let expected = data.join("expected.json");
    if std::env::var_os("BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&expected, &text).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(&expected).unwrap_or_default(),
        text,
        "{} differs (BLESS=1 rewrites it)",
        expected.display()
    );
}

#[test]
fn references_follow_the_kubelet() {
    assert_eq!(references("a $(B) $$(C) $$$(D) $(E"), vec!["B", "D"]);
    assert_eq!(references("$(X)$(Y)"), vec!["X", "Y"]);
    assert!(references("no refs $ here").is_empty());
}

proptest::proptest! {
    /// Any value: no panic, and every reference found is text of the value.
    #[test]
    fn references_never_panic(value in ".{0,64}") {
        for r in references(&value) {
            let reference = format!("$({r})");
            proptest::prop_assert!(value.contains(&reference));
        }
    }
}
