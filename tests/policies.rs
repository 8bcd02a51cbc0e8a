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
