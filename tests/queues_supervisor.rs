//! The coordinator's splitter supervisor against a real broker (a private `rabbitmq-server` node on
//! loopback): registries start splitters for the original queues their consumer's Deployment
//! template names, problems (queue missing, Secret missing, login refused, workload missing) are
//! reported per registry, and a registry that goes away stops its splitter.

#[path = "support/rabbitmq.rs"]
mod rabbitmq;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, future::BoxFuture};
use k8s_openapi::api::core::v1::PodSpec;
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use mirrord_operator::coordinator::queues::{
    crd::MirrordWorkloadQueueRegistry,
    metrics::NoMetrics,
    sessions::{QueueSessionError, RmqSession},
    supervisor::{BrokerSecrets, ProblemReason, Supervisor},
};
use rabbitmq::RabbitNode;
use serde_json::json;

/// Secret `rmq` holds the node's URI, `wrong-password` a URI with a bad password; others are
/// missing.
struct Secrets(String);

impl BrokerSecrets for Secrets {
    fn uri<'a>(&'a self, _: &'a str, secret: &'a str) -> BoxFuture<'a, Result<String, String>> {
        let answer = match secret {
            "rmq" => Ok(self.0.clone()),
            "wrong-password" => Ok(self.0.replace("guest:guest", "guest:nope")),
            other => Err(format!("Secret {other} does not exist")),
        };
        async move { answer }.boxed()
    }
}

fn registry(
    name: &str,
    consumer: &str,
    secret: &str,
    env: &str,
) -> Arc<MirrordWorkloadQueueRegistry> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "queues.mirrord.metalbear.co/v1alpha",
            "kind": "MirrordWorkloadQueueRegistry",
            "metadata": {"name": name, "namespace": "staging"},
            "spec": {
                "queues": {"q": {"queueType": "RMQ", "clusterProperties": secret, "nameSource": {"envVar": env}}},
                "consumer": {"name": consumer, "workloadType": "Deployment"}
            }
        }))
        .unwrap(),
    )
}

/// Deployment `api` reads ORDERS=orders and GONE=no-such-queue.
fn template(namespace: &str, name: &str) -> Option<PodSpec> {
    (namespace == "staging" && name == "api").then(|| {
        serde_json::from_value(json!({"containers": [{"name": "main", "env": [
            {"name": "ORDERS", "value": "orders"},
            {"name": "GONE", "value": "no-such-queue"}
        ]}]}))
        .unwrap()
    })
}

async fn publish(uri: &str, queue: &str, count: usize) {
    publish_with(uri, queue, count, None).await;
}

/// Publishes `count` messages, with header `tenant` when given.
async fn publish_with(uri: &str, queue: &str, count: usize, tenant: Option<&str>) {
    let conn = Connection::connect(uri, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..count {
        channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                match tenant {
                    Some(t) => {
                        let mut headers = FieldTable::default();
                        headers.insert("tenant".into(), AMQPValue::LongString(t.into()));
                        BasicProperties::default().with_headers(headers)
                    }
                    None => BasicProperties::default(),
                },
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let _ = conn.close(200, "done".into()).await;
}

async fn wait_depth(node: &RabbitNode, queue: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let depth = node.queue_depth(queue);
        if depth == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{queue}: depth {depth:?}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registries_start_report_and_stop_splitters() {
    let node = RabbitNode::start();
    let uri = node.uri();
    publish(&uri, "orders", 0).await;
    let mut supervisor = Supervisor::new(Arc::new(Secrets(uri.clone())), Arc::new(NoMetrics));

    let registries = [
        registry("good", "api", "rmq", "ORDERS"),
        registry("missing-queue", "api", "rmq", "GONE"),
        registry("no-secret", "api", "absent", "ORDERS"),
        registry("bad-login", "api", "wrong-password", "ORDERS"),
        registry("no-workload", "web", "rmq", "ORDERS"),
        registry("twin", "api", "rmq", "ORDERS"),
    ];
    let reports = supervisor.reconcile(&registries, template).await;
    let reasons: Vec<Vec<ProblemReason>> = reports
        .iter()
        .map(|r| r.problems.iter().map(|(reason, _)| *reason).collect())
        .collect();
    assert_eq!(
        reasons,
        [
            vec![],
            vec![ProblemReason::QueueMissing],
            vec![ProblemReason::CredentialsMissing],
            vec![ProblemReason::BrokerConnectionFailed],
            vec![ProblemReason::ConsumerNotFound],
            vec![ProblemReason::Shared],
        ],
        "{reports:#?}"
    );
    assert_eq!(reports[0].running, ["orders"]);
    let status = reports[0].status.rmq_details.as_ref().unwrap();
    assert_eq!(
        status.env_updates["ORDERS"].output_name,
        "orders-mirrord-output"
    );
    assert_eq!(
        supervisor
            .index()
            .splitters_for("staging", "api", "q")
            .len(),
        1
    );

    // The running splitter forwards the original queue to the output queue.
    publish(&uri, "orders", 20).await;
    wait_depth(&node, "orders-mirrord-output", 20).await;
    wait_depth(&node, "orders", 0).await;

    // A second round with the same registries starts nothing new and keeps the splitter.
    let again = supervisor.reconcile(&registries, template).await;
    assert_eq!(again[0].running, ["orders"]);

    // The registry goes away: the splitter stops, messages stay in the original queue.
    let reports = supervisor.reconcile(&[], template).await;
    assert!(reports.is_empty());
    assert!(
        supervisor
            .index()
            .splitters_for("staging", "api", "q")
            .is_empty()
    );
    publish(&uri, "orders", 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.queue_depth("orders"), Some(5));
    assert_eq!(node.queue_depth("orders-mirrord-output"), Some(20));
}

fn splits(pairs: &[(&str, &str, &str)]) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (id, header, regex) in pairs {
        out.entry(id.to_string())
            .or_default()
            .insert(header.to_string(), regex.to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_gets_its_queue_env_and_cleans_up() {
    let node = RabbitNode::start();
    let uri = node.uri();
    publish(&uri, "orders", 0).await;
    let supervisor = tokio::sync::Mutex::new(Supervisor::new(
        Arc::new(Secrets(uri.clone())),
        Arc::new(NoMetrics),
    ));
    let registries = [registry("good", "api", "rmq", "ORDERS")];
    let reports = supervisor
        .lock()
        .await
        .reconcile(&registries, template)
        .await;
    assert_eq!(reports[0].running, ["orders"], "{reports:?}");
    let index = supervisor.lock().await.index();

    // Unknown queue id or workload: refused, nothing registered.
    let error = RmqSession::start(
        &index,
        "staging",
        "api",
        0x1f,
        &splits(&[("nope", "tenant", "a")]),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, QueueSessionError::NotSplit { .. }),
        "{error}"
    );
    assert_eq!(error.status_code(), 404);

    let alice = RmqSession::start(
        &index,
        "staging",
        "api",
        0x1f,
        &splits(&[("q", "tenant", "^alice$")]),
    )
    .await
    .unwrap();
    assert_eq!(alice.queues()["orders"], "orders-mirrord-1f");
    let mut env = HashMap::from([("ORDERS".to_owned(), "orders-mirrord-output".to_owned())]);
    alice.apply_env(&mut env);
    assert_eq!(env["ORDERS"], "orders-mirrord-1f");

    // A filter that can match alice's messages is refused, naming her session.
    let error = RmqSession::start(
        &index,
        "staging",
        "api",
        0x2a,
        &splits(&[("q", "tenant", "^(alice|bob)$")]),
    )
    .await
    .unwrap_err();
    assert_eq!(error.status_code(), 409);
    assert!(error.to_string().contains("session 1f"), "{error}");

    publish_with(&uri, "orders", 7, Some("alice")).await;
    publish_with(&uri, "orders", 3, Some("bob")).await;
    wait_depth(&node, "orders-mirrord-1f", 7).await;
    wait_depth(&node, "orders-mirrord-output", 3).await;

    // Session end: alice's unconsumed messages go back to the output queue, her queue is deleted.
    alice.end().await;
    wait_depth(&node, "orders-mirrord-output", 10).await;
    assert_eq!(node.queue_depth("orders-mirrord-1f"), None);
    // The overlapping filter is accepted now that alice is gone.
    let bob = RmqSession::start(
        &index,
        "staging",
        "api",
        0x2a,
        &splits(&[("q", "tenant", "^(alice|bob)$")]),
    )
    .await
    .unwrap();
    bob.end().await;
    supervisor.lock().await.stop_all().await;
}
