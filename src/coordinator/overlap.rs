//! The search both overlap checks share (HTTP filters in [`super::filters`], queue message
//! filters in [`super::queues::overlap`]): is there a text on which several regexes all match,
//! and which is a shortest one? Pure: no I/O.
//!
//! Each regex is a dense DFA searching anywhere in a text (a [`Leaf`]); a caller describes the
//! product it walks (the leaves' runs, plus whatever constrains the text, such as a grammar) as a
//! [`Product`], and [`shortest`] walks it breadth-first over a few representative bytes, so the
//! first accepting node gives a shortest text. Every new node spends one unit of a caller-owned
//! budget, so one decision stays bounded however many searches it makes.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use regex_automata::Anchored;
use regex_automata::dfa::{Automaton, StartError, dense};
use regex_automata::util::{primitives::StateID, start};

/// A regex compiled to a dense DFA searching anywhere in a text.
pub(crate) struct Leaf {
    dfa: dense::DFA<Vec<u32>>,
    start: StateID,
}

/// Progress of one leaf over one text. A match is final: "matches somewhere" stays true whatever
/// follows, so a run that has matched no longer needs its DFA state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Run {
    At(StateID),
    Hit,
    Miss,
}

impl Leaf {
    /// `dfa` must have been built with an unanchored start kind.
    pub(crate) fn new(dfa: dense::DFA<Vec<u32>>) -> Result<Leaf, StartError> {
        let start = dfa.start_state(&start::Config::new().anchored(Anchored::No))?;
        Ok(Leaf { dfa, start })
    }

    pub(crate) fn start(&self) -> Run {
        Run::At(self.start)
    }

    pub(crate) fn step(&self, run: Run, byte: u8) -> Run {
        let Run::At(state) = run else { return run };
        let next = self.dfa.next_state(state, byte);
        if self.dfa.is_match_state(next) || self.dfa.is_quit_state(next) {
            // A quit state (only from the Unicode word boundary heuristic, on a non-ASCII byte):
            // assuming a match is the safe side for an overlap check.
            Run::Hit
        } else if self.dfa.is_dead_state(next) {
            Run::Miss
        } else {
            Run::At(next)
        }
    }

    /// Whether the text matches when it ends here.
    pub(crate) fn finish(&self, run: Run) -> bool {
        match run {
            Run::Hit => true,
            Run::Miss => false,
            Run::At(state) => self.dfa.is_match_state(self.dfa.next_eoi_state(state)),
        }
    }

    /// The DFA's equivalence class of `byte`: bytes of one class move every state alike.
    pub(crate) fn class(&self, byte: u8) -> u8 {
        self.dfa.byte_classes().get(byte)
    }
}

/// One byte per distinct `signature`, the first in `alphabet` order (so callers put the bytes
/// they would rather show first). Bytes with equal signatures must give equal successors in the
/// caller's product, so the walk branches on classes instead of on every byte.
pub(crate) fn representatives<S: Eq + Hash>(
    alphabet: impl IntoIterator<Item = u8>,
    mut signature: impl FnMut(u8) -> S,
) -> Vec<u8> {
    let mut seen = std::collections::HashSet::new();
    alphabet
        .into_iter()
        .filter(|&b| seen.insert(signature(b)))
        .collect()
}

/// The automaton [`shortest`] walks.
pub(crate) trait Product {
    type Node: Clone + Eq + Hash;
    /// Whether a text ending at `node` is an answer.
    fn accepts(&self, node: &Self::Node) -> bool;
    /// The node after `byte`, or `None` when no answer can continue that way.
    fn next(&self, node: &Self::Node, byte: u8) -> Option<Self::Node>;
}

/// The walk visited more new nodes than its budget allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OverBudget;

/// A shortest text from `start` over `bytes` that `product` accepts (ties go to the earlier
/// byte in `bytes`), or `None` when there is none. Each node visited besides `start` takes one
/// from `budget`.
pub(crate) fn shortest<P: Product>(
    product: &P,
    start: P::Node,
    bytes: &[u8],
    budget: &mut usize,
) -> Result<Option<Vec<u8>>, OverBudget> {
    // Each node's parent and the byte leading from it; `order` gives nodes an index.
    let mut seen: HashMap<P::Node, Option<(usize, u8)>> = HashMap::new();
    let mut order: Vec<P::Node> = Vec::new();
    let mut queue = VecDeque::new();
    seen.insert(start.clone(), None);
    order.push(start);
    queue.push_back(0usize);
    while let Some(index) = queue.pop_front() {
        let node = order[index].clone();
        if product.accepts(&node) {
            let mut text = Vec::new();
            let mut at = index;
            while let Some(Some((parent, byte))) = seen.get(&order[at]) {
                text.push(*byte);
                at = *parent;
            }
            text.reverse();
            return Ok(Some(text));
        }
        for &b in bytes {
            let Some(next) = product.next(&node, b) else {
                continue;
            };
            if seen.contains_key(&next) {
                continue;
            }
            *budget = budget.checked_sub(1).ok_or(OverBudget)?;
            seen.insert(next.clone(), Some((index, b)));
            order.push(next);
            queue.push_back(order.len() - 1);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex_automata::dfa::StartKind;

    /// Texts over `{a, b}` with an even number of `a`s ending in `b`.
    struct EvenAsThenB;

    impl Product for EvenAsThenB {
        type Node = (bool, bool);
        fn accepts(&self, &(odd, last_b): &(bool, bool)) -> bool {
            !odd && last_b
        }
        fn next(&self, &(odd, _): &(bool, bool), byte: u8) -> Option<(bool, bool)> {
            match byte {
                b'a' => Some((!odd, false)),
                b'b' => Some((odd, true)),
                _ => None,
            }
        }
    }

    #[test]
    fn finds_a_shortest_text_and_spends_the_budget() {
        let mut budget = 100;
        let found = shortest(&EvenAsThenB, (false, false), b"abc", &mut budget).unwrap();
        assert_eq!(found, Some(b"b".to_vec()));
        assert!(budget < 100);
        let mut budget = 100;
        let found = shortest(&EvenAsThenB, (true, false), b"ab", &mut budget).unwrap();
        assert_eq!(found, Some(b"ab".to_vec()));
        // No `b` to end with: nothing, after the finite product is exhausted.
        assert_eq!(
            shortest(&EvenAsThenB, (false, false), b"a", &mut 100),
            Ok(None)
        );
        assert_eq!(
            shortest(&EvenAsThenB, (true, false), b"ab", &mut 0),
            Err(OverBudget)
        );
    }

    #[test]
    fn representatives_keep_the_first_of_each_signature() {
        assert_eq!(
            representatives(b"zay1b2".iter().copied(), |b| b.is_ascii_digit()),
            b"z1".to_vec()
        );
    }

    #[test]
    fn leaf_runs_stick_once_matched() {
        let dfa = dense::Builder::new()
            .configure(dense::Config::new().start_kind(StartKind::Unanchored))
            .build("ab")
            .unwrap();
        let leaf = Leaf::new(dfa).unwrap();
        let mut run = leaf.start();
        for &b in b"xab" {
            run = leaf.step(run, b);
        }
        assert!(leaf.finish(run));
        // Bytes after the match keep it.
        assert!(leaf.finish(leaf.step(run, b'z')));
        assert!(!leaf.finish(leaf.step(leaf.start(), b'a')));
    }
}
