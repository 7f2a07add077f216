//! Both wire protocols byte by byte, with hand-written HTTP requests: what
//! the headers and bodies look like, so that clients other than the Rust SDK
//! (the AWS CLI, botocore, other SDKs) read the same answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ciborium::value::Value as Cbor;
use common::Registry;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A response as read off the socket.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn cbor(&self) -> Cbor {
        ciborium::de::from_reader(self.body.as_slice()).unwrap()
    }
}

/// One HTTP/1.1 request on a fresh connection.
async fn post(addr: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let host = addr.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v == "chunked")
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 4 + size..];
    }
}

async fn json_call(addr: &str, op: &str, body: Value) -> Reply {
    let target = format!("Route53AutoNaming_v20170314.{op}");
    post(
        addr,
        "/",
        &[
            ("X-Amz-Target", &target),
            ("Content-Type", "application/x-amz-json-1.1"),
        ],
        body.to_string().as_bytes(),
    )
    .await
}

fn cbor_map(entries: &[(&str, Cbor)]) -> Vec<u8> {
    let map = Cbor::Map(
        entries
            .iter()
            .map(|(k, v)| (Cbor::Text((*k).to_string()), v.clone()))
            .collect(),
    );
    let mut out = Vec::new();
    ciborium::ser::into_writer(&map, &mut out).unwrap();
    out
}

async fn cbor_call(addr: &str, op: &str, body: &[u8]) -> Reply {
    post(
        addr,
        &format!("/service/Route53AutoNaming_v20170314/operation/{op}"),
        &[
            ("smithy-protocol", "rpc-v2-cbor"),
            ("Content-Type", "application/cbor"),
            ("Accept", "application/cbor"),
        ],
        body,
    )
    .await
}

fn get<'a>(map: &'a Cbor, key: &str) -> &'a Cbor {
    let Cbor::Map(entries) = map else {
        panic!("not a map: {map:?}")
    };
    entries
        .iter()
        .find(|(k, _)| k == &Cbor::Text(key.to_string()))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {key} in {map:?}"))
}

#[tokio::test]
async fn json_1_1_answers_with_its_content_type_and_epoch_seconds() {
    let r = Registry::start().await;
    let created = json_call(
        &r.addr,
        "CreateHttpNamespace",
        json!({"Name": "apps.local"}),
    )
    .await;
    assert_eq!(created.status, 200);
    assert_eq!(
        created.header("content-type"),
        Some("application/x-amz-json-1.1")
    );
    let op_id = created.json()["OperationId"].as_str().unwrap().to_string();
    let op = json_call(&r.addr, "GetOperation", json!({"OperationId": op_id}))
        .await
        .json();
    assert_eq!(op["Operation"]["Status"], "SUCCESS");
    assert!(op["Operation"]["CreateDate"].as_f64().unwrap() > 1.6e9);
    let ns = op["Operation"]["Targets"]["NAMESPACE"].as_str().unwrap();
    let got = json_call(&r.addr, "GetNamespace", json!({"Id": ns}))
        .await
        .json();
    assert_eq!(got["Namespace"]["Type"], "HTTP");
    assert_eq!(got["Namespace"]["ServiceCount"], 0);
}

#[tokio::test]
async fn json_1_1_errors_carry_type_message_and_status() {
    let r = Registry::start().await;
    let missing = json_call(&r.addr, "GetNamespace", json!({"Id": "ns-nope"})).await;
    assert_eq!(missing.status, 404);
    assert_eq!(
        missing.header("x-amzn-errortype"),
        Some("NamespaceNotFound")
    );
    let body = missing.json();
    assert_eq!(body["__type"], "NamespaceNotFound");
    assert!(body["Message"].as_str().unwrap().contains("ns-nope"));

    let invalid = json_call(&r.addr, "RegisterInstance", json!({"ServiceId": "srv-1"})).await;
    assert_eq!(invalid.status, 400);
    assert_eq!(invalid.json()["__type"], "InvalidInput");

    let unknown = json_call(&r.addr, "CreateAnything", json!({"Name": "x"})).await;
    assert_eq!(unknown.status, 400);
    assert_eq!(unknown.json()["__type"], "UnknownOperationException");

    let garbage = post(
        &r.addr,
        "/",
        &[("X-Amz-Target", "Route53AutoNaming_v20170314.ListNamespaces")],
        b"{not json",
    )
    .await;
    assert_eq!(garbage.status, 400);
    assert_eq!(garbage.json()["__type"], "SerializationException");
}

#[tokio::test]
async fn rpc_v2_cbor_round_trips_maps_integers_and_tag_1_timestamps() {
    let r = Registry::start().await;
    let created = cbor_call(
        &r.addr,
        "CreateHttpNamespace",
        &cbor_map(&[("Name", Cbor::Text("apps.local".into()))]),
    )
    .await;
    assert_eq!(created.status, 200);
    assert_eq!(created.header("smithy-protocol"), Some("rpc-v2-cbor"));
    assert_eq!(created.header("content-type"), Some("application/cbor"));
    let Cbor::Text(op_id) = get(&created.cbor(), "OperationId").clone() else {
        panic!()
    };
    let op = cbor_call(
        &r.addr,
        "GetOperation",
        &cbor_map(&[("OperationId", Cbor::Text(op_id))]),
    )
    .await
    .cbor();
    let operation = get(&op, "Operation");
    assert!(matches!(get(operation, "CreateDate"), Cbor::Tag(1, _)));
    let Cbor::Text(ns) = get(get(operation, "Targets"), "NAMESPACE").clone() else {
        panic!()
    };
    let svc = cbor_call(
        &r.addr,
        "CreateService",
        &cbor_map(&[
            ("Name", Cbor::Text("colors".into())),
            ("NamespaceId", Cbor::Text(ns.clone())),
            ("HealthCheckCustomConfig", Cbor::Map(vec![])),
        ]),
    )
    .await
    .cbor();
    let service = get(&svc, "Service");
    assert_eq!(get(service, "InstanceCount"), &Cbor::Integer(0.into()));
    let Cbor::Text(svc_id) = get(service, "Id").clone() else {
        panic!()
    };
    let reg = cbor_call(
        &r.addr,
        "RegisterInstance",
        &cbor_map(&[
            ("ServiceId", Cbor::Text(svc_id.clone())),
            ("InstanceId", Cbor::Text("i-1".into())),
            (
                "Attributes",
                Cbor::Map(vec![(
                    Cbor::Text("AWS_INSTANCE_PORT".into()),
                    Cbor::Text("8080".into()),
                )]),
            ),
        ]),
    )
    .await;
    assert_eq!(reg.status, 200);
    // An operation without output answers an empty body.
    let health = cbor_call(
        &r.addr,
        "UpdateInstanceCustomHealthStatus",
        &cbor_map(&[
            ("ServiceId", Cbor::Text(svc_id)),
            ("InstanceId", Cbor::Text("i-1".into())),
            ("Status", Cbor::Text("UNHEALTHY".into())),
        ]),
    )
    .await;
    assert_eq!(health.status, 200);
    assert!(health.body.is_empty());
    let found = cbor_call(
        &r.addr,
        "DiscoverInstances",
        &cbor_map(&[
            ("NamespaceName", Cbor::Text("apps.local".into())),
            ("ServiceName", Cbor::Text("colors".into())),
            ("HealthStatus", Cbor::Text("ALL".into())),
            ("MaxResults", Cbor::Integer(10.into())),
        ]),
    )
    .await
    .cbor();
    let Cbor::Array(instances) = get(&found, "Instances") else {
        panic!()
    };
    assert_eq!(
        get(&instances[0], "HealthStatus"),
        &Cbor::Text("UNHEALTHY".into())
    );
    assert!(matches!(get(&found, "InstancesRevision"), Cbor::Integer(_)));
    // An empty body is an empty input.
    let listed = cbor_call(&r.addr, "ListNamespaces", b"").await;
    assert_eq!(listed.status, 200);
}

#[tokio::test]
async fn rpc_v2_cbor_errors_are_cbor_maps_with_a_shape_id() {
    let r = Registry::start().await;
    let missing = cbor_call(
        &r.addr,
        "GetService",
        &cbor_map(&[("Id", Cbor::Text("srv-nope".into()))]),
    )
    .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("smithy-protocol"), Some("rpc-v2-cbor"));
    assert_eq!(missing.header("content-type"), Some("application/cbor"));
    let body = missing.cbor();
    assert_eq!(
        get(&body, "__type"),
        &Cbor::Text("com.amazonaws.servicediscovery#ServiceNotFound".into())
    );
    assert!(matches!(get(&body, "Message"), Cbor::Text(m) if m.contains("srv-nope")));

    let invalid = cbor_call(
        &r.addr,
        "ListNamespaces",
        &cbor_map(&[("MaxResults", Cbor::Text("ten".into()))]),
    )
    .await;
    assert_eq!(invalid.status, 400);
    assert_eq!(
        get(&invalid.cbor(), "__type"),
        &Cbor::Text("com.amazonaws.servicediscovery#InvalidInput".into())
    );

    // The smithy-protocol header is mandatory.
    let no_header = post(
        &r.addr,
        "/service/Route53AutoNaming_v20170314/operation/ListNamespaces",
        &[("Content-Type", "application/cbor")],
        &cbor_map(&[]),
    )
    .await;
    assert_eq!(no_header.status, 400);
    let unknown = cbor_call(&r.addr, "CreatePublicDnsNamespace", &cbor_map(&[])).await;
    assert_eq!(unknown.status, 400);
    let not_cbor = cbor_call(&r.addr, "ListNamespaces", b"\xff\xff").await;
    assert_eq!(not_cbor.status, 400);
}

#[tokio::test]
async fn the_registry_merges_into_the_app_mesh_listener() {
    let tmp = tempfile::tempdir().unwrap();
    let store = weft_store::EmbeddedStore::open(weft_store::EmbeddedOptions::new(tmp.path()))
        .await
        .unwrap();
    let shared: weft_store::SharedStore = store;
    let appmesh = weft_api::router(weft_api::Service::new(
        shared.clone(),
        weft_api::ApiConfig::default(),
    ));
    let registry = weft_registry::RegistryService::new(shared, Default::default());
    let app = appmesh.merge(weft_registry::router(registry));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let created = json_call(&addr, "CreateHttpNamespace", json!({"Name": "apps.local"})).await;
    assert_eq!(created.status, 200);
    let mesh = post(
        &addr,
        "/v20190125/meshes",
        &[("Content-Type", "application/json")],
        b"",
    )
    .await;
    // PUT creates meshes; a POST there is App Mesh's own answer, not the registry's.
    assert_ne!(
        mesh.header("content-type"),
        Some("application/x-amz-json-1.1")
    );
    let listed = cbor_call(&addr, "ListNamespaces", b"").await;
    assert_eq!(listed.status, 200);
}
