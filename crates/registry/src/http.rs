//! The two wire protocols the Cloud Map model lists, over one
//! [`RegistryService`]:
//!
//! - **awsJson 1.1** — `POST /` with `X-Amz-Target:
//!   Route53AutoNaming_v20170314.<Operation>` and a JSON body; errors are
//!   `{"__type": "<Exception>", "Message": …}` with the model's HTTP status.
//!   The AWS SDK for Rust and the AWS CLI send this.
//! - **Smithy RPC v2 CBOR** — `POST /service/Route53AutoNaming_v20170314/operation/<Operation>`
//!   with `smithy-protocol: rpc-v2-cbor` and a CBOR body; timestamps are
//!   CBOR tag 1 (epoch seconds); errors are a CBOR map with `__type` (the
//!   error's shape id) and the error's members. Responses carry
//!   `smithy-protocol: rpc-v2-cbor`.
//!
//! Both decode to the same JSON input, validated against the model, and
//! encode the same JSON output, so the protocols cannot drift apart.
//!
//! The router sets no fallback and no `/healthz`, so it merges into the App
//! Mesh API's router (whose paths all start with `/v20190125`).
//!
//! Each request is first admitted under its client's own limits (see
//! [`weft_api::throttle`]; past them, `RequestLimitExceeded`, HTTP 429), and
//! its body is read under [`crate::RegistryConfig::max_body_bytes`] (past it,
//! `InvalidInput`): both answered in the request's protocol like any error.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use ciborium::value::Value as Cbor;
use serde_json::{Map, Number, Value};

use crate::error::RegistryError;
use crate::model::{schema, validate_input, OPERATIONS};
use crate::service::RegistryService;
use weft_api::body::read_limited;
use weft_api::throttle::{ClientId, Permit};
use weft_model::ShapeKind;

/// Admits `request`'s client and reads its body under the limit: the
/// headers, the body, and the permit that keeps the request counted as in
/// flight until it is dropped.
async fn admit_and_read(
    service: &RegistryService,
    request: Request,
) -> Result<(HeaderMap, Bytes, Permit), RegistryError> {
    let (parts, body) = request.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    let permit = service.admit(&ClientId::of(&parts.headers, peer))?;
    let body = read_limited(&parts.headers, body, service.config().max_body_bytes)
        .await
        .map_err(|refusal| RegistryError::InvalidInput(refusal.message()))?;
    Ok((parts.headers, body, permit))
}

/// `Content-Type` of awsJson 1.1 requests and responses.
pub const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// `Content-Type` of rpc-v2-cbor bodies.
pub const CBOR_CONTENT_TYPE: &str = "application/cbor";
/// The Smithy namespace that qualifies error shape ids in CBOR errors.
const SHAPE_NAMESPACE: &str = "com.amazonaws.servicediscovery";

/// The Cloud Map API (both protocols) as an axum router.
pub fn router(service: RegistryService) -> Router {
    Router::new()
        .route("/", post(json_rpc))
        .route("/service/{service}/operation/{operation}", post(cbor_rpc))
        .with_state(service)
}

/// The served operation named `name`, as a static string.
fn served(name: &str) -> Result<&'static str, RegistryError> {
    OPERATIONS
        .iter()
        .copied()
        .find(|op| *op == name)
        .ok_or_else(|| {
            RegistryError::UnknownOperation(format!("Weft does not serve operation {name}"))
        })
}

/// Validates and runs one operation.
async fn run(
    service: &RegistryService,
    operation: &str,
    input: Value,
) -> Result<Option<Value>, RegistryError> {
    validate_input(operation, &input)?;
    let started = std::time::Instant::now();
    let result = service.call(operation, input).await;
    tracing::debug!(
        operation,
        ok = result.is_ok(),
        micros = started.elapsed().as_micros() as u64,
        "cloudmap request"
    );
    result
}

// ----- awsJson 1.1 -----

async fn json_rpc(State(service): State<RegistryService>, request: Request) -> Response {
    let (headers, body, _permit) = match admit_and_read(&service, request).await {
        Ok(read) => read,
        Err(e) => return json_error(&e),
    };
    match json_call(&service, &headers, &body).await {
        Ok(out) => {
            let body = out.unwrap_or_else(|| Value::Object(Map::new())).to_string();
            json_response(StatusCode::OK, body, None)
        }
        Err(e) => json_error(&e),
    }
}

async fn json_call(
    service: &RegistryService,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<Value>, RegistryError> {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let operation = match target.split_once('.') {
        Some((prefix, op)) if Some(prefix) == schema().target_prefix.as_deref() => served(op)?,
        _ => {
            return Err(RegistryError::UnknownOperation(format!(
                "X-Amz-Target \"{target}\" names no Cloud Map operation"
            )))
        }
    };
    let input = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        match serde_json::from_slice::<Value>(body) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return Err(RegistryError::Serialization(
                    "The request body must be a JSON object".into(),
                ))
            }
            Err(e) => {
                return Err(RegistryError::Serialization(format!(
                    "The request body is not valid JSON: {e}"
                )))
            }
        }
    };
    run(service, operation, input).await
}

fn json_response(status: StatusCode, body: String, error_type: Option<&str>) -> Response {
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static(JSON_CONTENT_TYPE));
    if let Some(t) = error_type.and_then(|t| HeaderValue::from_str(t).ok()) {
        h.insert("x-amzn-errortype", t);
    }
    resp
}

fn log_error(e: &RegistryError) {
    if e.status() >= 500 {
        tracing::warn!(error_type = e.error_type(), message = %e, "cloudmap request failed");
    } else {
        tracing::debug!(error_type = e.error_type(), message = %e, "cloudmap request rejected");
    }
}

fn status_of(e: &RegistryError) -> StatusCode {
    StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn json_error(e: &RegistryError) -> Response {
    log_error(e);
    let mut body = e.members();
    body.insert("__type".into(), Value::String(e.error_type().into()));
    json_response(
        status_of(e),
        Value::Object(body).to_string(),
        Some(e.error_type()),
    )
}

// ----- rpc-v2-cbor -----

async fn cbor_rpc(
    State(service): State<RegistryService>,
    path: Result<Path<(String, String)>, PathRejection>,
    request: Request,
) -> Response {
    let (headers, body, _permit) = match admit_and_read(&service, request).await {
        Ok(read) => read,
        Err(e) => return cbor_error(&e),
    };
    let (service_name, operation) = match path {
        Ok(Path(names)) => names,
        Err(e) => return cbor_error(&RegistryError::UnknownOperation(e.body_text())),
    };
    match cbor_call(&service, &service_name, &operation, &headers, &body).await {
        Ok((operation, Some(out))) => match encode_output(operation, &out) {
            Ok(bytes) => cbor_response(StatusCode::OK, Some(bytes)),
            Err(e) => cbor_error(&e),
        },
        // An operation without output answers an empty body.
        Ok((_, None)) => cbor_response(StatusCode::OK, None),
        Err(e) => cbor_error(&e),
    }
}

async fn cbor_call(
    service: &RegistryService,
    service_name: &str,
    operation: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(&'static str, Option<Value>), RegistryError> {
    // Clients send the service's shape name; accept it fully qualified too.
    let short = service_name.rsplit('#').next().unwrap_or(service_name);
    if Some(short) != schema().target_prefix.as_deref() {
        return Err(RegistryError::UnknownOperation(format!(
            "Service {service_name} is not served here"
        )));
    }
    let operation = served(operation)?;
    let protocol = headers
        .get("smithy-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if protocol != "rpc-v2-cbor" {
        // The spec makes the header mandatory; it is what tells the protocol apart.
        return Err(RegistryError::Serialization(format!(
            "The smithy-protocol header must be rpc-v2-cbor, got \"{protocol}\""
        )));
    }
    let input = if body.is_empty() {
        Value::Object(Map::new())
    } else {
        let value: Cbor = ciborium::de::from_reader(body).map_err(|e| {
            RegistryError::Serialization(format!("The request body is not valid CBOR: {e}"))
        })?;
        match cbor_to_json(value)? {
            v @ Value::Object(_) => v,
            _ => {
                return Err(RegistryError::Serialization(
                    "The request body must be a CBOR map".into(),
                ))
            }
        }
    };
    Ok((operation, run(service, operation, input).await?))
}

fn cbor_response(status: StatusCode, body: Option<Vec<u8>>) -> Response {
    let has_body = body.is_some();
    let mut resp = (status, body.unwrap_or_default()).into_response();
    let h = resp.headers_mut();
    h.insert("smithy-protocol", HeaderValue::from_static("rpc-v2-cbor"));
    if has_body {
        h.insert("content-type", HeaderValue::from_static(CBOR_CONTENT_TYPE));
    } else {
        h.remove("content-type");
    }
    resp
}

fn cbor_error(e: &RegistryError) -> Response {
    log_error(e);
    let mut entries = vec![(
        Cbor::Text("__type".into()),
        Cbor::Text(format!("{SHAPE_NAMESPACE}#{}", e.error_type())),
    )];
    for (k, v) in e.members() {
        if let Value::String(s) = v {
            entries.push((Cbor::Text(k), Cbor::Text(s)));
        }
    }
    let mut bytes = Vec::new();
    // Writing into a Vec cannot fail; an empty body still carries the status.
    let _ = ciborium::ser::into_writer(&Cbor::Map(entries), &mut bytes);
    cbor_response(status_of(e), Some(bytes))
}

/// Converts a decoded CBOR request into the JSON the service reads: tag-1
/// timestamps become epoch seconds, byte strings base64 (no input of this
/// model has a blob), other tags are looked through.
pub fn cbor_to_json(value: Cbor) -> Result<Value, RegistryError> {
    let bad = |what: &str| RegistryError::Serialization(format!("Unsupported CBOR value: {what}"));
    Ok(match value {
        Cbor::Null => Value::Null,
        Cbor::Bool(b) => Value::Bool(b),
        Cbor::Integer(i) => {
            let n = i128::from(i);
            if let Ok(v) = i64::try_from(n) {
                Value::from(v)
            } else if let Ok(v) = u64::try_from(n) {
                Value::from(v)
            } else {
                return Err(bad("integer out of range"));
            }
        }
        Cbor::Float(f) => Value::Number(Number::from_f64(f).ok_or_else(|| bad("NaN or infinity"))?),
        Cbor::Text(s) => Value::String(s),
        Cbor::Bytes(b) => {
            use base64::Engine as _;
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        Cbor::Array(items) => Value::Array(
            items
                .into_iter()
                .map(cbor_to_json)
                .collect::<Result<_, _>>()?,
        ),
        Cbor::Map(entries) => {
            let mut m = Map::new();
            for (k, v) in entries {
                let Cbor::Text(k) = k else {
                    return Err(bad("map key that is not text"));
                };
                m.insert(k, cbor_to_json(v)?);
            }
            Value::Object(m)
        }
        Cbor::Tag(_, inner) => cbor_to_json(*inner)?,
        _ => return Err(bad("simple value")),
    })
}

/// Encodes an operation's JSON output as CBOR, following its output shape.
fn encode_output(operation: &str, output: &Value) -> Result<Vec<u8>, RegistryError> {
    let shape = schema()
        .operations
        .get(operation)
        .map(|o| o.output.as_str())
        .unwrap_or_default();
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(&json_to_cbor(output, shape), &mut bytes)
        .map_err(|e| RegistryError::Internal(format!("cannot encode CBOR: {e}")))?;
    Ok(bytes)
}

/// Converts JSON to CBOR as the shape `shape` types it: timestamps become
/// tag 1, integers stay integers; null members are left out.
pub fn json_to_cbor(value: &Value, shape: &str) -> Cbor {
    let kind = schema().shape(shape).map(|s| &s.kind);
    match (value, kind) {
        (Value::Number(n), Some(ShapeKind::Timestamp)) => {
            let secs = n.as_f64().unwrap_or_default();
            let inner = if secs.fract() == 0.0 && n.as_i64().is_some() {
                Cbor::Integer(n.as_i64().unwrap_or_default().into())
            } else {
                Cbor::Float(secs)
            };
            Cbor::Tag(1, Box::new(inner))
        }
        (Value::Object(m), Some(ShapeKind::Structure { members, .. })) => Cbor::Map(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    let target = members.get(k).map(|m| m.shape.as_str()).unwrap_or("");
                    (Cbor::Text(k.clone()), json_to_cbor(v, target))
                })
                .collect(),
        ),
        (Value::Object(m), Some(ShapeKind::Map { value: target, .. })) => Cbor::Map(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (Cbor::Text(k.clone()), json_to_cbor(v, target)))
                .collect(),
        ),
        (Value::Array(items), Some(ShapeKind::List { member, .. })) => {
            Cbor::Array(items.iter().map(|v| json_to_cbor(v, member)).collect())
        }
        // Untyped (or mistyped) values: the natural CBOR form.
        (Value::Null, _) => Cbor::Null,
        (Value::Bool(b), _) => Cbor::Bool(*b),
        (Value::Number(n), _) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Cbor::Integer(i.into()),
            (None, Some(u)) => Cbor::Integer(u.into()),
            _ => Cbor::Float(n.as_f64().unwrap_or_default()),
        },
        (Value::String(s), _) => Cbor::Text(s.clone()),
        (Value::Array(items), _) => {
            Cbor::Array(items.iter().map(|v| json_to_cbor(v, "")).collect())
        }
        (Value::Object(m), _) => Cbor::Map(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (Cbor::Text(k.clone()), json_to_cbor(v, "")))
                .collect(),
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_become_tag_1_and_back() {
        let out = json!({"Operation": {"Id": "x", "CreateDate": 1700000000.5, "Targets": {"NAMESPACE": "ns-1"}}});
        let cbor = json_to_cbor(&out, "GetOperationResponse");
        let Cbor::Map(top) = &cbor else {
            panic!("{cbor:?}")
        };
        let Cbor::Map(op) = &top[0].1 else { panic!() };
        let date = op
            .iter()
            .find(|(k, _)| k == &Cbor::Text("CreateDate".into()))
            .map(|(_, v)| v);
        assert_eq!(
            date,
            Some(&Cbor::Tag(1, Box::new(Cbor::Float(1700000000.5))))
        );
        assert_eq!(cbor_to_json(cbor).unwrap_or_default(), out);
    }

    #[test]
    fn counts_stay_integers_in_cbor() {
        let cbor = json_to_cbor(
            &json!({"Namespace": {"ServiceCount": 3}}),
            "GetNamespaceResponse",
        );
        let Cbor::Map(top) = cbor else { panic!() };
        let Cbor::Map(ns) = &top[0].1 else { panic!() };
        assert_eq!(ns[0].1, Cbor::Integer(3.into()));
    }
}
