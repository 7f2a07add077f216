//! The client side of Weft's admin endpoints, for `weft access-key` and `weft join-token`:
//! credentials found where the AWS CLI finds them, and requests signed with SigV4 for the
//! service `weft` by the same `aws-sigv4` crate the server verifies with.
//!
//! Credentials come from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, else from the
//! shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`),
//! profile `AWS_PROFILE` or `default`
//! (<https://docs.aws.amazon.com/cli/latest/userguide/cli-configure-envvars.html>). The region
//! is `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `us-east-1`. Without credentials the
//! request goes unsigned, which a server started with `--insecure-no-auth` accepts.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::keys::Secret;
use crate::AuthError;

/// A key to sign with, and the region to scope it to.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The access key id.
    pub key_id: String,
    /// The secret.
    pub secret: Secret,
    /// The region of the credential scope.
    pub region: String,
}

/// Reads a profile of an AWS shared credentials file.
pub fn read_profile(text: &str, profile: &str) -> Option<(String, Secret)> {
    let mut in_profile = false;
    let (mut id, mut secret) = (None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            match k.trim() {
                "aws_access_key_id" => id = Some(v.trim().to_string()),
                "aws_secret_access_key" => secret = Some(Secret::new(v.trim())),
                _ => {}
            }
        }
    }
    Some((id?, secret?))
}

/// The credentials of the environment, as the AWS CLI finds them; `None` if there are none.
pub fn from_environment() -> Result<Option<ClientCredentials>, AuthError> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let region = env("AWS_REGION")
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Ok(Some(ClientCredentials {
            key_id: id,
            secret: Secret::new(secret),
            region,
        }));
    }
    let path = match env("AWS_SHARED_CREDENTIALS_FILE") {
        Some(p) => std::path::PathBuf::from(p),
        None => match env("HOME") {
            Some(home) => std::path::Path::new(&home).join(".aws/credentials"),
            None => return Ok(None),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(AuthError::Client(format!(
                "reading AWS credentials from {}: {e}",
                path.display()
            )))
        }
    };
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    Ok(
        read_profile(&text, &profile).map(|(key_id, secret)| ClientCredentials {
            key_id,
            secret,
            region,
        }),
    )
}

/// An answer from the server.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Bytes,
}

/// Signs `request` (whose body is `body`) for `service` with `creds` at `now`.
pub fn sign_request(
    request: &mut http::Request<Full<Bytes>>,
    body: &[u8],
    creds: &ClientCredentials,
    service: &str,
    now: SystemTime,
) -> Result<(), AuthError> {
    let identity: Identity =
        Credentials::new(&creds.key_id, creds.secret.expose(), None, None, "weft").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(&creds.region)
        .name(service)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| AuthError::Client(format!("signing the request: {e}")))?
        .into();
    let headers: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
        .collect();
    let uri = request.uri().to_string();
    let signable = SignableRequest::new(
        request.method().as_str(),
        uri.as_str(),
        headers.into_iter(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| AuthError::Client(format!("signing the request: {e}")))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| AuthError::Client(format!("signing the request: {e}")))?
        .into_parts();
    instructions.apply_to_request_http1x(request);
    Ok(())
}

/// The headers (`x-amz-date`, `authorization`) that sign a request to `authority` for
/// `service`: `method path` with `headers` (besides `host`) and `body`, for callers with an HTTP
/// client of their own.
#[allow(clippy::too_many_arguments)]
pub fn signature_headers(
    method: &str,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    creds: &ClientCredentials,
    service: &str,
    now: SystemTime,
) -> Result<Vec<(String, String)>, AuthError> {
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{authority}{path}"))
        .header(http::header::HOST, authority);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(|e| AuthError::Client(format!("building the request: {e}")))?;
    sign_request(&mut request, body, creds, service, now)?;
    Ok(["x-amz-date", "authorization"]
        .iter()
        .filter_map(|name| {
            let value = request.headers().get(*name)?.to_str().ok()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect())
}

/// One HTTP/1.1 exchange with the server at `base` (`http://host:port` or `host:port`), signed
/// for the service `weft` when `creds` are given.
pub async fn exchange(
    base: &str,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    creds: Option<&ClientCredentials>,
) -> Result<Answer, AuthError> {
    let json = [(http::header::CONTENT_TYPE.as_str(), "application/json")];
    let headers: &[(&str, &str)] = if body.is_some() { &json } else { &[] };
    exchange_as("weft", base, method, path, headers, body, creds).await
}

/// Like [`exchange`], for any of the server's APIs: signed for `service` (`appmesh`,
/// `servicediscovery`, `weft`) with `headers` (a body's content type included) sent and signed.
pub async fn exchange_as(
    service: &str,
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
    creds: Option<&ClientCredentials>,
) -> Result<Answer, AuthError> {
    if base.starts_with("https://") {
        return Err(AuthError::Client(
            "--server must be an http:// address (the API listener speaks plain HTTP)".into(),
        ));
    }
    let authority = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let unreachable = |e: &dyn std::fmt::Display| {
        AuthError::Client(format!("cannot reach the server at {authority}: {e}"))
    };
    let body = body.unwrap_or_default();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{authority}{path}"))
        .header(http::header::HOST, &authority);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request
        .body(Full::new(Bytes::from(body.clone())))
        .map_err(|e| AuthError::Client(format!("building the request: {e}")))?;
    if let Some(creds) = creds {
        sign_request(&mut request, &body, creds, service, SystemTime::now())?;
    }
    // HTTP/1.1 sends the path alone as the request target.
    let (mut parts, body) = request.into_parts();
    parts.uri = path
        .parse()
        .map_err(|e| AuthError::Client(format!("building the request: {e}")))?;
    let request = http::Request::from_parts(parts, body);
    let work = async {
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| unreachable(&e))?;
        tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        Ok(Answer { status, body })
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| {
            AuthError::Client(format!("the server at {authority} did not answer in 10 s"))
        })?
}

/// The error an admin endpoint answered, as a message for people, with a hint when it is an
/// authentication error.
pub fn error_message(answer: &Answer) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorJson {
        code: String,
        message: String,
    }
    let (text, code) = match serde_json::from_slice::<ErrorJson>(&answer.body) {
        Ok(e) => (format!("{}: {}", e.code, e.message), e.code),
        Err(_) => (
            String::from_utf8_lossy(&answer.body).into_owned(),
            String::new(),
        ),
    };
    let hint = match code.as_str() {
        "MissingAuthenticationTokenException" | "UnrecognizedClientException" => {
            " (sign with an administrator key: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
             or AWS_SHARED_CREDENTIALS_FILE=<data-dir>/admin-credentials)"
        }
        _ => "",
    };
    format!("the server answered {}: {text}{hint}", answer.status)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_profile_is_read_from_a_credentials_file() {
        let text = "# c\n[other]\naws_access_key_id = A\naws_secret_access_key = B\n\
                    [default]\naws_access_key_id=AKIAX\naws_secret_access_key = s/e+c\n";
        let (id, secret) = read_profile(text, "default").unwrap();
        assert_eq!((id.as_str(), secret.expose()), ("AKIAX", "s/e+c"));
        assert_eq!(read_profile(text, "other").unwrap().0, "A");
        assert!(read_profile(text, "none").is_none());
    }
}
