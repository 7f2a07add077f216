//! Answering one question against [`Zones`]: the authoritative algorithm
//! of RFC 1034 §4.3.2, less delegation (Cloud Map zones delegate
//! nothing). Pure: no I/O; randomness comes from the caller.

use std::collections::BTreeSet;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use rand::seq::index;
use rand::Rng;

use crate::zones::{Rrset, Selection, Zone, Zones, MULTIVALUE_MAX_ANSWERS};
use crate::RoutingPolicy;

/// CNAMEs followed within the served zones before the answer stops with
/// what it has; a loop of aliases ends here too.
const MAX_CNAME_CHAIN: usize = 8;

/// What one question gets: the response code, the authoritative-answer
/// flag and the three record sections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `NoError` (with answers, or none: NODATA), `NXDomain` or `Refused`.
    pub response_code: ResponseCode,
    /// Set for every name inside a served zone (RFC 1035 §4.1.1 AA).
    pub authoritative: bool,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section: the zone's SOA in negative answers
    /// (RFC 2308 §3).
    pub authorities: Vec<Record>,
    /// The additional section: addresses of SRV targets (RFC 2782).
    pub additionals: Vec<Record>,
}

impl Answer {
    fn refused() -> Self {
        Answer {
            response_code: ResponseCode::Refused,
            authoritative: false,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        }
    }

    /// Whether the name exists with no record of the asked type: NOERROR
    /// with an empty answer section (RFC 2308 §2.2).
    pub fn is_nodata(&self) -> bool {
        self.response_code == ResponseCode::NoError && self.answers.is_empty()
    }
}

impl Zones {
    /// Answers `qtype` questions about `name` (case-insensitive):
    /// - the records of that type, under their set's routing policy;
    /// - a CNAME and, when its target is served here, the target's answer;
    /// - NODATA (NOERROR, the SOA in authority) when the name exists but
    ///   holds no such type;
    /// - NXDOMAIN (the SOA in authority) when no such name is in the zone;
    /// - REFUSED, not authoritative, for names outside every zone: this
    ///   server resolves nothing else (RFC 1035 §4.1.1, RCODE 5).
    ///
    /// `ANY` gets every set of the name. SRV answers carry the A and AAAA
    /// records of their targets, when served here, as additional data.
    pub fn answer<R: Rng + ?Sized>(&self, name: &Name, qtype: RecordType, rng: &mut R) -> Answer {
        let mut current = LowerName::new(name);
        let Some(mut zone) = self.zone_of(&current) else {
            return Answer::refused();
        };
        let mut answer = Answer {
            response_code: ResponseCode::NoError,
            authoritative: true,
            answers: Vec::new(),
            authorities: Vec::new(),
            additionals: Vec::new(),
        };
        for _ in 0..MAX_CNAME_CHAIN {
            let Some(node) = zone.nodes.get(&current) else {
                if !zone.names.contains(&current) {
                    // After a CNAME, the code is that of the last name
                    // (RFC 6604 §3).
                    answer.response_code = ResponseCode::NXDomain;
                }
                answer.authorities.push(zone.negative_soa.clone());
                return answer;
            };
            if qtype == RecordType::ANY {
                for rrset in node.values() {
                    answer.answers.extend(select(rrset, rng));
                }
                add_srv_targets(self, &mut answer);
                return answer;
            }
            if let Some(rrset) = node.get(&qtype) {
                answer.answers.extend(select(rrset, rng));
                if qtype == RecordType::SRV {
                    add_srv_targets(self, &mut answer);
                }
                return answer;
            }
            let Some(cname) = node.get(&RecordType::CNAME) else {
                answer.authorities.push(zone.negative_soa.clone());
                return answer;
            };
            let Some(record) = cname.records.first() else {
                answer.authorities.push(zone.negative_soa.clone());
                return answer;
            };
            answer.answers.push(record.clone());
            let RData::CNAME(target) = &record.data else {
                return answer;
            };
            current = LowerName::new(&target.0);
            match self.zone_of(&current) {
                Some(next) => zone = next,
                // The target is elsewhere: the resolver follows it.
                None => return answer,
            }
        }
        answer
    }
}

/// The records of a set one answer carries, under its routing policy.
fn select<R: Rng + ?Sized>(rrset: &Rrset, rng: &mut R) -> Vec<Record> {
    let records = &rrset.records;
    let count = match rrset.selection {
        Selection::All => return records.clone(),
        Selection::Routed(RoutingPolicy::Weighted) => 1,
        Selection::Routed(RoutingPolicy::Multivalue) => MULTIVALUE_MAX_ANSWERS,
    };
    let count = count.min(records.len());
    // Distinct records in random order: clients mostly take the first
    // address, so the order spreads their load too.
    index::sample(rng, records.len(), count)
        .into_iter()
        .filter_map(|i| records.get(i).cloned())
        .collect()
}

/// Adds the A and AAAA records of each SRV target in the answer that one
/// of the zones holds (RFC 2782: "the additional data section ... will
/// contain the A records of the targets").
fn add_srv_targets(zones: &Zones, answer: &mut Answer) {
    let mut targets = BTreeSet::new();
    for record in &answer.answers {
        if let RData::SRV(srv) = &record.data {
            targets.insert(LowerName::new(&srv.target));
        }
    }
    for target in &targets {
        let Some(zone) = zones.zone_of(target) else {
            continue;
        };
        for record_type in [RecordType::A, RecordType::AAAA] {
            if let Some(rrset) = zone_node_set(zone, target, record_type) {
                answer.additionals.extend(rrset.records.iter().cloned());
            }
        }
    }
}

fn zone_node_set<'z>(
    zone: &'z Zone,
    name: &LowerName,
    record_type: RecordType,
) -> Option<&'z Rrset> {
    zone.nodes.get(name).and_then(|node| node.get(&record_type))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashSet;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use crate::{
        DnsError, Rdata, RecordSet, RoutingPolicy, Soa, Zone, Zones, CLOUD_MAP_SOA_TTL,
        MULTIVALUE_MAX_ANSWERS,
    };

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn v4(last: u8) -> Rdata {
        Rdata::A(Ipv4Addr::new(10, 0, 0, last))
    }

    fn set(owner: &str, routing: RoutingPolicy, records: Vec<Rdata>) -> RecordSet {
        RecordSet {
            name: owner.to_owned(),
            ttl: 60,
            routing,
            records,
        }
    }

    /// A namespace `example.local` as Cloud Map would fill it.
    fn namespace() -> Zones {
        let mut zone = Zone::new("example.local", Soa::new(1, CLOUD_MAP_SOA_TTL)).unwrap();
        let multi = RoutingPolicy::Multivalue;
        zone.insert(set(
            "backend.example.local",
            multi,
            (1..=12).map(v4).collect(),
        ))
        .unwrap();
        zone.insert(set(
            "dual.example.local",
            multi,
            vec![v4(20), Rdata::Aaaa(Ipv6Addr::LOCALHOST)],
        ))
        .unwrap();
        zone.insert(set(
            "weighted.example.local",
            RoutingPolicy::Weighted,
            (30..35).map(v4).collect(),
        ))
        .unwrap();
        let srv = |id: &str, port| Rdata::Srv {
            priority: 1,
            weight: 1,
            port,
            target: format!("{id}._http._tcp.example.local"),
        };
        zone.insert(set(
            "_http._tcp.example.local",
            multi,
            vec![srv("i-1", 8080), srv("i-2", 8081)],
        ))
        .unwrap();
        zone.insert(set("i-1._http._tcp.example.local", multi, vec![v4(41)]))
            .unwrap();
        zone.insert(set(
            "i-2._http._tcp.example.local",
            multi,
            vec![v4(42), Rdata::Aaaa(Ipv6Addr::LOCALHOST)],
        ))
        .unwrap();
        let weighted = RoutingPolicy::Weighted;
        zone.insert(set(
            "alias.example.local",
            weighted,
            vec![Rdata::Cname("dual.example.local".to_owned())],
        ))
        .unwrap();
        zone.insert(set(
            "outside.example.local",
            weighted,
            vec![Rdata::Cname("db.example.com".to_owned())],
        ))
        .unwrap();
        let mut zones = Zones::new();
        zones.insert(zone).unwrap();
        zones
    }

    fn ask(zones: &Zones, qname: &str, qtype: RecordType) -> crate::Answer {
        zones.answer(&name(qname), qtype, &mut StdRng::seed_from_u64(7))
    }

    fn addresses(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                RData::AAAA(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_multivalue_service_answers_at_most_eight_distinct_healthy_instances() {
        let zones = namespace();
        let answer = ask(&zones, "backend.example.local.", RecordType::A);
        assert_eq!(answer.response_code, ResponseCode::NoError);
        assert!(answer.authoritative);
        let got = addresses(&answer.answers);
        assert_eq!(got.len(), MULTIVALUE_MAX_ANSWERS);
        assert_eq!(got.iter().collect::<HashSet<_>>().len(), got.len());
        assert!(answer.answers.iter().all(|r| r.ttl == 60));
    }

    #[test]
    fn a_multivalue_service_with_few_instances_answers_them_all() {
        let zones = namespace();
        let a = ask(&zones, "dual.example.local.", RecordType::A);
        assert_eq!(addresses(&a.answers), ["10.0.0.20"]);
        let aaaa = ask(&zones, "dual.example.local.", RecordType::AAAA);
        assert_eq!(addresses(&aaaa.answers), ["::1"]);
    }

    #[test]
    fn a_weighted_service_answers_one_instance_chosen_at_random() {
        let zones = namespace();
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let answer = zones.answer(&name("weighted.example.local."), RecordType::A, &mut rng);
            let got = addresses(&answer.answers);
            assert_eq!(got.len(), 1);
            seen.extend(got);
        }
        assert_eq!(
            seen.len(),
            5,
            "every instance is chosen some time: {seen:?}"
        );
    }

    #[test]
    fn a_name_with_other_types_answers_nodata_with_the_soa() {
        let zones = namespace();
        let answer = ask(&zones, "backend.example.local.", RecordType::AAAA);
        assert_eq!(answer.response_code, ResponseCode::NoError);
        assert!(answer.is_nodata());
        assert_eq!(answer.authorities.len(), 1);
        let soa = &answer.authorities[0];
        assert_eq!(soa.record_type(), RecordType::SOA);
        assert_eq!(soa.name, name("example.local."));
        // RFC 2308: the lesser of the SOA's TTL and its minimum.
        assert_eq!(soa.ttl, CLOUD_MAP_SOA_TTL);
    }

    #[test]
    fn an_unknown_name_in_a_namespace_answers_nxdomain_with_the_soa() {
        let zones = namespace();
        let answer = ask(&zones, "gone.example.local.", RecordType::A);
        assert_eq!(answer.response_code, ResponseCode::NXDomain);
        assert!(answer.authoritative);
        assert!(answer.answers.is_empty());
        assert_eq!(answer.authorities[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn a_name_between_the_namespace_and_a_service_answers_nodata() {
        let zones = namespace();
        let answer = ask(&zones, "_tcp.example.local.", RecordType::A);
        assert_eq!(answer.response_code, ResponseCode::NoError);
        assert!(answer.is_nodata());
    }

    #[test]
    fn a_name_outside_every_namespace_is_refused() {
        let zones = namespace();
        let answer = ask(&zones, "example.com.", RecordType::A);
        assert_eq!(answer.response_code, ResponseCode::Refused);
        assert!(!answer.authoritative);
        assert!(answer.authorities.is_empty());
        let no_zones = ask(&Zones::new(), "backend.example.local.", RecordType::A);
        assert_eq!(no_zones.response_code, ResponseCode::Refused);
    }

    #[test]
    fn names_are_case_insensitive() {
        let zones = namespace();
        let answer = ask(&zones, "BackEnd.Example.LOCAL.", RecordType::A);
        assert_eq!(answer.answers.len(), MULTIVALUE_MAX_ANSWERS);
    }

    #[test]
    fn an_srv_answer_carries_its_targets_addresses() {
        let zones = namespace();
        let answer = ask(&zones, "_http._tcp.example.local.", RecordType::SRV);
        let mut ports: Vec<u16> = answer
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(srv.port),
                _ => None,
            })
            .collect();
        ports.sort_unstable();
        assert_eq!(ports, [8080, 8081]);
        let mut extra = addresses(&answer.additionals);
        extra.sort();
        assert_eq!(extra, ["10.0.0.41", "10.0.0.42", "::1"]);
    }

    #[test]
    fn a_cname_inside_the_namespace_is_followed() {
        let zones = namespace();
        let answer = ask(&zones, "alias.example.local.", RecordType::A);
        assert_eq!(answer.response_code, ResponseCode::NoError);
        assert_eq!(answer.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(addresses(&answer.answers), ["10.0.0.20"]);
        let cname = ask(&zones, "alias.example.local.", RecordType::CNAME);
        assert_eq!(cname.answers.len(), 1);
        assert!(cname.additionals.is_empty());
    }

    #[test]
    fn a_cname_to_another_domain_is_answered_alone() {
        let zones = namespace();
        let answer = ask(&zones, "outside.example.local.", RecordType::A);
        assert_eq!(answer.response_code, ResponseCode::NoError);
        assert_eq!(answer.answers.len(), 1);
        assert!(
            matches!(&answer.answers[0].data, RData::CNAME(c) if c.0 == name("db.example.com."))
        );
    }

    #[test]
    fn a_loop_of_cnames_ends() {
        let mut zone = Zone::new("loop.local", Soa::new(1, 15)).unwrap();
        let w = RoutingPolicy::Weighted;
        zone.insert(set(
            "a.loop.local",
            w,
            vec![Rdata::Cname("b.loop.local".into())],
        ))
        .unwrap();
        zone.insert(set(
            "b.loop.local",
            w,
            vec![Rdata::Cname("a.loop.local".into())],
        ))
        .unwrap();
        let mut zones = Zones::new();
        zones.insert(zone).unwrap();
        let answer = ask(&zones, "a.loop.local.", RecordType::A);
        assert_eq!(answer.answers.len(), super::MAX_CNAME_CHAIN);
    }

    #[test]
    fn the_namespace_apex_answers_its_soa_and_ns() {
        let zones = namespace();
        let soa = ask(&zones, "example.local.", RecordType::SOA);
        assert_eq!(soa.answers.len(), 1);
        assert!(matches!(&soa.answers[0].data, RData::SOA(s) if s.serial == 1));
        let ns = ask(&zones, "example.local.", RecordType::NS);
        assert_eq!(ns.answers[0].record_type(), RecordType::NS);
        let a = ask(&zones, "example.local.", RecordType::A);
        assert!(a.is_nodata());
    }

    #[test]
    fn any_answers_every_set_of_the_name() {
        let zones = namespace();
        let answer = ask(&zones, "dual.example.local.", RecordType::ANY);
        let mut got = addresses(&answer.answers);
        got.sort();
        assert_eq!(got, ["10.0.0.20", "::1"]);
    }

    #[test]
    fn a_nested_namespace_answers_for_its_names() {
        let mut zones = namespace();
        let mut inner = Zone::new("team.example.local", Soa::new(9, 15)).unwrap();
        inner
            .insert(set(
                "api.team.example.local",
                RoutingPolicy::Multivalue,
                vec![v4(99)],
            ))
            .unwrap();
        zones.insert(inner).unwrap();
        let answer = ask(&zones, "api.team.example.local.", RecordType::A);
        assert_eq!(addresses(&answer.answers), ["10.0.0.99"]);
        let missing = ask(&zones, "nope.team.example.local.", RecordType::A);
        assert!(matches!(&missing.authorities[0].data, RData::SOA(s) if s.serial == 9));
        let outer = ask(&zones, "backend.example.local.", RecordType::A);
        assert_eq!(outer.answers.len(), MULTIVALUE_MAX_ANSWERS);
    }

    #[test]
    fn zones_refuse_what_dns_does_not_allow() {
        let mut zone = Zone::new("example.local", Soa::new(1, 15)).unwrap();
        let multi = RoutingPolicy::Multivalue;
        assert!(matches!(
            zone.insert(set("x.example.com", multi, vec![v4(1)])),
            Err(DnsError::OutOfZone { .. })
        ));
        assert!(matches!(
            zone.insert(set(
                "example.local",
                RoutingPolicy::Weighted,
                vec![Rdata::Cname("a.b".into())]
            )),
            Err(DnsError::CnameAtApex(_))
        ));
        zone.insert(set("svc.example.local", multi, vec![v4(1)]))
            .unwrap();
        assert!(matches!(
            zone.insert(set(
                "svc.example.local",
                multi,
                vec![Rdata::Cname("a.b".into())]
            )),
            Err(DnsError::CnameConflict(_))
        ));
        assert!(matches!(
            zone.insert(set(
                "svc.example.local",
                RoutingPolicy::Weighted,
                vec![v4(2)]
            )),
            Err(DnsError::InconsistentRecordSet {
                what: "routing policy",
                ..
            })
        ));
        let mut other_ttl = set("svc.example.local", multi, vec![v4(2)]);
        other_ttl.ttl = 5;
        assert!(matches!(
            zone.insert(other_ttl),
            Err(DnsError::InconsistentRecordSet { what: "TTL", .. })
        ));
        let long_label = format!("{}.example.local", "a".repeat(64));
        assert!(matches!(
            zone.insert(set(&long_label, multi, vec![v4(1)])),
            Err(DnsError::InvalidName { .. })
        ));
        assert!(matches!(
            Zone::new("", Soa::new(1, 15)),
            Err(DnsError::InvalidName { .. })
        ));
        let mut zones = Zones::new();
        zones.insert(zone).unwrap();
        let again = Zone::new("Example.Local.", Soa::new(2, 15)).unwrap();
        assert!(matches!(
            zones.insert(again),
            Err(DnsError::DuplicateZone(_))
        ));
    }

    #[test]
    fn a_refused_record_set_leaves_the_zone_as_it_was() {
        let mut zone = Zone::new("example.local", Soa::new(1, 15)).unwrap();
        let multi = RoutingPolicy::Multivalue;
        let mixed = set(
            "svc.example.local",
            RoutingPolicy::Weighted,
            vec![v4(1), Rdata::Cname("other.example.local".into())],
        );
        assert!(matches!(
            zone.insert(mixed),
            Err(DnsError::CnameConflict(_))
        ));
        zone.insert(set("empty.example.local", multi, vec![]))
            .unwrap();
        let mut zones = Zones::new();
        zones.insert(zone).unwrap();
        let answer = ask(&zones, "svc.example.local.", RecordType::A);
        assert_eq!(answer.response_code, ResponseCode::NXDomain);
        let empty = ask(&zones, "empty.example.local.", RecordType::A);
        assert_eq!(empty.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn records_given_twice_are_served_once() {
        let mut zone = Zone::new("example.local", Soa::new(1, 15)).unwrap();
        let multi = RoutingPolicy::Multivalue;
        zone.insert(set("svc.example.local", multi, vec![v4(1), v4(1)]))
            .unwrap();
        zone.insert(set("svc.example.local", multi, vec![v4(1), v4(2)]))
            .unwrap();
        let mut zones = Zones::new();
        zones.insert(zone).unwrap();
        let mut got = addresses(&ask(&zones, "svc.example.local.", RecordType::A).answers);
        got.sort();
        assert_eq!(got, ["10.0.0.1", "10.0.0.2"]);
    }
}
