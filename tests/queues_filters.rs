//! Properties of the queue filters: the overlap decision agrees with the regexes themselves, and
//! the router sends every message to exactly one destination.

use std::collections::BTreeMap;

use mirrord_operator::coordinator::queues::{
    filter::{Destination, MessageFilter, Router},
    overlap::{Overlap, common_match, filters_overlap},
};
use proptest::prelude::*;
use regex_automata::meta::Regex;

/// Small regexes over a tiny alphabet, so that random pairs overlap about as often as not.
fn small_regex() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("c".to_owned()),
        Just("[ab]".to_owned()),
        Just("[^a]".to_owned()),
        Just(".".to_owned()),
        Just("\\d".to_owned()),
        Just("1".to_owned()),
    ];
    let piece = (atom, prop_oneof![Just(""), Just("*"), Just("+"), Just("?")])
        .prop_map(|(a, q)| format!("{a}{q}"));
    (
        any::<bool>(),
        prop::collection::vec(piece, 1..4),
        any::<bool>(),
        prop::option::of(prop::collection::vec("[abc1]", 1..3)),
    )
        .prop_map(|(start, pieces, end, alt)| {
            let body = pieces.concat();
            let body = match alt {
                Some(alt) => format!("(?:{body}|{})", alt.concat()),
                None => body,
            };
            format!(
                "{}{body}{}",
                if start { "^" } else { "" },
                if end { "$" } else { "" }
            )
        })
}

fn text() -> impl Strategy<Value = String> {
    "[abc1 ]{0,6}"
}

fn filter(pairs: &[(&str, &str)]) -> MessageFilter {
    MessageFilter::new(
        &pairs
            .iter()
            .map(|(h, r)| (h.to_string(), r.to_string()))
            .collect(),
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// A reported common match really matches both; a "no common match" answer is never
    /// contradicted by a sampled text.
    #[test]
    fn common_match_agrees_with_the_regexes(a in small_regex(), b in small_regex(), samples in prop::collection::vec(text(), 32)) {
        let (ra, rb) = (Regex::new(&a).unwrap(), Regex::new(&b).unwrap());
        match common_match(&[&a, &b]).unwrap() {
            Some(witness) => {
                // Over bytes: the witness may be any bytes, and the regexes (UTF-8 mode) are
                // run on them as bytes here.
                let w = regex_automata::Input::new(&witness);
                prop_assert!(ra.is_match(w.clone()), "{a:?} does not match witness {witness:?}");
                prop_assert!(rb.is_match(w), "{b:?} does not match witness {witness:?}");
            }
            None => {
                for s in &samples {
                    prop_assert!(!(ra.is_match(s) && rb.is_match(s)), "{a:?} and {b:?} both match {s:?}");
                }
            }
        }
    }

    /// With filters the router accepted, every message has exactly one destination, and it is the
    /// one whose filter matches (or the output queue when none does).
    #[test]
    fn accepted_filters_route_each_message_once(
        filters in prop::collection::vec((small_regex(), prop::option::of(small_regex())), 1..5),
        messages in prop::collection::vec((prop::option::of(text()), prop::option::of(text())), 1..40),
    ) {
        let mut router = Router::default();
        let mut accepted = Vec::new();
        for (i, (tenant, kind)) in filters.iter().enumerate() {
            let mut map = BTreeMap::from([("tenant".to_owned(), tenant.clone())]);
            if let Some(kind) = kind {
                map.insert("kind".to_owned(), kind.clone());
            }
            let compiled = MessageFilter::new(&map).unwrap();
            if router.add(i, compiled.clone()).is_ok() {
                accepted.push((i, compiled));
            }
        }
        for (tenant, kind) in &messages {
            let header = |name: &str| match name {
                "tenant" => tenant.as_deref(),
                "kind" => kind.as_deref(),
                _ => None,
            };
            let matching: Vec<usize> = accepted.iter().filter(|(_, f)| f.matches(header)).map(|(i, _)| *i).collect();
            prop_assert!(matching.len() <= 1, "message {tenant:?}/{kind:?} matches sessions {matching:?}");
            let expected = matching.first().map_or(Destination::Output, Destination::Session);
            prop_assert_eq!(router.route(header), expected);
        }
    }

    /// Compiling arbitrary text as a filter never panics: it is a filter or a clear error.
    #[test]
    fn any_pattern_compiles_or_errors(pattern in ".{0,40}") {
        match MessageFilter::new(&BTreeMap::from([("h".to_owned(), pattern.clone())])) {
            Ok(f) => { let _ = filters_overlap(&f, &f); }
            Err(e) => prop_assert!(e.to_string().contains("invalid regex")),
        }
    }
}

#[test]
fn overlap_needs_every_header_satisfiable() {
    // Shared header disjoint: no overlap whatever the other headers say.
    assert_eq!(
        filters_overlap(
            &filter(&[("tenant", "^a$"), ("kind", "x")]),
            &filter(&[("tenant", "^b$")])
        ),
        Overlap::Disjoint
    );
    // A header only one filter names must still be satisfiable.
    assert_eq!(
        filters_overlap(
            &filter(&[("tenant", "^a$"), ("kind", "[^\\s\\S]")]),
            &filter(&[("tenant", "a")])
        ),
        Overlap::Disjoint
    );
    let Overlap::Overlapping(witness) = filters_overlap(
        &filter(&[("tenant", "^a"), ("kind", "^new$")]),
        &filter(&[("tenant", "z$")]),
    ) else {
        panic!("these overlap");
    };
    let text = witness.to_string();
    assert!(text.contains("kind=\"new\""), "{text}");
    assert!(text.contains("tenant="), "{text}");
    // An empty filter matches nothing, so it overlaps nothing.
    assert_eq!(
        filters_overlap(&filter(&[]), &filter(&[("tenant", "")])),
        Overlap::Disjoint
    );
}
