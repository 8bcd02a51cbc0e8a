//! Golden fixtures for the patch builder (`tests/data/*/`), the contract of the injected container,
//! idempotence (patch applied, decide again: AlreadyInjected) and a property test over random pods.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::{Container, Pod};
use mirrord_operator::agent::{AgentArgs, target::parse_match};
use mirrord_operator::webhook::patch::{
    AGENT_CONTAINER_NAME, AgentDefaults, Decision, InjectorConfig, KNOB_PREFIX,
    POD_SECURITY_ENFORCE_LABEL, PatchOp, PodContext, PodView, STATUS_ANNOTATION, SkipReason,
    TARGET_ENV_PREFIX, TOKEN_AUDIENCE, TOKEN_DIR, TOKEN_PATH, decide,
};
use proptest::prelude::*;
use serde_json::{Value, json};

const AGENT_IMAGE: &str = "ghcr.io/mirrord-operator/mirrord-operator:0.1.0";
const GROUP_ID: i64 = 30777;

fn base_config() -> InjectorConfig {
    InjectorConfig {
        agent_image: AGENT_IMAGE.to_owned(),
        native_sidecar: true,
        defaults: AgentDefaults::default(),
        coordinator_url: "wss://mirrord-operator.mirrord.svc:443/agents/connect".to_owned(),
        coordinator_ca_bundle: Some(
            "-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIUFixtureOnlyNotARealCertificate=\n-----END CERTIFICATE-----\n"
                .to_owned(),
        ),
        agent_group_id: GROUP_ID,
        excluded_namespaces: ["kube-system", "kube-public", "kube-node-lease", "mirrord"]
            .into_iter()
            .map(str::to_owned)
            .collect(),
        operator_version: "0.1.0".to_owned(),
    }
}

struct Fixture {
    dir: PathBuf,
    review: Value,
    case: Value,
    expected: Value,
}

impl Fixture {
    fn name(&self) -> String {
        self.dir.file_name().unwrap().to_string_lossy().into_owned()
    }

    fn request(&self) -> &Value {
        &self.review["request"]
    }

    fn config(&self) -> InjectorConfig {
        let mut cfg = base_config();
        let overrides = &self.case["config"];
        if let Some(native) = overrides.get("nativeSidecar") {
            cfg.native_sidecar = native.as_bool().expect("nativeSidecar is a bool");
        }
        if let Some(ca) = overrides.get("coordinatorCaBundle") {
            cfg.coordinator_ca_bundle = ca.as_str().map(str::to_owned);
        }
        cfg
    }

    fn namespace_map(&self, key: &str) -> Option<BTreeMap<String, String>> {
        self.case
            .get(key)
            .map(|a| serde_json::from_value(a.clone()).unwrap_or_else(|e| panic!("{key}: {e}")))
    }
}

fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixtures() -> Vec<Fixture> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        // Other components keep their fixtures in sub-folders of tests/data (coordinator/,
        // registry-mirror/); a webhook case is a folder with an AdmissionReview.
        .filter(|p| p.is_dir() && p.join("review.json").exists())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| Fixture {
            review: read_json(&dir.join("review.json")),
            case: read_json(&dir.join("case.json")),
            // A new case has no expectation yet; BLESS=1 writes it, a normal run reports the mismatch.
            expected: if dir.join("expected.json").exists() {
                read_json(&dir.join("expected.json"))
            } else {
                Value::Null
            },
            dir,
        })
        .collect()
}

fn decision_json(decision: &Decision) -> Value {
    match decision {
        Decision::Inject {
            patch,
            warnings,
            invalid_knobs,
        } => {
            json!({ "inject": { "warnings": warnings, "invalidKnobs": invalid_knobs, "patch": patch } })
        }
        Decision::Skip(reason) => json!({ "skip": reason.as_label(), "warning": reason.warning() }),
    }
}

fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap();
    text.push('\n');
    text
}

#[test]
fn fixtures_match_expectations() {
    let bless = std::env::var_os("BLESS").is_some_and(|v| v == "1");
    let fixtures = fixtures();
    assert!(
        fixtures.len() >= 20,
        "fixtures went missing: {}",
        fixtures.len()
    );
    let mut failures = Vec::new();
    let mut injected = 0;
    for fixture in &fixtures {
        let name = fixture.name();
        let request = fixture.request();
        assert_eq!(
            fixture.review["apiVersion"], "admission.k8s.io/v1",
            "{name}"
        );
        assert_eq!(fixture.review["kind"], "AdmissionReview", "{name}");
        assert!(request["uid"].is_string(), "{name}: request.uid");

        if let Some(handler) = fixture.expected.get("handler") {
            check_handler_only(&name, handler.as_str().unwrap(), request);
            continue;
        }
        assert_eq!(request["operation"], "CREATE", "{name}");
        assert_eq!(request["kind"]["kind"], "Pod", "{name}");
        let pod: PodView = serde_json::from_value(request["object"].clone())
            .unwrap_or_else(|e| panic!("{name}: pod does not deserialize: {e}"));
        let namespace = request["namespace"].as_str().unwrap_or_default();
        let ns_annotations = fixture.namespace_map("namespaceAnnotations");
        let ns_labels = fixture.namespace_map("namespaceLabels");
        let ctx = PodContext {
            namespace,
            namespace_annotations: ns_annotations.as_ref(),
            namespace_labels: ns_labels.as_ref(),
        };
        let cfg = fixture.config();
        let decision = decide(&pod, &ctx, &cfg);
        let actual = decision_json(&decision);

        // Byte-stable: the same inputs give the same serialized output.
        assert_eq!(
            pretty(&actual),
            pretty(&decision_json(&decide(&pod, &ctx, &cfg))),
            "{name}"
        );

        if bless && !pretty(&actual).eq(&pretty(&fixture.expected)) {
            fs::write(fixture.dir.join("expected.json"), pretty(&actual)).unwrap();
        } else if actual != fixture.expected {
            failures.push(format!(
                "{name}: expected\n{}\ngot\n{}",
                pretty(&fixture.expected),
                pretty(&actual)
            ));
        }

        if let Decision::Inject { patch, .. } = &decision {
            injected += 1;
            check_injected(&name, &request["object"], patch, &ctx, &cfg);
        }
    }
    assert!(injected >= 12, "too few injected fixtures: {injected}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Fixtures for the HTTP handler: they must really be what they claim, so its tests can trust them.
fn check_handler_only(name: &str, kind: &str, request: &Value) {
    match kind {
        "not-a-pod" => assert_ne!(request["kind"]["kind"], "Pod", "{name}"),
        "not-create" => {
            assert_ne!(request["operation"], "CREATE", "{name}");
            serde_json::from_value::<Pod>(request["object"].clone()).unwrap();
        }
        "undecodable-pod" => {
            assert_eq!(request["kind"]["kind"], "Pod", "{name}");
            assert!(
                serde_json::from_value::<PodView>(request["object"].clone()).is_err(),
                "{name}"
            );
        }
        other => panic!("{name}: unknown handler expectation {other}"),
    }
}

fn find_agent(pod: &Pod) -> (&Container, bool) {
    let spec = pod.spec.as_ref().unwrap();
    if let Some(c) = spec
        .containers
        .iter()
        .find(|c| c.name == AGENT_CONTAINER_NAME)
    {
        return (c, false);
    }
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let c = init
        .iter()
        .find(|c| c.name == AGENT_CONTAINER_NAME)
        .expect("agent injected");
    (c, true)
}

fn env_value<'a>(agent: &'a Container, name: &str) -> Option<&'a str> {
    agent
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn env_field<'a>(agent: &'a Container, name: &str) -> Option<&'a str> {
    agent
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.name == name)
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.as_str())
}

/// The agent container's literal env given to the agent's own parser as it reads it (every
/// option has an env var; `valueFrom` ones are the kubelet's to fill): what the webhook renders,
/// the agent must accept. A container declaring no port once crash-looped its agent this way.
fn agent_accepts_its_env(name: &str, agent: &Container) {
    use clap::{ArgAction, Args, FromArgMatches};
    let command = AgentArgs::augment_args(clap::Command::new("mirrord-agent"));
    let mut argv = vec!["mirrord-agent".to_owned()];
    for arg in command.get_arguments() {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let Some(value) = env_value(agent, var.to_str().unwrap()) else {
            continue;
        };
        match arg.get_action() {
            ArgAction::SetTrue => {
                if matches!(value, "true" | "1" | "yes" | "on") {
                    argv.push(format!("--{long}"));
                }
            }
            _ => argv.push(format!("--{long}={value}")),
        }
    }
    let matches = command
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| panic!("{name}: the agent refuses the env the webhook rendered: {e}"));
    AgentArgs::from_arg_matches(&matches)
        .unwrap_or_else(|e| panic!("{name}: the agent refuses the env the webhook rendered: {e}"));
}

/// Applies the patch, checks the patched pod against the contract of injection.md, and re-runs decide.
fn check_injected(
    name: &str,
    original: &Value,
    patch: &[PatchOp],
    ctx: &PodContext<'_>,
    cfg: &InjectorConfig,
) {
    // Read back by another RFC 6902 implementation: what the API server will apply.
    let patch: json_patch::Patch = serde_json::from_value(serde_json::to_value(patch).unwrap())
        .unwrap_or_else(|e| panic!("{name}: not an RFC 6902 patch: {e}"));
    for op in &patch.0 {
        let json = serde_json::to_value(op).unwrap();
        assert_eq!(json["op"], "add", "{name}: only adds: {json}");
        let path = json["path"].as_str().unwrap();
        assert!(
            !matches!(path, "" | "/spec" | "/spec/containers"),
            "{name}: replaces a whole object: {path}"
        );
    }
    let mut doc = original.clone();
    json_patch::patch(&mut doc, &patch.0)
        .unwrap_or_else(|e| panic!("{name}: patch does not apply: {e}"));
    let before: Pod = serde_json::from_value(original.clone()).unwrap();
    let after: Pod =
        serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{name}: patched pod: {e}"));

    // Nothing of the original is lost or changed.
    let (b, a) = (before.spec.as_ref().unwrap(), after.spec.as_ref().unwrap());
    let others: Vec<&Container> = a
        .containers
        .iter()
        .filter(|c| c.name != AGENT_CONTAINER_NAME)
        .collect();
    assert_eq!(
        others,
        b.containers.iter().collect::<Vec<_>>(),
        "{name}: containers changed"
    );
    let others: Vec<&Container> = a
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.name != AGENT_CONTAINER_NAME)
        .collect();
    assert_eq!(
        others,
        b.init_containers.iter().flatten().collect::<Vec<_>>(),
        "{name}: init containers changed"
    );
    for (k, v) in before.metadata.annotations.iter().flatten() {
        assert_eq!(
            after.metadata.annotations.as_ref().unwrap().get(k),
            Some(v),
            "{name}: annotation {k}"
        );
    }
    assert_eq!(
        before.metadata.labels, after.metadata.labels,
        "{name}: labels changed"
    );

    // The status annotation: compact JSON recording version, containers, volumes and knobs.
    let status_text = after.metadata.annotations.as_ref().unwrap()[STATUS_ANNOTATION].clone();
    let status: Value = serde_json::from_str(&status_text).unwrap();
    // Compact, in the documented key order (the golden comparison pins the exact bytes).
    assert!(
        status_text.starts_with(r#"{"version":""#),
        "{name}: {status_text}"
    );
    assert!(
        !status_text.contains('\n')
            && !status_text.contains("\": ")
            && !status_text.contains(", \""),
        "{name}: not compact"
    );
    assert_eq!(status["version"], cfg.operator_version.as_str());
    let knobs = &status["knobs"];

    let (agent, native) = find_agent(&after);
    agent_accepts_its_env(name, agent);
    assert_eq!(native, knobs["native-sidecar"] == "true", "{name}");
    if native {
        assert_eq!(
            a.init_containers.as_ref().unwrap()[0].name,
            AGENT_CONTAINER_NAME,
            "{name}: agent first"
        );
        assert_eq!(agent.restart_policy.as_deref(), Some("Always"), "{name}");
        assert_eq!(status["initContainers"], json!([AGENT_CONTAINER_NAME]));
    } else {
        assert_eq!(
            a.containers.last().unwrap().name,
            AGENT_CONTAINER_NAME,
            "{name}: agent last"
        );
        assert_eq!(agent.restart_policy, None, "{name}");
        assert_eq!(status["containers"], json!([AGENT_CONTAINER_NAME]));
    }
    assert_eq!(agent.image.as_deref(), knobs["image"].as_str(), "{name}");
    assert_eq!(agent.args, Some(vec!["agent".to_owned()]), "{name}");

    for (var, path) in [
        ("MIRRORD_AGENT_POD_NAME", "metadata.name"),
        ("MIRRORD_AGENT_POD_NAMESPACE", "metadata.namespace"),
        ("MIRRORD_AGENT_POD_UID", "metadata.uid"),
        ("MIRRORD_AGENT_POD_IP", "status.podIP"),
        ("MIRRORD_AGENT_POD_IPS", "status.podIPs"),
        ("MIRRORD_AGENT_NODE_NAME", "spec.nodeName"),
    ] {
        assert_eq!(env_field(agent, var), Some(path), "{name}: {var}");
    }
    let group_id = GROUP_ID.to_string();
    for (var, expected) in [
        (
            "MIRRORD_AGENT_COORDINATOR_URL",
            Some(cfg.coordinator_url.as_str()),
        ),
        (
            "MIRRORD_AGENT_COORDINATOR_CA",
            cfg.coordinator_ca_bundle.as_deref(),
        ),
        ("MIRRORD_AGENT_LOG_LEVEL", knobs["log-level"].as_str()),
        ("MIRRORD_AGENT_REDIRECT", knobs["redirect"].as_str()),
        ("MIRRORD_AGENT_ENV_MODE", knobs["env"].as_str()),
        ("MIRRORD_AGENT_FS_MODE", knobs["fs"].as_str()),
        (
            "MIRRORD_AGENT_TARGET_CONTAINER",
            knobs["target-container"].as_str(),
        ),
        ("MIRRORD_AGENT_TOKEN_FILE", Some(TOKEN_PATH)),
        ("MIRRORD_AGENT_GROUP_ID", Some(group_id.as_str())),
        (
            "MIRRORD_AGENT_TARGET_ROOT",
            (knobs["fs"] == "volumes").then_some("/mirrord/target"),
        ),
    ] {
        assert_eq!(env_value(agent, var), expected, "{name}: {var}");
    }
    let target = b
        .containers
        .iter()
        .find(|c| c.name == knobs["target-container"].as_str().unwrap())
        .unwrap_or_else(|| panic!("{name}: target container exists"));
    let ports: BTreeSet<String> = target
        .ports
        .iter()
        .flatten()
        .map(|p| p.container_port.to_string())
        .collect();
    let listed: BTreeSet<String> = env_value(agent, "MIRRORD_AGENT_TARGET_PORTS")
        .unwrap()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, ports, "{name}: target ports");

    // env=spec: exactly the target's env, prefixed, in order, after the agent's own variables.
    let copies: Vec<&str> = agent
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.name.strip_prefix(TARGET_ENV_PREFIX))
        .collect();
    let target_env: Vec<&str> = target
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    if knobs["env"] == "spec" {
        assert_eq!(copies, target_env, "{name}: env copies");
        assert_eq!(
            agent.env_from.as_ref().map_or(0, Vec::len),
            target.env_from.as_ref().map_or(0, Vec::len)
        );
        for from in agent.env_from.iter().flatten() {
            assert!(
                from.prefix
                    .as_deref()
                    .unwrap()
                    .starts_with(TARGET_ENV_PREFIX),
                "{name}"
            );
        }
    } else {
        assert!(
            copies.is_empty() && agent.env_from.is_none(),
            "{name}: env copied with env={}",
            knobs["env"]
        );
    }

    // env/fs proc: how the agent finds the target's process among the pod's containers.
    let proc = knobs["env"] == "proc" || knobs["fs"] == "proc";
    match env_value(agent, "MIRRORD_AGENT_TARGET_MATCH") {
        Some(json) => {
            assert!(proc, "{name}: target match without a proc mode");
            let matcher = parse_match(json).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                matcher.target.command,
                target.command.clone().unwrap_or_default(),
                "{name}"
            );
            assert_eq!(
                matcher.target.args,
                target.args.clone().unwrap_or_default(),
                "{name}"
            );
            let declared: BTreeSet<String> = target
                .env
                .iter()
                .flatten()
                .map(|e| e.name.clone())
                .collect();
            assert!(matcher.target.env_names.is_subset(&declared), "{name}");
            let neighbours = b.containers.len() - 1
                + b.init_containers
                    .iter()
                    .flatten()
                    .filter(|c| c.restart_policy.as_deref() == Some("Always"))
                    .count();
            assert_eq!(matcher.others.len(), neighbours, "{name}: others");
        }
        None => assert!(!proc, "{name}: proc mode without a target match"),
    }

    let sc = agent.security_context.as_ref().unwrap();
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]), "{name}");
    let added: Vec<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(
        added.contains(&"NET_ADMIN"),
        knobs["redirect"] == "iptables",
        "{name}: NET_ADMIN"
    );
    assert_eq!(added.contains(&"SYS_PTRACE"), proc, "{name}: SYS_PTRACE");
    assert!(
        added
            .iter()
            .all(|c| matches!(*c, "NET_ADMIN" | "SYS_PTRACE")),
        "{name}: {added:?}"
    );
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
    assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
    assert_eq!(sc.privileged, None, "{name}");
    assert_eq!(sc.run_as_group, Some(GROUP_ID), "{name}");
    let root = !added.is_empty();
    assert_eq!(sc.run_as_user, Some(if root { 0 } else { 65532 }), "{name}");
    assert_eq!(sc.run_as_non_root, Some(!root), "{name}");
    if proc && b.host_pid != Some(true) {
        assert_eq!(
            a.share_process_namespace,
            Some(true),
            "{name}: shared PID namespace"
        );
    } else {
        assert_eq!(
            a.share_process_namespace, b.share_process_namespace,
            "{name}"
        );
    }

    // Resources follow the knobs; a request never exceeds its limit.
    let resources = agent.resources.as_ref().unwrap();
    let requests = resources.requests.as_ref().unwrap();
    assert_eq!(
        requests["cpu"].0,
        knobs["cpu-request"].as_str().unwrap(),
        "{name}"
    );
    assert_eq!(
        requests["memory"].0,
        knobs["memory-request"].as_str().unwrap(),
        "{name}"
    );
    let limit = |r: &str| {
        resources
            .limits
            .as_ref()
            .and_then(|l| l.get(r))
            .map(|q| q.0.as_str())
    };
    assert_eq!(limit("cpu"), knobs["cpu-limit"].as_str(), "{name}");
    assert_eq!(limit("memory"), knobs["memory-limit"].as_str(), "{name}");

    // The token volume, projected for the coordinator's audience, and its read-only mount.
    let volume_name = status["volumes"][0].as_str().unwrap();
    let volume = a
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume_name)
        .unwrap();
    assert_eq!(
        a.volumes
            .iter()
            .flatten()
            .filter(|v| v.name == volume_name)
            .count(),
        1,
        "{name}: volume names unique"
    );
    let token = volume.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(token.audience.as_deref(), Some(TOKEN_AUDIENCE));
    assert_eq!(token.expiration_seconds, Some(3600));
    assert_eq!(token.path, "token");
    let mounts = agent.volume_mounts.as_deref().unwrap();
    let token_mount = mounts.iter().find(|m| m.name == volume_name).unwrap();
    assert_eq!(
        (token_mount.mount_path.as_str(), token_mount.read_only),
        (TOKEN_DIR, Some(true))
    );

    // fs=volumes: the target's mounts, read-only under /mirrord/target, nothing else.
    for m in mounts.iter().filter(|m| m.name != volume_name) {
        assert_eq!(
            knobs["fs"], "volumes",
            "{name}: mounts with fs={}",
            knobs["fs"]
        );
        assert_eq!(m.read_only, Some(true), "{name}");
        assert_eq!(m.mount_propagation, None, "{name}");
        let original = m.mount_path.strip_prefix("/mirrord/target").unwrap();
        assert!(
            target
                .volume_mounts
                .iter()
                .flatten()
                .any(|t| t.name == m.name
                    && t.mount_path.trim_start_matches('/') == original.trim_start_matches('/')
                    && t.sub_path == m.sub_path),
            "{name}: mount {} not from the target",
            m.mount_path
        );
    }

    // Idempotent: the webhook applied to its own output yields no patch.
    assert_eq!(
        decide(&serde_json::from_value(doc).unwrap(), ctx, cfg),
        Decision::Skip(SkipReason::AlreadyInjected),
        "{name}: second pass"
    );
}

/// The same fixtures through the real HTTP handler (`Router::oneshot`), with the namespace served from
/// the in-memory cache as in production: the patch sent is the golden one, skips carry their warning,
/// and non-Pod / non-CREATE / undecodable reviews are admitted untouched with a warning.
#[tokio::test]
async fn fixtures_through_the_admission_handler() {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Namespace;
    use mirrord_operator::{
        tls::CertResolver,
        webhook::{
            metrics::Metrics,
            namespaces::NamespaceCache,
            server::{WebhookState, admission_router},
        },
    };
    use tower::ServiceExt;

    for fixture in fixtures() {
        let name = fixture.name();
        let namespace = Namespace {
            metadata: kube::api::ObjectMeta {
                name: fixture.request()["namespace"].as_str().map(str::to_owned),
                annotations: fixture.namespace_map("namespaceAnnotations"),
                labels: fixture.namespace_map("namespaceLabels"),
                ..Default::default()
            },
            ..Default::default()
        };
        let state = WebhookState::new(
            fixture.config(),
            NamespaceCache::fixed([namespace]),
            Arc::new(Metrics::default()),
            Arc::new(CertResolver::default()),
            true,
        );
        let request = http::Request::post("/mutate")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(
                serde_json::to_vec(&fixture.review).unwrap(),
            ))
            .unwrap();
        let response = admission_router(state).oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200, "{name}");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let reply: Value = serde_json::from_slice(&body).unwrap();
        let answer = &reply["response"];
        assert_eq!(answer["uid"], fixture.request()["uid"], "{name}");
        assert_eq!(answer["allowed"], true, "{name}");
        let warnings: Vec<String> =
            serde_json::from_value(answer["warnings"].clone()).unwrap_or_default();
        if let Some(expected) = fixture.expected.get("inject") {
            assert_eq!(answer["patchType"], "JSONPatch", "{name}");
            let b64 = answer["patch"].as_str().expect("the patch is base64");
            let bytes =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap();
            let patch: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(
                patch, expected["patch"],
                "{name}: the handler sends the golden patch"
            );
            assert_eq!(json!(warnings), expected["warnings"], "{name}");
        } else {
            assert!(answer.get("patch").is_none(), "{name}: no patch expected");
            let expected_warning = fixture.expected.get("warning").and_then(Value::as_str);
            match expected_warning {
                Some(warning) => assert_eq!(warnings, vec![warning.to_owned()], "{name}"),
                None => assert_eq!(
                    warnings.len(),
                    1,
                    "{name}: one warning explains the decision"
                ),
            }
        }
    }
}

#[test]
fn skip_order_follows_the_brief() {
    let cfg = base_config();
    let pod = |extra: Value| -> PodView {
        let mut base = json!({
            "metadata": {
                "labels": { "mirrord.metalbear.co/inject": "false" },
                "annotations": { STATUS_ANNOTATION: "{}" }
            },
            "spec": { "hostNetwork": true, "containers": [] }
        });
        json_patch::merge(&mut base, &extra);
        serde_json::from_value(base).unwrap()
    };
    let ctx = |namespace| PodContext {
        namespace,
        namespace_annotations: None,
        namespace_labels: None,
    };
    let skip = |p: &PodView, ns| match decide(p, &ctx(ns), &cfg) {
        Decision::Skip(reason) => reason,
        other => panic!("expected a skip, got {other:?}"),
    };
    let all = pod(json!({}));
    assert_eq!(skip(&all, "mirrord"), SkipReason::ExcludedNamespace);
    assert_eq!(skip(&all, "shop"), SkipReason::NoContainers);
    let with_container = pod(json!({ "spec": { "containers": [{ "name": "app" }] } }));
    assert_eq!(skip(&with_container, "shop"), SkipReason::AlreadyInjected);
    let not_injected = pod(
        json!({ "metadata": { "annotations": null }, "spec": { "containers": [{ "name": "app" }] } }),
    );
    assert_eq!(skip(&not_injected, "shop"), SkipReason::OptedOut);
    let opted_in = pod(json!({
        "metadata": { "annotations": null, "labels": { "mirrord.metalbear.co/inject": "true" } },
        "spec": { "containers": [{ "name": "app" }] }
    }));
    assert_eq!(skip(&opted_in, "shop"), SkipReason::HostNetwork);
    let windows = pod(json!({
        "metadata": { "annotations": null, "labels": null },
        "spec": { "hostNetwork": false, "os": { "name": "windows" }, "containers": [{ "name": "app" }] }
    }));
    assert_eq!(skip(&windows, "shop"), SkipReason::WindowsPod);
    // Last, as it needs the resolved native-sidecar knob: a Job's pod without native sidecars.
    let job = json!({
        "metadata": { "ownerReferences": [{ "apiVersion": "batch/v1", "kind": "Job", "name": "once", "uid": "u" }] },
        "spec": { "containers": [{ "name": "app" }] }
    });
    let job: PodView = serde_json::from_value(job).unwrap();
    let no_native = InjectorConfig {
        native_sidecar: false,
        ..base_config()
    };
    assert!(matches!(
        decide(&job, &ctx("shop"), &no_native),
        Decision::Skip(SkipReason::JobWithoutNativeSidecar)
    ));
    assert!(matches!(
        decide(&job, &ctx("shop"), &cfg),
        Decision::Inject { .. }
    ));
    // The request namespace wins; an empty one falls back to the pod's own.
    let in_system = pod(json!({ "metadata": { "namespace": "kube-system" } }));
    assert_eq!(skip(&in_system, ""), SkipReason::ExcludedNamespace);
    assert_eq!(skip(&in_system, "shop"), SkipReason::NoContainers);
}

// ---------------------------------------------------------------------------------------------
// Property test: random pods never panic; an injected pod re-decides to AlreadyInjected.

fn knob_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "true",
            "false",
            "iptables",
            "port-swap",
            "off",
            "spec",
            "proc",
            "volumes",
            "debug",
            "info",
            "5m",
            "0",
            "1Gi",
            "64Mi",
            "2",
            "-1",
            "1e3",
            "busybox",
            "Bad Image",
            "app",
            "istio-proxy",
            "mirrord-agent",
            "",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,12}",
    ]
}

fn container_json() -> impl Strategy<Value = Value> {
    let name = prop_oneof![
        prop::sample::select(vec![
            "app",
            "web",
            "istio-proxy",
            "linkerd-proxy",
            "daprd",
            "vault-agent",
            "mirrord-agent"
        ])
        .prop_map(str::to_owned),
        "[a-z][a-z0-9-]{0,8}",
    ];
    let env_name = prop::sample::select(vec![
        "A",
        "B",
        "PORT",
        "HOST",
        "POD_NAME",
        "MIRRORD_AGENT_LOG_LEVEL",
    ]);
    let env = prop::collection::vec(
        (
            env_name,
            prop_oneof![
                "[a-zA-Z$()_ ]{0,16}".prop_map(|v| json!({ "value": v })),
                Just(json!({ "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } })),
                Just(
                    json!({ "valueFrom": { "resourceFieldRef": { "resource": "limits.memory" } } })
                ),
            ],
        ),
        0..5,
    );
    let env_from = prop::collection::vec(
        prop::option::of("[A-Z_]{0,4}").prop_map(|prefix| match prefix {
            Some(p) => json!({ "prefix": p, "configMapRef": { "name": "cm" } }),
            None => json!({ "secretRef": { "name": "s" } }),
        }),
        0..2,
    );
    let mounts = prop::collection::vec(
        (
            prop::sample::select(vec!["data", "config", "mirrord-agent-token"]),
            "/?[a-z/]{0,10}",
            prop::option::of(prop::sample::select(vec![
                "$(A)",
                "$(POD_NAME)/x",
                "$$(A)",
                "plain",
            ])),
            prop::option::of(prop::sample::select(vec![
                "HostToContainer",
                "Bidirectional",
                "None",
            ])),
        ),
        0..3,
    );
    let ports = prop::collection::vec(1..65536i32, 0..3);
    (name, env, env_from, mounts, ports, any::<bool>()).prop_map(
        |(name, env, env_from, mounts, ports, omit)| {
            let mut c = json!({ "name": name });
            if !(omit && env.is_empty()) {
                c["env"] = env
                    .into_iter()
                    .map(|(n, mut v)| {
                        v["name"] = json!(n);
                        v
                    })
                    .collect();
            }
            if !env_from.is_empty() {
                c["envFrom"] = Value::Array(env_from);
            }
            if !mounts.is_empty() {
                c["volumeMounts"] = mounts
                    .into_iter()
                    .map(|(n, path, expr, prop)| {
                        let mut m = json!({ "name": n, "mountPath": path });
                        if let Some(e) = expr {
                            m["subPathExpr"] = json!(e);
                        }
                        if let Some(p) = prop {
                            m["mountPropagation"] = json!(p);
                        }
                        m
                    })
                    .collect();
            }
            if !ports.is_empty() {
                c["ports"] = ports
                    .into_iter()
                    .map(|p| json!({ "containerPort": p }))
                    .collect();
            }
            c
        },
    )
}

fn annotations_json() -> impl Strategy<Value = Option<BTreeMap<String, String>>> {
    let knob = prop::sample::select(vec![
        "image",
        "cpu-request",
        "cpu-limit",
        "memory-request",
        "memory-limit",
        "log-level",
        "native-sidecar",
        "redirect",
        "env",
        "fs",
        "target-container",
        "unknown-knob",
    ]);
    prop::option::of(prop::collection::btree_map(
        prop_oneof![
            knob.prop_map(|k| format!("{KNOB_PREFIX}{k}")),
            "[a-z./~]{1,12}",
        ],
        knob_value(),
        0..6,
    ))
}

#[derive(Debug)]
struct RandomPod {
    pod: Value,
    namespace: String,
    namespace_annotations: Option<BTreeMap<String, String>>,
    namespace_labels: Option<BTreeMap<String, String>>,
    native_sidecar: bool,
}

fn random_pod() -> impl Strategy<Value = RandomPod> {
    let spec = (
        prop::collection::vec(container_json(), 0..4),
        prop::option::of(prop::collection::vec(container_json(), 0..2)),
        prop::option::of(prop::collection::vec(
            prop::sample::select(vec![
                "data",
                "config",
                "mirrord-agent-token",
                "mirrord-agent-token-1",
            ]),
            0..4,
        )),
        prop::option::of(any::<bool>()),
        prop::option::of(any::<bool>()),
        prop::bool::weighted(0.05),
    );
    let meta = (
        annotations_json(),
        prop::option::of(prop::collection::btree_map(
            prop::sample::select(vec!["app", "mirrord.metalbear.co/inject"]),
            prop::sample::select(vec!["true", "false", "web"]),
            0..2,
        )),
        any::<bool>(),
        any::<bool>(),
    );
    (
        spec,
        meta,
        prop::sample::select(vec!["shop", "kube-system", "", "team-a"]),
        annotations_json(),
        prop::option::of(prop::sample::select(vec!["privileged", "baseline", "restricted", "bogus"])),
        any::<bool>(),
    )
        .prop_map(
            |((containers, init, volumes, host_network, share_pid, windows), (annotations, labels, job, no_meta), ns, ns_ann, pss, native)| {
                let mut spec = json!({ "containers": containers });
                if let Some(init) = init {
                    spec["initContainers"] = Value::Array(init);
                }
                if let Some(volumes) = volumes {
                    spec["volumes"] = volumes.into_iter().map(|v| json!({ "name": v, "emptyDir": {} })).collect();
                }
                if let Some(h) = host_network {
                    spec["hostNetwork"] = json!(h);
                }
                if let Some(s) = share_pid {
                    // The apiserver refuses both together; draw one or the other.
                    if s {
                        spec["shareProcessNamespace"] = json!(true);
                    } else {
                        spec["hostPID"] = json!(true);
                    }
                }
                if windows {
                    spec["os"] = json!({ "name": "windows" });
                }
                let mut pod = json!({ "apiVersion": "v1", "kind": "Pod", "spec": spec });
                if !no_meta {
                    let mut meta = json!({ "generateName": "web-" });
                    if let Some(a) = annotations {
                        meta["annotations"] = json!(a);
                    }
                    if let Some(l) = labels {
                        meta["labels"] = json!(l);
                    }
                    if job {
                        meta["ownerReferences"] =
                            json!([{ "apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "u" }]);
                    }
                    pod["metadata"] = meta;
                }
                RandomPod {
                    pod,
                    namespace: ns.to_owned(),
                    namespace_annotations: ns_ann,
                    namespace_labels: pss.map(|level| BTreeMap::from([(POD_SECURITY_ENFORCE_LABEL.to_owned(), level.to_owned())])),
                    native_sidecar: native,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_pods_patch_cleanly_and_once(input in random_pod()) {
        let pod: PodView = serde_json::from_value(input.pod.clone()).unwrap();
        let mut cfg = base_config();
        cfg.native_sidecar = input.native_sidecar;
        let ctx = PodContext {
            namespace: &input.namespace,
            namespace_annotations: input.namespace_annotations.as_ref(),
            namespace_labels: input.namespace_labels.as_ref(),
        };
        let decision = decide(&pod, &ctx, &cfg);
        if let Decision::Inject { patch, warnings, invalid_knobs } = &decision {
            // The whole contract, as for the fixtures, including the second pass.
            check_injected("random pod", &input.pod, patch, &ctx, &cfg);
            for w in warnings {
                prop_assert!(w.len() < 512 && !w.contains('\n'), "warning {:?}", w);
            }
            let unique: BTreeSet<_> = invalid_knobs.iter().collect();
            prop_assert_eq!(unique.len(), invalid_knobs.len());
            // Byte-stable.
            prop_assert_eq!(
                serde_json::to_string(patch).unwrap(),
                serde_json::to_string(&match decide(&pod, &ctx, &cfg) { Decision::Inject { patch, .. } => patch, other => panic!("{other:?}") }).unwrap()
            );
        }
    }
}
