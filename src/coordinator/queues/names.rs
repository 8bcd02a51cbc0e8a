//! Queue names derived from an original queue's name (pure: the webhook computes the output name at
//! admission, the splitter declares it; both must agree).

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
}
