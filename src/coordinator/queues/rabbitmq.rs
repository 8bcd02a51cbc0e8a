//! The RabbitMQ splitter: consumes one original queue and publishes every message to exactly one
//! destination (a session's queue when its filter matches, else the workload's output queue).
//!
//! Guarantees and how they are kept:
//! - **Never lost, at least once**: a message is acked on the original queue only after the broker
//!   confirmed its copy (publisher confirms, `mandatory` so an unroutable copy counts as failed).
//!   A crash or lost connection leaves the unacked originals to the broker, which redelivers them;
//!   copies already published are then duplicated, at most `prefetch` of them.
//! - **Order per destination**: one exclusive consumer, deliveries handled in order, all copies
//!   published on one channel (AMQP keeps per-channel order into a queue), acks in delivery order.
//!   Exclusivity also keeps order across a splitter restart: the new one consumes only once the
//!   old connection is gone and its unacked messages are back at the head of the queue.
//! - **Intact messages**: body and every property kept; a session's copy gains the header
//!   [`SESSION_HEADER`] (the session id), which is removed when it returns to the output queue.
//! - **Session end**: the filter goes first, copies in flight are confirmed, then the session
//!   queue is drained back into the output queue, then deleted (only once empty).
//! - **Broker restarts**: any connection or channel error reconnects with capped exponential
//!   backoff, re-declares the output and session queues, and resumes consuming the original.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream::FuturesOrdered};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
        BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::filter::{Destination, FilterError, MessageFilter, RegisterError, Router};
use super::metrics::{RoutedTo, SplitterMetrics};
use super::names;

/// Header stamped on a message routed to a session: the session id it was routed to.
pub const SESSION_HEADER: &str = "x-mirrord-session";

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// How long session end waits for the local consumer to let go of its queue.
const DRAIN_ROUNDS: usize = 50;
const DRAIN_WAIT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct RmqSplitConfig {
    /// `amqp://user:pass@host:port/vhost`
    pub uri: String,
    pub original_queue: String,
    /// Arguments for declaring the output and session queues (the registry's `queueProperties`).
    pub queue_arguments: FieldTable,
    /// Unacked originals in flight: bounds duplicates after a crash and the splitter's memory.
    pub prefetch: u16,
}

impl RmqSplitConfig {
    pub fn new(uri: impl Into<String>, original_queue: impl Into<String>) -> Self {
        RmqSplitConfig {
            uri: uri.into(),
            original_queue: original_queue.into(),
            queue_arguments: FieldTable::default(),
            prefetch: 256,
        }
    }

    pub fn output_queue(&self) -> String {
        names::output_queue(&self.original_queue)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SplitterError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused a copy of a message for queue {queue:?} (nack or unroutable)")]
    NotConfirmed { queue: String },
    #[error(
        "cannot consume the original queue exclusively (another consumer holds it: a previous splitter, or workload pods created before the registry): {0}"
    )]
    OriginalInUse(lapin::Error),
    #[error("the consumer on the original queue was cancelled by the broker")]
    ConsumerCancelled,
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Register(#[from] RegisterError<String>),
    #[error("no session {0} on this queue")]
    NoSuchSession(String),
    #[error(
        "session queue {queue:?} still has a consumer or messages after draining; left in place"
    )]
    NotDrained { queue: String },
    #[error("the splitter has stopped")]
    Stopped,
    #[error(
        "the splitter did not answer within {secs}s: it is not connected to the broker (see the coordinator's log); try again",
        secs = super::SESSION_COMMAND_TIMEOUT.as_secs()
    )]
    Unavailable,
    #[error("a broker operation failed and closed the channel")]
    ChannelLost,
}

impl SplitterError {
    /// Metric label value.
    pub fn as_label(&self) -> &'static str {
        match self {
            SplitterError::Broker(_) => "broker",
            SplitterError::NotConfirmed { .. } => "not-confirmed",
            SplitterError::OriginalInUse(_) => "original-in-use",
            SplitterError::ConsumerCancelled => "consumer-cancelled",
            SplitterError::Filter(_) => "invalid-filter",
            SplitterError::Register(e) => e.as_label(),
            SplitterError::NoSuchSession(_) => "no-such-session",
            SplitterError::NotDrained { .. } => "not-drained",
            SplitterError::Stopped => "stopped",
            SplitterError::Unavailable => "unavailable",
            SplitterError::ChannelLost => "channel-lost",
        }
    }
}

/// What ending a session did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionEnded {
    /// Messages moved from the session queue back to the output queue.
    pub returned: u64,
}

enum Command {
    Add {
        key: String,
        filter: MessageFilter,
        reply: oneshot::Sender<Result<String, SplitterError>>,
    },
    Remove {
        key: String,
        reply: oneshot::Sender<Result<SessionEnded, SplitterError>>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// A running splitter for one original queue. Commands are served while connected; a call made
/// during a reconnect waits for it (callers bound it with their own timeout).
pub struct RmqSplitter {
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
    output_queue: String,
}

impl RmqSplitter {
    /// Starts splitting `config.original_queue`. `sessions` (id -> filter) are the sessions that
    /// already exist, e.g. after a coordinator restart: they are registered before the first
    /// message is consumed, so none of their messages slips to the output queue meanwhile.
    pub fn spawn(
        config: RmqSplitConfig,
        sessions: impl IntoIterator<Item = (String, BTreeMap<String, String>)>,
        metrics: Arc<dyn SplitterMetrics>,
    ) -> Result<Self, SplitterError> {
        let mut router = Router::default();
        let mut queues = BTreeMap::new();
        for (key, filter) in sessions {
            router.add(key.clone(), MessageFilter::new(&filter)?)?;
            queues.insert(
                key.clone(),
                names::session_queue(&config.original_queue, &key),
            );
        }
        let (commands, receiver) = mpsc::channel(16);
        let output_queue = config.output_queue();
        let span = tracing::info_span!("queue_splitter", broker = "rabbitmq", queue = %config.original_queue);
        let task = tokio::spawn(
            Worker {
                output_queue: output_queue.clone(),
                config,
                metrics,
                router,
                sessions: queues,
                commands: receiver,
            }
            .run()
            .instrument(span),
        );
        Ok(RmqSplitter {
            commands,
            task,
            output_queue,
        })
    }

    pub fn output_queue(&self) -> &str {
        &self.output_queue
    }

    /// Registers a session's filter and creates its queue; returns the queue's name. Refused when
    /// the filter could match a message another session's filter matches.
    pub async fn add_session(
        &self,
        key: &str,
        filter: &BTreeMap<String, String>,
    ) -> Result<String, SplitterError> {
        let filter = MessageFilter::new(filter)?;
        let (reply, answer) = oneshot::channel();
        self.send(Command::Add {
            key: key.to_owned(),
            filter,
            reply,
        })
        .await?;
        let undo = Command::Remove {
            key: key.to_owned(),
            reply: oneshot::channel().0,
        };
        super::answer_in_time(
            answer,
            SplitterError::Stopped,
            SplitterError::Unavailable,
            Some((&self.commands, undo)),
        )
        .await
    }

    /// Ends a session: filter removed, its queue drained back to the output queue, then deleted.
    /// Unanswered in time ([`SplitterError::Unavailable`]), the removal still runs once the splitter
    /// reconnects.
    pub async fn remove_session(&self, key: &str) -> Result<SessionEnded, SplitterError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Remove {
            key: key.to_owned(),
            reply,
        })
        .await?;
        super::answer_in_time(
            answer,
            SplitterError::Stopped,
            SplitterError::Unavailable,
            None::<(_, Command)>,
        )
        .await
    }

    /// Stops after confirming and acking what is in flight.
    pub async fn stop(self) {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Stop { reply }).await.is_ok() {
            let _ = answer.await;
        }
        let _ = self.task.await;
    }

    async fn send(&self, command: Command) -> Result<(), SplitterError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| SplitterError::Stopped)
    }
}

/// How a connection's life ended.
enum Exit {
    Stopped,
}

struct Worker {
    config: RmqSplitConfig,
    output_queue: String,
    metrics: Arc<dyn SplitterMetrics>,
    router: Router<String>,
    /// session key -> its queue
    sessions: BTreeMap<String, String>,
    commands: mpsc::Receiver<Command>,
}

/// A copy published and not yet confirmed, with the original it came from.
type InFlight = std::pin::Pin<
    Box<dyn Future<Output = (lapin::Acker, Flight, lapin::Result<lapin::Confirmation>)> + Send>,
>;

/// Where an in-flight copy went (for metrics and errors).
struct Flight {
    queue: String,
    session: Option<String>,
}

impl Worker {
    async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let started = tokio::time::Instant::now();
            match self.connection().await {
                Ok(Exit::Stopped) => return,
                Err(error) => {
                    self.metrics
                        .error(&self.config.original_queue, error.as_label());
                    if started.elapsed() > MAX_BACKOFF {
                        backoff = MIN_BACKOFF;
                    }
                    tracing::warn!(%error, retry_in = ?backoff, "splitter disconnected; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One connection's life: set up, then split until stopped or an error.
    async fn connection(&mut self) -> Result<Exit, SplitterError> {
        let connection = Connection::connect(
            &self.config.uri,
            ConnectionProperties::default().with_connection_name(
                format!("mirrord-operator splitter {}", self.config.original_queue).into(),
            ),
        )
        .await?;
        let consume = connection.create_channel().await?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // The original must exist (the producers' queue); a passive declare says so clearly.
        publish
            .queue_declare(
                self.config.original_queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        self.declare(&publish, &self.output_queue).await?;
        for queue in self.sessions.values() {
            self.declare(&publish, queue).await?;
        }
        consume
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = consume
            .basic_consume(
                self.config.original_queue.as_str().into(),
                "mirrord-operator-splitter".into(),
                // Exclusive: a second splitter (a restarted coordinator while the old connection
                // is not yet closed) waits instead of interleaving, which would reorder messages;
                // a workload pod still reading the original is reported instead of competed with.
                BasicConsumeOptions {
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(SplitterError::OriginalInUse)?;
        tracing::info!(output = %self.output_queue, sessions = self.sessions.len(), "splitter connected");

        let mut pending: FuturesOrdered<InFlight> = FuturesOrdered::new();
        let mut lag = tokio::time::interval(LAG_INTERVAL);
        loop {
            tokio::select! {
                biased;
                Some((acker, flight, confirmation)) = pending.next(), if !pending.is_empty() => {
                    self.settle(acker, flight, confirmation).await?;
                }
                command = self.commands.recv() => match command {
                    Some(Command::Add { key, filter, reply }) => {
                        let result = self.add(&publish, key, filter).await;
                        let broken = matches!(result, Err(SplitterError::Broker(_)));
                        let _ = reply.send(result);
                        if broken {
                            break Err(SplitterError::ChannelLost);
                        }
                    }
                    Some(Command::Remove { key, reply }) => {
                        let result = self.remove(&publish, &mut pending, &key).await;
                        let broken = matches!(result, Err(SplitterError::Broker(_)));
                        let _ = reply.send(result);
                        if broken {
                            break Err(SplitterError::ChannelLost);
                        }
                    }
                    Some(Command::Stop { reply }) => {
                        while let Some((acker, flight, confirmation)) = pending.next().await {
                            self.settle(acker, flight, confirmation).await?;
                        }
                        let _ = connection.close(200, "splitter stopped".into()).await;
                        let _ = reply.send(());
                        break Ok(Exit::Stopped);
                    }
                    None => {
                        while let Some((acker, flight, confirmation)) = pending.next().await {
                            self.settle(acker, flight, confirmation).await?;
                        }
                        let _ = connection.close(200, "splitter dropped".into()).await;
                        break Ok(Exit::Stopped);
                    }
                },
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => pending.push_back(self.forward(&publish, delivery).await?),
                    Some(Err(error)) => break Err(error.into()),
                    None => break Err(SplitterError::ConsumerCancelled),
                },
                _ = lag.tick() => {
                    let queue = publish
                        .queue_declare(
                            self.config.original_queue.as_str().into(),
                            QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
                            FieldTable::default(),
                        )
                        .await?;
                    self.metrics.lag(&self.config.original_queue, queue.message_count());
                }
            }
        }
    }

    async fn declare(&self, channel: &Channel, queue: &str) -> Result<(), SplitterError> {
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                self.config.queue_arguments.clone(),
            )
            .await?;
        Ok(())
    }

    /// Publishes the copy of one delivery; the returned future resolves with its confirmation.
    async fn forward(
        &self,
        channel: &Channel,
        delivery: lapin::message::Delivery,
    ) -> Result<InFlight, SplitterError> {
        let headers = delivery.properties.headers().as_ref();
        let destination = self.router.route(|name| {
            headers
                .and_then(|h| h.inner().get(name))
                .and_then(header_text)
        });
        let (queue, session, properties) = match destination {
            Destination::Output => (self.output_queue.clone(), None, delivery.properties.clone()),
            Destination::Session(key) => (
                self.sessions[key].clone(),
                Some(key.clone()),
                stamped(&delivery.properties, key),
            ),
        };
        let confirm = channel
            .basic_publish(
                ShortString::default(),
                queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &delivery.data,
                properties,
            )
            .await?;
        let acker = delivery.acker;
        let flight = Flight { queue, session };
        Ok(Box::pin(async move { (acker, flight, confirm.await) }))
    }

    /// Acks the original once its copy is confirmed; a refused copy is an error (reconnecting
    /// lets the broker redeliver the original).
    async fn settle(
        &self,
        acker: lapin::Acker,
        flight: Flight,
        confirmation: lapin::Result<lapin::Confirmation>,
    ) -> Result<(), SplitterError> {
        match confirmation? {
            lapin::Confirmation::Ack(None) => {
                acker.ack(BasicAckOptions::default()).await?;
                let to = match &flight.session {
                    Some(key) => RoutedTo::Session(key),
                    None => RoutedTo::Output,
                };
                self.metrics.routed(&self.config.original_queue, to);
                Ok(())
            }
            _ => {
                let _ = acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
                Err(SplitterError::NotConfirmed {
                    queue: flight.queue,
                })
            }
        }
    }

    async fn add(
        &mut self,
        channel: &Channel,
        key: String,
        filter: MessageFilter,
    ) -> Result<String, SplitterError> {
        self.router.add(key.clone(), filter)?;
        let queue = names::session_queue(&self.config.original_queue, &key);
        if let Err(error) = self.declare(channel, &queue).await {
            self.router.remove(&key);
            return Err(error);
        }
        tracing::info!(session = %key, %queue, "queue session added");
        self.sessions.insert(key, queue.clone());
        Ok(queue)
    }

    async fn remove(
        &mut self,
        channel: &Channel,
        pending: &mut FuturesOrdered<InFlight>,
        key: &str,
    ) -> Result<SessionEnded, SplitterError> {
        let key = key.to_owned();
        if self.router.remove(&key).is_none() {
            return Err(SplitterError::NoSuchSession(key));
        }
        // Copies already on their way to the session queue must land before it is drained.
        while let Some((acker, flight, confirmation)) = pending.next().await {
            self.settle(acker, flight, confirmation).await?;
        }
        let queue = self.sessions.remove(&key).unwrap_or_default();
        let mut returned = 0;
        // Messages the local consumer holds unacked come back only when it disconnects: drain
        // until the queue is empty with no consumer, for a bounded time, and never delete a queue
        // that still holds messages.
        for _ in 0..DRAIN_ROUNDS {
            returned += self.drain(channel, &queue).await?;
            let state = channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            if state.message_count() == 0 && state.consumer_count() == 0 {
                channel
                    .queue_delete(
                        queue.as_str().into(),
                        QueueDeleteOptions {
                            if_empty: true,
                            ..QueueDeleteOptions::default()
                        },
                    )
                    .await?;
                tracing::info!(session = %key, %queue, returned, "queue session ended");
                return Ok(SessionEnded { returned });
            }
            tokio::time::sleep(DRAIN_WAIT).await;
        }
        tracing::warn!(session = %key, %queue, returned, "session queue still in use; left in place");
        Err(SplitterError::NotDrained { queue })
    }

    /// Moves every message of `queue` to the output queue, each confirmed before it is acked.
    async fn drain(&self, channel: &Channel, queue: &str) -> Result<u64, SplitterError> {
        let mut moved = 0;
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?
        {
            let delivery = message.delivery;
            let confirmation = channel
                .basic_publish(
                    ShortString::default(),
                    self.output_queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &delivery.data,
                    unstamped(&delivery.properties),
                )
                .await?
                .await?;
            if !matches!(confirmation, lapin::Confirmation::Ack(None)) {
                return Err(SplitterError::NotConfirmed {
                    queue: self.output_queue.clone(),
                });
            }
            delivery.acker.ack(BasicAckOptions::default()).await?;
            self.metrics
                .routed(&self.config.original_queue, RoutedTo::Returned);
            moved += 1;
        }
        Ok(moved)
    }
}

/// A header value as the text a filter's regex sees: strings as UTF-8 (lossy), numbers and
/// booleans in their usual text form; tables, arrays, byte arrays and void have none.
pub fn header_text(value: &AMQPValue) -> Option<Cow<'_, str>> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()),
        AMQPValue::ShortString(s) => Cow::Borrowed(s.as_str()),
        AMQPValue::Boolean(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        AMQPValue::ShortShortInt(n) => n.to_string().into(),
        AMQPValue::ShortShortUInt(n) => n.to_string().into(),
        AMQPValue::ShortInt(n) => n.to_string().into(),
        AMQPValue::ShortUInt(n) => n.to_string().into(),
        AMQPValue::LongInt(n) => n.to_string().into(),
        AMQPValue::LongUInt(n) => n.to_string().into(),
        AMQPValue::LongLongInt(n) => n.to_string().into(),
        AMQPValue::Float(n) => n.to_string().into(),
        AMQPValue::Double(n) => n.to_string().into(),
        AMQPValue::Timestamp(n) => n.to_string().into(),
        _ => return None,
    })
}

fn stamped(properties: &BasicProperties, session: &str) -> BasicProperties {
    let mut headers = properties.headers().clone().unwrap_or_default();
    headers.insert(SESSION_HEADER.into(), AMQPValue::LongString(session.into()));
    properties.clone().with_headers(headers)
}

fn unstamped(properties: &BasicProperties) -> BasicProperties {
    match properties.headers() {
        Some(headers) if headers.inner().contains_key(SESSION_HEADER) => {
            let rest: BTreeMap<ShortString, AMQPValue> = headers
                .inner()
                .iter()
                .filter(|(k, _)| k.as_str() != SESSION_HEADER)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            properties.clone().with_headers(rest.into())
        }
        _ => properties.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_have_text_forms() {
        assert_eq!(
            header_text(&AMQPValue::LongString("tenant-a".into())).as_deref(),
            Some("tenant-a")
        );
        assert_eq!(
            header_text(&AMQPValue::LongLongInt(-42)).as_deref(),
            Some("-42")
        );
        assert_eq!(
            header_text(&AMQPValue::Boolean(true)).as_deref(),
            Some("true")
        );
        assert_eq!(
            header_text(&AMQPValue::FieldTable(FieldTable::default())),
            None
        );
    }

    #[test]
    fn stamp_is_added_and_removed_keeping_other_headers() {
        let mut headers = FieldTable::default();
        headers.insert("tenant".into(), AMQPValue::LongString("a".into()));
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_message_id("m1".into());
        let with = stamped(&properties, "1f");
        let h = with.headers().as_ref().unwrap().inner();
        assert_eq!(h.len(), 2);
        assert!(h.contains_key(SESSION_HEADER));
        assert_eq!(with.message_id().as_ref().unwrap().as_str(), "m1");
        assert_eq!(unstamped(&with), properties);
    }
}
