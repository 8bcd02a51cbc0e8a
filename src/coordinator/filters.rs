//! Filter assignment, decided on the filters themselves (issue 12 §4). Pure: no I/O.
//!
//! [`overlap`] answers whether two HTTP filters (the protocol's [`HttpFilter`], with the agent's
//! matching semantics from `agent::incoming::filter`) can match **the same request**, with an
//! example request when they can. [`decide`] applies the per-port concurrency rules of steal and
//! mirror subscriptions on top of it.
//!
//! How overlap is decided: a request is a method, one URI (path and optional query) and a set of
//! header lines (`name: value`, lowercase name). The filter language has no negation, so a filter
//! is a disjunction of clauses (its DNF), each clause a conjunction of header leaves, path leaves
//! and methods. Two filters overlap iff some clause of one together with some clause of the other
//! is satisfiable:
//! * methods: all equal ignoring ASCII case (and a valid token);
//! * header leaves: each on its own (a request may carry one header line per leaf), i.e. the
//!   leaf's regex (unanchored search, case-insensitive) accepts some valid header line;
//! * path leaves: **jointly**, on one URI: a breadth-first search over the product of every leaf's
//!   dense DFA (run on the path, and on path + query as the agent does) and a small automaton of
//!   the URIs the `http` crate accepts. The first accepting product state gives the shortest
//!   example. (The walk and the leaves are shared with queue filters: `coordinator::overlap`.)
//!
//! The search is bounded (DFA sizes, clause count, product states); a regex the DFA engine cannot
//! express (look-around, back-references) or an exceeded budget gives
//! [`Overlap::Undecided`], which callers treat as overlapping (refuse rather than risk one request
//! going to two sessions).

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;
use std::sync::LazyLock;
use std::time::SystemTime;

use regex_automata::MatchKind;
use regex_automata::dfa::{StartKind, dense};
use regex_automata::util::syntax;

use super::overlap::{Leaf, Product, Run, representatives, shortest};
use crate::protocol::HttpFilter;

/// Most product states one decision may visit before giving up.
pub const STATE_BUDGET: usize = 200_000;
/// Most clauses a filter's DNF may have.
pub const MAX_CLAUSES: usize = 256;
/// Memory one leaf's DFA may use.
const DFA_SIZE_LIMIT: usize = 2 << 20;
/// Most distinct header conditions in one alternative (their groupings are enumerated).
const MAX_HEADER_LEAVES: usize = 5;
/// Longest regex source compiled into a DFA.
const MAX_REGEX_LEN: usize = 4096;

/// A request both filters match (what the refusal message shows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExampleRequest {
    pub method: String,
    /// Path and query, as in the request line.
    pub path_and_query: String,
    /// `(name, value)`, name lowercase.
    pub headers: Vec<(String, String)>,
}

impl fmt::Display for ExampleRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path_and_query)?;
        for (name, value) in &self.headers {
            write!(f, " [{name}: {value}]")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlap {
    /// Proved: no request matches both.
    Disjoint,
    /// Both filters match this request.
    Overlapping(ExampleRequest),
    /// Not decided (why); treat as overlapping.
    Undecided(String),
}

/// Decides whether `a` and `b` can match the same request.
pub fn overlap(a: &HttpFilter, b: &HttpFilter) -> Overlap {
    let (ca, cb) = match (dnf(a), dnf(b)) {
        (Ok(ca), Ok(cb)) => (ca, cb),
        (Err(why), _) | (_, Err(why)) => return Overlap::Undecided(why),
    };
    let mut solver = Solver::default();
    let mut undecided = None;
    for x in &ca {
        for y in &cb {
            match solver.clause(&x.join(y)) {
                Ok(Some(example)) => return Overlap::Overlapping(example),
                Ok(None) => {}
                Err(why) => {
                    undecided.get_or_insert(why);
                }
            }
        }
    }
    undecided.map_or(Overlap::Disjoint, Overlap::Undecided)
}

/// Whether one filter can match any request at all (with an example).
pub fn satisfiable(filter: &HttpFilter) -> Overlap {
    overlap(
        filter,
        &HttpFilter::Composite {
            all: true,
            filters: vec![],
        },
    )
}

/// One conjunction of leaves.
#[derive(Debug, Clone, Default)]
struct Clause {
    headers: Vec<String>,
    paths: Vec<String>,
    methods: Vec<String>,
}

impl Clause {
    fn join(&self, other: &Clause) -> Clause {
        let mut joined = self.clone();
        joined.headers.extend(other.headers.iter().cloned());
        joined.paths.extend(other.paths.iter().cloned());
        joined.methods.extend(other.methods.iter().cloned());
        joined
    }
}

fn dnf(filter: &HttpFilter) -> Result<Vec<Clause>, String> {
    let leaf = |f: fn(&mut Clause) -> &mut Vec<String>, text: &str| {
        let mut clause = Clause::default();
        f(&mut clause).push(text.to_owned());
        Ok(vec![clause])
    };
    match filter {
        HttpFilter::Header(re) => leaf(|c| &mut c.headers, &re.0),
        HttpFilter::Path(re) => leaf(|c| &mut c.paths, &re.0),
        HttpFilter::Method(m) => leaf(|c| &mut c.methods, m.as_str()),
        HttpFilter::Composite {
            all: false,
            filters,
        } => {
            let mut out = Vec::new();
            for f in filters {
                out.extend(dnf(f)?);
                if out.len() > MAX_CLAUSES {
                    return Err(format!("more than {MAX_CLAUSES} alternatives"));
                }
            }
            Ok(out)
        }
        HttpFilter::Composite { all: true, filters } => {
            let mut out = vec![Clause::default()];
            for f in filters {
                let alternatives = dnf(f)?;
                if out.len() * alternatives.len() > MAX_CLAUSES {
                    return Err(format!("more than {MAX_CLAUSES} alternatives"));
                }
                out = out
                    .iter()
                    .flat_map(|x| alternatives.iter().map(move |y| x.join(y)))
                    .collect();
            }
            Ok(out)
        }
        HttpFilter::Body(_) => Err("JSON body filters are not compared".into()),
        HttpFilter::HeaderJq(_) => Err("jq header filters are not compared".into()),
    }
}

/// A leaf's regex as the agent matches it (case-insensitive, anywhere in the text).
fn compile(source: &str) -> Result<Leaf, String> {
    if source.len() > MAX_REGEX_LEN {
        return Err(format!("regex longer than {MAX_REGEX_LEN} bytes"));
    }
    let build = |unicode: bool| {
        dense::Builder::new()
            .configure(
                dense::Config::new()
                    .match_kind(MatchKind::All)
                    .start_kind(StartKind::Unanchored)
                    // Texts are ASCII, where the heuristic is exact.
                    .unicode_word_boundary(true)
                    .dfa_size_limit(Some(DFA_SIZE_LIMIT))
                    .determinize_size_limit(Some(DFA_SIZE_LIMIT)),
            )
            .syntax(
                syntax::Config::new()
                    .case_insensitive(true)
                    .unicode(unicode)
                    .utf8(unicode),
            )
            .build(source)
            .map_err(|e| format!("regex {source:?} is beyond the overlap checker: {e}"))
    };
    let dfa = build(true).or_else(|_| build(false))?;
    Leaf::new(dfa).map_err(|e| format!("regex {source:?}: {e}"))
}

/// Byte categories of the URI automaton, probed from the `http` crate (what the agent parses).
struct UriAlphabet {
    path: [bool; 256],
    query: [bool; 256],
}

static URI_ALPHABET: LazyLock<UriAlphabet> = LazyLock::new(|| {
    let mut alphabet = UriAlphabet {
        path: [false; 256],
        query: [false; 256],
    };
    for b in 0..=255u8 {
        if b == b'?' || b == b'#' {
            continue;
        }
        let path = [b'/', b'a', b, b'z'];
        alphabet.path[b as usize] = http::uri::PathAndQuery::try_from(&path[..])
            .is_ok_and(|pq| pq.path().as_bytes() == path && pq.query().is_none());
        let query = [b'/', b'?', b'a', b, b'z'];
        alphabet.query[b as usize] = http::uri::PathAndQuery::try_from(&query[..])
            .is_ok_and(|pq| pq.query().map(str::as_bytes) == Some(&query[2..]));
    }
    alphabet.query[b'?' as usize] = true;
    alphabet
});

/// Nicer example bytes first.
fn preference(b: u8) -> (u8, u8) {
    let rank = match b {
        b'a'..=b'z' => 0,
        b'0'..=b'9' => 1,
        b'-' | b'_' | b'.' => 2,
        b'A'..=b'Z' => 3,
        _ => 4,
    };
    (rank, b)
}

/// A search problem: a small "grammar" automaton over bytes times leaf runs.
trait Grammar {
    /// Next grammar state, or `None` when `byte` is not allowed here.
    fn next(&self, state: u8, byte: u8) -> Option<u8>;
    fn accepting(&self, state: u8) -> bool;
    /// Bytes the grammar may ever take.
    fn alphabet(&self) -> Vec<u8>;
}

struct HeaderLine;

fn tchar(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Grammar for HeaderLine {
    // 0 name start, 1 name, 2 after ':', 3 value start, 4 after a visible char, 5 after blanks.
    fn next(&self, state: u8, b: u8) -> Option<u8> {
        let visible = (0x21..=0x7e).contains(&b);
        let blank = b == b' ' || b == b'\t';
        match state {
            0 if tchar(b) => Some(1),
            1 if tchar(b) => Some(1),
            1 if b == b':' => Some(2),
            2 if b == b' ' => Some(3),
            3..=5 if visible => Some(4),
            4 | 5 if blank => Some(5),
            _ => None,
        }
    }

    fn accepting(&self, state: u8) -> bool {
        state == 3 || state == 4
    }

    fn alphabet(&self) -> Vec<u8> {
        (0x20..=0x7e).chain([b'\t']).collect()
    }
}

struct UriGrammar;

impl Grammar for UriGrammar {
    // 0 start, 1 path, 2 query.
    fn next(&self, state: u8, b: u8) -> Option<u8> {
        let alphabet = &*URI_ALPHABET;
        match state {
            0 if b == b'/' => Some(1),
            1 if b == b'?' => Some(2),
            1 if alphabet.path[b as usize] => Some(1),
            2 if alphabet.query[b as usize] => Some(2),
            _ => None,
        }
    }

    fn accepting(&self, state: u8) -> bool {
        state != 0
    }

    fn alphabet(&self) -> Vec<u8> {
        let alphabet = &*URI_ALPHABET;
        (0..=255u8)
            .filter(|&b| b == b'?' || alphabet.path[b as usize] || alphabet.query[b as usize])
            .collect()
    }
}

/// A node of the search: grammar state, and each leaf's runs (for path leaves: on the path,
/// settled at '?', then on path + query).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Node {
    grammar: u8,
    runs: Vec<(Run, Run)>,
    /// Header search: how much of each excluded name the name so far equals (`u16::MAX`: differs).
    excluded: Vec<u16>,
}

struct Solver {
    leaves: HashMap<String, Result<Rc<Leaf>, String>>,
    /// Product states the decision may still visit.
    budget: usize,
}

impl Default for Solver {
    fn default() -> Self {
        Solver {
            leaves: HashMap::new(),
            budget: STATE_BUDGET,
        }
    }
}

impl Solver {
    fn leaf(&mut self, source: &str) -> Result<Rc<Leaf>, String> {
        self.leaves
            .entry(source.to_owned())
            .or_insert_with(|| compile(source).map(Rc::new))
            .clone()
    }

    /// `Ok(Some(example))`: satisfiable; `Ok(None)`: not; `Err`: undecided.
    fn clause(&mut self, clause: &Clause) -> Result<Option<ExampleRequest>, String> {
        let method = match clause.methods.split_first() {
            None => "GET".to_owned(),
            Some((first, rest)) => {
                if rest.iter().any(|m| !m.eq_ignore_ascii_case(first))
                    || http::Method::from_bytes(first.as_bytes()).is_err()
                {
                    return Ok(None);
                }
                first.to_ascii_uppercase()
            }
        };
        let headers = match self.header_lines(&clause.headers)? {
            None => return Ok(None),
            Some(headers) => headers,
        };
        let path_and_query = if clause.paths.is_empty() {
            "/".to_owned()
        } else {
            let leaves = clause
                .paths
                .iter()
                .map(|s| self.leaf(s))
                .collect::<Result<Vec<_>, _>>()?;
            match self.search(&UriGrammar, &leaves, true, &[])? {
                None => return Ok(None),
                Some(uri) => uri,
            }
        };
        Ok(Some(ExampleRequest {
            method,
            path_and_query,
            headers,
        }))
    }

    /// Header lines satisfying every header leaf, one line per header name (a request that
    /// repeats a header with different values is not counted: the agent gives such a request to
    /// the earliest matching subscriber, so it never reaches two sessions). Leaves are grouped
    /// (every set partition); each group must hold on one line, and the groups' names must differ.
    fn header_lines(
        &mut self,
        sources: &[String],
    ) -> Result<Option<Vec<(String, String)>>, String> {
        let mut sources: Vec<&String> = sources.iter().collect();
        sources.sort();
        sources.dedup();
        if sources.is_empty() {
            return Ok(Some(Vec::new()));
        }
        if sources.len() > MAX_HEADER_LEAVES {
            return Err(format!(
                "more than {MAX_HEADER_LEAVES} header conditions in one alternative"
            ));
        }
        let leaves = sources
            .iter()
            .map(|s| self.leaf(s))
            .collect::<Result<Vec<_>, _>>()?;
        let mut undecided = None;
        for partition in partitions(leaves.len()) {
            let blocks: Vec<Vec<Rc<Leaf>>> = partition
                .iter()
                .map(|block| block.iter().map(|&i| leaves[i].clone()).collect())
                .collect();
            let mut excluded_failure = false;
            let mut impossible = false;
            'orders: for order in permutations(blocks.len()) {
                let mut lines: Vec<(String, String)> = Vec::new();
                for &b in &order {
                    let used: Vec<String> = lines.iter().map(|(n, _)| n.clone()).collect();
                    match self.search(&HeaderLine, &blocks[b], false, &used)? {
                        Some(line) => {
                            let (name, value) = line.split_once(": ").unwrap_or((&line, ""));
                            lines.push((name.to_owned(), value.to_owned()));
                        }
                        None if used.is_empty() => {
                            impossible = true;
                            break 'orders;
                        }
                        None => {
                            excluded_failure = true;
                            continue 'orders;
                        }
                    }
                }
                return Ok(Some(lines));
            }
            // Trying every order is exact for two groups; beyond that, stay on the safe side.
            if !impossible && excluded_failure && blocks.len() > 2 {
                undecided.get_or_insert_with(|| {
                    "header conditions could not be placed on distinct headers".to_owned()
                });
            }
        }
        match undecided {
            Some(why) => Err(why),
            None => Ok(None),
        }
    }

    /// Shortest text accepted by `grammar` on which every leaf matches. `uri`: leaves follow the
    /// agent's path rule (match on the path, or on path + query when there is a query).
    fn search<G: Grammar>(
        &mut self,
        grammar: &G,
        leaves: &[Rc<Leaf>],
        uri: bool,
        excluded_names: &[String],
    ) -> Result<Option<String>, String> {
        // One representative byte per class of equivalent bytes (same grammar moves, same DFA
        // classes), so the search branches on classes rather than on 95 bytes.
        let mut alphabet = grammar.alphabet();
        alphabet.sort_by_key(|&b| preference(b));
        let bytes = representatives(alphabet, |b| {
            let mut signature: Vec<u16> = (0..6u8)
                .map(|s| grammar.next(s, b).map_or(u16::MAX, u16::from))
                .collect();
            signature.extend(leaves.iter().map(|l| u16::from(l.class(b))));
            // Bytes of excluded names must stay distinguishable.
            if excluded_names.iter().any(|n| n.as_bytes().contains(&b)) {
                signature.push(u16::from(b));
            }
            signature
        });
        let start = Node {
            grammar: 0,
            runs: leaves.iter().map(|l| (l.start(), l.start())).collect(),
            excluded: vec![0; excluded_names.len()],
        };
        let product = Constrained {
            grammar,
            leaves,
            uri,
            excluded_names,
        };
        match shortest(&product, start, &bytes, &mut self.budget) {
            Ok(text) => Ok(text.map(|t| String::from_utf8_lossy(&t).into_owned())),
            Err(_) => Err(format!(
                "the filters' product exceeds {STATE_BUDGET} states"
            )),
        }
    }
}

/// Texts of a grammar on which leaves match, as [`Solver::search`] walks them.
struct Constrained<'a, G> {
    grammar: &'a G,
    leaves: &'a [Rc<Leaf>],
    uri: bool,
    excluded_names: &'a [String],
}

impl<G: Grammar> Product for Constrained<'_, G> {
    type Node = Node;

    fn accepts(&self, state: &Node) -> bool {
        self.grammar.accepting(state.grammar)
            && state
                .runs
                .iter()
                .zip(self.leaves)
                .all(|(&(first, second), leaf)| {
                    if !self.uri {
                        return leaf.finish(first);
                    }
                    if state.grammar == 2 {
                        // Path settled at '?'; the whole text includes the query.
                        first == Run::Hit || leaf.finish(second)
                    } else {
                        leaf.finish(first)
                    }
                })
    }

    fn next(&self, state: &Node, b: u8) -> Option<Node> {
        let next_grammar = self.grammar.next(state.grammar, b)?;
        let mut excluded = state.excluded.clone();
        if !self.uri && state.grammar <= 1 {
            let mut equal_to_excluded = false;
            for (progress, name) in excluded.iter_mut().zip(self.excluded_names) {
                let at = usize::from(*progress);
                if b == b':' {
                    equal_to_excluded |= at == name.len();
                } else if *progress != u16::MAX {
                    *progress = if name.as_bytes().get(at) == Some(&b) {
                        *progress + 1
                    } else {
                        u16::MAX
                    };
                }
            }
            if equal_to_excluded {
                return None;
            }
        }
        let runs = state
            .runs
            .iter()
            .zip(self.leaves)
            .map(|(&(first, second), leaf)| {
                if !self.uri {
                    return (leaf.step(first, b), second);
                }
                let in_query = state.grammar == 2;
                let path = if in_query {
                    first
                } else if b == b'?' && state.grammar == 1 {
                    // The path ends here: settle its run.
                    if leaf.finish(first) {
                        Run::Hit
                    } else {
                        Run::Miss
                    }
                } else {
                    leaf.step(first, b)
                };
                (path, leaf.step(second, b))
            })
            .collect();
        Some(Node {
            grammar: next_grammar,
            runs,
            excluded,
        })
    }
}

/// Every set partition of `0..n` (n ≤ MAX_HEADER_LEAVES: at most 52).
fn partitions(n: usize) -> Vec<Vec<Vec<usize>>> {
    let mut out: Vec<Vec<Vec<usize>>> = vec![vec![]];
    for i in 0..n {
        let mut next = Vec::new();
        for p in &out {
            for b in 0..p.len() {
                let mut q = p.clone();
                q[b].push(i);
                next.push(q);
            }
            let mut q = p.clone();
            q.push(vec![i]);
            next.push(q);
        }
        out = next;
    }
    out
}

/// Every order of `0..n`.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for at in 0..=p.len() {
            let mut q = p.clone();
            q.insert(at, n - 1);
            out.push(q);
        }
    }
    out
}

/// What a session asks for on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Mirror,
    Steal,
}

/// `on_concurrent_steal` of the connect URL (operator-api.md §5.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnConcurrentSteal {
    /// Refuse the new subscription with `PortAlreadyStolen` (the CLI's default).
    #[default]
    Abort,
    /// Keep the session: the subscription is accepted but waits until the port is free.
    Continue,
    /// Take the port: the other sessions' conflicting steals on it are removed.
    Override,
}

impl std::str::FromStr for OnConcurrentSteal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "abort" => Ok(Self::Abort),
            "continue" => Ok(Self::Continue),
            "override" => Ok(Self::Override),
            other => Err(format!(
                "on_concurrent_steal must be abort, continue or override, not {other:?}"
            )),
        }
    }
}

/// One session's subscription on a port.
#[derive(Debug, Clone)]
pub struct Claim {
    pub session: u64,
    pub user: String,
    pub since: SystemTime,
    pub mode: Mode,
    /// `None`: every request/connection.
    pub filter: Option<HttpFilter>,
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Accept,
    /// Accept after removing these sessions' steals on the port (`override`).
    AcceptOverriding(Vec<u64>),
    /// Accept, but hold the subscription back until the port is free (`continue`).
    Wait {
        behind: u64,
    },
    Refuse(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub port: u16,
    pub other_session: u64,
    pub other_user: String,
    pub other_since: SystemTime,
    pub why: RefusalKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalKind {
    /// One of the two steals takes every request.
    Unfiltered,
    Overlap(ExampleRequest),
    Undecided(String),
}

impl Refusal {
    /// The text the CLI shows (a `LogMessage` next to `PortAlreadyStolen`).
    pub fn message(&self, now: SystemTime) -> String {
        let since = humantime::format_rfc3339_seconds(self.other_since);
        let age = now
            .duration_since(self.other_since)
            .map(|d| humantime::format_duration(std::time::Duration::from_secs(d.as_secs())))
            .map(|d| format!(", {d} ago"))
            .unwrap_or_default();
        let head = format!(
            "port {} is already stolen by session {:X} of {} (since {since}{age})",
            self.port, self.other_session, self.other_user
        );
        match &self.why {
            RefusalKind::Unfiltered => format!("{head} and one of the two steals has no filter"),
            RefusalKind::Overlap(example) => {
                format!("{head} with a filter that also matches e.g. {example}")
            }
            RefusalKind::Undecided(why) => {
                format!("{head}; the two filters could not be proved disjoint ({why})")
            }
        }
    }
}

/// The per-port rules: mirror never conflicts; steals conflict when one of them is unfiltered
/// (then `on_concurrent_steal` applies) or when their filters can match the same request (always
/// refused). `existing` are the other sessions' claims on the same port of the same target.
pub fn decide(
    port: u16,
    mode: &Mode,
    filter: Option<&HttpFilter>,
    on_concurrent: OnConcurrentSteal,
    existing: &[Claim],
) -> Decision {
    if *mode == Mode::Mirror {
        return Decision::Accept;
    }
    let mut unfiltered_conflicts = Vec::new();
    for claim in existing.iter().filter(|c| c.mode == Mode::Steal) {
        let refusal = |why| Refusal {
            port,
            other_session: claim.session,
            other_user: claim.user.clone(),
            other_since: claim.since,
            why,
        };
        match (filter, &claim.filter) {
            (None, _) | (_, None) => {
                unfiltered_conflicts.push((claim.session, refusal(RefusalKind::Unfiltered)))
            }
            (Some(new), Some(old)) => match overlap(new, old) {
                Overlap::Disjoint => {}
                Overlap::Overlapping(example) => {
                    return Decision::Refuse(refusal(RefusalKind::Overlap(example)));
                }
                Overlap::Undecided(why) => {
                    return Decision::Refuse(refusal(RefusalKind::Undecided(why)));
                }
            },
        }
    }
    let Some((first, refusal)) = unfiltered_conflicts.first().cloned() else {
        return Decision::Accept;
    };
    match on_concurrent {
        OnConcurrentSteal::Abort => Decision::Refuse(refusal),
        OnConcurrentSteal::Continue => Decision::Wait { behind: first },
        OnConcurrentSteal::Override => {
            let mut sessions: Vec<u64> = unfiltered_conflicts.iter().map(|(s, _)| *s).collect();
            sessions.dedup();
            Decision::AcceptOverriding(sessions)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::incoming::filter::{RequestFilter, RequestView};
    use crate::protocol::{Filter, HttpMethodFilter};
    use proptest::prelude::*;

    fn header(re: &str) -> HttpFilter {
        HttpFilter::Header(Filter(re.into()))
    }
    fn path(re: &str) -> HttpFilter {
        HttpFilter::Path(Filter(re.into()))
    }
    fn all(filters: Vec<HttpFilter>) -> HttpFilter {
        HttpFilter::Composite { all: true, filters }
    }
    fn any_of(filters: Vec<HttpFilter>) -> HttpFilter {
        HttpFilter::Composite {
            all: false,
            filters,
        }
    }

    /// The agent's own matcher on the example request.
    fn agent_matches(filter: &HttpFilter, example: &ExampleRequest) -> bool {
        let method = http::Method::from_bytes(example.method.as_bytes()).unwrap();
        let uri: http::Uri = example.path_and_query.parse().unwrap();
        let mut headers = http::HeaderMap::new();
        for (name, value) in &example.headers {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        RequestFilter::compile(filter)
            .unwrap()
            .matches(&RequestView::new(&method, &uri, &headers))
    }

    fn expect_overlap(a: &HttpFilter, b: &HttpFilter) -> ExampleRequest {
        match overlap(a, b) {
            Overlap::Overlapping(example) => {
                assert!(agent_matches(a, &example), "{a:?} on {example}");
                assert!(agent_matches(b, &example), "{b:?} on {example}");
                example
            }
            other => panic!("{a:?} / {b:?}: expected an overlap, got {other:?}"),
        }
    }

    #[test]
    fn literal_headers() {
        assert_eq!(
            overlap(&header("^x-user: alice$"), &header("^x-user: bob$")),
            Overlap::Disjoint
        );
        let example = expect_overlap(&header("x-user: alice"), &header("^x-user: ali"));
        assert_eq!(example.headers, [("x-user".to_owned(), "alice".to_owned())]);
        // Different header leaves never exclude each other: a request may carry both.
        expect_overlap(&header("^x-user: alice$"), &header("^x-team: blue$"));
    }

    #[test]
    fn case_insensitive_like_the_agent() {
        expect_overlap(&header("^X-USER: ALICE$"), &header("^x-user: alice$"));
        expect_overlap(&path("^/API$"), &path("^/api$"));
    }

    #[test]
    fn unsatisfiable_headers_and_paths() {
        // Header names are lowercase tokens followed by ": ".
        assert_eq!(satisfiable(&header("^x user")), Overlap::Disjoint);
        assert_eq!(satisfiable(&header("^:")), Overlap::Disjoint);
        assert_eq!(
            satisfiable(&path("^api")),
            Overlap::Disjoint,
            "paths start with /"
        );
        assert!(matches!(
            satisfiable(&header("^x-a: b$")),
            Overlap::Overlapping(_)
        ));
    }

    #[test]
    fn paths_are_one_value() {
        assert_eq!(overlap(&path("^/api/"), &path("^/web/")), Overlap::Disjoint);
        let e = expect_overlap(&path("^/api/"), &path("users$"));
        assert!(e.path_and_query.starts_with("/api/"), "{e}");
        // A path leaf may match the path + query.
        let e = expect_overlap(&path("^/api$"), &path("id=7"));
        assert!(e.path_and_query.contains('?'), "{e}");
        assert_eq!(
            overlap(&path("^/a$"), &path("^/b")),
            Overlap::Disjoint,
            "with or without a query"
        );
    }

    #[test]
    fn methods_and_composites() {
        let get = HttpFilter::Method(HttpMethodFilter::Get);
        let post = HttpFilter::Method(HttpMethodFilter::Post);
        assert_eq!(overlap(&get, &post), Overlap::Disjoint);
        expect_overlap(
            &get,
            &HttpFilter::Method(HttpMethodFilter::Other("get".into())),
        );
        let a = all(vec![header("^x-user: alice$"), get.clone()]);
        let b = all(vec![header("^x-user: alice$"), post.clone()]);
        assert_eq!(overlap(&a, &b), Overlap::Disjoint);
        let c = any_of(vec![b.clone(), all(vec![get, path("^/x")])]);
        let e = expect_overlap(&a, &c);
        assert_eq!(e.method, "GET");
        assert_eq!(overlap(&any_of(vec![]), &header("x")), Overlap::Disjoint);
        expect_overlap(&all(vec![]), &header("x"));
    }

    #[test]
    fn fancy_syntax_and_budgets_are_undecided() {
        assert!(matches!(
            overlap(&header(r"x-user: (\w+)-\1"), &header("x-user: a-a")),
            Overlap::Undecided(_)
        ));
        // Unless another part already proves them disjoint.
        let get = HttpFilter::Method(HttpMethodFilter::Get);
        let post = HttpFilter::Method(HttpMethodFilter::Post);
        assert_eq!(
            overlap(
                &all(vec![header(r"(?!bob)"), get]),
                &all(vec![header("x"), post])
            ),
            Overlap::Disjoint
        );
        let wide = any_of((0..20).map(|i| header(&format!("h{i}"))).collect());
        assert!(matches!(
            overlap(&all(vec![wide.clone(), wide.clone()]), &wide),
            Overlap::Undecided(_)
        ));
    }

    #[test]
    fn decisions_per_port() {
        let now = SystemTime::now();
        let claim = |session, mode, filter: Option<HttpFilter>| Claim {
            session,
            user: format!("user{session}"),
            since: now,
            mode,
            filter,
        };
        let alice = header("^x-user: alice$");
        let existing = [
            claim(1, Mode::Mirror, None),
            claim(2, Mode::Steal, Some(alice.clone())),
        ];
        let abort = OnConcurrentSteal::Abort;
        assert_eq!(
            decide(80, &Mode::Mirror, None, abort, &existing),
            Decision::Accept
        );
        assert_eq!(
            decide(
                80,
                &Mode::Steal,
                Some(&header("^x-user: bob$")),
                abort,
                &existing
            ),
            Decision::Accept
        );
        let Decision::Refuse(refusal) =
            decide(80, &Mode::Steal, Some(&header("alice")), abort, &existing)
        else {
            panic!("overlap must be refused")
        };
        assert_eq!(refusal.other_session, 2);
        let message = refusal.message(now);
        assert!(
            message.contains("user2") && message.contains("x-user: alice"),
            "{message}"
        );
        assert!(matches!(
            decide(80, &Mode::Steal, None, abort, &existing),
            Decision::Refuse(Refusal {
                why: RefusalKind::Unfiltered,
                ..
            })
        ));
        assert_eq!(
            decide(
                80,
                &Mode::Steal,
                None,
                OnConcurrentSteal::Continue,
                &existing
            ),
            Decision::Wait { behind: 2 }
        );
        assert_eq!(
            decide(
                80,
                &Mode::Steal,
                None,
                OnConcurrentSteal::Override,
                &existing
            ),
            Decision::AcceptOverriding(vec![2])
        );
        assert_eq!("override".parse(), Ok(OnConcurrentSteal::Override));
        assert!("steal".parse::<OnConcurrentSteal>().is_err());
    }

    fn literal() -> impl Strategy<Value = String> {
        "[a-z]{1,4}"
    }

    /// Small filters over a few literals, so overlaps and disjoint pairs both occur.
    fn filter() -> impl Strategy<Value = HttpFilter> {
        let leaf = prop_oneof![
            (literal(), literal(), any::<bool>()).prop_map(|(n, v, anchored)| if anchored {
                header(&format!("^x-{n}: {v}$"))
            } else {
                header(&format!("{n}.*{v}"))
            }),
            (literal(), any::<bool>()).prop_map(|(p, anchored)| if anchored {
                path(&format!("^/{p}"))
            } else {
                path(&format!("{p}[0-9]*$"))
            }),
            prop_oneof![
                Just(HttpMethodFilter::Get),
                Just(HttpMethodFilter::Post),
                Just(HttpMethodFilter::Other("purge".into()))
            ]
            .prop_map(HttpFilter::Method),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            (any::<bool>(), prop::collection::vec(inner, 0..3))
                .prop_map(|(all, filters)| HttpFilter::Composite { all, filters })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Every example really matches both filters, per the agent's matcher; the answer is
        /// symmetric in whether an overlap exists.
        #[test]
        fn examples_match_both(a in filter(), b in filter()) {
            let ab = overlap(&a, &b);
            if let Overlap::Overlapping(example) = &ab {
                prop_assert!(agent_matches(&a, example), "{:?} on {}", a, example);
                prop_assert!(agent_matches(&b, example), "{:?} on {}", b, example);
            }
            let ba = overlap(&b, &a);
            prop_assert_eq!(
                matches!(ab, Overlap::Overlapping(_)),
                matches!(ba, Overlap::Overlapping(_))
            );
        }

        /// A `Disjoint` answer is never contradicted by requests mixing the two filters' own
        /// examples (one value per header name, as the decision assumes).
        #[test]
        fn disjoint_is_not_contradicted(a in filter(), b in filter()) {
            if overlap(&a, &b) == Overlap::Disjoint
                && let (Overlap::Overlapping(x), Overlap::Overlapping(y)) = (satisfiable(&a), satisfiable(&b))
            {
                    for (base, other) in [(&x, &y), (&y, &x)] {
                        for take_path in [false, true] {
                            let mut mixed = base.clone();
                            for (name, value) in &other.headers {
                                if !mixed.headers.iter().any(|(n, _)| n == name) {
                                    mixed.headers.push((name.clone(), value.clone()));
                                }
                            }
                            if take_path {
                                mixed.path_and_query = other.path_and_query.clone();
                                mixed.method = other.method.clone();
                            }
                            prop_assert!(
                                !(agent_matches(&a, &mixed) && agent_matches(&b, &mixed)),
                                "{:?} and {:?} both match {}", a, b, mixed
                            );
                        }
                    }
                }
        }

        /// Anchored literal header filters are disjoint exactly when the literals differ.
        #[test]
        fn literal_headers_disjoint_iff_different(x in "[a-z0-9]{1,8}", y in "[a-z0-9]{1,8}") {
            let a = header(&format!("^x-user: {x}$"));
            let b = header(&format!("^x-user: {y}$"));
            let result = overlap(&a, &b);
            if x == y {
                prop_assert!(matches!(result, Overlap::Overlapping(_)));
            } else {
                prop_assert_eq!(result, Overlap::Disjoint);
            }
        }

        /// A filter overlaps with itself whenever it can match anything: checked by building
        /// a request from `satisfiable` and asking the agent.
        #[test]
        fn satisfiable_examples_match(a in filter()) {
            if let Overlap::Overlapping(example) = satisfiable(&a) {
                prop_assert!(agent_matches(&a, &example), "{:?} on {}", a, example);
                prop_assert!(matches!(overlap(&a, &a), Overlap::Overlapping(_)));
            }
        }
    }
}
