//! `weft backup` and `weft restore`: every App Mesh resource (meshes, virtual nodes, routers,
//! routes, services, gateways, gateway routes: names, specs, tags) and every Cloud Map one
//! (namespaces, services, registered instances) read through a server's API into one JSON
//! document, and created through another server's API from it — so that moving from the
//! embedded store to etcd (or between installations) is one command each way, whatever store
//! each server runs on.
//!
//! The document lists each resource as the input of the App Mesh or Cloud Map operation that
//! creates it (App Mesh JSON, as the AWS CLI's `--cli-input-json` takes it), in dependency
//! order: a route after the nodes it targets, a virtual service after its provider, a gateway
//! route after its virtual service.
//!
//! A restore is idempotent: a resource that exists with the same spec (and tags) is left as
//! it is; one that exists with a different spec is not overwritten — the restore checks every
//! resource first and refuses, naming each that differs, before it writes anything.

mod client;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use weft_model::Kind;

pub use client::{rest_request, Client, CONFLICT};

/// The document's `format`.
pub const FORMAT: &str = "weft-backup/1";

/// The order resources are created in: each after what it refers to.
pub const RESTORE_ORDER: [Kind; 7] = [
    Kind::Mesh,
    Kind::VirtualNode,
    Kind::VirtualRouter,
    Kind::Route,
    Kind::VirtualService,
    Kind::VirtualGateway,
    Kind::GatewayRoute,
];

/// Everything that can go wrong in a backup or a restore.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The server could not be reached or did not answer.
    #[error("{0}")]
    Unreachable(String),
    /// The server answered an API error.
    #[error("{operation}: {code}: {message}")]
    Api {
        operation: String,
        code: String,
        message: String,
    },
    /// The document (or an answer) is not what a backup holds.
    #[error("not a Weft backup: {0}")]
    Format(String),
    /// The target server holds resources that differ from the backup's.
    #[error(
        "refusing to restore: {} resource(s) already exist with a different definition, and a \
         restore never overwrites (delete them or restore into an empty server):\n  {}",
        .0.len(),
        .0.join("\n  ")
    )]
    Differs(Vec<String>),
}

impl BackupError {
    /// The API error type, if the server answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            BackupError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// One App Mesh resource: its kind's name (`VirtualNode`) and the `Create…` input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppMeshResource {
    pub kind: String,
    pub input: Value,
}

/// One Cloud Map namespace with its services, each with its instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    /// `HTTP`, `DNS_PRIVATE` or `DNS_PUBLIC`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The `Create…Namespace` input.
    pub input: Value,
    pub services: Vec<Service>,
}

/// One Cloud Map service: the `CreateService` input without its namespace id, and the
/// `RegisterInstance` inputs of its instances without their service id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub input: Value,
    pub instances: Vec<Value>,
}

/// A whole backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backup {
    pub format: String,
    /// In [`RESTORE_ORDER`].
    pub app_mesh: Vec<AppMeshResource>,
    pub cloud_map: Vec<Namespace>,
}

impl Backup {
    /// Reads a document, checking its format.
    pub fn from_json(text: &[u8]) -> Result<Backup, BackupError> {
        let backup: Backup =
            serde_json::from_slice(text).map_err(|e| BackupError::Format(e.to_string()))?;
        if backup.format != FORMAT {
            return Err(BackupError::Format(format!(
                "format {:?}, expected {FORMAT:?}",
                backup.format
            )));
        }
        Ok(backup)
    }
}

/// What a restore did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Resources created.
    pub created: usize,
    /// Resources that existed with the same definition.
    pub unchanged: usize,
}

/// Every page of a List operation: the items of `member`.
async fn list_all(
    client: &Client,
    cloud_map: bool,
    operation: &str,
    input: Value,
    member: &str,
) -> Result<Vec<Value>, BackupError> {
    let (token_member, out_token) = if cloud_map {
        ("NextToken", "NextToken")
    } else {
        ("nextToken", "nextToken")
    };
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut page_input = input.clone();
        if let Some(t) = &token {
            page_input[token_member] = json!(t);
        }
        let page = if cloud_map {
            client.cloud_map(operation, &page_input).await?
        } else {
            client.app_mesh(operation, &page_input).await?
        };
        if let Some(list) = page[member].as_array() {
            items.extend(list.iter().cloned());
        }
        match page[out_token].as_str() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(items),
        }
    }
}

/// The names that identify a resource of `kind` from its reference or data (`meshName`,
/// the parent's name, its own name).
fn names_of(kind: Kind, data: &Value) -> Value {
    let mut names = json!({"meshName": data["meshName"]});
    if let Some(parent) = kind.parent() {
        names[parent.name_member()] = data[parent.name_member()].clone();
    }
    names[kind.name_member()] = data[kind.name_member()].clone();
    names
}

/// `kind`'s resources, each as its `Create` input (names, spec, tags).
async fn export_kind(
    client: &Client,
    kind: Kind,
    meshes: &[String],
) -> Result<Vec<AppMeshResource>, BackupError> {
    // Each kind is listed in each mesh; routes and gateway routes in each of their parents.
    let mut scopes: Vec<Value> = Vec::new();
    match (kind, kind.parent()) {
        (Kind::Mesh, _) => scopes.push(json!({})),
        (_, None) => scopes.extend(meshes.iter().map(|m| json!({"meshName": m}))),
        (_, Some(parent)) => {
            for mesh in meshes {
                let list = format!("List{}", parent.plural());
                let parents = list_all(
                    client,
                    false,
                    &list,
                    json!({"meshName": mesh}),
                    parent.list_member(),
                )
                .await?;
                for p in parents {
                    scopes.push(names_of(parent, &p));
                }
            }
        }
    }
    let mut out = Vec::new();
    for scope in scopes {
        let list = format!("List{}", kind.plural());
        let refs = list_all(client, false, &list, scope, kind.list_member()).await?;
        for r in refs {
            let names = names_of(kind, &r);
            let describe = format!("Describe{}", kind.op_name());
            let data = client.app_mesh(&describe, &names).await?;
            let arn = data["metadata"]["arn"].clone();
            let tags = list_all(
                client,
                false,
                "ListTagsForResource",
                json!({"resourceArn": arn}),
                "tags",
            )
            .await?;
            let mut input = names;
            if !data["spec"].is_null() {
                input["spec"] = data["spec"].clone();
            }
            if !tags.is_empty() {
                input["tags"] = Value::Array(tags);
            }
            out.push(AppMeshResource {
                kind: kind.op_name().to_string(),
                input,
            });
        }
    }
    Ok(out)
}

/// The `Create…Namespace` input of a namespace as `GetNamespace` describes it.
fn namespace_input(ns: &Value, tags: Vec<Value>) -> Value {
    let mut input = json!({"Name": ns["Name"]});
    if let Some(d) = ns["Description"].as_str() {
        input["Description"] = json!(d);
    }
    if let Some(ttl) = ns["Properties"]["DnsProperties"]["SOA"]["TTL"].as_i64() {
        input["Properties"] = json!({"DnsProperties": {"SOA": {"TTL": ttl}}});
    }
    if !tags.is_empty() {
        input["Tags"] = Value::Array(tags);
    }
    input
}

/// The `CreateService` input of a service as `GetService` describes it, without its
/// namespace (the restored namespace's id is new).
fn service_input(svc: &Value, tags: Vec<Value>) -> Value {
    let mut input = json!({"Name": svc["Name"]});
    for member in [
        "Description",
        "HealthCheckConfig",
        "HealthCheckCustomConfig",
        "Type",
    ] {
        if !svc[member].is_null() {
            input[member] = svc[member].clone();
        }
    }
    if !svc["DnsConfig"].is_null() {
        let mut dns = svc["DnsConfig"].clone();
        if let Some(o) = dns.as_object_mut() {
            o.remove("NamespaceId");
        }
        input["DnsConfig"] = dns;
    }
    if !tags.is_empty() {
        input["Tags"] = Value::Array(tags);
    }
    input
}

async fn cloud_map_tags(client: &Client, arn: &Value) -> Result<Vec<Value>, BackupError> {
    let out = client
        .cloud_map("ListTagsForResource", &json!({"ResourceARN": arn}))
        .await?;
    Ok(out["Tags"].as_array().cloned().unwrap_or_default())
}

/// Reads every App Mesh and Cloud Map resource of the server `client` talks to.
pub async fn export(client: &Client) -> Result<Backup, BackupError> {
    let meshes: Vec<String> = list_all(client, false, "ListMeshes", json!({}), "meshes")
        .await?
        .iter()
        .filter_map(|m| m["meshName"].as_str().map(str::to_string))
        .collect();
    let mut app_mesh = Vec::new();
    for kind in RESTORE_ORDER {
        app_mesh.extend(export_kind(client, kind, &meshes).await?);
    }
    let mut cloud_map = Vec::new();
    for summary in list_all(client, true, "ListNamespaces", json!({}), "Namespaces").await? {
        let ns = client
            .cloud_map("GetNamespace", &json!({"Id": summary["Id"]}))
            .await?["Namespace"]
            .clone();
        let tags = cloud_map_tags(client, &ns["Arn"]).await?;
        let filter =
            json!({"Filters": [{"Name": "NAMESPACE_ID", "Values": [ns["Id"]], "Condition": "EQ"}]});
        let mut services = Vec::new();
        for s in list_all(client, true, "ListServices", filter, "Services").await? {
            let svc = client
                .cloud_map("GetService", &json!({"Id": s["Id"]}))
                .await?["Service"]
                .clone();
            let tags = cloud_map_tags(client, &svc["Arn"]).await?;
            let instances = list_all(
                client,
                true,
                "ListInstances",
                json!({"ServiceId": svc["Id"]}),
                "Instances",
            )
            .await?
            .into_iter()
            .map(|i| json!({"InstanceId": i["Id"], "Attributes": i["Attributes"]}))
            .collect();
            services.push(Service {
                input: service_input(&svc, tags),
                instances,
            });
        }
        cloud_map.push(Namespace {
            kind: ns["Type"].as_str().unwrap_or("HTTP").to_string(),
            input: namespace_input(&ns, tags),
            services,
        });
    }
    Ok(Backup {
        format: FORMAT.to_string(),
        app_mesh,
        cloud_map,
    })
}

fn kind_named(name: &str) -> Result<Kind, BackupError> {
    Kind::ALL
        .into_iter()
        .find(|k| k.op_name() == name)
        .ok_or_else(|| BackupError::Format(format!("unknown App Mesh kind {name:?}")))
}

/// Tags as a set (order does not matter).
fn tag_set(tags: &Value) -> Vec<(String, String)> {
    let mut set: Vec<(String, String)> = tags
        .as_array()
        .map(|a| {
            a.iter()
                .map(|t| {
                    (
                        t["key"].as_str().unwrap_or_default().to_string(),
                        t["value"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    set.sort();
    set
}

/// How the resource `input` would be described: `kind name in mesh m`.
fn describe_resource(kind: Kind, input: &Value) -> String {
    let mut text = format!(
        "{} {}",
        kind.label(),
        input[kind.name_member()].as_str().unwrap_or("?")
    );
    if let Some(parent) = kind.parent() {
        text.push_str(&format!(
            " of {} {}",
            parent.label().to_lowercase(),
            input[parent.name_member()].as_str().unwrap_or("?")
        ));
    }
    if kind != Kind::Mesh {
        text.push_str(&format!(
            " in mesh {}",
            input["meshName"].as_str().unwrap_or("?")
        ));
    }
    text
}

/// Whether the resource `input` stands for exists on the server: `None` if not, else why it
/// differs (`Some(None)` when it is the same). Pure comparison of specs and tags.
async fn existing_difference(
    client: &Client,
    kind: Kind,
    input: &Value,
) -> Result<Option<Option<String>>, BackupError> {
    let names = names_of(kind, input);
    let data = match client
        .app_mesh(&format!("Describe{}", kind.op_name()), &names)
        .await
    {
        Ok(data) => data,
        Err(e) if e.code() == Some("NotFoundException") => return Ok(None),
        Err(e) => return Err(e),
    };
    let wanted_spec = input.get("spec").cloned().unwrap_or(json!({}));
    let spec = if data["spec"].is_null() {
        json!({})
    } else {
        data["spec"].clone()
    };
    if spec != wanted_spec {
        return Ok(Some(Some(format!(
            "{}: spec {} on the server, {} in the backup",
            describe_resource(kind, input),
            spec,
            wanted_spec
        ))));
    }
    let tags = list_all(
        client,
        false,
        "ListTagsForResource",
        json!({"resourceArn": data["metadata"]["arn"]}),
        "tags",
    )
    .await?;
    let wanted_tags = input.get("tags").cloned().unwrap_or(json!([]));
    if tag_set(&Value::Array(tags.clone())) != tag_set(&wanted_tags) {
        return Ok(Some(Some(format!(
            "{}: tags {} on the server, {} in the backup",
            describe_resource(kind, input),
            Value::Array(tags),
            wanted_tags
        ))));
    }
    Ok(Some(None))
}

/// The id of the namespace named `name`, if the server has one.
async fn namespace_id(client: &Client, name: &Value) -> Result<Option<String>, BackupError> {
    let filter = json!({"Filters": [{"Name": "NAME", "Values": [name], "Condition": "EQ"}]});
    let found = list_all(client, true, "ListNamespaces", filter, "Namespaces").await?;
    Ok(found
        .iter()
        .find(|n| &n["Name"] == name)
        .and_then(|n| n["Id"].as_str())
        .map(str::to_string))
}

/// The id of the service named `name` in namespace `ns`, if any.
async fn service_id(
    client: &Client,
    ns: &str,
    name: &Value,
) -> Result<Option<String>, BackupError> {
    let filter = json!({"Filters": [{"Name": "NAMESPACE_ID", "Values": [ns], "Condition": "EQ"}]});
    let found = list_all(client, true, "ListServices", filter, "Services").await?;
    Ok(found
        .iter()
        .find(|s| &s["Name"] == name)
        .and_then(|s| s["Id"].as_str())
        .map(str::to_string))
}

/// Creates every resource of `backup` the server lacks, in dependency order. Checks first:
/// an App Mesh resource that exists with another spec or other tags (or a Cloud Map namespace
/// of another type) stops the restore before anything is written.
pub async fn restore(client: &Client, backup: &Backup) -> Result<Restored, BackupError> {
    let mut differs = Vec::new();
    let mut missing = Vec::new();
    let mut restored = Restored::default();
    for resource in &backup.app_mesh {
        let kind = kind_named(&resource.kind)?;
        match existing_difference(client, kind, &resource.input).await? {
            None => missing.push((kind, &resource.input)),
            Some(None) => restored.unchanged += 1,
            Some(Some(why)) => differs.push(why),
        }
    }
    for ns in &backup.cloud_map {
        if namespace_id(client, &ns.input["Name"]).await?.is_some() {
            let filter = json!({"Filters": [{"Name": "NAME", "Values": [ns.input["Name"]], "Condition": "EQ"}]});
            let found = list_all(client, true, "ListNamespaces", filter, "Namespaces").await?;
            let kind = found
                .iter()
                .find(|n| n["Name"] == ns.input["Name"])
                .and_then(|n| n["Type"].as_str())
                .unwrap_or_default();
            if kind != ns.kind {
                differs.push(format!(
                    "Cloud Map namespace {}: type {kind} on the server, {} in the backup",
                    ns.input["Name"], ns.kind
                ));
            }
        }
    }
    if !differs.is_empty() {
        return Err(BackupError::Differs(differs));
    }
    for (kind, input) in missing {
        match client
            .app_mesh(&format!("Create{}", kind.op_name()), input)
            .await
        {
            Ok(_) => restored.created += 1,
            // Created meanwhile (another restore of the same backup): the same, checked again.
            Err(e) if e.code() == Some(CONFLICT) => {
                match existing_difference(client, kind, input).await? {
                    Some(None) => restored.unchanged += 1,
                    Some(Some(why)) => return Err(BackupError::Differs(vec![why])),
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    for ns in &backup.cloud_map {
        let ns_id = match namespace_id(client, &ns.input["Name"]).await? {
            Some(id) => {
                restored.unchanged += 1;
                id
            }
            None => {
                let op = match ns.kind.as_str() {
                    "DNS_PRIVATE" => "CreatePrivateDnsNamespace",
                    "DNS_PUBLIC" => "CreatePublicDnsNamespace",
                    _ => "CreateHttpNamespace",
                };
                client.cloud_map(op, &ns.input).await?;
                restored.created += 1;
                namespace_id(client, &ns.input["Name"])
                    .await?
                    .ok_or_else(|| {
                        BackupError::Format(format!(
                            "namespace {} not found after its creation",
                            ns.input["Name"]
                        ))
                    })?
            }
        };
        for svc in &ns.services {
            let svc_id = match service_id(client, &ns_id, &svc.input["Name"]).await? {
                Some(id) => {
                    restored.unchanged += 1;
                    id
                }
                None => {
                    let mut input = svc.input.clone();
                    input["NamespaceId"] = json!(ns_id);
                    let out = client.cloud_map("CreateService", &input).await?;
                    restored.created += 1;
                    out["Service"]["Id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                }
            };
            for instance in &svc.instances {
                let mut input = instance.clone();
                input["ServiceId"] = json!(svc_id);
                // Registering again updates an instance's attributes to the same: idempotent.
                client.cloud_map("RegisterInstance", &input).await?;
                restored.created += 1;
            }
        }
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_is_named_by_its_mesh_router_and_name() {
        let data = json!({"meshName": "apps", "virtualRouterName": "colors", "routeName": "main",
            "arn": "x", "version": 3});
        assert_eq!(
            names_of(Kind::Route, &data),
            json!({"meshName": "apps", "virtualRouterName": "colors", "routeName": "main"})
        );
        assert_eq!(
            describe_resource(Kind::Route, &data),
            "Route main of virtual router colors in mesh apps"
        );
    }

    #[test]
    fn tags_compare_as_a_set() {
        let a = json!([{"key": "a", "value": "1"}, {"key": "b", "value": "2"}]);
        let b = json!([{"key": "b", "value": "2"}, {"key": "a", "value": "1"}]);
        assert_eq!(tag_set(&a), tag_set(&b));
        assert_ne!(tag_set(&a), tag_set(&json!([])));
    }

    #[test]
    fn a_document_of_another_format_is_refused() {
        let err = Backup::from_json(br#"{"format":"other/9","appMesh":[],"cloudMap":[]}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("weft-backup/1"), "{err}");
        assert!(Backup::from_json(b"[]").is_err());
    }

    #[test]
    fn a_dns_namespace_keeps_its_soa_ttl_and_a_service_loses_its_old_namespace_id() {
        let ns = json!({"Name": "apps.local", "Type": "DNS_PRIVATE", "Id": "ns-1",
            "Properties": {"DnsProperties": {"SOA": {"TTL": 60}, "HostedZoneId": "Z1"}}});
        assert_eq!(
            namespace_input(&ns, vec![]),
            json!({"Name": "apps.local", "Properties": {"DnsProperties": {"SOA": {"TTL": 60}}}})
        );
        let svc = json!({"Name": "red", "Id": "srv-1", "NamespaceId": "ns-1",
            "DnsConfig": {"NamespaceId": "ns-1", "DnsRecords": [{"Type": "A", "TTL": 10}]}});
        assert_eq!(
            service_input(&svc, vec![]),
            json!({"Name": "red", "DnsConfig": {"DnsRecords": [{"Type": "A", "TTL": 10}]}})
        );
    }
}
