//! The SQS splitter (official AWS SDK for Rust): reads one original queue and sends every message
//! to exactly one destination, a session's temporary queue when its filter matches
//! ([`super::sqs_filter`]), else the workload's output queue.
//!
//! Guarantees and how they are kept:
//! - **Never lost, at least once**: a received message is deleted from the original only after
//!   `SendMessageBatch` reported its copy as sent. A crash, an SDK error or a failed entry leaves
//!   the original in the queue; it becomes visible again after the visibility timeout and is sent
//!   again (a duplicate when the first copy had been sent: at most one receive batch per crash,
//!   plus failed deletes). On FIFO queues the copy keeps the original's deduplication id, so SQS
//!   itself drops such a resend within its 5-minute window.
//! - **Order per destination** where SQS has one: one receiver, each batch's copies sent per
//!   destination in receive order, the FIFO `MessageGroupId` kept. Standard queues have no order.
//! - **Intact messages**: body and message attributes kept; a session's copy gains the string
//!   attribute [`SESSION_ATTRIBUTE`] (session id) unless the message already has SQS's maximum of
//!   10 attributes (then it is sent unstamped, counted as error `stamp-skipped`). The stamp is
//!   removed when the message returns to the output queue.
//! - **Session end**: the filter goes first (between batches, so no copy is in flight), the
//!   session queue is drained back into the output queue (send before delete), then deleted —
//!   only once empty with nothing in flight (waits up to 5 s for a consumer's invisible messages).
//! - **Errors**: any SDK error ends the round; the worker sets up again with capped backoff and
//!   resumes from the original queue.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region, SharedHttpClient};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, Message, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName, SendMessageBatchRequestEntry,
};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::SessionNotices;
use super::filter::{RegisterError, Router};
use super::jq_worker::{JqEvalError, JqWorker};
use super::metrics::{RoutedTo, SplitterMetrics};
use super::names;
use super::sqs_filter::{Envelope, SqsFilter, SqsFilterError};

/// Message attribute stamped on a copy routed to a session: the session id.
pub const SESSION_ATTRIBUTE: &str = "x-mirrord-session";
/// SQS accepts at most this many message attributes per message.
const MAX_ATTRIBUTES: usize = 10;
/// SQS batch size limit (receive, send, delete).
const BATCH: i32 = 10;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const LAG_INTERVAL: Duration = Duration::from_secs(5);
const DRAIN_ROUNDS: usize = 50;
const DRAIN_WAIT: Duration = Duration::from_millis(100);

/// The HTTP client for the SDK: hyper + rustls with ring (the crate's one TLS stack, no aws-lc).
pub fn http_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// A client from the default AWS chain (env, profile, web identity/IRSA, ECS, IMDS), optionally
/// pointed at another endpoint (an SQS-compatible server).
pub async fn client_from_env(endpoint: Option<&str>) -> Client {
    let shared = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client())
        .load()
        .await;
    let mut config = aws_sdk_sqs::config::Builder::from(&shared);
    if let Some(endpoint) = endpoint {
        config = config.endpoint_url(endpoint);
    }
    Client::from_conf(config.build())
}

/// A client with fixed credentials and region (tests against moto, benchmarks).
pub fn client_with_keys(endpoint: &str, region: &str, key_id: &str, secret: &str) -> Client {
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(key_id, secret, None, None, "static"))
        .http_client(http_client())
        .build();
    Client::from_conf(config)
}

#[derive(Debug, Clone)]
pub struct SqsSplitConfig {
    pub original_queue: String,
    /// Long-poll wait of one receive (≤ 20 s); also how long a command may wait for the worker.
    pub wait: Duration,
    /// Visibility timeout of received originals: how soon an unsent original is retried.
    pub visibility_timeout: Duration,
    /// Registry `tags`: set on the output and session queues the splitter creates.
    pub tags: BTreeMap<String, String>,
    /// Registry `sns` / `s3Event`: where filters find the attributes.
    pub envelope: Envelope,
}

impl SqsSplitConfig {
    pub fn new(original_queue: impl Into<String>) -> Self {
        SqsSplitConfig {
            original_queue: original_queue.into(),
            wait: Duration::from_secs(1),
            visibility_timeout: Duration::from_secs(30),
            tags: BTreeMap::new(),
            envelope: Envelope::default(),
        }
    }

    /// The original's queue name (`original_queue` may be a queue URL, as apps' env often is).
    pub fn queue_name(&self) -> &str {
        queue_name(&self.original_queue)
    }

    pub fn output_queue(&self) -> String {
        names::output_queue(self.queue_name())
    }
}

/// A queue's name: the last path segment of a queue URL, or the name itself.
pub fn queue_name(name_or_url: &str) -> &str {
    if name_or_url.starts_with("https://") || name_or_url.starts_with("http://") {
        name_or_url
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(name_or_url)
    } else {
        name_or_url
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SqsSplitterError {
    #[error("SQS {operation} on {queue:?}: {message}")]
    Sqs {
        operation: &'static str,
        queue: String,
        message: String,
    },
    #[error("queue {0:?} does not exist")]
    QueueMissing(String),
    #[error("SQS did not accept {failed} copies for queue {queue:?}: {first}")]
    NotSent {
        queue: String,
        failed: usize,
        first: String,
    },
    #[error(transparent)]
    Filter(#[from] SqsFilterError),
    #[error(transparent)]
    Register(#[from] RegisterError<String>),
    #[error("no session {0} on this queue")]
    NoSuchSession(String),
    #[error(
        "session queue {queue:?} still has messages in flight or left after draining; left in place"
    )]
    NotDrained { queue: String },
    #[error("the splitter has stopped")]
    Stopped,
    #[error(
        "the splitter did not answer within {secs}s: it is not connected to the broker (see the coordinator's log); try again",
        secs = super::SESSION_COMMAND_TIMEOUT.as_secs()
    )]
    Unavailable,
}

impl SqsSplitterError {
    /// Metric label value.
    pub fn as_label(&self) -> &'static str {
        match self {
            SqsSplitterError::Sqs { .. } => "sqs",
            SqsSplitterError::QueueMissing(_) => "queue-missing",
            SqsSplitterError::NotSent { .. } => "not-sent",
            SqsSplitterError::Filter(_) => "invalid-filter",
            SqsSplitterError::Register(e) => e.as_label(),
            SqsSplitterError::NoSuchSession(_) => "no-such-session",
            SqsSplitterError::NotDrained { .. } => "not-drained",
            SqsSplitterError::Stopped => "stopped",
            SqsSplitterError::Unavailable => "unavailable",
        }
    }
}

fn sdk_error<E: std::error::Error + 'static>(
    operation: &'static str,
    queue: &str,
) -> impl FnOnce(E) -> SqsSplitterError {
    let queue = queue.to_owned();
    move |error| SqsSplitterError::Sqs {
        operation,
        queue,
        message: DisplayErrorContext(error).to_string(),
    }
}

/// A session's temporary queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionQueue {
    pub name: String,
    pub url: String,
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
        filter: SqsFilter,
        notices: Option<SessionNotices>,
        reply: oneshot::Sender<Result<SessionQueue, SqsSplitterError>>,
    },
    Remove {
        key: String,
        reply: oneshot::Sender<Result<SessionEnded, SqsSplitterError>>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// A running splitter for one original queue. Commands are served between receive batches (within
/// one long-poll wait); during a setup retry they wait for it (callers bound it with a timeout).
pub struct SqsSplitter {
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
    output_queue: String,
}

impl SqsSplitter {
    /// Starts splitting `config.original_queue`; `sessions` (id → attribute filter, jq filter) are
    /// registered before the first message is received.
    pub fn spawn(
        client: Client,
        config: SqsSplitConfig,
        sessions: impl IntoIterator<Item = (String, BTreeMap<String, String>, Option<String>)>,
        metrics: Arc<dyn SplitterMetrics>,
    ) -> Result<Self, SqsSplitterError> {
        let mut router = Router::default();
        let mut queues = BTreeMap::new();
        for (key, attributes, jq) in sessions {
            router.add(key.clone(), SqsFilter::new(&attributes, jq.as_deref())?)?;
            queues.insert(key.clone(), names::session_queue(config.queue_name(), &key));
        }
        let (commands, receiver) = mpsc::channel(16);
        let output_queue = config.output_queue();
        let span =
            tracing::info_span!("queue_splitter", broker = "sqs", queue = %config.original_queue);
        let task = tokio::spawn(
            Worker {
                client,
                output_queue: output_queue.clone(),
                config,
                metrics,
                router,
                jq: JqWorker::default(),
                session_names: queues,
                notices: BTreeMap::new(),
                urls: Urls::default(),
                commands: receiver,
            }
            .run()
            .instrument(span),
        );
        Ok(SqsSplitter {
            commands,
            task,
            output_queue,
        })
    }

    pub fn output_queue(&self) -> &str {
        &self.output_queue
    }

    /// Registers a session's filter and creates its queue. Refused when the filter could match a
    /// message another session's filter matches (jq filters: see [`super::sqs_filter`]).
    pub async fn add_session(
        &self,
        key: &str,
        attributes: &BTreeMap<String, String>,
        jq: Option<&str>,
    ) -> Result<SessionQueue, SqsSplitterError> {
        self.add_session_with(key, attributes, jq, None).await
    }

    /// [`Self::add_session`], telling `notices` when the session's jq filter breaks.
    pub async fn add_session_with(
        &self,
        key: &str,
        attributes: &BTreeMap<String, String>,
        jq: Option<&str>,
        notices: Option<SessionNotices>,
    ) -> Result<SessionQueue, SqsSplitterError> {
        let filter = SqsFilter::new(attributes, jq)?;
        let (reply, answer) = oneshot::channel();
        self.send(Command::Add {
            key: key.to_owned(),
            filter,
            notices,
            reply,
        })
        .await?;
        let undo = Command::Remove {
            key: key.to_owned(),
            reply: oneshot::channel().0,
        };
        super::answer_in_time(
            answer,
            SqsSplitterError::Stopped,
            SqsSplitterError::Unavailable,
            Some((&self.commands, undo)),
        )
        .await
    }

    /// Ends a session: filter removed, its queue drained back to the output queue, then deleted.
    /// Unanswered in time ([`SqsSplitterError::Unavailable`]), the removal still runs once the splitter
    /// reconnects.
    pub async fn remove_session(&self, key: &str) -> Result<SessionEnded, SqsSplitterError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Remove {
            key: key.to_owned(),
            reply,
        })
        .await?;
        super::answer_in_time(
            answer,
            SqsSplitterError::Stopped,
            SqsSplitterError::Unavailable,
            None::<(_, Command)>,
        )
        .await
    }

    /// Stops after the current batch.
    pub async fn stop(self) {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Stop { reply }).await.is_ok() {
            let _ = answer.await;
        }
        let _ = self.task.await;
    }

    /// Ends the worker wherever it is, as a crash would (tests: nothing may be lost).
    pub fn abort(self) {
        self.task.abort();
    }

    async fn send(&self, command: Command) -> Result<(), SqsSplitterError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| SqsSplitterError::Stopped)
    }
}

/// Queue URLs and the original's FIFO settings, found at setup.
#[derive(Debug, Default)]
struct Urls {
    original: String,
    output: String,
    /// Attributes for creating output/session queues (FIFO ones must say so).
    create: HashMap<QueueAttributeName, String>,
    fifo: bool,
    sessions: BTreeMap<String, String>,
}

struct Worker {
    client: Client,
    config: SqsSplitConfig,
    output_queue: String,
    metrics: Arc<dyn SplitterMetrics>,
    router: Router<String, SqsFilter>,
    /// Runs the sessions' jq filters out of process.
    jq: JqWorker,
    /// session key → its queue name
    session_names: BTreeMap<String, String>,
    /// session key → where its developer hears of a broken jq filter
    notices: BTreeMap<String, SessionNotices>,
    urls: Urls,
    commands: mpsc::Receiver<Command>,
}

enum Exit {
    Stopped,
}

impl Worker {
    async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let started = tokio::time::Instant::now();
            match self.round().await {
                Ok(Exit::Stopped) => return,
                Err(error) => {
                    self.metrics
                        .error(&self.config.original_queue, error.as_label());
                    if started.elapsed() > MAX_BACKOFF {
                        backoff = MIN_BACKOFF;
                    }
                    tracing::warn!(error = %error, retry_in = ?backoff, "SQS splitter error; setting up again");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn round(&mut self) -> Result<Exit, SqsSplitterError> {
        self.setup().await?;
        tracing::info!(output = %self.output_queue, sessions = self.session_names.len(), fifo = self.urls.fifo, "SQS splitter running");
        let mut lag = tokio::time::Instant::now();
        loop {
            loop {
                match self.commands.try_recv() {
                    Ok(Command::Add {
                        key,
                        filter,
                        notices,
                        reply,
                    }) => {
                        let added = self.add(key.clone(), filter).await;
                        if let (Ok(_), Some(notices)) = (&added, notices) {
                            self.notices.insert(key, notices);
                        }
                        let _ = reply.send(added);
                    }
                    Ok(Command::Remove { key, reply }) => {
                        let _ = reply.send(self.remove(&key).await);
                    }
                    Ok(Command::Stop { reply }) => {
                        let _ = reply.send(());
                        return Ok(Exit::Stopped);
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return Ok(Exit::Stopped),
                }
            }
            if lag.elapsed() >= LAG_INTERVAL {
                lag = tokio::time::Instant::now();
                self.report_lag().await;
            }
            let messages = self.receive(&self.urls.original, self.config.wait).await?;
            if !messages.is_empty() {
                self.forward(messages).await?;
            }
        }
    }

    async fn setup(&mut self) -> Result<(), SqsSplitterError> {
        let original = &self.config.queue_name().to_owned();
        let url = match self
            .client
            .get_queue_url()
            .queue_name(original)
            .send()
            .await
        {
            Ok(out) => out.queue_url.unwrap_or_default(),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_queue_does_not_exist()) =>
            {
                return Err(SqsSplitterError::QueueMissing(original.clone()));
            }
            Err(e) => return Err(sdk_error("GetQueueUrl", original)(e)),
        };
        let attributes = self
            .client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::FifoQueue)
            .attribute_names(QueueAttributeName::ContentBasedDeduplication)
            .send()
            .await
            .map_err(sdk_error("GetQueueAttributes", original))?
            .attributes
            .unwrap_or_default();
        let fifo = attributes
            .get(&QueueAttributeName::FifoQueue)
            .is_some_and(|v| v == "true");
        let mut create = HashMap::new();
        if fifo {
            create.insert(QueueAttributeName::FifoQueue, "true".to_owned());
            if let Some(cbd) = attributes.get(&QueueAttributeName::ContentBasedDeduplication) {
                create.insert(QueueAttributeName::ContentBasedDeduplication, cbd.clone());
            }
        }
        self.urls = Urls {
            original: url,
            output: String::new(),
            create,
            fifo,
            sessions: BTreeMap::new(),
        };
        self.urls.output = self.create_queue(&self.output_queue.clone()).await?;
        for (key, name) in self.session_names.clone() {
            let url = self.create_queue(&name).await?;
            self.urls.sessions.insert(key, url);
        }
        Ok(())
    }

    /// CreateQueue is idempotent for equal attributes: it returns the existing queue's URL. The
    /// registry's tags are set again (TagQueue) since an existing queue keeps its old ones.
    async fn create_queue(&self, name: &str) -> Result<String, SqsSplitterError> {
        let url = self
            .client
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(self.urls.create.clone()))
            .send()
            .await
            .map_err(sdk_error("CreateQueue", name))?
            .queue_url
            .unwrap_or_default();
        if !self.config.tags.is_empty() {
            self.client
                .tag_queue()
                .queue_url(&url)
                .set_tags(Some(self.config.tags.clone().into_iter().collect()))
                .send()
                .await
                .map_err(sdk_error("TagQueue", name))?;
        }
        Ok(url)
    }

    async fn receive(&self, url: &str, wait: Duration) -> Result<Vec<Message>, SqsSplitterError> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(BATCH)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .visibility_timeout(self.config.visibility_timeout.as_secs().max(1) as i32)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(sdk_error("ReceiveMessage", url))?;
        Ok(out.messages.unwrap_or_default())
    }

    async fn report_lag(&self) {
        let answer = self
            .client
            .get_queue_attributes()
            .queue_url(&self.urls.original)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await;
        if let Ok(out) = answer
            && let Some(n) = out
                .attributes
                .as_ref()
                .and_then(|a| a.get(&QueueAttributeName::ApproximateNumberOfMessages))
                .and_then(|n| n.parse().ok())
        {
            self.metrics.lag(&self.config.original_queue, n);
        }
    }

    /// The session whose filter matches `message` (`None`: the output queue). Attributes are
    /// checked here, jq filters in the worker; a jq failure is no match (and logged once: the
    /// program matches nothing from then on).
    async fn destination(&mut self, message: &Message) -> Option<String> {
        // No session: nothing to match (and an SNS/S3 body is not parsed for nothing).
        if self.router.is_empty() {
            return None;
        }
        let body = message.body().unwrap_or_default();
        let from_body = self.config.envelope.body_attributes(body);
        let attribute = |name: &str| match &from_body {
            Some(attributes) => attributes.get(name).map(String::as_str),
            None => message
                .message_attributes()
                .and_then(|a| a.get(name))
                .and_then(|v| v.string_value()),
        };
        for (key, filter) in self.router.entries() {
            if !filter.attributes_match(attribute) {
                continue;
            }
            let Some(program) = filter.jq() else {
                return Some(key.clone());
            };
            match self.jq.eval(program, body.as_bytes()).await {
                Ok(true) => return Some(key.clone()),
                Ok(false) | Err(JqEvalError::Broken) => {}
                Err(error) => {
                    tracing::warn!(session = %key, %error, "the session's jq filter failed: it matches nothing from now on");
                    self.metrics.error(&self.config.original_queue, "jq-broken");
                    if let Some(notices) = self.notices.get(key) {
                        notices.warn(format!(
                            "queue splitting: your jq_filter {program:?} failed on a message of SQS queue {:?} ({error}); it matches nothing from now on, so this session gets no more messages from that queue (they go to the deployed app). Fix the filter and start a new session.",
                            self.config.original_queue
                        ));
                    }
                }
            }
        }
        None
    }

    /// Sends each message to its destination, then deletes the originals whose copy was sent.
    async fn forward(&mut self, messages: Vec<Message>) -> Result<(), SqsSplitterError> {
        let mut by_destination: BTreeMap<Option<String>, Vec<&Message>> = BTreeMap::new();
        for message in &messages {
            let key = self.destination(message).await;
            by_destination.entry(key).or_default().push(message);
        }
        let mut sent = Vec::new();
        let mut failure = None;
        for (session, batch) in by_destination {
            let (url, to) = match &session {
                Some(key) => (&self.urls.sessions[key], RoutedTo::Session(key)),
                None => (&self.urls.output, RoutedTo::Output),
            };
            let stamp = session.as_deref();
            match self.send_batch(url, &batch, stamp).await {
                Ok(ok) => {
                    for message in ok {
                        self.metrics.routed(&self.config.original_queue, to);
                        sent.push(message);
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        self.delete(&self.urls.original, &sent).await?;
        failure.map_or(Ok(()), Err)
    }

    /// Sends `batch` (≤ 10, in order) to `url`; returns the messages SQS accepted, in order, up to
    /// the first failed one (so a retry keeps the order of what follows).
    async fn send_batch<'m>(
        &self,
        url: &str,
        batch: &[&'m Message],
        stamp: Option<&str>,
    ) -> Result<Vec<&'m Message>, SqsSplitterError> {
        let entries = batch
            .iter()
            .enumerate()
            .map(|(i, m)| self.copy_entry(i, m, stamp))
            .collect::<Vec<_>>();
        let out = self
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sdk_error("SendMessageBatch", url))?;
        let failed: Vec<usize> = out
            .failed()
            .iter()
            .filter_map(|f| f.id().parse().ok())
            .collect();
        let first_failed = failed.iter().min().copied().unwrap_or(batch.len());
        let accepted = batch[..first_failed].to_vec();
        match out.failed().first() {
            None => Ok(accepted),
            Some(first) if accepted.is_empty() => Err(SqsSplitterError::NotSent {
                queue: url.to_owned(),
                failed: failed.len(),
                first: format!("{}: {}", first.code(), first.message().unwrap_or_default()),
            }),
            // Some went: delete those; the rest is retried after the visibility timeout.
            Some(first) => {
                tracing::warn!(
                    queue = url,
                    failed = failed.len(),
                    code = first.code(),
                    "some copies not sent; retried later"
                );
                Ok(accepted)
            }
        }
    }

    fn copy_entry(
        &self,
        id: usize,
        message: &Message,
        stamp: Option<&str>,
    ) -> SendMessageBatchRequestEntry {
        let mut attributes = message.message_attributes().cloned().unwrap_or_default();
        attributes.remove(SESSION_ATTRIBUTE);
        if let Some(session) = stamp {
            if attributes.len() < MAX_ATTRIBUTES {
                attributes.insert(
                    SESSION_ATTRIBUTE.to_owned(),
                    MessageAttributeValue::builder()
                        .data_type("String")
                        .string_value(session)
                        .build()
                        .expect("data type is set"),
                );
            } else {
                self.metrics
                    .error(&self.config.original_queue, "stamp-skipped");
            }
        }
        let system = message.attributes();
        let system = |name: MessageSystemAttributeName| system.and_then(|a| a.get(&name)).cloned();
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(id.to_string())
            .message_body(message.body().unwrap_or_default())
            .set_message_attributes((!attributes.is_empty()).then_some(attributes));
        if self.urls.fifo {
            entry = entry
                .set_message_group_id(system(MessageSystemAttributeName::MessageGroupId))
                .message_deduplication_id(
                    system(MessageSystemAttributeName::MessageDeduplicationId)
                        .or_else(|| message.message_id().map(str::to_owned))
                        .unwrap_or_default(),
                );
        }
        entry.build().expect("id and body are set")
    }

    async fn delete(&self, url: &str, messages: &[&Message]) -> Result<(), SqsSplitterError> {
        for chunk in messages.chunks(BATCH as usize) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle().unwrap_or_default())
                        .build()
                        .expect("id and handle are set")
                })
                .collect();
            let out = self
                .client
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(sdk_error("DeleteMessageBatch", url))?;
            // A failed delete means a duplicate later, never a loss: report and go on.
            if !out.failed().is_empty() {
                tracing::warn!(
                    queue = url,
                    failed = out.failed().len(),
                    "some originals not deleted; they will be sent again"
                );
                self.metrics
                    .error(&self.config.original_queue, "delete-failed");
            }
        }
        Ok(())
    }

    async fn add(
        &mut self,
        key: String,
        filter: SqsFilter,
    ) -> Result<SessionQueue, SqsSplitterError> {
        self.router.add(key.clone(), filter)?;
        let name = names::session_queue(self.config.queue_name(), &key);
        match self.create_queue(&name).await {
            Ok(url) => {
                self.session_names.insert(key.clone(), name.clone());
                self.urls.sessions.insert(key, url.clone());
                Ok(SessionQueue { name, url })
            }
            Err(e) => {
                self.router.remove(&key);
                Err(e)
            }
        }
    }

    async fn remove(&mut self, key: &str) -> Result<SessionEnded, SqsSplitterError> {
        let key = key.to_owned();
        if self.router.remove(&key).is_none() {
            return Err(SqsSplitterError::NoSuchSession(key));
        }
        self.notices.remove(&key);
        let name = self.session_names.remove(&key).unwrap_or_default();
        let Some(url) = self.urls.sessions.remove(&key) else {
            return Err(SqsSplitterError::NoSuchSession(key));
        };
        let mut returned = 0;
        let mut rounds = 0;
        loop {
            let messages = self.receive(&url, Duration::ZERO).await?;
            if messages.is_empty() {
                if self.in_flight(&url).await? == 0 {
                    break;
                }
                rounds += 1;
                if rounds >= DRAIN_ROUNDS {
                    tracing::warn!(queue = %name, "session queue still has messages in flight; left in place");
                    return Err(SqsSplitterError::NotDrained { queue: name });
                }
                tokio::time::sleep(DRAIN_WAIT).await;
                continue;
            }
            let batch: Vec<&Message> = messages.iter().collect();
            let accepted = self.send_batch(&self.urls.output, &batch, None).await?;
            self.delete(&url, &accepted).await?;
            for _ in &accepted {
                self.metrics
                    .routed(&self.config.original_queue, RoutedTo::Returned);
            }
            returned += accepted.len() as u64;
        }
        self.client
            .delete_queue()
            .queue_url(&url)
            .send()
            .await
            .map_err(sdk_error("DeleteQueue", &name))?;
        tracing::info!(session = %key, returned, "SQS session ended; its queue deleted");
        Ok(SessionEnded { returned })
    }

    /// Messages received by someone and neither deleted nor visible again yet, plus delayed ones.
    async fn in_flight(&self, url: &str) -> Result<u64, SqsSplitterError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(sdk_error("GetQueueAttributes", url))?;
        Ok(out
            .attributes
            .unwrap_or_default()
            .values()
            .filter_map(|n| n.parse::<u64>().ok())
            .sum())
    }
}
