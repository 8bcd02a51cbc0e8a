//! Message filters and routing (pure). A filter is the CLI's `message_filter`, `{header: regex}`:
//! a message matches when every named header is present and its value contains a match of its
//! regex (unanchored, as mirrord's `Regex::is_match`). An empty filter matches nothing. The router
//! sends each message to exactly one destination: the one session whose filter matches, or the
//! output queue; two sessions whose filters could both match one message are never registered
//! together ([`super::overlap`]), so "the one" is well defined.

use std::collections::BTreeMap;

use regex_automata::meta::Regex;

use super::overlap::{self, Overlap};

/// Compiled regexes are capped so that a hostile filter cannot eat the coordinator's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum FilterError {
    #[error("message filter for header {header:?}: invalid regex {pattern:?}: {reason}")]
    InvalidRegex {
        header: String,
        pattern: String,
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub header: String,
    pub pattern: String,
    pub regex: Regex,
}

/// A compiled `{header: regex}` filter; rules sorted by header name.
#[derive(Debug, Clone)]
pub struct MessageFilter {
    pub(super) rules: Vec<Rule>,
}

impl MessageFilter {
    pub fn new(filter: &BTreeMap<String, String>) -> Result<Self, FilterError> {
        let rules = filter
            .iter()
            .map(|(header, pattern)| {
                let regex = Regex::builder()
                    .configure(Regex::config().nfa_size_limit(Some(REGEX_SIZE_LIMIT)))
                    .build(pattern)
                    .map_err(|e| FilterError::InvalidRegex {
                        header: header.clone(),
                        pattern: pattern.clone(),
                        reason: e.to_string(),
                    })?;
                Ok(Rule {
                    header: header.clone(),
                    pattern: pattern.clone(),
                    regex,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MessageFilter { rules })
    }

    /// The filter as given (header -> regex), for status and error messages.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.rules
            .iter()
            .map(|r| (r.header.clone(), r.pattern.clone()))
            .collect()
    }

    /// `header` returns a header's value as text, or `None` when the message lacks it (or its
    /// value has no text form).
    pub fn matches<'m, F, S>(&self, header: F) -> bool
    where
        F: Fn(&str) -> Option<S>,
        S: AsRef<str> + 'm,
    {
        !self.rules.is_empty()
            && self.rules.iter().all(|rule| {
                header(&rule.header).is_some_and(|value| rule.regex.is_match(value.as_ref()))
            })
    }
}

/// Where one message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination<'k, K> {
    Session(&'k K),
    Output,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RegisterError<K: std::fmt::Display + std::fmt::Debug> {
    #[error("session {0} already has a filter on this queue")]
    Duplicate(K),
    #[error(
        "the message filter overlaps session {other}'s: a message with {witness} would match both; make the filters disjoint"
    )]
    Overlap { other: K, witness: String },
    #[error(
        "cannot decide whether the message filter overlaps session {other}'s ({reason}); simplify the regexes"
    )]
    Undecided { other: K, reason: String },
}

impl<K: std::fmt::Display + std::fmt::Debug> RegisterError<K> {
    /// Metric label value.
    pub fn as_label(&self) -> &'static str {
        match self {
            RegisterError::Duplicate(_) => "duplicate-session",
            RegisterError::Overlap { .. } => "filter-overlap",
            RegisterError::Undecided { .. } => "filter-undecided",
        }
    }
}

/// A broker's filter as the router needs it: whether one message could match two of them.
pub trait SplitFilter {
    fn overlap(&self, other: &Self) -> Overlap;
}

impl SplitFilter for MessageFilter {
    fn overlap(&self, other: &Self) -> Overlap {
        overlap::filters_overlap(self, other)
    }
}

/// The sessions' filters on one original queue (`F`: RabbitMQ's [`MessageFilter`], or SQS's
/// attribute + jq filter).
#[derive(Debug, Clone)]
pub struct Router<K, F = MessageFilter> {
    sessions: Vec<(K, F)>,
}

impl<K, F> Default for Router<K, F> {
    fn default() -> Self {
        Router {
            sessions: Vec::new(),
        }
    }
}

impl<K: Clone + Eq + std::fmt::Display + std::fmt::Debug, F: SplitFilter> Router<K, F> {
    /// Registers `key`'s filter, refusing it when some message could match it and another
    /// session's filter (naming that session).
    pub fn add(&mut self, key: K, filter: F) -> Result<(), RegisterError<K>> {
        if self.sessions.iter().any(|(k, _)| *k == key) {
            return Err(RegisterError::Duplicate(key));
        }
        for (other, existing) in &self.sessions {
            match filter.overlap(existing) {
                Overlap::Disjoint => {}
                Overlap::Overlapping(witness) => {
                    return Err(RegisterError::Overlap {
                        other: other.clone(),
                        witness: witness.to_string(),
                    });
                }
                Overlap::Undecided(reason) => {
                    return Err(RegisterError::Undecided {
                        other: other.clone(),
                        reason,
                    });
                }
            }
        }
        self.sessions.push((key, filter));
        Ok(())
    }

    pub fn remove(&mut self, key: &K) -> Option<F> {
        let at = self.sessions.iter().position(|(k, _)| k == key)?;
        Some(self.sessions.remove(at).1)
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.sessions.iter().map(|(k, _)| k)
    }

    /// The sessions and their filters, in routing order.
    pub fn entries(&self) -> impl Iterator<Item = (&K, &F)> {
        self.sessions.iter().map(|(k, f)| (k, f))
    }

    /// The destination of a message: the session whose filter `matches` it, else the output.
    pub fn route_by(&self, mut matches: impl FnMut(&F) -> bool) -> Destination<'_, K> {
        self.sessions
            .iter()
            .find(|(_, filter)| matches(filter))
            .map_or(Destination::Output, |(k, _)| Destination::Session(k))
    }
}

impl<K: Clone + Eq + std::fmt::Display + std::fmt::Debug> Router<K> {
    /// The destination of a message whose headers `header` reads.
    pub fn route<'m, H, S>(&self, header: H) -> Destination<'_, K>
    where
        H: Fn(&str) -> Option<S>,
        S: AsRef<str> + 'm,
    {
        self.route_by(|filter| filter.matches(&header))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(pairs: &[(&str, &str)]) -> MessageFilter {
        MessageFilter::new(
            &pairs
                .iter()
                .map(|(h, r)| (h.to_string(), r.to_string()))
                .collect(),
        )
        .unwrap()
    }

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(h, _)| *h == name).map(|(_, v)| *v)
    }

    #[test]
    fn all_rules_must_match_and_empty_matches_nothing() {
        let f = filter(&[("tenant", "^a"), ("kind", "order")]);
        assert!(f.matches(headers(&[("tenant", "abc"), ("kind", "new-order")])));
        assert!(!f.matches(headers(&[("tenant", "abc")])));
        assert!(!f.matches(headers(&[("tenant", "bc"), ("kind", "order")])));
        assert!(!filter(&[]).matches(headers(&[("tenant", "a")])));
    }

    #[test]
    fn invalid_regex_is_a_clear_error() {
        let err = MessageFilter::new(&BTreeMap::from([("h".into(), "(".into())])).unwrap_err();
        assert!(err.to_string().contains("header \"h\""), "{err}");
    }

    #[test]
    fn router_routes_to_the_matching_session_or_output() {
        let mut router = Router::default();
        router.add("alice", filter(&[("user", "^alice$")])).unwrap();
        router.add("bob", filter(&[("user", "^bob$")])).unwrap();
        assert_eq!(
            router.route(headers(&[("user", "alice")])),
            Destination::Session(&"alice")
        );
        assert_eq!(
            router.route(headers(&[("user", "bob")])),
            Destination::Session(&"bob")
        );
        assert_eq!(
            router.route(headers(&[("user", "carol")])),
            Destination::Output
        );
        assert_eq!(router.route(headers(&[])), Destination::Output);
        router.remove(&"alice").unwrap();
        assert_eq!(
            router.route(headers(&[("user", "alice")])),
            Destination::Output
        );
    }

    #[test]
    fn overlapping_filters_are_refused_naming_the_other_session() {
        let mut router = Router::default();
        router.add("alice", filter(&[("user", "^a")])).unwrap();
        let err = router.add("bob", filter(&[("user", "z$")])).unwrap_err();
        assert!(matches!(&err, RegisterError::Overlap { other, .. } if *other == "alice"));
        assert!(err.to_string().contains("session alice"), "{err}");
        assert_eq!(
            router.add("alice", filter(&[("x", "y")])).unwrap_err(),
            RegisterError::Duplicate("alice")
        );
        // Different headers: a message may carry both, so they overlap too.
        let err = router.add("carol", filter(&[("kind", "x")])).unwrap_err();
        assert_eq!(err.as_label(), "filter-overlap");
        // Disjoint on a shared header is fine even with extra headers.
        router
            .add("dave", filter(&[("user", "^b"), ("kind", "x")]))
            .unwrap();
    }
}
