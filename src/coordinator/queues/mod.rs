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
/// every relay of the session shows them to its CLI as log messages.
#[derive(Debug, Clone)]
pub struct SessionNotices(tokio::sync::broadcast::Sender<String>);

impl Default for SessionNotices {
    fn default() -> Self {
        SessionNotices(tokio::sync::broadcast::channel(16).0)
    }
}

impl SessionNotices {
    /// Sent to the relays listening now (none listening: dropped, the log line stays).
    pub fn warn(&self, message: String) {
        let _ = self.0.send(message);
    }

    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.0.subscribe()
    }
}
