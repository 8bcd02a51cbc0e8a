//! The SQS half of sessions against moto: registries → SQS splitters (supervisor, preflight
//! problems), then a connect's `sqs_splits` / `sqs_jq_filters` → the session's temporary queue,
//! its env for `GetEnvVarsResponse`, the `MirrordSQSSession` object; overlapping and undecidable
//! filters refused 409 naming the other session; session end returns leftovers and deletes the
//! queue; registry gone → splitter stopped.

#[path = "support/moto.rs"]
mod moto;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::MessageAttributeValue;
use k8s_openapi::api::core::v1::PodSpec;
use mirrord_operator::coordinator::queues::{
    crd::{MirrordWorkloadQueueRegistry, QueueSessionStatus, WorkloadType},
    metrics::NoMetrics,
    sessions::SessionQueues,
    sqs_supervisor::Sqs,
    supervisor::{ProblemReason, SplitterIndex, Supervisor},
};
use moto::Moto;
use serde_json::json;

fn registry(name: &str, queues: serde_json::Value) -> Arc<MirrordWorkloadQueueRegistry> {
    registry_in("staging", name, queues)
}

fn registry_in(
    namespace: &str,
    name: &str,
    queues: serde_json::Value,
) -> Arc<MirrordWorkloadQueueRegistry> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "queues.mirrord.metalbear.co/v1alpha",
            "kind": "MirrordWorkloadQueueRegistry",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"queues": queues, "consumer": {"name": "api", "workloadType": "Deployment"}}
        }))
        .unwrap(),
    )
}

fn template(_: WorkloadType, _: &str, name: &str) -> Option<PodSpec> {
    (name == "api").then(|| {
        serde_json::from_value(json!({"containers": [{"name": "main", "env": [
            {"name": "MAIL", "value": "mail"},
            {"name": "GONE", "value": "no-such-queue"}
        ]}]}))
        .unwrap()
    })
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn queue_exists(client: &aws_sdk_sqs::Client, name: &str) -> bool {
    client.get_queue_url().queue_name(name).send().await.is_ok()
}

/// Creates queue `name`; its URL.
async fn create_queue(client: &aws_sdk_sqs::Client, name: &str) -> String {
    client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap()
}

/// The SQS supervisor on `client`, as the coordinator runs it.
fn supervisor(client: &aws_sdk_sqs::Client) -> Supervisor<Sqs> {
    Supervisor::with_broker(
        Sqs::new(client.clone()),
        Arc::new(NoMetrics),
        SplitterIndex::default(),
    )
}

/// Messages ready in queue `name`; `None` when it does not exist.
async fn depth(client: &aws_sdk_sqs::Client, name: &str) -> Option<u32> {
    let url = client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .ok()?
        .queue_url?;
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    Some(
        out.attributes
            .unwrap()
            .values()
            .next()
            .unwrap()
            .parse::<u32>()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_splits_at_connect_get_a_queue_env_and_clean_up() {
    let moto = Moto::start();
    let client = moto.client();
    let mail = create_queue(&client, "mail").await;
    let mut supervisor = supervisor(&client);
    let index = supervisor.index();
    let registries = [
        registry(
            "good",
            json!({
                "mail": {"queueType": "SQS", "nameSource": {"envVar": "MAIL"}},
                "orders": {"queueType": "RMQ", "clusterProperties": "rmq", "nameSource": {"envVar": "ORDERS"}}
            }),
        ),
        registry(
            "missing",
            json!({"gone": {"queueType": "SQS", "nameSource": {"envVar": "GONE"}}}),
        ),
        // The same AWS queue named from another namespace: one splitter only.
        registry_in(
            "other",
            "copy",
            json!({"mail": {"queueType": "SQS", "nameSource": {"envVar": "MAIL"}}}),
        ),
    ];
    let reports = supervisor.reconcile(&registries, template).await;
    assert_eq!(reports[0].running, ["mail"]);
    assert_eq!(reports[0].problems, []);
    let details = reports[0].status.sqs_details.as_ref().unwrap();
    assert_eq!(
        details.env_updates["MAIL"].output_name,
        "mail-mirrord-output"
    );
    assert!(
        reports[0].status.rmq_details.is_none(),
        "RMQ is the other supervisor's"
    );
    assert_eq!(reports[1].problems.len(), 1, "{:?}", reports[1]);
    assert_eq!(reports[1].problems[0].0, ProblemReason::QueueMissing);
    assert_eq!(reports[2].problems.len(), 1, "{:?}", reports[2]);
    assert_eq!(reports[2].problems[0].0, ProblemReason::Shared);
    assert!(reports[2].running.is_empty());

    // alice: attributes; the connect gets her queue as MAIL.
    let alice = SessionQueues::for_connect(
        &index,
        &params(&[("sqs_splits", r#"{"mail":{"tenant":"^alice$"}}"#)]),
        "staging",
        Some("api"),
        0xa11ce,
    )
    .await
    .unwrap()
    .unwrap();
    let mut env = HashMap::new();
    alice.apply_env(&mut env);
    assert_eq!(env["MAIL"], "mail-mirrord-a11ce");
    assert!(alice.object().is_none(), "no RMQ splits");
    let object = serde_json::to_value(alice.sqs_object().unwrap()).unwrap();
    assert_eq!(object["kind"], "MirrordSQSSession");
    assert_eq!(object["spec"]["sessionId"], "a11ce");
    assert_eq!(object["spec"]["queueFilters"]["mail"]["tenant"], "^alice$");
    assert_eq!(
        object["status"]["Ready"]["envUpdates"]["MAIL"]["outputName"],
        "mail-mirrord-a11ce"
    );
    assert!(matches!(
        alice.sqs_object().unwrap().status,
        Some(QueueSessionStatus::Ready(_))
    ));

    // bob overlaps alice: 409 naming her session; a jq-only filter cannot be compared: 409 too;
    // a queue id that is not split: 404; a bad jq program: 400.
    let refusals = [
        (r#"{"mail":{"tenant":"ice$"}}"#, None, 409, "a11ce"),
        ("{}", Some(r#"{"mail":".vip"}"#), 409, "a11ce"),
        (r#"{"nope":{"a":"b"}}"#, None, 404, "nope"),
        (
            r#"{"mail":{"tenant":"^bob$"}}"#,
            Some(r#"{"mail":".a | ("}"#),
            400,
            "jq_filter",
        ),
    ];
    for (splits, jq, code, says) in refusals {
        let mut p = params(&[("sqs_splits", splits)]);
        if let Some(jq) = jq {
            p.insert("sqs_jq_filters".into(), jq.into());
        }
        let error = SessionQueues::for_connect(&index, &p, "staging", Some("api"), 0xb0b)
            .await
            .unwrap_err();
        assert_eq!(error.status_code(), code, "{splits} {jq:?}: {error}");
        assert!(error.to_string().contains(says), "{error}");
    }
    assert!(
        !queue_exists(&client, "mail-mirrord-b0b").await,
        "refused sessions leave no queue"
    );
    // carol: disjoint attributes plus jq on the body.
    let carol = SessionQueues::for_connect(
        &index,
        &params(&[
            ("sqs_splits", r#"{"mail":{"tenant":"^carol$"}}"#),
            ("sqs_jq_filters", r#"{"mail":".vip == true"}"#),
        ]),
        "staging",
        Some("api"),
        0xca201,
    )
    .await
    .unwrap()
    .unwrap();
    let object = serde_json::to_value(carol.sqs_object().unwrap()).unwrap();
    assert_eq!(object["spec"]["queueJqFilters"]["mail"], ".vip == true");

    // 6 messages for alice, 2 vip ones for carol, 4 others.
    for (i, (tenant, body)) in [("alice", "{}"); 6]
        .into_iter()
        .chain([("carol", r#"{"vip":true}"#); 2])
        .chain([
            ("carol", r#"{"vip":false}"#),
            ("dave", "{}"),
            ("dave", "{}"),
            ("eve", "x"),
        ])
        .enumerate()
    {
        client
            .send_message()
            .queue_url(&mail)
            .message_body(body)
            .message_attributes(
                "tenant",
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(tenant)
                    .build()
                    .unwrap(),
            )
            .message_attributes(
                "n",
                MessageAttributeValue::builder()
                    .data_type("Number")
                    .string_value(i.to_string())
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = (
            depth(&client, "mail-mirrord-a11ce").await.unwrap(),
            depth(&client, "mail-mirrord-ca201").await.unwrap(),
            depth(&client, "mail-mirrord-output").await.unwrap(),
        );
        if got == (6, 2, 4) {
            break;
        }
        assert!(Instant::now() < deadline, "routing: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // alice's session ends unread: her 6 go back to the output queue, her queue is deleted.
    alice.end();
    drop(alice);
    let deadline = Instant::now() + Duration::from_secs(60);
    while queue_exists(&client, "mail-mirrord-a11ce").await
        || depth(&client, "mail-mirrord-output").await.unwrap() != 10
    {
        assert!(Instant::now() < deadline, "alice's session not cleaned up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(carol);

    // Registry gone → the splitter stops; new messages stay in the original queue.
    let reports = supervisor.reconcile(&[], template).await;
    assert!(reports.is_empty());
    assert!(index.sqs_splitters_for("staging", "api", "mail").is_empty());
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue_exists(&client, "mail-mirrord-ca201").await {
        assert!(Instant::now() < deadline, "carol's session not cleaned up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The worker notices its last handle is gone after its current receive (≤ 1 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    client
        .send_message()
        .queue_url(&mail)
        .message_body("late")
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        depth(&client, "mail").await.unwrap(),
        1,
        "no splitter reads the original any more"
    );
}

/// Registry options that change what the splitter does: `namesFromJsonMap` (one env var, a JSON
/// object naming two queues), `sns` (filters read the SNS envelope's attributes from the body)
/// and `tags` (set on the queues the splitter creates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_map_sns_envelope_and_tags() {
    let moto = Moto::start();
    let client = moto.client();
    let mut urls = BTreeMap::new();
    for name in ["high", "low"] {
        urls.insert(name, create_queue(&client, name).await);
    }
    let mut supervisor = supervisor(&client);
    let index = supervisor.index();
    let registries = [registry(
        "events",
        json!({"events": {"queueType": "SQS", "nameSource": {"envVar": "QUEUES"},
            "namesFromJsonMap": true, "sns": true, "tags": {"team": "payments"}}}),
    )];
    let template = |_: WorkloadType, _: &str, name: &str| -> Option<PodSpec> {
        (name == "api").then(|| {
            serde_json::from_value(json!({"containers": [{"name": "main", "env": [
                {"name": "QUEUES", "value": r#"{"lo": "low", "hi": "high"}"#}
            ]}]}))
            .unwrap()
        })
    };
    let reports = supervisor.reconcile(&registries, template).await;
    assert_eq!(reports[0].problems, []);
    let details = reports[0].status.sqs_details.as_ref().unwrap();
    assert_eq!(
        details.env_updates["QUEUES"].output_name,
        r#"{"hi":"high-mirrord-output","lo":"low-mirrord-output"}"#
    );
    assert_eq!(index.sqs_splitters_for("staging", "api", "events").len(), 2);

    let alice = SessionQueues::for_connect(
        &index,
        &params(&[("sqs_splits", r#"{"events":{"tenant":"^alice$"}}"#)]),
        "staging",
        Some("api"),
        0xa11ce,
    )
    .await
    .unwrap()
    .unwrap();
    let mut env = HashMap::new();
    alice.apply_env(&mut env);
    assert_eq!(
        env["QUEUES"],
        r#"{"hi":"high-mirrord-a11ce","lo":"low-mirrord-a11ce"}"#
    );
    for queue in ["high-mirrord-a11ce", "low-mirrord-output"] {
        let url = client
            .get_queue_url()
            .queue_name(queue)
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let tags = client
            .list_queue_tags()
            .queue_url(url)
            .send()
            .await
            .unwrap()
            .tags
            .unwrap_or_default();
        assert_eq!(
            tags.get("team").map(String::as_str),
            Some("payments"),
            "{queue}"
        );
    }

    // SNS notifications: the tenant is in the body. The one whose SQS attribute says alice but
    // whose notification says bob is bob's: the body decides.
    let notification = |tenant: &str| {
        json!({"Type": "Notification", "Message": "order", "MessageAttributes":
            {"tenant": {"Type": "String", "Value": tenant}}})
        .to_string()
    };
    for (queue, tenant, sqs_attribute) in [
        ("high", "alice", None),
        ("high", "alice", None),
        ("high", "bob", Some("alice")),
        ("high", "bob", None),
        ("low", "alice", None),
        ("low", "bob", None),
    ] {
        let mut send = client
            .send_message()
            .queue_url(&urls[queue])
            .message_body(notification(tenant));
        if let Some(value) = sqs_attribute {
            send = send.message_attributes(
                "tenant",
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .unwrap(),
            );
        }
        send.send().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = (
            depth(&client, "high-mirrord-a11ce")
                .await
                .unwrap_or(u32::MAX),
            depth(&client, "low-mirrord-a11ce")
                .await
                .unwrap_or(u32::MAX),
            depth(&client, "high-mirrord-output")
                .await
                .unwrap_or(u32::MAX),
            depth(&client, "low-mirrord-output")
                .await
                .unwrap_or(u32::MAX),
        );
        if got == (2, 1, 2, 1) {
            break;
        }
        assert!(Instant::now() < deadline, "routing: {got:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    alice.end();
    drop(alice);
    let deadline = Instant::now() + Duration::from_secs(60);
    while queue_exists(&client, "high-mirrord-a11ce").await
        || queue_exists(&client, "low-mirrord-a11ce").await
    {
        assert!(Instant::now() < deadline, "alice's queues not deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        (
            depth(&client, "high-mirrord-output")
                .await
                .unwrap_or(u32::MAX),
            depth(&client, "low-mirrord-output")
                .await
                .unwrap_or(u32::MAX)
        ),
        (4, 2),
        "her unread messages went back to the outputs"
    );
    supervisor.reconcile(&[], template).await;
}

/// A jq filter that breaks on a message (here: the worker overflows its stack) is reported to the
/// session, whose relays show it to the developer's CLI; the message goes to the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_jq_filter_is_reported_to_the_session() {
    let moto = Moto::start();
    let client = moto.client();
    let mail = create_queue(&client, "mail").await;
    let mut supervisor = supervisor(&client);
    let index = supervisor.index();
    let registries = [registry(
        "good",
        json!({"mail": {"queueType": "SQS", "nameSource": {"envVar": "MAIL"}}}),
    )];
    assert_eq!(
        supervisor.reconcile(&registries, template).await[0].problems,
        []
    );
    let alice = SessionQueues::for_connect(
        &index,
        &params(&[("sqs_jq_filters", r#"{"mail":"def f: f + 1; f"}"#)]),
        "staging",
        Some("api"),
        0xa11ce,
    )
    .await
    .unwrap()
    .unwrap();
    let (backlog, mut notices) = alice.notices();
    assert!(backlog.is_empty());
    client
        .send_message()
        .queue_url(&mail)
        .message_body("{}")
        .send()
        .await
        .unwrap();
    let notice = tokio::time::timeout(Duration::from_secs(30), notices.recv())
        .await
        .expect("no notice within 30 s")
        .unwrap();
    assert!(notice.contains("def f: f + 1; f"), "{notice}");
    assert!(notice.contains("\"mail\""), "{notice}");
    assert!(notice.contains("matches nothing from now on"), "{notice}");
    // A connection opened afterwards (the intproxy's, a reconnect) is told too.
    assert_eq!(alice.notices().0, [notice]);
    alice.end();
    drop(alice);
    supervisor.reconcile(&[], template).await;
}
