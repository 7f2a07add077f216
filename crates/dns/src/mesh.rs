//! The meshes' virtual service names as DNS names, so that an application's
//! call to `http://colors.demo.local:8080` resolves without a DNS record of
//! its own (App Mesh asked users to create one).
//!
//! Behind Envoy's egress listener the address a name resolves to is not
//! used to route: Envoy routes HTTP by its `Host` header and TCP by port,
//! so a name needs only an address that leaves the workload's network
//! namespace, where interception sends it to Envoy. Each name gets a
//! virtual IP derived from the name alone ([`virtual_ipv4`],
//! [`virtual_ipv6`]), the same on every replica and after every restart,
//! in the ranges Istio allocates for its ServiceEntries: `240.240.0.0/16`
//! (RFC 1112's reserved class E, never a real host's) and a unique local
//! IPv6 prefix (RFC 4193), `fd00:77ef::/64`.
//!
//! Where a name falls inside a Cloud Map DNS namespace, the namespace's
//! records win: a service that registers addresses for the name (App Mesh's
//! usual `colors.apps.local` virtual service over the `colors` service of
//! the `apps.local` namespace) answers with them, as Route 53 did; the
//! virtual IP fills in only for a name the namespace gives no address or
//! alias. Outside every namespace, each name is a [`Zone::host`]: Weft
//! answers for the name itself, not for names under it.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::{LowerName, RecordType};
use sha2::{Digest, Sha256};
use weft_model::keys;
use weft_model::Kind;
use weft_store::{Range, StoreError, StoreSnapshot};

use crate::zones::parse_name;
use crate::{Rdata, RecordSet, RoutingPolicy, Soa, Zone, Zones};

/// Seconds a resolver may cache a virtual service name's addresses, and
/// its negative answers: as Istio's DNS proxy answers, short enough that a
/// deleted virtual service stops resolving soon.
pub const MESH_NAME_TTL: u32 = 30;

/// The network of virtual IPv4 addresses: `240.240.0.0/16`.
pub const VIRTUAL_IPV4_NETWORK: Ipv4Addr = Ipv4Addr::new(240, 240, 0, 0);

/// The network of virtual IPv6 addresses: `fd00:77ef::/64`, the name's
/// hash in the low 64 bits.
pub const VIRTUAL_IPV6_NETWORK: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77ef, 0, 0, 0, 0, 0, 0);

/// The SHA-256 of a name as DNS compares names: ASCII lower case, no
/// trailing dot. SHA-256 is fixed by its standard (FIPS 180-4), so the
/// addresses never change with a Rust or library release.
fn digest(name: &str) -> [u8; 32] {
    let canonical = name.trim_end_matches('.').to_ascii_lowercase();
    Sha256::digest(canonical.as_bytes()).into()
}

/// The virtual IPv4 address of a name: `240.240.x.y`, `x.y` taken from the
/// name's SHA-256 and never `0.0` or `255.255`. Two of 65,534 addresses
/// can collide; that costs nothing to routing, which does not use them.
pub fn virtual_ipv4(name: &str) -> Ipv4Addr {
    let [a, b, ..] = digest(name);
    let host = 1 + u32::from(u16::from_be_bytes([a, b])) % 65_534;
    Ipv4Addr::from(u32::from(VIRTUAL_IPV4_NETWORK) | host)
}

/// The virtual IPv6 address of a name: `fd00:77ef::/64` with the first 64
/// bits of the name's SHA-256 as its interface identifier.
pub fn virtual_ipv6(name: &str) -> Ipv6Addr {
    let digest = digest(name);
    let mut low = [0_u8; 8];
    low.copy_from_slice(&digest[..8]);
    Ipv6Addr::from(u128::from(VIRTUAL_IPV6_NETWORK) | u128::from(u64::from_be_bytes(low)))
}

/// Adds each virtual service name to `zones` with its virtual addresses
/// (A and AAAA), after the Cloud Map zones are in: inside a namespace's
/// zone unless the namespace already gives the name an address or alias,
/// else as a [`Zone::host`] with `serial` in its SOA. A name that is not a
/// valid DNS name is skipped (and logged).
pub fn add_virtual_services<'a>(
    zones: &mut Zones,
    names: impl IntoIterator<Item = &'a str>,
    serial: u32,
) {
    for name in names {
        let owner = match parse_name(name) {
            Ok(owner) => LowerName::new(&owner),
            Err(e) => {
                tracing::warn!(%name, error = %e, "virtual service name not served in DNS");
                continue;
            }
        };
        let set = RecordSet {
            name: owner.to_string(),
            ttl: MESH_NAME_TTL,
            routing: RoutingPolicy::Multivalue,
            records: vec![
                Rdata::A(virtual_ipv4(name)),
                Rdata::Aaaa(virtual_ipv6(name)),
            ],
        };
        let added = if let Some(zone) = zones.enclosing_mut(&owner) {
            let addressed = zone.nodes.get(&owner).is_some_and(|node| {
                [RecordType::A, RecordType::AAAA, RecordType::CNAME]
                    .iter()
                    .any(|t| node.contains_key(t))
            });
            if addressed {
                // The namespace's own records answer for the name.
                continue;
            }
            zone.insert(set)
        } else if zones.has_origin(&owner) {
            // Already a host zone: the name is in two meshes.
            continue;
        } else {
            Zone::host(name, Soa::new(serial, MESH_NAME_TTL)).and_then(|mut zone| {
                zone.insert(set)?;
                zones.insert(zone)
            })
        };
        if let Err(e) = added {
            tracing::warn!(%name, error = %e, "virtual service name not served in DNS");
        }
    }
}

/// Reads every mesh's virtual service names from a snapshot of the store:
/// the meshes and their services as of one revision.
pub async fn read(store: &dyn StoreSnapshot) -> Result<BTreeSet<String>, StoreError> {
    let meshes = store
        .range(Range::prefix(keys::scope_prefix(Kind::Mesh, "", None)))
        .await?;
    let mut names = BTreeSet::new();
    for mesh in &meshes.kvs {
        let Some(escaped) = mesh.key.strip_prefix("mesh/") else {
            continue;
        };
        let prefix = keys::scope_prefix(Kind::VirtualService, &keys::unescape(escaped), None);
        let services = store.range(Range::prefix(prefix.as_str())).await?;
        for service in &services.kvs {
            // `res/{mesh}/vs/{name}`: the name is the key's last segment.
            if let Some(name) = service.key.strip_prefix(prefix.as_str()) {
                names.insert(keys::unescape(name));
            }
        }
    }
    Ok(names)
}

/// Whether a changed key is a virtual service's (`res/{mesh}/vs/{name}`).
pub(crate) fn is_virtual_service_key(key: &str) -> bool {
    let mut parts = key.split('/');
    parts.next() == Some("res")
        && parts.next().is_some()
        && parts.next() == Some(Kind::VirtualService.key_code())
        && parts.next().is_some()
        && parts.next().is_none()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::CLOUD_MAP_SOA_TTL;

    fn ask(zones: &Zones, name: &str, qtype: RecordType) -> crate::Answer {
        let mut name = Name::from_ascii(name).unwrap();
        name.set_fqdn(true);
        zones.answer(&name, qtype, &mut StdRng::seed_from_u64(7))
    }

    fn data(records: &[Record]) -> Vec<RData> {
        records.iter().map(|r| r.data.clone()).collect()
    }

    #[test]
    fn a_name_always_gets_the_same_addresses_whatever_its_case_or_trailing_dot() {
        // Fixed values: a change here changes every workload's addresses.
        let v4 = virtual_ipv4("colors.demo.local");
        let v6 = virtual_ipv6("colors.demo.local");
        assert_eq!(v4, virtual_ipv4("Colors.Demo.Local."));
        assert_eq!(v6, virtual_ipv6("COLORS.demo.local."));
        assert_eq!(v4.octets()[..2], [240, 240]);
        assert_eq!(v6.segments()[..4], [0xfd00, 0x77ef, 0, 0]);
        assert_ne!(v4, virtual_ipv4("shapes.demo.local"));
        assert_ne!(v6, virtual_ipv6("shapes.demo.local"));
        assert_eq!(v4, "240.240.222.250".parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            v6,
            "fd00:77ef::def9:ac0:7566:19db".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn virtual_ipv4_addresses_are_never_the_network_or_broadcast_address() {
        for i in 0..20_000 {
            let [_, _, x, y] = virtual_ipv4(&format!("s{i}.mesh.local")).octets();
            assert!((x, y) != (0, 0) && (x, y) != (255, 255));
        }
    }

    #[test]
    fn a_virtual_service_outside_every_namespace_answers_its_addresses_and_claims_nothing_else() {
        let mut zones = Zones::new();
        add_virtual_services(&mut zones, ["colors.demo.local"], 3);
        let a = ask(&zones, "colors.demo.local.", RecordType::A);
        assert_eq!(a.response_code, ResponseCode::NoError);
        assert!(a.authoritative);
        assert_eq!(
            data(&a.answers),
            [RData::A(virtual_ipv4("colors.demo.local").into())]
        );
        assert_eq!(a.answers[0].ttl, MESH_NAME_TTL);
        let aaaa = ask(&zones, "COLORS.demo.local.", RecordType::AAAA);
        assert_eq!(
            data(&aaaa.answers),
            [RData::AAAA(virtual_ipv6("colors.demo.local").into())]
        );
        // A type the name lacks: NODATA with the SOA.
        let mx = ask(&zones, "colors.demo.local.", RecordType::MX);
        assert!(mx.is_nodata());
        assert_eq!(mx.authorities.len(), 1);
        // Names beside or under it are someone else's: refused, so the
        // workload's resolver asks its upstream.
        for other in ["demo.local.", "shapes.demo.local.", "x.colors.demo.local."] {
            assert_eq!(
                ask(&zones, other, RecordType::A).response_code,
                ResponseCode::Refused,
                "{other}"
            );
        }
    }

    #[test]
    fn nested_virtual_service_names_each_answer_their_own_addresses() {
        let mut zones = Zones::new();
        add_virtual_services(&mut zones, ["demo.local", "colors.demo.local"], 1);
        for name in ["demo.local", "colors.demo.local"] {
            let a = ask(&zones, name, RecordType::A);
            assert_eq!(data(&a.answers), [RData::A(virtual_ipv4(name).into())]);
        }
        assert_eq!(
            ask(&zones, "shapes.demo.local", RecordType::A).response_code,
            ResponseCode::Refused
        );
    }

    #[test]
    fn a_name_in_two_meshes_is_served_once() {
        let mut zones = Zones::new();
        add_virtual_services(&mut zones, ["colors.demo.local", "Colors.demo.local."], 1);
        assert_eq!(zones.len(), 1);
        let a = ask(&zones, "colors.demo.local", RecordType::A);
        assert_eq!(a.answers.len(), 1);
    }

    fn namespace() -> Zones {
        let mut zone = Zone::new("apps.local", Soa::new(1, CLOUD_MAP_SOA_TTL)).unwrap();
        zone.insert(RecordSet {
            name: "colors.apps.local".into(),
            ttl: 60,
            routing: RoutingPolicy::Multivalue,
            records: vec![Rdata::A(Ipv4Addr::new(10, 0, 0, 1))],
        })
        .unwrap();
        zone.insert(RecordSet {
            name: "grpc.apps.local".into(),
            ttl: 60,
            routing: RoutingPolicy::Multivalue,
            records: vec![Rdata::Srv {
                priority: 1,
                weight: 1,
                port: 50051,
                target: "i-1.grpc.apps.local".into(),
            }],
        })
        .unwrap();
        let mut zones = Zones::new();
        zones.insert(zone).unwrap();
        zones
    }

    #[test]
    fn inside_a_namespace_the_namespace_records_win_and_the_virtual_ip_fills_in_the_rest() {
        let mut zones = namespace();
        add_virtual_services(
            &mut zones,
            ["colors.apps.local", "shapes.apps.local", "grpc.apps.local"],
            1,
        );
        // Still one zone: the names joined the namespace's.
        assert_eq!(zones.len(), 1);
        // Cloud Map registered addresses for colors: they answer, alone.
        let colors = ask(&zones, "colors.apps.local", RecordType::A);
        assert_eq!(
            data(&colors.answers),
            [RData::A(Ipv4Addr::new(10, 0, 0, 1).into())]
        );
        assert!(ask(&zones, "colors.apps.local", RecordType::AAAA).is_nodata());
        // No instance of shapes is registered: the virtual IP answers.
        let shapes = ask(&zones, "shapes.apps.local", RecordType::A);
        assert_eq!(
            data(&shapes.answers),
            [RData::A(virtual_ipv4("shapes.apps.local").into())]
        );
        // An SRV-only name gains addresses beside its SRV records.
        let grpc = ask(&zones, "grpc.apps.local", RecordType::A);
        assert_eq!(
            data(&grpc.answers),
            [RData::A(virtual_ipv4("grpc.apps.local").into())]
        );
        assert_eq!(
            ask(&zones, "grpc.apps.local", RecordType::SRV)
                .answers
                .len(),
            1
        );
        // The namespace still claims its other names.
        assert_eq!(
            ask(&zones, "nothing.apps.local", RecordType::A).response_code,
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn virtual_service_keys_are_told_from_other_resources() {
        assert!(is_virtual_service_key("res/apps/vs/colors.apps.local"));
        assert!(!is_virtual_service_key("res/apps/vn/colors"));
        assert!(!is_virtual_service_key("res/apps/rt/router/route"));
        assert!(!is_virtual_service_key("mesh/apps"));
        assert!(!is_virtual_service_key("cloudmap/ns/ns-1"));
    }
}
