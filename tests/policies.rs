//! Policies and profiles (docs/policies.md): the chart's CRDs equal the derived ones, and the pure
//! evaluation against the fixtures in `tests/data/policies/` (`BLESS=1` rewrites the expected files).

use std::{fs, path::Path};

use mirrord_operator::coordinator::policy::crd::crds;

fn bless() -> bool {
    std::env::var_os("BLESS").is_some_and(|v| v == "1")
}

const CHART_CRDS: &str = "charts/mirrord-operator/files/policies-crds.json";

/// The chart installs exactly the CRDs the code derives (`BLESS=1` rewrites the chart's copy).
#[test]
fn chart_crds_match_the_code() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CHART_CRDS);
    let expected = serde_json::to_string_pretty(&crds()).unwrap() + "\n";
    if bless() {
        fs::write(&path, &expected).unwrap();
    }
    let actual = fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        actual, expected,
        "{CHART_CRDS} is out of date: BLESS=1 rewrites it"
    );
}

use std::{collections::BTreeMap, path::PathBuf};

use mirrord_operator::coordinator::policy::eval::{
    self, Destination, FileDecision, FileOp, HttpFilterRequest, IncomingMode, NamedPolicy,
    PolicyKind, TargetInfo,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// One policy object of a case; `spec` stays raw so that malformed ones are reported, not fatal.
#[derive(Deserialize)]
struct RawPolicy {
    kind: PolicyKind,
    #[serde(default)]
    namespace: Option<String>,
    name: String,
    spec: Value,
}

/// What a session asks for, one per line of the expected output.
#[derive(Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
enum Request {
    Connect {
        profile: Option<String>,
    },
    Incoming {
        mode: IncomingMode,
        port: u16,
        #[serde(default)]
        filter: Option<HttpFilterRequest>,
    },
    Env(String),
    File {
        path: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        write: bool,
        /// What the request does; absent: an open (for writing when `write`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        op: Option<FileOp>,
    },
    Outgoing(Destination),
}

#[derive(Deserialize)]
struct Case {
    policies: Vec<RawPolicy>,
    target: TargetInfo,
    requests: Vec<Request>,
}

fn verdict(result: Result<(), eval::Refusal>) -> Value {
    match result {
        Ok(()) => json!("allowed"),
        Err(refusal) => json!({ "refused": refusal.to_string() }),
    }
}

/// Everything the evaluation makes of one case, as the expected file holds it.
fn run_case(case: Case) -> Value {
    let mut malformed = BTreeMap::new();
    let mut policies = Vec::new();
    for raw in case.policies {
        match serde_json::from_value(raw.spec) {
            Ok(spec) => policies.push(NamedPolicy {
                reference: eval::PolicyRef {
                    kind: raw.kind,
                    namespace: raw.namespace,
                    name: raw.name,
                },
                spec,
            }),
            Err(e) => {
                malformed.insert(raw.name, e.to_string());
            }
        }
    }
    let applicable = eval::applicable(&policies, &case.target);
    let decisions: Vec<Value> = case
        .requests
        .iter()
        .map(|request| {
            let decision = match request {
                Request::Connect { profile } => {
                    verdict(eval::check_connect(&applicable, profile.as_deref()))
                }
                Request::Incoming { mode, port, filter } => verdict(eval::check_incoming(
                    &applicable,
                    *mode,
                    *port,
                    filter.as_ref(),
                )),
                Request::Env(name) => match eval::env_excluded(&applicable, name) {
                    None => json!("allowed"),
                    Some(p) => json!({ "excluded": p.to_string() }),
                },
                Request::File { path, write, op } => {
                    let op = op.unwrap_or(if *write {
                        FileOp::OpenWrite
                    } else {
                        FileOp::Open
                    });
                    match eval::check_file(&applicable, path, op) {
                        FileDecision::Remote => json!("remote"),
                        FileDecision::NotFound(p) => json!({ "notFound": p.to_string() }),
                        FileDecision::Local(p) => json!({ "local": p.to_string() }),
                        FileDecision::Refused(r) => json!({ "refused": r.to_string() }),
                    }
                }
                Request::Outgoing(dest) => verdict(eval::check_outgoing(&applicable, dest)),
            };
            json!({ "request": request, "decision": decision })
        })
        .collect();
    json!({
        "malformed": malformed,
        "applicable": applicable.iter().map(|p| p.reference.to_string()).collect::<Vec<_>>(),
        "notApplicable": eval::not_applicable(&applicable)
            .into_iter()
            .map(|(p, b)| format!("{p}: block {}", b.as_str()))
            .collect::<Vec<_>>(),
        "decisions": decisions,
    })
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/policies")
}

#[test]
fn fixtures_match_expectations() {
    let mut cases: Vec<PathBuf> = fs::read_dir(data_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "the fixture table is missing");
    let mut failures = Vec::new();
    for dir in cases {
        let case: Case = serde_json::from_str(&fs::read_to_string(dir.join("case.json")).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let text = serde_json::to_string_pretty(&run_case(case)).unwrap() + "\n";
        let expected = dir.join("expected.json");
        if bless() {
            fs::write(&expected, &text).unwrap();
        } else if fs::read_to_string(&expected).unwrap_or_default() != text {
            failures.push(format!(
                "{}: differs (BLESS=1 rewrites it)\n{text}",
                dir.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
