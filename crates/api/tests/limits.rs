//! The App Mesh API over HTTP, as careless and hostile clients meet it: names
//! that would break ARNs, bodies past the limit, a client holding many
//! requests in flight, a flood of distinct client tokens — and List answers
//! read by a JSON parser that refuses repeated keys.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_api::{ApiConfig, Service};
use weft_store::{EmbeddedOptions, EmbeddedStore, Range, SharedStore};

/// A served API: its address, the service, the store, and the data folder.
struct Served {
    addr: SocketAddr,
    service: Service,
    store: SharedStore,
    _dir: tempfile::TempDir,
}

async fn serve(config: ApiConfig) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = EmbeddedStore::open(EmbeddedOptions::new(dir.path()))
        .await
        .unwrap();
    let service = Service::new(store.clone(), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = weft_api::router(service.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Served {
        addr,
        service,
        store,
        _dir: dir,
    }
}

/// An HTTP answer: status, headers (lowercase names) and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// The request head of `method path` signed (in form) by access key `key`.
fn head(method: &str, path: &str, key: &str, content_length: usize) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nhost: weft\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {content_length}\r\n\
         authorization: AWS4-HMAC-SHA256 Credential={key}/20250101/us-east-1/appmesh/aws4_request, \
         SignedHeaders=host, Signature=0\r\n\r\n"
    )
}

/// Sends one request on a fresh connection and reads the whole answer.
async fn send(addr: SocketAddr, method: &str, path: &str, key: &str, body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(head(method, path, key, body.len()).as_bytes())
        .await
        .unwrap();
    stream.write_all(body).await.unwrap();
    read_answer(stream).await
}

async fn read_answer(mut stream: TcpStream) -> Answer {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<Vec<_>>();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v == "chunked")
    {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
        raw = &raw[line_end + 2 + size + 2..];
    }
}

const KEY: &str = "AKIDOPERATOR";

async fn put(addr: SocketAddr, path: &str, body: Value) -> Answer {
    let answer = send(addr, "PUT", path, KEY, body.to_string().as_bytes()).await;
    assert_eq!(answer.status, 200, "PUT {path}: {:?}", answer.json());
    answer
}

#[tokio::test]
async fn every_list_operation_answers_json_without_a_repeated_key() {
    let api = serve(ApiConfig::default()).await;
    let a = api.addr;
    let listener = json!([{"portMapping": {"port": 80, "protocol": "http"}}]);
    put(a, "/v20190125/meshes", json!({"meshName": "m1"})).await;
    put(
        a,
        "/v20190125/meshes/m1/virtualNodes",
        json!({"virtualNodeName": "vn",
        "spec": {"listeners": listener}}),
    )
    .await;
    put(
        a,
        "/v20190125/meshes/m1/virtualRouters",
        json!({"virtualRouterName": "vr",
        "spec": {"listeners": listener}}),
    )
    .await;
    put(
        a,
        "/v20190125/meshes/m1/virtualRouter/vr/routes",
        json!({"routeName": "rt",
        "spec": {"httpRoute": {"match": {"prefix": "/"},
            "action": {"weightedTargets": [{"virtualNode": "vn", "weight": 1}]}}}}),
    )
    .await;
    put(
        a,
        "/v20190125/meshes/m1/virtualServices",
        json!({"virtualServiceName": "vs.local",
        "spec": {"provider": {"virtualRouter": {"virtualRouterName": "vr"}}}}),
    )
    .await;
    put(
        a,
        "/v20190125/meshes/m1/virtualGateways",
        json!({"virtualGatewayName": "vg",
        "spec": {"listeners": listener}}),
    )
    .await;
    put(
        a,
        "/v20190125/meshes/m1/virtualGateway/vg/gatewayRoutes",
        json!({"gatewayRouteName": "gr",
        "spec": {"httpRoute": {"match": {"prefix": "/"},
            "action": {"target": {"virtualService": {"virtualServiceName": "vs.local"}}}}}}),
    )
    .await;
    let arn = "arn:aws:appmesh:us-east-1:000000000000:mesh/m1";
    let lists = [
        ("/v20190125/meshes", "meshes", 1),
        ("/v20190125/meshes/m1/virtualNodes", "virtualNodes", 1),
        ("/v20190125/meshes/m1/virtualRouters", "virtualRouters", 1),
        ("/v20190125/meshes/m1/virtualRouter/vr/routes", "routes", 1),
        ("/v20190125/meshes/m1/virtualServices", "virtualServices", 1),
        ("/v20190125/meshes/m1/virtualGateways", "virtualGateways", 1),
        (
            "/v20190125/meshes/m1/virtualGateway/vg/gatewayRoutes",
            "gatewayRoutes",
            1,
        ),
        (&format!("/v20190125/tags?resourceArn={arn}"), "tags", 0),
    ];
    // Twice: the second pages come from the cache of references.
    for _ in 0..2 {
        for (path, member, n) in &lists {
            let answer = send(a, "GET", path, KEY, b"").await;
            assert_eq!(answer.status, 200, "{path}");
            let page = weft_api::testing::strict_json(&answer.body)
                .unwrap_or_else(|e| panic!("GET {path}: {e}"));
            assert_eq!(page[member].as_array().map(Vec::len), Some(*n), "{path}");
        }
    }
}

#[tokio::test]
async fn names_with_a_slash_or_nul_are_refused_in_bodies_and_in_path_labels() {
    let api = serve(ApiConfig::default()).await;
    let a = api.addr;
    let answer = send(
        a,
        "PUT",
        "/v20190125/meshes",
        KEY,
        br#"{"meshName":"x/virtualNode/y"}"#,
    )
    .await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.header("x-amzn-errortype"),
        Some("BadRequestException")
    );
    assert_eq!(
        answer.json()["message"],
        "Value at 'meshName' failed to satisfy constraint: Member must not contain '/'"
    );
    for (path, shown) in [
        ("/v20190125/meshes/x%2Fy", "'/'"),
        ("/v20190125/meshes/x%00y", "U+0000"),
    ] {
        let answer = send(a, "GET", path, KEY, b"").await;
        assert_eq!(answer.status, 400, "{path}");
        assert_eq!(
            answer.header("x-amzn-errortype"),
            Some("BadRequestException")
        );
        let message = answer.json()["message"].as_str().unwrap().to_string();
        assert!(
            message.starts_with("Value at 'meshName'") && message.contains(shown),
            "{message}"
        );
    }
    let listed = send(a, "GET", "/v20190125/meshes", KEY, b"").await;
    assert_eq!(listed.json()["meshes"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn a_body_past_the_limit_is_a_bad_request_in_the_app_mesh_error_format() {
    let config = ApiConfig {
        max_body_bytes: 64 * 1024,
        ..ApiConfig::default()
    };
    let api = serve(config).await;
    let a = api.addr;
    put(a, "/v20190125/meshes", json!({"meshName": "apps"})).await;
    // A spec of 100 KB: well-formed JSON, far larger than any real one.
    let big = json!({"virtualNodeName": "big", "spec": {"listeners": [], "backends":
        (0..2000).map(|i| json!({"virtualService": {"virtualServiceName": format!("svc-{i:04}.apps.local.example.com")}})).collect::<Vec<_>>()}});
    let body = big.to_string();
    assert!(body.len() > 64 * 1024);
    let answer = send(
        a,
        "PUT",
        "/v20190125/meshes/apps/virtualNodes",
        KEY,
        body.as_bytes(),
    )
    .await;
    assert_eq!(answer.status, 400);
    assert_eq!(
        answer.header("x-amzn-errortype"),
        Some("BadRequestException")
    );
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let message = answer.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("65536 bytes"), "{message}");
    // Within the limit, the same endpoint serves.
    put(
        a,
        "/v20190125/meshes/apps/virtualNodes",
        json!({"virtualNodeName": "small",
        "spec": {"listeners": []}}),
    )
    .await;
}

#[tokio::test]
async fn one_client_past_its_requests_in_flight_is_throttled_while_another_is_served() {
    let config = ApiConfig {
        max_in_flight_per_client: 4,
        ..ApiConfig::default()
    };
    let api = serve(config).await;
    let a = api.addr;
    // The greedy client holds 4 requests in flight: each sends its head and
    // half its body, then stalls.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(a).await.unwrap();
        s.write_all(head("PUT", "/v20190125/meshes", "AKIDGREEDY", 20).as_bytes())
            .await
            .unwrap();
        s.write_all(b"{\"meshName\"").await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut throttled = 0;
    for _ in 0..10 {
        let answer = send(a, "GET", "/v20190125/meshes", "AKIDGREEDY", b"").await;
        if answer.status == 429 {
            assert_eq!(
                answer.header("x-amzn-errortype"),
                Some("TooManyRequestsException")
            );
            throttled += 1;
        }
    }
    assert_eq!(throttled, 10, "every further request of the greedy client");
    for i in 0..10 {
        put(
            a,
            "/v20190125/meshes",
            json!({"meshName": format!("polite-{i}")}),
        )
        .await;
    }
    // The stalled requests finish; the greedy client is admitted again.
    for mut s in stalled.drain(..) {
        s.write_all(b":\"g\"}    ").await.unwrap();
        let answer = read_answer(s).await;
        assert!(answer.status == 200 || answer.status == 409, "{answer:?}");
    }
    let answer = send(a, "GET", "/v20190125/meshes", "AKIDGREEDY", b"").await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn a_flood_of_distinct_client_tokens_keeps_the_records_within_their_cap() {
    let config = ApiConfig {
        client_token_max_records: 20,
        ..ApiConfig::default()
    };
    let api = serve(config).await;
    let a = api.addr;
    put(a, "/v20190125/meshes", json!({"meshName": "apps"})).await;
    let spec = |port: u32| {
        json!({"listeners": [{"portMapping": {"port": port, "protocol": "http"}}],
               "serviceDiscovery": {"dns": {"hostname": "h".repeat(3000)}}})
    };
    put(
        a,
        "/v20190125/meshes/apps/virtualNodes",
        json!({"virtualNodeName": "n",
        "spec": spec(1), "clientToken": "create"}),
    )
    .await;
    let mut last = None;
    for i in 0..200 {
        let token = format!("update-{i}");
        let body = json!({"spec": spec(1000 + i), "clientToken": token});
        last = Some((
            body.clone(),
            put(a, "/v20190125/meshes/apps/virtualNodes/n", body).await,
        ));
    }
    let records = api
        .store
        .range(Range::prefix(weft_api::keys::TOKEN_PREFIX))
        .await
        .unwrap()
        .kvs;
    assert!(records.len() <= 20, "{} records", records.len());
    let bytes: usize = records.iter().map(|kv| kv.key.len() + kv.value.len()).sum();
    assert!(bytes < 20 * 1024, "{bytes} bytes");
    assert!(api.service.token_usage().await.0 <= 20);
    // The latest token still replays its answer, byte for byte.
    let (body, first) = last.unwrap();
    let again = put(a, "/v20190125/meshes/apps/virtualNodes/n", body).await;
    assert_eq!(again.body, first.body);
    assert_eq!(again.json()["metadata"]["version"], 201);
}
