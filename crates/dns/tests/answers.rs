//! Cloud Map scenarios against a running server, asked by hickory's
//! resolver and by single DNS messages over UDP and TCP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use common::{addresses, instance, namespace, query, Server};
use weft_dns::proto::op::{Edns, ResponseCode};
use weft_dns::proto::rr::{RData, RecordType};
use weft_dns::{Rdata, RecordSet, RoutingPolicy, Soa, Zone, Zones, CLOUD_MAP_SOA_TTL};

/// `example.local` with an IPv6 service `web` (A and AAAA) and a CNAME
/// service `legacy` whose instance points at `db.example.com`.
fn mixed_namespace() -> Zones {
    let mut zone = Zone::new("example.local", Soa::new(3, CLOUD_MAP_SOA_TTL)).unwrap();
    zone.insert(RecordSet {
        name: "web.example.local".to_owned(),
        ttl: 300,
        routing: RoutingPolicy::Multivalue,
        records: vec![
            Rdata::A(Ipv4Addr::new(10, 1, 0, 1)),
            Rdata::Aaaa("fd00::1".parse::<Ipv6Addr>().unwrap()),
        ],
    })
    .unwrap();
    zone.insert(RecordSet {
        name: "legacy.example.local".to_owned(),
        ttl: 30,
        routing: RoutingPolicy::Weighted,
        records: vec![Rdata::Cname("db.example.com".to_owned())],
    })
    .unwrap();
    let mut zones = Zones::new();
    zones.insert(zone).unwrap();
    zones
}

#[tokio::test]
async fn a_registered_instance_resolves_to_its_ipv4_address_with_a_real_resolver() {
    let server = Server::start(namespace(RoutingPolicy::Multivalue, &[instance(1)])).await;
    let resolver = server.resolver();
    let lookup = resolver
        .ipv4_lookup("backend.example.local.")
        .await
        .unwrap();
    assert_eq!(addresses(lookup.answers()), ["10.0.0.1"]);
    assert_eq!(lookup.answers()[0].ttl, 60);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_registered_instance_resolves_over_udp_and_tcp_with_the_authoritative_flag() {
    let server = Server::start(namespace(RoutingPolicy::Multivalue, &[instance(1)])).await;
    for answer in [
        server
            .ask_udp("backend.example.local.", RecordType::A)
            .await,
        server
            .ask_tcp("backend.example.local.", RecordType::A)
            .await,
    ] {
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert!(answer.metadata.authoritative);
        assert!(!answer.metadata.recursion_available);
        assert_eq!(addresses(&answer.answers), ["10.0.0.1"]);
    }
}

#[tokio::test]
async fn an_ipv6_instance_resolves_to_its_aaaa_record() {
    let server = Server::start(mixed_namespace()).await;
    let lookup = server
        .resolver()
        .ipv6_lookup("web.example.local.")
        .await
        .unwrap();
    assert_eq!(addresses(lookup.answers()), ["fd00::1"]);
    let both = server
        .resolver()
        .lookup_ip("web.example.local.")
        .await
        .unwrap();
    let mut ips: Vec<String> = both.iter().map(|ip| ip.to_string()).collect();
    ips.sort();
    assert_eq!(ips, ["10.1.0.1", "fd00::1"]);
}

#[tokio::test]
async fn an_srv_service_answers_each_instance_port_with_its_address_as_additional_data() {
    let server = Server::start(namespace(
        RoutingPolicy::Multivalue,
        &[instance(1), instance(2)],
    ))
    .await;
    let lookup = server
        .resolver()
        .srv_lookup("backend.example.local.")
        .await
        .unwrap();
    let mut targets: Vec<(String, u16)> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(srv) => Some((srv.target.to_string(), srv.port)),
            _ => None,
        })
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            ("i-1.backend.example.local.".to_owned(), 8001),
            ("i-2.backend.example.local.".to_owned(), 8002)
        ]
    );
    let answer = server
        .ask_udp("backend.example.local.", RecordType::SRV)
        .await;
    assert_eq!(answer.answers.len(), 2);
    assert_eq!(addresses(&answer.additionals), ["10.0.0.1", "10.0.0.2"]);
    let names: HashSet<String> = answer
        .additionals
        .iter()
        .map(|r| r.name.to_string())
        .collect();
    assert!(names.contains("i-1.backend.example.local."));
}

#[tokio::test]
async fn a_cname_service_answers_its_instance_alias() {
    let server = Server::start(mixed_namespace()).await;
    let answer = server
        .ask_udp("legacy.example.local.", RecordType::CNAME)
        .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer.answers.len(), 1);
    assert!(
        matches!(&answer.answers[0].data, RData::CNAME(c) if c.0.to_string() == "db.example.com.")
    );
    assert_eq!(answer.answers[0].ttl, 30);
    // Asked for an address, the server answers the alias; following it is
    // the resolver's business (the target is not in this namespace).
    let a = server.ask_udp("legacy.example.local.", RecordType::A).await;
    assert_eq!(a.answers.len(), 1);
    assert_eq!(a.answers[0].record_type(), RecordType::CNAME);
}

#[tokio::test]
async fn a_service_name_nobody_registered_answers_nxdomain_with_the_namespace_soa() {
    let server = Server::start(namespace(RoutingPolicy::Multivalue, &[instance(1)])).await;
    let answer = server
        .ask_udp("frontend.example.local.", RecordType::A)
        .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert!(answer.metadata.authoritative);
    assert!(answer.answers.is_empty());
    assert_eq!(answer.authorities.len(), 1);
    let soa = &answer.authorities[0];
    assert_eq!(soa.name.to_string(), "example.local.");
    assert_eq!(soa.ttl, CLOUD_MAP_SOA_TTL);
    let error = server
        .resolver()
        .ipv4_lookup("frontend.example.local.")
        .await
        .unwrap_err();
    assert!(error.is_nx_domain(), "{error}");
}

#[tokio::test]
async fn a_service_without_aaaa_records_answers_nodata_for_aaaa() {
    let server = Server::start(namespace(RoutingPolicy::Multivalue, &[instance(1)])).await;
    let answer = server
        .ask_udp("backend.example.local.", RecordType::AAAA)
        .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());
    assert_eq!(answer.authorities[0].record_type(), RecordType::SOA);
    let error = server
        .resolver()
        .ipv6_lookup("backend.example.local.")
        .await
        .unwrap_err();
    assert!(
        error.is_no_records_found() && !error.is_nx_domain(),
        "{error}"
    );
}

#[tokio::test]
async fn a_name_outside_every_namespace_is_refused() {
    let server = Server::start(namespace(RoutingPolicy::Multivalue, &[instance(1)])).await;
    for answer in [
        server.ask_udp("www.example.com.", RecordType::A).await,
        server.ask_tcp("local.", RecordType::SOA).await,
    ] {
        assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
        assert!(!answer.metadata.authoritative);
        assert!(answer.answers.is_empty() && answer.authorities.is_empty());
    }
}

#[tokio::test]
async fn the_namespace_apex_answers_its_soa_and_ns() {
    let server = Server::start(namespace(RoutingPolicy::Multivalue, &[])).await;
    let soa = server.ask_udp("example.local.", RecordType::SOA).await;
    assert!(matches!(&soa.answers[0].data, RData::SOA(s) if s.serial == 1 && s.minimum == 86_400));
    assert_eq!(soa.answers[0].ttl, CLOUD_MAP_SOA_TTL);
    let ns = server.ask_tcp("EXAMPLE.local.", RecordType::NS).await;
    assert_eq!(ns.answers[0].record_type(), RecordType::NS);
}

#[tokio::test]
async fn instances_that_register_turn_unhealthy_and_deregister_are_seen_at_the_next_query() {
    let server = Server::start(namespace(RoutingPolicy::Multivalue, &[instance(1)])).await;
    let resolver = server.resolver();
    let ask = || async {
        match resolver.ipv4_lookup("backend.example.local.").await {
            Ok(lookup) => Ok(addresses(lookup.answers())),
            Err(error) => Err(error),
        }
    };
    assert_eq!(ask().await.unwrap(), ["10.0.0.1"]);

    // A second instance registers.
    server.publish(namespace(
        RoutingPolicy::Multivalue,
        &[instance(1), instance(2)],
    ));
    assert_eq!(ask().await.unwrap(), ["10.0.0.1", "10.0.0.2"]);

    // The first turns unhealthy: the registry leaves it out.
    server.publish(namespace(RoutingPolicy::Multivalue, &[instance(2)]));
    assert_eq!(ask().await.unwrap(), ["10.0.0.2"]);
    let srv = server
        .ask_tcp("backend.example.local.", RecordType::SRV)
        .await;
    assert_eq!(addresses(&srv.additionals), ["10.0.0.2"]);

    // The last deregisters: the service's name is gone.
    server.publish(namespace(RoutingPolicy::Multivalue, &[]));
    let error = ask().await.unwrap_err();
    assert!(error.is_nx_domain(), "{error}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_weighted_service_answers_one_instance_per_query() {
    let instances: Vec<_> = (1..=4).map(instance).collect();
    let server = Server::start(namespace(RoutingPolicy::Weighted, &instances)).await;
    let mut seen = HashSet::new();
    for _ in 0..40 {
        let answer = server
            .ask_udp("backend.example.local.", RecordType::A)
            .await;
        let got = addresses(&answer.answers);
        assert_eq!(got.len(), 1, "{got:?}");
        seen.extend(got);
    }
    // 40 draws among 4: the chance one instance is never drawn is
    // 4 × (3/4)^40 ≈ 4e-5.
    assert!(seen.len() >= 3, "answers are spread: {seen:?}");
}

#[tokio::test]
async fn a_multivalue_service_with_twenty_instances_answers_at_most_eight() {
    let instances: Vec<_> = (1..=20).map(instance).collect();
    let server = Server::start(namespace(RoutingPolicy::Multivalue, &instances)).await;
    let mut seen = HashSet::new();
    for _ in 0..10 {
        let answer = server
            .ask_udp("backend.example.local.", RecordType::A)
            .await;
        let got = addresses(&answer.answers);
        assert_eq!(got.len(), 8);
        assert_eq!(
            got.iter().collect::<HashSet<_>>().len(),
            8,
            "distinct: {got:?}"
        );
        seen.extend(got);
    }
    assert!(seen.len() > 8, "different queries get different instances");
    let lookup = server
        .resolver()
        .ipv4_lookup("backend.example.local.")
        .await
        .unwrap();
    assert_eq!(lookup.answers().len(), 8);
}

#[tokio::test]
async fn an_srv_answer_too_long_for_a_plain_udp_packet_is_truncated_and_whole_over_tcp() {
    // Eight SRV records with long targets and their eight A records do not
    // fit in 512 octets, the limit of a query without EDNS (RFC 1035 §4.2.1).
    let instances: Vec<_> = (1..=8)
        .map(|n| {
            let mut i = instance(n);
            i.id = format!("instance-with-a-rather-long-identifier-{n:02}");
            i
        })
        .collect();
    let server = Server::start(namespace(RoutingPolicy::Multivalue, &instances)).await;
    let udp = server
        .ask_udp("backend.example.local.", RecordType::SRV)
        .await;
    assert!(udp.metadata.truncation);
    let tcp = server
        .ask_tcp("backend.example.local.", RecordType::SRV)
        .await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 8);
    assert_eq!(tcp.additionals.len(), 8);
    // With EDNS and a 1232-octet buffer the same answer fits in UDP.
    let mut edns_query = query("backend.example.local.", RecordType::SRV);
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns_query.set_edns(edns);
    let bytes = common::exchange_udp(server.udp, &edns_query.to_vec().unwrap())
        .await
        .unwrap();
    let answer = weft_dns::proto::op::Message::from_vec(&bytes).unwrap();
    assert!(!answer.metadata.truncation);
    assert_eq!(answer.answers.len(), 8);
    assert!(answer.edns.is_some(), "an EDNS query gets an EDNS answer");
    // The resolver retries over TCP by itself.
    let lookup = server
        .resolver()
        .srv_lookup("backend.example.local.")
        .await
        .unwrap();
    assert_eq!(lookup.answers().len(), 8);
}

#[tokio::test]
async fn shutdown_stops_the_server_and_frees_its_ports() {
    let server = Server::start(namespace(RoutingPolicy::Multivalue, &[instance(1)])).await;
    let (udp, tcp) = (server.udp, server.tcp);
    server.stop().await.unwrap();
    tokio::net::UdpSocket::bind(udp).await.unwrap();
    tokio::net::TcpListener::bind(tcp).await.unwrap();
}
