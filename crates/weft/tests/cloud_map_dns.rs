//! Cloud Map's DNS namespaces answered by a real `weft server`: the official
//! AWS SDK for Rust sets up a private DNS namespace and its services and
//! registers instances, and a real resolver (hickory) asks the server's DNS
//! listener, as an application in the namespace's VPC asked Route 53.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aws_sdk_servicediscovery::config::{BehaviorVersion, Region};
use aws_sdk_servicediscovery::types::{
    CustomHealthStatus, DnsConfig, DnsRecord, HealthCheckCustomConfig, RecordType, RoutingPolicy,
};
use aws_sdk_servicediscovery::Client;
use common::WeftServer;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use weft_dns::proto::rr::RData;

fn cloud_map(server: &WeftServer) -> Client {
    let config = aws_sdk_servicediscovery::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(common::credentials_for(&server.addr))
        .endpoint_url(&server.addr)
        .build();
    Client::from_conf(config)
}

/// A resolver that asks only the server's DNS listener, with no cache.
fn resolver(server: &WeftServer) -> TokioResolver {
    let addr: SocketAddr = server.dns_addr.parse().unwrap();
    let mut name_server = NameServerConfig::udp_and_tcp(addr.ip());
    // Both transports are served on the one port.
    for connection in &mut name_server.connections {
        connection.port = addr.port();
    }
    let config = ResolverConfig::from_parts(None, vec![], vec![name_server]);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    let options = builder.options_mut();
    options.cache_size = 0;
    options.use_hosts_file = ResolveHosts::Never;
    options.attempts = 2;
    options.timeout = Duration::from_secs(2);
    builder.build().unwrap()
}

/// The IPv4 addresses `name` resolves to now (empty: no such name or no A records).
async fn ipv4(resolver: &TokioResolver, name: &str) -> Vec<String> {
    let mut found: Vec<String> = match resolver.ipv4_lookup(name).await {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    found.sort();
    found
}

/// Waits (a few seconds at most) until `name` resolves to `expected`: the
/// server rebuilds its zones moments after each change.
async fn resolves_to(resolver: &TokioResolver, name: &str, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = ipv4(resolver, name).await;
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} resolves to {found:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn record(kind: RecordType) -> DnsRecord {
    DnsRecord::builder().r#type(kind).ttl(5).build().unwrap()
}

#[tokio::test]
async fn instances_of_a_private_dns_namespace_resolve_as_they_register_turn_unhealthy_and_deregister(
) {
    let server = WeftServer::start();
    let sd = cloud_map(&server);
    let dns = resolver(&server);
    sd.create_private_dns_namespace()
        .name("apps.local")
        .vpc("vpc-1")
        .send()
        .await
        .unwrap();
    let namespaces = sd.list_namespaces().send().await.unwrap();
    let namespace = namespaces.namespaces()[0].id().unwrap().to_string();
    let colors = sd
        .create_service()
        .name("colors")
        .namespace_id(&namespace)
        .dns_config(
            DnsConfig::builder()
                .routing_policy(RoutingPolicy::Multivalue)
                .dns_records(record(RecordType::A))
                .build()
                .unwrap(),
        )
        .health_check_custom_config(HealthCheckCustomConfig::builder().build())
        .send()
        .await
        .unwrap();
    let colors = colors.service().unwrap().id().unwrap().to_string();
    let register = |id: &'static str, ip: &'static str| {
        sd.register_instance()
            .service_id(&colors)
            .instance_id(id)
            .attributes("AWS_INSTANCE_IPV4", ip)
            .send()
    };
    // Nothing registered yet: the name does not exist.
    resolves_to(&dns, "colors.apps.local.", &[]).await;
    register("red", "10.0.0.1").await.unwrap();
    register("blue", "10.0.0.2").await.unwrap();
    resolves_to(&dns, "colors.apps.local.", &["10.0.0.1", "10.0.0.2"]).await;

    // An unhealthy instance leaves the answers, and comes back when healthy.
    let health = |id: &'static str, status: CustomHealthStatus| {
        sd.update_instance_custom_health_status()
            .service_id(&colors)
            .instance_id(id)
            .status(status)
            .send()
    };
    health("blue", CustomHealthStatus::Unhealthy).await.unwrap();
    resolves_to(&dns, "colors.apps.local.", &["10.0.0.1"]).await;
    health("blue", CustomHealthStatus::Healthy).await.unwrap();
    resolves_to(&dns, "colors.apps.local.", &["10.0.0.1", "10.0.0.2"]).await;

    // Deregistered instances are gone.
    sd.deregister_instance()
        .service_id(&colors)
        .instance_id("red")
        .send()
        .await
        .unwrap();
    resolves_to(&dns, "colors.apps.local.", &["10.0.0.2"]).await;

    // Names outside the namespace are not Weft's to answer.
    assert!(dns.ipv4_lookup("example.com.").await.is_err());
}

#[tokio::test]
async fn an_srv_service_answers_each_instance_port_with_its_address() {
    let server = WeftServer::start();
    let sd = cloud_map(&server);
    let dns = resolver(&server);
    sd.create_private_dns_namespace()
        .name("grpc.internal")
        .vpc("vpc-1")
        .send()
        .await
        .unwrap();
    let namespace = sd.list_namespaces().send().await.unwrap().namespaces()[0]
        .id()
        .unwrap()
        .to_string();
    let service = sd
        .create_service()
        .name("api")
        .namespace_id(&namespace)
        .dns_config(
            DnsConfig::builder()
                .dns_records(record(RecordType::Srv))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let service = service.service().unwrap().id().unwrap().to_string();
    sd.register_instance()
        .service_id(&service)
        .instance_id("api-1")
        .attributes("AWS_INSTANCE_IPV4", "10.1.0.7")
        .attributes("AWS_INSTANCE_PORT", "50051")
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let lookup = loop {
        if let Ok(lookup) = dns.srv_lookup("api.grpc.internal.").await {
            break lookup;
        }
        assert!(
            Instant::now() < deadline,
            "api.grpc.internal has no SRV records"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let srv: Vec<(String, u16)> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((srv.target.to_ascii().to_lowercase(), srv.port)),
            _ => None,
        })
        .collect();
    assert_eq!(srv, [("api-1.api.grpc.internal.".to_string(), 50051)]);
    resolves_to(&dns, "api-1.api.grpc.internal.", &["10.1.0.7"]).await;
}
