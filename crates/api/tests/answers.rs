//! Answers written straight from stored bytes (List pages, Describe) are
//! exactly the JSON the output shapes give, on a real embedded store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Map, Value};
use weft_api::{ApiConfig, Output, Service};
use weft_store::{EmbeddedOptions, EmbeddedStore, SharedStore, Store};

async fn service(dir: &std::path::Path) -> Service {
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir))
        .await
        .unwrap();
    let shared: SharedStore = store;
    Service::new(shared, ApiConfig::default())
}

fn node_input(name: &str) -> Value {
    json!({
        "meshName": "apps",
        "virtualNodeName": name,
        "spec": {
            "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
            "serviceDiscovery": {"dns": {"hostname": "red.apps.local"}}
        },
        "tags": [{"key": "team", "value": "a\"b"}]
    })
}

/// The reference a List answer carries for a described resource: its names
/// and metadata without `uid`.
fn reference(data: &Value, names: &[&str]) -> Value {
    let mut out = Map::new();
    for n in names {
        out.insert((*n).to_string(), data[*n].clone());
    }
    for (k, v) in data["metadata"].as_object().unwrap() {
        if k != "uid" {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

fn body(output: Output) -> Vec<u8> {
    match output {
        Output::Json(b) => b.to_vec(),
        Output::Payload { body, .. } => body.to_vec(),
        Output::Value(v) => v.to_string().into_bytes(),
    }
}

#[tokio::test]
async fn list_pages_and_describe_answers_are_the_model_s_json_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path()).await;
    service
        .call("CreateMesh", json!({"meshName": "apps"}))
        .await
        .unwrap();
    // Names that need escaping in JSON or in store keys.
    let names = ["a", "b/c", "d%2Fe", "q\"uote", "uni\u{e9}", "z"];
    for n in names {
        service
            .call("CreateVirtualNode", node_input(n))
            .await
            .unwrap();
    }
    let mut described = Vec::new();
    for n in names {
        let input = json!({"meshName": "apps", "virtualNodeName": n});
        let out = service
            .respond("DescribeVirtualNode", input.clone())
            .await
            .unwrap();
        let data: Value = serde_json::from_slice(&body(out.clone())).unwrap();
        // Byte for byte what serializing the tree gives.
        assert_eq!(body(out.clone()), data.to_string().into_bytes());
        assert_eq!(data["virtualNodeName"], n);
        assert_eq!(
            service.call("DescribeVirtualNode", input).await.unwrap(),
            json!({"virtualNode": data})
        );
        described.push(data);
    }
    // Store keys order the escaped names; the listing follows that order.
    let mut expected: Vec<Value> = described
        .iter()
        .map(|d| reference(d, &["meshName", "virtualNodeName"]))
        .collect();
    let mut listed = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut input = json!({"meshName": "apps", "limit": 4});
        if let Some(t) = &token {
            input["nextToken"] = json!(t);
        }
        let out = service.respond("ListVirtualNodes", input).await.unwrap();
        let bytes = body(out);
        let page: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(bytes, page.to_string().into_bytes());
        listed.extend(page["virtualNodes"].as_array().unwrap().iter().cloned());
        match page.get("nextToken").and_then(Value::as_str) {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    // Listed again, the pages come from the cache of references: the same.
    let first = json!({"meshName": "apps", "limit": 4});
    let cold = body(
        service
            .respond("ListVirtualNodes", first.clone())
            .await
            .unwrap(),
    );
    let warm = body(service.respond("ListVirtualNodes", first).await.unwrap());
    assert_eq!(cold, warm);
    let page: Value = serde_json::from_slice(&warm).unwrap();
    assert_eq!(page["virtualNodes"].as_array().unwrap()[..], listed[..4]);
    let key = |v: &Value| v["virtualNodeName"].as_str().unwrap().to_string();
    listed.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(listed, expected);
    // Routes carry their router's name too.
    service
        .call(
            "CreateVirtualRouter",
            json!({"meshName": "apps", "virtualRouterName": "r",
                   "spec": {"listeners": [{"portMapping": {"port": 80, "protocol": "http"}}]}}),
        )
        .await
        .unwrap();
    let route = service
        .call(
            "CreateRoute",
            json!({"meshName": "apps", "virtualRouterName": "r", "routeName": "x",
                   "spec": {"httpRoute": {"match": {"prefix": "/"},
                   "action": {"weightedTargets": [{"virtualNode": "a", "weight": 1}]}}}}),
        )
        .await
        .unwrap();
    let routes = service
        .call(
            "ListRoutes",
            json!({"meshName": "apps", "virtualRouterName": "r"}),
        )
        .await
        .unwrap();
    assert_eq!(
        routes,
        json!({"routes": [reference(&route["route"], &["meshName", "virtualRouterName", "routeName"])]})
    );
    let meshes = service.call("ListMeshes", json!({})).await.unwrap();
    let mesh = service
        .call("DescribeMesh", json!({"meshName": "apps"}))
        .await
        .unwrap();
    assert_eq!(
        meshes,
        json!({"meshes": [reference(&mesh["mesh"], &["meshName"])]})
    );
}

#[tokio::test]
async fn writes_answer_and_store_the_same_json_as_describe() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(EmbeddedOptions::new(dir.path()))
        .await
        .unwrap();
    let shared: SharedStore = store.clone();
    let service = Service::new(shared, ApiConfig::default());
    service
        .call(
            "CreateMesh",
            json!({"meshName": "apps", "spec": {"egressFilter": {"type": "ALLOW_ALL"}}}),
        )
        .await
        .unwrap();
    let mut input = node_input("red");
    input["clientToken"] = json!("create-1");
    let created = body(
        service
            .respond("CreateVirtualNode", input.clone())
            .await
            .unwrap(),
    );
    let data: Value = serde_json::from_slice(&created).unwrap();
    assert_eq!(created, data.to_string().into_bytes());
    assert_eq!(data["metadata"]["version"], 1);
    assert_eq!(data["status"], json!({"status": "ACTIVE"}));
    assert_eq!(data["spec"], input["spec"]);
    let describe = json!({"meshName": "apps", "virtualNodeName": "red"});
    let described = body(
        service
            .respond("DescribeVirtualNode", describe.clone())
            .await
            .unwrap(),
    );
    assert_eq!(described, created);
    // The same token replays the same answer.
    let replayed = body(service.respond("CreateVirtualNode", input).await.unwrap());
    assert_eq!(replayed, created);

    let mut update = node_input("red");
    update["spec"]["listeners"][0]["portMapping"]["port"] = json!(9090);
    update["clientToken"] = json!("update-1");
    let updated = body(
        service
            .respond("UpdateVirtualNode", update.clone())
            .await
            .unwrap(),
    );
    let after: Value = serde_json::from_slice(&updated).unwrap();
    assert_eq!(updated, after.to_string().into_bytes());
    assert_eq!(after["metadata"]["version"], 2);
    assert_eq!(after["spec"], update["spec"]);
    assert_eq!(after["metadata"]["uid"], data["metadata"]["uid"]);
    assert_eq!(
        after["metadata"]["createdAt"],
        data["metadata"]["createdAt"]
    );
    let replayed = body(service.respond("UpdateVirtualNode", update).await.unwrap());
    assert_eq!(replayed, updated);
    assert_eq!(
        service.call("DescribeVirtualNode", describe).await.unwrap(),
        json!({"virtualNode": after})
    );
    // The record keeps its tags and reads as a StoredRecord.
    let kv = store.get("res/apps/vn/red").await.unwrap().unwrap();
    let record: weft_model::StoredRecord = serde_json::from_slice(&kv.value).unwrap();
    assert_eq!(record.data, after);
    assert_eq!(record.tags.len(), 1);
    assert_eq!(record.tags[0].value, "a\"b");

    // UpdateMesh without a spec keeps the mesh's spec.
    let mesh = service
        .call("UpdateMesh", json!({"meshName": "apps"}))
        .await
        .unwrap();
    assert_eq!(mesh["mesh"]["metadata"]["version"], 2);
    assert_eq!(
        mesh["mesh"]["spec"],
        json!({"egressFilter": {"type": "ALLOW_ALL"}})
    );
}
