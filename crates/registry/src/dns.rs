//! DNS namespaces and the records their services give, as Cloud Map and
//! Route 53 define them. Pure: no I/O.
//!
//! What a DNS server needs is in the store (see [`crate::keys`]): each
//! namespace's [`NamespaceRecord::kind`](crate::NamespaceRecord) and
//! [`DnsProperties`], each service's [`DnsConfig`], each instance's
//! attributes and health. [`service_records`] turns one service and its
//! instances into the records Route 53 would hold for them,
//! [`ServiceRecords::groups`] into record sets (one per name and type), and
//! [`ServiceRecords::answer`] picks what one query gets under the service's
//! routing policy; they are the DNS server's source of truth.
//!
//! The rules are those of the Cloud Map API reference (`DnsRecord`,
//! `DnsConfig.RoutingPolicy`, `RegisterInstance.Attributes`):
//! - record types come in the combinations A, AAAA, A and AAAA, SRV, CNAME;
//! - CNAME needs the `WEIGHTED` routing policy;
//! - an instance gives `AWS_INSTANCE_IPV4` for A, `AWS_INSTANCE_IPV6` for
//!   AAAA, `AWS_INSTANCE_CNAME` for CNAME, and for SRV `AWS_INSTANCE_PORT`
//!   and at least one address;
//! - an SRV record is `1 1 <port> <instance>.<service>.<namespace>`, and the
//!   instance's addresses are also published as A/AAAA records of that
//!   target name;
//! - `MULTIVALUE` answers up to eight healthy instances; `WEIGHTED` one
//!   instance at random among the healthy ones, or among all when none is.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::records::{Instance, ServiceRecord};

/// Route 53's "up to eight" for multivalue answers.
pub const MULTIVALUE_MAX_ANSWERS: usize = 8;
/// The SOA negative-caching TTL of a namespace created without `Properties`.
pub const DEFAULT_SOA_TTL: i64 = 15;

/// The kind of a namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NamespaceType {
    /// Discovered through the API only.
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    /// A private hosted zone, visible in its VPC.
    #[serde(rename = "DNS_PRIVATE")]
    DnsPrivate,
    /// A public hosted zone.
    #[serde(rename = "DNS_PUBLIC")]
    DnsPublic,
}

impl NamespaceType {
    /// The wire name (`HTTP`, `DNS_PRIVATE`, `DNS_PUBLIC`).
    pub fn as_str(self) -> &'static str {
        match self {
            NamespaceType::Http => "HTTP",
            NamespaceType::DnsPrivate => "DNS_PRIVATE",
            NamespaceType::DnsPublic => "DNS_PUBLIC",
        }
    }

    /// Whether the namespace is a DNS zone.
    pub fn is_dns(self) -> bool {
        self != NamespaceType::Http
    }
}

/// The hosted zone behind a DNS namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsProperties {
    /// A Route 53-shaped zone id derived from the namespace id, so it never changes.
    pub hosted_zone_id: String,
    /// The SOA record's negative-caching TTL, in seconds.
    pub soa_ttl: i64,
    /// The VPC a private namespace was created for (Weft does not check it).
    pub vpc: Option<String>,
}

/// The hosted zone id of a namespace: `Z` and its id's hexadecimal digits in
/// upper case, which is how Route 53 zone ids look.
pub fn hosted_zone_id(namespace_id: &str) -> String {
    let digits = namespace_id.trim_start_matches("ns-").to_ascii_uppercase();
    format!("Z{digits}")
}

/// How a service's records answer a query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoutingPolicy {
    /// Up to eight healthy instances per answer.
    #[default]
    #[serde(rename = "MULTIVALUE")]
    Multivalue,
    /// One instance at random per answer.
    #[serde(rename = "WEIGHTED")]
    Weighted,
}

impl RoutingPolicy {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingPolicy::Multivalue => "MULTIVALUE",
            RoutingPolicy::Weighted => "WEIGHTED",
        }
    }

    fn parse(text: &str) -> Option<RoutingPolicy> {
        match text {
            "MULTIVALUE" => Some(RoutingPolicy::Multivalue),
            "WEIGHTED" => Some(RoutingPolicy::Weighted),
            _ => None,
        }
    }
}

/// A DNS record type Cloud Map creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordType {
    /// An IPv4 address (`AWS_INSTANCE_IPV4`).
    A,
    /// An IPv6 address (`AWS_INSTANCE_IPV6`).
    #[serde(rename = "AAAA")]
    Aaaa,
    /// A domain name (`AWS_INSTANCE_CNAME`).
    #[serde(rename = "CNAME")]
    Cname,
    /// Priority 1, weight 1, `AWS_INSTANCE_PORT`, the instance's host name.
    #[serde(rename = "SRV")]
    Srv,
}

impl RecordType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
            RecordType::Cname => "CNAME",
            RecordType::Srv => "SRV",
        }
    }

    fn parse(text: &str) -> Option<RecordType> {
        match text {
            "A" => Some(RecordType::A),
            "AAAA" => Some(RecordType::Aaaa),
            "CNAME" => Some(RecordType::Cname),
            "SRV" => Some(RecordType::Srv),
            _ => None,
        }
    }
}

/// One record template of a service: its type and TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRecordConfig {
    /// `type` in the store.
    #[serde(rename = "type")]
    pub kind: RecordType,
    /// Seconds.
    pub ttl: u32,
}

/// A service's `DnsConfig`: the records each instance gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    pub routing_policy: RoutingPolicy,
    pub records: Vec<DnsRecordConfig>,
}

impl DnsConfig {
    /// Whether the service has a record of this type.
    pub fn has(&self, kind: RecordType) -> bool {
        self.records.iter().any(|r| r.kind == kind)
    }

    /// The record types, in order.
    pub fn types(&self) -> BTreeSet<RecordType> {
        self.records.iter().map(|r| r.kind).collect()
    }

    /// Reads and checks a `DnsConfig` already validated against the
    /// model's shapes; the routing policy defaults to `MULTIVALUE`.
    pub fn from_input(value: &serde_json::Value) -> Result<DnsConfig, String> {
        Self::change_from_input(value, RoutingPolicy::default())
    }

    /// Reads and checks a `DnsConfigChange`, which carries no routing
    /// policy: the service keeps `policy`.
    pub fn change_from_input(
        value: &serde_json::Value,
        policy: RoutingPolicy,
    ) -> Result<DnsConfig, String> {
        let routing_policy = match value.get("RoutingPolicy").and_then(|v| v.as_str()) {
            None => policy,
            Some(p) => RoutingPolicy::parse(p).ok_or(format!("Unknown RoutingPolicy {p}"))?,
        };
        let mut records = Vec::new();
        for r in value
            .get("DnsRecords")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let kind = r
                .get("Type")
                .and_then(|v| v.as_str())
                .and_then(RecordType::parse)
                .ok_or("DnsRecords.Type must be one of A, AAAA, SRV, CNAME")?;
            let ttl = r
                .get("TTL")
                .and_then(|v| v.as_u64())
                .and_then(|t| u32::try_from(t).ok())
                .ok_or("DnsRecords.TTL must be between 0 and 2147483647")?;
            records.push(DnsRecordConfig { kind, ttl });
        }
        let config = DnsConfig {
            routing_policy,
            records,
        };
        config.check()?;
        Ok(config)
    }

    /// Cloud Map's rules for a service's records.
    pub fn check(&self) -> Result<(), String> {
        if self.records.is_empty() {
            return Err("DnsConfig must contain at least one DnsRecord".into());
        }
        let types = self.types();
        if types.len() != self.records.len() {
            return Err("DnsConfig may contain each record type only once".into());
        }
        let allowed: [&[RecordType]; 5] = [
            &[RecordType::A],
            &[RecordType::Aaaa],
            &[RecordType::A, RecordType::Aaaa],
            &[RecordType::Srv],
            &[RecordType::Cname],
        ];
        if !allowed
            .iter()
            .any(|combo| combo.iter().copied().collect::<BTreeSet<_>>() == types)
        {
            let names: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
            return Err(format!(
                "DnsRecords of types [{}] cannot be combined; use A, AAAA, A and AAAA, SRV, or CNAME",
                names.join(", ")
            ));
        }
        if self.has(RecordType::Cname) && self.routing_policy != RoutingPolicy::Weighted {
            return Err("A CNAME record requires the WEIGHTED routing policy".into());
        }
        Ok(())
    }

    /// Checks that an instance's attributes give every record of the service.
    pub fn check_instance(
        &self,
        attributes: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), String> {
        let has = |key: &str| attributes.contains_key(key);
        if has("AWS_ALIAS_DNS_NAME") {
            return Err(
                "AWS_ALIAS_DNS_NAME (Route 53 alias records to load balancers) is not supported"
                    .into(),
            );
        }
        if self.has(RecordType::A) && !has("AWS_INSTANCE_IPV4") {
            return Err("The service has an A record: AWS_INSTANCE_IPV4 is required".into());
        }
        if self.has(RecordType::Aaaa) && !has("AWS_INSTANCE_IPV6") {
            return Err("The service has an AAAA record: AWS_INSTANCE_IPV6 is required".into());
        }
        if self.has(RecordType::Cname) && !has("AWS_INSTANCE_CNAME") {
            return Err("The service has a CNAME record: AWS_INSTANCE_CNAME is required".into());
        }
        if self.has(RecordType::Srv) {
            if !has("AWS_INSTANCE_PORT") {
                return Err("The service has an SRV record: AWS_INSTANCE_PORT is required".into());
            }
            if !has("AWS_INSTANCE_IPV4") && !has("AWS_INSTANCE_IPV6") {
                return Err("The service has an SRV record: AWS_INSTANCE_IPV4, \
                     AWS_INSTANCE_IPV6 or both are required"
                    .into());
            }
        }
        Ok(())
    }
}

/// Whether `name` is a domain name a CNAME may point to: dot-separated
/// labels of letters, digits, `-` and `_`, 1 to 63 characters each, 253 in all.
pub fn is_domain_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The data of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// The target domain name, without a trailing dot.
    Cname(String),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        /// `<instance>.<service>.<namespace>`, lower case, without a trailing dot.
        target: String,
    },
}

impl RecordData {
    /// The record's type.
    pub fn kind(&self) -> RecordType {
        match self {
            RecordData::A(_) => RecordType::A,
            RecordData::Aaaa(_) => RecordType::Aaaa,
            RecordData::Cname(_) => RecordType::Cname,
            RecordData::Srv { .. } => RecordType::Srv,
        }
    }
}

/// The presentation form (`10.0.0.1`, `1 1 8080 red-1.colors.apps.local`).
impl fmt::Display for RecordData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordData::A(ip) => write!(f, "{ip}"),
            RecordData::Aaaa(ip) => write!(f, "{ip}"),
            RecordData::Cname(name) => write!(f, "{name}"),
            RecordData::Srv {
                priority,
                weight,
                port,
                target,
            } => write!(f, "{priority} {weight} {port} {target}"),
        }
    }
}

/// One DNS record a registered instance gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The owner name, lower case, without a trailing dot
    /// (`colors.apps.local`, or `red-1.colors.apps.local` for an SRV target).
    pub name: String,
    /// Seconds.
    pub ttl: u32,
    pub data: RecordData,
    /// The instance that gives it.
    pub instance_id: String,
}

/// The records of one service: what its zone holds for it, and the policy
/// that picks an answer from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRecords {
    pub routing_policy: RoutingPolicy,
    /// Records of the instances eligible to answer, in instance order.
    pub records: Vec<Record>,
}

/// The records of one owner name and type: what a DNS server holds as one
/// record set (Route 53 picks among an instance's records per name and type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordGroup {
    /// Lower case, without a trailing dot.
    pub name: String,
    pub kind: RecordType,
    /// Seconds; one service's records of one type share their TTL.
    pub ttl: u32,
    /// In instance order.
    pub data: Vec<RecordData>,
}

impl ServiceRecords {
    /// The records grouped by owner name and type, in first-seen order.
    pub fn groups(&self) -> Vec<RecordGroup> {
        let mut groups: Vec<RecordGroup> = Vec::new();
        for r in &self.records {
            let kind = r.data.kind();
            match groups
                .iter_mut()
                .find(|g| g.name == r.name && g.kind == kind)
            {
                Some(g) => g.data.push(r.data.clone()),
                None => groups.push(RecordGroup {
                    name: r.name.clone(),
                    kind,
                    ttl: r.ttl,
                    data: vec![r.data.clone()],
                }),
            }
        }
        groups
    }

    /// The records one query for `name` and `kind` gets. `random` is a fresh
    /// random number per query (it picks the instance under `WEIGHTED` and
    /// rotates the eight instances under `MULTIVALUE`). `name` is compared
    /// without case and with or without a trailing dot.
    pub fn answer(&self, name: &str, kind: RecordType, random: u64) -> Vec<&Record> {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let matching: Vec<&Record> = self
            .records
            .iter()
            .filter(|r| r.name == name && r.data.kind() == kind)
            .collect();
        if matching.is_empty() {
            return matching;
        }
        // Names of SRV targets belong to one instance: nothing to choose.
        let mut instances: Vec<&str> = Vec::new();
        for r in &matching {
            if !instances.contains(&r.instance_id.as_str()) {
                instances.push(&r.instance_id);
            }
        }
        let n = instances.len();
        let start = usize::try_from(random % n as u64).unwrap_or(0);
        let take = match self.routing_policy {
            RoutingPolicy::Weighted => 1,
            RoutingPolicy::Multivalue => MULTIVALUE_MAX_ANSWERS.min(n),
        };
        let chosen: Vec<&str> = (0..take).map(|i| instances[(start + i) % n]).collect();
        matching
            .into_iter()
            .filter(|r| chosen.contains(&r.instance_id.as_str()))
            .collect()
    }
}

/// The records `service` (in the namespace named `namespace`) gives for
/// `instances`, as Route 53 would hold them for Cloud Map: a service without
/// `DnsConfig` gives none. Instances that are unhealthy give none, except
/// under `WEIGHTED` when no instance is healthy (Route 53 then answers as if
/// all were). Attributes an instance lacks or that do not parse give no
/// record (the registry refuses such registrations).
pub fn service_records(
    namespace: &str,
    service: &ServiceRecord,
    instances: &[Instance],
) -> ServiceRecords {
    let Some(config) = &service.dns_config else {
        return ServiceRecords {
            routing_policy: RoutingPolicy::default(),
            records: Vec::new(),
        };
    };
    let zone = namespace.strip_suffix('.').unwrap_or(namespace);
    let owner = format!("{}.{}", service.name, zone).to_ascii_lowercase();
    let any_healthy = instances.iter().any(Instance::is_healthy);
    let fail_open = config.routing_policy == RoutingPolicy::Weighted && !any_healthy;
    let mut records = Vec::new();
    for instance in instances {
        if !(instance.is_healthy() || fail_open) {
            continue;
        }
        let mut push = |name: &str, ttl: u32, data: RecordData| {
            records.push(Record {
                name: name.to_string(),
                ttl,
                data,
                instance_id: instance.id.clone(),
            });
        };
        for template in &config.records {
            let ttl = template.ttl;
            match template.kind {
                RecordType::A => {
                    if let Some(ip) = instance.ipv4() {
                        push(&owner, ttl, RecordData::A(ip));
                    }
                }
                RecordType::Aaaa => {
                    if let Some(ip) = instance.ipv6() {
                        push(&owner, ttl, RecordData::Aaaa(ip));
                    }
                }
                RecordType::Cname => {
                    if let Some(target) = instance.attributes.get("AWS_INSTANCE_CNAME") {
                        let target = target.strip_suffix('.').unwrap_or(target);
                        push(&owner, ttl, RecordData::Cname(target.to_ascii_lowercase()));
                    }
                }
                RecordType::Srv => {
                    let Some(port) = instance.port() else {
                        continue;
                    };
                    let target = format!("{}.{owner}", instance.id).to_ascii_lowercase();
                    push(
                        &owner,
                        ttl,
                        RecordData::Srv {
                            priority: 1,
                            weight: 1,
                            port,
                            target: target.clone(),
                        },
                    );
                    // Cloud Map also creates the target's address records.
                    if let Some(ip) = instance.ipv4() {
                        push(&target, ttl, RecordData::A(ip));
                    }
                    if let Some(ip) = instance.ipv6() {
                        push(&target, ttl, RecordData::Aaaa(ip));
                    }
                }
            }
        }
    }
    ServiceRecords {
        routing_policy: config.routing_policy,
        records,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::records::HealthStatus;
    use serde_json::json;

    fn service(config: Option<DnsConfig>) -> ServiceRecord {
        ServiceRecord {
            id: "srv-1".into(),
            arn: "arn".into(),
            name: "Colors".into(),
            namespace_id: "ns-1".into(),
            description: None,
            custom_health: true,
            create_date: 0.0,
            creator_request_id: None,
            tags: Vec::new(),
            dns_config: config,
            attributes: Default::default(),
        }
    }

    fn instance(id: &str, health: HealthStatus, attrs: &[(&str, &str)]) -> Instance {
        Instance {
            id: id.into(),
            service_id: "srv-1".into(),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            health,
            creator_request_id: None,
        }
    }

    fn config(policy: &str, records: &[(&str, u64)]) -> Result<DnsConfig, String> {
        let records: Vec<_> = records
            .iter()
            .map(|(t, ttl)| json!({"Type": t, "TTL": ttl}))
            .collect();
        DnsConfig::from_input(&json!({"RoutingPolicy": policy, "DnsRecords": records}))
    }

    #[test]
    fn record_types_come_in_cloud_maps_combinations() {
        assert!(config("MULTIVALUE", &[("A", 60)]).is_ok());
        assert!(config("MULTIVALUE", &[("A", 60), ("AAAA", 60)]).is_ok());
        assert!(config("MULTIVALUE", &[("SRV", 60)]).is_ok());
        assert!(config("WEIGHTED", &[("CNAME", 60)]).is_ok());
        assert!(config("MULTIVALUE", &[("CNAME", 60)])
            .unwrap_err()
            .contains("WEIGHTED"));
        assert!(config("WEIGHTED", &[("CNAME", 60), ("A", 60)]).is_err());
        assert!(config("MULTIVALUE", &[("A", 60), ("A", 30)]).is_err());
        assert!(config("MULTIVALUE", &[]).is_err());
        // MULTIVALUE is the default policy.
        let c = DnsConfig::from_input(&json!({"DnsRecords": [{"Type": "A", "TTL": 5}]})).unwrap();
        assert_eq!(c.routing_policy, RoutingPolicy::Multivalue);
    }

    #[test]
    fn an_instance_must_give_what_each_record_needs() {
        let srv = config("MULTIVALUE", &[("SRV", 60)]).unwrap();
        let attrs = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(srv
            .check_instance(&attrs(&[("AWS_INSTANCE_IPV4", "10.0.0.1")]))
            .unwrap_err()
            .contains("AWS_INSTANCE_PORT"));
        assert!(srv
            .check_instance(&attrs(&[("AWS_INSTANCE_PORT", "80")]))
            .is_err());
        assert!(srv
            .check_instance(&attrs(&[
                ("AWS_INSTANCE_IPV6", "::1"),
                ("AWS_INSTANCE_PORT", "80")
            ]))
            .is_ok());
        let both = config("MULTIVALUE", &[("A", 60), ("AAAA", 60)]).unwrap();
        assert!(both
            .check_instance(&attrs(&[("AWS_INSTANCE_IPV4", "10.0.0.1")]))
            .unwrap_err()
            .contains("AWS_INSTANCE_IPV6"));
        let cname = config("WEIGHTED", &[("CNAME", 60)]).unwrap();
        assert!(cname.check_instance(&attrs(&[])).is_err());
        assert!(cname
            .check_instance(&attrs(&[("AWS_INSTANCE_CNAME", "db.example.com")]))
            .is_ok());
    }

    #[test]
    fn healthy_instances_give_a_and_aaaa_records_under_the_service_name() {
        let svc = service(Some(
            config("MULTIVALUE", &[("A", 60), ("AAAA", 30)]).unwrap(),
        ));
        let instances = [
            instance(
                "red-1",
                HealthStatus::Healthy,
                &[
                    ("AWS_INSTANCE_IPV4", "10.0.0.1"),
                    ("AWS_INSTANCE_IPV6", "fd00::1"),
                ],
            ),
            instance(
                "red-2",
                HealthStatus::Unhealthy,
                &[
                    ("AWS_INSTANCE_IPV4", "10.0.0.2"),
                    ("AWS_INSTANCE_IPV6", "fd00::2"),
                ],
            ),
        ];
        let got = service_records("Apps.Local.", &svc, &instances);
        let shown: Vec<(String, &str, u32, String)> = got
            .records
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    r.data.kind().as_str(),
                    r.ttl,
                    r.data.to_string(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            vec![
                ("colors.apps.local".into(), "A", 60, "10.0.0.1".into()),
                ("colors.apps.local".into(), "AAAA", 30, "fd00::1".into()),
            ]
        );
    }

    #[test]
    fn srv_records_point_at_the_instance_host_name_which_has_its_addresses() {
        let svc = service(Some(config("MULTIVALUE", &[("SRV", 10)]).unwrap()));
        let instances = [instance(
            "Red-1",
            HealthStatus::Unknown,
            &[
                ("AWS_INSTANCE_IPV4", "10.0.0.1"),
                ("AWS_INSTANCE_PORT", "8080"),
            ],
        )];
        let got = service_records("apps.local", &svc, &instances);
        let srv = got.answer("COLORS.apps.local.", RecordType::Srv, 7);
        assert_eq!(srv.len(), 1);
        assert_eq!(srv[0].data.to_string(), "1 1 8080 red-1.colors.apps.local");
        let a = got.answer("red-1.colors.apps.local", RecordType::A, 0);
        assert_eq!(a[0].data, RecordData::A(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(got.answer("colors.apps.local", RecordType::A, 0).is_empty());
    }

    #[test]
    fn records_group_into_one_set_per_name_and_type() {
        let svc = service(Some(config("MULTIVALUE", &[("SRV", 10)]).unwrap()));
        let instances = [
            instance(
                "a",
                HealthStatus::Healthy,
                &[
                    ("AWS_INSTANCE_IPV4", "10.0.0.1"),
                    ("AWS_INSTANCE_PORT", "80"),
                ],
            ),
            instance(
                "b",
                HealthStatus::Healthy,
                &[
                    ("AWS_INSTANCE_IPV6", "fd00::2"),
                    ("AWS_INSTANCE_PORT", "81"),
                ],
            ),
        ];
        let groups = service_records("apps.local", &svc, &instances).groups();
        let shown: Vec<(String, &str, usize)> = groups
            .iter()
            .map(|g| (g.name.clone(), g.kind.as_str(), g.data.len()))
            .collect();
        assert_eq!(
            shown,
            vec![
                ("colors.apps.local".into(), "SRV", 2),
                ("a.colors.apps.local".into(), "A", 1),
                ("b.colors.apps.local".into(), "AAAA", 1),
            ]
        );
        assert!(groups.iter().all(|g| g.ttl == 10));
    }

    #[test]
    fn multivalue_answers_at_most_eight_healthy_instances() {
        let svc = service(Some(config("MULTIVALUE", &[("A", 60)]).unwrap()));
        let mut instances: Vec<Instance> = (0..10)
            .map(|i| {
                let ip = format!("10.0.0.{i}");
                instance(
                    &format!("i-{i}"),
                    HealthStatus::Healthy,
                    &[("AWS_INSTANCE_IPV4", &ip)],
                )
            })
            .collect();
        instances[0].health = HealthStatus::Unhealthy;
        let got = service_records("apps.local", &svc, &instances);
        assert_eq!(got.records.len(), 9);
        for seed in 0..20 {
            let answer = got.answer("colors.apps.local", RecordType::A, seed);
            assert_eq!(answer.len(), 8);
            assert!(answer.iter().all(|r| r.instance_id != "i-0"));
        }
    }

    #[test]
    fn weighted_answers_one_instance_and_all_of_them_when_none_is_healthy() {
        let svc = service(Some(config("WEIGHTED", &[("CNAME", 60)]).unwrap()));
        let mut instances = vec![
            instance(
                "a",
                HealthStatus::Healthy,
                &[("AWS_INSTANCE_CNAME", "a.example.com")],
            ),
            instance(
                "b",
                HealthStatus::Unhealthy,
                &[("AWS_INSTANCE_CNAME", "b.example.com.")],
            ),
        ];
        let got = service_records("apps.local", &svc, &instances);
        for seed in 0..4 {
            let answer = got.answer("colors.apps.local", RecordType::Cname, seed);
            assert_eq!(answer.len(), 1);
            assert_eq!(answer[0].data, RecordData::Cname("a.example.com".into()));
        }
        instances[0].health = HealthStatus::Unhealthy;
        let got = service_records("apps.local", &svc, &instances);
        assert_eq!(got.records.len(), 2);
        let picked: BTreeSet<String> = (0..4)
            .map(|seed| {
                got.answer("colors.apps.local", RecordType::Cname, seed)[0]
                    .data
                    .to_string()
            })
            .collect();
        assert_eq!(picked.len(), 2);
    }

    #[test]
    fn a_service_without_dns_config_gives_no_records() {
        let svc = service(None);
        let i = instance(
            "a",
            HealthStatus::Healthy,
            &[("AWS_INSTANCE_IPV4", "10.0.0.1")],
        );
        assert!(service_records("apps.local", &svc, &[i]).records.is_empty());
    }

    #[test]
    fn hosted_zone_ids_are_derived_from_the_namespace_id() {
        assert_eq!(hosted_zone_id("ns-0a1b2c3d4e5f6a7b"), "Z0A1B2C3D4E5F6A7B");
        assert!(is_domain_name("db.example.com."));
        assert!(!is_domain_name("db..example.com"));
        assert!(!is_domain_name("db example"));
    }
}
