//! The middleware in front of everything on the API listener.
//!
//! Each request is first told apart by where it goes:
//!
//! | requests | protocol | SigV4 service | action |
//! |---|---|---|---|
//! | `/v20190125/…` (and any unknown path) | App Mesh REST-JSON | `appmesh` | `appmesh:<Operation>` on the resource's ARN |
//! | `POST /` | Cloud Map awsJson 1.1 | `servicediscovery` | `servicediscovery:<Operation>` (from `X-Amz-Target`) on `*` |
//! | `POST /service/…/operation/<Operation>` | Cloud Map RPC v2 CBOR | `servicediscovery` | as above |
//! | `/weft/v1/join-tokens…`, `/weft/v1/access-keys…`, `/weft/v1/audit`, `/weft/v1/proxy-status` | Weft's admin JSON | `weft` | `weft:CreateJoinToken`, `weft:ListAccessKeys`, `weft:ListAuditRecords`, `weft:GetProxyStatus`, … on `*` |
//! | `/healthz`, `/weft/v1/certificates`, `/weft/v1/trust-bundle` | | open | |
//!
//! The open ones carry no secrets and are authenticated otherwise where it matters: agents
//! get certificates with a join token or their current certificate. Every other request must
//! carry a valid SigV4 signature by a key the server holds, whose policy allows the action;
//! refusals are answered in the protocol's own error shape, with AWS's exception names and
//! messages. The body is read (under the APIs' limit) before the signature is checked, since
//! the signature covers its hash; the verified request then goes on with its body, and the
//! per-client limits behind this layer key on its access key id, now a verified one.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use weft_store::SharedStore;

use crate::policy::Decision;
use crate::sigv4::{self, MISSING_TOKEN, UNKNOWN_KEY};
use crate::{keys, AuthError, Kek};

/// Whether requests are verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every App Mesh, Cloud Map and admin request must be signed by a key the server holds.
    Verify,
    /// Nothing is checked (`--insecure-no-auth`): any credentials, or none, are accepted.
    Insecure,
}

/// The verified caller of a request, put into its extensions for the handlers behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The access key id.
    pub key_id: String,
    /// The IAM action the request is, e.g. `appmesh:CreateVirtualNode`.
    pub action: String,
    /// The resource's ARN (`*` where the operation names none).
    pub resource: String,
}

/// The IAM action a request was (`appmesh:DescribeMesh`), put into its answer's extensions for
/// the layers outside (metrics), whether it was served or refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation(pub String);

/// Where a request goes, and so how it is checked and how its refusals look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// App Mesh: `x-amzn-ErrorType` and a JSON `message`.
    RestJson,
    /// Cloud Map awsJson 1.1: `{"__type", "message"}`.
    AwsJson,
    /// Cloud Map Smithy RPC v2 CBOR: a CBOR map with `__type` and `message`.
    Cbor,
    /// Weft's admin endpoints: `{"code", "message"}`.
    WeftAdmin,
}

impl Protocol {
    /// The SigV4 service name requests to it are signed for.
    pub fn service(self) -> &'static str {
        match self {
            Protocol::RestJson => "appmesh",
            Protocol::AwsJson | Protocol::Cbor => "servicediscovery",
            Protocol::WeftAdmin => "weft",
        }
    }
}

/// The open paths: no signature needed.
const OPEN: &[&str] = &["/healthz", "/weft/v1/certificates", "/weft/v1/trust-bundle"];

/// The protocol of a request to `path`, or `None` if it is open.
pub fn classify(method: &Method, path: &str) -> Option<Protocol> {
    if OPEN.contains(&path) {
        return None;
    }
    if path.starts_with("/weft/") {
        return Some(Protocol::WeftAdmin);
    }
    if path == "/" && method == Method::POST {
        return Some(Protocol::AwsJson);
    }
    if path.starts_with("/service/") {
        return Some(Protocol::Cbor);
    }
    Some(Protocol::RestJson)
}

/// The authentication layer's state.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    mode: Mode,
    store: SharedStore,
    kek: Arc<Kek>,
    region: String,
    account: String,
    max_body_bytes: usize,
    keys: keys::KeyCache,
    audit: Option<Arc<crate::audit::AuditLog>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.inner.mode)
            .field("region", &self.inner.region)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Checks requests against the keys in `store`, whose secrets open under `kek`, for the
    /// server's `region` and `account`, reading bodies up to `max_body_bytes`.
    pub fn new(
        mode: Mode,
        store: SharedStore,
        kek: Arc<Kek>,
        region: &str,
        account: &str,
        max_body_bytes: usize,
    ) -> Authenticator {
        Authenticator {
            inner: Arc::new(Inner {
                mode,
                store,
                kek,
                region: region.to_string(),
                account: account.to_string(),
                max_body_bytes,
                keys: keys::KeyCache::default(),
                audit: None,
            }),
        }
    }

    /// This authenticator recording every write and every refused request in `log` (call it
    /// before the authenticator is cloned).
    pub fn with_audit(mut self, log: Arc<crate::audit::AuditLog>) -> Authenticator {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.audit = Some(log),
            None => tracing::error!("the audit log was set after the authenticator was shared"),
        }
        self
    }

    /// Whether requests are verified.
    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    /// The store keys are kept in.
    pub fn store(&self) -> &SharedStore {
        &self.inner.store
    }

    /// The key-encryption key.
    pub fn kek(&self) -> &Kek {
        &self.inner.kek
    }

    /// `router` behind this layer.
    pub fn wrap(&self, router: Router) -> Router {
        router.layer(middleware::from_fn_with_state(self.clone(), authenticate))
    }

    /// Checks one request (its parts and its whole body) as received at `now`: the caller's
    /// key id, or the refusal.
    pub async fn check(
        &self,
        protocol: Protocol,
        parts: &http::request::Parts,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Principal, AuthError> {
        let received = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
        // The Authorization header, else a presigned URL's query, whose signature parameters
        // are left out of what is signed again.
        let (claim, target) = match sigv4::parse(&parts.headers)? {
            Some(claim) => (claim, received.to_string()),
            None => match sigv4::parse_presigned(received)? {
                Some(presigned) => presigned,
                None => return Err(AuthError::MissingToken(MISSING_TOKEN.into())),
            },
        };
        if parts.headers.contains_key("x-amz-security-token") {
            // Weft holds long-term keys only; a session token names nothing it issued.
            return Err(AuthError::UnrecognizedClient(UNKNOWN_KEY.into()));
        }
        let Some(key) = self
            .inner
            .keys
            .lookup(&*self.inner.store, &self.inner.kek, &claim.key_id)
            .await?
        else {
            return Err(AuthError::UnrecognizedClient(UNKNOWN_KEY.into()));
        };
        claim.check_scope(&self.inner.region, protocol.service())?;
        claim.check_time(now)?;
        claim.verify_signature(
            parts.method.as_str(),
            &target,
            &parts.headers,
            body,
            &key.secret,
        )?;
        let (action, resource) = self.action(protocol, parts, body);
        match key.policy.evaluate(&action, &resource) {
            Decision::Allow => Ok(Principal {
                key_id: key.id.clone(),
                action,
                resource,
            }),
            decision => {
                let why = if decision == Decision::ExplicitDeny {
                    "with an explicit deny in an identity-based policy"
                } else {
                    "because no identity-based policy allows the action"
                };
                // IAM's wording, with the key in place of the user.
                Err(AuthError::AccessDenied(format!(
                    "User: arn:aws:iam::{}:user/{} is not authorized to perform: {action} on \
                     resource: {resource} {why}",
                    self.inner.account, key.id
                )))
            }
        }
    }

    /// The IAM action and resource of a request.
    pub fn action(
        &self,
        protocol: Protocol,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> (String, String) {
        let path = parts.uri.path();
        match protocol {
            Protocol::RestJson => appmesh_action(
                &parts.method,
                path,
                parts.uri.query().unwrap_or(""),
                body,
                &self.inner.region,
                &self.inner.account,
            ),
            Protocol::AwsJson => {
                let op = parts
                    .headers
                    .get("x-amz-target")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|t| t.rsplit('.').next())
                    .unwrap_or("Unknown");
                (format!("servicediscovery:{op}"), "*".into())
            }
            Protocol::Cbor => {
                let op = path.rsplit('/').next().unwrap_or("Unknown");
                (format!("servicediscovery:{op}"), "*".into())
            }
            Protocol::WeftAdmin if path == "/weft/v1/proxy-status" => {
                ("weft:GetProxyStatus".into(), "*".into())
            }
            Protocol::WeftAdmin => {
                let noun = if path.starts_with("/weft/v1/access-keys") {
                    "AccessKey"
                } else if path.starts_with(crate::audit::AUDIT) {
                    "AuditRecord"
                } else if path.starts_with("/weft/v1/join-tokens") {
                    "JoinToken"
                } else if path.starts_with("/weft/v1/ui/sessions") {
                    "DashboardSession"
                } else {
                    "Endpoint"
                };
                let verb = match parts.method {
                    Method::POST => "Create",
                    Method::DELETE => "Revoke",
                    _ => "List",
                };
                let plural = if verb == "List" { "s" } else { "" };
                (format!("weft:{verb}{noun}{plural}"), "*".into())
            }
        }
    }
}

/// Decodes `%XX` escapes of a path segment.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(Ok(b)) = segment.get(i + 1..i + 3).map(|h| u8::from_str_radix(h, 16)) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// App Mesh's operations as `(method, name, URI segments)`, split once from the model.
fn operation_table() -> &'static [(String, String, Vec<String>)] {
    static TABLE: std::sync::OnceLock<Vec<(String, String, Vec<String>)>> =
        std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        weft_model::schema()
            .operations
            .values()
            .map(|op| {
                (
                    op.method.clone(),
                    op.name.clone(),
                    op.uri.split('/').map(str::to_string).collect(),
                )
            })
            .collect()
    })
}

/// The App Mesh operation a request is for (matched against the model's paths) and the ARN of
/// the resource it acts on, as App Mesh's IAM actions name them
/// (<https://docs.aws.amazon.com/service-authorization/latest/reference/list_awsappmesh.html>).
pub fn appmesh_action(
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
    region: &str,
    account: &str,
) -> (String, String) {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let mut found = None;
    for (op_method, op_name, pattern) in operation_table() {
        if op_method != method.as_str() {
            continue;
        }
        if pattern.len() != segments.len() {
            continue;
        }
        let mut labels = Vec::new();
        let matches = pattern.iter().zip(&segments).all(|(p, s)| {
            match p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(label) => {
                    labels.push((label.to_string(), percent_decode(s)));
                    !s.is_empty()
                }
                None => p == s,
            }
        });
        if matches {
            found = Some((op_name.clone(), labels));
            break;
        }
    }
    let Some((operation, mut labels)) = found else {
        return ("appmesh:Unknown".into(), "*".into());
    };
    let action = format!("appmesh:{operation}");
    if matches!(
        operation.as_str(),
        "TagResource" | "UntagResource" | "ListTagsForResource"
    ) {
        let arn = query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == "resourceArn")
            .map(|(_, v)| percent_decode(v))
            .unwrap_or_else(|| "*".into());
        return (action, arn);
    }
    // A Create names its resource in the body.
    if operation.starts_with("Create") {
        if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
            for name in [
                "meshName",
                "virtualNodeName",
                "virtualRouterName",
                "virtualServiceName",
                "virtualGatewayName",
                "routeName",
                "gatewayRouteName",
            ] {
                if labels.iter().any(|(l, _)| l == name) {
                    continue;
                }
                if let Some(Value::String(v)) = map.get(name) {
                    labels.push((name.to_string(), v.clone()));
                }
            }
        }
    }
    let label = |name: &str| {
        labels
            .iter()
            .find(|(l, _)| l == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(mesh) = label("meshName") else {
        return (action, "*".into());
    };
    let mut resource = format!("arn:aws:appmesh:{region}:{account}:mesh/{mesh}");
    for (kind, name, child) in [
        ("virtualNode", "virtualNodeName", None),
        ("virtualService", "virtualServiceName", None),
        (
            "virtualRouter",
            "virtualRouterName",
            Some(("route", "routeName")),
        ),
        (
            "virtualGateway",
            "virtualGatewayName",
            Some(("gatewayRoute", "gatewayRouteName")),
        ),
    ] {
        if let Some(n) = label(name) {
            resource.push_str(&format!("/{kind}/{n}"));
            if let Some((child_kind, child_name)) = child {
                if let Some(c) = label(child_name) {
                    resource.push_str(&format!("/{child_kind}/{c}"));
                }
            }
            break;
        }
    }
    (action, resource)
}

async fn authenticate(State(auth): State<Authenticator>, request: Request, next: Next) -> Response {
    let Some(protocol) = classify(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    if auth.inner.mode == Mode::Insecure {
        return unauthenticated(auth, protocol, request, next).await;
    }
    let (parts, body) = request.into_parts();
    let body =
        match weft_api::body::read_limited(&parts.headers, body, auth.inner.max_body_bytes).await {
            Ok(body) => body,
            Err(refusal) => return refusal_response(protocol, &AuthError::Body(refusal.message())),
        };
    let source = source_of(&parts);
    match auth.check(protocol, &parts, &body, SystemTime::now()).await {
        Ok(principal) => {
            let audited = auth
                .inner
                .audit
                .clone()
                .filter(|_| !crate::audit::is_read(&principal.action))
                .map(|log| (log, principal.clone()));
            let operation = Operation(principal.action.clone());
            let mut request = Request::from_parts(parts, Body::from(body));
            request.extensions_mut().insert(principal);
            let mut response = next.run(request).await;
            response.extensions_mut().insert(operation);
            if let Some((log, principal)) = audited {
                log.record(served_record(
                    principal.key_id,
                    principal.action,
                    principal.resource,
                    &response,
                    source,
                ))
                .await;
            }
            response
        }
        Err(e) => {
            let (operation, resource) = auth.action(protocol, &parts, &body);
            if let Some(log) = auth.inner.audit.clone().filter(|l| l.admit_refusal()) {
                let (outcome, status) = error_shape(protocol, &e);
                log.record(crate::audit::AuditRecord {
                    time: crate::audit::timestamp(SystemTime::now()),
                    key_id: sigv4::parse(&parts.headers)
                        .ok()
                        .flatten()
                        .map(|c| c.key_id),
                    operation: operation.clone(),
                    resource,
                    outcome: outcome.to_string(),
                    status: status.as_u16(),
                    source: source.clone(),
                    suppressed_refusals: 0,
                })
                .await;
            }
            match &e {
                AuthError::Store(_) | AuthError::Crypto(_) => {
                    tracing::warn!(error = %e, path = %parts.uri.path(), "authenticating a request failed")
                }
                _ => tracing::debug!(
                    error = %e,
                    key_id = sigv4::parse(&parts.headers).ok().flatten().map(|c| c.key_id).unwrap_or_default(),
                    path = %parts.uri.path(),
                    "request refused"
                ),
            }
            let mut response = refusal_response(protocol, &e);
            response.extensions_mut().insert(Operation(operation));
            response
        }
    }
}

/// The key id the audit log records for a request served without authentication
/// (`--insecure-no-auth`): who sent it is not known, what it did still is.
pub const ANONYMOUS: &str = "anonymous";

/// A request under `--insecure-no-auth`: served whatever its credentials, its operation named
/// for the metrics, and, if it writes, recorded in the audit log as [`ANONYMOUS`]'s before its
/// answer leaves. A Create names its resource in its body: the body is copied as the handler
/// reads it, not read here first, so that the request reaches the per-client limits behind this
/// layer as it arrives (a body that never ends counts against its client there).
async fn unauthenticated(
    auth: Authenticator,
    protocol: Protocol,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let (action, resource) = auth.action(protocol, &parts, &[]);
    let Some(log) = auth
        .inner
        .audit
        .clone()
        .filter(|_| !crate::audit::is_read(&action))
    else {
        let mut response = next.run(Request::from_parts(parts, body)).await;
        response.extensions_mut().insert(Operation(action));
        return response;
    };
    let names_in_body = protocol == Protocol::RestJson && action.starts_with("appmesh:Create");
    let copied = Arc::new(std::sync::Mutex::new(Vec::new()));
    let body = if names_in_body {
        let copy = copied.clone();
        let limit = auth.inner.max_body_bytes;
        Body::new(http_body_util::BodyExt::map_frame(body, move |frame| {
            if let (Some(data), Ok(mut copy)) = (frame.data_ref(), copy.lock()) {
                if copy.len() + data.len() <= limit {
                    copy.extend_from_slice(data);
                }
            }
            frame
        }))
    } else {
        body
    };
    let (method, uri) = (parts.method.clone(), parts.uri.clone());
    let source = source_of(&parts);
    let mut response = next.run(Request::from_parts(parts, body)).await;
    let (action, resource) = match names_in_body {
        true => {
            let bytes = copied.lock().map(|b| b.clone()).unwrap_or_default();
            appmesh_action(
                &method,
                uri.path(),
                uri.query().unwrap_or(""),
                &bytes,
                &auth.inner.region,
                &auth.inner.account,
            )
        }
        false => (action, resource),
    };
    log.record(served_record(
        ANONYMOUS.to_string(),
        action.clone(),
        resource,
        &response,
        source,
    ))
    .await;
    response.extensions_mut().insert(Operation(action));
    response
}

/// The client's address, as the listener saw it.
fn source_of(parts: &http::request::Parts) -> String {
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default()
}

/// The audit record of a request that reached its handler, with the outcome of `response`.
fn served_record(
    key_id: String,
    operation: String,
    resource: String,
    response: &Response,
    source: String,
) -> crate::audit::AuditRecord {
    let status = response.status();
    let outcome = if status.is_success() {
        "Success".to_string()
    } else {
        response
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(|t| t.split(':').next().unwrap_or(t).to_string())
            .unwrap_or_else(|| status.as_u16().to_string())
    };
    crate::audit::AuditRecord {
        time: crate::audit::timestamp(SystemTime::now()),
        key_id: Some(key_id),
        operation,
        resource,
        outcome,
        status: status.as_u16(),
        source,
        suppressed_refusals: 0,
    }
}

/// The exception name and HTTP status of a refusal in `protocol`.
fn error_shape(protocol: Protocol, e: &AuthError) -> (&'static str, StatusCode) {
    // App Mesh answers its authentication errors with 403, as REST services behind AWS's
    // front end do; JSON-RPC services such as Cloud Map answer them with 400.
    let auth_status = match protocol {
        Protocol::RestJson | Protocol::WeftAdmin => StatusCode::FORBIDDEN,
        Protocol::AwsJson | Protocol::Cbor => StatusCode::BAD_REQUEST,
    };
    match e {
        AuthError::MissingToken(_) => ("MissingAuthenticationTokenException", auth_status),
        AuthError::IncompleteSignature(_) => ("IncompleteSignatureException", auth_status),
        AuthError::UnrecognizedClient(_) => ("UnrecognizedClientException", auth_status),
        AuthError::InvalidSignature(_) => ("InvalidSignatureException", auth_status),
        AuthError::AccessDenied(_) => match protocol {
            Protocol::RestJson => ("ForbiddenException", StatusCode::FORBIDDEN),
            Protocol::WeftAdmin => ("AccessDeniedException", StatusCode::FORBIDDEN),
            _ => ("AccessDeniedException", StatusCode::BAD_REQUEST),
        },
        AuthError::Body(_) | AuthError::InvalidInput(_) => match protocol {
            Protocol::RestJson => ("BadRequestException", StatusCode::BAD_REQUEST),
            Protocol::AwsJson | Protocol::Cbor => ("InvalidInput", StatusCode::BAD_REQUEST),
            Protocol::WeftAdmin => ("BadRequest", StatusCode::BAD_REQUEST),
        },
        AuthError::NotFound(_) => ("NotFound", StatusCode::NOT_FOUND),
        AuthError::Store(_) => match protocol {
            Protocol::RestJson => (
                "ServiceUnavailableException",
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            _ => ("ServiceUnavailable", StatusCode::SERVICE_UNAVAILABLE),
        },
        AuthError::Crypto(_) | AuthError::Config(_) | AuthError::Client(_) => match protocol {
            Protocol::RestJson => (
                "InternalServerErrorException",
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            _ => ("InternalFailure", StatusCode::INTERNAL_SERVER_ERROR),
        },
    }
}

/// A refusal in `protocol`'s error shape.
pub fn refusal_response(protocol: Protocol, e: &AuthError) -> Response {
    let (name, status) = error_shape(protocol, e);
    let message = e.to_string();
    let mut response = match protocol {
        Protocol::RestJson => {
            let body = serde_json::json!({ "message": message }).to_string();
            let mut r = (status, body).into_response();
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            r
        }
        Protocol::AwsJson => {
            let body = serde_json::json!({ "__type": name, "message": message }).to_string();
            let mut r = (status, body).into_response();
            r.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("application/x-amz-json-1.1"),
            );
            r
        }
        Protocol::Cbor => {
            use ciborium::value::Value as Cbor;
            let map = Cbor::Map(vec![
                (
                    Cbor::Text("__type".into()),
                    Cbor::Text(format!("com.amazon.coral.service#{name}")),
                ),
                (Cbor::Text("message".into()), Cbor::Text(message)),
            ]);
            let mut bytes = Vec::new();
            // Writing into a Vec cannot fail; an empty body still carries the status.
            let _ = ciborium::ser::into_writer(&map, &mut bytes);
            let mut r = (status, bytes).into_response();
            let h = r.headers_mut();
            h.insert("content-type", HeaderValue::from_static("application/cbor"));
            h.insert("smithy-protocol", HeaderValue::from_static("rpc-v2-cbor"));
            r
        }
        Protocol::WeftAdmin => {
            let body = serde_json::json!({ "code": name, "message": message }).to_string();
            let mut r = (status, body).into_response();
            r.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            r
        }
    };
    response
        .headers_mut()
        .insert("x-amzn-ErrorType", HeaderValue::from_static(name));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_mesh_requests_name_their_operation_and_resource_arn() {
        let (a, r) = appmesh_action(
            &Method::GET,
            "/v20190125/meshes/dev/virtualNodes/red",
            "",
            b"",
            "us-east-1",
            "000000000000",
        );
        assert_eq!(a, "appmesh:DescribeVirtualNode");
        assert_eq!(
            r,
            "arn:aws:appmesh:us-east-1:000000000000:mesh/dev/virtualNode/red"
        );
        let (a, r) = appmesh_action(
            &Method::PUT,
            "/v20190125/meshes",
            "",
            br#"{"meshName":"prod"}"#,
            "us-east-1",
            "000000000000",
        );
        assert_eq!(
            (a.as_str(), r.as_str()),
            (
                "appmesh:CreateMesh",
                "arn:aws:appmesh:us-east-1:000000000000:mesh/prod"
            )
        );
        let (a, r) = appmesh_action(
            &Method::PUT,
            "/v20190125/meshes/dev/virtualRouter/vr/routes",
            "",
            br#"{"routeName":"x"}"#,
            "r",
            "a",
        );
        assert_eq!(
            (a.as_str(), r.as_str()),
            (
                "appmesh:CreateRoute",
                "arn:aws:appmesh:r:a:mesh/dev/virtualRouter/vr/route/x"
            )
        );
        let (a, r) = appmesh_action(&Method::GET, "/v20190125/meshes", "limit=5", b"", "r", "a");
        assert_eq!((a.as_str(), r.as_str()), ("appmesh:ListMeshes", "*"));
        let (a, r) = appmesh_action(
            &Method::PUT,
            "/v20190125/tag",
            "resourceArn=arn%3Aaws%3Aappmesh%3Ar%3Aa%3Amesh%2Fdev",
            b"",
            "r",
            "a",
        );
        assert_eq!(
            (a.as_str(), r.as_str()),
            ("appmesh:TagResource", "arn:aws:appmesh:r:a:mesh/dev")
        );
    }

    #[test]
    fn only_the_health_check_and_agent_ca_calls_are_open() {
        for open in ["/healthz", "/weft/v1/certificates", "/weft/v1/trust-bundle"] {
            assert_eq!(classify(&Method::GET, open), None);
        }
        assert_eq!(
            classify(&Method::GET, "/weft/v1/proxy-status"),
            Some(Protocol::WeftAdmin)
        );
        assert_eq!(
            classify(&Method::POST, "/weft/v1/join-tokens"),
            Some(Protocol::WeftAdmin)
        );
        assert_eq!(classify(&Method::POST, "/"), Some(Protocol::AwsJson));
        assert_eq!(
            classify(&Method::GET, "/v20190125/meshes"),
            Some(Protocol::RestJson)
        );
        assert_eq!(classify(&Method::GET, "/nope"), Some(Protocol::RestJson));
    }
}
