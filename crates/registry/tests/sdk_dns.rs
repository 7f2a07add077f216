//! The operations beyond HTTP namespaces, driven by the official AWS SDK for
//! Rust over both protocols: DNS namespaces and their updates, services with
//! DNS records, service attributes, instance health, ListOperations, tags
//! and DiscoverInstancesRevision, with the errors Cloud Map answers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use aws_sdk_servicediscovery::types::{
    CustomHealthStatus, DnsConfig, DnsConfigChange, DnsRecord, FilterCondition,
    HealthCheckCustomConfig, HealthStatus, HttpNamespaceChange, NamespaceFilter,
    NamespaceFilterName, NamespaceType, OperationFilter, OperationFilterName, OperationStatus,
    OperationTargetType, OperationType, PrivateDnsNamespaceChange, PrivateDnsNamespaceProperties,
    PrivateDnsNamespacePropertiesChange, PrivateDnsPropertiesMutable,
    PrivateDnsPropertiesMutableChange, PublicDnsNamespaceChange, RecordType, RoutingPolicy,
    ServiceChange, ServiceType, ServiceTypeOption, Soa, SoaChange, Tag,
};
use aws_sdk_servicediscovery::Client;
use common::{code, message, Protocol, Registry};
use weft_registry::dns::RecordType as DnsType;

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
    a_private_dns_namespace_needs_a_vpc_and_reports_its_hosted_zone_and_soa_ttl,
    namespaces_are_updated_by_the_operation_of_their_type_and_updater_request_ids_make_retries_safe,
    a_public_dns_namespace_takes_a_domain_name_and_namespaces_are_listed_by_type,
    services_in_dns_namespaces_take_dns_config_checked_as_cloud_map_does,
    dns_config_with_a_namespace_that_does_not_exist_is_namespace_not_found,
    instances_of_dns_services_carry_the_attributes_their_records_need,
    update_service_changes_ttls_and_the_description_but_never_record_types,
    service_attributes_are_added_read_and_deleted,
    instance_health_is_reported_per_instance_and_paged,
    list_operations_filters_by_type_namespace_service_status_and_date,
    namespaces_and_services_are_tagged_untagged_and_listed_by_arn,
    discover_instances_revision_moves_with_registrations_not_with_health,
);

fn soa(ttl: i64) -> PrivateDnsNamespaceProperties {
    PrivateDnsNamespaceProperties::builder()
        .dns_properties(
            PrivateDnsPropertiesMutable::builder()
                .soa(Soa::builder().ttl(ttl).build().unwrap())
                .build(),
        )
        .build()
}

fn record(kind: RecordType, ttl: i64) -> DnsRecord {
    DnsRecord::builder().r#type(kind).ttl(ttl).build().unwrap()
}

fn dns_config(policy: RoutingPolicy, records: Vec<DnsRecord>) -> DnsConfig {
    DnsConfig::builder()
        .routing_policy(policy)
        .set_dns_records(Some(records))
        .build()
        .unwrap()
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build().unwrap()
}

/// The namespace an operation created.
async fn created_namespace(client: &Client, operation_id: &str) -> String {
    let op = client
        .get_operation()
        .operation_id(operation_id)
        .send()
        .await
        .unwrap();
    let op = op.operation().unwrap();
    assert_eq!(op.status(), Some(&OperationStatus::Success));
    op.targets().unwrap()[&OperationTargetType::Namespace].clone()
}

async fn private_namespace(client: &Client, name: &str) -> String {
    let op = client
        .create_private_dns_namespace()
        .name(name)
        .vpc("vpc-0a1b2c3d")
        .send()
        .await
        .unwrap();
    created_namespace(client, op.operation_id().unwrap()).await
}

async fn http_namespace(client: &Client, name: &str) -> String {
    let op = client
        .create_http_namespace()
        .name(name)
        .send()
        .await
        .unwrap();
    created_namespace(client, op.operation_id().unwrap()).await
}

async fn dns_service(client: &Client, ns: &str, name: &str, config: DnsConfig) -> String {
    client
        .create_service()
        .name(name)
        .namespace_id(ns)
        .dns_config(config)
        .health_check_custom_config(HealthCheckCustomConfig::builder().build())
        .send()
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

async fn a_private_dns_namespace_needs_a_vpc_and_reports_its_hosted_zone_and_soa_ttl(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let created = client
        .create_private_dns_namespace()
        .name("apps.local")
        .vpc("vpc-0a1b2c3d")
        .description("the apps")
        .properties(soa(60))
        .creator_request_id("ns-req-1")
        .send()
        .await
        .unwrap();
    let op = client
        .get_operation()
        .operation_id(created.operation_id().unwrap())
        .send()
        .await
        .unwrap();
    let op = op.operation().unwrap();
    assert_eq!(op.r#type(), Some(&OperationType::CreateNamespace));
    assert_eq!(op.status(), Some(&OperationStatus::Success));
    let ns_id = op.targets().unwrap()[&OperationTargetType::Namespace].clone();

    let got = client.get_namespace().id(&ns_id).send().await.unwrap();
    let ns = got.namespace().unwrap();
    assert_eq!(ns.r#type(), Some(&NamespaceType::DnsPrivate));
    assert_eq!(ns.name(), Some("apps.local"));
    assert_eq!(ns.description(), Some("the apps"));
    let props = ns.properties().unwrap();
    let zone = props.dns_properties().unwrap();
    let zone_id = zone.hosted_zone_id().unwrap().to_string();
    assert!(zone_id.starts_with('Z') && zone_id.len() > 10, "{zone_id}");
    assert_eq!(zone.soa().unwrap().ttl(), 60);
    // A DNS namespace is discoverable through the API under its name as well.
    assert_eq!(
        props.http_properties().unwrap().http_name(),
        Some("apps.local")
    );
    // The hosted zone id is stable.
    let again = client.get_namespace().id(&ns_id).send().await.unwrap();
    assert_eq!(
        again
            .namespace()
            .unwrap()
            .properties()
            .unwrap()
            .dns_properties()
            .unwrap()
            .hosted_zone_id(),
        Some(zone_id.as_str())
    );
    // Without Properties the SOA TTL is Cloud Map's default.
    let other = private_namespace(&client, "other.local").await;
    let got = client.get_namespace().id(&other).send().await.unwrap();
    let zone = got.namespace().unwrap().properties().unwrap();
    assert_eq!(zone.dns_properties().unwrap().soa().unwrap().ttl(), 15);

    // A private namespace lives in a VPC, which must be given.
    let msg = message(
        client
            .create_private_dns_namespace()
            .name("novpc.local")
            .send()
            .await,
    );
    assert!(msg.contains("Vpc"), "{msg}");
    assert_eq!(
        code(
            client
                .create_private_dns_namespace()
                .name("novpc.local")
                .vpc("")
                .send()
                .await
        ),
        "InvalidInput"
    );
    // Names are unique across namespace types.
    assert_eq!(
        code(
            client
                .create_private_dns_namespace()
                .name("apps.local")
                .vpc("vpc-2")
                .send()
                .await
        ),
        "NamespaceAlreadyExists"
    );
    assert_eq!(
        code(
            client
                .create_http_namespace()
                .name("apps.local")
                .send()
                .await
        ),
        "NamespaceAlreadyExists"
    );
    // The zone must be a domain name.
    assert_eq!(
        code(
            client
                .create_private_dns_namespace()
                .name("no..dots")
                .vpc("vpc-1")
                .send()
                .await
        ),
        "InvalidInput"
    );
    // What a DNS server reads.
    let zones = registry.service.dns_namespaces().await.unwrap();
    let names: Vec<&str> = zones.iter().map(|z| z.name.as_str()).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"apps.local") && names.contains(&"other.local"));
    let apps = zones.iter().find(|z| z.name == "apps.local").unwrap();
    assert_eq!(apps.dns.as_ref().unwrap().soa_ttl, 60);
    assert_eq!(
        apps.dns.as_ref().unwrap().vpc.as_deref(),
        Some("vpc-0a1b2c3d")
    );

    // Deleting is an operation too.
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
}

async fn namespaces_are_updated_by_the_operation_of_their_type_and_updater_request_ids_make_retries_safe(
    p: Protocol,
) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let private = private_namespace(&client, "apps.local").await;
    let http = http_namespace(&client, "api.local").await;

    let change = PrivateDnsNamespaceChange::builder()
        .description("new words")
        .properties(
            PrivateDnsNamespacePropertiesChange::builder()
                .dns_properties(
                    PrivateDnsPropertiesMutableChange::builder()
                        .soa(SoaChange::builder().ttl(300).build().unwrap())
                        .build(),
                )
                .build(),
        )
        .build();
    let updated = client
        .update_private_dns_namespace()
        .id(&private)
        .updater_request_id("upd-1")
        .namespace(change.clone())
        .send()
        .await
        .unwrap();
    let op_id = updated.operation_id().unwrap().to_string();
    let op = client
        .get_operation()
        .operation_id(&op_id)
        .send()
        .await
        .unwrap();
    let op = op.operation().unwrap();
    assert_eq!(op.r#type(), Some(&OperationType::UpdateNamespace));
    assert_eq!(op.status(), Some(&OperationStatus::Success));
    assert_eq!(
        op.targets().unwrap()[&OperationTargetType::Namespace],
        private
    );
    let got = client.get_namespace().id(&private).send().await.unwrap();
    let ns = got.namespace().unwrap();
    assert_eq!(ns.description(), Some("new words"));
    let zone = ns.properties().unwrap().dns_properties().unwrap();
    assert_eq!(zone.soa().unwrap().ttl(), 300);

    // A retry with the same UpdaterRequestId answers the same operation...
    let retried = client
        .update_private_dns_namespace()
        .id(&private)
        .updater_request_id("upd-1")
        .namespace(change)
        .send()
        .await
        .unwrap();
    assert_eq!(retried.operation_id(), Some(op_id.as_str()));
    // ...and the id reused for another change is a DuplicateRequest.
    let other = PrivateDnsNamespaceChange::builder()
        .description("other words")
        .build();
    assert_eq!(
        code(
            client
                .update_private_dns_namespace()
                .id(&private)
                .updater_request_id("upd-1")
                .namespace(other)
                .send()
                .await
        ),
        "DuplicateRequest"
    );

    // Each namespace type has its own update operation.
    let described = HttpNamespaceChange::builder()
        .description("the api")
        .build()
        .unwrap();
    client
        .update_http_namespace()
        .id(&http)
        .namespace(described.clone())
        .send()
        .await
        .unwrap();
    let got = client.get_namespace().id(&http).send().await.unwrap();
    assert_eq!(got.namespace().unwrap().description(), Some("the api"));
    let msg = message(
        client
            .update_http_namespace()
            .id(&private)
            .namespace(described.clone())
            .send()
            .await,
    );
    assert!(msg.contains("DNS_PRIVATE"), "{msg}");
    assert_eq!(
        code(
            client
                .update_public_dns_namespace()
                .id(&http)
                .namespace(PublicDnsNamespaceChange::builder().description("x").build())
                .send()
                .await
        ),
        "InvalidInput"
    );
    assert_eq!(
        code(
            client
                .update_http_namespace()
                .id("ns-0000000000000000")
                .namespace(described)
                .send()
                .await
        ),
        "NamespaceNotFound"
    );
}

async fn a_public_dns_namespace_takes_a_domain_name_and_namespaces_are_listed_by_type(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let op = client
        .create_public_dns_namespace()
        .name("example.com")
        .send()
        .await
        .unwrap();
    let public = created_namespace(&client, op.operation_id().unwrap()).await;
    let got = client.get_namespace().id(&public).send().await.unwrap();
    let ns = got.namespace().unwrap();
    assert_eq!(ns.r#type(), Some(&NamespaceType::DnsPublic));
    assert!(ns.properties().unwrap().dns_properties().is_some());
    // The model's pattern for public names is a domain name.
    assert_eq!(
        code(
            client
                .create_public_dns_namespace()
                .name("not_a_domain")
                .send()
                .await
        ),
        "InvalidInput"
    );
    client
        .update_public_dns_namespace()
        .id(&public)
        .namespace(
            PublicDnsNamespaceChange::builder()
                .description("site")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let got = client.get_namespace().id(&public).send().await.unwrap();
    assert_eq!(got.namespace().unwrap().description(), Some("site"));

    let private = private_namespace(&client, "apps.local").await;
    let http = http_namespace(&client, "api.local").await;
    let by = |condition: FilterCondition, value: &str| {
        NamespaceFilter::builder()
            .name(NamespaceFilterName::Type)
            .condition(condition)
            .values(value)
            .build()
            .unwrap()
    };
    for (condition, value, expected) in [
        (FilterCondition::Eq, "DNS_PUBLIC", vec![&public]),
        (FilterCondition::Eq, "DNS_PRIVATE", vec![&private]),
        (FilterCondition::Eq, "HTTP", vec![&http]),
        (FilterCondition::BeginsWith, "DNS", vec![&public, &private]),
    ] {
        let listed = client
            .list_namespaces()
            .filters(by(condition, value))
            .send()
            .await
            .unwrap();
        let mut ids: Vec<&str> = listed.namespaces().iter().filter_map(|n| n.id()).collect();
        let mut want: Vec<&str> = expected.iter().map(|s| s.as_str()).collect();
        ids.sort_unstable();
        want.sort_unstable();
        assert_eq!(ids, want, "{value}");
    }
    // Summaries carry the type and the zone.
    let listed = client
        .list_namespaces()
        .filters(by(FilterCondition::Eq, "DNS_PRIVATE"))
        .send()
        .await
        .unwrap();
    let summary = &listed.namespaces()[0];
    assert_eq!(summary.r#type(), Some(&NamespaceType::DnsPrivate));
    assert!(summary.properties().unwrap().dns_properties().is_some());
    // Every namespace is the account's own.
    let own = NamespaceFilter::builder()
        .name(NamespaceFilterName::ResourceOwner)
        .values("SELF")
        .build()
        .unwrap();
    let listed = client.list_namespaces().filters(own).send().await.unwrap();
    assert_eq!(listed.namespaces().len(), 3);
    let shared = NamespaceFilter::builder()
        .name(NamespaceFilterName::ResourceOwner)
        .values("OTHER_ACCOUNTS")
        .build()
        .unwrap();
    let listed = client
        .list_namespaces()
        .filters(shared)
        .send()
        .await
        .unwrap();
    assert!(listed.namespaces().is_empty());
}

// DnsConfig.NamespaceId is deprecated, and older scripts still send it.
#[allow(deprecated)]
async fn services_in_dns_namespaces_take_dns_config_checked_as_cloud_map_does(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let ns = private_namespace(&client, "apps.local").await;
    let http = http_namespace(&client, "api.local").await;

    let created = client
        .create_service()
        .name("colors")
        .namespace_id(&ns)
        .dns_config(dns_config(
            RoutingPolicy::Multivalue,
            vec![record(RecordType::A, 60), record(RecordType::Aaaa, 30)],
        ))
        .send()
        .await
        .unwrap();
    let svc = created.service().unwrap();
    assert_eq!(svc.r#type(), Some(&ServiceType::DnsHttp));
    let config = svc.dns_config().unwrap();
    assert_eq!(config.routing_policy(), Some(&RoutingPolicy::Multivalue));
    assert_eq!(config.namespace_id(), Some(ns.as_str()));
    let records: Vec<(RecordType, i64)> = config
        .dns_records()
        .iter()
        .map(|r| (r.r#type().clone(), r.ttl()))
        .collect();
    assert_eq!(records, vec![(RecordType::A, 60), (RecordType::Aaaa, 30)]);
    let svc_id = svc.id().unwrap().to_string();
    let got = client.get_service().id(&svc_id).send().await.unwrap();
    assert_eq!(got.service().unwrap().dns_config(), Some(config));
    // The routing policy defaults to MULTIVALUE.
    let srv = client
        .create_service()
        .name("_sip._tcp")
        .namespace_id(&ns)
        .dns_config(
            DnsConfig::builder()
                .dns_records(record(RecordType::Srv, 10))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        srv.service()
            .unwrap()
            .dns_config()
            .unwrap()
            .routing_policy(),
        Some(&RoutingPolicy::Multivalue)
    );
    // The deprecated DnsConfig.NamespaceId still names the namespace.
    let old_style = client
        .create_service()
        .name("legacy")
        .dns_config(
            DnsConfig::builder()
                .namespace_id(&ns)
                .dns_records(record(RecordType::A, 60))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        old_style.service().unwrap().namespace_id(),
        Some(ns.as_str())
    );
    // A CNAME service routes WEIGHTED.
    dns_service(
        &client,
        &ns,
        "db",
        dns_config(RoutingPolicy::Weighted, vec![record(RecordType::Cname, 60)]),
    )
    .await;
    // An API-only service in a DNS namespace has no records.
    let api_only = client
        .create_service()
        .name("api-only")
        .namespace_id(&ns)
        .r#type(ServiceTypeOption::Http)
        .send()
        .await
        .unwrap();
    let api_only = api_only.service().unwrap();
    assert_eq!(api_only.r#type(), Some(&ServiceType::Http));
    assert!(api_only.dns_config().is_none());

    // What Cloud Map refuses.
    let refused = |policy: RoutingPolicy, records: Vec<DnsRecord>, name: &'static str| {
        let client = client.clone();
        let ns = ns.clone();
        async move {
            message(
                client
                    .create_service()
                    .name(name)
                    .namespace_id(&ns)
                    .dns_config(dns_config(policy, records))
                    .send()
                    .await,
            )
        }
    };
    let msg = refused(
        RoutingPolicy::Multivalue,
        vec![record(RecordType::Cname, 60)],
        "cname-multi",
    )
    .await;
    assert!(msg.contains("WEIGHTED"), "{msg}");
    let msg = refused(
        RoutingPolicy::Weighted,
        vec![record(RecordType::Cname, 60), record(RecordType::A, 60)],
        "cname-and-a",
    )
    .await;
    assert!(msg.contains("CNAME"), "{msg}");
    let msg = refused(
        RoutingPolicy::Multivalue,
        vec![record(RecordType::A, 60), record(RecordType::A, 10)],
        "twice-a",
    )
    .await;
    assert!(msg.contains("once"), "{msg}");
    let msg = refused(RoutingPolicy::Multivalue, vec![], "no-records").await;
    assert!(msg.contains("at least one"), "{msg}");
    assert_eq!(
        code(
            client
                .create_service()
                .name("both")
                .namespace_id(&ns)
                .r#type(ServiceTypeOption::Http)
                .dns_config(dns_config(
                    RoutingPolicy::Multivalue,
                    vec![record(RecordType::A, 60)]
                ))
                .send()
                .await
        ),
        "InvalidInput"
    );
    let msg = message(
        client
            .create_service()
            .name("web")
            .namespace_id(&http)
            .dns_config(dns_config(
                RoutingPolicy::Multivalue,
                vec![record(RecordType::A, 60)],
            ))
            .send()
            .await,
    );
    assert_eq!(
        msg,
        "DnsConfig is not supported for services in HTTP namespaces"
    );
    // Names differing only by case are one DNS name.
    assert_eq!(
        code(
            client
                .create_service()
                .name("COLORS")
                .namespace_id(&ns)
                .dns_config(dns_config(
                    RoutingPolicy::Multivalue,
                    vec![record(RecordType::A, 60)]
                ))
                .send()
                .await
        ),
        "ServiceAlreadyExists"
    );
    // ...but not in an HTTP namespace, which DNS never sees.
    client
        .create_service()
        .name("Web")
        .namespace_id(&http)
        .send()
        .await
        .unwrap();
    client
        .create_service()
        .name("web")
        .namespace_id(&http)
        .send()
        .await
        .unwrap();
    // Summaries carry the type and the records.
    let listed = client.list_services().send().await.unwrap();
    let colors = listed
        .services()
        .iter()
        .find(|s| s.name() == Some("colors"))
        .unwrap();
    assert_eq!(colors.r#type(), Some(&ServiceType::DnsHttp));
    assert_eq!(colors.dns_config().unwrap().dns_records().len(), 2);
}

#[allow(deprecated)]
async fn dns_config_with_a_namespace_that_does_not_exist_is_namespace_not_found(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let a = dns_config(RoutingPolicy::Multivalue, vec![record(RecordType::A, 60)]);
    assert_eq!(
        code(
            client
                .create_service()
                .name("colors")
                .namespace_id("ns-0000000000000000")
                .dns_config(a.clone())
                .send()
                .await
        ),
        "NamespaceNotFound"
    );
    assert_eq!(
        code(
            client
                .create_service()
                .name("colors")
                .dns_config(
                    DnsConfig::builder()
                        .namespace_id("ns-0000000000000000")
                        .dns_records(record(RecordType::A, 60))
                        .build()
                        .unwrap()
                )
                .send()
                .await
        ),
        "NamespaceNotFound"
    );
    // Without any namespace the request is incomplete.
    assert_eq!(
        code(
            client
                .create_service()
                .name("colors")
                .dns_config(a)
                .send()
                .await
        ),
        "InvalidInput"
    );
}

async fn instances_of_dns_services_carry_the_attributes_their_records_need(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let ns = private_namespace(&client, "apps.local").await;
    let colors = dns_service(
        &client,
        &ns,
        "colors",
        dns_config(
            RoutingPolicy::Multivalue,
            vec![record(RecordType::A, 60), record(RecordType::Aaaa, 30)],
        ),
    )
    .await;
    let sip = dns_service(
        &client,
        &ns,
        "sip",
        dns_config(RoutingPolicy::Multivalue, vec![record(RecordType::Srv, 10)]),
    )
    .await;
    let db = dns_service(
        &client,
        &ns,
        "db",
        dns_config(
            RoutingPolicy::Weighted,
            vec![record(RecordType::Cname, 300)],
        ),
    )
    .await;
    let refuse = |svc: &str, attrs: &[(&str, &str)]| {
        let mut req = client
            .register_instance()
            .service_id(svc)
            .instance_id("i-1");
        for (k, v) in attrs {
            req = req.attributes(*k, *v);
        }
        async move { message(req.send().await) }
    };
    let msg = refuse(&colors, &[("AWS_INSTANCE_IPV6", "fd00::1")]).await;
    assert!(msg.contains("AWS_INSTANCE_IPV4"), "{msg}");
    let msg = refuse(&colors, &[("AWS_INSTANCE_IPV4", "10.0.0.1")]).await;
    assert!(msg.contains("AWS_INSTANCE_IPV6"), "{msg}");
    let msg = refuse(&sip, &[("AWS_INSTANCE_IPV4", "10.0.0.1")]).await;
    assert!(msg.contains("AWS_INSTANCE_PORT"), "{msg}");
    let msg = refuse(&sip, &[("AWS_INSTANCE_PORT", "5060")]).await;
    assert!(msg.contains("AWS_INSTANCE_IPV4"), "{msg}");
    let msg = refuse(&db, &[("AWS_INSTANCE_IPV4", "10.0.0.1")]).await;
    assert!(msg.contains("AWS_INSTANCE_CNAME"), "{msg}");
    let msg = refuse(&db, &[("AWS_INSTANCE_CNAME", "not a name")]).await;
    assert!(msg.contains("AWS_INSTANCE_CNAME"), "{msg}");
    let msg = refuse(
        &colors,
        &[
            ("AWS_INSTANCE_IPV4", "10.0.0.1"),
            ("AWS_INSTANCE_IPV6", "fd00::1"),
            ("AWS_ALIAS_DNS_NAME", "lb.example.com"),
        ],
    )
    .await;
    assert!(msg.contains("AWS_ALIAS_DNS_NAME"), "{msg}");

    register(
        &client,
        &colors,
        "red-1",
        &[
            ("AWS_INSTANCE_IPV4", "10.0.0.1"),
            ("AWS_INSTANCE_IPV6", "fd00::1"),
        ],
    )
    .await;
    register(
        &client,
        &colors,
        "red-2",
        &[
            ("AWS_INSTANCE_IPV4", "10.0.0.2"),
            ("AWS_INSTANCE_IPV6", "fd00::2"),
        ],
    )
    .await;
    register(
        &client,
        &sip,
        "edge-1",
        &[
            ("AWS_INSTANCE_IPV4", "10.0.1.1"),
            ("AWS_INSTANCE_PORT", "5060"),
        ],
    )
    .await;
    register(
        &client,
        &db,
        "primary",
        &[("AWS_INSTANCE_CNAME", "db1.example.com")],
    )
    .await;

    // The records a DNS server answers with, as the registry computes them.
    let shown = |records: &weft_registry::dns::ServiceRecords, name: &str, kind: DnsType| {
        let mut out: Vec<String> = records
            .records
            .iter()
            .filter(|r| r.name == name && r.data.kind() == kind)
            .map(|r| format!("{} {}", r.ttl, r.data))
            .collect();
        out.sort();
        out
    };
    let records = registry
        .service
        .dns_records("apps.local", "colors")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        shown(&records, "colors.apps.local", DnsType::A),
        vec!["60 10.0.0.1", "60 10.0.0.2"]
    );
    assert_eq!(
        shown(&records, "colors.apps.local", DnsType::Aaaa),
        vec!["30 fd00::1", "30 fd00::2"]
    );
    // An unhealthy instance leaves the answer.
    client
        .update_instance_custom_health_status()
        .service_id(&colors)
        .instance_id("red-2")
        .status(CustomHealthStatus::Unhealthy)
        .send()
        .await
        .unwrap();
    let records = registry
        .service
        .dns_records("apps.local", "colors")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        shown(&records, "colors.apps.local", DnsType::A),
        vec!["60 10.0.0.1"]
    );
    let records = registry
        .service
        .dns_records("apps.local", "sip")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        shown(&records, "sip.apps.local", DnsType::Srv),
        vec!["10 1 1 5060 edge-1.sip.apps.local"]
    );
    assert_eq!(
        shown(&records, "edge-1.sip.apps.local", DnsType::A),
        vec!["10 10.0.1.1"]
    );
    let records = registry
        .service
        .dns_records("apps.local", "db")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        records
            .answer("db.apps.local.", DnsType::Cname, 3)
            .iter()
            .map(|r| r.data.to_string())
            .collect::<Vec<_>>(),
        vec!["db1.example.com"]
    );
    assert!(registry
        .service
        .dns_records("apps.local", "nope")
        .await
        .unwrap()
        .is_none());
}

async fn update_service_changes_ttls_and_the_description_but_never_record_types(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let ns = private_namespace(&client, "apps.local").await;
    let http = http_namespace(&client, "api.local").await;
    let svc = dns_service(
        &client,
        &ns,
        "db",
        dns_config(RoutingPolicy::Weighted, vec![record(RecordType::Cname, 60)]),
    )
    .await;
    let change = |records: Vec<DnsRecord>| {
        ServiceChange::builder()
            .description("the database")
            .dns_config(
                DnsConfigChange::builder()
                    .set_dns_records(Some(records))
                    .build()
                    .unwrap(),
            )
            .build()
    };
    let updated = client
        .update_service()
        .id(&svc)
        .service(change(vec![record(RecordType::Cname, 5)]))
        .send()
        .await
        .unwrap();
    let op = client
        .get_operation()
        .operation_id(updated.operation_id().unwrap())
        .send()
        .await
        .unwrap();
    let op = op.operation().unwrap();
    assert_eq!(op.r#type(), Some(&OperationType::UpdateService));
    assert_eq!(op.status(), Some(&OperationStatus::Success));
    assert_eq!(op.targets().unwrap()[&OperationTargetType::Service], svc);
    let got = client.get_service().id(&svc).send().await.unwrap();
    let got = got.service().unwrap();
    assert_eq!(got.description(), Some("the database"));
    let config = got.dns_config().unwrap();
    // The routing policy stays, the TTL changes.
    assert_eq!(config.routing_policy(), Some(&RoutingPolicy::Weighted));
    assert_eq!(config.dns_records()[0].ttl(), 5);
    // The custom health check stays as it was.
    assert!(got.health_check_custom_config().is_some());

    let msg = message(
        client
            .update_service()
            .id(&svc)
            .service(change(vec![record(RecordType::A, 5)]))
            .send()
            .await,
    );
    assert!(msg.contains("record types"), "{msg}");
    // A service in an HTTP namespace cannot be updated.
    let web = client
        .create_service()
        .name("web")
        .namespace_id(&http)
        .send()
        .await
        .unwrap();
    let web = web.service().unwrap().id().unwrap().to_string();
    assert_eq!(
        code(
            client
                .update_service()
                .id(&web)
                .service(ServiceChange::builder().description("x").build())
                .send()
                .await
        ),
        "InvalidInput"
    );
    assert_eq!(
        code(
            client
                .update_service()
                .id("srv-0000000000000000")
                .service(ServiceChange::builder().description("x").build())
                .send()
                .await
        ),
        "ServiceNotFound"
    );
}

async fn service_attributes_are_added_read_and_deleted(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let ns = http_namespace(&client, "apps.local").await;
    let svc = client
        .create_service()
        .name("colors")
        .namespace_id(&ns)
        .send()
        .await
        .unwrap();
    let svc = svc.service().unwrap().clone();
    let id = svc.id().unwrap();
    client
        .update_service_attributes()
        .service_id(id)
        .attributes("team", "paint")
        .attributes("tier", "gold")
        .send()
        .await
        .unwrap();
    client
        .update_service_attributes()
        .service_id(svc.arn().unwrap())
        .attributes("tier", "silver")
        .send()
        .await
        .unwrap();
    let got = client
        .get_service_attributes()
        .service_id(id)
        .send()
        .await
        .unwrap();
    let attrs = got.service_attributes().unwrap();
    assert_eq!(attrs.service_arn(), svc.arn());
    assert_eq!(attrs.resource_owner(), Some("000000000000"));
    let map: BTreeMap<&str, &str> = attrs
        .attributes()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(map, BTreeMap::from([("team", "paint"), ("tier", "silver")]));

    client
        .delete_service_attributes()
        .service_id(id)
        .attributes("tier")
        .attributes("never-set")
        .send()
        .await
        .unwrap();
    let got = client
        .get_service_attributes()
        .service_id(id)
        .send()
        .await
        .unwrap();
    let keys: Vec<&String> = got
        .service_attributes()
        .unwrap()
        .attributes()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(keys, vec!["team"]);

    // At most 30 attributes in all.
    let mut many = client.update_service_attributes().service_id(id);
    for i in 0..30 {
        many = many.attributes(format!("k{i}"), "v");
    }
    assert_eq!(
        code(many.send().await),
        "ServiceAttributesLimitExceededException"
    );
    assert_eq!(
        code(
            client
                .get_service_attributes()
                .service_id("srv-0000000000000000")
                .send()
                .await
        ),
        "ServiceNotFound"
    );
    assert_eq!(
        code(
            client
                .delete_service_attributes()
                .service_id("srv-0000000000000000")
                .attributes("team")
                .send()
                .await
        ),
        "ServiceNotFound"
    );
}

async fn instance_health_is_reported_per_instance_and_paged(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let ns = private_namespace(&client, "apps.local").await;
    let svc = dns_service(
        &client,
        &ns,
        "colors",
        dns_config(RoutingPolicy::Multivalue, vec![record(RecordType::A, 60)]),
    )
    .await;
    for (id, ip) in [("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")] {
        register(&client, &svc, id, &[("AWS_INSTANCE_IPV4", ip)]).await;
    }
    client
        .update_instance_custom_health_status()
        .service_id(&svc)
        .instance_id("b")
        .status(CustomHealthStatus::Unhealthy)
        .send()
        .await
        .unwrap();
    let all = client
        .get_instances_health_status()
        .service_id(&svc)
        .send()
        .await
        .unwrap();
    let status = all.status().unwrap();
    assert_eq!(status.len(), 3);
    assert_eq!(status["a"], HealthStatus::Healthy);
    assert_eq!(status["b"], HealthStatus::Unhealthy);
    let some = client
        .get_instances_health_status()
        .service_id(&svc)
        .instances("b")
        .instances("c")
        .send()
        .await
        .unwrap();
    let mut ids: Vec<&String> = some.status().unwrap().keys().collect();
    ids.sort();
    assert_eq!(ids, vec!["b", "c"]);
    // Pages of two, then one.
    let first = client
        .get_instances_health_status()
        .service_id(&svc)
        .max_results(2)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().unwrap().len(), 2);
    let rest = client
        .get_instances_health_status()
        .service_id(&svc)
        .max_results(2)
        .next_token(first.next_token().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status().unwrap().len(), 1);
    assert!(rest.next_token().is_none());
    assert_eq!(
        code(
            client
                .get_instances_health_status()
                .service_id(&svc)
                .instances("nope")
                .send()
                .await
        ),
        "InstanceNotFound"
    );
    assert_eq!(
        code(
            client
                .get_instances_health_status()
                .service_id("srv-0000000000000000")
                .send()
                .await
        ),
        "ServiceNotFound"
    );
    // Without a custom health check, health is UNKNOWN.
    let plain = client
        .create_service()
        .name("plain")
        .namespace_id(&ns)
        .dns_config(dns_config(
            RoutingPolicy::Multivalue,
            vec![record(RecordType::A, 60)],
        ))
        .send()
        .await
        .unwrap();
    let plain = plain.service().unwrap().id().unwrap().to_string();
    register(&client, &plain, "p", &[("AWS_INSTANCE_IPV4", "10.0.0.9")]).await;
    let got = client
        .get_instances_health_status()
        .service_id(&plain)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().unwrap()["p"].as_str(), "UNKNOWN");
}

async fn list_operations_filters_by_type_namespace_service_status_and_date(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 5;
    let ns = private_namespace(&client, "apps.local").await;
    let other = http_namespace(&client, "api.local").await;
    let svc = dns_service(
        &client,
        &ns,
        "colors",
        dns_config(RoutingPolicy::Multivalue, vec![record(RecordType::A, 60)]),
    )
    .await;
    let registered = register(&client, &svc, "a", &[("AWS_INSTANCE_IPV4", "10.0.0.1")]).await;

    let list = |filters: Vec<OperationFilter>| {
        let client = client.clone();
        async move {
            let out = client
                .list_operations()
                .set_filters(Some(filters))
                .send()
                .await
                .unwrap();
            assert!(out
                .operations()
                .iter()
                .all(|o| o.status() == Some(&OperationStatus::Success)));
            let mut ids: Vec<String> = out
                .operations()
                .iter()
                .map(|o| o.id().unwrap().to_string())
                .collect();
            ids.sort();
            ids
        }
    };
    let filter = |name: OperationFilterName, condition: FilterCondition, values: &[&str]| {
        OperationFilter::builder()
            .name(name)
            .condition(condition)
            .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
            .build()
            .unwrap()
    };
    assert_eq!(list(vec![]).await.len(), 3);
    assert_eq!(
        list(vec![filter(
            OperationFilterName::Type,
            FilterCondition::Eq,
            &["REGISTER_INSTANCE"]
        )])
        .await,
        vec![registered.clone()]
    );
    assert_eq!(
        list(vec![filter(
            OperationFilterName::Type,
            FilterCondition::In,
            &["CREATE_NAMESPACE", "REGISTER_INSTANCE"]
        )])
        .await
        .len(),
        3
    );
    assert_eq!(
        list(vec![filter(
            OperationFilterName::NamespaceId,
            FilterCondition::Eq,
            &[&other]
        )])
        .await
        .len(),
        1
    );
    assert_eq!(
        list(vec![filter(
            OperationFilterName::ServiceId,
            FilterCondition::Eq,
            &[&svc]
        )])
        .await,
        vec![registered]
    );
    assert_eq!(
        list(vec![filter(
            OperationFilterName::Status,
            FilterCondition::In,
            &["PENDING", "FAIL"]
        )])
        .await
        .len(),
        0
    );
    let from = started.to_string();
    let to = (started + 3600).to_string();
    assert_eq!(
        list(vec![filter(
            OperationFilterName::UpdateDate,
            FilterCondition::Between,
            &[&from, &to]
        )])
        .await
        .len(),
        3
    );
    assert_eq!(
        list(vec![filter(
            OperationFilterName::UpdateDate,
            FilterCondition::Between,
            &["0", "1000"]
        )])
        .await
        .len(),
        0
    );
    // Pages.
    let first = client
        .list_operations()
        .max_results(2)
        .send()
        .await
        .unwrap();
    assert_eq!(first.operations().len(), 2);
    let rest = client
        .list_operations()
        .max_results(2)
        .next_token(first.next_token().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(rest.operations().len(), 1);
    // Conditions the filter does not support.
    for bad in [
        filter(
            OperationFilterName::NamespaceId,
            FilterCondition::In,
            &[&ns],
        ),
        filter(
            OperationFilterName::UpdateDate,
            FilterCondition::Eq,
            &[&from],
        ),
        filter(
            OperationFilterName::UpdateDate,
            FilterCondition::Between,
            &["yesterday", "now"],
        ),
    ] {
        assert_eq!(
            code(client.list_operations().filters(bad).send().await),
            "InvalidInput"
        );
    }
}

async fn namespaces_and_services_are_tagged_untagged_and_listed_by_arn(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let op = client
        .create_private_dns_namespace()
        .name("apps.local")
        .vpc("vpc-1")
        .tags(tag("team", "paint"))
        .send()
        .await
        .unwrap();
    let ns = created_namespace(&client, op.operation_id().unwrap()).await;
    let ns_arn = client
        .get_namespace()
        .id(&ns)
        .send()
        .await
        .unwrap()
        .namespace()
        .unwrap()
        .arn()
        .unwrap()
        .to_string();
    let listed = client
        .list_tags_for_resource()
        .resource_arn(&ns_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.tags(), &[tag("team", "paint")]);

    let svc = client
        .create_service()
        .name("colors")
        .namespace_id(&ns)
        .tags(tag("tier", "gold"))
        .send()
        .await
        .unwrap();
    let svc_arn = svc.service().unwrap().arn().unwrap().to_string();
    client
        .tag_resource()
        .resource_arn(&svc_arn)
        .tags(tag("tier", "silver"))
        .tags(tag("owner", "ana"))
        .send()
        .await
        .unwrap();
    let listed = client
        .list_tags_for_resource()
        .resource_arn(&svc_arn)
        .send()
        .await
        .unwrap();
    let mut tags: Vec<(String, String)> = listed
        .tags()
        .iter()
        .map(|t| (t.key().to_string(), t.value().to_string()))
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        vec![
            ("owner".to_string(), "ana".to_string()),
            ("tier".to_string(), "silver".to_string())
        ]
    );
    client
        .untag_resource()
        .resource_arn(&svc_arn)
        .tag_keys("tier")
        .tag_keys("absent")
        .send()
        .await
        .unwrap();
    let listed = client
        .list_tags_for_resource()
        .resource_arn(&svc_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.tags(), &[tag("owner", "ana")]);

    // ARNs of nothing, and things that are not ARNs.
    let gone =
        "arn:aws:servicediscovery:us-east-1:000000000000:service/srv-0000000000000000".to_string();
    assert_eq!(
        code(
            client
                .list_tags_for_resource()
                .resource_arn(&gone)
                .send()
                .await
        ),
        "ResourceNotFoundException"
    );
    assert_eq!(
        code(
            client
                .tag_resource()
                .resource_arn(&gone)
                .tags(tag("a", "b"))
                .send()
                .await
        ),
        "ResourceNotFoundException"
    );
    assert_eq!(
        code(
            client
                .untag_resource()
                .resource_arn(&gone)
                .tag_keys("a")
                .send()
                .await
        ),
        "ResourceNotFoundException"
    );
    assert_eq!(
        code(
            client
                .list_tags_for_resource()
                .resource_arn("colors")
                .send()
                .await
        ),
        "InvalidInput"
    );
    // Tag keys starting with aws: are reserved.
    assert_eq!(
        code(
            client
                .tag_resource()
                .resource_arn(&ns_arn)
                .tags(tag("aws:owner", "x"))
                .send()
                .await
        ),
        "InvalidInput"
    );
    // At most 50 tags on a resource.
    let mut many = client.tag_resource().resource_arn(&ns_arn);
    for i in 0..50 {
        many = many.tags(tag(&format!("k{i}"), "v"));
    }
    assert_eq!(code(many.send().await), "TooManyTagsException");
    let listed = client
        .list_tags_for_resource()
        .resource_arn(&ns_arn)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.tags().len(), 1);
}

async fn discover_instances_revision_moves_with_registrations_not_with_health(p: Protocol) {
    let registry = Registry::start().await;
    let client = registry.client(p);
    let ns = private_namespace(&client, "apps.local").await;
    let svc = dns_service(
        &client,
        &ns,
        "colors",
        dns_config(RoutingPolicy::Multivalue, vec![record(RecordType::A, 60)]),
    )
    .await;
    let revision = || {
        let client = client.clone();
        async move {
            client
                .discover_instances_revision()
                .namespace_name("apps.local")
                .service_name("colors")
                .send()
                .await
                .unwrap()
                .instances_revision()
                .unwrap()
        }
    };
    let empty = revision().await;
    register(&client, &svc, "a", &[("AWS_INSTANCE_IPV4", "10.0.0.1")]).await;
    let one = revision().await;
    assert!(one > empty, "{one} > {empty}");
    // The same number DiscoverInstances gives.
    let found = client
        .discover_instances()
        .namespace_name("apps.local")
        .service_name("colors")
        .send()
        .await
        .unwrap();
    assert_eq!(found.instances_revision(), Some(one));
    assert_eq!(found.instances().len(), 1);
    // Health changes leave it, as the model documents.
    client
        .update_instance_custom_health_status()
        .service_id(&svc)
        .instance_id("a")
        .status(CustomHealthStatus::Unhealthy)
        .send()
        .await
        .unwrap();
    assert_eq!(revision().await, one);
    client
        .deregister_instance()
        .service_id(&svc)
        .instance_id("a")
        .send()
        .await
        .unwrap();
    assert!(revision().await > one);
    assert_eq!(
        code(
            client
                .discover_instances_revision()
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
                .discover_instances_revision()
                .namespace_name("apps.local")
                .service_name("nope")
                .send()
                .await
        ),
        "ServiceNotFound"
    );
}
