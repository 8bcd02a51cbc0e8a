//! Can one message match two filters? Decided on the regexes, not by sampling.
//!
//! Header values are independent, so two filters overlap exactly when, for every header either
//! names, some single value satisfies all the regexes given for that header (one or two). Each
//! such question is answered on unanchored DFAs (regex-automata): the breadth-first walk of the
//! product automaton shared with the HTTP filter check (`coordinator::overlap`) looks for a byte
//! string on which every DFA reaches a match. The walk is over
//! bytes, not only valid UTF-8, so it can only over-report overlap (refuse a pair that would in
//! fact be disjoint on text), never miss one. Regexes a DFA cannot express (Unicode word
//! boundaries) or a product too large to walk give [`Overlap::Undecided`], which callers refuse.

use std::collections::BTreeMap;
use std::fmt;

use regex_automata::dfa::{StartKind, dense};

use super::filter::MessageFilter;
use crate::coordinator::overlap::{Leaf, Product, Run, representatives, shortest};

/// Bounds on the work one decision may do (filters come from developers' configs).
const DFA_SIZE_LIMIT: usize = 4 << 20;
const MAX_PRODUCT_STATES: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlap {
    Disjoint,
    /// A message that matches both: header -> value.
    Overlapping(Witness),
    Undecided(String),
}

/// Header values of a message matching both filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness(pub BTreeMap<String, Vec<u8>>);

impl fmt::Display for Witness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (header, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{header}={:?}", String::from_utf8_lossy(value))?;
        }
        Ok(())
    }
}

pub fn filters_overlap(a: &MessageFilter, b: &MessageFilter) -> Overlap {
    // An empty filter matches no message at all.
    if a.rules.is_empty() || b.rules.is_empty() {
        return Overlap::Disjoint;
    }
    let mut per_header: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for rule in a.rules.iter().chain(&b.rules) {
        per_header
            .entry(rule.header.as_str())
            .or_default()
            .push(rule.pattern.as_str());
    }
    let mut witness = BTreeMap::new();
    for (header, patterns) in per_header {
        match common_match(&patterns) {
            Ok(Some(value)) => {
                witness.insert(header.to_owned(), value);
            }
            Ok(None) => return Overlap::Disjoint,
            Err(reason) => return Overlap::Undecided(format!("header {header:?}: {reason}")),
        }
    }
    Overlap::Overlapping(Witness(witness))
}

/// A shortest byte string that every pattern matches somewhere in (unanchored), if any.
pub fn common_match(patterns: &[&str]) -> Result<Option<Vec<u8>>, String> {
    let leaves = patterns
        .iter()
        .map(|p| {
            let dfa = dense::Builder::new()
                .configure(
                    dense::Config::new()
                        .start_kind(StartKind::Unanchored)
                        .dfa_size_limit(Some(DFA_SIZE_LIMIT))
                        .determinize_size_limit(Some(DFA_SIZE_LIMIT)),
                )
                .build(p)
                .map_err(|e| format!("regex {p:?} has no DFA: {e}"))?;
            Leaf::new(dfa).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Any byte may occur in a header value; one per tuple of the DFAs' byte classes suffices.
    let bytes = representatives(0..=255u8, |b| {
        leaves.iter().map(|l| l.class(b)).collect::<Vec<_>>()
    });
    let start = leaves.iter().map(Leaf::start).collect();
    // The walk counts the start state too.
    let mut budget = MAX_PRODUCT_STATES - 1;
    shortest(&AllMatch(&leaves), start, &bytes, &mut budget)
        .map_err(|_| format!("more than {MAX_PRODUCT_STATES} combined automaton states"))
}

/// Texts on which every leaf matches.
struct AllMatch<'a>(&'a [Leaf]);

impl Product for AllMatch<'_> {
    type Node = Vec<Run>;

    fn accepts(&self, runs: &Vec<Run>) -> bool {
        runs.iter().zip(self.0).all(|(&run, leaf)| leaf.finish(run))
    }

    fn next(&self, runs: &Vec<Run>, byte: u8) -> Option<Vec<Run>> {
        // A leaf that can no longer match sinks the whole branch.
        runs.iter()
            .zip(self.0)
            .map(|(&run, leaf)| match leaf.step(run, byte) {
                Run::Miss => None,
                run => Some(run),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex_automata::meta::Regex;

    fn both(a: &str, b: &str) -> Option<Vec<u8>> {
        common_match(&[a, b]).unwrap()
    }

    #[test]
    fn decides_classic_pairs() {
        assert_eq!(both("^alice$", "^bob$"), None);
        assert_eq!(both("^a", "^b"), None);
        assert!(both("^a", "z$").is_some());
        assert!(both("a", "b").is_some()); // "ab" contains both
        assert_eq!(both("^[0-9]+$", "^[a-z]+$"), None);
        assert!(both("^[0-9]+$", "^1").is_some());
        assert_eq!(both("^(foo|bar)$", "^baz$"), None);
        assert!(both("^(foo|bar)$", "^ba").is_some());
        // Can never match: disjoint with anything.
        assert_eq!(common_match(&["[^\\s\\S]"]).unwrap(), None);
        assert_eq!(both("", "^$"), Some(vec![]));
    }

    #[test]
    fn witness_matches_both_patterns() {
        for (a, b) in [("^a.*z$", "q"), ("^[a-c]{3}$", "bb"), ("x\\d", "\\dy")] {
            let w = both(a, b).unwrap();
            let text = String::from_utf8(w).unwrap();
            assert!(Regex::new(a).unwrap().is_match(&text), "{a} {text:?}");
            assert!(Regex::new(b).unwrap().is_match(&text), "{b} {text:?}");
        }
    }

    #[test]
    fn unicode_word_boundary_is_undecided() {
        assert!(common_match(&["\\bx\\b", "x"]).is_err());
    }
}
