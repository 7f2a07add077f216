//! The server's App Mesh (REST JSON) and Cloud Map (JSON 1.1) APIs as a backup reads and a
//! restore writes them: requests built from the App Mesh model Weft serves (paths, labels,
//! query parameters), signed with SigV4 for `appmesh` or `servicediscovery` as the AWS SDKs
//! sign them (aws-sigv4, through `weft_auth::client`).

use serde_json::{Map, Value};
use weft_auth::client::ClientCredentials;
use weft_model::{schema, Location, ShapeKind};

use crate::BackupError;

/// The App Mesh API's error type for a resource that already exists.
pub const CONFLICT: &str = "ConflictException";

/// A signed client of one server's APIs.
pub struct Client {
    base: String,
    creds: Option<ClientCredentials>,
}

impl Client {
    /// A client of the server at `endpoint` (`http://host:port` or `host:port`), signing with
    /// `creds` (unsigned without: only a server with `--insecure-no-auth` answers).
    pub fn new(endpoint: &str, creds: Option<ClientCredentials>) -> Client {
        Client {
            base: endpoint.trim_end_matches('/').to_string(),
            creds,
        }
    }

    /// One App Mesh operation with `input` (the operation's input shape as JSON, labels and
    /// query members included); its output (the payload member's value for operations whose
    /// output is one, such as Describe and Create).
    pub async fn app_mesh(&self, operation: &str, input: &Value) -> Result<Value, BackupError> {
        let (method, path, body) = rest_request(operation, input)?;
        let json = [("content-type", "application/json")];
        let headers: &[(&str, &str)] = if body.is_some() { &json } else { &[] };
        let answer = weft_auth::client::exchange_as(
            "appmesh",
            &self.base,
            method,
            &path,
            headers,
            body,
            self.creds.as_ref(),
        )
        .await
        .map_err(|e| BackupError::Unreachable(e.to_string()))?;
        decode(operation, answer)
    }

    /// One Cloud Map operation (JSON 1.1, `Route53AutoNaming_v20170314.<operation>`).
    pub async fn cloud_map(&self, operation: &str, input: &Value) -> Result<Value, BackupError> {
        let target = format!("Route53AutoNaming_v20170314.{operation}");
        let headers = [
            ("content-type", "application/x-amz-json-1.1"),
            ("x-amz-target", target.as_str()),
        ];
        let answer = weft_auth::client::exchange_as(
            "servicediscovery",
            &self.base,
            "POST",
            "/",
            &headers,
            Some(input.to_string().into_bytes()),
            self.creds.as_ref(),
        )
        .await
        .map_err(|e| BackupError::Unreachable(e.to_string()))?;
        decode(operation, answer)
    }
}

/// The answer's JSON, or the API error it carries (`x-amzn-ErrorType` is also in the body's
/// `__type` for Cloud Map; App Mesh's body has `message`).
fn decode(operation: &str, answer: weft_auth::client::Answer) -> Result<Value, BackupError> {
    let value: Value = if answer.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&answer.body).unwrap_or(Value::Null)
    };
    if (200..300).contains(&answer.status) {
        return Ok(value);
    }
    let code = value["__type"]
        .as_str()
        .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
        .unwrap_or_else(|| error_type_of_status(answer.status).to_string());
    let message = value["message"]
        .as_str()
        .or(value["Message"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned());
    Err(BackupError::Api {
        operation: operation.to_string(),
        code,
        message,
    })
}

/// App Mesh's error type by HTTP status, for an answer whose body does not name it
/// (https://docs.aws.amazon.com/app-mesh/latest/APIReference/CommonErrors.html).
fn error_type_of_status(status: u16) -> &'static str {
    match status {
        400 => "BadRequestException",
        403 => "ForbiddenException",
        404 => "NotFoundException",
        409 => CONFLICT,
        429 => "TooManyRequestsException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerErrorException",
    }
}

/// The method, path (with its query string) and body of an App Mesh operation, from the model:
/// members bound to `{label}`s go in the path, query members in the query string, the rest in
/// the JSON body. Pure.
pub fn rest_request(
    operation: &str,
    input: &Value,
) -> Result<(&'static str, String, Option<Vec<u8>>), BackupError> {
    let model = schema();
    let unknown = || BackupError::Format(format!("the App Mesh model has no {operation}"));
    let op = model.operations.get(operation).ok_or_else(unknown)?;
    let Some(ShapeKind::Structure { members, .. }) = model.shape(&op.input).map(|s| &s.kind) else {
        return Err(unknown());
    };
    let mut path = op.uri.clone();
    let mut query = Vec::new();
    let mut body = Map::new();
    let fields = input.as_object().cloned().unwrap_or_default();
    for (name, value) in fields {
        let text = match &value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match members.get(&name).map(|m| &m.location) {
            Some(Location::Uri(label)) => {
                path = path.replace(&format!("{{{label}}}"), &percent_encode(&text));
            }
            Some(Location::Query(param)) => {
                query.push(format!("{param}={}", percent_encode(&text)));
            }
            _ => {
                body.insert(name, value);
            }
        }
    }
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let method: &'static str = match op.method.as_str() {
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        _ => "GET",
    };
    let body = (method != "GET" && method != "DELETE")
        .then(|| serde_json::to_vec(&Value::Object(body)))
        .transpose()
        .map_err(|e| BackupError::Format(format!("encoding {operation}'s input: {e}")))?;
    Ok((method, path, body))
}

/// RFC 3986 percent-encoding of everything but unreserved characters, as SigV4 canonicalizes
/// a path segment or query value.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_go_in_the_path_the_page_token_in_the_query_and_the_rest_in_the_body() {
        let (method, path, body) = rest_request(
            "CreateVirtualNode",
            &json!({"meshName": "apps", "virtualNodeName": "red", "spec": {}, "tags": []}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(method, "PUT");
        assert_eq!(path, "/v20190125/meshes/apps/virtualNodes");
        let body: Value = serde_json::from_slice(&body.unwrap_or_default()).unwrap_or_default();
        assert_eq!(
            body,
            json!({"virtualNodeName": "red", "spec": {}, "tags": []})
        );
        let (method, path, body) = rest_request(
            "ListRoutes",
            &json!({"meshName": "apps", "virtualRouterName": "r", "nextToken": "a+b/c=", "limit": 100}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(method, "GET");
        assert_eq!(
            path,
            "/v20190125/meshes/apps/virtualRouter/r/routes?limit=100&nextToken=a%2Bb%2Fc%3D"
        );
        assert_eq!(body, None);
    }

    #[test]
    fn an_operation_the_model_does_not_have_is_refused() {
        assert!(rest_request("CreateWidget", &json!({})).is_err());
    }
}
