//! HTTP filter matching (spec §5.9 "Filter matching rules"). Pure: no I/O.
//!
//! Filters are compiled once per subscription; a request is rendered once (`RequestView`) and then
//! tested against every subscriber's compiled filter.

use fancy_regex::{Regex, RegexBuilder};
use http::{HeaderMap, Method, Uri};

use crate::protocol::HttpFilter;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("invalid regex {source_text:?}: {message}")]
    BadRegex {
        source_text: String,
        message: String,
    },
    #[error("{0} filters are not supported by this agent")]
    Unsupported(&'static str),
}

/// A compiled `HttpFilter`.
#[derive(Debug, Clone)]
pub enum RequestFilter {
    Header(Regex),
    Path(Regex),
    Method(String),
    All(Vec<RequestFilter>),
    Any(Vec<RequestFilter>),
}

fn compile_regex(source: &str) -> Result<Regex, FilterError> {
    RegexBuilder::new(source)
        .case_insensitive(true)
        .build()
        .map_err(|e| FilterError::BadRegex {
            source_text: source.to_owned(),
            message: e.to_string(),
        })
}

impl RequestFilter {
    pub fn compile(filter: &HttpFilter) -> Result<RequestFilter, FilterError> {
        Ok(match filter {
            HttpFilter::Header(re) => RequestFilter::Header(compile_regex(&re.0)?),
            HttpFilter::Path(re) => RequestFilter::Path(compile_regex(&re.0)?),
            HttpFilter::Method(m) => RequestFilter::Method(m.as_str().to_owned()),
            HttpFilter::Composite { all, filters } => {
                let compiled = filters
                    .iter()
                    .map(RequestFilter::compile)
                    .collect::<Result<Vec<_>, _>>()?;
                if *all {
                    RequestFilter::All(compiled)
                } else {
                    RequestFilter::Any(compiled)
                }
            }
            HttpFilter::Body(_) => return Err(FilterError::Unsupported("JSON body")),
            HttpFilter::HeaderJq(_) => return Err(FilterError::Unsupported("jq header")),
        })
    }

    pub fn matches(&self, request: &RequestView<'_>) -> bool {
        // A regex that exceeds fancy-regex's backtracking limit counts as no match.
        let found = |re: &Regex, text: &str| re.is_match(text).unwrap_or(false);
        match self {
            RequestFilter::Header(re) => request.headers.iter().any(|h| found(re, h)),
            RequestFilter::Path(re) => match request.uri.path_and_query() {
                Some(pq) => {
                    found(re, pq.path()) || (pq.query().is_some() && found(re, pq.as_str()))
                }
                None => false,
            },
            RequestFilter::Method(m) => request.method.as_str().eq_ignore_ascii_case(m),
            RequestFilter::All(filters) => filters.iter().all(|f| f.matches(request)),
            RequestFilter::Any(filters) => filters.iter().any(|f| f.matches(request)),
        }
    }
}

/// Every filtered subscription of one port, compiled together so that a request costs one scan
/// of each header line and of the path against all filters at once (a `RegexSet` of every
/// Header/Path leaf), instead of one regex search per filter per header. Leaves using
/// fancy-regex-only syntax (look-around, back-references) are searched one by one. Results are
/// exactly those of `RequestFilter::matches` on each filter.
#[derive(Debug)]
pub struct FilterSet {
    headers: LeafSet,
    paths: LeafSet,
    /// Leaves the `regex` crate cannot run: (leaf, is_header, regex).
    fancy: Vec<(usize, bool, Regex)>,
    leaves: usize,
    filters: Vec<Node>,
}

#[derive(Debug, Default)]
struct LeafSet {
    set: Option<regex::RegexSet>,
    /// Set pattern index → leaf number.
    leaf: Vec<usize>,
}

#[derive(Debug)]
enum Node {
    Leaf(usize),
    Method(String),
    All(Vec<Node>),
    Any(Vec<Node>),
}

impl FilterSet {
    pub fn new<'a>(filters: impl IntoIterator<Item = &'a RequestFilter>) -> FilterSet {
        let mut header_sources = Vec::new();
        let mut path_sources = Vec::new();
        let mut this = FilterSet {
            headers: LeafSet::default(),
            paths: LeafSet::default(),
            fancy: Vec::new(),
            leaves: 0,
            filters: Vec::new(),
        };
        for filter in filters {
            let node = this.node(filter, &mut header_sources, &mut path_sources);
            this.filters.push(node);
        }
        this.headers = LeafSet::build(header_sources, &mut this.fancy, true);
        this.paths = LeafSet::build(path_sources, &mut this.fancy, false);
        this
    }

    fn node(
        &mut self,
        filter: &RequestFilter,
        headers: &mut Vec<(usize, Regex)>,
        paths: &mut Vec<(usize, Regex)>,
    ) -> Node {
        let mut leaf = |re: &Regex, list: &mut Vec<(usize, Regex)>| {
            let n = self.leaves;
            self.leaves += 1;
            list.push((n, re.clone()));
            Node::Leaf(n)
        };
        match filter {
            RequestFilter::Header(re) => leaf(re, headers),
            RequestFilter::Path(re) => leaf(re, paths),
            RequestFilter::Method(m) => Node::Method(m.clone()),
            RequestFilter::All(list) => {
                Node::All(list.iter().map(|f| self.node(f, headers, paths)).collect())
            }
            RequestFilter::Any(list) => {
                Node::Any(list.iter().map(|f| self.node(f, headers, paths)).collect())
            }
        }
    }

    /// Indices (in subscription order) of the filters that match `request`.
    pub fn matching(&self, request: &RequestView<'_>) -> Vec<usize> {
        let mut hits = vec![false; self.leaves];
        for line in &request.headers {
            self.headers.mark(line, &mut hits);
        }
        let pq = request.uri.path_and_query();
        if let Some(pq) = pq {
            self.paths.mark(pq.path(), &mut hits);
            if pq.query().is_some() {
                self.paths.mark(pq.as_str(), &mut hits);
            }
        }
        for (leaf, is_header, re) in &self.fancy {
            let found = |text: &str| re.is_match(text).unwrap_or(false);
            hits[*leaf] = if *is_header {
                request.headers.iter().any(|h| found(h))
            } else {
                pq.is_some_and(|pq| {
                    found(pq.path()) || (pq.query().is_some() && found(pq.as_str()))
                })
            };
        }
        self.filters
            .iter()
            .enumerate()
            .filter(|(_, node)| node.eval(&hits, request.method))
            .map(|(i, _)| i)
            .collect()
    }
}

impl LeafSet {
    fn build(
        sources: Vec<(usize, Regex)>,
        fancy: &mut Vec<(usize, bool, Regex)>,
        is_header: bool,
    ) -> LeafSet {
        let mut patterns = Vec::new();
        let mut leaf = Vec::new();
        for (n, re) in sources {
            // Same flags as `compile_regex`; syntax the `regex` crate rejects stays with fancy-regex.
            if regex::RegexBuilder::new(re.as_str())
                .case_insensitive(true)
                .build()
                .is_ok()
            {
                patterns.push(re.as_str().to_owned());
                leaf.push(n);
            } else {
                fancy.push((n, is_header, re));
            }
        }
        let set = regex::RegexSetBuilder::new(&patterns)
            .case_insensitive(true)
            .build()
            .ok()
            .filter(|_| !patterns.is_empty());
        if set.is_none() && !patterns.is_empty() {
            // Only a size limit can fail here: fall back to one-by-one search.
            for (n, src) in leaf.drain(..).zip(patterns) {
                if let Ok(re) = compile_regex(&src) {
                    fancy.push((n, is_header, re));
                }
            }
        }
        LeafSet { set, leaf }
    }

    fn mark(&self, text: &str, hits: &mut [bool]) {
        if let Some(set) = &self.set {
            for i in set.matches(text).iter() {
                hits[self.leaf[i]] = true;
            }
        }
    }
}

impl Node {
    fn eval(&self, hits: &[bool], method: &Method) -> bool {
        match self {
            Node::Leaf(n) => hits[*n],
            Node::Method(m) => method.as_str().eq_ignore_ascii_case(m),
            Node::All(list) => list.iter().all(|n| n.eval(hits, method)),
            Node::Any(list) => list.iter().any(|n| n.eval(hits, method)),
        }
    }
}

/// A request head rendered for matching: each header as `"name: value"` (lowercase name; values
/// that are not visible ASCII are skipped; one entry per value of a multi-valued header).
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: Vec<String>,
}

impl<'a> RequestView<'a> {
    pub fn new(method: &'a Method, uri: &'a Uri, headers: &HeaderMap) -> RequestView<'a> {
        let headers = headers
            .iter()
            .filter_map(|(name, value)| header_line(name.as_str(), value.as_bytes()))
            .collect();
        RequestView {
            method,
            uri,
            headers,
        }
    }

    /// The same view from a head parsed by `httparse` (the agent's HTTP/1 pass-through path).
    pub fn from_wire(
        method: &'a Method,
        uri: &'a Uri,
        headers: &[httparse::Header<'_>],
    ) -> RequestView<'a> {
        let headers = headers
            .iter()
            .filter_map(|h| header_line(h.name, h.value))
            .collect();
        RequestView {
            method,
            uri,
            headers,
        }
    }
}

/// `"name: value"` with the name lowercased, or `None` when the value is not visible ASCII (what
/// `HeaderValue::to_str` refuses): both constructors must render exactly the same lines.
fn header_line(name: &str, value: &[u8]) -> Option<String> {
    let visible = |b: &u8| *b == b'\t' || (b' '..=b'~').contains(b);
    let value = std::str::from_utf8(value)
        .ok()
        .filter(|v| v.bytes().all(|b| visible(&b)))?;
    let mut line = String::with_capacity(name.len() + 2 + value.len());
    line.extend(name.chars().map(|c| c.to_ascii_lowercase()));
    line.push_str(": ");
    line.push_str(value);
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Filter, HttpMethodFilter, JqQuery};

    fn view_parts(method: &str, uri: &str, headers: &[(&str, &[u8])]) -> (Method, Uri, HeaderMap) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        (method.parse().unwrap(), uri.parse().unwrap(), map)
    }

    fn check(filter: HttpFilter, method: &str, uri: &str, headers: &[(&str, &[u8])]) -> bool {
        let (m, u, h) = view_parts(method, uri, headers);
        RequestFilter::compile(&filter)
            .unwrap()
            .matches(&RequestView::new(&m, &u, &h))
    }

    fn header(re: &str) -> HttpFilter {
        HttpFilter::Header(Filter(re.into()))
    }

    #[test]
    fn header_matches_rendered_name_and_value_case_insensitively() {
        let h: &[(&str, &[u8])] = &[("X-User", b"Alice"), ("accept", b"*/*")];
        assert!(check(header("x-user: alice"), "GET", "/", h));
        assert!(check(header("^X-USER: Al"), "GET", "/", h));
        assert!(check(header("user"), "GET", "/", h), "unanchored search");
        assert!(!check(header("x-user: bob"), "GET", "/", h));
        assert!(
            !check(header("^alice"), "GET", "/", h),
            "value is not rendered alone"
        );
    }

    #[test]
    fn header_every_value_of_a_multi_valued_header_is_tried() {
        let h: &[(&str, &[u8])] = &[("x-tag", b"one"), ("x-tag", b"two")];
        assert!(check(header("^x-tag: two$"), "GET", "/", h));
    }

    #[test]
    fn wire_and_header_map_views_render_the_same_lines() {
        let raw: &[(&str, &[u8])] = &[
            ("X-User", b"Alice"),
            ("x-tag", b"one"),
            ("X-Bin", b"caf\xc3\xa9"),
            ("X-TAG", b"two\tthree"),
        ];
        let (m, u, map) = view_parts("GET", "/", raw);
        let wire: Vec<httparse::Header<'_>> = raw
            .iter()
            .map(|(name, value)| httparse::Header { name, value })
            .collect();
        let mut from_map = RequestView::new(&m, &u, &map).headers;
        let mut from_wire = RequestView::from_wire(&m, &u, &wire).headers;
        // A HeaderMap groups values by name; matching does not depend on the order.
        from_map.sort();
        from_wire.sort();
        assert_eq!(
            from_wire,
            ["x-tag: one", "x-tag: two\tthree", "x-user: Alice"]
        );
        assert_eq!(from_map, from_wire);
    }

    #[test]
    fn header_values_that_are_not_visible_ascii_are_skipped() {
        let h: &[(&str, &[u8])] = &[("x-bin", b"caf\xc3\xa9")];
        assert!(!check(header("x-bin"), "GET", "/", h));
    }

    #[test]
    fn header_fancy_syntax_is_accepted() {
        let h: &[(&str, &[u8])] = &[("x-user", b"alice-alice")];
        assert!(
            check(header(r"x-user: (\w+)-\1"), "GET", "/", h),
            "back-reference"
        );
        assert!(
            check(header(r"x-user: (?!bob)"), "GET", "/", h),
            "look-ahead"
        );
    }

    #[test]
    fn path_tries_path_then_path_and_query() {
        let f = |re: &str| HttpFilter::Path(Filter(re.into()));
        assert!(check(
            f("^/api/v1/users$"),
            "GET",
            "/api/v1/users?id=7",
            &[]
        ));
        assert!(check(f("id=7"), "GET", "/api/v1/users?id=7", &[]));
        assert!(check(f("/API/"), "GET", "/api/x", &[]), "case-insensitive");
        assert!(!check(f("^/other"), "GET", "/api/x", &[]));
        assert!(
            check(f("^/x$"), "GET", "http://example.com/x", &[]),
            "absolute form"
        );
        assert!(
            !check(f("."), "CONNECT", "example.com:443", &[]),
            "no path and query"
        );
    }

    #[test]
    fn method_is_ascii_case_insensitive_and_other_is_literal() {
        let f = HttpFilter::Method(HttpMethodFilter::Post);
        assert!(check(f.clone(), "POST", "/", &[]));
        assert!(!check(f, "GET", "/", &[]));
        let other = HttpFilter::Method(HttpMethodFilter::Other("purge".into()));
        assert!(check(other, "PURGE", "/", &[]));
    }

    #[test]
    fn composites_all_and_any() {
        let h: &[(&str, &[u8])] = &[("x-user", b"alice")];
        let all = |filters| HttpFilter::Composite { all: true, filters };
        let any = |filters| HttpFilter::Composite {
            all: false,
            filters,
        };
        let post = HttpFilter::Method(HttpMethodFilter::Post);
        assert!(check(
            all(vec![header("alice"), post.clone()]),
            "POST",
            "/",
            h
        ));
        assert!(!check(
            all(vec![header("alice"), post.clone()]),
            "GET",
            "/",
            h
        ));
        assert!(check(
            any(vec![header("bob"), post.clone()]),
            "POST",
            "/",
            h
        ));
        assert!(!check(any(vec![header("bob"), post]), "GET", "/", h));
        assert!(check(all(vec![]), "GET", "/", h), "empty all matches");
        assert!(
            !check(any(vec![]), "GET", "/", h),
            "empty any never matches"
        );
        let nested = all(vec![
            any(vec![header("bob"), header("alice")]),
            HttpFilter::Path(Filter("^/$".into())),
        ]);
        assert!(check(nested, "GET", "/", h));
    }

    #[test]
    fn filter_set_agrees_with_single_filters() {
        let filters: Vec<RequestFilter> = [
            header("^x-user: alice$"),
            header(r"x-user: (\w+)-\1"),
            HttpFilter::Path(Filter("^/api/".into())),
            HttpFilter::Path(Filter("id=7".into())),
            HttpFilter::Composite {
                all: true,
                filters: vec![header("x-user"), HttpFilter::Method(HttpMethodFilter::Post)],
            },
            HttpFilter::Composite {
                all: false,
                filters: vec![],
            },
            HttpFilter::Composite {
                all: true,
                filters: vec![],
            },
        ]
        .iter()
        .map(|f| RequestFilter::compile(f).unwrap())
        .collect();
        let set = FilterSet::new(&filters);
        type Headers<'a> = &'a [(&'a str, &'a [u8])];
        let requests: [(&str, &str, Headers<'_>); 5] = [
            ("GET", "/api/x", &[("x-user", b"alice")]),
            ("POST", "/other?id=7", &[("X-User", b"bob-bob")]),
            ("GET", "example.com:443", &[]),
            ("post", "/", &[("x-user", b"ALICE")]),
            ("GET", "/", &[("x-bin", b"caf\xc3\xa9")]),
        ];
        for (method, uri, headers) in requests {
            let (m, u, h) = view_parts(method, uri, headers);
            let view = RequestView::new(&m, &u, &h);
            let expected: Vec<usize> = (0..filters.len())
                .filter(|&i| filters[i].matches(&view))
                .collect();
            assert_eq!(set.matching(&view), expected, "{method} {uri} {headers:?}");
        }
    }

    #[test]
    fn bad_and_unsupported_filters_are_errors() {
        assert!(matches!(
            RequestFilter::compile(&header("(unclosed")),
            Err(FilterError::BadRegex { .. })
        ));
        let nested_bad = HttpFilter::Composite {
            all: false,
            filters: vec![header("ok"), HttpFilter::Path(Filter("[z-a]".into()))],
        };
        assert!(RequestFilter::compile(&nested_bad).is_err());
        assert_eq!(
            RequestFilter::compile(&HttpFilter::HeaderJq(JqQuery("true".into()))).unwrap_err(),
            FilterError::Unsupported("jq header")
        );
    }
}
