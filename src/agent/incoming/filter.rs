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
            .filter_map(|(name, value)| {
                let value = value.to_str().ok()?;
                Some(format!("{}: {value}", name.as_str()))
            })
            .collect();
        RequestView {
            method,
            uri,
            headers,
        }
    }
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
