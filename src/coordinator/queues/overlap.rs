//! Can one message match two filters? Decided on the regexes, not by sampling.
//!
//! Header values are independent, so two filters overlap exactly when, for every header either
//! names, some single value satisfies all the regexes given for that header (one or two). Each
//! such question is answered on unanchored DFAs (regex-automata): a breadth-first walk of the
//! product automaton looks for a byte string on which every DFA reaches a match. The walk is over
//! bytes, not only valid UTF-8, so it can only over-report overlap (refuse a pair that would in
//! fact be disjoint on text), never miss one. Regexes a DFA cannot express (Unicode word
//! boundaries) or a product too large to walk give [`Overlap::Undecided`], which callers refuse.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

use regex_automata::{
    Anchored,
    dfa::{Automaton, StartKind, dense},
    util::{primitives::StateID, start},
};

use super::filter::MessageFilter;

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
    let dfas = patterns
        .iter()
        .map(|p| {
            dense::Builder::new()
                .configure(
                    dense::Config::new()
                        .start_kind(StartKind::Unanchored)
                        .dfa_size_limit(Some(DFA_SIZE_LIMIT))
                        .determinize_size_limit(Some(DFA_SIZE_LIMIT)),
                )
                .build(p)
                .map_err(|e| format!("regex {p:?} has no DFA: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let start_config = start::Config::new().anchored(Anchored::No);
    let start = dfas
        .iter()
        .map(|d| {
            d.start_state(&start_config)
                .map(Some)
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;

    // A component becomes `None` once its DFA has matched: for "matches somewhere", a match stays a
    // match whatever follows, so its state no longer matters.
    type Node = Vec<Option<StateID>>;
    let mut seen: HashMap<Node, Option<(usize, u8)>> = HashMap::new();
    let mut order: Vec<Node> = Vec::new();
    let mut queue = VecDeque::new();
    seen.insert(start.clone(), None);
    order.push(start.clone());
    queue.push_back(0usize);
    let path_to = |mut at: usize, order: &[Node], seen: &HashMap<Node, Option<(usize, u8)>>| {
        let mut bytes = Vec::new();
        while let Some(Some((parent, byte))) = seen.get(&order[at]) {
            bytes.push(*byte);
            at = *parent;
        }
        bytes.reverse();
        bytes
    };
    while let Some(at) = queue.pop_front() {
        let node = order[at].clone();
        // Does ending the text here complete every pending match?
        let all_at_end = node.iter().zip(&dfas).all(|(state, dfa)| match state {
            None => true,
            Some(s) => dfa.is_match_state(dfa.next_eoi_state(*s)),
        });
        if all_at_end {
            return Ok(Some(path_to(at, &order, &seen)));
        }
        // Bytes that every DFA treats alike give the same successor: try one per class tuple.
        let mut tried: Vec<Vec<u8>> = Vec::new();
        for byte in 0..=255u8 {
            let classes: Vec<u8> = dfas.iter().map(|d| d.byte_classes().get(byte)).collect();
            if tried.contains(&classes) {
                continue;
            }
            tried.push(classes);
            let mut next = Vec::with_capacity(node.len());
            let mut dead = false;
            for (state, dfa) in node.iter().zip(&dfas) {
                next.push(match state {
                    None => None,
                    Some(s) => {
                        let n = dfa.next_state(*s, byte);
                        if dfa.is_match_state(n) {
                            None
                        } else if dfa.is_dead_state(n) || dfa.is_quit_state(n) {
                            dead = true;
                            break;
                        } else {
                            Some(n)
                        }
                    }
                });
            }
            if dead || seen.contains_key(&next) {
                continue;
            }
            if seen.len() >= MAX_PRODUCT_STATES {
                return Err(format!(
                    "more than {MAX_PRODUCT_STATES} combined automaton states"
                ));
            }
            seen.insert(next.clone(), Some((at, byte)));
            order.push(next);
            queue.push_back(order.len() - 1);
        }
    }
    Ok(None)
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
