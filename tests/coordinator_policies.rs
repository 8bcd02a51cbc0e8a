//! Policies enforced by the coordinator with a real agent: a network namespace plays a pod of
//! Deployment `web` (labelled `team: payments`) with the real `mirrord-operator agent` dialling the
//! hub. Through the real API router and relay, over WebSocket with the project's codec:
//! `requireProfile` refuses the connect with a 403 `metav1.Status` naming the policy; with a
//! profile the session runs; a steal without a filter is accepted, then refused with
//! `ResponseError::ForbiddenWithReason` once a policy is added mid-session, while a filtered steal
//! still goes through; after the policy is deleted the unfiltered steal is accepted again;
//! env values from a Secret the user may not `get` (SubjectAccessReview stand-in), through
//! `secretKeyRef` or `envFrom`, are left out;
//! `env.exclude` keeps a variable out of the agent's env answer; a hostname rule, fed by the
//! session's own DNS answer, refuses an outgoing connection; `fs` rules answer opens as missing,
//! local, or refused for writing while other files open on the target, and apply to `openat`,
//! stat/access, unlink/mkdirat/rename and directory listings, the coordinator's own answers kept in
//! request order; the env note written before `ReadyForLogs` arrives after it. Needs root
//! (namespaces, iptables).

#[path = "support/coordinator.rs"]
mod coordinator;
#[path = "support/netns.rs"]
mod netns;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};

use coordinator::{
    APP, Cli, Coordinator, container, upgrade_request, web_inventory, web_pod, web_template,
};
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
use tokio_tungstenite::tungstenite;

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

/// Pod `web-a` of Deployment `web` (labelled `team: payments`), its env partly from Secrets.
fn inventory() -> mirrord_operator::coordinator::api::state::StaticInventory {
    let web = json!({"name": "web", "image": "x", "envFrom": [
        {"secretRef": {"name": "db-creds"}, "prefix": "API_"},
        {"secretRef": {"name": "public"}, "prefix": "PUB_"}
    ], "env": [
        {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "db-creds", "key": "api"}}},
        {"name": "PUBLIC_ID", "valueFrom": {"secretKeyRef": {"name": "public", "key": "id"}}}
    ]});
    web_inventory(
        vec![web_pod("web-a", json!([web, container("mirrord-agent")]))],
        json!({"team": "payments"}),
        web_template(),
    )
}

fn connect_request(
    addr: SocketAddr,
    der: &str,
    id: u64,
    profile: Option<&str>,
) -> coordinator::Request {
    let profile = profile.map(|p| format!("&profile={p}")).unwrap_or_default();
    upgrade_request(
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

async fn unsubscribe(ws: &mut Cli) {
    ws.send(ClientMessage::TcpSteal(LayerTcpSteal::PortUnsubscribe(APP)))
        .await;
    ws.ping().await;
}

#[test]
fn policies_refuse_at_connect_and_per_subscription() {
    let ns = netns::NetNs::with_caller("cp");
    let _site = ns.serve_hello(APP, "app of web-a", coordinator::TIMEOUT);
    let root = tempfile::tempdir().unwrap();
    let token = coordinator::token_file("web-a");
    let hub = coordinator::hub_listener(&ns, HUB_PORT);
    coordinator::runtime().block_on(async {
        let coord = Coordinator::new(&["web-a"], inventory(), None);
        let live = Arc::new(Live::default());
        coord.table.set_policy_gate(Arc::new(
            PolicyGate::new(live.clone()).with_secret_authorizer(Arc::new(SecretsFor)),
        ));
        let der = coord.client_der("alice").await;
        let addr = coord.serve(vec![hub]).await;
        let mut cmd = coordinator::agent_command(&ns, HUB_PORT, "web-a", token.path(), "CPTEST");
        cmd.env("MIRRORD_AGENT_TARGET_ROOT", root.path())
            .env("MIRRORD_AGENT_FS_MODE", "volumes")
            .env("MIRRORD_TARGET_ENV_GREETING", "hello")
            .env("MIRRORD_TARGET_ENV_DB_PASSWORD", "hunter2")
            .env("MIRRORD_TARGET_ENV_API_KEY", "k-123")
            .env("MIRRORD_TARGET_ENV_PUBLIC_ID", "id-9")
            .env("MIRRORD_TARGET_ENV_API_TOKEN", "t-1")
            .env("MIRRORD_TARGET_ENV_PUB_NAME", "shop");
        ns.spawn(cmd);
        coord.wait_for_agents(1).await;

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
        let Err(tungstenite::Error::Http(response)) = refused else {
            panic!("expected an HTTP refusal")
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
        let env_request = || {
            ClientMessage::GetEnvVarsRequest(GetEnvVarsRequest {
                env_vars_filter: Default::default(),
                env_vars_select: ["*".to_owned()].into(),
            })
        };
        ws.send(env_request()).await;
        let DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(env))) = ws.recv_no_log().await
        else {
            panic!("an env answer")
        };
        assert_eq!(env.get("DB_PASSWORD").map(String::as_str), Some("hunter2"));
        // Secret-backed: alice may get Secret `public`, not `db-creds`.
        assert_eq!(env.get("PUBLIC_ID").map(String::as_str), Some("id-9"));
        assert!(!env.contains_key("API_KEY"), "{env:?}");
        // envFrom: `API_*` may come from `db-creds`, `PUB_*` from `public`.
        assert!(!env.contains_key("API_TOKEN"), "{env:?}");
        assert_eq!(env.get("PUB_NAME").map(String::as_str), Some("shop"));
        // The CLI's first env request comes before `ReadyForLogs`: the note why waits for it.
        ws.send(ClientMessage::ReadyForLogs).await;
        let note = ws.recv_log("environment variables left out").await;
        assert!(
            note.message.contains("API_KEY")
                && note.message.contains("API_TOKEN")
                && note.message.contains("envFrom, prefix API_")
                && note.message.contains("db-creds"),
            "{note:?}"
        );
        assert_eq!(note.level, LogLevel::Warn);
        live.0.lock().unwrap().push(policy(
            "no-passwords",
            MirrordPolicySpec {
                env: Some(EnvPolicy {
                    exclude: vec!["*_PASSWORD".into()],
                }),
                ..MirrordPolicySpec::default()
            },
        ));
        ws.send(env_request()).await;
        let DaemonMessage::GetEnvVarsResponse(Ok(RemoteEnvVars(env))) = ws.recv_no_log().await
        else {
            panic!("an env answer")
        };
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
        std::fs::write(root.path().join("etc/app/tls.key"), "secret\n").unwrap();
        live.0.lock().unwrap().push(policy(
            "files",
            MirrordPolicySpec {
                fs: Some(FsPolicy {
                    read_only: vec!["^/etc/app/".into()],
                    local: vec!["\\.env$".into()],
                    not_found: vec!["^/var/run/secrets/".into(), "\\.key$".into()],
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
        ws.send(open("/var/run/secrets/token", false)).await;
        let answer = ws.recv_no_log().await;
        assert!(
            matches!(
                &answer,
                DaemonMessage::File(FileResponse::Open(Err(ResponseError::RemoteIO(e))))
                    if e.kind == ErrorKindInternal::NotFound
            ),
            "{answer:?}"
        );
        ws.send(open("/app/.env", false)).await;
        assert_eq!(
            ws.recv_no_log().await,
            DaemonMessage::File(FileResponse::Open(Err(ResponseError::OpenLocal)))
        );
        ws.send(open("/etc/app/config.yaml", true)).await;
        let answer = ws.recv_no_log().await;
        assert!(
            matches!(
                &answer,
                DaemonMessage::File(FileResponse::Open(Err(ResponseError::RemoteIO(e))))
                    if e.kind == ErrorKindInternal::PermissionDenied
            ),
            "{answer:?}"
        );
        ws.send(open("/etc/app/config.yaml", false)).await;
        let answer = ws.recv_no_log().await;
        assert!(
            matches!(answer, DaemonMessage::File(FileResponse::Open(Ok(_)))),
            "{answer:?}"
        );
        fs_rules_beyond_open(&mut ws, root.path()).await;

        // The sessions API shows the policies in force for the session.
        let (_, operator) = coord
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

fn io_kind(answer: &DaemonMessage) -> Option<(Option<i32>, ErrorKindInternal)> {
    let DaemonMessage::File(response) = answer else {
        return None;
    };
    let error = match response {
        FileResponse::Open(Err(e)) => e,
        FileResponse::Xstat(Err(e)) => e,
        FileResponse::Access(Err(e)) => e,
        FileResponse::Unlink(Err(e)) => e,
        FileResponse::MakeDir(Err(e)) => e,
        FileResponse::Rename(Err(e)) => e,
        _ => return None,
    };
    match error {
        ResponseError::RemoteIO(io) => Some((io.raw_os_error, io.kind.clone())),
        _ => None,
    }
}

const ENOENT: (Option<i32>, ErrorKindInternal) = (Some(2), ErrorKindInternal::NotFound);
/// The coordinator's refusal (the agent itself answers writes with EROFS, 30).
const EACCES: (Option<i32>, ErrorKindInternal) = (Some(13), ErrorKindInternal::PermissionDenied);

/// `fs` rules on requests other than `Open` by absolute path, against the real agent: `openat`
/// through a directory fd, `stat`, `access`, unlink/mkdir/rename, directory listings without the
/// `notFound` entries, and the coordinator's own answer kept behind the agent's earlier one.
async fn fs_rules_beyond_open(ws: &mut Cli, root: &Path) {
    let file = |r| ClientMessage::FileRequest(r);
    let read = OpenOptionsInternal {
        read: true,
        ..Default::default()
    };
    ws.send(file(FileRequest::Open(OpenFileRequest {
        path: "/etc/app".into(),
        open_options: read,
    })))
    .await;
    let DaemonMessage::File(FileResponse::Open(Ok(OpenFileResponse { fd: dir }))) =
        ws.recv_no_log().await
    else {
        panic!("/etc/app opens on the target")
    };
    let relative = |path: &str, write: bool| {
        file(FileRequest::OpenRelative(OpenRelativeFileRequest {
            relative_fd: dir,
            path: path.into(),
            open_options: OpenOptionsInternal {
                read: true,
                write,
                ..Default::default()
            },
        }))
    };
    ws.send(relative("config.yaml", true)).await;
    assert_eq!(io_kind(&ws.recv_no_log().await), Some(EACCES));
    ws.send(relative("tls.key", false)).await;
    assert_eq!(io_kind(&ws.recv_no_log().await), Some(ENOENT));
    ws.send(relative("../app/./config.yaml", false)).await;
    let answer = ws.recv_no_log().await;
    assert!(
        matches!(answer, DaemonMessage::File(FileResponse::Open(Ok(_)))),
        "{answer:?}"
    );

    // stat and access: a notFound path is not there, others are.
    let stat = |path: &str| {
        file(FileRequest::Xstat(XstatRequest {
            path: Some(path.into()),
            fd: None,
            follow_symlink: true,
        }))
    };
    ws.send(stat("/etc/app/tls.key")).await;
    assert_eq!(io_kind(&ws.recv_no_log().await), Some(ENOENT));
    ws.send(file(FileRequest::Xstat(XstatRequest {
        path: Some("tls.key".into()),
        fd: Some(dir),
        follow_symlink: true,
    })))
    .await;
    assert_eq!(io_kind(&ws.recv_no_log().await), Some(ENOENT));
    ws.send(file(FileRequest::Access(AccessFileRequest {
        pathname: "/etc/app/tls.key".into(),
        mode: 0,
    })))
    .await;
    assert_eq!(io_kind(&ws.recv_no_log().await), Some(ENOENT));
    ws.send(stat("/etc/app/config.yaml")).await;
    let answer = ws.recv_no_log().await;
    assert!(
        matches!(answer, DaemonMessage::File(FileResponse::Xstat(Ok(_)))),
        "{answer:?}"
    );

    // Changes to read-only paths: refused by the coordinator (EACCES, not the agent's EROFS).
    ws.send(file(FileRequest::Unlink(UnlinkRequest {
        pathname: "/etc/app/config.yaml".into(),
    })))
    .await;
    assert_eq!(io_kind(&ws.recv_no_log().await), Some(EACCES));
    ws.send(file(FileRequest::MakeDirAt(MakeDirAtRequest {
        dirfd: dir,
        pathname: "new".into(),
        mode: 0o755,
    })))
    .await;
    assert_eq!(io_kind(&ws.recv_no_log().await), Some(EACCES));
    ws.send(file(FileRequest::Rename(RenameRequest {
        old_path: "/tmp/x".into(),
        new_path: "/etc/app/x".into(),
    })))
    .await;
    assert_eq!(io_kind(&ws.recv_no_log().await), Some(EACCES));
    assert!(root.join("etc/app/config.yaml").exists());

    // Listings leave out notFound entries, through both directory reads.
    ws.send(file(FileRequest::FdOpenDir(FdOpenDirRequest {
        remote_fd: dir,
    })))
    .await;
    let DaemonMessage::File(FileResponse::OpenDir(Ok(OpenDirResponse { fd: stream }))) =
        ws.recv_no_log().await
    else {
        panic!("the directory stream opens")
    };
    ws.send(file(FileRequest::ReadDirBatch(ReadDirBatchRequest {
        remote_fd: stream,
        amount: 64,
    })))
    .await;
    let DaemonMessage::File(FileResponse::ReadDirBatch(Ok(batch))) = ws.recv_no_log().await else {
        panic!("a batch")
    };
    let names: Vec<&str> = batch.dir_entries.iter().map(|e| e.name.as_str()).collect();
    assert!(names.contains(&"config.yaml"), "{names:?}");
    assert!(!names.contains(&"tls.key"), "{names:?}");
    ws.send(file(FileRequest::GetDEnts64(GetDEnts64Request {
        remote_fd: dir,
        buffer_size: 4096,
    })))
    .await;
    let DaemonMessage::File(FileResponse::GetDEnts64(Ok(dents))) = ws.recv_no_log().await else {
        panic!("dents")
    };
    let names: Vec<&str> = dents.entries.iter().map(|e| e.name.as_str()).collect();
    assert!(names.contains(&"config.yaml"), "{names:?}");
    assert!(!names.contains(&"tls.key"), "{names:?}");
    let sizes: u64 = dents
        .entries
        .iter()
        .map(|e| (20 + e.name.len() as u64).div_ceil(8) * 8)
        .sum();
    assert_eq!(dents.result_size, sizes);

    // Answers in request order: the agent's answers to the earlier requests, then the
    // coordinator's own refusal of the last one (written at once, the relay decides on it before
    // the agent answered them).
    const AHEAD: usize = 20;
    for _ in 0..AHEAD {
        ws.feed(stat("/etc/app/config.yaml")).await;
    }
    ws.send(stat("/etc/app/tls.key")).await;
    for _ in 0..AHEAD {
        let answer = ws.recv_no_log().await;
        assert!(
            matches!(answer, DaemonMessage::File(FileResponse::Xstat(Ok(_)))),
            "{answer:?}"
        );
    }
    assert_eq!(io_kind(&ws.recv_no_log().await), Some(ENOENT));
}
