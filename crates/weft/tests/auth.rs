//! A real `weft server` checks AWS Signature Version 4 on its APIs: the official AWS SDK for
//! Rust and the AWS CLI with a key the server holds are served, and a wrong secret, an unknown
//! key, a signature from a clock 20 minutes off, a body or signed header changed after signing,
//! no signature or a garbage one each get AWS's error — with nothing stored. Keys made with
//! `weft access-key` carry policies: a read-only key describes but cannot create, a key limited
//! to mesh `dev` cannot touch mesh `prod`, and a revoked key is refused at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use aws_sdk_appmesh::config::retry::RetryConfig;
use aws_sdk_appmesh::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_appmesh::Client;
use common::{admin_key, aws_env, error_code, WeftServer};

/// An App Mesh client signing with `id` and `secret`, never retrying, and reading the time from
/// `clock` when given.
fn client_with(server: &WeftServer, id: &str, secret: &str, clock: Option<SystemTime>) -> Client {
    let mut config = aws_sdk_appmesh::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(id, secret, None, None, "auth-tests"))
        .endpoint_url(&server.addr)
        .retry_config(RetryConfig::disabled());
    if let Some(at) = clock {
        config = config.time_source(aws_smithy_async::time::StaticTimeSource::new(at));
    }
    Client::from_conf(config.build())
}

/// A Cloud Map client signing with `id` and `secret`.
fn cloud_map_with(server: &WeftServer, id: &str, secret: &str) -> aws_sdk_servicediscovery::Client {
    cloud_map_over(server, id, secret, false)
}

/// A Cloud Map client signing with `id` and `secret`, over RPC v2 CBOR if `cbor`.
fn cloud_map_over(
    server: &WeftServer,
    id: &str,
    secret: &str,
    cbor: bool,
) -> aws_sdk_servicediscovery::Client {
    let config = aws_sdk_servicediscovery::Config::builder()
        .behavior_version(aws_sdk_servicediscovery::config::BehaviorVersion::latest())
        .region(aws_sdk_servicediscovery::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_servicediscovery::config::Credentials::new(
            id,
            secret,
            None,
            None,
            "auth-tests",
        ))
        .endpoint_url(&server.addr)
        .retry_config(aws_sdk_servicediscovery::config::retry::RetryConfig::disabled());
    let config = if cbor {
        config.protocol(aws_smithy_cbor::protocol::RpcV2CborProtocol::new())
    } else {
        config
    };
    aws_sdk_servicediscovery::Client::from_conf(config.build())
}

fn message<E, R>(e: &aws_sdk_appmesh::error::SdkError<E, R>) -> String
where
    E: aws_sdk_appmesh::error::ProvideErrorMetadata,
{
    e.as_service_error()
        .and_then(|s| s.message())
        .unwrap_or_default()
        .to_string()
}

const MISMATCH: &str = "The request signature we calculated does not match the signature you \
     provided. Check your AWS Secret Access Key and signing method. Consult the service \
     documentation for details.";

/// Runs `weft access-key <args>` against `server` as its administrator: stdout, or stderr.
fn access_key(server: &WeftServer, args: &[&str]) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("access-key")
        .args(args)
        .args(["--server", &server.addr])
        .envs(aws_env(&server.addr))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A new key with `policy`: its id and secret, read from the credentials file the CLI prints.
fn new_key(server: &WeftServer, name: &str, policy: &str) -> (String, String) {
    let file = access_key(server, &["create", "--name", name, "--policy", policy]).unwrap();
    let value = |k: &str| {
        file.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(n, _)| n.trim() == k)
            .map(|(_, v)| v.trim().to_string())
            .unwrap()
    };
    (value("aws_access_key_id"), value("aws_secret_access_key"))
}

#[tokio::test]
async fn the_sdk_and_the_cli_with_a_real_key_are_served_and_a_wrong_secret_or_unknown_key_is_refused(
) {
    let server = WeftServer::start();
    let (id, secret) = admin_key(&server.addr);
    assert!(id.starts_with("AKIA") && id.len() == 20, "{id}");
    assert_eq!(secret.len(), 40);
    let credentials = std::fs::read_to_string(server.data_dir.join("admin-credentials")).unwrap();
    assert!(credentials.contains("[default]"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(server.data_dir.join("admin-credentials"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let admin = client_with(&server, &id, &secret, None);
    admin.create_mesh().mesh_name("apps").send().await.unwrap();
    let listed = common::aws_appmesh(&server.addr, &["list-meshes"]).unwrap();
    assert_eq!(listed["meshes"][0]["meshName"], "apps");
    // The AWS CLI reads the credentials file the server wrote, as users point it there.
    let out = Command::new("aws")
        .args([
            "appmesh",
            "describe-mesh",
            "--mesh-name",
            "apps",
            "--output",
            "json",
        ])
        .args(["--endpoint-url", &server.addr])
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            server.data_dir.join("admin-credentials"),
        )
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_MAX_ATTEMPTS", "1")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let wrong = client_with(
        &server,
        &id,
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        None,
    );
    let e = wrong
        .create_mesh()
        .mesh_name("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "InvalidSignatureException");
    assert_eq!(message(&e), MISMATCH);
    let unknown = client_with(&server, "AKIAIOSFODNN7EXAMPLE", &secret, None);
    let e = unknown.list_meshes().send().await.unwrap_err();
    assert_eq!(error_code(&e), "UnrecognizedClientException");
    assert_eq!(
        message(&e),
        "The security token included in the request is invalid."
    );
    let out = Command::new("aws")
        .args(["appmesh", "list-meshes", "--endpoint-url", &server.addr])
        .env("AWS_ACCESS_KEY_ID", &id)
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_MAX_ATTEMPTS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("(InvalidSignatureException) when calling the ListMeshes operation"),
        "{stderr}"
    );

    // Cloud Map too, in its own protocol's words.
    let cloud_map = cloud_map_with(&server, &id, &secret);
    cloud_map.list_namespaces().send().await.unwrap();
    let e = cloud_map_with(&server, "AKIAIOSFODNN7EXAMPLE", &secret)
        .list_namespaces()
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        e.as_service_error().and_then(|s| s.meta().code()),
        Some("UnrecognizedClientException")
    );
    let e = cloud_map_with(&server, &id, "wrong")
        .list_namespaces()
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        e.as_service_error().and_then(|s| s.meta().code()),
        Some("InvalidSignatureException")
    );

    let meshes = admin.list_meshes().send().await.unwrap().meshes;
    assert_eq!(meshes.len(), 1, "nothing refused was stored");
}

#[tokio::test]
async fn a_signature_from_a_clock_20_minutes_off_is_expired_or_not_yet_current() {
    let server = WeftServer::start();
    let (id, secret) = admin_key(&server.addr);
    let past = SystemTime::now() - Duration::from_secs(20 * 60);
    let e = client_with(&server, &id, &secret, Some(past))
        .list_meshes()
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "InvalidSignatureException");
    let text = message(&e);
    assert!(
        text.starts_with("Signature expired: ")
            && text.contains(" is now earlier than ")
            && text.ends_with(" - 5 min.)"),
        "{text}"
    );
    let future = SystemTime::now() + Duration::from_secs(20 * 60);
    let e = client_with(&server, &id, &secret, Some(future))
        .create_mesh()
        .mesh_name("later")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "InvalidSignatureException");
    let text = message(&e);
    assert!(
        text.starts_with("Signature not yet current: ") && text.contains(" is still later than "),
        "{text}"
    );
    // Four minutes off is within AWS's five.
    let near = SystemTime::now() - Duration::from_secs(4 * 60);
    client_with(&server, &id, &secret, Some(near))
        .list_meshes()
        .send()
        .await
        .unwrap();
    assert!(client_with(&server, &id, &secret, None)
        .list_meshes()
        .send()
        .await
        .unwrap()
        .meshes
        .is_empty());
}

/// A CreateMesh request for `mesh`, signed as the SDKs sign it, sent with `tamper` applied to
/// its body and headers after signing: the status, the error type and the body.
async fn send_signed(
    server: &WeftServer,
    mesh: &str,
    tamper: impl FnOnce(&mut Vec<u8>, &mut Vec<(String, String)>),
) -> (u16, String, String) {
    let (id, secret) = admin_key(&server.addr);
    let authority = server.addr.trim_start_matches("http://");
    let mut body = format!("{{\"meshName\":\"{mesh}\"}}").into_bytes();
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("x-weft-note".to_string(), "signed".to_string()),
    ];
    let creds = weft_auth::client::ClientCredentials {
        key_id: id,
        secret: weft_auth::Secret::new(secret),
        region: "us-east-1".into(),
    };
    let plain: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let signature = weft_auth::client::signature_headers(
        "PUT",
        authority,
        "/v20190125/meshes",
        &plain,
        &body,
        &creds,
        "appmesh",
        SystemTime::now(),
    )
    .unwrap();
    headers.extend(signature);
    tamper(&mut body, &mut headers);
    let mut request = reqwest::Client::new()
        .put(format!("{}/v20190125/meshes", server.addr))
        .body(body);
    for (n, v) in &headers {
        request = request.header(n.as_str(), v.as_str());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("x-amzn-ErrorType")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, kind, response.text().await.unwrap())
}

#[tokio::test]
async fn a_body_or_signed_header_changed_after_signing_is_refused_and_nothing_is_stored() {
    let server = WeftServer::start();
    let (status, kind, body) = send_signed(&server, "good", |_, _| {}).await;
    assert_eq!((status, kind.as_str()), (200, ""), "{body}");
    let (status, kind, body) = send_signed(&server, "evil", |body, _| {
        // One byte of the body: the mesh's name.
        let at = body.iter().position(|b| *b == b'e').unwrap();
        body[at] = b'E';
    })
    .await;
    assert_eq!((status, kind.as_str()), (403, "InvalidSignatureException"));
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["message"], MISMATCH);
    let (status, kind, _) = send_signed(&server, "evil", |_, headers| {
        for (n, v) in headers.iter_mut() {
            if n == "x-weft-note" {
                *v = "signeD".into();
            }
        }
    })
    .await;
    assert_eq!((status, kind.as_str()), (403, "InvalidSignatureException"));
    // Without any signature, or with garbage.
    let http = reqwest::Client::new();
    let url = format!("{}/v20190125/meshes", server.addr);
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(
        response.headers()["x-amzn-ErrorType"],
        "MissingAuthenticationTokenException"
    );
    for garbage in ["Basic dXNlcjpwYXNz", "AWS4-HMAC-SHA256 nonsense", "\u{1}"] {
        let response = http
            .get(&url)
            .header("authorization", garbage.replace('\u{1}', "x"))
            .header("x-amz-date", "20260101T000000Z")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 403, "{garbage}");
        assert_eq!(
            response.headers()["x-amzn-ErrorType"],
            "IncompleteSignatureException",
            "{garbage}"
        );
    }
    // Cloud Map unsigned: its own protocol's shape.
    let response = http
        .post(format!("{}/", server.addr))
        .header("x-amz-target", "Route53AutoNaming_v20170314.ListNamespaces")
        .header("content-type", "application/x-amz-json-1.1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["__type"], "MissingAuthenticationTokenException");
    // The health check stays open, and the server kept serving.
    assert_eq!(server.health().await, (200, "ok\n".to_string()));
    let meshes = server.client().list_meshes().send().await.unwrap().meshes;
    let names: Vec<&str> = meshes.iter().map(|m| m.mesh_name()).collect();
    assert_eq!(names, ["good"]);
}

#[tokio::test]
async fn keys_made_with_the_cli_carry_their_policy_and_a_revoked_key_is_refused_at_once() {
    let server = WeftServer::start();
    let admin = server.client();
    admin.create_mesh().mesh_name("dev").send().await.unwrap();
    admin.create_mesh().mesh_name("prod").send().await.unwrap();

    // A read-only key describes and lists, and is forbidden to create.
    let (ro_id, ro_secret) = new_key(&server, "reader", "AWSAppMeshReadOnly");
    let reader = client_with(&server, &ro_id, &ro_secret, None);
    reader
        .describe_mesh()
        .mesh_name("prod")
        .send()
        .await
        .unwrap();
    assert_eq!(reader.list_meshes().send().await.unwrap().meshes.len(), 2);
    let e = reader
        .create_mesh()
        .mesh_name("mine")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "ForbiddenException");
    assert!(
        message(&e).contains("appmesh:CreateMesh"),
        "{}",
        message(&e)
    );
    // Nor may it use Cloud Map, or the admin endpoints.
    let e = cloud_map_with(&server, &ro_id, &ro_secret)
        .list_namespaces()
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        e.as_service_error().and_then(|s| s.meta().code()),
        Some("AccessDeniedException")
    );
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "join-token",
            "create",
            "--resource",
            "mesh/dev/virtualNode/x",
        ])
        .args(["--server", &server.addr])
        .envs(aws_env(&server.addr))
        .env("AWS_ACCESS_KEY_ID", &ro_id)
        .env("AWS_SECRET_ACCESS_KEY", &ro_secret)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("AccessDeniedException"));
    // Without credentials the CLI says how to sign.
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["join-token", "list", "--server", &server.addr])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("MissingAuthenticationTokenException")
            && stderr.contains("admin-credentials"),
        "{stderr}"
    );

    // A key limited to mesh dev works there and cannot touch prod.
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"appmesh:*",
        "Resource":["arn:aws:appmesh:*:*:mesh/dev","arn:aws:appmesh:*:*:mesh/dev/*"]}]}"#;
    let (dev_id, dev_secret) = new_key(&server, "dev-team", policy);
    let dev = client_with(&server, &dev_id, &dev_secret, None);
    dev.create_virtual_node()
        .mesh_name("dev")
        .virtual_node_name("red")
        .spec(common::dns_node_spec("red.dev.local", 8080))
        .send()
        .await
        .unwrap();
    dev.describe_mesh().mesh_name("dev").send().await.unwrap();
    let e = dev
        .describe_mesh()
        .mesh_name("prod")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "ForbiddenException");
    let e = dev
        .create_virtual_node()
        .mesh_name("prod")
        .virtual_node_name("red")
        .spec(common::dns_node_spec("red.prod.local", 8080))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "ForbiddenException");
    let e = dev
        .delete_mesh()
        .mesh_name("prod")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "ForbiddenException");
    let e = dev.list_meshes().send().await.unwrap_err();
    assert_eq!(error_code(&e), "ForbiddenException", "ListMeshes is on *");
    // A policy that does not parse is refused, and no key is made.
    let bad = access_key(
        &server,
        &["create", "--name", "bad", "--policy", "{\"Statement\":"],
    );
    assert!(bad.is_err());
    let bad = access_key(
        &server,
        &["create", "--name", "bad", "--policy", "NoSuchPolicy"],
    )
    .unwrap_err();
    assert!(bad.contains("No managed policy named"), "{bad}");

    // Listing shows every key without a secret; revoking one refuses it at once.
    let listed = access_key(&server, &["list"]).unwrap();
    assert!(
        listed.contains(&ro_id)
            && listed.contains(&dev_id)
            && listed.contains("AdministratorAccess")
    );
    assert!(!listed.contains(&ro_secret) && !listed.contains(&dev_secret));
    access_key(&server, &["revoke", &dev_id]).unwrap();
    let e = dev
        .describe_mesh()
        .mesh_name("dev")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&e), "UnrecognizedClientException");
    assert!(access_key(&server, &["list"]).unwrap().contains("revoked"));
    let nodes = admin
        .list_virtual_nodes()
        .mesh_name("prod")
        .send()
        .await
        .unwrap()
        .virtual_nodes;
    assert!(nodes.is_empty(), "nothing denied was stored");
}

#[tokio::test]
async fn with_insecure_no_auth_unsigned_requests_are_served_and_the_server_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["server", "--insecure-no-auth", "--insecure-plaintext-xds"])
        .args(["--listen", "127.0.0.1:0", "--xds-listen", "127.0.0.1:0"])
        .args(["--dns-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let stderr = child.stderr.take().unwrap();
    // Read to the end: a closed pipe would end the server at its next log line.
    let warning = std::thread::spawn(move || {
        let lines: Vec<String> = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect();
        lines.into_iter().find(|l| l.contains("--insecure-no-auth"))
    });
    let mut api = None;
    let mut said_so = false;
    for line in stdout.lines().map_while(Result::ok) {
        if let Some(url) = line.strip_prefix("weft api listening on ") {
            api = Some(url.to_string());
        }
        if line.contains("UNAUTHENTICATED") {
            said_so = true;
            break;
        }
    }
    assert!(said_so, "stdout says the API is unauthenticated");
    let api = api.unwrap();
    let response = reqwest::get(format!("{api}/v20190125/meshes"))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["proxy-status", "--endpoint", &api])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("WARNING: the API authenticates none (--insecure-no-auth)"),
        "{table}"
    );
    // Any credentials at all, as before.
    let config = aws_sdk_appmesh::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("weft", "weft", None, None, "static"))
        .endpoint_url(&api)
        .build();
    Client::from_conf(config)
        .create_mesh()
        .mesh_name("demo")
        .send()
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = warning.join().unwrap().expect("a warning in the log");
    assert!(line.contains("WARN"), "{line}");
}

#[tokio::test]
async fn cloud_map_over_rpc_v2_cbor_is_verified_and_refused_in_its_own_shape() {
    let server = WeftServer::start();
    let (id, secret) = admin_key(&server.addr);
    let admin = cloud_map_over(&server, &id, &secret, true);
    admin
        .create_http_namespace()
        .name("apps.local")
        .send()
        .await
        .unwrap();
    assert_eq!(
        admin
            .list_namespaces()
            .send()
            .await
            .unwrap()
            .namespaces()
            .len(),
        1
    );
    let code = |e: &aws_sdk_servicediscovery::error::SdkError<_, _>| {
        use aws_sdk_servicediscovery::error::ProvideErrorMetadata;
        e.as_service_error()
            .and_then(
                |s: &aws_sdk_servicediscovery::operation::list_namespaces::ListNamespacesError| {
                    s.code()
                },
            )
            .map(str::to_string)
    };
    let e = cloud_map_over(&server, "AKIAIOSFODNN7EXAMPLE", &secret, true)
        .list_namespaces()
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e).as_deref(), Some("UnrecognizedClientException"));
    let e = cloud_map_over(&server, &id, "wrong", true)
        .list_namespaces()
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&e).as_deref(), Some("InvalidSignatureException"));
    // A key for Cloud Map reads lists, and is denied a write.
    let (ro_id, ro_secret) = new_key(&server, "cm-reader", "AWSCloudMapReadOnlyAccess");
    let reader = cloud_map_over(&server, &ro_id, &ro_secret, true);
    reader.list_namespaces().send().await.unwrap();
    let e = reader
        .create_http_namespace()
        .name("mine.local")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        aws_sdk_servicediscovery::error::ProvideErrorMetadata::code(&e),
        Some("AccessDeniedException")
    );
}

/// The audit log's records (as its administrator) for `key_id`, oldest first.
async fn audit_of(server: &WeftServer, key_id: &str) -> Vec<serde_json::Value> {
    let answer = common::signed_request(
        &server.addr,
        "GET",
        &format!("/weft/v1/audit?keyId={key_id}&limit=1000"),
        None,
        "weft",
    )
    .await;
    assert_eq!(answer.status().as_u16(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    body["auditRecords"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_write_and_every_refusal_is_audited_with_key_operation_arn_and_outcome_and_survives_kill_9(
) {
    let mut server = WeftServer::start();
    let (admin_id, _) = admin_key(&server.addr);
    let client = server.client();
    client
        .create_mesh()
        .mesh_name("audited")
        .send()
        .await
        .unwrap();
    client
        .describe_mesh()
        .mesh_name("audited")
        .send()
        .await
        .unwrap();
    let (ro_id, ro_secret) = new_key(&server, "auditor", "AWSAppMeshReadOnly");
    let reader = client_with(&server, &ro_id, &ro_secret, None);
    let refused = reader
        .create_mesh()
        .mesh_name("not-allowed")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&refused), "ForbiddenException");
    let stranger = client_with(&server, "AKIAWEFTUNKNOWN00000", "secret", None);
    assert!(stranger.list_meshes().send().await.is_err());

    // The write and the key's creation, not the read; the refusal with the reader's key; the
    // unknown key's refusal under the id it claimed.
    let admin = audit_of(&server, &admin_id).await;
    let operations: Vec<&str> = admin
        .iter()
        .map(|r| r["operation"].as_str().unwrap())
        .collect();
    assert_eq!(operations, ["appmesh:CreateMesh", "weft:CreateAccessKey"]);
    assert_eq!(
        admin[0]["resource"],
        "arn:aws:appmesh:us-east-1:000000000000:mesh/audited"
    );
    assert_eq!(admin[0]["outcome"], "Success");
    assert_eq!(admin[0]["status"], 200);
    let denied = audit_of(&server, &ro_id).await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["operation"], "appmesh:CreateMesh");
    assert_eq!(denied[0]["outcome"], "ForbiddenException");
    assert_eq!(
        denied[0]["resource"],
        "arn:aws:appmesh:us-east-1:000000000000:mesh/not-allowed"
    );
    let unknown = audit_of(&server, "AKIAWEFTUNKNOWN00000").await;
    assert_eq!(unknown[0]["outcome"], "UnrecognizedClientException");
    // A read-only key may not read the audit log.
    let answer = reqwest::Client::new()
        .get(format!("{}/weft/v1/audit", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 403, "unsigned");

    // An acknowledged write's record is on disk before its answer: kill -9 right after it.
    client
        .create_mesh()
        .mesh_name("last-word")
        .send()
        .await
        .unwrap();
    let dir = server.keep_dir().unwrap();
    server.kill9();
    let text = std::fs::read_to_string(dir.path().join("data/audit.jsonl")).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("mesh/last-word") && l.contains("\"Success\"")),
        "{text}"
    );
    let restarted = WeftServer::start_in(&dir.path().join("data"), &[]);
    let admin = audit_of(&restarted, &admin_id).await;
    assert_eq!(
        admin.last().unwrap()["resource"],
        "arn:aws:appmesh:us-east-1:000000000000:mesh/last-word"
    );
}

#[tokio::test]
async fn without_authentication_every_write_is_still_audited_as_anonymous_before_its_answer() {
    let mut server = WeftServer::start_with(&["--insecure-no-auth"]);
    // Any credentials are accepted, and so is no signature at all.
    let client = client_with(&server, "AKIAWHOEVER000000000", "any secret", None);
    client.create_mesh().mesh_name("open").send().await.unwrap();
    client
        .create_virtual_node()
        .mesh_name("open")
        .virtual_node_name("red")
        .spec(common::dns_node_spec("red.local", 8080))
        .send()
        .await
        .unwrap();
    client
        .describe_mesh()
        .mesh_name("open")
        .send()
        .await
        .unwrap();
    let again = client
        .create_mesh()
        .mesh_name("open")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(&again), "ConflictException");
    let unsigned = reqwest::Client::new()
        .delete(format!(
            "{}/v20190125/meshes/open/virtualNodes/red",
            server.addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 200);

    // Writes only, served or failed, each with the resource it named and the anonymous key.
    let answer = reqwest::Client::new()
        .get(format!("{}/weft/v1/audit?keyId=anonymous", server.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    let records = body["auditRecords"].as_array().unwrap();
    let seen: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            assert_eq!(r["keyId"], "anonymous", "{r}");
            assert_eq!(r["source"], "127.0.0.1", "{r}");
            (
                r["operation"].as_str().unwrap(),
                r["resource"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    let mesh = "arn:aws:appmesh:us-east-1:000000000000:mesh/open";
    let node = "arn:aws:appmesh:us-east-1:000000000000:mesh/open/virtualNode/red";
    assert_eq!(
        seen,
        [
            ("appmesh:CreateMesh", mesh, "Success"),
            ("appmesh:CreateVirtualNode", node, "Success"),
            ("appmesh:CreateMesh", mesh, "ConflictException"),
            ("appmesh:DeleteVirtualNode", node, "Success"),
        ]
    );

    // Durable before the answer, as with authentication: kill -9 right after a write.
    client
        .create_mesh()
        .mesh_name("last-word")
        .send()
        .await
        .unwrap();
    let dir = server.keep_dir().unwrap();
    server.kill9();
    let text = std::fs::read_to_string(dir.path().join("data/audit.jsonl")).unwrap();
    assert!(
        text.lines().any(|l| l.contains("mesh/last-word")
            && l.contains("\"anonymous\"")
            && l.contains("\"Success\"")),
        "{text}"
    );
}
