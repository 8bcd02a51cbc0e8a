//! The coordinator's splitter supervisor against a real broker (a private `rabbitmq-server` node on
//! loopback): registries start splitters for the original queues their consumer's Deployment
//! template names, problems (queue missing, Secret missing, login refused, workload missing) are
//! reported per registry, and a registry that goes away stops its splitter; a session that a dead
//! coordinator left is ended by the next one from its stored object.

#[path = "support/rabbitmq.rs"]
mod rabbitmq;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::PodSpec;
use mirrord_operator::coordinator::queues::{
    crd::{MirrordWorkloadQueueRegistry, WorkloadType},
    metrics::NoMetrics,
    records::{MemoryRecords, Records, SessionRecords, StoredSession, end_orphans},
    sessions::{QueueSessionError, RmqSession, SessionQueues},
    supervisor::{ProblemReason, SplitterIndex, Supervisor},
};
use rabbitmq::{NodeSecrets, RabbitNode, publish};
use serde_json::json;

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
fn template(kind: WorkloadType, namespace: &str, name: &str) -> Option<PodSpec> {
    (kind == WorkloadType::Deployment && namespace == "staging" && name == "api").then(|| {
        serde_json::from_value(json!({"containers": [{"name": "main", "env": [
            {"name": "ORDERS", "value": "orders"},
            {"name": "GONE", "value": "no-such-queue"}
        ]}]}))
        .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registries_start_report_and_stop_splitters() {
    let node = RabbitNode::start();
    let uri = node.uri();
    publish(&uri, "orders", 0, None).await;
    let mut supervisor = Supervisor::new(Arc::new(NodeSecrets(uri.clone())), Arc::new(NoMetrics));

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
    publish(&uri, "orders", 20, None).await;
    node.wait_depth("orders-mirrord-output", Some(20)).await;
    node.wait_depth("orders", Some(0)).await;

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
    publish(&uri, "orders", 5, None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(node.queue_depth("orders"), Some(5));
    assert_eq!(node.queue_depth("orders-mirrord-output"), Some(20));
}

/// Session `id` on Deployment `api` in `staging` with `(queue id, header, regex)` filters.
async fn start(
    index: &SplitterIndex,
    id: u64,
    pairs: &[(&str, &str, &str)],
) -> Result<RmqSession, QueueSessionError> {
    let mut splits: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (queue, header, regex) in pairs {
        splits
            .entry(queue.to_string())
            .or_default()
            .insert(header.to_string(), regex.to_string());
    }
    RmqSession::start(index, "staging", "api", id, &splits).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_gets_its_queue_env_and_cleans_up() {
    let node = RabbitNode::start();
    let uri = node.uri();
    publish(&uri, "orders", 0, None).await;
    let supervisor = tokio::sync::Mutex::new(Supervisor::new(
        Arc::new(NodeSecrets(uri.clone())),
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
    let error = start(&index, 0x1f, &[("nope", "tenant", "a")])
        .await
        .unwrap_err();
    assert!(
        matches!(error, QueueSessionError::NotSplit { .. }),
        "{error}"
    );
    assert_eq!(error.status_code(), 404);

    let alice = start(&index, 0x1f, &[("q", "tenant", "^alice$")])
        .await
        .unwrap();
    assert_eq!(alice.queues()["orders"], "orders-mirrord-1f");
    let mut env = HashMap::from([("ORDERS".to_owned(), "orders-mirrord-output".to_owned())]);
    alice.apply_env(&mut env);
    assert_eq!(env["ORDERS"], "orders-mirrord-1f");

    // A filter that can match alice's messages is refused, naming her session.
    let error = start(&index, 0x2a, &[("q", "tenant", "^(alice|bob)$")])
        .await
        .unwrap_err();
    assert_eq!(error.status_code(), 409);
    assert!(error.to_string().contains("session 1f"), "{error}");

    publish(&uri, "orders", 7, Some("alice")).await;
    publish(&uri, "orders", 3, Some("bob")).await;
    node.wait_depth("orders-mirrord-1f", Some(7)).await;
    node.wait_depth("orders-mirrord-output", Some(3)).await;

    // Session end: alice's unconsumed messages go back to the output queue, her queue is deleted.
    alice.end().await;
    node.wait_depth("orders-mirrord-output", Some(10)).await;
    assert_eq!(node.queue_depth("orders-mirrord-1f"), None);
    // The overlapping filter is accepted now that alice is gone.
    let bob = start(&index, 0x2a, &[("q", "tenant", "^(alice|bob)$")])
        .await
        .unwrap();
    bob.end().await;
    supervisor.lock().await.stop_all().await;
}

/// A runtime for one coordinator's tasks: dropping it ends them wherever they are, connections
/// included, as a crash would.
fn coordinator_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_dead_coordinators_session_is_ended_by_the_next() {
    let node = RabbitNode::start();
    let uri = node.uri();
    let store = Arc::new(MemoryRecords::default());
    let registries = [registry("good", "api", "rmq", "ORDERS")];
    let params = BTreeMap::from([(
        "rmq_splits".to_owned(),
        r#"{"q": {"tenant": "^alice$"}}"#.to_owned(),
    )]);

    // The first coordinator stores alice's session, then dies mid-session (nothing is ended).
    let first = coordinator_runtime();
    first.block_on(async {
        publish(&uri, "orders", 0, None).await;
        let mut supervisor =
            Supervisor::new(Arc::new(NodeSecrets(uri.clone())), Arc::new(NoMetrics));
        let reports = supervisor.reconcile(&registries, template).await;
        assert_eq!(reports[0].running, ["orders"]);
        supervisor.index().keep_records(Records::new(store.clone()));
        let alice = SessionQueues::for_connect(
            &supervisor.index(),
            &params,
            "staging",
            Some("api"),
            0xa11ce,
        )
        .await
        .unwrap()
        .expect("a queue session");
        let stored = store.list().await.unwrap();
        let [StoredSession::Rmq(object)] = stored.as_slice() else {
            panic!("one MirrordRMQSession stored: {stored:?}");
        };
        assert_eq!(object.spec.session_id, "a11ce");
        assert_eq!(object.spec.namespace, "staging");
        assert_eq!(object.spec.queue_filters["q"]["tenant"], "^alice$");
        publish(&uri, "orders", 4, Some("alice")).await;
        node.wait_depth("orders-mirrord-a11ce", Some(4)).await;
        std::mem::forget((alice, supervisor));
    });
    first.shutdown_timeout(Duration::from_secs(5));
    assert_eq!(node.queue_depth("orders-mirrord-a11ce"), Some(4));

    // The next coordinator: before its splitter runs the orphan waits; then it is ended the
    // normal way (her 4 unread messages to the output queue, her queue and record gone).
    let second = coordinator_runtime();
    second.block_on(async {
        let mut supervisor =
            Supervisor::new(Arc::new(NodeSecrets(uri.clone())), Arc::new(NoMetrics));
        let records = Records::new(store.clone());
        supervisor.index().keep_records(records.clone());
        let round = end_orphans(&supervisor.index(), &records).await;
        assert_eq!(round.waiting, ["a11ce".to_owned()].into());
        assert_eq!(store.list().await.unwrap().len(), 1);
        let reports = supervisor.reconcile(&registries, template).await;
        assert_eq!(reports[0].running, ["orders"]);
        let round = end_orphans(&supervisor.index(), &records).await;
        assert_eq!(round.ended, ["a11ce".to_owned()].into(), "{round:?}");
        node.wait_depth("orders-mirrord-output", Some(4)).await;
        assert_eq!(node.queue_depth("orders-mirrord-a11ce"), None);
        assert!(store.list().await.unwrap().is_empty());

        // A session of the running coordinator is never taken for an orphan; its end removes it.
        let bob =
            SessionQueues::for_connect(&supervisor.index(), &params, "staging", Some("api"), 0xb0b)
                .await
                .unwrap()
                .expect("a queue session");
        assert_eq!(
            end_orphans(&supervisor.index(), &records).await,
            Default::default()
        );
        assert_eq!(store.list().await.unwrap().len(), 1);
        bob.end();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !store.list().await.unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "bob's object was not removed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(node.queue_depth("orders-mirrord-b0b"), None);
        drop(bob);
        supervisor.stop_all().await;
    });
}
