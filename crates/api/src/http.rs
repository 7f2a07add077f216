//! The rest-json binding of the App Mesh API, built from the model: every
//! operation's method and path come from `appmesh-2019-01-25.service.json`,
//! path labels and query parameters are merged with the JSON body into the
//! operation's input shape, the input is checked against the model, and the
//! output's `payload` member (if any) becomes the response body.
//!
//! Before any of that, the request's client is admitted under its own limits
//! (see [`crate::throttle`]), and the body is read under
//! [`crate::ApiConfig::max_body_bytes`]; every refusal, whatever stage gives
//! it, is an App Mesh error (`x-amzn-ErrorType` and a JSON `message`).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodFilter, MethodRouter};
use axum::Router;
use serde_json::{Map, Value};
use weft_model::schema::{Location, ShapeKind};
use weft_model::{schema, validate_input};

use crate::body::read_limited;
use crate::error::ApiError;
use crate::service::{Output, Service};
use crate::throttle::ClientId;

/// Builds the input shape of `operation` from the request's parts.
fn build_input(
    operation: &str,
    labels: &HashMap<String, String>,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<Value, ApiError> {
    let model = schema();
    let op = model
        .operations
        .get(operation)
        .ok_or_else(|| ApiError::Internal(format!("operation {operation} missing from model")))?;
    let mut input = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => map,
            Ok(_) => {
                return Err(ApiError::BadRequest(
                    "The request body must be a JSON object".into(),
                ))
            }
            Err(e) => {
                return Err(ApiError::BadRequest(format!(
                    "The request body is not valid JSON: {e}"
                )))
            }
        }
    };
    let Some(ShapeKind::Structure { members, .. }) = model.shape(&op.input).map(|s| &s.kind) else {
        return Err(ApiError::Internal(format!(
            "input of {operation} is not a structure"
        )));
    };
    for (name, member) in members {
        // Members bound to the path or query string never come from the body.
        let raw = match &member.location {
            Location::Body => continue,
            Location::Uri(label) => {
                input.remove(name);
                labels.get(label)
            }
            Location::Query(param) => {
                input.remove(name);
                query.get(param)
            }
        };
        let Some(raw) = raw else { continue };
        let is_integer = matches!(
            model.shape(&member.shape).map(|s| &s.kind),
            Some(ShapeKind::Integer { .. })
        );
        let value = if is_integer {
            match raw.parse::<i64>() {
                Ok(n) => Value::from(n),
                Err(_) => {
                    return Err(ApiError::BadRequest(format!(
                        "Value at '{name}' failed to satisfy constraint: Member must be an integer"
                    )))
                }
            }
        } else {
            Value::String(raw.clone())
        };
        input.insert(name.clone(), value);
    }
    Ok(Value::Object(input))
}

/// The output member the model sends as the whole body, if it names one.
fn payload_member(operation: &str) -> Option<&'static str> {
    let model = schema();
    model
        .operations
        .get(operation)
        .and_then(|op| model.shape(&op.output))
        .and_then(|s| match &s.kind {
            ShapeKind::Structure { payload, .. } => payload.as_deref(),
            _ => None,
        })
}

/// Serializes an output: its payload member alone if the model names one,
/// otherwise the whole structure.
fn render_output(operation: &str, output: Output) -> Result<Response, ApiError> {
    let payload = payload_member(operation);
    let body: Bytes = match (output, payload) {
        (Output::Payload { member, body }, Some(p)) if member == p => body,
        (Output::Json(body), None) => body,
        (Output::Value(value), None) => Bytes::from(value.to_string()),
        (Output::Value(mut value), Some(p)) => {
            let part = value
                .as_object_mut()
                .and_then(|o| o.remove(p))
                .unwrap_or(Value::Null);
            Bytes::from(part.to_string())
        }
        // A form that does not match the model's: go through the tree.
        (other, payload) => {
            let value = other.into_value()?;
            let part = match payload {
                Some(p) => value.get(p).cloned().unwrap_or(Value::Null),
                None => value,
            };
            Bytes::from(part.to_string())
        }
    };
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

async fn handle(
    service: Service,
    operation: &'static str,
    labels: Result<Path<HashMap<String, String>>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    let client = ClientId::of(&parts.headers, peer);
    // Held until the answer is built: the request is in flight until then.
    let _permit = service.admit(&client)?;
    let labels = match labels {
        Ok(Path(labels)) => labels,
        // Operations without path labels have none to extract.
        Err(PathRejection::MissingPathParams(_)) => HashMap::new(),
        Err(e) => return Err(ApiError::BadRequest(e.body_text())),
    };
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let body = read_body(&service, &parts.headers, body).await?;
    let input = build_input(operation, &labels, &query, &body)?;
    validate_input(operation, &input)?;
    let output = service.respond(operation, input).await?;
    render_output(operation, output)
}

/// The request body, read under the configured limit.
async fn read_body(
    service: &Service,
    headers: &axum::http::HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    read_limited(headers, body, service.config().max_body_bytes)
        .await
        .map_err(|refusal| ApiError::BadRequest(refusal.message()))
}

fn method_filter(method: &str) -> MethodFilter {
    match method {
        "PUT" => MethodFilter::PUT,
        "DELETE" => MethodFilter::DELETE,
        "POST" => MethodFilter::POST,
        "PATCH" => MethodFilter::PATCH,
        _ => MethodFilter::GET,
    }
}

async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let error_type = resp
        .headers()
        .get("x-amzn-ErrorType")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    tracing::debug!(
        %method,
        %path,
        status,
        error_type,
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    resp
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("No App Mesh operation at {method} {}", uri.path()))
}

/// The App Mesh REST API as an axum router, plus `GET /healthz`.
pub fn router(service: Service) -> Router {
    let model = schema();
    let mut paths: BTreeMap<String, MethodRouter<Service>> = BTreeMap::new();
    for op in model.operations.values() {
        let name: &'static str = Box::leak(op.name.clone().into_boxed_str());
        let handler = move |State(service): State<Service>,
                            labels: Result<Path<HashMap<String, String>>, PathRejection>,
                            query: Result<Query<HashMap<String, String>>, QueryRejection>,
                            request: Request| async move {
            handle(service, name, labels, query, request).await
        };
        let entry = paths.remove(&op.uri).unwrap_or_default();
        paths.insert(op.uri.clone(), entry.on(method_filter(&op.method), handler));
    }
    // Liveness: 200 "ok" while the store serves, and while a remote store
    // is merely unreachable (said in the body: restarting cannot fix it);
    // the API error (503 ServiceUnavailableException) once the local store
    // is degraded or has failed.
    let healthz = get(|State(service): State<Service>| async move {
        match service.health().await {
            Ok(None) => "ok\n".into_response(),
            Ok(Some(why)) => format!("ok; the store is unreachable: {why}\n").into_response(),
            Err(e) => e.into_response(),
        }
    });
    let mut router = Router::new().route("/healthz", healthz);
    for (path, methods) in paths {
        router = router.route(&path, methods);
    }
    router
        .fallback(not_found)
        .layer(middleware::from_fn(log_request))
        .with_state(service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_query_parameters_join_the_body() {
        let labels = HashMap::from([("meshName".to_string(), "apps".to_string())]);
        let query = HashMap::from([("limit".to_string(), "5".to_string())]);
        let input = build_input("ListVirtualNodes", &labels, &query, b"").unwrap_or_default();
        assert_eq!(input, serde_json::json!({"meshName": "apps", "limit": 5}));
    }

    #[test]
    fn a_non_numeric_limit_is_a_bad_request() {
        let query = HashMap::from([("limit".to_string(), "ten".to_string())]);
        let err = build_input("ListMeshes", &HashMap::new(), &query, b"");
        assert!(matches!(err, Err(ApiError::BadRequest(m)) if m.contains("limit")));
    }

    #[test]
    fn a_path_label_wins_over_a_body_member_of_the_same_name() {
        let labels = HashMap::from([("meshName".to_string(), "apps".to_string())]);
        let input = build_input(
            "UpdateMesh",
            &labels,
            &HashMap::new(),
            br#"{"meshName":"x"}"#,
        )
        .unwrap_or_default();
        assert_eq!(input["meshName"], "apps");
    }
}
