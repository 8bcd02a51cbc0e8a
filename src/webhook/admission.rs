//! AdmissionReview in, AdmissionReview (or an HTTP error) out. Pure: no I/O, no clock, no kube client,
//! so dry-run and reinvocation are safe and every path is testable with fixtures.

use std::sync::Arc;

use base64::Engine;
use http::StatusCode;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::core::{
    DynamicObject, Resource,
    admission::{AdmissionRequest, AdmissionReview, Operation},
};
use serde::Serialize;

use super::patch::{self, Decision, InjectorConfig, PodContext, SkipReason};

const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";
const REVIEW_KIND: &str = "AdmissionReview";

/// What to send back, plus what metrics and the request span record.
#[derive(Debug)]
pub struct Outcome {
    pub status: StatusCode,
    pub body: Vec<u8>,
    /// injected | skipped | allowed | error | rejected
    pub result: &'static str,
    pub skip: Option<SkipReason>,
    /// Set when something went wrong even though the pod was admitted.
    pub error: Option<&'static str>,
    pub invalid_knobs: Vec<&'static str>,
    pub namespace: String,
    pub pod: String,
}

impl Outcome {
    fn rejected(status: StatusCode, reason: &'static str, message: String) -> Self {
        let body = serde_json::to_vec(&serde_json::json!({ "error": reason, "message": message }))
            .expect("a JSON object always serializes");
        Outcome {
            status,
            body,
            result: "rejected",
            skip: None,
            error: Some(reason),
            invalid_knobs: vec![],
            namespace: String::new(),
            pod: String::new(),
        }
    }

    /// The answer for a body the HTTP layer could not read (e.g. a broken chunked encoding).
    pub fn unreadable(status: StatusCode, message: String) -> Self {
        Self::rejected(status, "unreadable-body", message)
    }

    /// The answer for a body over the size limit (the HTTP layer enforces the limit).
    pub fn too_large(limit: usize) -> Self {
        Self::rejected(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            format!("request body exceeds {limit} bytes"),
        )
    }
}

/// The request fields that identify a pod in logs, whatever shape the object had.
fn identify<T: Resource>(
    req: &AdmissionRequest<T>,
    object_meta: Option<&kube::core::ObjectMeta>,
) -> (String, String) {
    let namespace = req
        .namespace
        .clone()
        .or_else(|| object_meta.and_then(|m| m.namespace.clone()))
        .unwrap_or_default();
    let pod = object_meta
        .and_then(|m| m.name.clone().or_else(|| m.generate_name.clone()))
        .or_else(|| (!req.name.is_empty()).then(|| req.name.clone()))
        .unwrap_or_default();
    (namespace, pod)
}

/// The AdmissionReview we answer with. Written here rather than with kube's `AdmissionResponse`
/// because that one encodes the patch as a JSON array of numbers: four times the bytes of the
/// base64 string the API documents, and most of the handler's serialization time.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewReply<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: Answer<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Answer<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    /// Base64 of the RFC 6902 patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

fn respond(uid: &str, patch: Option<&[u8]>, warnings: Vec<String>) -> Vec<u8> {
    let reply = ReviewReply {
        api_version: REVIEW_API_VERSION,
        kind: REVIEW_KIND,
        response: Answer {
            uid,
            allowed: true,
            patch_type: patch.map(|_| "JSONPatch"),
            patch: patch.map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
            warnings,
        },
    };
    serde_json::to_vec(&reply).expect("an AdmissionReview always serializes")
}

fn allowed_with_warning<T: Resource>(req: &AdmissionRequest<T>, warning: String) -> Vec<u8> {
    respond(&req.uid, None, vec![warning])
}

fn is_pod_create<T: Resource>(req: &AdmissionRequest<T>) -> Result<(), String> {
    let is_pod = req.kind.group.is_empty() && req.kind.version == "v1" && req.kind.kind == "Pod";
    if !is_pod || req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        let sub = req
            .sub_resource
            .as_deref()
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        return Err(format!(
            "mirrord-operator only injects Pods on CREATE; {}/{}{sub} was admitted unchanged",
            req.kind.kind, req.kind.version
        ));
    }
    if req.operation != Operation::Create {
        return Err(format!(
            "mirrord-operator only injects Pods on CREATE; {:?} was admitted unchanged",
            req.operation
        ));
    }
    Ok(())
}

/// Handles one AdmissionReview body. `namespace` looks a Namespace up in an in-memory cache (never an
/// API call): its annotations are knob defaults, its labels may enforce a Pod Security level.
pub fn review<F>(body: &[u8], cfg: &InjectorConfig, lookup_namespace: F) -> Outcome
where
    F: Fn(&str) -> Option<Arc<Namespace>>,
{
    // Fast path: a well-formed Pod review in one parse. Anything else is parsed again loosely to tell
    // "not a review" (400) from "a review of something that is not a valid Pod" (admitted).
    let typed: Result<AdmissionReview<Pod>, _> = serde_json::from_slice(body);
    let review = match typed {
        Ok(review) => review,
        Err(pod_error) => return review_untyped(body, pod_error),
    };
    let (req, mut outcome) = match open(review, |pod| &pod.metadata) {
        Ok(opened) => opened,
        Err(rejected) => return *rejected,
    };
    if let Err(warning) = is_pod_create(&req) {
        outcome.body = allowed_with_warning(&req, warning);
        return outcome;
    }
    let Some(pod) = req.object.as_ref() else {
        outcome.body = allowed_with_warning(
            &req,
            "mirrord-operator: the review carries no Pod object; admitted without injection".into(),
        );
        outcome.result = "error";
        outcome.error = Some("missing-object");
        return outcome;
    };
    let ns = lookup_namespace(&outcome.namespace);
    let ns_meta = ns.as_ref().map(|ns| &ns.metadata);
    let ctx = PodContext {
        namespace: &outcome.namespace,
        namespace_annotations: ns_meta.and_then(|m| m.annotations.as_ref()),
        namespace_labels: ns_meta.and_then(|m| m.labels.as_ref()),
    };
    match patch::decide(pod, &ctx, cfg) {
        Decision::Skip(reason) => {
            outcome.body = allowed_with_warning(&req, reason.warning());
            outcome.result = "skipped";
            outcome.skip = Some(reason);
        }
        Decision::Inject {
            patch,
            warnings,
            invalid_knobs,
        } => match serde_json::to_vec(&patch) {
            Ok(patch) => {
                outcome.body = respond(&req.uid, Some(&patch), warnings);
                outcome.result = "injected";
                outcome.invalid_knobs = invalid_knobs;
            }
            Err(error) => {
                outcome.body = allowed_with_warning(
                    &req,
                    format!(
                        "mirrord-operator could not encode its patch ({error}); admitted without injection"
                    ),
                );
                outcome.result = "error";
                outcome.error = Some("patch-encoding");
            }
        },
    }
    outcome
}

/// Checks the envelope and takes the request out of the review; the outcome starts as "admitted
/// unchanged" and names the pod for logs.
fn open<T: Resource>(
    review: AdmissionReview<T>,
    metadata: impl Fn(&T) -> &kube::core::ObjectMeta,
) -> Result<(AdmissionRequest<T>, Outcome), Box<Outcome>> {
    if let Some(rejected) = envelope_error(&review.types) {
        return Err(Box::new(rejected));
    }
    let Ok(req): Result<AdmissionRequest<T>, _> = review.try_into() else {
        return Err(Box::new(Outcome::rejected(
            StatusCode::BAD_REQUEST,
            "no-request",
            "AdmissionReview has no request".into(),
        )));
    };
    let (namespace, pod) = identify(&req, req.object.as_ref().map(metadata));
    let outcome = Outcome {
        status: StatusCode::OK,
        body: vec![],
        result: "allowed",
        skip: None,
        error: None,
        invalid_knobs: vec![],
        namespace,
        pod,
    };
    Ok((req, outcome))
}

/// The rejection for a review of another kind or version, if it is one.
fn envelope_error(types: &kube::core::TypeMeta) -> Option<Outcome> {
    if types.api_version != REVIEW_API_VERSION || types.kind != REVIEW_KIND {
        return Some(Outcome::rejected(
            StatusCode::BAD_REQUEST,
            "not-admission-review",
            format!(
                "expected {REVIEW_KIND} {REVIEW_API_VERSION}, got {:?} {:?}",
                types.kind, types.api_version
            ),
        ));
    }
    None
}

fn review_untyped(body: &[u8], pod_error: serde_json::Error) -> Outcome {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(error) => {
            let reason = if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
                "not-admission-review"
            } else {
                "not-json"
            };
            return Outcome::rejected(
                StatusCode::BAD_REQUEST,
                reason,
                format!("body is not an AdmissionReview v1: {error}"),
            );
        }
    };
    let (req, mut outcome) = match open(review, |object| &object.metadata) {
        Ok(opened) => opened,
        Err(rejected) => return *rejected,
    };
    match is_pod_create(&req) {
        Err(warning) => outcome.body = allowed_with_warning(&req, warning),
        Ok(()) => {
            // A Pod the API server accepted but we cannot read: never block a deploy over our own parser.
            outcome.body = allowed_with_warning(
                &req,
                format!(
                    "mirrord-operator could not read this Pod ({pod_error}); admitted without injection"
                ),
            );
            outcome.result = "error";
            outcome.error = Some("bad-pod");
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn config() -> InjectorConfig {
        InjectorConfig {
            agent_image: "example/agent:1".into(),
            native_sidecar: false,
            defaults: Default::default(),
            coordinator_url: "wss://coordinator/agents/connect".into(),
            coordinator_ca_bundle: None,
            agent_group_id: 30777,
            excluded_namespaces: ["kube-system".to_string()].into(),
            operator_version: "0.0.0-test".into(),
        }
    }

    fn valid_review() -> Value {
        json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": "staging",
                "operation": "CREATE", "userInfo": {"username": "u"},
                "object": {"metadata": {"generateName": "web-", "labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx", "env": [{"name": "A", "value": "$(B)"}]}]}}}
        })
    }

    /// Every answer is either a clear 4xx with a JSON reason, or an AdmissionReview that admits the pod
    /// and echoes its uid: a bad request never blocks a deploy and never crashes the handler.
    fn check(body: &[u8]) {
        let outcome = review(body, &config(), |_| None);
        let reply: Value = serde_json::from_slice(&outcome.body).expect("every answer is JSON");
        match outcome.status.as_u16() {
            400 => assert!(
                reply["error"].is_string() && reply["message"].is_string(),
                "{reply}"
            ),
            200 => {
                assert_eq!(reply["kind"], "AdmissionReview");
                assert_eq!(reply["response"]["allowed"], true, "{reply}");
                let sent: Value = serde_json::from_slice(body).unwrap();
                assert_eq!(reply["response"]["uid"], sent["request"]["uid"]);
            }
            other => panic!("unexpected status {other}"),
        }
    }

    fn arbitrary_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-zA-Z]{0,10}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Replaces the value at a pseudo-random path of `doc` with `replacement`.
    fn mutate(doc: &mut Value, mut choices: Vec<usize>, replacement: Value) {
        let Some(choice) = choices.pop() else {
            *doc = replacement;
            return;
        };
        match doc {
            Value::Object(map) if !map.is_empty() => {
                let key = map.keys().nth(choice % map.len()).unwrap().clone();
                mutate(map.get_mut(&key).unwrap(), choices, replacement);
            }
            Value::Array(items) if !items.is_empty() => {
                let len = items.len();
                mutate(&mut items[choice % len], choices, replacement);
            }
            _ => *doc = replacement,
        }
    }

    #[test]
    fn the_valid_review_is_injected() {
        let outcome = review(
            &serde_json::to_vec(&valid_review()).unwrap(),
            &config(),
            |_| None,
        );
        assert_eq!((outcome.status.as_u16(), outcome.result), (200, "injected"));
        assert_eq!(
            (outcome.namespace.as_str(), outcome.pod.as_str()),
            ("staging", "web-")
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
            let outcome = review(&bytes, &config(), |_| None);
            prop_assert!(matches!(outcome.status.as_u16(), 200 | 400));
        }

        #[test]
        fn arbitrary_json_is_answered_clearly(doc in arbitrary_json()) {
            let outcome = review(&serde_json::to_vec(&doc).unwrap(), &config(), |_| None);
            prop_assert!(matches!(outcome.status.as_u16(), 200 | 400));
        }

        #[test]
        fn mutated_reviews_are_admitted_or_rejected_clearly(
            choices in prop::collection::vec(any::<usize>(), 1..8),
            replacement in arbitrary_json(),
        ) {
            let mut doc = valid_review();
            mutate(&mut doc, choices, replacement);
            check(&serde_json::to_vec(&doc).unwrap());
        }
    }
}
