//! The registry driven by the official AWS SDK for Rust
//! (`aws-sdk-servicediscovery`, endpoint overridden): every operation, the
//! error types, idempotency, pagination, DiscoverInstances filters and
//! health — each scenario once over awsJson 1.1 (the SDK's default) and once
//! over Smithy RPC v2 CBOR (the same SDK with the CBOR protocol selected).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;

use aws_sdk_servicediscovery::types::{
    CustomHealthStatus, FilterCondition, HealthCheckConfig, HealthCheckCustomConfig,
    HealthCheckType, HealthStatus, HealthStatusFilter, NamespaceFilter, NamespaceFilterName,
    NamespaceType, OperationStatus, OperationTargetType, OperationType, ServiceFilter,
    ServiceFilterName,
};
use aws_sdk_servicediscovery::Client;
use common::{code, message, Protocol, Registry};

/// Runs each scenario over both protocols, as `<scenario>::json` and `<scenario>::cbor`.
macro_rules! over_both_protocols {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test]
            async fn json() {
                super::$scenario(super::Protocol::Json).await;
            }
            #[tokio::test]
            async fn cbor() {
                super::$scenario(super::Protocol::Cbor).await;
            }
        }
    )*};
}

over_both_protocols!(
    a_namespace_is_created_fetched_listed_and_deleted,
    services_live_in_a_namespace_and_keep_it_from_being_deleted,
    instances_are_registered_read_updated_and_deregistered,
    discover_instances_filters_by_attributes_and_health,
    creator_request_ids_make_retries_safe,
    lists_page_with_max_results_and_next_token,
    bad_requests_get_cloud_map_exception_types,
);

async fn namespace(client: &Client, name: &str) -> String {
    let op = client
        .create_http_namespace()
        .name(name)
        .send()
        .await
        .unwrap();
    let op = client
        .get_operation()
        .operation_id(op.operation_id().unwrap())
        .send()
        .await
        .unwrap();
    op.operation().unwrap().targets().unwrap()[&OperationTargetType::Namespace].clone()
}

async fn service(client: &Client, ns: &str, name: &str, custom_health: bool) -> String {
    let mut req = client.create_service().name(name).namespace_id(ns);
    if custom_health {
        req = req.health_check_custom_config(HealthCheckCustomConfig::builder().build());
    }
    req.send()
        .await
        .unwrap()
        .service()
        .unwrap()
        .id()
        .unwrap()
        .to_string()
}

async fn register(client: &Client, svc: &str, id: &str, attrs: &[(&str, &str)]) -> String {
    let mut req = client.register_instance().service_id(svc).instance_id(id);
    for (k, v) in attrs {
        req = req.attributes(*k, *v);
    }
    req.send()
        .await
        .unwrap()
        .operation_id()
        .unwrap()
        .to_string()
}

async fn a_namespace_is_created_fetched_listed_and_deleted(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let created = client
        .create_http_namespace()
        .name("apps.local")
        .description("the apps")
        .creator_request_id("req-1")
        .send()
        .await
        .unwrap();
    let op_id = created.operation_id().unwrap();
    let op = client
        .get_operation()
        .operation_id(op_id)
        .send()
        .await
        .unwrap();
    let op = op.operation().unwrap();
    assert_eq!(op.id(), Some(op_id));
    assert_eq!(op.status(), Some(&OperationStatus::Success));
    assert_eq!(op.r#type(), Some(&OperationType::CreateNamespace));
    assert!(op.create_date().is_some());
    let ns_id = op.targets().unwrap()[&OperationTargetType::Namespace].clone();
    assert!(ns_id.starts_with("ns-"), "{ns_id}");

    let got = client.get_namespace().id(&ns_id).send().await.unwrap();
    let ns = got.namespace().unwrap();
    assert_eq!(ns.name(), Some("apps.local"));
    assert_eq!(ns.r#type(), Some(&NamespaceType::Http));
    assert_eq!(ns.description(), Some("the apps"));
    assert_eq!(ns.creator_request_id(), Some("req-1"));
    assert_eq!(ns.service_count(), Some(0));
    assert_eq!(
        ns.properties()
            .unwrap()
            .http_properties()
            .unwrap()
            .http_name(),
        Some("apps.local")
    );
    let arn = ns.arn().unwrap().to_string();
    assert_eq!(
        arn,
        format!("arn:aws:servicediscovery:us-east-1:000000000000:namespace/{ns_id}")
    );
    assert!(ns.create_date().unwrap().secs() > 1_600_000_000);
    // The ARN works wherever the id does.
    let by_arn = client.get_namespace().id(&arn).send().await.unwrap();
    assert_eq!(by_arn.namespace().unwrap().id(), Some(ns_id.as_str()));

    let listed = client.list_namespaces().send().await.unwrap();
    assert_eq!(listed.namespaces().len(), 1);
    assert_eq!(listed.namespaces()[0].id(), Some(ns_id.as_str()));
    assert_eq!(listed.namespaces()[0].name(), Some("apps.local"));

    let deleted = client.delete_namespace().id(&ns_id).send().await.unwrap();
    let op = client
        .get_operation()
        .operation_id(deleted.operation_id().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        op.operation().unwrap().r#type(),
        Some(&OperationType::DeleteNamespace)
    );
    assert_eq!(
        code(client.get_namespace().id(&ns_id).send().await),
        "NamespaceNotFound"
    );
    assert!(client
        .list_namespaces()
        .send()
        .await
        .unwrap()
        .namespaces()
        .is_empty());
    // The name is free again.
    namespace(&client, "apps.local").await;
}

async fn services_live_in_a_namespace_and_keep_it_from_being_deleted(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let ns = namespace(&client, "apps.local").await;
    let other = namespace(&client, "other.local").await;
    let created = client
        .create_service()
        .name("colors")
        .namespace_id(&ns)
        .description("colour service")
        .health_check_custom_config(HealthCheckCustomConfig::builder().build())
        .send()
        .await
        .unwrap();
    let svc = created.service().unwrap();
    let svc_id = svc.id().unwrap().to_string();
    assert!(svc_id.starts_with("srv-"), "{svc_id}");
    assert_eq!(svc.name(), Some("colors"));
    assert_eq!(svc.namespace_id(), Some(ns.as_str()));
    assert_eq!(svc.instance_count(), Some(0));
    assert_eq!(
        svc.arn(),
        Some(format!("arn:aws:servicediscovery:us-east-1:000000000000:service/{svc_id}").as_str())
    );
    assert!(svc.health_check_custom_config().is_some());
    service(&client, &other, "colors", false).await;

    let got = client.get_service().id(&svc_id).send().await.unwrap();
    assert_eq!(got.service().unwrap().description(), Some("colour service"));
    let ns_now = client.get_namespace().id(&ns).send().await.unwrap();
    assert_eq!(ns_now.namespace().unwrap().service_count(), Some(1));

    // ListServices, all and filtered by namespace.
    let all = client.list_services().send().await.unwrap();
    assert_eq!(all.services().len(), 2);
    let mine = client
        .list_services()
        .filters(
            ServiceFilter::builder()
                .name(ServiceFilterName::NamespaceId)
                .values(&ns)
                .condition(FilterCondition::Eq)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(mine.services().len(), 1);
    assert_eq!(mine.services()[0].id(), Some(svc_id.as_str()));

    // Same name in the same namespace: ServiceAlreadyExists naming the existing one.
    let dup = client
        .create_service()
        .name("colors")
        .namespace_id(&ns)
        .send()
        .await
        .unwrap_err();
    let dup = dup.into_service_error();
    assert!(dup.is_service_already_exists(), "{dup:?}");
    if let aws_sdk_servicediscovery::operation::create_service::CreateServiceError::ServiceAlreadyExists(e) = &dup {
        assert_eq!(e.service_id(), Some(svc_id.as_str()));
    }

    assert_eq!(
        code(client.delete_namespace().id(&ns).send().await),
        "ResourceInUse"
    );
    client.delete_service().id(&svc_id).send().await.unwrap();
    assert_eq!(
        code(client.get_service().id(&svc_id).send().await),
        "ServiceNotFound"
    );
    assert_eq!(
        code(client.delete_service().id(&svc_id).send().await),
        "ServiceNotFound"
    );
    client.delete_namespace().id(&ns).send().await.unwrap();
    assert_eq!(
        code(
            client
                .create_service()
                .name("x")
                .namespace_id(&ns)
                .send()
                .await
        ),
        "NamespaceNotFound"
    );
}

async fn instances_are_registered_read_updated_and_deregistered(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let ns = namespace(&client, "apps.local").await;
    let svc = service(&client, &ns, "colors", true).await;
    let op_id = register(
        &client,
        &svc,
        "red-1",
        &[
            ("AWS_INSTANCE_IPV4", "10.0.0.1"),
            ("AWS_INSTANCE_PORT", "8080"),
            ("color", "red"),
        ],
    )
    .await;
    let op = client
        .get_operation()
        .operation_id(&op_id)
        .send()
        .await
        .unwrap();
    let op = op.operation().unwrap();
    assert_eq!(op.status(), Some(&OperationStatus::Success));
    assert_eq!(op.r#type(), Some(&OperationType::RegisterInstance));
    let targets = op.targets().unwrap();
    assert_eq!(targets[&OperationTargetType::Instance], "red-1");
    assert_eq!(targets[&OperationTargetType::Service], svc);

    let got = client
        .get_instance()
        .service_id(&svc)
        .instance_id("red-1")
        .send()
        .await
        .unwrap();
    assert_eq!(got.resource_owner(), Some("000000000000"));
    let inst = got.instance().unwrap();
    assert_eq!(inst.id(), "red-1");
    let attrs = inst.attributes().unwrap();
    assert_eq!(attrs["AWS_INSTANCE_IPV4"], "10.0.0.1");
    assert_eq!(attrs["AWS_INSTANCE_PORT"], "8080");
    assert_eq!(attrs["color"], "red");

    // Registering the same id again replaces its attributes.
    register(
        &client,
        &svc,
        "red-1",
        &[
            ("AWS_INSTANCE_IPV4", "10.0.0.9"),
            ("AWS_INSTANCE_PORT", "8081"),
        ],
    )
    .await;
    register(
        &client,
        &svc,
        "blue-1",
        &[("AWS_INSTANCE_IPV4", "10.0.0.2")],
    )
    .await;
    let listed = client
        .list_instances()
        .service_id(&svc)
        .send()
        .await
        .unwrap();
    let mut ids: Vec<&str> = listed.instances().iter().filter_map(|i| i.id()).collect();
    ids.sort();
    assert_eq!(ids, ["blue-1", "red-1"]);
    let red = listed
        .instances()
        .iter()
        .find(|i| i.id() == Some("red-1"))
        .unwrap();
    assert_eq!(red.attributes().unwrap()["AWS_INSTANCE_IPV4"], "10.0.0.9");
    assert!(!red.attributes().unwrap().contains_key("color"));
    let svc_now = client.get_service().id(&svc).send().await.unwrap();
    assert_eq!(svc_now.service().unwrap().instance_count(), Some(2));

    // Health: a custom health check starts HEALTHY and follows the updates.
    client
        .update_instance_custom_health_status()
        .service_id(&svc)
        .instance_id("red-1")
        .status(CustomHealthStatus::Unhealthy)
        .send()
        .await
        .unwrap();
    let all = client
        .discover_instances()
        .namespace_name("apps.local")
        .service_name("colors")
        .health_status(HealthStatusFilter::All)
        .send()
        .await
        .unwrap();
    let health: Vec<(String, HealthStatus)> = all
        .instances()
        .iter()
        .map(|i| {
            (
                i.instance_id().unwrap().to_string(),
                i.health_status().unwrap().clone(),
            )
        })
        .collect();
    assert!(
        health.contains(&("red-1".into(), HealthStatus::Unhealthy)),
        "{health:?}"
    );
    assert!(
        health.contains(&("blue-1".into(), HealthStatus::Healthy)),
        "{health:?}"
    );

    // The service still holds instances.
    assert_eq!(
        code(client.delete_service().id(&svc).send().await),
        "ResourceInUse"
    );
    let dereg = client
        .deregister_instance()
        .service_id(&svc)
        .instance_id("red-1")
        .send()
        .await
        .unwrap();
    let op = client
        .get_operation()
        .operation_id(dereg.operation_id().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        op.operation().unwrap().r#type(),
        Some(&OperationType::DeregisterInstance)
    );
    assert_eq!(
        code(
            client
                .get_instance()
                .service_id(&svc)
                .instance_id("red-1")
                .send()
                .await
        ),
        "InstanceNotFound"
    );
    assert_eq!(
        code(
            client
                .deregister_instance()
                .service_id(&svc)
                .instance_id("red-1")
                .send()
                .await
        ),
        "InstanceNotFound"
    );
    client
        .deregister_instance()
        .service_id(&svc)
        .instance_id("blue-1")
        .send()
        .await
        .unwrap();
    client.delete_service().id(&svc).send().await.unwrap();
}

async fn discover(
    client: &Client,
    service: &str,
    health: Option<HealthStatusFilter>,
    query: &[(&str, &str)],
    optional: &[(&str, &str)],
) -> Vec<String> {
    let mut req = client
        .discover_instances()
        .namespace_name("apps.local")
        .service_name(service)
        .set_health_status(health);
    for (k, v) in query {
        req = req.query_parameters(*k, *v);
    }
    for (k, v) in optional {
        req = req.optional_parameters(*k, *v);
    }
    let out = req.send().await.unwrap();
    let mut ids: Vec<String> = out
        .instances()
        .iter()
        .map(|i| i.instance_id().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn discover_instances_filters_by_attributes_and_health(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let ns = namespace(&client, "apps.local").await;
    let svc = service(&client, &ns, "colors", true).await;
    let plain = service(&client, &ns, "plain", false).await;
    for (id, color, zone) in [
        ("red-1", "red", "a"),
        ("red-2", "red", "b"),
        ("blue-1", "blue", "a"),
    ] {
        register(
            &client,
            &svc,
            id,
            &[
                ("AWS_INSTANCE_IPV4", "10.0.0.1"),
                ("AWS_INSTANCE_PORT", "80"),
                ("color", color),
                ("zone", zone),
            ],
        )
        .await;
    }
    // An instance can start unhealthy.
    register(
        &client,
        &svc,
        "green-1",
        &[("color", "green"), ("AWS_INIT_HEALTH_STATUS", "UNHEALTHY")],
    )
    .await;

    // Default: healthy only.
    assert_eq!(
        discover(&client, "colors", None, &[], &[]).await,
        ["blue-1", "red-1", "red-2"]
    );
    assert_eq!(
        discover(
            &client,
            "colors",
            Some(HealthStatusFilter::Unhealthy),
            &[],
            &[]
        )
        .await,
        ["green-1"]
    );
    assert_eq!(
        discover(&client, "colors", Some(HealthStatusFilter::All), &[], &[])
            .await
            .len(),
        4
    );
    // QueryParameters must all match.
    assert_eq!(
        discover(&client, "colors", None, &[("color", "red")], &[]).await,
        ["red-1", "red-2"]
    );
    assert_eq!(
        discover(
            &client,
            "colors",
            None,
            &[("color", "red"), ("zone", "b")],
            &[]
        )
        .await,
        ["red-2"]
    );
    assert!(discover(&client, "colors", None, &[("color", "pink")], &[])
        .await
        .is_empty());
    // OptionalParameters narrow only when something matches them.
    assert_eq!(
        discover(
            &client,
            "colors",
            None,
            &[("color", "red")],
            &[("zone", "a")]
        )
        .await,
        ["red-1"]
    );
    assert_eq!(
        discover(
            &client,
            "colors",
            None,
            &[("color", "red")],
            &[("zone", "z")]
        )
        .await,
        ["red-1", "red-2"]
    );
    // HEALTHY_OR_ELSE_ALL fails open when no instance is healthy.
    assert!(
        discover(&client, "colors", None, &[("color", "green")], &[])
            .await
            .is_empty()
    );
    assert_eq!(
        discover(
            &client,
            "colors",
            Some(HealthStatusFilter::HealthyOrElseAll),
            &[("color", "green")],
            &[]
        )
        .await,
        ["green-1"]
    );
    assert_eq!(
        discover(
            &client,
            "colors",
            Some(HealthStatusFilter::HealthyOrElseAll),
            &[],
            &[]
        )
        .await,
        ["blue-1", "red-1", "red-2"]
    );
    // Health follows UpdateInstanceCustomHealthStatus, both ways.
    for (id, status) in [
        ("red-1", CustomHealthStatus::Unhealthy),
        ("green-1", CustomHealthStatus::Healthy),
    ] {
        client
            .update_instance_custom_health_status()
            .service_id(&svc)
            .instance_id(id)
            .status(status)
            .send()
            .await
            .unwrap();
    }
    assert_eq!(
        discover(&client, "colors", None, &[], &[]).await,
        ["blue-1", "green-1", "red-2"]
    );
    // MaxResults caps the answer.
    let capped = client
        .discover_instances()
        .namespace_name("apps.local")
        .service_name("colors")
        .max_results(2)
        .send()
        .await
        .unwrap();
    assert_eq!(capped.instances().len(), 2);
    let first = capped.instances()[0].clone();
    assert_eq!(first.namespace_name(), Some("apps.local"));
    assert_eq!(first.service_name(), Some("colors"));
    assert_eq!(first.attributes().unwrap()["AWS_INSTANCE_PORT"], "80");

    // InstancesRevision moves with registrations, not with health.
    let rev = |c: Client| async move {
        c.discover_instances()
            .namespace_name("apps.local")
            .service_name("colors")
            .send()
            .await
            .unwrap()
            .instances_revision()
            .unwrap()
    };
    let r1 = rev(client.clone()).await;
    client
        .update_instance_custom_health_status()
        .service_id(&svc)
        .instance_id("red-2")
        .status(CustomHealthStatus::Unhealthy)
        .send()
        .await
        .unwrap();
    assert_eq!(rev(client.clone()).await, r1);
    register(&client, &svc, "red-3", &[("color", "red")]).await;
    let r2 = rev(client.clone()).await;
    assert!(r2 > r1, "{r2} > {r1}");

    // Without a health check: every instance, reported UNKNOWN; the filter is ignored.
    register(&client, &plain, "p-1", &[("AWS_INSTANCE_IPV4", "10.1.0.1")]).await;
    let out = client
        .discover_instances()
        .namespace_name("apps.local")
        .service_name("plain")
        .health_status(HealthStatusFilter::Unhealthy)
        .send()
        .await
        .unwrap();
    assert_eq!(out.instances().len(), 1);
    assert_eq!(
        out.instances()[0].health_status(),
        Some(&HealthStatus::UnknownValue)
    );
    assert_eq!(
        code(
            client
                .update_instance_custom_health_status()
                .service_id(&plain)
                .instance_id("p-1")
                .status(CustomHealthStatus::Unhealthy)
                .send()
                .await
        ),
        "CustomHealthNotFound"
    );
    // Unknown names.
    assert_eq!(
        code(
            client
                .discover_instances()
                .namespace_name("nope.local")
                .service_name("colors")
                .send()
                .await
        ),
        "NamespaceNotFound"
    );
    assert_eq!(
        code(
            client
                .discover_instances()
                .namespace_name("apps.local")
                .service_name("nope")
                .send()
                .await
        ),
        "ServiceNotFound"
    );
}

async fn creator_request_ids_make_retries_safe(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let create = |name: &'static str, cri: &'static str| {
        client
            .create_http_namespace()
            .name(name)
            .creator_request_id(cri)
            .send()
    };
    let first = create("apps.local", "ns-req").await.unwrap();
    let again = create("apps.local", "ns-req").await.unwrap();
    assert_eq!(first.operation_id(), again.operation_id());
    // The same id with a different request: DuplicateRequest naming the first operation.
    let dup = create("other.local", "ns-req")
        .await
        .unwrap_err()
        .into_service_error();
    assert!(dup.is_duplicate_request(), "{dup:?}");
    if let aws_sdk_servicediscovery::operation::create_http_namespace::CreateHttpNamespaceError::DuplicateRequest(e) = &dup {
        assert_eq!(e.duplicate_operation_id(), first.operation_id());
    }
    // A different id for an existing name: NamespaceAlreadyExists with the first creator.
    let exists = create("apps.local", "another")
        .await
        .unwrap_err()
        .into_service_error();
    match &exists {
        aws_sdk_servicediscovery::operation::create_http_namespace::CreateHttpNamespaceError::NamespaceAlreadyExists(e) => {
            assert_eq!(e.creator_request_id(), Some("ns-req"));
            assert!(e.namespace_id().unwrap().starts_with("ns-"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client
            .list_namespaces()
            .send()
            .await
            .unwrap()
            .namespaces()
            .len(),
        1
    );
    let ns = client.list_namespaces().send().await.unwrap().namespaces()[0]
        .id()
        .unwrap()
        .to_string();

    let svc = |cri: &'static str| {
        client
            .create_service()
            .name("colors")
            .namespace_id(&ns)
            .creator_request_id(cri)
            .send()
    };
    let s1 = svc("svc-req").await.unwrap();
    let s2 = svc("svc-req").await.unwrap();
    assert_eq!(s1.service().unwrap().id(), s2.service().unwrap().id());
    assert_eq!(s2.service().unwrap().creator_request_id(), Some("svc-req"));
    assert_eq!(code(svc("svc-other").await), "ServiceAlreadyExists");
    let svc_id = s1.service().unwrap().id().unwrap().to_string();

    let reg = |cri: &'static str, ip: &'static str| {
        client
            .register_instance()
            .service_id(&svc_id)
            .instance_id("i-1")
            .creator_request_id(cri)
            .attributes("AWS_INSTANCE_IPV4", ip)
            .send()
    };
    let r1 = reg("reg-1", "10.0.0.1").await.unwrap();
    let r2 = reg("reg-1", "10.0.0.1").await.unwrap();
    assert_eq!(r1.operation_id(), r2.operation_id());
    assert_eq!(code(reg("reg-1", "10.0.0.2").await), "DuplicateRequest");
    let got = client
        .get_instance()
        .service_id(&svc_id)
        .instance_id("i-1")
        .send()
        .await
        .unwrap();
    assert_eq!(got.instance().unwrap().creator_request_id(), Some("reg-1"));
    // Left out, the SDK fills CreatorRequestId with a fresh token each call:
    // two registrations of one instance are an update, not a duplicate.
    register(
        &client,
        &svc_id,
        "i-1",
        &[("AWS_INSTANCE_IPV4", "10.0.0.3")],
    )
    .await;
    register(
        &client,
        &svc_id,
        "i-1",
        &[("AWS_INSTANCE_IPV4", "10.0.0.3")],
    )
    .await;
}

async fn lists_page_with_max_results_and_next_token(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let mut ns_ids = HashSet::new();
    for i in 0..7 {
        ns_ids.insert(namespace(&client, &format!("ns{i}.local")).await);
    }
    // Manual paging.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = client
            .list_namespaces()
            .max_results(3)
            .set_next_token(token.clone())
            .send()
            .await
            .unwrap();
        pages += 1;
        assert!(page.namespaces().len() <= 3);
        seen.extend(
            page.namespaces()
                .iter()
                .map(|n| n.id().unwrap().to_string()),
        );
        token = page.next_token().map(String::from);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 7);
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), ns_ids);
    // The SDK's paginator follows the same tokens.
    let all: Vec<_> = client
        .list_namespaces()
        .max_results(2)
        .into_paginator()
        .send()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flat_map(|page| page.unwrap().namespaces().to_vec())
        .collect();
    assert_eq!(all.len(), 7);
    // Filters page too.
    let named = client
        .list_namespaces()
        .filters(
            NamespaceFilter::builder()
                .name(NamespaceFilterName::Name)
                .values("ns1")
                .condition(FilterCondition::BeginsWith)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(named.namespaces().len(), 1);
    assert_eq!(named.namespaces()[0].name(), Some("ns1.local"));

    let ns = ns_ids.iter().next().unwrap().clone();
    let svc = service(&client, &ns, "many", false).await;
    for i in 0..5 {
        register(&client, &svc, &format!("i-{i}"), &[("n", &i.to_string())]).await;
    }
    let instances: Vec<_> = client
        .list_instances()
        .service_id(&svc)
        .max_results(2)
        .into_paginator()
        .send()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flat_map(|page| page.unwrap().instances().to_vec())
        .collect();
    let ids: Vec<_> = instances
        .iter()
        .map(|i| i.id().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["i-0", "i-1", "i-2", "i-3", "i-4"]);
    for i in 0..4 {
        service(&client, &ns, &format!("s{i}"), false).await;
    }
    let services: Vec<_> = client
        .list_services()
        .max_results(2)
        .into_paginator()
        .send()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flat_map(|page| page.unwrap().services().to_vec())
        .collect();
    assert_eq!(services.len(), 5);
    // A token from elsewhere is refused.
    assert_eq!(
        code(client.list_namespaces().next_token("garbage!").send().await),
        "InvalidInput"
    );
}

async fn bad_requests_get_cloud_map_exception_types(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    // Model constraints.
    assert_eq!(
        code(
            client
                .create_http_namespace()
                .name("arn:aws:nope")
                .send()
                .await
        ),
        "InvalidInput"
    );
    let msg = message(client.list_namespaces().max_results(500).send().await);
    assert!(msg.contains("MaxResults"), "{msg}");
    let ns = namespace(&client, "apps.local").await;
    assert_eq!(
        code(
            client
                .create_service()
                .name("bad name!")
                .namespace_id(&ns)
                .send()
                .await
        ),
        "InvalidInput"
    );
    // Route 53 health checks do not exist in HTTP namespaces.
    assert_eq!(
        code(
            client
                .create_service()
                .name("web")
                .namespace_id(&ns)
                .health_check_config(
                    HealthCheckConfig::builder()
                        .r#type(HealthCheckType::Http)
                        .build()
                        .unwrap()
                )
                .send()
                .await
        ),
        "InvalidInput"
    );
    let svc = service(&client, &ns, "web", false).await;
    for (k, v) in [
        ("AWS_INSTANCE_IPV4", "10.0.0.300"),
        ("AWS_INSTANCE_PORT", "http"),
        ("AWS_INIT_HEALTH_STATUS", "MAYBE"),
    ] {
        let msg = message(
            client
                .register_instance()
                .service_id(&svc)
                .instance_id("i-1")
                .attributes(k, v)
                .send()
                .await,
        );
        assert!(msg.contains(k), "{msg}");
    }
    let mut too_many = client
        .register_instance()
        .service_id(&svc)
        .instance_id("i-1");
    for i in 0..31 {
        too_many = too_many.attributes(format!("k{i}"), "v");
    }
    assert_eq!(code(too_many.send().await), "InvalidInput");
    assert_eq!(
        code(
            client
                .register_instance()
                .service_id(&svc)
                .instance_id("bad id!")
                .attributes("a", "b")
                .send()
                .await
        ),
        "InvalidInput"
    );
    // Things that do not exist.
    assert_eq!(
        code(client.get_namespace().id("ns-nope").send().await),
        "NamespaceNotFound"
    );
    assert_eq!(
        code(client.delete_namespace().id("ns-nope").send().await),
        "NamespaceNotFound"
    );
    assert_eq!(
        code(client.get_service().id("srv-nope").send().await),
        "ServiceNotFound"
    );
    assert_eq!(
        code(
            client
                .register_instance()
                .service_id("srv-nope")
                .instance_id("i-1")
                .attributes("a", "b")
                .send()
                .await
        ),
        "ServiceNotFound"
    );
    assert_eq!(
        code(client.list_instances().service_id("srv-nope").send().await),
        "ServiceNotFound"
    );
    assert_eq!(
        code(
            client
                .get_instance()
                .service_id(&svc)
                .instance_id("nope")
                .send()
                .await
        ),
        "InstanceNotFound"
    );
    assert_eq!(
        code(
            client
                .update_instance_custom_health_status()
                .service_id(&svc)
                .instance_id("nope")
                .status(CustomHealthStatus::Healthy)
                .send()
                .await
        ),
        "InstanceNotFound"
    );
    assert_eq!(
        code(client.get_operation().operation_id("nope").send().await),
        "OperationNotFound"
    );
    // The typed errors the SDK raises.
    let e = client
        .get_namespace()
        .id("ns-nope")
        .send()
        .await
        .unwrap_err();
    assert!(e.into_service_error().is_namespace_not_found());
    let e = client.delete_namespace().id(&ns).send().await.unwrap_err();
    assert!(e.into_service_error().is_resource_in_use());
}

mod durability {
    use super::*;
    use weft_registry::RegistryConfig;

    #[tokio::test]
    async fn registrations_survive_a_restart_and_reach_the_read_api() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let registry = Registry::start_in(&dir, RegistryConfig::default()).await;
        let client = registry.client(Protocol::Json);
        let ns = namespace(&client, "apps.local").await;
        let svc = service(&client, &ns, "colors", true).await;
        register(
            &client,
            &svc,
            "red-1",
            &[
                ("AWS_INSTANCE_IPV4", "10.0.0.1"),
                ("AWS_INSTANCE_PORT", "8080"),
            ],
        )
        .await;
        register(&client, &svc, "red-2", &[("AWS_INSTANCE_IPV4", "10.0.0.2")]).await;
        client
            .update_instance_custom_health_status()
            .service_id(&svc)
            .instance_id("red-2")
            .status(CustomHealthStatus::Unhealthy)
            .send()
            .await
            .unwrap();
        drop(client);
        let store = registry.store.clone();
        registry.stop();
        drop(store);
        // Let the aborted server task drop its store handle before reopening.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;

        let registry = Registry::start_in(&dir, RegistryConfig::default()).await;
        let found = registry
            .service
            .instances("apps.local", "colors")
            .await
            .unwrap();
        assert_eq!(found.len(), 2);
        let red1 = &found[0];
        assert_eq!(red1.id, "red-1");
        assert_eq!(red1.ipv4(), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(red1.port(), Some(8080));
        assert!(red1.is_healthy());
        assert!(!found[1].is_healthy());
        assert_eq!(found[1].port(), None);
        assert!(registry
            .service
            .instances("apps.local", "nope")
            .await
            .unwrap()
            .is_empty());
        let client = registry.client(Protocol::Cbor);
        let got = client.get_service().id(&svc).send().await.unwrap();
        assert_eq!(got.service().unwrap().instance_count(), Some(2));
    }

    #[tokio::test]
    async fn a_watcher_of_the_instance_prefix_sees_every_change() {
        use futures::StreamExt;
        use weft_store::Store;
        let registry = Registry::start().await;
        let client = registry.client(Protocol::Json);
        let ns = namespace(&client, "apps.local").await;
        let svc = service(&client, &ns, "colors", true).await;
        let from = registry.store.revision().await.unwrap();
        let mut watch = registry
            .store
            .watch(weft_registry::keys::INSTANCES, from)
            .await
            .unwrap();
        register(&client, &svc, "red-1", &[("AWS_INSTANCE_IPV4", "10.0.0.1")]).await;
        client
            .update_instance_custom_health_status()
            .service_id(&svc)
            .instance_id("red-1")
            .status(CustomHealthStatus::Unhealthy)
            .send()
            .await
            .unwrap();
        client
            .deregister_instance()
            .service_id(&svc)
            .instance_id("red-1")
            .send()
            .await
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(5), watch.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let (service_id, instance_id) = weft_registry::keys::parse_instance(&ev.key).unwrap();
            assert_eq!(
                (service_id.as_str(), instance_id.as_str()),
                (svc.as_str(), "red-1")
            );
            seen.push(
                ev.value
                    .map(|v| weft_registry::Instance::decode(&v).unwrap().health),
            );
        }
        assert_eq!(
            seen,
            [
                Some(weft_registry::HealthStatus::Healthy),
                Some(weft_registry::HealthStatus::Unhealthy),
                None
            ]
        );
    }
}
