//! SQS session filters (pure): the CLI's `message_filter` on message attributes (`{attribute:
//! regex}`, all must match, as for RabbitMQ headers) and `jq_filter` on the message body, run by
//! jaq (a maintained jq implementation). A message matches a session when both given parts match;
//! a filter with neither part matches nothing.
//!
//! jq part: the body is parsed as JSON and the filter's **first** output decides (`false`/`null`
//! or no output → no match). A body that is not JSON, or a jq runtime error, is no match (the
//! message goes elsewhere rather than stalling the queue).
//!
//! Overlap: whether two jq programs can accept one body is undecidable in general, so the jq part
//! is treated as "may accept anything". Two SQS filters are disjoint only when their attribute
//! regexes are ([`super::overlap`]); a session with a jq filter is therefore refused next to
//! another session on the same queue unless both also have `message_filter` attributes that no
//! single message can satisfy together (e.g. `{"tenant": "^alice$"}` vs `{"tenant": "^bob$"}`).

use std::collections::BTreeMap;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data};
use jaq_json::Val;

use super::filter::{FilterError, MessageFilter, SplitFilter};
use super::overlap::{self, Overlap};

/// jq programs longer than this are refused (they come from developers' configs).
const MAX_JQ_LEN: usize = 16 * 1024;
/// Deeper nesting (bodies: arrays/objects; programs: any bracket) is refused: jaq's parsers
/// recurse per level, and a body of 200 000 `[` overflowed the stack.
const MAX_DEPTH: usize = 128;

/// The deepest bracket nesting of `text`; inside JSON strings (`in_strings == false`) brackets
/// are not counted.
fn nesting_depth(text: &[u8], count_in_strings: bool) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in text {
        if in_string && !count_in_strings {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' if !count_in_strings => in_string = true,
            b'[' | b'{' | b'(' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SqsFilterError {
    #[error(transparent)]
    Attribute(#[from] FilterError),
    #[error("jq_filter {program:?} does not compile: {reason}")]
    Jq { program: String, reason: String },
}

/// A compiled jq program.
pub struct JqFilter {
    program: String,
    filter: jaq_core::Filter<data::JustLut<Val>>,
}

impl std::fmt::Debug for JqFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("JqFilter").field(&self.program).finish()
    }
}

impl JqFilter {
    pub fn new(program: &str) -> Result<Self, SqsFilterError> {
        let error = |reason: String| SqsFilterError::Jq {
            program: program.to_owned(),
            reason,
        };
        if program.len() > MAX_JQ_LEN {
            return Err(error(format!("longer than {MAX_JQ_LEN} bytes")));
        }
        if nesting_depth(program.as_bytes(), true) > MAX_DEPTH {
            return Err(error(format!("nested deeper than {MAX_DEPTH} brackets")));
        }
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs());
        let arena = Arena::default();
        let modules = Loader::new(defs)
            .load(
                &arena,
                File {
                    code: program,
                    path: (),
                },
            )
            .map_err(|errors| {
                error(format!(
                    "{:?}",
                    errors.into_iter().map(|(_, e)| e).collect::<Vec<_>>()
                ))
            })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| {
                error(format!(
                    "{:?}",
                    errors.into_iter().map(|(_, e)| e).collect::<Vec<_>>()
                ))
            })?;
        Ok(JqFilter {
            program: program.to_owned(),
            filter,
        })
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    /// Whether the first output for `body` (as JSON) is truthy. A body nested deeper than
    /// [`MAX_DEPTH`] is treated as not JSON.
    pub fn matches(&self, body: &[u8]) -> bool {
        if nesting_depth(body, false) > MAX_DEPTH {
            return false;
        }
        let Ok(input) = jaq_json::read::parse_single(body) else {
            return false;
        };
        let ctx = Ctx::<data::JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
        let mut out = self.filter.id.run((ctx, input)).map(jaq_core::unwrap_valr);
        matches!(out.next(), Some(Ok(value)) if jaq_core::ValT::as_bool(&value))
    }
}

/// Where a queue's messages carry the attributes that `message_filter` matches (registry
/// fields `sns` and `s3Event`). The jq part always sees the SQS body as the app receives it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Envelope {
    /// SNS notifications (raw delivery off): the attributes are the body's `MessageAttributes`
    /// (`{name: {"Type", "Value"}}`; `Binary` ones are skipped).
    pub sns: bool,
    /// S3 event notifications: the attributes are fields of the event's first record:
    /// `eventName`, `eventSource`, `awsRegion`, `bucket` (`s3.bucket.name`) and `key`
    /// (`s3.object.key`). With `sns` too, the event is the SNS notification's `Message`.
    pub s3_event: bool,
}

impl Envelope {
    /// The attributes read from `body`; `None` for a plain queue (use the SQS message
    /// attributes). A body that is not the expected JSON gives no attributes: only filters
    /// without attribute rules can match it.
    pub fn body_attributes(&self, body: &str) -> Option<BTreeMap<String, String>> {
        if !self.sns && !self.s3_event {
            return None;
        }
        let mut out = BTreeMap::new();
        if nesting_depth(body.as_bytes(), false) > MAX_DEPTH {
            return Some(out);
        }
        let Ok(parsed) = serde_json::from_str::<serde_json::Value>(body) else {
            return Some(out);
        };
        let event = if self.sns {
            if let Some(attributes) = parsed["MessageAttributes"].as_object() {
                for (name, attribute) in attributes {
                    let text = match (&attribute["Type"], &attribute["Value"]) {
                        (serde_json::Value::String(kind), _) if kind == "Binary" => None,
                        (_, serde_json::Value::String(value)) => Some(value.clone()),
                        (
                            _,
                            value @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)),
                        ) => Some(value.to_string()),
                        _ => None,
                    };
                    if let Some(text) = text {
                        out.insert(name.clone(), text);
                    }
                }
            }
            match parsed["Message"].as_str() {
                Some(message)
                    if self.s3_event && nesting_depth(message.as_bytes(), false) <= MAX_DEPTH =>
                {
                    serde_json::from_str(message).unwrap_or_default()
                }
                _ => serde_json::Value::Null,
            }
        } else {
            parsed
        };
        if self.s3_event {
            let record = &event["Records"][0];
            for (name, value) in [
                ("eventName", &record["eventName"]),
                ("eventSource", &record["eventSource"]),
                ("awsRegion", &record["awsRegion"]),
                ("bucket", &record["s3"]["bucket"]["name"]),
                ("key", &record["s3"]["object"]["key"]),
            ] {
                if let Some(value) = value.as_str() {
                    out.insert(name.to_owned(), value.to_owned());
                }
            }
        }
        Some(out)
    }
}

/// One SQS session's filter.
#[derive(Debug)]
pub struct SqsFilter {
    attributes: MessageFilter,
    jq: Option<JqFilter>,
}

impl SqsFilter {
    pub fn new(
        attributes: &BTreeMap<String, String>,
        jq: Option<&str>,
    ) -> Result<Self, SqsFilterError> {
        Ok(SqsFilter {
            attributes: MessageFilter::new(attributes)?,
            jq: jq.map(JqFilter::new).transpose()?,
        })
    }

    pub fn attributes(&self) -> BTreeMap<String, String> {
        self.attributes.to_map()
    }

    pub fn jq(&self) -> Option<&str> {
        self.jq.as_ref().map(JqFilter::program)
    }

    fn matches_nothing(&self) -> bool {
        self.attributes.rules.is_empty() && self.jq.is_none()
    }

    /// `attribute` returns a message attribute's value as text (`None`: absent or binary). The
    /// jq part runs in this process: the splitter runs it in a worker instead
    /// ([`super::jq_worker`]), after [`Self::attributes_match`].
    pub fn matches<'m, A, S>(&self, attribute: A, body: &[u8]) -> bool
    where
        A: Fn(&str) -> Option<S>,
        S: AsRef<str> + 'm,
    {
        self.attributes_match(attribute) && self.jq.as_ref().is_none_or(|jq| jq.matches(body))
    }

    /// The part of [`Self::matches`] before the jq filter: false for a filter that matches
    /// nothing, else whether the attribute rules (if any) match.
    pub fn attributes_match<'m, A, S>(&self, attribute: A) -> bool
    where
        A: Fn(&str) -> Option<S>,
        S: AsRef<str> + 'm,
    {
        !self.matches_nothing()
            && (self.attributes.rules.is_empty() || self.attributes.matches(attribute))
    }
}

impl SplitFilter for SqsFilter {
    fn overlap(&self, other: &Self) -> Overlap {
        if self.matches_nothing() || other.matches_nothing() {
            return Overlap::Disjoint;
        }
        let with_jq = self.jq.is_some() || other.jq.is_some();
        if self.attributes.rules.is_empty() || other.attributes.rules.is_empty() {
            // Only a jq filter could tell them apart, or one side accepts any attributes.
            return match overlap::filters_overlap(&self.attributes, &other.attributes) {
                _ if with_jq => Overlap::Undecided(JQ_UNDECIDABLE.to_owned()),
                decided => decided,
            };
        }
        match overlap::filters_overlap(&self.attributes, &other.attributes) {
            Overlap::Overlapping(witness) if with_jq => Overlap::Undecided(format!(
                "{JQ_UNDECIDABLE}; attributes {witness} match both message filters"
            )),
            decided => decided,
        }
    }
}

const JQ_UNDECIDABLE: &str = "whether two jq filters accept a common body cannot be decided; \
     give both sessions message_filter attributes that no message can match together";

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(pairs: &[(&str, &str)], jq: Option<&str>) -> SqsFilter {
        SqsFilter::new(
            &pairs
                .iter()
                .map(|(h, r)| (h.to_string(), r.to_string()))
                .collect(),
            jq,
        )
        .unwrap()
    }

    fn attrs<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(h, _)| *h == name).map(|(_, v)| *v)
    }

    #[test]
    fn jq_decides_on_the_body() {
        let f = filter(&[], Some(r#".user == "alice""#));
        assert!(f.matches(attrs(&[]), br#"{"user":"alice"}"#));
        assert!(!f.matches(attrs(&[]), br#"{"user":"bob"}"#));
        assert!(!f.matches(attrs(&[]), b"not json"));
        assert!(!f.matches(attrs(&[]), br#"[1]"#)); // runtime error: index an array by name
        let f = filter(&[], Some(".items[] | select(.sku | test(\"^X\"))"));
        assert!(f.matches(attrs(&[]), br#"{"items":[{"sku":"A1"},{"sku":"X9"}]}"#));
        assert!(!f.matches(attrs(&[]), br#"{"items":[]}"#));
    }

    #[test]
    fn both_parts_must_match_and_empty_matches_nothing() {
        let f = filter(&[("tenant", "^a")], Some(".n > 3"));
        assert!(f.matches(attrs(&[("tenant", "ab")]), br#"{"n":4}"#));
        assert!(!f.matches(attrs(&[("tenant", "ab")]), br#"{"n":1}"#));
        assert!(!f.matches(attrs(&[("tenant", "b")]), br#"{"n":4}"#));
        assert!(!filter(&[], None).matches(attrs(&[("tenant", "a")]), b"{}"));
        assert!(filter(&[("tenant", "a")], None).matches(attrs(&[("tenant", "a")]), b"x"));
    }

    #[test]
    fn bad_programs_are_clear_errors() {
        let err = SqsFilter::new(&BTreeMap::new(), Some(".a | (")).unwrap_err();
        assert!(err.to_string().contains("does not compile"), "{err}");
        let err = SqsFilter::new(&BTreeMap::new(), Some("nosuchfunction(1)")).unwrap_err();
        assert!(err.to_string().contains("does not compile"), "{err}");
        let long = ".".repeat(MAX_JQ_LEN + 1);
        assert!(SqsFilter::new(&BTreeMap::new(), Some(&long)).is_err());
        let deep = format!(
            "{}.{}",
            "(".repeat(MAX_DEPTH + 1),
            ")".repeat(MAX_DEPTH + 1)
        );
        let err = SqsFilter::new(&BTreeMap::new(), Some(&deep)).unwrap_err();
        assert!(err.to_string().contains("nested deeper"), "{err}");
    }

    #[test]
    fn nesting_depth_skips_json_strings() {
        assert_eq!(nesting_depth(br#"{"a":[1,{"b":"[[[\"[["}]}"#, false), 3);
        assert_eq!(nesting_depth(br#""[[[""#, true), 3);
        assert_eq!(nesting_depth(b"]]][", false), 1);
        let f = JqFilter::new(".a").unwrap();
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(!f.matches(ok.as_bytes())); // parsed (an array has no .a), not refused
        assert!(JqFilter::new("length > 0").unwrap().matches(ok.as_bytes()));
        let too_deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(
            !JqFilter::new("length > 0")
                .unwrap()
                .matches(too_deep.as_bytes())
        );
    }

    #[test]
    fn sns_and_s3_envelopes_give_body_attributes() {
        assert_eq!(Envelope::default().body_attributes("{}"), None);
        let sns = Envelope {
            sns: true,
            s3_event: false,
        };
        let body = r#"{"Type":"Notification","Message":"hi","MessageAttributes":{
            "tenant":{"Type":"String","Value":"alice"},"n":{"Type":"Number","Value":"7"},
            "blob":{"Type":"Binary","Value":"AAE="},"bad":{"Type":"String"}}}"#;
        let got = sns.body_attributes(body).unwrap();
        assert_eq!(
            got,
            BTreeMap::from([("n".into(), "7".into()), ("tenant".into(), "alice".into())])
        );
        let f = filter(&[("tenant", "^alice$")], None);
        assert!(f.matches(|name: &str| got.get(name), body.as_bytes()));
        assert_eq!(sns.body_attributes("not json"), Some(BTreeMap::new()));

        let event = r#"{"Records":[{"eventSource":"aws:s3","awsRegion":"eu-west-1","eventName":"ObjectCreated:Put",
            "s3":{"bucket":{"name":"uploads"},"object":{"key":"alice/a.csv","size":3}}}]}"#;
        let s3 = Envelope {
            sns: false,
            s3_event: true,
        };
        let got = s3.body_attributes(event).unwrap();
        assert_eq!(got["bucket"], "uploads");
        assert_eq!(got["key"], "alice/a.csv");
        assert_eq!(got["eventName"], "ObjectCreated:Put");
        assert_eq!(got["awsRegion"], "eu-west-1");
        // An S3 event delivered through SNS: the event is the notification's Message.
        let wrapped = serde_json::json!({"Type": "Notification", "Message": event,
            "MessageAttributes": {"team": {"Type": "String", "Value": "a"}}})
        .to_string();
        let both = Envelope {
            sns: true,
            s3_event: true,
        };
        let got = both.body_attributes(&wrapped).unwrap();
        assert_eq!(got["key"], "alice/a.csv");
        assert_eq!(got["team"], "a");
        // Too deep or not an event: no attributes, never a panic.
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(both.body_attributes(&deep), Some(BTreeMap::new()));
        assert_eq!(
            s3.body_attributes(r#"{"Records":7}"#),
            Some(BTreeMap::new())
        );
    }

    #[test]
    fn jq_filters_are_refused_unless_attributes_separate_them() {
        let alice = filter(&[("user", "^alice$")], Some(".a"));
        let bob = filter(&[("user", "^bob$")], Some(".b"));
        assert_eq!(alice.overlap(&bob), Overlap::Disjoint);
        let any_user = filter(&[("user", "")], Some(".b"));
        assert!(matches!(alice.overlap(&any_user), Overlap::Undecided(r) if r.contains("jq")));
        let jq_only = filter(&[], Some(".b"));
        assert!(matches!(alice.overlap(&jq_only), Overlap::Undecided(_)));
        assert!(matches!(jq_only.overlap(&jq_only), Overlap::Undecided(_)));
        // Without jq it is the attribute decision.
        let plain_alice = filter(&[("user", "^alice$")], None);
        let plain_a = filter(&[("user", "^a")], None);
        assert!(matches!(
            plain_alice.overlap(&plain_a),
            Overlap::Overlapping(_)
        ));
        assert_eq!(plain_alice.overlap(&filter(&[], None)), Overlap::Disjoint);
    }
}
