//! Queue names derived from an original queue's name (pure: the webhook computes the output name at
//! admission, the splitter declares it; both must agree).

use std::collections::BTreeMap;

/// Suffix of the queue a registered workload reads instead of the original.
pub const OUTPUT_SUFFIX: &str = "-mirrord-output";

/// The workload's output queue for `original`. SQS FIFO queues must keep their `.fifo` ending.
pub fn output_queue(original: &str) -> String {
    match original.strip_suffix(".fifo") {
        Some(stem) => format!("{stem}{OUTPUT_SUFFIX}.fifo"),
        None => format!("{original}{OUTPUT_SUFFIX}"),
    }
}

/// A session's temporary queue for `original`; `session` is the session id (hex).
pub fn session_queue(original: &str, session: &str) -> String {
    match original.strip_suffix(".fifo") {
        Some(stem) => format!("{stem}-mirrord-{session}.fifo"),
        None => format!("{original}-mirrord-{session}"),
    }
}

/// Whether `name` is already one of the names above (applying the rewrite twice must not nest).
pub fn is_derived(name: &str) -> bool {
    name.strip_suffix(".fifo")
        .unwrap_or(name)
        .ends_with(OUTPUT_SUFFIX)
}

/// `namesFromJsonMap`: an env value that is a JSON object whose values name queues; its key ->
/// queue pairs, `None` when it is not an object of strings.
pub fn json_map_names(value: &str) -> Option<BTreeMap<String, String>> {
    serde_json::from_str(value).ok()
}

/// The JSON object text for key -> queue pairs (keys sorted; JSON objects have no order).
pub fn json_map_text<K: AsRef<str> + Ord, V: AsRef<str>>(map: &BTreeMap<K, V>) -> String {
    let object: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().into()))
        .collect();
    serde_json::Value::Object(object).to_string()
}

/// A `namesFromJsonMap` value with each queue renamed by `rename`; `None` when `value` is not a
/// JSON object of strings.
pub fn rewrite_json_map(value: &str, rename: impl Fn(&str) -> String) -> Option<String> {
    let mut map = json_map_names(value)?;
    for queue in map.values_mut() {
        *queue = rename(queue);
    }
    Some(json_map_text(&map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_fifo_endings() {
        assert_eq!(output_queue("orders"), "orders-mirrord-output");
        assert_eq!(output_queue("jobs.fifo"), "jobs-mirrord-output.fifo");
        assert_eq!(session_queue("orders", "1f"), "orders-mirrord-1f");
        assert_eq!(session_queue("jobs.fifo", "1f"), "jobs-mirrord-1f.fifo");
        assert!(is_derived(&output_queue("jobs.fifo")));
        assert!(!is_derived("orders"));
    }

    #[test]
    fn json_maps_rename_every_value() {
        let value = r#"{"b": "jobs.fifo", "a": "orders"}"#;
        assert_eq!(
            rewrite_json_map(value, output_queue).unwrap(),
            r#"{"a":"orders-mirrord-output","b":"jobs-mirrord-output.fifo"}"#
        );
        assert_eq!(json_map_names(value).unwrap()["a"], "orders");
        for bad in [
            "orders",
            "[\"a\"]",
            r#"{"a": 1}"#,
            r#"{"a": {"b": "c"}}"#,
            "",
        ] {
            assert_eq!(json_map_names(bad), None, "{bad}");
            assert_eq!(rewrite_json_map(bad, output_queue), None);
        }
    }
}
