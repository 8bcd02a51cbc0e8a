//! Policies enforced by the coordinator with a real agent: a network namespace plays a pod of
//! Deployment `web` (labelled `team: payments`) with the real `mirrord-operator agent` dialling the
//! hub. Through the real API router and relay, over WebSocket with the project's codec:
//! `requireProfile` refuses the connect with a 403 `metav1.Status` naming the policy; with a
//! profile the session runs; a steal without a filter is accepted, then refused with
//! `ResponseError::ForbiddenWithReason` once a policy is added mid-session, while a filtered steal
//! still goes through; after the policy is deleted the unfiltered steal is accepted again;
//! env values from a Secret the user may not `get` (SubjectAccessReview stand-in) are left out;
//! `env.exclude` keeps a variable out of the agent's env answer; a hostname rule, fed by the
//! session's own DNS answer, refuses an outgoing connection; `fs` rules answer opens as missing,
//! local, or refused for writing while other files open on the target. Needs root (namespaces,
//! iptables).

#[path = "support/coordinator.rs"]
mod coordinator;
#[path = "support/netns.rs"]
mod netns;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use coordinator::{APP, Cli, Coordinator, TIMEOUT};
use mirrord_operator::coordinator::api::state::{
    Authorizer, AuthorizerError, Decision, Identity, ResourceAttributes,
};
use mirrord_operator::coordinator::policy::crd::{
    BlockedFeature, EnvPolicy, FsPolicy, LabelSelector, MirrordPolicySpec, NetworkPolicy,
    OutgoingPolicy, OutgoingRule,
};
use mirrord_operator::coordinator::policy::eval::{NamedPolicy, PolicyKind, PolicyRef};
use mirrord_operator::coordinator::policy::gate::{PolicyGate, PolicySource};
use mirrord_operator::protocol::*;
use serde_json::json;

const HUB_PORT: u16 = 47011;

/// Policies the test changes while sessions run, as the watch-fed cache would.
#[derive(Default)]
struct Live(Mutex<Vec<NamedPolicy>>);

impl PolicySource for Live {
    fn policies(&self) -> Vec<NamedPolicy> {
        self.0.lock().unwrap().clone()
    }
}

/// alice may `get` Secret `public` but not `db-creds`.
struct SecretsFor;

impl Authorizer for SecretsFor {
    fn authorize<'a>(
        &'a self,
        identity: &'a Identity,
        attributes: &'a ResourceAttributes,
    ) -> futures::future::BoxFuture<'a, Result<Decision, AuthorizerError>> {
        let allowed = attributes.resource == "secrets"
            && attributes.verb == "get"
            && identity.user == "alice"
            && attributes.name.as_deref() == Some("public");
        Box::pin(async move {
            Ok(if allowed {
                Decision::Allow
            } else {
                Decision::Deny {
                    reason: "no".into(),
                }
            })
        })
    }
}

fn policy(name: &str, spec: MirrordPolicySpec) -> NamedPolicy {
    NamedPolicy {
        reference: PolicyRef {
            kind: PolicyKind::MirrordPolicy,
            namespace: Some("default".into()),
            name: name.into(),
        },
        spec,
    }
}

/// Deployment `web` (labelled `team: payments`) → ReplicaSet → pod `web-a`, whose container env
/// takes `API_KEY` and `PUBLIC_ID` from Secrets.
fn coordinator() -> Coordinator {
    let web = json!({"name": "web", "image": "x", "env": [
        {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "db-creds", "key": "api"}}},
        {"name": "PUBLIC_ID", "valueFrom": {"secretKeyRef": {"name": "public", "key": "id"}}}
    ]});
    let pod = coordinator::web_pod(
        "web-a",
        json!([web, coordinator::container("mirrord-agent")]),
    );
    let inventory = coordinator::web_inventory(
        vec![pod],
        json!({"team": "payments"}),
        coordinator::web_template(),
    );
    Coordinator::new(&["web-a"], inventory, None)
}

fn connect_request(
    addr: SocketAddr,
    der: &str,
    id: u64,
    profile: Option<&str>,
) -> coordinator::Request {
    let profile = profile.map(|p| format!("&profile={p}")).unwrap_or_default();
    coordinator::upgrade_request(
        addr,
        "deployment.web",
        &format!("connect=true&on_concurrent_steal=abort{profile}&key=k"),
        der,
        id,
        "alice",
    )
}

async fn subscribe(ws: &mut Cli, steal: StealType) -> Result<Port, ResponseError> {
    match ws
        .ask(ClientMessage::TcpSteal(LayerTcpSteal::PortSubscribe(steal)))
        .await
    {
        DaemonMessage::TcpSteal(DaemonTcp::SubscribeResult(result)) => result,
        other => panic!("expected SubscribeResult, got {other:?}"),
    }
}

/// The I/O error kind of a refused open (`None` for any other answer).
fn open_error_kind(answer: &DaemonMessage) -> Option<ErrorKindInternal> {
    match answer {
        DaemonMessage::File(FileResponse::Open(Err(ResponseError::RemoteIO(e)))) => {
            Some(e.kind.clone())
        }
        _ => None,
    }
}

async fn unsubscribe(ws: &mut Cli) {
    ws.send(ClientMessage::TcpSteal(LayerTcpSteal::PortUnsubscribe(APP)))
        .await;
    ws.send(ClientMessage::Ping).await;
    assert_eq!(ws.recv_no_log().await, DaemonMessage::Pong);
}

#[test]
fn policies_refuse_at_connect_and_per_subscription() {
    let ns = netns::NetNs::with_caller("cp");
    let _site = ns.serve_hello(APP, "app of web-a", TIMEOUT);
    let root = tempfile::tempdir().unwrap();
    let token = coordinator::token_file("web-a");
    let hub = coordinator::hub_listener(&ns, HUB_PORT);
    let runtime = coordinator::runtime();
    runtime.block_on(async {
        let coordinator = coordinator();
        let live = Arc::new(Live::default());
        coordinator.table.set_policy_gate(Arc::new(
            PolicyGate::new(live.clone()).with_secret_authorizer(Arc::new(SecretsFor)),
        ));
        let der = coordinator.client_der("alice").await;
        let addr = coordinator.serve(vec![hub]).await;

        let mut cmd = coordinator::agent_command(&ns, HUB_PORT, "web-a", token.path(), "CPTEST");
        cmd.env("MIRRORD_AGENT_TARGET_ROOT", root.path())
            .env("MIRRORD_AGENT_FS_MODE", "volumes")
            .env("MIRRORD_TARGET_ENV_GREETING", "hello")
            .env("MIRRORD_TARGET_ENV_DB_PASSWORD", "hunter2")
            .env("MIRRORD_TARGET_ENV_API_KEY", "k-123")
            .env("MIRRORD_TARGET_ENV_PUBLIC_ID", "id-9");
        ns.spawn(cmd);
        coordinator.wait_for_agents(1).await;

        // requireProfile, selected by the deployment's labels: no profile → 403 Status.
        live.0.lock().unwrap().push(policy(
            "profile-required",
            MirrordPolicySpec {
                require_profile: true,
                selector: Some(LabelSelector {
                    match_labels: [("team".to_owned(), "payments".to_owned())].into(),
                    ..LabelSelector::default()
                }),
                ..MirrordPolicySpec::default()
            },
        ));
        let refused = Cli::open(connect_request(addr, &der, 1, None)).await;
        let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
            panic!("expected an HTTP refusal, got {:?}", refused.err())
        };
        assert_eq!(response.status(), 403);
        let status: serde_json::Value =
            serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["reason"], "Forbidden");
        let message = status["message"].as_str().unwrap();
        assert!(
            message.contains("default/profile-required") && message.contains("requireProfile"),
            "{message}"
        );

        // With a profile the session runs; no steal rule yet: an unfiltered steal is accepted.
        let mut ws = Cli::connect(connect_request(addr, &der, 2, Some("read-only"))).await;
        ws.negotiate().await;
        assert_eq!(subscribe(&mut ws, StealType::All(APP)).await, Ok(APP));
        unsubscribe(&mut ws).await;

        // Added while the session runs: applies to its next subscription.
        live.0.lock().unwrap().push(policy(
            "filters-only",
            MirrordPolicySpec {
                block: vec![BlockedFeature::StealWithoutFilter],
                target_path: Some("deploy/web*".into()),
                ..MirrordPolicySpec::default()
            },
        ));
        let refused = subscribe(&mut ws, StealType::All(APP)).await;
        let Err(ResponseError::ForbiddenWithReason {
            blocked_action,
            policy_name,
            reason,
        }) = refused
        else {
            panic!("expected ForbiddenWithReason, got {refused:?}")
        };
        assert_eq!(blocked_action, BlockedAction::Steal(StealType::All(APP)));
        assert_eq!(policy_name.as_deref(), Some("filters-only"));
        assert!(reason.contains("steal-without-filter"), "{reason}");
        let filtered = StealType::FilteredHttpEx(APP, HttpFilter::Header(Filter("x-me: 1".into())));
        assert_eq!(subscribe(&mut ws, filtered).await, Ok(APP));
        unsubscribe(&mut ws).await;

        // Deleted: stops applying.
        live.0
            .lock()
            .unwrap()
            .retain(|p| p.reference.name != "filters-only");
        assert_eq!(subscribe(&mut ws, StealType::All(APP)).await, Ok(APP));
        unsubscribe(&mut ws).await;

        // env.exclude: the variable never reaches the session.
        let env = ws.env().await;
        assert_eq!(env.get("DB_PASSWORD").map(String::as_str), Some("hunter2"));
        // Secret-backed: alice may get Secret `public`, not `db-creds`.
        assert_eq!(env.get("PUBLIC_ID").map(String::as_str), Some("id-9"));
        assert!(!env.contains_key("API_KEY"), "{env:?}");
        live.0.lock().unwrap().push(policy(
            "no-passwords",
            MirrordPolicySpec {
                env: Some(EnvPolicy {
                    exclude: vec!["*_PASSWORD".into()],
                }),
                ..MirrordPolicySpec::default()
            },
        ));
        let env = ws.env().await;
        assert!(!env.contains_key("DB_PASSWORD"), "{env:?}");
        assert_eq!(env.get("GREETING").map(String::as_str), Some("hello"));

        // A hostname rule: the session resolves `localhost` through the agent, then connects.
        live.0.lock().unwrap().push(policy(
            "no-localhost",
            MirrordPolicySpec {
                network: Some(NetworkPolicy {
                    outgoing: Some(OutgoingPolicy {
                        block: vec![OutgoingRule {
                            hostname: Some("^localhost$".into()),
                            ..OutgoingRule::default()
                        }],
                        ..OutgoingPolicy::default()
                    }),
                    ..NetworkPolicy::default()
                }),
                ..MirrordPolicySpec::default()
            },
        ));
        ws.send(ClientMessage::GetAddrInfoRequest(GetAddrInfoRequest {
            node: "localhost".into(),
        }))
        .await;
        let dns = ws.recv_no_log().await;
        assert!(
            matches!(
                dns,
                DaemonMessage::GetAddrInfoResponse(GetAddrInfoResponse(Ok(_)))
            ),
            "{dns:?}"
        );
        let target = SocketAddress::Ip(SocketAddr::from((Ipv4Addr::LOCALHOST, 47012)));
        ws.send(ClientMessage::TcpOutgoing(LayerTcpOutgoing::Connect(
            LayerConnect {
                remote_address: target.clone(),
            },
        )))
        .await;
        let refused = ws.recv_no_log().await;
        let DaemonMessage::TcpOutgoing(DaemonTcpOutgoing::Connect(Err(
            ResponseError::ForbiddenWithReason {
                blocked_action,
                policy_name,
                reason,
            },
        ))) = refused
        else {
            panic!("expected a refused connect, got {refused:?}")
        };
        assert_eq!(blocked_action, BlockedAction::OutgoingTcp(target));
        assert_eq!(policy_name.as_deref(), Some("no-localhost"));
        assert!(reason.contains("network.outgoing.block[0]"), "{reason}");

        // fs rules: missing, local, read-only; other paths open on the target.
        std::fs::create_dir_all(root.path().join("etc/app")).unwrap();
        std::fs::write(root.path().join("etc/app/config.yaml"), "pod: web-a\n").unwrap();
        live.0.lock().unwrap().push(policy(
            "files",
            MirrordPolicySpec {
                fs: Some(FsPolicy {
                    read_only: vec!["^/etc/app/".into()],
                    local: vec!["\\.env$".into()],
                    not_found: vec!["^/var/run/secrets/".into()],
                }),
                ..MirrordPolicySpec::default()
            },
        ));
        let open = |path: &str, write: bool| {
            ClientMessage::FileRequest(FileRequest::Open(OpenFileRequest {
                path: path.into(),
                open_options: OpenOptionsInternal {
                    read: true,
                    write,
                    ..Default::default()
                },
            }))
        };
        let answer = ws.ask(open("/var/run/secrets/token", false)).await;
        assert_eq!(
            open_error_kind(&answer),
            Some(ErrorKindInternal::NotFound),
            "{answer:?}"
        );
        ws.send(open("/app/.env", false)).await;
        assert_eq!(
            ws.recv_no_log().await,
            DaemonMessage::File(FileResponse::Open(Err(ResponseError::OpenLocal)))
        );
        let answer = ws.ask(open("/etc/app/config.yaml", true)).await;
        assert_eq!(
            open_error_kind(&answer),
            Some(ErrorKindInternal::PermissionDenied),
            "{answer:?}"
        );
        ws.send(open("/etc/app/config.yaml", false)).await;
        let answer = ws.recv_no_log().await;
        assert!(
            matches!(answer, DaemonMessage::File(FileResponse::Open(Ok(_)))),
            "{answer:?}"
        );

        // The sessions API shows the policies in force for the session.
        let (_, operator) = coordinator
            .call(
                http::Request::get("/apis/operator.metalbear.co/v1/mirrordoperators/operator"),
                "alice",
            )
            .await;
        let sessions = operator["status"]["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 1, "{operator}");
        assert_eq!(
            sessions[0]["policies"],
            serde_json::json!([
                "MirrordPolicy default/profile-required",
                "MirrordPolicy default/no-passwords",
                "MirrordPolicy default/no-localhost",
                "MirrordPolicy default/files"
            ])
        );
        ws.close().await;
    });
}
