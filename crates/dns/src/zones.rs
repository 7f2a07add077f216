//! What the server answers for: zones, each an origin, an SOA and record
//! sets, built by the caller from Cloud Map's namespaces, services and
//! healthy instances. Pure: no I/O.
//!
//! A Cloud Map DNS namespace is a Route 53 hosted zone, and each service's
//! `DnsConfig` gives one record set per record type at the service's name
//! (<https://docs.aws.amazon.com/cloud-map/latest/api/API_DnsConfig.html>).
//! The caller decides which instances are in a set (Route 53 answers with
//! healthy instances, or with all of them when none is healthy); this
//! module only serves what it is given.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::DnsError;

/// Route 53's "up to eight" healthy records in a multivalue answer
/// (<https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/routing-policy-multivalue.html>).
pub const MULTIVALUE_MAX_ANSWERS: usize = 8;

/// The SOA record's TTL of a Cloud Map namespace created without
/// `Properties` (<https://docs.aws.amazon.com/cloud-map/latest/api/API_SOA.html>).
pub const CLOUD_MAP_SOA_TTL: u32 = 15;

/// The TTL Route 53 gives a hosted zone's NS records: two days
/// (<https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/SOA-NSrecords.html>).
pub const NS_TTL: u32 = 172_800;

/// How a record set answers when it holds several records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoutingPolicy {
    /// Up to [`MULTIVALUE_MAX_ANSWERS`] records, chosen at random when there
    /// are more, in random order.
    Multivalue,
    /// One record chosen at random: Cloud Map registers weighted records of
    /// equal weight, so each is equally likely
    /// (<https://docs.aws.amazon.com/cloud-map/latest/api/API_DnsConfig.html>).
    Weighted,
}

/// The data of one record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Rdata {
    /// An IPv4 address (`AWS_INSTANCE_IPV4`).
    A(Ipv4Addr),
    /// An IPv6 address (`AWS_INSTANCE_IPV6`).
    Aaaa(Ipv6Addr),
    /// A service location (RFC 2782). Cloud Map writes
    /// `1 1 <AWS_INSTANCE_PORT> <instance-id>.<service>.<namespace>`.
    Srv {
        /// Lower is tried first.
        priority: u16,
        /// Relative weight among records of equal priority.
        weight: u16,
        /// The instance's port.
        port: u16,
        /// The host name, whose A/AAAA records the answer carries as
        /// additional data when this server knows them.
        target: String,
    },
    /// An alias (`AWS_INSTANCE_CNAME`).
    Cname(String),
}

impl Rdata {
    /// The record type this data is of.
    pub fn record_type(&self) -> RecordType {
        match self {
            Rdata::A(_) => RecordType::A,
            Rdata::Aaaa(_) => RecordType::AAAA,
            Rdata::Srv { .. } => RecordType::SRV,
            Rdata::Cname(_) => RecordType::CNAME,
        }
    }
}

/// Records of one owner name, each type of which forms one record set
/// with one TTL and one routing policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSet {
    /// The owner name, at or under the zone's origin (a trailing dot is
    /// optional; names are case-insensitive).
    pub name: String,
    /// Seconds a resolver may cache the records.
    pub ttl: u32,
    /// How an answer picks among the records.
    pub routing: RoutingPolicy,
    /// The records. Several types may be mixed (Cloud Map's `A` and
    /// `AAAA` together); each type is its own set.
    pub records: Vec<Rdata>,
}

/// A zone's start of authority (RFC 1035 §3.3.13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Soa {
    /// MNAME: the zone's primary name server.
    pub primary_ns: String,
    /// RNAME: the mailbox of the zone's administrator, `@` written as `.`.
    pub hostmaster: String,
    /// Changes whenever the zone changes, so secondaries and caches can tell.
    pub serial: u32,
    /// The SOA record's own TTL. Negative answers are cached for the lesser
    /// of this and `minimum` (RFC 2308 §3), which is how Cloud Map's SOA TTL
    /// bounds how long a missing instance stays missing.
    pub ttl: u32,
    /// Seconds between a secondary's refreshes.
    pub refresh: i32,
    /// Seconds before a failed refresh is retried.
    pub retry: i32,
    /// Seconds after which a secondary stops answering without a refresh.
    pub expire: i32,
    /// The negative-caching TTL (RFC 2308 §4).
    pub minimum: u32,
}

impl Soa {
    /// An SOA with Route 53's defaults for a new hosted zone (refresh 7200,
    /// retry 900, expire 1209600, minimum 86400,
    /// <https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/SOA-NSrecords.html>)
    /// and the given serial and TTL ([`CLOUD_MAP_SOA_TTL`] by default in
    /// Cloud Map). The name server and mailbox are under `.invalid`
    /// (RFC 6761 §6.4), as Weft has no public name server name.
    pub fn new(serial: u32, ttl: u32) -> Self {
        Soa {
            primary_ns: "ns.weft.invalid.".to_owned(),
            hostmaster: "hostmaster.weft.invalid.".to_owned(),
            serial,
            ttl,
            refresh: 7200,
            retry: 900,
            expire: 1_209_600,
            minimum: 86_400,
        }
    }
}

/// One record set as served: its TTL, its policy and its records.
#[derive(Debug, Clone)]
pub(crate) struct Rrset {
    pub(crate) selection: Selection,
    pub(crate) records: Vec<Record>,
}

/// How many records of a set one answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selection {
    /// Every record (the apex's SOA and NS).
    All,
    /// A caller's record set under its routing policy.
    Routed(RoutingPolicy),
}

/// One zone: an origin, its SOA and NS records at the apex, and the
/// record sets under it.
#[derive(Debug, Clone)]
pub struct Zone {
    pub(crate) origin: LowerName,
    /// Whether every name under the origin is this zone's to answer
    /// (NXDOMAIN when it has no such name), as a namespace's zone is; a
    /// [`Zone::host`] claims only the names it holds.
    pub(crate) claims_subtree: bool,
    /// The SOA as carried in the authority section of negative answers:
    /// its TTL is the lesser of the SOA's TTL and minimum (RFC 2308 §3).
    pub(crate) negative_soa: Record,
    pub(crate) nodes: BTreeMap<LowerName, BTreeMap<RecordType, Rrset>>,
    /// Names that exist: owners and every name between an owner and the
    /// origin (empty non-terminals answer NODATA, not NXDOMAIN: RFC 8020).
    pub(crate) names: HashSet<LowerName>,
}

impl Zone {
    /// A zone with only its apex: the SOA and an NS record naming the
    /// SOA's primary name server.
    pub fn new(origin: &str, soa: Soa) -> Result<Self, DnsError> {
        let origin_name = parse_name(origin)?;
        let primary = parse_name(&soa.primary_ns)?;
        let soa_rdata = SOA::new(
            primary.clone(),
            parse_name(&soa.hostmaster)?,
            soa.serial,
            soa.refresh,
            soa.retry,
            soa.expire,
            soa.minimum,
        );
        let soa_record =
            Record::from_rdata(origin_name.clone(), soa.ttl, RData::SOA(soa_rdata.clone()));
        let negative_soa = Record::from_rdata(
            origin_name.clone(),
            soa.ttl.min(soa.minimum),
            RData::SOA(soa_rdata),
        );
        let ns_record = Record::from_rdata(origin_name.clone(), NS_TTL, RData::NS(NS(primary)));
        let origin = LowerName::new(&origin_name);
        let mut apex = BTreeMap::new();
        apex.insert(
            RecordType::SOA,
            Rrset {
                selection: Selection::All,
                records: vec![soa_record],
            },
        );
        apex.insert(
            RecordType::NS,
            Rrset {
                selection: Selection::All,
                records: vec![ns_record],
            },
        );
        let mut nodes = BTreeMap::new();
        nodes.insert(origin.clone(), apex);
        let mut names = HashSet::new();
        names.insert(origin.clone());
        Ok(Zone {
            origin,
            claims_subtree: true,
            negative_soa,
            nodes,
            names,
        })
    }

    /// A zone for one host name (a mesh's virtual service name) that claims
    /// only the names it holds: a name under it that it does not hold is
    /// answered by the next enclosing zone, or refused when there is none,
    /// so that a resolver in front of this server asks its upstream, which
    /// may know it. Names it holds answer as in any zone (NODATA with the
    /// SOA for a missing type).
    pub fn host(name: &str, soa: Soa) -> Result<Self, DnsError> {
        let mut zone = Zone::new(name, soa)?;
        zone.claims_subtree = false;
        Ok(zone)
    }

    /// Whether this zone answers for `name`: it is at or under the origin
    /// and, for a [`Zone::host`], one of the names the zone holds.
    pub(crate) fn answers_for(&self, name: &LowerName) -> bool {
        self.origin.zone_of(name) && (self.claims_subtree || self.names.contains(name))
    }

    /// The zone's origin, lower-cased.
    pub fn origin(&self) -> Name {
        Name::from(self.origin.clone())
    }

    /// Adds a record set. Records of a type the name already has join
    /// that set, which must have the same TTL and routing policy. A set
    /// with no records adds nothing (a service with no healthy instance
    /// has no name). On error the zone is left as it was.
    pub fn insert(&mut self, set: RecordSet) -> Result<(), DnsError> {
        let owner = parse_name(&set.name)?;
        let lower = LowerName::new(&owner);
        if !self.origin.zone_of(&lower) {
            return Err(DnsError::OutOfZone {
                name: set.name,
                zone: self.origin.to_string(),
            });
        }
        let owner = Name::from(lower.clone());
        let mut records = Vec::with_capacity(set.records.len());
        for rdata in &set.records {
            records.push(Record::from_rdata(owner.clone(), set.ttl, to_rdata(rdata)?));
        }
        if records.is_empty() {
            return Ok(());
        }
        // Changed on a copy, kept only when every record fits.
        let mut node = self.nodes.get(&lower).cloned().unwrap_or_default();
        for record in records {
            let record_type = record.record_type();
            if record_type == RecordType::CNAME && lower == self.origin {
                return Err(DnsError::CnameAtApex(owner.to_string()));
            }
            let others = node.keys().any(|t| *t != record_type);
            let has_cname = node.contains_key(&RecordType::CNAME);
            if (record_type == RecordType::CNAME && others)
                || (has_cname && record_type != RecordType::CNAME)
            {
                return Err(DnsError::CnameConflict(owner.to_string()));
            }
            let rrset = node.entry(record_type).or_insert_with(|| Rrset {
                selection: Selection::Routed(set.routing),
                records: Vec::new(),
            });
            if rrset.selection != Selection::Routed(set.routing) {
                return Err(inconsistent(&owner, record_type, "routing policy"));
            }
            if rrset.records.first().is_some_and(|r| r.ttl != set.ttl) {
                return Err(inconsistent(&owner, record_type, "TTL"));
            }
            if record_type == RecordType::CNAME && !rrset.records.is_empty() {
                // A name is an alias of one name only (RFC 2181 §10.1).
                if rrset.records.iter().any(|r| r.data != record.data) {
                    return Err(DnsError::CnameConflict(owner.to_string()));
                }
                continue;
            }
            // A set holds each record once (RFC 2181 §5).
            if !rrset.records.iter().any(|r| r.data == record.data) {
                rrset.records.push(record);
            }
        }
        self.nodes.insert(lower.clone(), node);
        // The owner and every name between it and the origin now exist.
        let mut name = lower;
        while name != self.origin && self.names.insert(name.clone()) {
            name = name.base_name();
        }
        Ok(())
    }
}

fn inconsistent(owner: &Name, record_type: RecordType, what: &'static str) -> DnsError {
    DnsError::InconsistentRecordSet {
        name: owner.to_string(),
        record_type: record_type.to_string(),
        what,
    }
}

/// The zones one server answers for.
#[derive(Debug, Clone, Default)]
pub struct Zones {
    /// Longest origin first, so that a name is answered by the closest
    /// enclosing zone when zones nest.
    pub(crate) zones: Vec<Zone>,
}

impl Zones {
    /// No zones: every query is refused.
    pub fn new() -> Self {
        Zones::default()
    }

    /// Adds a zone; its origin must be new.
    pub fn insert(&mut self, zone: Zone) -> Result<(), DnsError> {
        if self.zones.iter().any(|z| z.origin == zone.origin) {
            return Err(DnsError::DuplicateZone(zone.origin.to_string()));
        }
        let at = self
            .zones
            .iter()
            .position(|z| z.origin.num_labels() < zone.origin.num_labels())
            .unwrap_or(self.zones.len());
        self.zones.insert(at, zone);
        Ok(())
    }

    /// How many zones there are.
    pub fn len(&self) -> usize {
        self.zones.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }

    /// The closest zone answering for `name` (see [`Zone::host`]).
    pub(crate) fn zone_of(&self, name: &LowerName) -> Option<&Zone> {
        self.zones.iter().find(|z| z.answers_for(name))
    }

    /// The closest zone that claims every name under its origin (a
    /// namespace's, not a [`Zone::host`]) and encloses `name`.
    pub(crate) fn enclosing_mut(&mut self, name: &LowerName) -> Option<&mut Zone> {
        self.zones
            .iter_mut()
            .find(|z| z.claims_subtree && z.origin.zone_of(name))
    }

    /// Whether a zone with this origin is served.
    pub(crate) fn has_origin(&self, origin: &LowerName) -> bool {
        self.zones.iter().any(|z| z.origin == *origin)
    }
}

/// Parses an absolute name: Cloud Map names carry no trailing dot but
/// are absolute (`example.local` is `example.local.`).
pub(crate) fn parse_name(name: &str) -> Result<Name, DnsError> {
    let invalid = |reason: String| DnsError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty".to_owned()));
    }
    // `from_ascii` keeps underscores, which SRV owner names such as
    // `_http._tcp.example.local` need (RFC 2782); it rejects labels longer
    // than 63 octets and names longer than 255 (RFC 1035 §2.3.4).
    let mut parsed = Name::from_ascii(name).map_err(|e| invalid(e.to_string()))?;
    parsed.set_fqdn(true);
    Ok(parsed)
}

fn to_rdata(rdata: &Rdata) -> Result<RData, DnsError> {
    Ok(match rdata {
        Rdata::A(ip) => RData::A(A(*ip)),
        Rdata::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
        Rdata::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, parse_name(target)?)),
        Rdata::Cname(target) => RData::CNAME(CNAME(parse_name(target)?)),
    })
}
