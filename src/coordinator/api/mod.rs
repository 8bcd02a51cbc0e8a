//! Handlers of the CLI-facing `operator.metalbear.co/v1` API (pure: state comes in through traits,
//! see [`state`]). [`router`] is mounted by the coordinator's server behind front-proxy
//! authentication, which inserts the [`state::Identity`] extension.

pub mod authz;
pub mod discovery;
pub mod error;
pub mod objects;
pub mod state;

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path, Request, State, rejection::PathRejection},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;

use self::{
    error::{ApiError, status_json},
    objects::OPERATOR_NAME,
    state::{
        ApiState, ClientCertificate, ConnectRequest, Decision, Identity, KillOutcome,
        ResourceAttributes, SessionSummary,
    },
};
use crate::coordinator::targets::{self, TargetRef};

/// The header the mirrord CLI carries its user certificate in.
pub const CLIENT_DER_HEADER: &str = "x-client-der";
/// The session id header of connect requests (decimal u64).
pub const SESSION_ID_HEADER: &str = "x-session-id";
/// Connect parameters moved out of the URL (feature `ConnectParamsInHeader`).
pub const CONNECT_PARAMS_HEADER: &str = "x-mirrord-connect-params";

type ApiResult<T = Response> = Result<T, ApiError>;

/// The API's router. Every answer that is not a success is a `metav1.Status`.
pub fn router(state: ApiState) -> Router {
    let v1 = "/apis/operator.metalbear.co/v1";
    Router::new()
        .route("/apis", get(apis))
        .route(
            "/apis/operator.metalbear.co",
            get(|| async { Json(discovery::api_group()) }),
        )
        .route(v1, get(|| async { Json(discovery::api_resource_list()) }))
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(openapi_v3_index))
        .route(
            "/openapi/v3/apis/operator.metalbear.co/v1",
            get(openapi_v3_group),
        )
        .route(&format!("{v1}/mirrordoperators"), get(list_operators))
        .route(
            &format!("{v1}/mirrordoperators/{{name}}"),
            get(get_operator),
        )
        .route(
            &format!("{v1}/mirrordoperators/{{name}}/certificate"),
            post(legacy_certificate),
        )
        .route(
            &format!("{v1}/mirrordclusteroperatorusercredentials"),
            post(create_credential),
        )
        .route(
            &format!("{v1}/namespaces/{{namespace}}/targets"),
            get(list_targets),
        )
        .route(
            &format!("{v1}/namespaces/{{namespace}}/targets/{{name}}"),
            get(get_or_connect_target),
        )
        .route(
            &format!("{v1}/proxy/namespaces/{{namespace}}/targets/{{name}}"),
            get(proxy_connect_target),
        )
        .route(
            &format!("{v1}/sessions"),
            get(list_all_sessions).delete(delete_all_sessions),
        )
        .route(
            &format!("{v1}/namespaces/{{namespace}}/sessions"),
            get(list_namespace_sessions).delete(delete_namespace_sessions),
        )
        .route(
            &format!("{v1}/sessions/inactive"),
            delete(delete_inactive_sessions).get(get_cluster_session),
        )
        .route(
            &format!("{v1}/sessions/{{id}}"),
            get(get_cluster_session).delete(delete_cluster_session),
        )
        .route(
            &format!("{v1}/namespaces/{{namespace}}/sessions/{{id}}"),
            get(get_namespace_session).delete(delete_namespace_session),
        )
        .fallback(|| async {
            ApiError::not_found("the server could not find the requested resource")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::method_not_allowed("this method is not supported on this resource")
        })
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Runs before every route: the request must carry an [`Identity`] (inserted by the front-proxy
/// authentication layer), and an `x-client-der`, when present, must be a certificate this
/// coordinator issued and valid now. The verified certificate is inserted as an extension.
async fn guard(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    if request.extensions().get::<Identity>().is_none() {
        return ApiError::unauthorized(
            "no authenticated user: requests must come through kube-apiserver (front-proxy authentication)",
        )
        .into_response();
    }
    if let Some(value) = request.headers().get(CLIENT_DER_HEADER) {
        let verified = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("x-client-der is not ASCII base64"))
            .and_then(|text| {
                state
                    .user_ca
                    .load()
                    .verify_client(text, (state.clock)())
                    .map_err(|e| {
                        ApiError::unauthorized(format!(
                            "{e} (the mirrord CLI requests a fresh certificate when the operator's license fingerprint changes; if this persists remove the entry from ~/.mirrord/credentials)"
                        ))
                    })
            });
        match verified {
            Ok(client) => {
                request.extensions_mut().insert(client);
            }
            Err(error) => return error.into_response(),
        }
    }
    next.run(request).await
}

fn identity(request_identity: Option<&Identity>) -> ApiResult<Identity> {
    request_identity
        .cloned()
        .ok_or_else(|| ApiError::unauthorized("no authenticated user"))
}

/// Asks the authorizer; a denial becomes a 403 that names the missing permission.
async fn authorize(
    state: &ApiState,
    identity: &Identity,
    attributes: &ResourceAttributes,
) -> ApiResult<()> {
    match state.authorizer.authorize(identity, attributes).await {
        Ok(Decision::Allow) => Ok(()),
        Ok(Decision::Deny { reason }) => {
            let mut message = format!("user {:?} cannot {attributes}", identity.user);
            if !reason.is_empty() {
                message.push_str(": ");
                message.push_str(&reason);
            }
            Err(ApiError::forbidden(message))
        }
        Err(error) => {
            tracing::warn!(%error, user = %identity.user, %attributes, "authorization check failed");
            Err(ApiError::internal(error.to_string()))
        }
    }
}

fn path<T>(extracted: Result<Path<T>, PathRejection>) -> ApiResult<T> {
    extracted
        .map(|Path(value)| value)
        .map_err(|e| ApiError::bad_request(format!("malformed path: {}", e.body_text())))
}

/// Reads a body up to the configured limit (413 beyond it).
async fn read_body(state: &ApiState, headers: &HeaderMap, body: Body) -> ApiResult<Bytes> {
    let limit = state.limits.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || ApiError::too_large(format!("request bodies are limited to {limit} bytes"));
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(too_large()),
        Err(error) => Err(ApiError::bad_request(format!(
            "reading the request body: {error}"
        ))),
    }
}

fn json_response(status: StatusCode, value: Value) -> Response {
    (status, Json(value)).into_response()
}

/// `GET /apis`: aggregated discovery when asked for, else the APIGroupList.
async fn apis(headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if discovery::wants_aggregated(accept) {
        let mut response = json_response(StatusCode::OK, discovery::api_group_discovery_list());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static(discovery::AGGREGATED_DISCOVERY_V2),
        );
        return response;
    }
    json_response(StatusCode::OK, discovery::api_group_list())
}

fn openapi_version() -> String {
    objects::operator_version()
}

async fn openapi_v2() -> Response {
    json_response(StatusCode::OK, discovery::openapi_v2(&openapi_version()))
}

fn group_document() -> (Value, String) {
    let doc = discovery::openapi_v3_group(&openapi_version());
    let digest = ring::digest::digest(&ring::digest::SHA256, doc.to_string().as_bytes());
    let hash: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    (doc, hash)
}

async fn openapi_v3_index() -> Response {
    let (_, hash) = group_document();
    json_response(StatusCode::OK, discovery::openapi_v3_index(&hash))
}

async fn openapi_v3_group() -> Response {
    let (doc, hash) = group_document();
    let mut response = json_response(StatusCode::OK, doc);
    if let Ok(etag) = format!("\"{hash}\"").parse() {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

async fn list_operators(State(state): State<ApiState>, request: Request) -> ApiResult {
    let identity = identity(request.extensions().get())?;
    authorize(&state, &identity, &authz::operator(None)).await?;
    Ok(json_response(
        StatusCode::OK,
        objects::list("MirrordOperator", vec![objects::operator_object(&state)]),
    ))
}

async fn get_operator(
    State(state): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    request: Request,
) -> ApiResult {
    let name = path(name)?;
    let identity = identity(request.extensions().get())?;
    authorize(&state, &identity, &authz::operator(Some(&name))).await?;
    if name != OPERATOR_NAME {
        return Err(ApiError::not_found(format!(
            "mirrordoperators.operator.metalbear.co {name:?} not found (the only one is {OPERATOR_NAME:?})"
        )));
    }
    Ok(json_response(
        StatusCode::OK,
        objects::operator_object(&state),
    ))
}

/// `POST mirrordoperators/operator/certificate`: raw PEM or JSON-string body in, JSON string out.
async fn legacy_certificate(
    State(state): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    request: Request,
) -> ApiResult {
    let name = path(name)?;
    let identity = identity(request.extensions().get())?;
    authorize(&state, &identity, &authz::operator_certificate(&name)).await?;
    if name != OPERATOR_NAME {
        return Err(ApiError::not_found(format!(
            "mirrordoperators.operator.metalbear.co {name:?} not found"
        )));
    }
    let (parts, body) = request.into_parts();
    let body = read_body(&state, &parts.headers, body).await?;
    let csr = crate::coordinator::credentials::legacy_csr_body(&body)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let signed = sign(&state, &identity, &csr)?;
    Ok(json_response(StatusCode::OK, Value::String(signed)))
}

fn sign(state: &ApiState, identity: &Identity, csr: &str) -> ApiResult<String> {
    let now = (state.clock)();
    let signed = state
        .user_ca
        .load()
        .sign_csr(csr, now, state.limits.certificate_validity)
        .map_err(|e| match e {
            crate::coordinator::credentials::CredentialError::Csr(_) => {
                ApiError::invalid(e.to_string())
            }
            other => ApiError::internal(other.to_string()),
        })?;
    tracing::info!(user = %identity.user, "issued a user certificate");
    Ok(signed.pem)
}

/// `POST mirrordclusteroperatorusercredentials` (operator-api.md §3.3).
async fn create_credential(State(state): State<ApiState>, request: Request) -> ApiResult {
    let identity = identity(request.extensions().get())?;
    authorize(&state, &identity, &authz::user_credential()).await?;
    let (parts, body) = request.into_parts();
    let body = read_body(&state, &parts.headers, body).await?;
    let doc: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let csr = doc
        .pointer("/spec/csr")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("spec.csr (a PEM certificate request) is required"))?;
    let kind = match doc.pointer("/spec/kind") {
        None | Some(Value::Null) => "regular",
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return Err(ApiError::invalid("spec.kind must be a string")),
    };
    let certificate = sign(&state, &identity, csr)?;
    let now = (state.clock)();
    let name = credential_name(&doc, csr, now);
    Ok(json_response(
        StatusCode::CREATED,
        objects::credential_object(&name, csr, kind, &certificate, now),
    ))
}

/// `metadata.name`, or `generateName` plus a suffix derived from the request (the object is not
/// stored; the name only has to look like Kubernetes made it).
fn credential_name(doc: &Value, csr: &str, now: time::OffsetDateTime) -> String {
    if let Some(name) = doc.pointer("/metadata/name").and_then(Value::as_str) {
        return name.to_owned();
    }
    let prefix = doc
        .pointer("/metadata/generateName")
        .and_then(Value::as_str)
        .unwrap_or("mirrord-operator-cred-");
    let mut seed = csr.as_bytes().to_vec();
    seed.extend_from_slice(&now.unix_timestamp_nanos().to_be_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &seed);
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = digest.as_ref()[..5]
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    let prefix: String = prefix.chars().take(58).collect();
    format!("{prefix}{suffix}")
}

async fn list_targets(
    State(state): State<ApiState>,
    namespace: Result<Path<String>, PathRejection>,
    request: Request,
) -> ApiResult {
    let namespace = path(namespace)?;
    let identity = identity(request.extensions().get())?;
    authorize(&state, &identity, &authz::target(&namespace, None)).await?;
    let inventory = state.inventory.namespace(&namespace);
    let items = targets::list_targets(&inventory)
        .iter()
        .map(|entry| objects::target_object(&namespace, entry))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        objects::list("Target", items),
    ))
}

/// The query pairs of a request, percent-decoded (`+` is a space, as the CLI encodes).
fn query_pairs(query: Option<&str>) -> BTreeMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

async fn get_or_connect_target(
    State(state): State<ApiState>,
    params: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> ApiResult {
    let (namespace, name) = path(params)?;
    let query = query_pairs(request.uri().query());
    let identity = identity(request.extensions().get())?;
    authorize(&state, &identity, &authz::target(&namespace, Some(&name))).await?;
    if query.get("connect").map(String::as_str) == Some("true") {
        return connect(state, identity, namespace, name, request).await;
    }
    let target = TargetRef::parse(&name).map_err(|e| ApiError::invalid(e.to_string()))?;
    let inventory = state.inventory.namespace(&namespace);
    let entry = targets::resolve(&inventory, &target).map_err(|e| match e {
        targets::ResolveError::NotFound(_) => ApiError::not_found(format!(
            "targets.operator.metalbear.co {name:?} not found in namespace {namespace:?}: {e}"
        )),
        other => ApiError::invalid(other.to_string()),
    })?;
    Ok(json_response(
        StatusCode::OK,
        objects::target_object(&namespace, &entry),
    ))
}

async fn proxy_connect_target(
    State(state): State<ApiState>,
    params: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> ApiResult {
    let (namespace, name) = path(params)?;
    let identity = identity(request.extensions().get())?;
    authorize(&state, &identity, &authz::target_proxy(&namespace, &name)).await?;
    connect(state, identity, namespace, name, request).await
}

/// The connect parameters: the URL's, or those of `x-mirrord-connect-params` (base64 of the query
/// string) when the header is present.
fn connect_params(request: &Request) -> ApiResult<BTreeMap<String, String>> {
    match request.headers().get(CONNECT_PARAMS_HEADER) {
        Some(value) => {
            let decoded = value
                .to_str()
                .ok()
                .and_then(|v| STANDARD.decode(v.trim()).ok())
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{CONNECT_PARAMS_HEADER} is not base64 of a query string"
                    ))
                })?;
            Ok(query_pairs(Some(&decoded)))
        }
        None => Ok(query_pairs(request.uri().query())),
    }
}

async fn connect(
    state: ApiState,
    identity: Identity,
    namespace: String,
    name: String,
    request: Request,
) -> ApiResult {
    let target = TargetRef::parse(&name).map_err(|e| ApiError::invalid(e.to_string()))?;
    let Some(connector) = state.connector.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "NotImplemented",
            "this coordinator does not run sessions yet (no session connector); the operator object does not advertise ProxyApi",
        ));
    };
    let client = request
        .extensions()
        .get::<ClientCertificate>()
        .cloned()
        .ok_or_else(|| {
            ApiError::unauthorized(
                "a session needs the user certificate in x-client-der (the mirrord CLI gets one from mirrordclusteroperatorusercredentials)",
            )
        })?;
    let session_id = request
        .headers()
        .get(SESSION_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{SESSION_ID_HEADER} must be the session id as a decimal unsigned 64-bit number"
            ))
        })?;
    let params = connect_params(&request)?;
    if matches!(target, TargetRef::Workload { .. }) {
        let inventory = state.inventory.namespace(&namespace);
        targets::resolve(&inventory, &target).map_err(|e| match e {
            targets::ResolveError::NotFound(_) => {
                ApiError::not_found(format!("{e} in namespace {namespace:?}"))
            }
            other => ApiError::invalid(other.to_string()),
        })?;
    }
    tracing::info!(user = %identity.user, %namespace, %target, session_id, "connect");
    let headers = request.headers().clone();
    Ok(connector
        .connect(ConnectRequest {
            identity,
            namespace,
            target,
            params,
            session_id,
            client,
            headers,
            request,
        })
        .await)
}

/// `fieldSelector=spec.session.key=<value>` (with `\`, `,` and `=` backslash-escaped); nothing
/// else is supported.
fn key_selector(query: &BTreeMap<String, String>) -> ApiResult<Option<String>> {
    let Some(selector) = query.get("fieldSelector").filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let unsupported = || {
        ApiError::bad_request(format!(
            "unsupported fieldSelector {selector:?}: only spec.session.key=<key> is supported"
        ))
    };
    let value = selector
        .strip_prefix("spec.session.key=")
        .or_else(|| selector.strip_prefix("spec.session.key=="))
        .ok_or_else(unsupported)?;
    let mut key = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => key.push(chars.next().ok_or_else(unsupported)?),
            ',' | '=' => return Err(unsupported()),
            other => key.push(other),
        }
    }
    Ok(Some(key))
}

async fn list_sessions(state: ApiState, namespace: Option<String>, request: Request) -> ApiResult {
    let identity = identity(request.extensions().get())?;
    authorize(
        &state,
        &identity,
        &authz::sessions_read(namespace.as_deref(), None),
    )
    .await?;
    let key = key_selector(&query_pairs(request.uri().query()))?;
    let items = state
        .sessions
        .list()
        .iter()
        .filter(|s| namespace.is_none() || s.namespace == namespace)
        .filter(|s| key.is_none() || s.key == key)
        .map(objects::session_object)
        .collect();
    Ok(json_response(
        StatusCode::OK,
        objects::list("Session", items),
    ))
}

async fn list_all_sessions(State(state): State<ApiState>, request: Request) -> ApiResult {
    list_sessions(state, None, request).await
}

async fn list_namespace_sessions(
    State(state): State<ApiState>,
    namespace: Result<Path<String>, PathRejection>,
    request: Request,
) -> ApiResult {
    let namespace = path(namespace)?;
    list_sessions(state, Some(namespace), request).await
}

/// Finds a session by the name the CLI used: the decimal id (`operator session stop`) or the
/// uppercase hex `Session.id` (`session kill`). Decimal wins when both read as a live id.
fn find_session(
    sessions: &[SessionSummary],
    namespace: Option<&str>,
    name: &str,
) -> Option<SessionSummary> {
    let in_scope = |s: &&SessionSummary| namespace.is_none() || s.namespace.as_deref() == namespace;
    let by = |id: u64| {
        sessions
            .iter()
            .filter(in_scope)
            .find(|s| s.id == id)
            .cloned()
    };
    name.parse::<u64>()
        .ok()
        .and_then(by)
        .or_else(|| u64::from_str_radix(name, 16).ok().and_then(by))
}

async fn get_session(
    state: ApiState,
    namespace: Option<String>,
    id: String,
    request: Request,
) -> ApiResult {
    let identity = identity(request.extensions().get())?;
    authorize(
        &state,
        &identity,
        &authz::sessions_read(namespace.as_deref(), Some(&id)),
    )
    .await?;
    let session = find_session(&state.sessions.list(), namespace.as_deref(), &id)
        .ok_or_else(|| ApiError::not_found(format!("session {id:?} not found")))?;
    Ok(json_response(
        StatusCode::OK,
        objects::session_object(&session),
    ))
}

async fn get_cluster_session(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
    request: Request,
) -> ApiResult {
    // `/sessions/inactive` shares this handler for GET.
    let id = match id {
        Ok(Path(id)) => id,
        Err(_) => "inactive".to_owned(),
    };
    get_session(state, None, id, request).await
}

async fn get_namespace_session(
    State(state): State<ApiState>,
    params: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> ApiResult {
    let (namespace, id) = path(params)?;
    get_session(state, Some(namespace), id, request).await
}

fn success(message: String) -> Response {
    json_response(
        StatusCode::OK,
        status_json("Success", StatusCode::OK, None, &message),
    )
}

async fn delete_session(
    state: ApiState,
    namespace: Option<String>,
    id: String,
    request: Request,
) -> ApiResult {
    let identity = identity(request.extensions().get())?;
    authorize(
        &state,
        &identity,
        &authz::session_delete(namespace.as_deref(), &id),
    )
    .await?;
    let session = find_session(&state.sessions.list(), namespace.as_deref(), &id)
        .ok_or_else(|| ApiError::not_found(format!("session {id:?} not found")))?;
    if session.owner != identity.user {
        authorize(
            &state,
            &identity,
            &authz::sessions_of_others("delete", namespace.as_deref()),
        )
        .await?;
    }
    let reason = format!("session killed by {}", identity.user);
    match state.sessions.kill(session.id, &reason).await {
        KillOutcome::Killed => {
            tracing::info!(user = %identity.user, session = %format!("{:X}", session.id), "killed a session");
            Ok(success(format!("session {:X} killed", session.id)))
        }
        KillOutcome::NotFound => Err(ApiError::not_found(format!(
            "session {id:?} not found (it may just have ended)"
        ))),
    }
}

async fn delete_cluster_session(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
    request: Request,
) -> ApiResult {
    let id = path(id)?;
    delete_session(state, None, id, request).await
}

async fn delete_namespace_session(
    State(state): State<ApiState>,
    params: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> ApiResult {
    let (namespace, id) = path(params)?;
    delete_session(state, Some(namespace), id, request).await
}

/// Deletecollection: everyone's sessions with the `sessions/others` right, else the caller's own.
async fn delete_sessions(
    state: ApiState,
    namespace: Option<String>,
    request: Request,
) -> ApiResult {
    let identity = identity(request.extensions().get())?;
    authorize(
        &state,
        &identity,
        &authz::sessions_delete_collection(namespace.as_deref()),
    )
    .await?;
    let everyone = authorize(
        &state,
        &identity,
        &authz::sessions_of_others("deletecollection", namespace.as_deref()),
    )
    .await
    .is_ok();
    let reason = format!("sessions killed by {}", identity.user);
    let killed = if everyone && namespace.is_none() {
        state.sessions.kill_all(&reason).await
    } else {
        let mut killed = 0;
        for session in state.sessions.list() {
            let in_scope = namespace.is_none() || session.namespace == namespace;
            if in_scope
                && (everyone || session.owner == identity.user)
                && state.sessions.kill(session.id, &reason).await == KillOutcome::Killed
            {
                killed += 1;
            }
        }
        killed
    };
    tracing::info!(user = %identity.user, killed, "killed sessions");
    Ok(success(format!("{killed} session(s) killed")))
}

async fn delete_all_sessions(State(state): State<ApiState>, request: Request) -> ApiResult {
    delete_sessions(state, None, request).await
}

async fn delete_namespace_sessions(
    State(state): State<ApiState>,
    namespace: Result<Path<String>, PathRejection>,
    request: Request,
) -> ApiResult {
    let namespace = path(namespace)?;
    delete_sessions(state, Some(namespace), request).await
}

/// `DELETE sessions/inactive` (`mirrord operator session retain-active`): every session the
/// directory lists is live, so there is nothing to remove.
async fn delete_inactive_sessions(State(state): State<ApiState>, request: Request) -> ApiResult {
    let identity = identity(request.extensions().get())?;
    authorize(&state, &identity, &authz::session_delete(None, "inactive")).await?;
    Ok(success("no inactive sessions".to_owned()))
}
