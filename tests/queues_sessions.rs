//! Queue splitting through the coordinator's session relay, end to end on this machine: a real
//! RabbitMQ node (loopback), the splitter supervisor, the real `mirrord-operator agent` in a
//! network namespace playing a pod of Deployment `web` (its env names the output queue, as
//! admission leaves it), and a CLI client on the project's codec. A connect with `rmq_splits`
//! gets its temporary queue in `GetEnvVarsResponse`, receives only its messages, an overlapping
//! connect is refused 409 naming the first session, and killing the session returns the unread
//! messages to the output queue and deletes the temporary queue. Needs root and `rabbitmq-server`.

#[path = "support/coordinator.rs"]
mod coordinator;
#[path = "support/netns.rs"]
mod netns;
#[path = "support/rabbitmq.rs"]
mod rabbitmq;

use std::net::SocketAddr;
use std::sync::Arc;

use coordinator::{Cli, Coordinator};
use k8s_openapi::api::core::v1::PodSpec;
use mirrord_operator::coordinator::api::state::{Connector, SessionDirectory};
use mirrord_operator::coordinator::queues::{
    crd::MirrordWorkloadQueueRegistry, metrics::NoMetrics, supervisor::Supervisor,
};
use netns::NetNs;
use rabbitmq::{NodeSecrets, RabbitNode, publish};
use serde_json::json;

const HUB_PORT: u16 = 47011;

/// The pod template of Deployment `web` (env ORDERS=orders); its pod `web-a` has the agent.
fn template() -> serde_json::Value {
    json!({"containers": [{"name": "web", "image": "x", "env": [{"name": "ORDERS", "value": "orders"}]}]})
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn connect(
    addr: SocketAddr,
    der: &str,
    id: u64,
    user: &str,
    rmq_splits: &str,
) -> Result<Cli, tokio_tungstenite::tungstenite::Error> {
    let query = format!("connect=true&rmq_splits={}", percent(rmq_splits));
    Cli::open(coordinator::upgrade_request(
        addr,
        "deployment.web",
        &query,
        der,
        id,
        user,
    ))
    .await
}

#[test]
fn rmq_split_through_the_relay_env_overlap_and_cleanup() {
    let node = RabbitNode::start();
    let uri = node.uri();
    let ns = NetNs::new("qs");
    let hub = coordinator::hub_listener(&ns, HUB_PORT);
    let token = coordinator::token_file("web-a");
    let root = tempfile::tempdir().unwrap();
    let runtime = coordinator::runtime();
    runtime.block_on(async {
        // The broker has the producers' queue; the supervisor runs its splitter.
        publish(&uri, "orders", 0, None).await;
        let registry: Arc<MirrordWorkloadQueueRegistry> = coordinator::object(json!({
            "apiVersion": "queues.mirrord.metalbear.co/v1alpha",
            "kind": "MirrordWorkloadQueueRegistry",
            "metadata": {"name": "web-queues", "namespace": "default"},
            "spec": {
                "queues": {"orders": {"queueType": "RMQ", "clusterProperties": "rmq", "nameSource": {"envVar": "ORDERS"}}},
                "consumer": {"name": "web", "workloadType": "Deployment"}
            }
        }));
        let mut supervisor = Supervisor::new(Arc::new(NodeSecrets(uri.clone())), Arc::new(NoMetrics));
        let reports = supervisor
            .reconcile(&[registry], |_, _, name| {
                (name == "web").then(|| serde_json::from_value::<PodSpec>(template()).unwrap())
            })
            .await;
        assert_eq!(reports[0].running, ["orders"], "{reports:?}");
        let supervisor = Arc::new(tokio::sync::Mutex::new(supervisor));

        let inventory = coordinator::web_inventory(
            vec![coordinator::injected_pod("web-a")],
            serde_json::Value::Null,
            template(),
        );
        let queues = Some(supervisor.lock().await.index());
        let coordinator = Coordinator::new(&["web-a"], inventory, queues);
        let (table, service) = (&coordinator.table, &coordinator.service);
        assert!(service.features().contains(&"RmqQueueSplitting"));
        let der = coordinator.client_der("alice").await;
        let cli_addr = coordinator.serve(vec![hub]).await;

        // The pod's agent: its container env names the output queue, as admission left it.
        let mut cmd = coordinator::agent_command(&ns, HUB_PORT, "web-a", token.path(), "QSTEST");
        cmd.env("MIRRORD_AGENT_POD_IP", "127.0.0.1")
            .env("MIRRORD_AGENT_TARGET_ROOT", root.path())
            .env("MIRRORD_AGENT_FS_MODE", "volumes")
            .env("MIRRORD_TARGET_ENV_ORDERS", "orders-mirrord-output");
        ns.spawn(cmd);
        coordinator.wait_for_agents(1).await;

        // Alice's session: its env names her temporary queue.
        let alice_id = 0xA11CE;
        let mut alice = connect(cli_addr, &der, alice_id, "alice", r#"{"orders":{"tenant":"^alice$"}}"#)
            .await
            .expect("alice connects");
        alice.negotiate().await;
        let env = alice.env().await;
        assert_eq!(env["ORDERS"], "orders-mirrord-a11ce");

        // Bob's filter can match alice's messages: refused before the upgrade, naming her.
        let refused = connect(cli_addr, &der, 0xB0B, "bob", r#"{"orders":{"tenant":"^(alice|bob)$"}}"#).await;
        let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
            panic!("bob's overlapping split must be refused");
        };
        assert_eq!(response.status(), 409);
        let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
        assert!(body.contains("a11ce"), "{body}");
        assert!(table.get(0xB0B).is_none());

        publish(&uri, "orders", 6, Some("alice")).await;
        publish(&uri, "orders", 4, Some("carol")).await;
        node.wait_depth("orders-mirrord-a11ce", Some(6)).await;
        node.wait_depth("orders-mirrord-output", Some(4)).await;

        // The session ends: her unread messages go back to the output queue, her queue goes.
        // The operator status embeds her session as a MirrordRMQSession (§7.5.3).
        let listed = service.list();
        let row = listed.iter().find(|s| s.id == alice_id).unwrap();
        assert_eq!(row.rmq.len(), 1);
        assert_eq!(
            row.rmq[0]["status"]["Ready"]["queueNames"]["orders"]["outputName"],
            "orders-mirrord-a11ce"
        );
        assert_eq!(row.rmq[0]["spec"]["queueFilters"]["orders"]["tenant"], "^alice$");
        let _ = service.kill(alice_id, "test over").await;
        drop(alice);
        node.wait_depth("orders-mirrord-a11ce", None).await;
        node.wait_depth("orders-mirrord-output", Some(10)).await;
        supervisor.lock().await.stop_all().await;
    });
}
