//! Queue splitting: each message of a registered queue goes to exactly one consumer, chosen by the
//! developers' filters, without restarting the workload (`docs/queues.md`).
//!
//! - [`crd`]: the `queues.mirrord.metalbear.co/v1alpha` resources (drop-in with mirrord's YAML).
//! - [`filter`], [`overlap`], [`names`]: pure routing, the filter-overlap decision, queue names.
//! - [`rabbitmq`]: the RabbitMQ splitter (lapin), reporting through [`metrics::SplitterMetrics`].
//! - [`registry_cache`]: the watch-fed registries the webhook reads while admitting.
//! - [`records`]: sessions as objects in the cluster; an earlier coordinator's orphans ended.

pub mod crd;
pub mod filter;
pub mod jq_worker;
pub mod metrics;
pub mod names;
pub mod overlap;
pub mod plan;
pub mod rabbitmq;
pub mod records;
pub mod registry_cache;
pub mod sessions;
pub mod sqs;
pub mod sqs_filter;
pub mod sqs_supervisor;
pub mod supervisor;
pub mod wiring;

/// How long a session command (add or remove a session) waits for a splitter's answer. A splitter
/// serves commands only while connected: a connect must not hang while the broker is unreachable.
pub const SESSION_COMMAND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// A splitter's answer to a session command within [`SESSION_COMMAND_TIMEOUT`]; `stopped` when
/// the splitter is gone, `unavailable` when no answer came in time. The command then stays queued
/// and runs once the splitter reconnects; `undo`, when given, is queued behind it (an add's
/// removal, so that a late add does not leave a session nobody ends).
async fn answer_in_time<T, E, C: Send + 'static>(
    answer: tokio::sync::oneshot::Receiver<Result<T, E>>,
    stopped: E,
    unavailable: E,
    undo: Option<(&tokio::sync::mpsc::Sender<C>, C)>,
) -> Result<T, E> {
    match tokio::time::timeout(SESSION_COMMAND_TIMEOUT, answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(stopped),
        Err(_) => {
            if let Some((commands, command)) = undo {
                let commands = commands.clone();
                tokio::spawn(async move {
                    let _ = commands.send(command).await;
                });
            }
            Err(unavailable)
        }
    }
}

/// Warnings for a session's developer from the splitters serving it (a jq filter that broke):
/// every relay of the session shows them to its CLI as log messages, including relays that connect
/// after the warning (the intproxy's connection follows the CLI's; reconnects), since a broken
/// filter stays broken.
#[derive(Debug, Clone)]
pub struct SessionNotices(std::sync::Arc<std::sync::Mutex<Notices>>);

#[derive(Debug)]
struct Notices {
    /// The last [`NOTICES_KEPT`] warnings, replayed to each new subscriber.
    sent: std::collections::VecDeque<String>,
    live: tokio::sync::broadcast::Sender<String>,
}

const NOTICES_KEPT: usize = 16;

impl Default for SessionNotices {
    fn default() -> Self {
        SessionNotices(std::sync::Arc::new(std::sync::Mutex::new(Notices {
            sent: Default::default(),
            live: tokio::sync::broadcast::channel(NOTICES_KEPT).0,
        })))
    }
}

impl SessionNotices {
    /// Kept for later relays and sent to the ones listening now.
    pub fn warn(&self, message: String) {
        // One lock for both: a subscriber gets each warning once, from the backlog or live.
        let mut notices = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if notices.sent.len() == NOTICES_KEPT {
            notices.sent.pop_front();
        }
        notices.sent.push_back(message.clone());
        let _ = notices.live.send(message);
    }

    /// The warnings so far, and a receiver of the ones to come.
    pub fn subscribe(&self) -> (Vec<String>, tokio::sync::broadcast::Receiver<String>) {
        let notices = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (
            notices.sent.iter().cloned().collect(),
            notices.live.subscribe(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::SessionNotices;

    #[test]
    fn later_subscribers_get_the_backlog_then_live_warnings_each_once() {
        let notices = SessionNotices::default();
        let (backlog, mut early) = notices.subscribe();
        assert!(backlog.is_empty());
        notices.warn("jq broke".into());
        let (backlog, mut late) = notices.subscribe();
        assert_eq!(backlog, ["jq broke"]);
        notices.warn("again".into());
        assert_eq!(early.try_recv().unwrap(), "jq broke");
        assert_eq!(early.try_recv().unwrap(), "again");
        assert_eq!(late.try_recv().unwrap(), "again");
        assert!(late.try_recv().is_err(), "the backlog is not sent twice");
        for n in 0..40 {
            notices.warn(format!("n{n}"));
        }
        let (backlog, _) = notices.subscribe();
        assert_eq!(backlog.len(), 16, "bounded");
        assert_eq!(backlog.last().unwrap(), "n39");
    }
}
