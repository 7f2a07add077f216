//! The Cloud Map operations over a [`weft_store::Store`].
//!
//! Inputs arrive checked against the model (see [`crate::http`]); this module
//! adds what the model cannot say: existence, uniqueness of names, what still
//! uses a namespace or service, health, idempotency and pagination.
//!
//! Every operation completes before it answers and is durable once the store
//! transaction commits, so the operations Cloud Map runs asynchronously
//! (namespace create/update/delete, service update, instance
//! register/deregister) are recorded as already `SUCCESS` for GetOperation
//! and ListOperations.
//!
//! Concurrency: writes are compare-and-swap transactions. Adding or removing a
//! service rewrites its namespace's guard key, adding or removing an instance
//! its service's guard key; a delete commits only if the guard it read is
//! unchanged, so it can never slip past a concurrent create beneath it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use weft_api::ledger::{Caps, Ledger};
use weft_api::throttle::{Admission, ClientId, Limits, Permit};
use weft_api::RateLimit;
use weft_store::{Compare, KeyValue, Op, Range, SharedStore, Txn, TxnOutcome};

use crate::dns::{self, DnsConfig, DnsProperties, NamespaceType};
use crate::error::RegistryError;
use crate::keys;
use crate::records::{
    HealthStatus, Instance, NamespaceRecord, OperationRecord, RequestRecord, ServiceRecord, Tag,
};

/// How often a write re-reads and retries after losing a race.
const MAX_ATTEMPTS: usize = 64;
/// Page size of the List operations when MaxResults is left out.
const DEFAULT_PAGE: usize = 100;
/// DiscoverInstances answers at most this many instances by default.
const DEFAULT_DISCOVER: usize = 100;
/// Custom (non-`AWS_`) attributes an instance may have.
const MAX_CUSTOM_ATTRIBUTES: usize = 30;
/// Total characters of an instance's attribute keys and values.
const MAX_ATTRIBUTE_CHARS: usize = 5000;
/// Tags a namespace or service may carry (Cloud Map's quota).
const MAX_TAGS: usize = 50;

mod attributes;
mod operations;
mod tags;

/// Region, account and limits the registry answers with.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// ARN partition (`aws`).
    pub partition: String,
    /// Region written into ARNs.
    pub region: String,
    /// The 12-digit account that owns everything (`ResourceOwner`, `CreatedByAccount`).
    pub account: String,
    /// Namespaces per account (Cloud Map's default quota is 50).
    pub max_namespaces: usize,
    /// Instances per service (Cloud Map's default quota is 1,000).
    pub max_instances_per_service: usize,
    /// How long `CreatorRequestId`s and operation records are kept. SDKs retry
    /// within seconds and scripts poll GetOperation within minutes; a day is ample.
    /// Within it, the records are also capped by [`RegistryConfig::max_records`]
    /// and [`RegistryConfig::max_record_bytes`], the oldest forgotten first.
    pub record_ttl: Duration,
    /// Most `CreatorRequestId` records kept at once, and likewise most
    /// operation records (default 10,000 each). An SDK attaches a fresh
    /// `CreatorRequestId` to every create and registration, and every
    /// registration writes an operation record.
    pub max_records: usize,
    /// Most bytes of `CreatorRequestId` records, and likewise of operation
    /// records, keys included (default 8 MiB each).
    pub max_record_bytes: usize,
    /// Each client's request rate; past it the registry answers
    /// `RequestLimitExceeded` (HTTP 429, which the SDKs back off from and
    /// retry). A client is the access key id requests are signed with (see
    /// [`weft_api::throttle`]). `None`: no limit.
    pub rate_limit: Option<RateLimit>,
    /// Requests one client may have in flight at once (default 64); past it,
    /// `RequestLimitExceeded` at once. 0: no limit.
    pub max_in_flight_per_client: usize,
    /// Largest request body accepted, in bytes (default 256 KiB). The
    /// largest Cloud Map request is a service or namespace with 200 tags
    /// (about 80 KB of JSON); an instance's attributes hold at most 5,000
    /// characters. A larger body is answered `InvalidInput`.
    pub max_body_bytes: usize,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            partition: "aws".into(),
            region: "us-east-1".into(),
            account: "000000000000".into(),
            max_namespaces: 50,
            max_instances_per_service: 1000,
            record_ttl: Duration::from_secs(24 * 3600),
            max_records: 10_000,
            max_record_bytes: 8 * 1024 * 1024,
            rate_limit: None,
            max_in_flight_per_client: weft_api::config::DEFAULT_MAX_IN_FLIGHT_PER_CLIENT,
            max_body_bytes: weft_api::config::DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// The Cloud Map registry, independent of HTTP. Cheap to clone.
#[derive(Clone)]
pub struct RegistryService {
    store: SharedStore,
    config: RegistryConfig,
    /// Per-client rate and in-flight limits.
    admission: Arc<Admission>,
    /// The caps on `CreatorRequestId` records and on operation records.
    requests: Arc<Ledger>,
    operations: Arc<Ledger>,
}

/// The current time in epoch seconds, with Cloud Map's millisecond precision.
pub fn now() -> f64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_millis() as f64) / 1000.0
}

fn text<'a>(input: &'a Value, member: &str) -> Result<&'a str, RegistryError> {
    input
        .get(member)
        .and_then(Value::as_str)
        .ok_or_else(|| RegistryError::InvalidInput(format!("Value at '{member}' must not be null")))
}

fn opt_text(input: &Value, member: &str) -> Option<String> {
    input.get(member).and_then(Value::as_str).map(String::from)
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, RegistryError> {
    serde_json::from_slice(&kv.value).map_err(|e| {
        RegistryError::Internal(format!("stored record {} is unreadable: {e}", kv.key))
    })
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, RegistryError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| RegistryError::Internal(format!("cannot encode record: {e}")))
}

/// `prefix` followed by 16 random lowercase hexadecimal digits, as Cloud Map's ids look.
fn new_id(prefix: &str) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &hex[..16])
}

/// An operation id shaped like Cloud Map's (32 characters, a dash, 8 more).
fn new_operation_id() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    format!("{a}-{}", &b[..8])
}

/// Accepts an id or an ARN whose resource ends in `/{id}`, as Cloud Map does
/// for the `Id`/`ServiceId` members typed `Arn`.
fn id_of(value: &str) -> &str {
    if value.starts_with("arn:") {
        value.rsplit('/').next().unwrap_or(value)
    } else {
        value
    }
}

/// The request without its CreatorRequestId (or UpdaterRequestId), to tell a retry from a reuse:
/// the `sha256:…` digest of its JSON, which records keep.
struct Fingerprint {
    /// `sha256:` and the lowercase hex digest.
    digest: String,
}

impl Fingerprint {
    /// Whether a record's `request` was written for this request.
    fn matches(&self, recorded: &str) -> bool {
        recorded == self.digest
    }
}

fn fingerprint(input: &Value) -> Fingerprint {
    use sha2::Digest;
    use std::fmt::Write;
    let json = match input.as_object() {
        Some(obj) => {
            let mut copy = obj.clone();
            copy.remove("CreatorRequestId");
            copy.remove("UpdaterRequestId");
            Value::Object(copy).to_string()
        }
        None => input.to_string(),
    };
    let hash = sha2::Sha256::digest(json.as_bytes());
    let mut digest = String::with_capacity(71);
    digest.push_str("sha256:");
    for b in hash.iter() {
        // Writing to a String cannot fail.
        let _ = write!(digest, "{b:02x}");
    }
    Fingerprint { digest }
}

fn tags_of(input: &Value) -> Result<Vec<Tag>, RegistryError> {
    let tags: Vec<Tag> = match input.get("Tags") {
        Some(t) if !t.is_null() => serde_json::from_value(t.clone())
            .map_err(|e| RegistryError::InvalidInput(format!("Tags: {e}")))?,
        _ => Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    for t in &tags {
        if t.key.starts_with("aws:") {
            return Err(RegistryError::InvalidInput(format!(
                "Tag keys starting with \"aws:\" are reserved: \"{}\"",
                t.key
            )));
        }
        if !seen.insert(t.key.as_str()) {
            return Err(RegistryError::InvalidInput(format!(
                "Duplicate tag key \"{}\"",
                t.key
            )));
        }
    }
    Ok(tags)
}

fn attributes_of(input: &Value, member: &str) -> BTreeMap<String, String> {
    input
        .get(member)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Cloud Map's rules for instance attributes beyond the model's patterns.
fn check_attributes(attributes: &BTreeMap<String, String>) -> Result<(), RegistryError> {
    let bad = |m: String| Err(RegistryError::InvalidInput(m));
    let custom = attributes.keys().filter(|k| !k.starts_with("AWS_")).count();
    if custom > MAX_CUSTOM_ATTRIBUTES {
        return bad(format!(
            "An instance may have at most {MAX_CUSTOM_ATTRIBUTES} custom attributes, got {custom}"
        ));
    }
    let total: usize = attributes
        .iter()
        .map(|(k, v)| k.chars().count() + v.chars().count())
        .sum();
    if total > MAX_ATTRIBUTE_CHARS {
        return bad(format!(
            "The attributes total {total} characters; at most {MAX_ATTRIBUTE_CHARS} are allowed"
        ));
    }
    for (key, value) in attributes {
        match key.as_str() {
            "AWS_INSTANCE_IPV4" if value.parse::<std::net::Ipv4Addr>().is_err() => {
                return bad(format!(
                    "AWS_INSTANCE_IPV4 \"{value}\" is not an IPv4 address"
                ));
            }
            "AWS_INSTANCE_IPV6" if value.parse::<std::net::Ipv6Addr>().is_err() => {
                return bad(format!(
                    "AWS_INSTANCE_IPV6 \"{value}\" is not an IPv6 address"
                ));
            }
            "AWS_INSTANCE_PORT" if value.parse::<u16>().is_err() => {
                return bad(format!(
                    "AWS_INSTANCE_PORT \"{value}\" is not a port between 0 and 65535"
                ));
            }
            "AWS_INIT_HEALTH_STATUS" if value != "HEALTHY" && value != "UNHEALTHY" => {
                return bad(format!(
                    "AWS_INIT_HEALTH_STATUS must be HEALTHY or UNHEALTHY, got \"{value}\""
                ));
            }
            "AWS_INSTANCE_CNAME" if !dns::is_domain_name(value) => {
                return bad(format!(
                    "AWS_INSTANCE_CNAME \"{value}\" is not a domain name"
                ));
            }
            // Weft looks up no EC2 instances.
            "AWS_EC2_INSTANCE_ID" => {
                return bad(format!("{key} is not supported"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// What an instance of `service` must (or may not) carry beyond
/// [`check_attributes`]: the attributes its DNS records need.
fn check_instance_for(
    service: &ServiceRecord,
    attributes: &BTreeMap<String, String>,
) -> Result<(), RegistryError> {
    match &service.dns_config {
        Some(config) => config
            .check_instance(attributes)
            .map_err(RegistryError::InvalidInput),
        None => match ["AWS_INSTANCE_CNAME", "AWS_ALIAS_DNS_NAME"]
            .into_iter()
            .find(|k| attributes.contains_key(*k))
        {
            Some(key) => Err(RegistryError::InvalidInput(format!(
                "{key} is only for services with DNS records; service {} has none",
                service.id
            ))),
            None => Ok(()),
        },
    }
}

/// One filter of ListNamespaces, ListServices or ListOperations.
struct Filter {
    name: String,
    values: Vec<String>,
    condition: String,
}

fn filters_of(input: &Value) -> Result<Vec<Filter>, RegistryError> {
    filters_allowing(input, &["EQ", "IN", "BEGINS_WITH"])
}

/// The filters of a List request, each with a condition among `conditions`.
fn filters_allowing(input: &Value, conditions: &[&str]) -> Result<Vec<Filter>, RegistryError> {
    let mut out = Vec::new();
    for f in input
        .get("Filters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let values: Vec<String> = f["Values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(String::from))
            .collect();
        let condition = f["Condition"].as_str().unwrap_or("EQ").to_string();
        let name = f["Name"].as_str().unwrap_or_default().to_string();
        match condition.as_str() {
            "EQ" | "BEGINS_WITH" if values.len() != 1 => {
                return Err(RegistryError::InvalidInput(format!(
                    "Filter {name} with condition {condition} takes exactly one value"
                )))
            }
            "BETWEEN" if values.len() != 2 => {
                return Err(RegistryError::InvalidInput(format!(
                    "Filter {name} with condition BETWEEN takes a start and an end"
                )))
            }
            c if !conditions.contains(&c) => {
                return Err(RegistryError::InvalidInput(format!(
                    "Condition {c} is not supported for filter {name}"
                )))
            }
            _ => {}
        }
        out.push(Filter {
            name,
            values,
            condition,
        });
    }
    Ok(out)
}

impl Filter {
    fn matches(&self, actual: &str) -> bool {
        match self.condition.as_str() {
            "BEGINS_WITH" => self.values.iter().any(|v| actual.starts_with(v.as_str())),
            // EQ has one value; IN any of several.
            _ => self.values.iter().any(|v| v == actual),
        }
    }
}

impl RegistryService {
    /// A registry over `store`.
    pub fn new(store: SharedStore, config: RegistryConfig) -> Self {
        let caps = Caps {
            max_records: config.max_records,
            max_bytes: config.max_record_bytes,
        };
        RegistryService {
            store,
            admission: Admission::new(Limits {
                rate: config.rate_limit,
                max_in_flight: config.max_in_flight_per_client,
            }),
            requests: Arc::new(Ledger::new(keys::REQUESTS, caps)),
            operations: Arc::new(Ledger::new(keys::OPERATIONS, caps)),
            config,
        }
    }

    /// Admits one Cloud Map request of `client` under its rate and
    /// in-flight limits, or answers `RequestLimitExceeded`. The request
    /// counts as in flight while the permit lives.
    pub fn admit(&self, client: &ClientId) -> Result<Permit, RegistryError> {
        self.admission
            .admit(client)
            .map_err(|refusal| RegistryError::RequestLimitExceeded(refusal.message()))
    }

    /// The settings in force.
    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Runs one operation on its model-validated input (a JSON object keyed
    /// by member name) and returns its output shape as JSON (`None` for the
    /// operation without output, UpdateInstanceCustomHealthStatus).
    /// Operations with an empty output shape answer `{}`.
    pub async fn call(
        &self,
        operation: &str,
        input: Value,
    ) -> Result<Option<Value>, RegistryError> {
        let out = match operation {
            "CreateHttpNamespace" => self.create_namespace(&input, NamespaceType::Http).await?,
            "CreatePrivateDnsNamespace" => {
                self.create_namespace(&input, NamespaceType::DnsPrivate)
                    .await?
            }
            "CreatePublicDnsNamespace" => {
                self.create_namespace(&input, NamespaceType::DnsPublic)
                    .await?
            }
            "UpdateHttpNamespace" => self.update_namespace(&input, NamespaceType::Http).await?,
            "UpdatePrivateDnsNamespace" => {
                self.update_namespace(&input, NamespaceType::DnsPrivate)
                    .await?
            }
            "UpdatePublicDnsNamespace" => {
                self.update_namespace(&input, NamespaceType::DnsPublic)
                    .await?
            }
            "UpdateService" => self.update_service(&input).await?,
            "GetServiceAttributes" => self.get_service_attributes(&input).await?,
            "UpdateServiceAttributes" => self.update_service_attributes(&input).await?,
            "DeleteServiceAttributes" => self.delete_service_attributes(&input).await?,
            "GetInstancesHealthStatus" => self.instances_health(&input).await?,
            "DiscoverInstancesRevision" => self.discover_revision(&input).await?,
            "ListOperations" => self.list_operations(&input).await?,
            "TagResource" => self.tag_resource(&input).await?,
            "UntagResource" => self.untag_resource(&input).await?,
            "ListTagsForResource" => self.list_tags(&input).await?,
            "ListNamespaces" => self.list_namespaces(&input).await?,
            "GetNamespace" => self.get_namespace(&input).await?,
            "DeleteNamespace" => self.delete_namespace(&input).await?,
            "CreateService" => self.create_service(&input).await?,
            "ListServices" => self.list_services(&input).await?,
            "GetService" => self.get_service(&input).await?,
            "DeleteService" => self.delete_service(&input).await?,
            "RegisterInstance" => self.register_instance(&input).await?,
            "DeregisterInstance" => self.deregister_instance(&input).await?,
            "ListInstances" => self.list_instances(&input).await?,
            "GetInstance" => self.get_instance(&input).await?,
            "DiscoverInstances" => self.discover_instances(&input).await?,
            "UpdateInstanceCustomHealthStatus" => {
                self.update_health(&input).await?;
                return Ok(None);
            }
            "GetOperation" => self.get_operation(&input).await?,
            other => {
                return Err(RegistryError::UnknownOperation(format!(
                    "Weft does not serve the Cloud Map operation {other}"
                )))
            }
        };
        Ok(Some(out))
    }

    // ----- read API for the control plane -----

    /// The service named `service` in the namespace named `namespace` (its
    /// HTTP name), if both exist.
    pub async fn find_service(
        &self,
        namespace: &str,
        service: &str,
    ) -> Result<Option<ServiceRecord>, RegistryError> {
        let Some(ns_id) = self.index(&keys::namespace_name(namespace)).await? else {
            return Ok(None);
        };
        let Some(svc_id) = self.index(&keys::service_name(&ns_id, service)).await? else {
            return Ok(None);
        };
        self.load::<ServiceRecord>(&keys::service(&svc_id))
            .await
            .map(|o| o.map(|(s, _)| s))
    }

    /// Every instance of a service, healthy or not, in instance-id key order;
    /// empty when the namespace or service does not exist. Callers that route
    /// traffic keep those with [`Instance::is_healthy`].
    pub async fn instances(
        &self,
        namespace: &str,
        service: &str,
    ) -> Result<Vec<Instance>, RegistryError> {
        match self.find_service(namespace, service).await? {
            Some(s) => self.instances_of(&s.id).await,
            None => Ok(Vec::new()),
        }
    }

    /// Every DNS namespace (private and public): the zones a DNS server answers for.
    pub async fn dns_namespaces(&self) -> Result<Vec<NamespaceRecord>, RegistryError> {
        let result = self
            .store
            .range(Range::prefix(keys::NAMESPACES.to_string()))
            .await?;
        let mut zones = Vec::new();
        for kv in &result.kvs {
            let ns: NamespaceRecord = decode(kv)?;
            if ns.kind.is_dns() {
                zones.push(ns);
            }
        }
        Ok(zones)
    }

    /// The DNS records the service named `service` in the namespace named
    /// `namespace` gives now (see [`dns::service_records`]); `None` when
    /// either does not exist.
    pub async fn dns_records(
        &self,
        namespace: &str,
        service: &str,
    ) -> Result<Option<dns::ServiceRecords>, RegistryError> {
        let Some(s) = self.find_service(namespace, service).await? else {
            return Ok(None);
        };
        let instances = self.instances_of(&s.id).await?;
        Ok(Some(dns::service_records(namespace, &s, &instances)))
    }

    /// Every instance of the service with this id.
    pub async fn instances_of(&self, service_id: &str) -> Result<Vec<Instance>, RegistryError> {
        let result = self
            .store
            .range(Range::prefix(keys::instances(service_id)))
            .await?;
        result.kvs.iter().map(decode).collect()
    }

    // ----- store helpers -----

    async fn load<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, KeyValue)>, RegistryError> {
        match self.store.get(key).await? {
            Some(kv) => Ok(Some((decode(&kv)?, kv))),
            None => Ok(None),
        }
    }

    /// Reads a name index entry: the id it points to.
    async fn index(&self, key: &str) -> Result<Option<String>, RegistryError> {
        Ok(self
            .store
            .get(key)
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// A compare that holds while `key` keeps the state just read.
    async fn unchanged(&self, key: &str) -> Result<Compare, RegistryError> {
        Ok(match self.store.get(key).await? {
            Some(kv) => Compare::ModRevision(key.to_string(), kv.mod_revision),
            None => Compare::Absent(key.to_string()),
        })
    }

    async fn commit(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<bool, RegistryError> {
        // Idempotency and operation records the write adds, for their caps.
        let records: Vec<(String, usize)> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Put(key, value)
                    if key.starts_with(keys::REQUESTS) || key.starts_with(keys::OPERATIONS) =>
                {
                    Some((key.clone(), key.len() + value.len()))
                }
                _ => None,
            })
            .collect();
        match self.store.txn(Txn { compares, ops }).await? {
            TxnOutcome::Committed(revision) => {
                for (key, size) in records {
                    let ledger = if key.starts_with(keys::REQUESTS) {
                        &self.requests
                    } else {
                        &self.operations
                    };
                    if let Err(e) = ledger.note(&self.store, &key, revision, size).await {
                        // The write stands; the cap is applied at the next one.
                        tracing::warn!(error = %e, "capping registry records failed");
                    }
                }
                Ok(true)
            }
            TxnOutcome::Conflict(_) => Ok(false),
        }
    }

    fn contention() -> RegistryError {
        RegistryError::RequestLimitExceeded("Too many concurrent changes; retry".into())
    }

    async fn count(&self, prefix: String) -> Result<usize, RegistryError> {
        Ok(self.store.count(Range::prefix(prefix)).await?)
    }

    fn arn(&self, resource: &str) -> String {
        format!(
            "arn:{}:servicediscovery:{}:{}:{resource}",
            self.config.partition, self.config.region, self.config.account
        )
    }

    async fn namespace(&self, id: &str) -> Result<(NamespaceRecord, KeyValue), RegistryError> {
        self.load(&keys::namespace(id_of(id)))
            .await?
            .ok_or_else(|| RegistryError::NamespaceNotFound(format!("Namespace {id} not found")))
    }

    async fn service(&self, id: &str) -> Result<(ServiceRecord, KeyValue), RegistryError> {
        self.load(&keys::service(id_of(id)))
            .await?
            .ok_or_else(|| RegistryError::ServiceNotFound(format!("Service {id} not found")))
    }

    // ----- idempotency and operations -----

    /// The earlier answer to the same request under the same CreatorRequestId,
    /// or DuplicateRequest when the id came with a different request.
    async fn replay(
        &self,
        operation: &str,
        creator_request_id: Option<&str>,
        request: &Fingerprint,
    ) -> Result<Option<Value>, RegistryError> {
        let Some(cri) = creator_request_id else {
            return Ok(None);
        };
        let Some((record, _)) = self
            .load::<RequestRecord>(&keys::request(operation, cri))
            .await?
        else {
            return Ok(None);
        };
        if now() - record.at > self.config.record_ttl.as_secs_f64() {
            // Forgotten: the request runs as a new one.
            return Ok(None);
        }
        if request.matches(&record.request) {
            return Ok(Some(record.output));
        }
        Err(RegistryError::DuplicateRequest {
            message: format!(
                "CreatorRequestId {cri} was already used with a different {operation} request"
            ),
            duplicate_operation_id: record.operation_id,
        })
    }

    /// The write that remembers a request's answer under its CreatorRequestId.
    fn remember(
        &self,
        operation: &str,
        creator_request_id: Option<&str>,
        request: &Fingerprint,
        output: &Value,
        operation_id: Option<&str>,
    ) -> Result<Option<Op>, RegistryError> {
        let Some(cri) = creator_request_id else {
            return Ok(None);
        };
        let record = RequestRecord {
            request: request.digest.clone(),
            output: output.clone(),
            operation_id: operation_id.map(String::from),
            at: now(),
        };
        Ok(Some(Op::Put(
            keys::request(operation, cri),
            encode(&record)?,
        )))
    }

    /// The compare that makes two identical concurrent requests run once: the
    /// request record must still be as read before the write (absent, or an
    /// expired record being replaced).
    async fn request_unchanged(
        &self,
        operation: &str,
        creator_request_id: Option<&str>,
    ) -> Result<Option<Compare>, RegistryError> {
        match creator_request_id {
            Some(c) => Ok(Some(self.unchanged(&keys::request(operation, c)).await?)),
            None => Ok(None),
        }
    }

    fn operation_op(
        &self,
        id: &str,
        kind: &str,
        targets: &[(&str, &str)],
    ) -> Result<Op, RegistryError> {
        let record = OperationRecord {
            id: id.to_string(),
            kind: kind.to_string(),
            targets: targets
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            at: now(),
        };
        Ok(Op::Put(keys::operation(id), encode(&record)?))
    }

    /// Deletes idempotency and operation records older than the configured
    /// time to live as seen at `at` (epoch seconds); returns how many went.
    /// Run periodically: SDKs attach a fresh CreatorRequestId to every create.
    pub async fn sweep_expired(&self, at: f64) -> Result<usize, RegistryError> {
        let ttl = self.config.record_ttl.as_secs_f64();
        let mut expired = Vec::new();
        for kv in self.store.range(Range::prefix(keys::REQUESTS)).await?.kvs {
            let stale = serde_json::from_slice::<RequestRecord>(&kv.value)
                .map_or(true, |r| at - r.at > ttl);
            if stale {
                expired.push(kv);
            }
        }
        for kv in self.store.range(Range::prefix(keys::OPERATIONS)).await?.kvs {
            let stale = serde_json::from_slice::<OperationRecord>(&kv.value)
                .map_or(true, |r| at - r.at > ttl);
            if stale {
                expired.push(kv);
            }
        }
        let removed = weft_store::delete_unchanged(&*self.store, &expired).await?;
        if removed > 0 {
            self.requests.reset().await;
            self.operations.reset().await;
        }
        Ok(removed)
    }

    async fn get_operation(&self, input: &Value) -> Result<Value, RegistryError> {
        let id = text(input, "OperationId")?;
        let not_found = || RegistryError::OperationNotFound(format!("Operation {id} not found"));
        if opt_text(input, "OwnerAccount").is_some_and(|a| a != self.config.account) {
            return Err(not_found());
        }
        let Some((op, _)) = self.load::<OperationRecord>(&keys::operation(id)).await? else {
            return Err(not_found());
        };
        Ok(json!({ "Operation": {
            "Id": op.id,
            "OwnerAccount": self.config.account,
            "Type": op.kind,
            "Status": "SUCCESS",
            "CreateDate": op.at,
            "UpdateDate": op.at,
            "Targets": op.targets,
        }}))
    }

    // ----- pagination -----

    fn page_size(input: &Value, default: usize) -> usize {
        input
            .get("MaxResults")
            .and_then(Value::as_u64)
            .map_or(default, |n| n as usize)
    }

    /// Decodes a NextToken: the last key of the previous page, which must lie
    /// in the listed range.
    fn after_key(input: &Value, prefix: &str) -> Result<Option<String>, RegistryError> {
        let Some(token) = input.get("NextToken").and_then(Value::as_str) else {
            return Ok(None);
        };
        let bad =
            || RegistryError::InvalidInput("Value at 'NextToken' is not a valid token".into());
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| bad())?;
        let key = String::from_utf8(bytes).map_err(|_| bad())?;
        if key.starts_with(prefix) {
            Ok(Some(key))
        } else {
            Err(bad())
        }
    }

    fn next_token(key: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
    }

    /// One page of the records under `prefix` that pass `keep`, continuing
    /// after the NextToken; returns the page and the next token.
    async fn page<T: DeserializeOwned>(
        &self,
        input: &Value,
        prefix: &str,
        keep: impl Fn(&T) -> bool,
    ) -> Result<(Vec<T>, Option<String>), RegistryError> {
        let limit = Self::page_size(input, DEFAULT_PAGE);
        let mut range = Range::prefix(prefix.to_string());
        if let Some(after) = Self::after_key(input, prefix)? {
            // The smallest key after `after`: no repeats, no skips.
            range.start = format!("{after}\0");
        }
        let result = self.store.range(range).await?;
        let mut out = Vec::new();
        let mut last = None;
        for kv in &result.kvs {
            let record: T = decode(kv)?;
            if !keep(&record) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, last.map(|k: &str| Self::next_token(k))));
            }
            out.push(record);
            last = Some(kv.key.as_str());
        }
        Ok((out, None))
    }

    // ----- namespaces -----

    async fn namespace_output(
        &self,
        ns: &NamespaceRecord,
        full: bool,
    ) -> Result<Value, RegistryError> {
        let services = self.count(keys::service_names(&ns.id)).await?;
        let mut out = json!({
            "Id": ns.id,
            "Arn": ns.arn,
            "ResourceOwner": self.config.account,
            "Name": ns.name,
            "Type": ns.kind.as_str(),
            "ServiceCount": services,
            "Properties": { "HttpProperties": { "HttpName": ns.name } },
            "CreateDate": ns.create_date,
        });
        if let Some(zone) = &ns.dns {
            out["Properties"]["DnsProperties"] = json!({
                "HostedZoneId": zone.hosted_zone_id,
                "SOA": { "TTL": zone.soa_ttl },
            });
        }
        if let Some(d) = &ns.description {
            out["Description"] = json!(d);
        }
        if full {
            if let Some(c) = &ns.creator_request_id {
                out["CreatorRequestId"] = json!(c);
            }
        }
        Ok(out)
    }

    async fn create_namespace(
        &self,
        input: &Value,
        kind: NamespaceType,
    ) -> Result<Value, RegistryError> {
        let op = match kind {
            NamespaceType::Http => "CreateHttpNamespace",
            NamespaceType::DnsPrivate => "CreatePrivateDnsNamespace",
            NamespaceType::DnsPublic => "CreatePublicDnsNamespace",
        };
        let name = text(input, "Name")?.to_string();
        let cri = opt_text(input, "CreatorRequestId");
        let request = fingerprint(input);
        let tags = tags_of(input)?;
        if tags.len() > MAX_TAGS {
            return Err(RegistryError::TooManyTags {
                message: format!(
                    "A namespace may carry at most {MAX_TAGS} tags, got {}",
                    tags.len()
                ),
                resource_name: name,
            });
        }
        let vpc = opt_text(input, "Vpc");
        if kind == NamespaceType::DnsPrivate && vpc.as_deref().is_none_or(str::is_empty) {
            return Err(RegistryError::InvalidInput(
                "A private DNS namespace needs the Vpc it is visible in".into(),
            ));
        }
        if kind.is_dns() && !dns::is_domain_name(&name) {
            return Err(RegistryError::InvalidInput(format!(
                "Namespace name \"{name}\" is not a domain name"
            )));
        }
        let soa_ttl = input
            .pointer("/Properties/DnsProperties/SOA/TTL")
            .and_then(Value::as_i64)
            .unwrap_or(dns::DEFAULT_SOA_TTL);
        let name_key = keys::namespace_name(&name);
        for _ in 0..MAX_ATTEMPTS {
            // Read before the replay check, so that a twin request committing
            // in between makes this attempt conflict and replay its answer.
            let req_guard = self.request_unchanged(op, cri.as_deref()).await?;
            if let Some(out) = self.replay(op, cri.as_deref(), &request).await? {
                return Ok(out);
            }
            if let Some(id) = self.index(&name_key).await? {
                let existing = self.load::<NamespaceRecord>(&keys::namespace(&id)).await?;
                return Err(RegistryError::NamespaceAlreadyExists {
                    message: format!("Namespace {name} already exists as {id}"),
                    namespace_id: id,
                    creator_request_id: existing.and_then(|(n, _)| n.creator_request_id),
                });
            }
            // Read before the count: a namespace created after this read
            // (by this replica or another) changes it, so two creates racing
            // for the last place under the quota never both commit.
            let quota_guard = self.unchanged(&keys::guard(keys::NAMESPACES_GUARD)).await?;
            let quota = self.config.max_namespaces;
            if self.count(keys::NAMESPACES.to_string()).await? >= quota {
                return Err(RegistryError::ResourceLimitExceeded(format!(
                    "The account already has {quota} namespaces"
                )));
            }
            let id = new_id("ns-");
            let record = NamespaceRecord {
                arn: self.arn(&format!("namespace/{id}")),
                id: id.clone(),
                name: name.clone(),
                description: opt_text(input, "Description"),
                create_date: now(),
                creator_request_id: cri.clone(),
                tags: tags.clone(),
                kind,
                dns: kind.is_dns().then(|| DnsProperties {
                    hosted_zone_id: dns::hosted_zone_id(&id),
                    soa_ttl,
                    vpc: vpc.clone(),
                }),
            };
            let op_id = new_operation_id();
            let output = json!({ "OperationId": op_id });
            let remember = self.remember(op, cri.as_deref(), &request, &output, Some(&op_id))?;
            let mut compares = vec![Compare::Absent(name_key.clone()), quota_guard];
            compares.extend(req_guard);
            let mut ops = vec![
                Op::Put(keys::namespace(&id), encode(&record)?),
                Op::Put(name_key.clone(), Bytes::from(id.clone())),
                Op::Put(keys::guard(keys::NAMESPACES_GUARD), Bytes::new()),
                self.operation_op(&op_id, "CREATE_NAMESPACE", &[("NAMESPACE", &id)])?,
            ];
            ops.extend(remember);
            if self.commit(compares, ops).await? {
                return Ok(output);
            }
        }
        Err(Self::contention())
    }

    async fn get_namespace(&self, input: &Value) -> Result<Value, RegistryError> {
        let (ns, _) = self.namespace(text(input, "Id")?).await?;
        Ok(json!({ "Namespace": self.namespace_output(&ns, true).await? }))
    }

    /// UpdateHttpNamespace, UpdatePrivateDnsNamespace, UpdatePublicDnsNamespace:
    /// the description, and a DNS namespace's SOA TTL.
    async fn update_namespace(
        &self,
        input: &Value,
        kind: NamespaceType,
    ) -> Result<Value, RegistryError> {
        let op = match kind {
            NamespaceType::Http => "UpdateHttpNamespace",
            NamespaceType::DnsPrivate => "UpdatePrivateDnsNamespace",
            NamespaceType::DnsPublic => "UpdatePublicDnsNamespace",
        };
        let id = text(input, "Id")?;
        let uri = opt_text(input, "UpdaterRequestId");
        let request = fingerprint(input);
        let change = input.get("Namespace").cloned().unwrap_or(Value::Null);
        let description = change.get("Description").and_then(Value::as_str);
        let soa_ttl = change
            .pointer("/Properties/DnsProperties/SOA/TTL")
            .and_then(Value::as_i64);
        for _ in 0..MAX_ATTEMPTS {
            let req_guard = self.request_unchanged(op, uri.as_deref()).await?;
            if let Some(out) = self.replay(op, uri.as_deref(), &request).await? {
                return Ok(out);
            }
            let (mut ns, kv) = self.namespace(id).await?;
            if ns.kind != kind {
                return Err(RegistryError::InvalidInput(format!(
                    "Namespace {} is of type {}; {op} updates {} namespaces",
                    ns.id,
                    ns.kind.as_str(),
                    kind.as_str()
                )));
            }
            if let Some(d) = description {
                ns.description = Some(d.to_string());
            }
            if let (Some(ttl), Some(zone)) = (soa_ttl, ns.dns.as_mut()) {
                zone.soa_ttl = ttl;
            }
            let op_id = new_operation_id();
            let output = json!({ "OperationId": op_id });
            let remember = self.remember(op, uri.as_deref(), &request, &output, Some(&op_id))?;
            let mut compares = vec![Compare::ModRevision(kv.key.clone(), kv.mod_revision)];
            compares.extend(req_guard);
            let mut ops = vec![
                Op::Put(kv.key.clone(), encode(&ns)?),
                self.operation_op(&op_id, "UPDATE_NAMESPACE", &[("NAMESPACE", &ns.id)])?,
            ];
            ops.extend(remember);
            if self.commit(compares, ops).await? {
                return Ok(output);
            }
        }
        Err(Self::contention())
    }

    async fn list_namespaces(&self, input: &Value) -> Result<Value, RegistryError> {
        let filters = filters_of(input)?;
        for f in &filters {
            if f.name == "RESOURCE_OWNER" && f.condition == "BEGINS_WITH" {
                return Err(RegistryError::InvalidInput(
                    "Condition BEGINS_WITH is not supported for filter RESOURCE_OWNER".into(),
                ));
            }
        }
        let account = self.config.account.clone();
        let (page, next) = self
            .page::<NamespaceRecord>(input, keys::NAMESPACES, |ns| {
                filters.iter().all(|f| match f.name.as_str() {
                    "TYPE" => f.matches(ns.kind.as_str()),
                    "NAME" | "HTTP_NAME" => f.matches(&ns.name),
                    // Every namespace is the account's own: none is shared.
                    "RESOURCE_OWNER" => f.matches("SELF") || f.matches(&account),
                    _ => false,
                })
            })
            .await?;
        let mut list = Vec::with_capacity(page.len());
        for ns in &page {
            list.push(self.namespace_output(ns, false).await?);
        }
        let mut out = json!({ "Namespaces": list });
        if let Some(t) = next {
            out["NextToken"] = json!(t);
        }
        Ok(out)
    }

    async fn delete_namespace(&self, input: &Value) -> Result<Value, RegistryError> {
        let id = text(input, "Id")?;
        for _ in 0..MAX_ATTEMPTS {
            // Read the guard first: a service created after this read changes it.
            let (ns, kv) = self.namespace(id).await?;
            let guard = self.unchanged(&keys::guard(&ns.id)).await?;
            let n = self.count(keys::service_names(&ns.id)).await?;
            if n > 0 {
                return Err(RegistryError::ResourceInUse(format!(
                    "Namespace {} still contains {n} services; delete them first",
                    ns.id
                )));
            }
            let op_id = new_operation_id();
            let compares = vec![guard, Compare::ModRevision(kv.key.clone(), kv.mod_revision)];
            let ops = vec![
                Op::Delete(kv.key.clone()),
                Op::Delete(keys::namespace_name(&ns.name)),
                Op::Delete(keys::guard(&ns.id)),
                self.operation_op(&op_id, "DELETE_NAMESPACE", &[("NAMESPACE", &ns.id)])?,
            ];
            if self.commit(compares, ops).await? {
                return Ok(json!({ "OperationId": op_id }));
            }
        }
        Err(Self::contention())
    }

    // ----- services -----

    async fn service_output(&self, s: &ServiceRecord, full: bool) -> Result<Value, RegistryError> {
        let instances = self.count(keys::instances(&s.id)).await?;
        let mut out = json!({
            "Id": s.id,
            "Arn": s.arn,
            "ResourceOwner": self.config.account,
            "Name": s.name,
            "Type": s.service_type(),
            "InstanceCount": instances,
            "CreateDate": s.create_date,
            "CreatedByAccount": self.config.account,
        });
        if full {
            out["NamespaceId"] = json!(s.namespace_id);
            if let Some(c) = &s.creator_request_id {
                out["CreatorRequestId"] = json!(c);
            }
        }
        if let Some(d) = &s.description {
            out["Description"] = json!(d);
        }
        if let Some(config) = &s.dns_config {
            let records: Vec<Value> = config
                .records
                .iter()
                .map(|r| json!({ "Type": r.kind.as_str(), "TTL": r.ttl }))
                .collect();
            out["DnsConfig"] = json!({
                "NamespaceId": s.namespace_id,
                "RoutingPolicy": config.routing_policy.as_str(),
                "DnsRecords": records,
            });
        }
        if s.custom_health {
            // FailureThreshold is deprecated and always 1 in Cloud Map.
            out["HealthCheckCustomConfig"] = json!({ "FailureThreshold": 1 });
        }
        Ok(out)
    }

    async fn create_service(&self, input: &Value) -> Result<Value, RegistryError> {
        const OP: &str = "CreateService";
        let name = text(input, "Name")?.to_string();
        let cri = opt_text(input, "CreatorRequestId");
        let request = fingerprint(input);
        let tags = tags_of(input)?;
        if tags.len() > MAX_TAGS {
            return Err(RegistryError::TooManyTags {
                message: format!(
                    "A service may carry at most {MAX_TAGS} tags, got {}",
                    tags.len()
                ),
                resource_name: name,
            });
        }
        let dns_input = input.get("DnsConfig").filter(|v| !v.is_null());
        if input.get("HealthCheckConfig").is_some_and(|v| !v.is_null()) {
            return Err(RegistryError::InvalidInput(
                "HealthCheckConfig (Route 53 health checks) is not supported; use \
                 HealthCheckCustomConfig"
                    .into(),
            ));
        }
        // DnsConfig.NamespaceId is the deprecated place of the namespace.
        let dns_ns = dns_input.and_then(|d| opt_text(d, "NamespaceId"));
        let ns_id = match (opt_text(input, "NamespaceId"), dns_ns) {
            (Some(a), Some(b)) if id_of(&a) != id_of(&b) => {
                return Err(RegistryError::InvalidInput(format!(
                    "NamespaceId {a} and DnsConfig.NamespaceId {b} differ"
                )))
            }
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => {
                return Err(RegistryError::InvalidInput(
                    "Value at 'NamespaceId' must not be null".into(),
                ))
            }
        };
        let api_only = input.get("Type").and_then(Value::as_str) == Some("HTTP");
        let dns_config = match dns_input {
            Some(_) if api_only => {
                return Err(RegistryError::InvalidInput(
                    "A service of Type HTTP is discovered through the API only and takes no \
                     DnsConfig"
                        .into(),
                ))
            }
            Some(d) => Some(DnsConfig::from_input(d).map_err(RegistryError::InvalidInput)?),
            None => None,
        };
        let custom_health = input
            .get("HealthCheckCustomConfig")
            .is_some_and(|v| !v.is_null());
        for _ in 0..MAX_ATTEMPTS {
            // Read before the replay check, so that a twin request committing
            // in between makes this attempt conflict and replay its answer.
            let req_guard = self.request_unchanged(OP, cri.as_deref()).await?;
            if let Some(out) = self.replay(OP, cri.as_deref(), &request).await? {
                return Ok(out);
            }
            let (ns, ns_kv) = self.namespace(&ns_id).await?;
            if dns_config.is_some() && !ns.kind.is_dns() {
                return Err(RegistryError::InvalidInput(
                    "DnsConfig is not supported for services in HTTP namespaces".into(),
                ));
            }
            // Read before the names: a service created after this read changes it.
            let ns_guard = self.unchanged(&keys::guard(&ns.id)).await?;
            let name_key = keys::service_name(&ns.id, &name);
            let mut taken = self.index(&name_key).await?;
            if taken.is_none() && ns.kind.is_dns() {
                // Names that differ only by case are one DNS name.
                taken = self.same_name_ignoring_case(&ns.id, &name).await?;
            }
            if let Some(id) = taken {
                let existing = self.load::<ServiceRecord>(&keys::service(&id)).await?;
                let (arn, creator) = existing
                    .map(|(s, _)| (s.arn, s.creator_request_id))
                    .unwrap_or_default();
                return Err(RegistryError::ServiceAlreadyExists {
                    message: format!(
                        "Service {name} already exists in namespace {} as {id}",
                        ns.id
                    ),
                    service_id: id,
                    service_arn: arn,
                    creator_request_id: creator,
                });
            }
            let id = new_id("srv-");
            let record = ServiceRecord {
                arn: self.arn(&format!("service/{id}")),
                id: id.clone(),
                name: name.clone(),
                namespace_id: ns.id.clone(),
                description: opt_text(input, "Description"),
                custom_health,
                create_date: now(),
                creator_request_id: cri.clone(),
                tags: tags.clone(),
                dns_config: dns_config.clone(),
                attributes: BTreeMap::new(),
            };
            let output = json!({ "Service": self.service_output(&record, true).await? });
            let remember = self.remember(OP, cri.as_deref(), &request, &output, None)?;
            let mut compares = vec![
                Compare::ModRevision(ns_kv.key.clone(), ns_kv.mod_revision),
                Compare::Absent(name_key.clone()),
                ns_guard,
            ];
            compares.extend(req_guard);
            let mut ops = vec![
                Op::Put(keys::service(&id), encode(&record)?),
                Op::Put(name_key, Bytes::from(id.clone())),
                Op::Put(keys::guard(&ns.id), Bytes::new()),
            ];
            ops.extend(remember);
            if self.commit(compares, ops).await? {
                return Ok(output);
            }
        }
        Err(Self::contention())
    }

    /// The id of a service of the namespace whose name equals `name` but for case.
    async fn same_name_ignoring_case(
        &self,
        namespace_id: &str,
        name: &str,
    ) -> Result<Option<String>, RegistryError> {
        let prefix = keys::service_names(namespace_id);
        let wanted = name.to_lowercase();
        let result = self.store.range(Range::prefix(prefix.clone())).await?;
        Ok(result.kvs.iter().find_map(|kv| {
            let existing = keys::unescape(kv.key.strip_prefix(&prefix)?);
            (existing.to_lowercase() == wanted)
                .then(|| String::from_utf8_lossy(&kv.value).into_owned())
        }))
    }

    /// UpdateService: the description and the TTLs of the DNS records of a
    /// service in a DNS namespace.
    async fn update_service(&self, input: &Value) -> Result<Value, RegistryError> {
        let id = text(input, "Id")?;
        let change = input.get("Service").cloned().unwrap_or(Value::Null);
        if change
            .get("HealthCheckConfig")
            .is_some_and(|v| !v.is_null())
        {
            return Err(RegistryError::InvalidInput(
                "HealthCheckConfig (Route 53 health checks) is not supported".into(),
            ));
        }
        let new_dns = change.get("DnsConfig").filter(|v| !v.is_null());
        for _ in 0..MAX_ATTEMPTS {
            let (mut s, kv) = self.service(id).await?;
            let (ns, _) = self.namespace(&s.namespace_id).await?;
            if !ns.kind.is_dns() {
                return Err(RegistryError::InvalidInput(format!(
                    "Service {} is in HTTP namespace {}; UpdateService changes services in \
                     DNS namespaces",
                    s.id, ns.id
                )));
            }
            if let Some(d) = change.get("Description").and_then(Value::as_str) {
                s.description = Some(d.to_string());
            }
            if let Some(new) = new_dns {
                let Some(current) = &mut s.dns_config else {
                    return Err(RegistryError::InvalidInput(format!(
                        "Service {} has no DnsConfig to update; DNS records cannot be added \
                         to a service",
                        s.id
                    )));
                };
                // The change carries no routing policy: the service keeps its own.
                let new = DnsConfig::change_from_input(new, current.routing_policy)
                    .map_err(RegistryError::InvalidInput)?;
                if new.types() != current.types() {
                    return Err(RegistryError::InvalidInput(
                        "The record types of a service cannot change; only their TTLs can. \
                         Delete the service and create it with the new DnsConfig"
                            .into(),
                    ));
                }
                current.records = new.records;
            }
            let op_id = new_operation_id();
            let compares = vec![Compare::ModRevision(kv.key.clone(), kv.mod_revision)];
            let ops = vec![
                Op::Put(kv.key.clone(), encode(&s)?),
                self.operation_op(&op_id, "UPDATE_SERVICE", &[("SERVICE", &s.id)])?,
            ];
            if self.commit(compares, ops).await? {
                return Ok(json!({ "OperationId": op_id }));
            }
        }
        Err(Self::contention())
    }

    async fn get_service(&self, input: &Value) -> Result<Value, RegistryError> {
        let (s, _) = self.service(text(input, "Id")?).await?;
        Ok(json!({ "Service": self.service_output(&s, true).await? }))
    }

    async fn list_services(&self, input: &Value) -> Result<Value, RegistryError> {
        let filters = filters_of(input)?;
        for f in &filters {
            if f.condition == "BEGINS_WITH" {
                return Err(RegistryError::InvalidInput(format!(
                    "Condition BEGINS_WITH is not supported for filter {}",
                    f.name
                )));
            }
        }
        let account = self.config.account.clone();
        let (page, next) = self
            .page::<ServiceRecord>(input, keys::SERVICES, |s| {
                filters.iter().all(|f| match f.name.as_str() {
                    // Filters may name the namespace by id or ARN.
                    "NAMESPACE_ID" => f.values.iter().any(|v| id_of(v) == s.namespace_id),
                    "RESOURCE_OWNER" => f.matches("SELF") || f.matches(&account),
                    _ => false,
                })
            })
            .await?;
        let mut list = Vec::with_capacity(page.len());
        for s in &page {
            list.push(self.service_output(s, false).await?);
        }
        let mut out = json!({ "Services": list });
        if let Some(t) = next {
            out["NextToken"] = json!(t);
        }
        Ok(out)
    }

    async fn delete_service(&self, input: &Value) -> Result<Value, RegistryError> {
        let id = text(input, "Id")?;
        for _ in 0..MAX_ATTEMPTS {
            let (s, kv) = self.service(id).await?;
            // Read the guard first: an instance registered after this read changes it.
            let guard = self.unchanged(&keys::guard(&s.id)).await?;
            let n = self.count(keys::instances(&s.id)).await?;
            if n > 0 {
                return Err(RegistryError::ResourceInUse(format!(
                    "Service {} still has {n} registered instances; deregister them first",
                    s.id
                )));
            }
            let compares = vec![guard, Compare::ModRevision(kv.key.clone(), kv.mod_revision)];
            let ops = vec![
                Op::Delete(kv.key.clone()),
                Op::Delete(keys::service_name(&s.namespace_id, &s.name)),
                Op::Delete(keys::guard(&s.id)),
            ];
            if self.commit(compares, ops).await? {
                return Ok(json!({}));
            }
        }
        Err(Self::contention())
    }

    // ----- instances -----

    async fn register_instance(&self, input: &Value) -> Result<Value, RegistryError> {
        const OP: &str = "RegisterInstance";
        let service_id = text(input, "ServiceId")?.to_string();
        let instance_id = text(input, "InstanceId")?.to_string();
        let cri = opt_text(input, "CreatorRequestId");
        let request = fingerprint(input);
        let attributes = attributes_of(input, "Attributes");
        check_attributes(&attributes)?;
        for _ in 0..MAX_ATTEMPTS {
            // Read before the replay check, so that a twin request committing
            // in between makes this attempt conflict and replay its answer.
            let req_guard = self.request_unchanged(OP, cri.as_deref()).await?;
            if let Some(out) = self.replay(OP, cri.as_deref(), &request).await? {
                return Ok(out);
            }
            let (s, svc_kv) = self.service(&service_id).await?;
            check_instance_for(&s, &attributes)?;
            let key = keys::instance(&s.id, &instance_id);
            let existing = self.load::<Instance>(&key).await?;
            // A new instance commits under the service's guard as read
            // before the count: an instance registered after this read (by
            // this replica or another) changes it, so the quota holds.
            let mut quota_guard = None;
            if existing.is_none() {
                quota_guard = Some(self.unchanged(&keys::guard(&s.id)).await?);
                let quota = self.config.max_instances_per_service;
                if self.count(keys::instances(&s.id)).await? >= quota {
                    return Err(RegistryError::ResourceLimitExceeded(format!(
                        "Service {} already has {quota} instances",
                        s.id
                    )));
                }
            }
            let health = if !s.custom_health {
                HealthStatus::Unknown
            } else {
                match attributes.get("AWS_INIT_HEALTH_STATUS").map(String::as_str) {
                    Some("UNHEALTHY") => HealthStatus::Unhealthy,
                    Some(_) => HealthStatus::Healthy,
                    // Re-registering updates attributes; health stays as reported.
                    None => existing
                        .as_ref()
                        .map_or(HealthStatus::Healthy, |(i, _)| i.health),
                }
            };
            let instance = Instance {
                id: instance_id.clone(),
                service_id: s.id.clone(),
                attributes: attributes.clone(),
                health,
                creator_request_id: cri.clone(),
            };
            let op_id = new_operation_id();
            let output = json!({ "OperationId": op_id });
            let remember = self.remember(OP, cri.as_deref(), &request, &output, Some(&op_id))?;
            let mut compares = vec![
                Compare::ModRevision(svc_kv.key.clone(), svc_kv.mod_revision),
                match &existing {
                    Some((_, kv)) => Compare::ModRevision(key.clone(), kv.mod_revision),
                    None => Compare::Absent(key.clone()),
                },
            ];
            compares.extend(quota_guard);
            compares.extend(req_guard);
            let mut ops = vec![
                Op::Put(key, encode(&instance)?),
                Op::Put(keys::guard(&s.id), Bytes::new()),
                self.operation_op(
                    &op_id,
                    "REGISTER_INSTANCE",
                    &[("SERVICE", &s.id), ("INSTANCE", &instance_id)],
                )?,
            ];
            ops.extend(remember);
            if self.commit(compares, ops).await? {
                return Ok(output);
            }
        }
        Err(Self::contention())
    }

    async fn deregister_instance(&self, input: &Value) -> Result<Value, RegistryError> {
        let service_id = text(input, "ServiceId")?;
        let instance_id = text(input, "InstanceId")?;
        for _ in 0..MAX_ATTEMPTS {
            let (s, _) = self.service(service_id).await?;
            let key = keys::instance(&s.id, instance_id);
            let Some(kv) = self.store.get(&key).await? else {
                return Err(RegistryError::InstanceNotFound(format!(
                    "Instance {instance_id} not found in service {}",
                    s.id
                )));
            };
            let op_id = new_operation_id();
            let compares = vec![Compare::ModRevision(key.clone(), kv.mod_revision)];
            let ops = vec![
                Op::Delete(key),
                Op::Put(keys::guard(&s.id), Bytes::new()),
                self.operation_op(
                    &op_id,
                    "DEREGISTER_INSTANCE",
                    &[("SERVICE", &s.id), ("INSTANCE", instance_id)],
                )?,
            ];
            if self.commit(compares, ops).await? {
                return Ok(json!({ "OperationId": op_id }));
            }
        }
        Err(Self::contention())
    }

    async fn list_instances(&self, input: &Value) -> Result<Value, RegistryError> {
        let (s, _) = self.service(text(input, "ServiceId")?).await?;
        let (page, next) = self
            .page::<Instance>(input, &keys::instances(&s.id), |_| true)
            .await?;
        let list: Vec<Value> = page
            .iter()
            .map(|i| {
                json!({
                    "Id": i.id,
                    "Attributes": i.attributes,
                    "CreatedByAccount": self.config.account,
                })
            })
            .collect();
        let mut out = json!({ "ResourceOwner": self.config.account, "Instances": list });
        if let Some(t) = next {
            out["NextToken"] = json!(t);
        }
        Ok(out)
    }

    async fn instance(
        &self,
        input: &Value,
    ) -> Result<(ServiceRecord, Instance, KeyValue), RegistryError> {
        let (s, _) = self.service(text(input, "ServiceId")?).await?;
        let instance_id = text(input, "InstanceId")?;
        match self
            .load::<Instance>(&keys::instance(&s.id, instance_id))
            .await?
        {
            Some((i, kv)) => Ok((s, i, kv)),
            None => Err(RegistryError::InstanceNotFound(format!(
                "Instance {instance_id} not found in service {}",
                s.id
            ))),
        }
    }

    async fn get_instance(&self, input: &Value) -> Result<Value, RegistryError> {
        let (_, i, _) = self.instance(input).await?;
        let mut instance = json!({
            "Id": i.id,
            "Attributes": i.attributes,
            "CreatedByAccount": self.config.account,
        });
        if let Some(c) = &i.creator_request_id {
            instance["CreatorRequestId"] = json!(c);
        }
        Ok(json!({ "ResourceOwner": self.config.account, "Instance": instance }))
    }

    async fn update_health(&self, input: &Value) -> Result<(), RegistryError> {
        let status = match text(input, "Status")? {
            "UNHEALTHY" => HealthStatus::Unhealthy,
            _ => HealthStatus::Healthy,
        };
        for _ in 0..MAX_ATTEMPTS {
            let (s, mut i, kv) = self.instance(input).await?;
            if !s.custom_health {
                return Err(RegistryError::CustomHealthNotFound(format!(
                    "Service {} has no HealthCheckCustomConfig",
                    s.id
                )));
            }
            if i.health == status {
                return Ok(());
            }
            i.health = status;
            let compares = vec![Compare::ModRevision(kv.key.clone(), kv.mod_revision)];
            // Health changes do not touch the service guard: InstancesRevision
            // counts registrations, as in Cloud Map.
            if self
                .commit(compares, vec![Op::Put(kv.key.clone(), encode(&i)?)])
                .await?
            {
                return Ok(());
            }
        }
        Err(Self::contention())
    }

    /// The service DiscoverInstances and DiscoverInstancesRevision name (by
    /// namespace name and service name), and its instances' revision: the
    /// store revision of the last registration or deregistration. Health
    /// changes leave it alone, as the model documents for `InstancesRevision`.
    async fn discovered(
        &self,
        input: &Value,
    ) -> Result<(ServiceRecord, weft_store::Revision), RegistryError> {
        let ns_name = text(input, "NamespaceName")?;
        let svc_name = text(input, "ServiceName")?;
        let ns_missing =
            || RegistryError::NamespaceNotFound(format!("Namespace {ns_name} not found"));
        if opt_text(input, "OwnerAccount").is_some_and(|a| a != self.config.account) {
            return Err(ns_missing());
        }
        let ns_id = self
            .index(&keys::namespace_name(ns_name))
            .await?
            .ok_or_else(ns_missing)?;
        let svc_id = self
            .index(&keys::service_name(&ns_id, svc_name))
            .await?
            .ok_or_else(|| {
                RegistryError::ServiceNotFound(format!(
                    "Service {svc_name} not found in namespace {ns_name}"
                ))
            })?;
        let (s, svc_kv) = self.service(&svc_id).await?;
        let guard = self.store.get(&keys::guard(&s.id)).await?;
        let revision = guard.map_or(svc_kv.create_revision, |g| g.mod_revision);
        Ok((s, revision))
    }

    async fn discover_revision(&self, input: &Value) -> Result<Value, RegistryError> {
        let (_, revision) = self.discovered(input).await?;
        Ok(json!({ "InstancesRevision": revision }))
    }

    async fn discover_instances(&self, input: &Value) -> Result<Value, RegistryError> {
        let ns_name = text(input, "NamespaceName")?;
        let (s, revision) = self.discovered(input).await?;
        let query = attributes_of(input, "QueryParameters");
        let optional = attributes_of(input, "OptionalParameters");
        let matches = |i: &Instance, wanted: &BTreeMap<String, String>| {
            wanted.iter().all(|(k, v)| i.attributes.get(k) == Some(v))
        };
        let mut found: Vec<Instance> = self
            .instances_of(&s.id)
            .await?
            .into_iter()
            .filter(|i| matches(i, &query))
            .collect();
        // The health filter is ignored for services without health checks.
        if s.custom_health {
            let wanted = input
                .get("HealthStatus")
                .and_then(Value::as_str)
                .unwrap_or("HEALTHY");
            match wanted {
                "HEALTHY" => found.retain(Instance::is_healthy),
                "UNHEALTHY" => found.retain(|i| !i.is_healthy()),
                // Failing open: all instances when none is healthy.
                "HEALTHY_OR_ELSE_ALL" if found.iter().any(Instance::is_healthy) => {
                    found.retain(Instance::is_healthy);
                }
                _ => {}
            }
        }
        // OptionalParameters narrow the answer only when something matches them.
        if !optional.is_empty() && found.iter().any(|i| matches(i, &optional)) {
            found.retain(|i| matches(i, &optional));
        }
        found.truncate(Self::page_size(input, DEFAULT_DISCOVER));
        let list: Vec<Value> = found
            .iter()
            .map(|i| {
                json!({
                    "InstanceId": i.id,
                    "NamespaceName": ns_name,
                    "ServiceName": s.name,
                    "HealthStatus": i.health.as_str(),
                    "Attributes": i.attributes,
                })
            })
            .collect();
        Ok(json!({ "Instances": list, "InstancesRevision": revision }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_record_matches_its_request_by_digest() {
        let input = json!({"ServiceId": "srv-1", "InstanceId": "i", "CreatorRequestId": "c1"});
        let request = fingerprint(&input);
        assert_eq!(request.digest.len(), "sha256:".len() + 64);
        assert!(request.matches(&request.digest));
        assert!(!request.matches(r#"{"InstanceId":"i","ServiceId":"srv-1"}"#));
        // The CreatorRequestId is not part of the request.
        let retried = json!({"ServiceId": "srv-1", "InstanceId": "i", "CreatorRequestId": "c2"});
        assert!(fingerprint(&retried).matches(&request.digest));
        let other = fingerprint(&json!({"ServiceId": "srv-1", "InstanceId": "j"}));
        assert!(!other.matches(&request.digest));
    }
}
