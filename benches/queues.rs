//! Queue splitter throughput and added latency against a real RabbitMQ node on loopback
//! (`docs/benchmarks.md`, "Queue splitting"). Not criterion: one broker run, three setups:
//!
//! - **direct**: the consumer reads the original queue itself (no splitter);
//! - **splitter, 0 sessions**: the consumer reads the output queue behind the splitter;
//! - **splitter, 10 sessions**: ten sessions' filters take half the messages (tenants t0..t9 of
//!   t0..t19), eleven consumers read the output and session queues.
//!
//! Throughput: `QUEUE_BENCH_MESSAGES` (20 000) published as fast as confirms allow while the
//! consumers read; messages/s = messages / (last received − first published). Latency: 2 000
//! messages paced at 500/s, each carrying its send time; p50/p99 of receive − send.
//!
//! SQS ([`sqs`]): the same three setups against moto, an SQS emulator on loopback
//! (`tests/support/moto.rs`); its numbers are moto's (a Python server), not AWS's.

#[path = "../tests/support/moto.rs"]
mod moto;
#[path = "../tests/support/rabbitmq.rs"]
mod rabbitmq;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
    },
    types::{AMQPValue, FieldTable},
};
use mirrord_operator::coordinator::queues::{
    metrics::NoMetrics,
    rabbitmq::{RmqSplitConfig, RmqSplitter},
};
use rabbitmq::RabbitNode;
use tokio::sync::mpsc;

const SESSIONS: usize = 10;

/// Reads `queues` until `expected` messages arrived in total; returns each message's latency
/// (from the send time in its body) and when the last one arrived.
async fn consume(
    uri: &str,
    queues: &[String],
    expected: usize,
    epoch: Instant,
) -> (Vec<Duration>, Instant) {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut channels = Vec::new();
    for queue in queues {
        let channel = conn.create_channel().await.unwrap();
        channel
            .basic_qos(256, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "bench".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let sent = u64::from_le_bytes(delivery.data[..8].try_into().unwrap());
                let latency = epoch.elapsed().saturating_sub(Duration::from_nanos(sent));
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                if tx.send(latency).is_err() {
                    break;
                }
            }
        });
        channels.push(channel);
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(expected);
    let deadline = Instant::now() + Duration::from_secs(300);
    while latencies.len() < expected {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(latency)) => latencies.push(latency),
            _ => panic!("only {} of {expected} messages arrived", latencies.len()),
        }
    }
    let last = Instant::now();
    let _ = conn.close(200, "bench done".into()).await;
    (latencies, last)
}

/// Publishes `count` messages to `queue` (tenant header `t<i % 20>`), `pace` apart when given;
/// returns when the first was sent.
async fn publish(
    uri: &str,
    queue: &str,
    count: usize,
    pace: Option<Duration>,
    epoch: Instant,
) -> Instant {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let first = Instant::now();
    let mut confirms = Vec::new();
    let mut ticker = pace.map(tokio::time::interval);
    for i in 0..count {
        if let Some(ticker) = &mut ticker {
            ticker.tick().await;
        }
        let mut headers = FieldTable::default();
        headers.insert(
            "tenant".into(),
            AMQPValue::LongString(format!("t{}", i % 20).into()),
        );
        let mut body = (epoch.elapsed().as_nanos() as u64).to_le_bytes().to_vec();
        body.extend_from_slice(&[0u8; 120]);
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default().with_headers(headers),
            )
            .await
            .unwrap();
        confirms.push(confirm);
        // Bound the unconfirmed window like a real producer would.
        if confirms.len() >= 512 {
            for c in confirms.drain(..) {
                c.await.unwrap();
            }
        }
    }
    for c in confirms {
        c.await.unwrap();
    }
    let _ = conn.close(200, "published".into()).await;
    first
}

struct Setup {
    name: &'static str,
    publish_to: String,
    read: Vec<String>,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1000.0
}

fn main() {
    // `QUEUE_BENCH_BROKERS`: which brokers to run (default both).
    let brokers = std::env::var("QUEUE_BENCH_BROKERS").unwrap_or_else(|_| "rabbitmq,sqs".into());
    if brokers.contains("rabbitmq") {
        rabbitmq_main();
    }
    if brokers.contains("sqs") {
        sqs::main();
    }
}

fn rabbitmq_main() {
    let messages: usize = std::env::var("QUEUE_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let node = RabbitNode::start();
    let uri = node.uri();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let epoch = Instant::now();
        let conn = Connection::connect(&uri, ConnectionProperties::default())
            .await
            .unwrap();
        let admin = conn.create_channel().await.unwrap();
        for queue in ["direct", "orders", "busy"] {
            let durable = QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            };
            admin
                .queue_declare(queue.into(), durable, FieldTable::default())
                .await
                .unwrap();
        }
        let idle = RmqSplitter::spawn(
            RmqSplitConfig::new(uri.clone(), "orders"),
            [],
            Arc::new(NoMetrics),
        )
        .unwrap();
        let sessions: Vec<(String, BTreeMap<String, String>)> = (0..SESSIONS)
            .map(|i| {
                (
                    format!("s{i}"),
                    BTreeMap::from([("tenant".to_owned(), format!("^t{i}$"))]),
                )
            })
            .collect();
        let busy = RmqSplitter::spawn(
            RmqSplitConfig::new(uri.clone(), "busy"),
            sessions.clone(),
            Arc::new(NoMetrics),
        )
        .unwrap();
        // Let both splitters connect and declare their queues.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut busy_read = vec![busy.output_queue().to_owned()];
        busy_read.extend(sessions.iter().map(|(k, _)| format!("busy-mirrord-{k}")));
        let setups = [
            Setup {
                name: "direct (no splitter)",
                publish_to: "direct".into(),
                read: vec!["direct".into()],
            },
            Setup {
                name: "splitter, 0 sessions",
                publish_to: "orders".into(),
                read: vec![idle.output_queue().to_owned()],
            },
            Setup {
                name: "splitter, 10 sessions",
                publish_to: "busy".into(),
                read: busy_read,
            },
        ];
        println!("| setup | messages/s | × direct | latency p50 ms | p99 ms | added p50 ms |");
        println!("|---|---|---|---|---|---|");
        let mut direct_rate = 0.0;
        let mut direct_p50 = 0.0;
        for setup in &setups {
            for queue in &setup.read {
                let _ = admin
                    .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                    .await;
            }
            let reader = tokio::spawn(consume_owned(
                uri.clone(),
                setup.read.clone(),
                messages,
                epoch,
            ));
            tokio::time::sleep(Duration::from_millis(300)).await;
            let first = publish(&uri, &setup.publish_to, messages, None, epoch).await;
            let (_, last) = reader.await.unwrap();
            let rate = messages as f64 / last.duration_since(first).as_secs_f64();

            let paced = 2_000;
            let reader = tokio::spawn(consume_owned(uri.clone(), setup.read.clone(), paced, epoch));
            tokio::time::sleep(Duration::from_millis(300)).await;
            publish(
                &uri,
                &setup.publish_to,
                paced,
                Some(Duration::from_millis(2)),
                epoch,
            )
            .await;
            let (mut latencies, _) = reader.await.unwrap();
            latencies.sort();
            let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
            if setup.publish_to == "direct" {
                direct_rate = rate;
                direct_p50 = p50;
            }
            println!(
                "| {} | {:.0} | {:.2} | {:.3} | {:.3} | {:.3} |",
                setup.name,
                rate,
                rate / direct_rate,
                p50,
                p99,
                p50 - direct_p50
            );
        }
        idle.stop().await;
        busy.stop().await;
        let _ = conn.close(200, "bench over".into()).await;
    });
}

async fn consume_owned(
    uri: String,
    queues: Vec<String>,
    expected: usize,
    epoch: Instant,
) -> (Vec<Duration>, Instant) {
    consume(&uri, &queues, expected, epoch).await
}

/// The SQS half: moto on loopback, the AWS SDK client, `SqsSplitter`.
mod sqs {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use aws_sdk_sqs::Client;
    use aws_sdk_sqs::types::{
        DeleteMessageBatchRequestEntry, MessageAttributeValue, SendMessageBatchRequestEntry,
    };
    use mirrord_operator::coordinator::queues::{
        metrics::NoMetrics,
        sqs::{SqsSplitConfig, SqsSplitter},
    };
    use tokio::sync::mpsc;

    use super::{SESSIONS, moto::Moto, percentile};

    /// Reads and deletes from `queue` (one long-polling loop), sending each message's latency.
    async fn read(
        client: Client,
        url: String,
        epoch: Instant,
        tx: mpsc::UnboundedSender<Duration>,
        stop: Arc<AtomicBool>,
    ) {
        // Until stopped; what was received is always deleted (no redelivery into the next setup).
        while !stop.load(Ordering::Relaxed) {
            let Ok(out) = client
                .receive_message()
                .queue_url(&url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
            else {
                return;
            };
            let messages = out.messages.unwrap_or_default();
            let mut deletes = Vec::new();
            for (i, m) in messages.iter().enumerate() {
                let sent: u64 = m
                    .body()
                    .and_then(|b| b.split(' ').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_default();
                let latency = epoch.elapsed().saturating_sub(Duration::from_nanos(sent));
                let _ = tx.send(latency);
                deletes.push(
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle().unwrap_or_default())
                        .build()
                        .unwrap(),
                );
            }
            if !deletes.is_empty() {
                let _ = client
                    .delete_message_batch()
                    .queue_url(&url)
                    .set_entries(Some(deletes))
                    .send()
                    .await;
            }
        }
    }

    /// Reads `urls` until `expected` messages arrived: latencies and when the last arrived.
    async fn consume(
        client: &Client,
        urls: &[String],
        expected: usize,
        epoch: Instant,
    ) -> (Vec<Duration>, Instant) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = urls
            .iter()
            .map(|u| {
                let stop = stop.clone();
                tokio::spawn(read(client.clone(), u.clone(), epoch, tx.clone(), stop))
            })
            .collect();
        drop(tx);
        let mut latencies = Vec::with_capacity(expected);
        let mut last = Instant::now();
        while latencies.len() < expected {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                Ok(Some(latency)) => {
                    latencies.push(latency);
                    last = Instant::now();
                }
                _ => panic!("only {} of {expected} messages arrived", latencies.len()),
            }
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            let _ = reader.await;
        }
        (latencies, last)
    }

    /// Sends `count` messages (tenants t0..t19) in batches of 10, `pace` apart per batch when
    /// given; returns when the first was sent.
    async fn publish(
        client: &Client,
        url: &str,
        count: usize,
        pace: Option<Duration>,
        epoch: Instant,
    ) -> Instant {
        let first = Instant::now();
        let mut sent = 0;
        while sent < count {
            let n = (count - sent).min(if pace.is_some() { 1 } else { 10 });
            let entries = (sent..sent + n)
                .map(|i| {
                    let now = epoch.elapsed().as_nanos() as u64;
                    SendMessageBatchRequestEntry::builder()
                        .id(format!("m{i}"))
                        .message_body(format!("{now} {}", "x".repeat(100)))
                        .message_attributes(
                            "tenant",
                            MessageAttributeValue::builder()
                                .data_type("String")
                                .string_value(format!("t{}", i % 20))
                                .build()
                                .unwrap(),
                        )
                        .build()
                        .unwrap()
                })
                .collect();
            client
                .send_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
                .unwrap();
            sent += n;
            if let Some(pace) = pace {
                tokio::time::sleep(pace).await;
            }
        }
        first
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

    pub fn main() {
        let messages: usize = std::env::var("QUEUE_BENCH_SQS_MESSAGES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300);
        let moto = Moto::start();
        let client = moto.client();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let epoch = Instant::now();
            for queue in ["direct", "orders", "busy"] {
                client
                    .create_queue()
                    .queue_name(queue)
                    .send()
                    .await
                    .unwrap();
            }
            let idle = SqsSplitter::spawn(
                client.clone(),
                SqsSplitConfig::new("orders"),
                [],
                Arc::new(NoMetrics),
            )
            .unwrap();
            let sessions: Vec<_> = (0..SESSIONS)
                .map(|i| {
                    (
                        format!("s{i}"),
                        [("tenant".to_owned(), format!("^t{i}$"))].into(),
                        None,
                    )
                })
                .collect();
            let busy = SqsSplitter::spawn(
                client.clone(),
                SqsSplitConfig::new("busy"),
                sessions.clone(),
                Arc::new(NoMetrics),
            )
            .unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let mut busy_read = vec![url(&client, busy.output_queue()).await];
            for (key, _, _) in &sessions {
                busy_read.push(url(&client, &format!("busy-mirrord-{key}")).await);
            }
            let setups = [
                (
                    "direct (no splitter)",
                    "direct",
                    vec![url(&client, "direct").await],
                ),
                (
                    "splitter, 0 sessions",
                    "orders",
                    vec![url(&client, idle.output_queue()).await],
                ),
                ("splitter, 10 sessions", "busy", busy_read),
            ];
            println!();
            println!("SQS (moto {}):", moto.endpoint);
            println!("| setup | messages/s | × direct | latency p50 ms | p99 ms | added p50 ms |");
            println!("|---|---|---|---|---|---|");
            let (mut direct_rate, mut direct_p50) = (0.0, 0.0);
            for (name, publish_to, read) in &setups {
                let target = url(&client, publish_to).await;
                for queue in read.iter().chain([&target]) {
                    let _ = client.purge_queue().queue_url(queue).send().await;
                }
                let reader = {
                    let client = client.clone();
                    let read = read.clone();
                    tokio::spawn(async move { consume(&client, &read, messages, epoch).await })
                };
                let first = publish(&client, &target, messages, None, epoch).await;
                let (_, last) = reader.await.unwrap();
                let rate = messages as f64 / last.duration_since(first).as_secs_f64();

                let paced = 300;
                let reader = {
                    let client = client.clone();
                    let read = read.clone();
                    tokio::spawn(async move { consume(&client, &read, paced, epoch).await })
                };
                tokio::time::sleep(Duration::from_millis(300)).await;
                publish(
                    &client,
                    &target,
                    paced,
                    Some(Duration::from_millis(10)),
                    epoch,
                )
                .await;
                let (mut latencies, _) = reader.await.unwrap();
                latencies.sort();
                let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
                if *publish_to == "direct" {
                    direct_rate = rate;
                    direct_p50 = p50;
                }
                println!(
                    "| {name} | {rate:.0} | {:.2} | {p50:.1} | {p99:.1} | {:.1} |",
                    rate / direct_rate,
                    p50 - direct_p50
                );
            }
            idle.stop().await;
            busy.stop().await;
        });
    }
}
