//! SQS filters on bytes from the network (proptest): message bodies never panic the jq filter
//! (deeply nested JSON included), connect parameters never panic their parser, and a pair of
//! filters the overlap check calls disjoint is never matched by one sampled message.

use std::collections::BTreeMap;

use mirrord_operator::coordinator::queues::{
    filter::SplitFilter, overlap::Overlap, sessions::parse_sqs_splits, sqs_filter::SqsFilter,
};
use proptest::prelude::*;

const PROGRAMS: [&str; 4] = [
    ".vip",
    ".n > 3",
    ".items[] | select(.sku | test(\"^X\"))",
    ".a.b",
];

fn filter(attr: Option<&str>, jq: Option<&str>) -> SqsFilter {
    let attributes: BTreeMap<String, String> = attr
        .map(|r| [("tenant".to_owned(), r.to_owned())].into())
        .unwrap_or_default();
    SqsFilter::new(&attributes, jq).unwrap()
}

#[test]
fn deeply_nested_bodies_do_not_overflow_the_stack() {
    let f = filter(None, Some(".a"));
    for open in ["[", "{\"a\":"] {
        let body = open.repeat(200_000);
        assert!(!f.matches(|_: &str| None::<&str>, body.as_bytes()));
    }
}

proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512), p in 0..PROGRAMS.len()) {
        let f = filter(Some("a"), Some(PROGRAMS[p]));
        let _ = f.matches(|_: &str| Some("a"), &body);
    }

    #[test]
    fn json_like_bodies_never_panic(body in "[\\[\\]{}\":,0-9a-z. -]{0,200}", p in 0..PROGRAMS.len()) {
        let f = filter(None, Some(PROGRAMS[p]));
        let _ = f.matches(|_: &str| None::<&str>, body.as_bytes());
    }

    #[test]
    fn connect_parameters_never_panic(a in ".{0,100}", b in ".{0,100}") {
        let _ = parse_sqs_splits(Some(&a), Some(&b));
    }

    #[test]
    fn disjoint_is_never_contradicted(
        ra in prop::sample::select(vec!["^a", "^b$", "b", "^[ab]+$", "c$"]),
        rb in prop::sample::select(vec!["^a", "^b$", "b", "^[ab]+$", "c$"]),
        ja in prop::option::of(0..PROGRAMS.len()),
        jb in prop::option::of(0..PROGRAMS.len()),
        tenant in "[abc]{0,4}",
        vip in any::<bool>(),
        n in 0..6u32,
    ) {
        let a = filter(Some(ra), ja.map(|i| PROGRAMS[i]));
        let b = filter(Some(rb), jb.map(|i| PROGRAMS[i]));
        if a.overlap(&b) == Overlap::Disjoint {
            let body = format!(r#"{{"vip":{vip},"n":{n},"a":{{"b":1}},"items":[{{"sku":"X1"}}]}}"#);
            let attr = |_: &str| Some(tenant.as_str());
            prop_assert!(!(a.matches(attr, body.as_bytes()) && b.matches(attr, body.as_bytes())));
        }
    }
}
