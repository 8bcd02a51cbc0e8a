//! AdmissionReview in, AdmissionReview (or an HTTP error) out. Pure: no I/O, no clock, no kube client,
//! so dry-run and reinvocation are safe and every path is testable with fixtures.
//!
//! The review is read in two steps: the envelope with the object left as raw JSON, then, only for a
//! Pod CREATE, the few pod fields the patch needs ([`PodView`]). The answer is written directly as
//! bytes, the patch base64-encoded into it as it is serialized. This is the webhook's hot path.

use std::sync::Arc;

use http::StatusCode;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::{GroupVersionKind, admission::Operation};
use serde::{Deserialize, de::IgnoredAny};
use serde_json::value::RawValue;

use super::json::{push_array, push_str};
use super::patch::{self, Decision, InjectorConfig, MetadataView, PodContext, PodView, SkipReason};
use crate::coordinator::queues::crd::{MirrordWorkloadQueueRegistry, QueueRegistrySpec};

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

/// `admission.k8s.io/v1` AdmissionReview as the API server sends it, with the same required fields
/// as kube's `AdmissionReview`. The object is read as `O`: first straight as a [`PodView`] (one pass,
/// the common case), and only if that fails as raw JSON, to tell why.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope<O> {
    api_version: String,
    kind: String,
    #[serde(default = "Option::default")]
    request: Option<Request<O>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request<O> {
    uid: String,
    kind: GroupVersionKind,
    #[serde(rename = "resource")]
    _resource: IgnoredAny,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    operation: Operation,
    #[serde(rename = "userInfo")]
    _user_info: IgnoredAny,
    #[serde(default = "Option::default")]
    object: Option<O>,
}

/// The review's object, as far as it could be read.
enum Object {
    Pod(PodView),
    /// Not readable as a Pod: why, and its metadata if that part was readable.
    Unreadable {
        error: serde_json::Error,
        metadata: Option<MetadataView>,
    },
}

impl Object {
    fn from_raw(raw: &RawValue) -> Self {
        match serde_json::from_str::<PodView>(raw.get()) {
            Ok(pod) => Object::Pod(pod),
            Err(error) => Object::Unreadable {
                error,
                metadata: serde_json::from_str::<AnyObject>(raw.get())
                    .ok()
                    .and_then(|o| o.metadata),
            },
        }
    }

    fn metadata(&self) -> Option<&MetadataView> {
        match self {
            Object::Pod(pod) => pod.metadata.as_ref(),
            Object::Unreadable { metadata, .. } => metadata.as_ref(),
        }
    }
}

/// Any object's metadata, for naming it in logs when it is not a Pod we can read.
#[derive(Deserialize)]
struct AnyObject {
    #[serde(default)]
    metadata: Option<MetadataView>,
}

impl<O> Request<O> {
    fn map_object<P>(self, f: impl FnOnce(O) -> P) -> Request<P> {
        Request {
            uid: self.uid,
            kind: self.kind,
            _resource: self._resource,
            sub_resource: self.sub_resource,
            name: self.name,
            namespace: self.namespace,
            operation: self.operation,
            _user_info: self._user_info,
            object: self.object.map(f),
        }
    }

    /// The namespace and name that identify the object in logs, whatever shape it had.
    fn identify(&self, metadata: Option<&MetadataView>) -> (String, String) {
        let namespace = self
            .namespace
            .clone()
            .or_else(|| metadata.and_then(|m| m.namespace.clone()))
            .unwrap_or_default();
        let name = metadata
            .and_then(|m| m.name.clone().or_else(|| m.generate_name.clone()))
            .or_else(|| (!self.name.is_empty()).then(|| self.name.clone()))
            .unwrap_or_default();
        (namespace, name)
    }

    fn is_pod_create(&self) -> Result<(), String> {
        let kind = &self.kind;
        let is_pod = kind.group.is_empty() && kind.version == "v1" && kind.kind == "Pod";
        let sub = self.sub_resource.as_deref().unwrap_or_default();
        if !is_pod || !sub.is_empty() {
            let sub = if sub.is_empty() {
                String::new()
            } else {
                format!("/{sub}")
            };
            return Err(format!(
                "mirrord-operator only injects Pods on CREATE; {}/{}{sub} was admitted unchanged",
                kind.kind, kind.version
            ));
        }
        if self.operation != Operation::Create {
            return Err(format!(
                "mirrord-operator only injects Pods on CREATE; {:?} was admitted unchanged",
                self.operation
            ));
        }
        Ok(())
    }
}

/// The AdmissionReview we answer with, written directly rather than through kube's
/// `AdmissionResponse` (which encodes the patch as a JSON array of numbers, four times the bytes of
/// the base64 string the API documents) or a `serde_json::Value`.
struct Reply {
    out: Vec<u8>,
}

impl Reply {
    fn start(uid: &str, capacity: usize) -> Self {
        let mut out = Vec::with_capacity(capacity + uid.len() + 128);
        out.extend_from_slice(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"#,
        );
        push_str(&mut out, uid);
        out.extend_from_slice(br#","allowed":true"#);
        Reply { out }
    }

    fn patch(&mut self, patch: &[u8]) {
        self.out
            .extend_from_slice(br#","patchType":"JSONPatch","patch":""#);
        // Encoded in place (SIMD) into the reply, which is sized for it: one pass, no copy.
        base64_simd::STANDARD.encode_append(patch, &mut self.out);
        self.out.push(b'"');
    }

    fn finish(mut self, warnings: &[String]) -> Vec<u8> {
        if !warnings.is_empty() {
            self.out.extend_from_slice(br#","warnings":"#);
            push_array(&mut self.out, warnings, |out, w| push_str(out, w));
        }
        self.out.extend_from_slice(b"}}");
        self.out
    }
}

fn allowed_with_warning<O>(req: &Request<O>, warning: String) -> Vec<u8> {
    Reply::start(&req.uid, warning.len()).finish(&[warning])
}

/// Handles one AdmissionReview body. `namespace` looks a Namespace up in an in-memory cache (never an
/// API call): its annotations are knob defaults, its labels may enforce a Pod Security level.
pub fn review<F>(body: &[u8], cfg: &InjectorConfig, lookup_namespace: F) -> Outcome
where
    F: Fn(&str) -> Option<Arc<Namespace>>,
{
    review_with_queues(body, cfg, lookup_namespace, |_| Vec::new())
}

/// [`review`], with `lookup_registries` giving the namespace's queue registries from an in-memory
/// cache (never an API call), so a registered workload's pod reads its output queues.
pub fn review_with_queues<F, G>(
    body: &[u8],
    cfg: &InjectorConfig,
    lookup_namespace: F,
    lookup_registries: G,
) -> Outcome
where
    F: Fn(&str) -> Option<Arc<Namespace>>,
    G: Fn(&str) -> Vec<Arc<MirrordWorkloadQueueRegistry>>,
{
    // UTF-8 is checked once for the whole body (fast) instead of string by string by the parser.
    let pod_review = std::str::from_utf8(body)
        .ok()
        .and_then(|text| serde_json::from_str::<Envelope<PodView>>(text).ok());
    let req = match pod_review {
        Some(envelope) => open(envelope).map(|req| req.map_object(Object::Pod)),
        None => match serde_json::from_slice::<Envelope<&RawValue>>(body) {
            Ok(envelope) => open(envelope).map(|req| req.map_object(Object::from_raw)),
            Err(error) => Err(Box::new(not_a_review(body, error))),
        },
    };
    let req = match req {
        Ok(req) => req,
        Err(rejected) => return *rejected,
    };
    let (namespace, pod) = req.identify(req.object.as_ref().and_then(Object::metadata));
    let mut outcome = Outcome {
        status: StatusCode::OK,
        body: vec![],
        result: "allowed",
        skip: None,
        error: None,
        invalid_knobs: vec![],
        namespace,
        pod,
    };
    if let Err(warning) = req.is_pod_create() {
        outcome.body = allowed_with_warning(&req, warning);
        return outcome;
    }
    let pod = match &req.object {
        Some(Object::Pod(pod)) => pod,
        Some(Object::Unreadable { error, .. }) => {
            // A Pod the API server accepted but we cannot read: never block a deploy over our own parser.
            outcome.body = allowed_with_warning(
                &req,
                format!(
                    "mirrord-operator could not read this Pod ({error}); admitted without injection"
                ),
            );
            outcome.result = "error";
            outcome.error = Some("bad-pod");
            return outcome;
        }
        None => {
            outcome.body = allowed_with_warning(
                &req,
                "mirrord-operator: the review carries no Pod object; admitted without injection"
                    .into(),
            );
            outcome.result = "error";
            outcome.error = Some("missing-object");
            return outcome;
        }
    };
    let ns = lookup_namespace(&outcome.namespace);
    let ns_meta = ns.as_ref().map(|ns| &ns.metadata);
    let ctx = PodContext {
        namespace: &outcome.namespace,
        namespace_annotations: ns_meta.and_then(|m| m.annotations.as_ref()),
        namespace_labels: ns_meta.and_then(|m| m.labels.as_ref()),
    };
    let registries = lookup_registries(&outcome.namespace);
    let specs: Vec<&QueueRegistrySpec> = registries.iter().map(|r| &r.spec).collect();
    match patch::decide_with_queues(pod, &ctx, cfg, &specs) {
        Decision::Skip(reason) => {
            outcome.body = allowed_with_warning(&req, reason.warning());
            outcome.result = "skipped";
            outcome.skip = Some(reason);
        }
        Decision::Inject {
            patch,
            warnings,
            invalid_knobs,
        } => {
            let patch = patch::to_json(&patch);
            let mut reply = Reply::start(&req.uid, patch.len() * 4 / 3 + 64);
            reply.patch(&patch);
            outcome.body = reply.finish(&warnings);
            outcome.result = "injected";
            outcome.invalid_knobs = invalid_knobs;
        }
    }
    outcome
}

/// The 400 for a body that is not JSON, or JSON of another shape.
fn not_a_review(body: &[u8], error: serde_json::Error) -> Outcome {
    let reason = if serde_json::from_slice::<IgnoredAny>(body).is_ok() {
        "not-admission-review"
    } else {
        "not-json"
    };
    Outcome::rejected(
        StatusCode::BAD_REQUEST,
        reason,
        format!("body is not an AdmissionReview v1: {error}"),
    )
}

/// Checks the envelope: a clear 400 for another kind or version, or a review without a request.
fn open<O>(envelope: Envelope<O>) -> Result<Request<O>, Box<Outcome>> {
    if envelope.api_version != REVIEW_API_VERSION || envelope.kind != REVIEW_KIND {
        return Err(Box::new(Outcome::rejected(
            StatusCode::BAD_REQUEST,
            "not-admission-review",
            format!(
                "expected {REVIEW_KIND} {REVIEW_API_VERSION}, got {:?} {:?}",
                envelope.kind, envelope.api_version
            ),
        )));
    }
    envelope.request.ok_or_else(|| {
        Box::new(Outcome::rejected(
            StatusCode::BAD_REQUEST,
            "no-request",
            "AdmissionReview has no request".into(),
        ))
    })
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
