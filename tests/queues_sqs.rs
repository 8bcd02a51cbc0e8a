//! The SQS splitter against moto (an SQS-compatible server on loopback, one per test; the AWS SDK
//! for Rust as client): every message exactly once across two sessions and the app, in order per
//! FIFO group, attributes intact; no loss when the splitter dies mid-stream; overlapping filters
//! (and undecidable jq filters) refused; session end returns leftovers and deletes the queue.

#[path = "support/moto.rs"]
mod moto;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageAttributeValue, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use mirrord_operator::coordinator::queues::{
    filter::RegisterError,
    metrics::{RoutedTo, SplitterMetrics},
    sqs::{SESSION_ATTRIBUTE, SqsSplitConfig, SqsSplitter, SqsSplitterError},
};
use moto::Moto;

const TENANTS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const KINDS: [&str; 3] = ["new", "paid", "refund"];

/// Counts routed copies (tests wait on progress through it).
#[derive(Default)]
struct Counting {
    routed: AtomicU64,
    errors: Mutex<Vec<&'static str>>,
}

impl SplitterMetrics for Counting {
    fn routed(&self, _: &str, _: RoutedTo<'_>) {
        self.routed.fetch_add(1, Ordering::Relaxed);
    }
    fn lag(&self, _: &str, _: u32) {}
    fn error(&self, _: &str, kind: &'static str) {
        self.errors.lock().unwrap().push(kind);
    }
}

fn string(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .unwrap()
}

fn number(value: u64) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("Number")
        .string_value(value.to_string())
        .build()
        .unwrap()
}

async fn create(client: &Client, name: &str) -> String {
    let mut request = client.create_queue().queue_name(name);
    if name.ends_with(".fifo") {
        request = request.attributes(QueueAttributeName::FifoQueue, "true");
    }
    request.send().await.unwrap().queue_url.unwrap()
}

async fn url(client: &Client, name: &str) -> String {
    client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap()
}

/// Message `seq`: tenant and kind cycle, amount = seq % 100, body JSON.
fn message(seq: u64, fifo: bool) -> SendMessageBatchRequestEntry {
    let tenant = TENANTS[(seq % 4) as usize];
    let mut entry = SendMessageBatchRequestEntry::builder()
        .id(format!("m{seq}"))
        .message_body(format!(
            r#"{{"seq":{seq},"tenant":"{tenant}","amount":{}}}"#,
            seq % 100
        ))
        .message_attributes("tenant", string(tenant))
        .message_attributes("kind", string(KINDS[(seq % 3) as usize]))
        .message_attributes("seq", number(seq));
    if fifo {
        entry = entry
            .message_group_id(tenant)
            .message_deduplication_id(format!("d{seq}"));
    }
    entry.build().unwrap()
}

/// moto's SQS costs grow with queue depth (each send and receive scans the queue: 0.5 s per
/// receive at 700 messages, minutes for a 2,000-message FIFO backlog), so a paced publisher keeps
/// at most this many messages between the publisher and the consumers, as a live producer would.
const WINDOW: usize = 100;

/// No new message for this long means the pipeline is stuck (not merely slow).
const STALL: Duration = Duration::from_secs(60);

/// How many distinct messages the consumers have seen, and since when that number stands still.
struct Progress {
    seen: usize,
    since: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            seen: 0,
            since: Instant::now(),
        }
    }

    /// Records `seen`; true when it has not grown for [`STALL`].
    fn stalled(&mut self, seen: usize) -> bool {
        if seen != self.seen {
            *self = Progress {
                seen,
                since: Instant::now(),
            };
        }
        self.since.elapsed() > STALL
    }
}

/// Publishes `seqs` in batches of 10; with `paced`, waits before each batch until the consumers
/// have seen all but [`WINDOW`] of what was published.
async fn publish(
    client: &Client,
    url: &str,
    seqs: std::ops::Range<u64>,
    fifo: bool,
    paced: Option<&Seen>,
) {
    let seqs: Vec<u64> = seqs.collect();
    let mut published = 0;
    for chunk in seqs.chunks(10) {
        if let Some(seen) = paced {
            let mut progress = Progress::new();
            loop {
                let now = seen.lock().unwrap().len();
                if published <= now + WINDOW {
                    break;
                }
                assert!(
                    !progress.stalled(now),
                    "no message arrived for {STALL:?} ({now} of {published} published)"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let out = client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(chunk.iter().map(|&s| message(s, fifo)).collect()))
            .send()
            .await
            .unwrap();
        assert!(out.failed().is_empty(), "{:?}", out.failed());
        published += chunk.len();
    }
}

/// One received copy.
#[derive(Debug, Clone)]
struct Got {
    seq: u64,
    tenant: String,
    kind: String,
    amount: u64,
    stamp: Option<String>,
}

/// Distinct sequence numbers received by any consumer.
type Seen = Arc<Mutex<HashSet<u64>>>;

/// Reads and deletes from `url` until `stop` says so; returns what arrived, in arrival order.
async fn consume(client: Client, url: String, stop: Arc<AtomicU64>, seen: Seen) -> Vec<Got> {
    let mut got = Vec::new();
    // `collect` stops this; the cap only bounds the loop if the test itself panicked.
    let deadline = Instant::now() + Duration::from_secs(900);
    while stop.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        let out = client
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .unwrap();
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            continue;
        }
        let mut deletes = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let attrs = m.message_attributes().unwrap();
            let attr = |n: &str| {
                attrs
                    .get(n)
                    .and_then(|v| v.string_value())
                    .map(str::to_owned)
            };
            let body: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
            let seq = attr("seq").unwrap().parse().unwrap();
            assert_eq!(body["seq"], seq, "body and attributes belong together");
            seen.lock().unwrap().insert(seq);
            got.push(Got {
                seq,
                tenant: attr("tenant").unwrap(),
                kind: attr("kind").unwrap(),
                amount: body["amount"].as_u64().unwrap(),
                stamp: attr(SESSION_ATTRIBUTE),
            });
            deletes.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap())
                    .build()
                    .unwrap(),
            );
        }
        client
            .delete_message_batch()
            .queue_url(&url)
            .set_entries(Some(deletes))
            .send()
            .await
            .unwrap();
    }
    got
}

/// Waits until `expected` distinct messages arrived or none arrived for [`STALL`], then stops the
/// consumers (the assertions on what they got report a shortfall).
async fn collect(
    consumers: Vec<tokio::task::JoinHandle<Vec<Got>>>,
    stop: Arc<AtomicU64>,
    expected: usize,
    seen: &Seen,
) -> Vec<Vec<Got>> {
    let mut progress = Progress::new();
    loop {
        let now = seen.lock().unwrap().len();
        if now >= expected || progress.stalled(now) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let stragglers (duplicates) arrive before stopping.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(1, Ordering::Relaxed);
    let mut out = Vec::new();
    for consumer in consumers {
        out.push(consumer.await.unwrap());
    }
    out
}

fn attributes(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_and_the_app_get_every_message_exactly_once_in_group_order() {
    const N: u64 = 2_000;
    let moto = Moto::start();
    let client = moto.client();
    let original = "orders.fifo";
    let original_url = create(&client, original).await;
    let metrics = Arc::new(Counting::default());
    let splitter = SqsSplitter::spawn(
        client.clone(),
        SqsSplitConfig::new(original),
        [],
        metrics.clone(),
    )
    .unwrap();
    assert_eq!(splitter.output_queue(), "orders-mirrord-output.fifo");
    // alice: attributes only; bob: attributes + jq on the body (disjoint from alice by tenant).
    let alice = splitter
        .add_session("a11ce", &attributes(&[("tenant", "^alice$")]), None)
        .await
        .unwrap();
    assert_eq!(alice.name, "orders-mirrord-a11ce.fifo");
    let bob = splitter
        .add_session(
            "b0b",
            &attributes(&[("tenant", "^bob$")]),
            Some(".amount >= 50"),
        )
        .await
        .unwrap();
    let output_url = url(&client, "orders-mirrord-output.fifo").await;

    let stop = Arc::new(AtomicU64::new(0));
    let received = Seen::default();
    let consumers = [alice.url.clone(), bob.url.clone(), output_url]
        .into_iter()
        .map(|u| tokio::spawn(consume(client.clone(), u, stop.clone(), received.clone())))
        .collect();
    publish(&client, &original_url, 0..N, true, Some(&received)).await;
    let got = collect(consumers, stop, N as usize, &received).await;

    let mut seen: HashMap<u64, usize> = HashMap::new();
    for (i, queue) in got.iter().enumerate() {
        for g in queue {
            *seen.entry(g.seq).or_default() += 1;
            assert_eq!(g.tenant, TENANTS[(g.seq % 4) as usize]);
            assert_eq!(g.kind, KINDS[(g.seq % 3) as usize]);
            match i {
                0 => {
                    assert_eq!(g.tenant, "alice", "{g:?}");
                    assert_eq!(g.stamp.as_deref(), Some("a11ce"));
                }
                1 => {
                    assert!(g.tenant == "bob" && g.amount >= 50, "{g:?}");
                    assert_eq!(g.stamp.as_deref(), Some("b0b"));
                }
                _ => {
                    assert!(
                        g.tenant != "alice" && !(g.tenant == "bob" && g.amount >= 50),
                        "{g:?}"
                    );
                    assert_eq!(g.stamp, None);
                }
            }
        }
        // FIFO: per group (tenant), copies arrive in publish order.
        for tenant in TENANTS {
            let seqs: Vec<u64> = queue
                .iter()
                .filter(|g| g.tenant == tenant)
                .map(|g| g.seq)
                .collect();
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "queue {i} tenant {tenant} out of order"
            );
        }
    }
    assert_eq!(seen.len(), N as usize, "every message arrived");
    assert!(seen.values().all(|&n| n == 1), "exactly once");
    assert_eq!(got[0].len(), N as usize / 4);
    let bobs = (0..N).filter(|s| s % 4 == 1 && s % 100 >= 50).count();
    assert_eq!(got[1].len(), bobs);
    assert!(metrics.errors.lock().unwrap().is_empty());
    splitter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_splitter_mid_stream_loses_nothing() {
    const N: u64 = 1_000;
    const CRASHES: usize = 2;
    let moto = Moto::start();
    let client = moto.client();
    let original = "events";
    let original_url = create(&client, original).await;
    let mut config = SqsSplitConfig::new(original);
    // Originals received by a dead splitter come back quickly.
    config.visibility_timeout = Duration::from_secs(2);
    let metrics = Arc::new(Counting::default());
    let spawn = || {
        SqsSplitter::spawn(
            client.clone(),
            config.clone(),
            [(
                "a11ce".to_owned(),
                attributes(&[("tenant", "^alice$")]),
                None,
            )],
            metrics.clone(),
        )
        .unwrap()
    };
    let mut splitter = spawn();
    let received = Seen::default();
    // Published while the splitter runs and dies, paced by what the consumers have read.
    let publisher = tokio::spawn({
        let (client, received) = (client.clone(), received.clone());
        async move { publish(&client, &original_url, 0..N, false, Some(&received)).await }
    });
    // The session queue exists once the splitter has set up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metrics.routed.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "splitter made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stop = Arc::new(AtomicU64::new(0));
    let consumers = ["events-mirrord-a11ce", "events-mirrord-output"]
        .into_iter()
        .map(|name| {
            let client = client.clone();
            let stop = stop.clone();
            let received = received.clone();
            tokio::spawn(async move {
                let u = url(&client, name).await;
                consume(client, u, stop, received).await
            })
        })
        .collect();
    for crash in 1..=CRASHES {
        let target = (N as usize * crash / (CRASHES + 1)) as u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        while metrics.routed.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "no progress before crash {crash}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        splitter.abort();
        splitter = spawn();
    }
    publisher.await.unwrap();
    let got = collect(consumers, stop, N as usize, &received).await;
    splitter.stop().await;

    let mut seen: HashMap<u64, usize> = HashMap::new();
    for g in got.iter().flatten() {
        *seen.entry(g.seq).or_default() += 1;
    }
    assert!(got[0].iter().all(|g| g.tenant == "alice"));
    assert!(got[1].iter().all(|g| g.tenant != "alice"));
    let missing: Vec<u64> = (0..N).filter(|s| !seen.contains_key(s)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    // A crash repeats at most the batch it had received (10 messages).
    assert!(
        duplicates <= 10 * CRASHES,
        "{duplicates} duplicates after {CRASHES} crashes"
    );
    eprintln!("duplicates after {CRASHES} crashes: {duplicates}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_and_undecidable_filters_are_refused_naming_the_other_session() {
    let moto = Moto::start();
    let client = moto.client();
    create(&client, "jobs").await;
    let splitter = SqsSplitter::spawn(
        client.clone(),
        SqsSplitConfig::new("jobs"),
        [],
        Arc::new(Counting::default()),
    )
    .unwrap();
    splitter
        .add_session("a11ce", &attributes(&[("tenant", "^a")]), None)
        .await
        .unwrap();
    let err = splitter
        .add_session("b0b", &attributes(&[("tenant", "e$")]), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SqsSplitterError::Register(RegisterError::Overlap { other, .. }) if other == "a11ce"),
        "{err}"
    );
    assert!(err.to_string().contains("session a11ce"), "{err}");
    // jq cannot be compared: refused unless the attributes already separate the sessions.
    let err = splitter
        .add_session("ca201", &BTreeMap::new(), Some(".user == \"carol\""))
        .await
        .unwrap_err();
    assert_eq!(err.as_label(), "filter-undecided");
    assert!(err.to_string().contains("jq"), "{err}");
    splitter
        .add_session(
            "da5e",
            &attributes(&[("tenant", "^dave$")]),
            Some(".urgent"),
        )
        .await
        .unwrap();
    // A bad jq program is a clear error, not a session.
    let err = splitter
        .add_session("e", &attributes(&[("tenant", "^eve$")]), Some(".a | ("))
        .await
        .unwrap_err();
    assert_eq!(err.as_label(), "invalid-filter");
    // The refused sessions got no queue.
    let queues = client
        .list_queues()
        .send()
        .await
        .unwrap()
        .queue_urls
        .unwrap_or_default();
    let mut names: Vec<_> = queues
        .iter()
        .map(|u| u.rsplit('/').next().unwrap().to_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "jobs",
            "jobs-mirrord-a11ce",
            "jobs-mirrord-da5e",
            "jobs-mirrord-output"
        ]
    );
    splitter.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_end_returns_leftovers_to_the_output_queue_and_deletes_its_queue() {
    const N: u64 = 40;
    let moto = Moto::start();
    let client = moto.client();
    let original_url = create(&client, "mail").await;
    let metrics = Arc::new(Counting::default());
    let splitter = SqsSplitter::spawn(
        client.clone(),
        SqsSplitConfig::new("mail"),
        [],
        metrics.clone(),
    )
    .unwrap();
    let alice = splitter
        .add_session("a11ce", &attributes(&[("tenant", "^alice$")]), None)
        .await
        .unwrap();
    publish(&client, &original_url, 0..N, false, None).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.routed.load(Ordering::Relaxed) < N {
        assert!(Instant::now() < deadline, "not all routed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nobody read alice's queue: her 10 messages go back.
    let ended = splitter.remove_session("a11ce").await.unwrap();
    assert_eq!(ended.returned, N / 4);
    let err = client
        .get_queue_url()
        .queue_name(&alice.name)
        .send()
        .await
        .unwrap_err();
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_queue_does_not_exist()),
        "session queue deleted"
    );
    let stop = Arc::new(AtomicU64::new(0));
    let output = url(&client, "mail-mirrord-output").await;
    let received = Seen::default();
    let reader = tokio::spawn(consume(
        client.clone(),
        output,
        stop.clone(),
        received.clone(),
    ));
    let got = collect(vec![reader], stop, N as usize, &received)
        .await
        .remove(0);
    let mut seqs: Vec<u64> = got.iter().map(|g| g.seq).collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (0..N).collect::<Vec<_>>(),
        "each message once on the output"
    );
    assert!(
        got.iter().all(|g| g.stamp.is_none()),
        "stamp removed on return"
    );
    assert!(matches!(
        splitter.remove_session("a11ce").await,
        Err(SqsSplitterError::NoSuchSession(_))
    ));
    splitter.stop().await;
}
