//! The RabbitMQ splitter against a real broker (a private `rabbitmq-server` node on loopback per
//! test): exactly-once routing in publish order, no loss when the splitter is killed mid-stream or
//! the broker restarts, session end returning messages, overlapping filters refused.

#[path = "support/rabbitmq.rs"]
mod rabbitmq;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
};
use mirrord_operator::coordinator::queues::{
    filter::RegisterError,
    metrics::{RoutedTo, SplitterMetrics},
    rabbitmq::{RmqSplitConfig, RmqSplitter, SESSION_HEADER, SplitterError},
};
use rabbitmq::{RabbitNode, declare};

const ORIGINAL: &str = "orders";
const TENANTS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const KINDS: [&str; 3] = ["new", "paid", "refund"];

/// Counts what the splitter reports.
#[derive(Default)]
struct Counting {
    routed: AtomicU64,
    errors: AtomicU64,
}

impl SplitterMetrics for Counting {
    fn routed(&self, _: &str, _: RoutedTo<'_>) {
        self.routed.fetch_add(1, Ordering::Relaxed);
    }
    fn lag(&self, _: &str, _: u32) {}
    fn error(&self, _: &str, _: &'static str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

fn filter(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(h, r)| (h.to_string(), r.to_string()))
        .collect()
}

async fn connect(node: &RabbitNode) -> (Connection, Channel) {
    let conn = Connection::connect(&node.uri(), ConnectionProperties::default())
        .await
        .expect("connect to the test broker");
    let channel = conn.create_channel().await.expect("channel");
    (conn, channel)
}

/// The headers of message `seq`: a deterministic mix of tenants, kinds, a numeric header, and
/// messages without any tenant.
fn headers_of(seq: u64) -> FieldTable {
    let mut headers = FieldTable::default();
    if seq % 7 != 6 {
        headers.insert(
            "tenant".into(),
            AMQPValue::LongString(TENANTS[(seq % 4) as usize].into()),
        );
    }
    headers.insert(
        "kind".into(),
        AMQPValue::LongString(KINDS[(seq / 3 % 3) as usize].into()),
    );
    headers.insert("seq".into(), AMQPValue::LongLongInt(seq as i64));
    headers
}

/// Where message `seq` must end up for the sessions of [`two_sessions`], written out from the
/// filters independently of the splitter's router.
fn expected_destination(seq: u64) -> &'static str {
    let tenant = (seq % 7 != 6).then(|| TENANTS[(seq % 4) as usize]);
    let kind = KINDS[(seq / 3 % 3) as usize];
    match tenant {
        Some("alice") => "a1",
        Some("bob") if kind == "new" || kind == "paid" => "b2",
        _ => "app",
    }
}

/// The filters of [`two_sessions`], for a splitter started with them.
fn two_filters() -> [(String, BTreeMap<String, String>); 2] {
    [
        ("a1".to_owned(), filter(&[("tenant", "^alice$")])),
        (
            "b2".to_owned(),
            filter(&[("tenant", "^bob$"), ("kind", "^(new|paid)$")]),
        ),
    ]
}

async fn two_sessions(splitter: &RmqSplitter) -> (String, String) {
    let a1 = splitter
        .add_session("a1", &filter(&[("tenant", "^alice$")]))
        .await
        .expect("session a1");
    let b2 = splitter
        .add_session(
            "b2",
            &filter(&[("tenant", "^bob$"), ("kind", "^(new|paid)$")]),
        )
        .await
        .expect("session b2");
    (a1, b2)
}

/// Publishes messages `range` to the original queue with confirms; body = the sequence number.
async fn publish(node: &RabbitNode, range: std::ops::Range<u64>) {
    let (conn, channel) = connect(node).await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for seq in range {
        let properties = BasicProperties::default()
            .with_headers(headers_of(seq))
            .with_message_id(format!("m{seq}").into())
            .with_content_type("text/plain".into())
            .with_delivery_mode(2);
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    ORIGINAL.into(),
                    BasicPublishOptions::default(),
                    seq.to_string().as_bytes(),
                    properties,
                )
                .await
                .expect("publish"),
        );
        if confirms.len() >= 500 {
            for confirm in confirms.drain(..) {
                assert!(confirm.await.expect("confirm").is_ack());
            }
        }
    }
    for confirm in confirms {
        assert!(confirm.await.expect("confirm").is_ack());
    }
    conn.close(200, "done".into()).await.ok();
}

/// A message as a consumer saw it.
#[derive(Debug, Clone)]
struct Seen {
    seq: u64,
    message_id: Option<String>,
    content_type: Option<String>,
    session_stamp: Option<String>,
    tenant_header: Option<String>,
}

/// Consumes `queue` (auto-ack) into a shared list until the connection is dropped.
struct Collector {
    seen: Arc<Mutex<Vec<Seen>>>,
    _conn: Connection,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start(node: &RabbitNode, queue: &str) -> Collector {
        let (conn, channel) = connect(node).await;
        declare(&channel, queue).await;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "test-consumer".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let text = |key: &str| match delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(key))
                {
                    Some(AMQPValue::LongString(s)) => Some(s.to_string()),
                    _ => None,
                };
                let seen = Seen {
                    seq: std::str::from_utf8(&delivery.data)
                        .unwrap()
                        .parse()
                        .unwrap(),
                    message_id: delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|s| s.to_string()),
                    content_type: delivery
                        .properties
                        .content_type()
                        .as_ref()
                        .map(|s| s.to_string()),
                    session_stamp: text(SESSION_HEADER),
                    tenant_header: text("tenant"),
                };
                sink.lock().unwrap().push(seen);
            }
        });
        Collector {
            seen,
            _conn: conn,
            task,
        }
    }

    fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn stop(self) -> Vec<Seen> {
        self.task.abort();
        self.seen.lock().unwrap().clone()
    }
}

/// Waits until the collectors together hold at least `total` messages and nothing more arrives
/// for a second (duplicates would), bounded by `limit`.
async fn settle(collectors: &[&Collector], total: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut last = (0, Instant::now());
    loop {
        let now: usize = collectors.iter().map(|c| c.len()).sum();
        if now != last.0 {
            last = (now, Instant::now());
        } else if now >= total && last.1.elapsed() > Duration::from_secs(1) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {now} of {total} messages arrived within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// First occurrences must come in publish order; returns (distinct seqs, duplicate count).
fn in_order(name: &str, seen: &[Seen]) -> (BTreeSet<u64>, usize) {
    let mut distinct = BTreeSet::new();
    let mut last = None;
    let mut duplicates = 0;
    for message in seen {
        if distinct.insert(message.seq) {
            assert!(
                last < Some(message.seq),
                "{name}: message {} arrived after {:?}",
                message.seq,
                last
            );
            last = Some(message.seq);
        } else {
            duplicates += 1;
        }
    }
    (distinct, duplicates)
}

fn check_destinations(name: &str, distinct: &BTreeSet<u64>) {
    for seq in distinct {
        assert_eq!(
            expected_destination(*seq),
            name,
            "message {seq} went to {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_reaches_exactly_one_consumer_in_order() {
    let node = RabbitNode::start();
    let (_conn, channel) = connect(&node).await;
    declare(&channel, ORIGINAL).await;
    let metrics = Arc::new(Counting::default());
    let splitter = RmqSplitter::spawn(
        RmqSplitConfig::new(node.uri(), ORIGINAL),
        [],
        metrics.clone(),
    )
    .unwrap();
    let (a1_queue, b2_queue) = two_sessions(&splitter).await;
    let app = Collector::start(&node, splitter.output_queue()).await;
    let a1 = Collector::start(&node, &a1_queue).await;
    let b2 = Collector::start(&node, &b2_queue).await;

    const TOTAL: u64 = 10_000;
    publish(&node, 0..TOTAL).await;
    settle(&[&app, &a1, &b2], TOTAL as usize, Duration::from_secs(180)).await;

    let mut all = BTreeSet::new();
    for (name, collector) in [("app", app), ("a1", a1), ("b2", b2)] {
        let seen = collector.stop();
        let (distinct, duplicates) = in_order(name, &seen);
        assert_eq!(duplicates, 0, "{name}: duplicates without any failure");
        check_destinations(name, &distinct);
        for message in &seen {
            assert_eq!(message.message_id, Some(format!("m{}", message.seq)));
            assert_eq!(message.content_type.as_deref(), Some("text/plain"));
            let expected_stamp = (name != "app").then(|| name.to_owned());
            assert_eq!(message.session_stamp, expected_stamp, "{name} stamp");
        }
        assert!(!distinct.is_empty(), "{name} got nothing");
        let before = all.len();
        all.extend(&distinct);
        assert_eq!(all.len(), before + distinct.len(), "{name} shares messages");
    }
    assert_eq!(all, (0..TOTAL).collect::<BTreeSet<_>>());
    assert_eq!(metrics.routed.load(Ordering::Relaxed), TOTAL);
    assert_eq!(node.queue_depth(ORIGINAL), Some(0));
    splitter.stop().await;
}

/// Set in the environment of a child test process that only runs a splitter (see below).
const CHILD_URI: &str = "MIRRORD_QUEUES_TEST_SPLITTER_URI";

/// Not a test on its own: when [`CHILD_URI`] is set, this process is the splitter that
/// [`killing_the_splitter_mid_stream_loses_nothing`] SIGKILLs, as a coordinator crash would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splitter_child_process() {
    let Ok(uri) = std::env::var(CHILD_URI) else {
        return;
    };
    // A restarted coordinator passes the sessions it already has.
    let _splitter = RmqSplitter::spawn(
        RmqSplitConfig::new(uri, ORIGINAL),
        two_filters(),
        Arc::new(Counting::default()),
    )
    .unwrap();
    println!("splitter-ready");
    tokio::time::sleep(Duration::from_secs(300)).await;
}

/// The splitter's process; SIGKILLed and reaped on drop (also when the test fails).
struct SplitterProcess(std::process::Child);

impl Drop for SplitterProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs [`splitter_child_process`] in a child process; returns once its splitter is started.
fn spawn_splitter_process(node: &RabbitNode) -> SplitterProcess {
    use std::io::BufRead;
    let mut child = SplitterProcess(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "splitter_child_process", "--nocapture"])
            .env(CHILD_URI, node.uri())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the splitter process"),
    );
    let stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
    for line in stdout.lines() {
        if line.expect("child output").contains("splitter-ready") {
            return child;
        }
    }
    panic!("the splitter process exited before it was ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_splitter_mid_stream_loses_nothing() {
    let node = RabbitNode::start();
    let (_conn, channel) = connect(&node).await;
    declare(&channel, ORIGINAL).await;
    const TOTAL: u64 = 10_000;
    publish(&node, 0..TOTAL).await;
    let prefetch = u64::from(RmqSplitConfig::new("", ORIGINAL).prefetch);

    // SIGKILL the splitter's process twice, at about a third and two thirds of the stream; the
    // next one (a restarted coordinator) re-registers the same sessions.
    for remaining in [TOTAL * 2 / 3, TOTAL / 3] {
        let child = spawn_splitter_process(&node);
        let deadline = Instant::now() + Duration::from_secs(120);
        while node
            .queue_depth(ORIGINAL)
            .is_none_or(|depth| depth > remaining)
        {
            assert!(Instant::now() < deadline, "splitter made no progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(child); // SIGKILL, as a crash
    }
    let splitter = RmqSplitter::spawn(
        RmqSplitConfig::new(node.uri(), ORIGINAL),
        two_filters(),
        Arc::new(Counting::default()),
    )
    .unwrap();
    let (a1_queue, b2_queue) = ("orders-mirrord-a1", "orders-mirrord-b2");
    let app = Collector::start(&node, splitter.output_queue()).await;
    let a1 = Collector::start(&node, a1_queue).await;
    let b2 = Collector::start(&node, b2_queue).await;
    settle(&[&app, &a1, &b2], TOTAL as usize, Duration::from_secs(180)).await;

    let mut all = BTreeSet::new();
    let mut duplicates = 0;
    for (name, collector) in [("app", app), ("a1", a1), ("b2", b2)] {
        let (distinct, dups) = in_order(name, &collector.stop());
        check_destinations(name, &distinct);
        duplicates += dups;
        all.extend(distinct);
    }
    assert_eq!(all, (0..TOTAL).collect::<BTreeSet<_>>(), "messages lost");
    // At most the unacked window is published twice per kill.
    assert!(
        duplicates as u64 <= 2 * prefetch,
        "{duplicates} duplicates after two kills (prefetch {prefetch})"
    );
    println!("duplicates after two kills: {duplicates}");
    splitter.stop().await;
}

/// The original queue declared (on the returned connection) and a splitter for it without
/// sessions, its metrics unread.
async fn idle_splitter(node: &RabbitNode) -> (Connection, RmqSplitter) {
    let (conn, channel) = connect(node).await;
    declare(&channel, ORIGINAL).await;
    let splitter = RmqSplitter::spawn(
        RmqSplitConfig::new(node.uri(), ORIGINAL),
        [],
        Arc::new(Counting::default()),
    )
    .unwrap();
    (conn, splitter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_end_returns_unconsumed_messages_to_the_output_queue() {
    let node = RabbitNode::start();
    let (_conn, splitter) = idle_splitter(&node).await;
    let a1_queue = splitter
        .add_session("a1", &filter(&[("tenant", "^alice$")]))
        .await
        .unwrap();
    let app = Collector::start(&node, splitter.output_queue()).await;
    // Nobody consumes a1's queue: its messages wait there.
    const TOTAL: u64 = 400;
    publish(&node, 0..TOTAL).await;
    let for_alice = (0..TOTAL)
        .filter(|s| expected_destination(*s) == "a1")
        .count() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.queue_depth(&a1_queue) != Some(for_alice) {
        assert!(Instant::now() < deadline, "a1's queue never filled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let ended = splitter.remove_session("a1").await.expect("session end");
    assert_eq!(ended.returned, for_alice);
    assert_eq!(node.queue_depth(&a1_queue), None, "session queue deleted");
    settle(&[&app], TOTAL as usize, Duration::from_secs(60)).await;
    let seen = app.stop();
    let distinct: BTreeSet<u64> = seen.iter().map(|m| m.seq).collect();
    assert_eq!(distinct, (0..TOTAL).collect::<BTreeSet<_>>());
    assert_eq!(seen.len(), TOTAL as usize, "no duplicates");
    for message in &seen {
        assert_eq!(message.session_stamp, None, "stamp removed on return");
        assert_eq!(message.message_id, Some(format!("m{}", message.seq)));
    }
    // Returned messages keep their relative order.
    let returned: Vec<u64> = seen
        .iter()
        .filter(|m| m.tenant_header.as_deref() == Some("alice"))
        .map(|m| m.seq)
        .collect();
    assert!(returned.windows(2).all(|w| w[0] < w[1]));
    // A second end of the same session is a clear error.
    assert!(matches!(
        splitter.remove_session("a1").await,
        Err(SplitterError::NoSuchSession(_))
    ));
    splitter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_filters_are_refused_at_connect() {
    let node = RabbitNode::start();
    let (_conn, splitter) = idle_splitter(&node).await;
    splitter
        .add_session("a1", &filter(&[("tenant", "^a")]))
        .await
        .unwrap();
    let refused = splitter
        .add_session("b2", &filter(&[("tenant", "e$")]))
        .await
        .unwrap_err();
    match &refused {
        SplitterError::Register(RegisterError::Overlap { other, .. }) => assert_eq!(other, "a1"),
        other => panic!("expected an overlap naming a1, got {other}"),
    }
    assert!(refused.to_string().contains("session a1"), "{refused}");
    // Nothing was created for the refused session.
    assert_eq!(node.queue_depth("orders-mirrord-b2"), None);
    splitter
        .add_session("c3", &filter(&[("tenant", "^b")]))
        .await
        .expect("disjoint filter accepted");
    let invalid = splitter
        .add_session("d4", &filter(&[("tenant", "(")]))
        .await
        .unwrap_err();
    assert_eq!(invalid.as_label(), "invalid-filter");
    splitter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    let mut node = RabbitNode::start();
    {
        let (conn, channel) = connect(&node).await;
        declare(&channel, ORIGINAL).await;
        conn.close(200, "".into()).await.ok();
    }
    const TOTAL: u64 = 3_000;
    publish(&node, 0..TOTAL).await;
    let metrics = Arc::new(Counting::default());
    let splitter = RmqSplitter::spawn(
        RmqSplitConfig::new(node.uri(), ORIGINAL),
        [],
        metrics.clone(),
    )
    .unwrap();
    let a1_queue = splitter
        .add_session("a1", &filter(&[("tenant", "^alice$")]))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.routed.load(Ordering::Relaxed) < TOTAL / 3 {
        assert!(Instant::now() < deadline, "no progress before the restart");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    node.stop_broker();
    node.restart_broker();
    // After the restart the splitter reconnects by itself and finishes the queue.
    let deadline = Instant::now() + Duration::from_secs(120);
    while node.queue_depth(ORIGINAL) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "splitter did not resume after the restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        metrics.errors.load(Ordering::Relaxed) >= 1,
        "the restart was seen"
    );
    let app = Collector::start(&node, splitter.output_queue()).await;
    let a1 = Collector::start(&node, &a1_queue).await;
    settle(&[&app, &a1], TOTAL as usize, Duration::from_secs(60)).await;
    let mut all = BTreeSet::new();
    for (name, collector) in [("app", app), ("a1", a1)] {
        let (distinct, _) = in_order(name, &collector.stop());
        for seq in &distinct {
            let expected = if expected_destination(*seq) == "a1" {
                "a1"
            } else {
                "app"
            };
            assert_eq!(expected, name, "message {seq}");
        }
        all.extend(distinct);
    }
    assert_eq!(all, (0..TOTAL).collect::<BTreeSet<_>>(), "messages lost");
    splitter.stop().await;
}
