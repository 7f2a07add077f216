//! What the registry stores, one JSON document per key (see [`crate::keys`]).
//! These are also what the read API hands to the control plane.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::dns::{DnsConfig, DnsProperties, NamespaceType};

/// A tag as the model defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// A namespace: HTTP, private DNS or public DNS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    /// `ns-` followed by 16 lowercase hexadecimal digits.
    pub id: String,
    pub arn: String,
    /// The name, which is also its `HttpName` (what DiscoverInstances
    /// takes) and, for a DNS namespace, its zone.
    pub name: String,
    pub description: Option<String>,
    /// Epoch seconds.
    pub create_date: f64,
    pub creator_request_id: Option<String>,
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// `HTTP`, `DNS_PRIVATE` or `DNS_PUBLIC` (`HTTP` when absent).
    #[serde(default)]
    pub kind: NamespaceType,
    /// The zone of a DNS namespace; `None` for an HTTP one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsProperties>,
}

/// A service in a namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// `srv-` followed by 16 lowercase hexadecimal digits.
    pub id: String,
    pub arn: String,
    pub name: String,
    pub namespace_id: String,
    pub description: Option<String>,
    /// Whether the service was created with `HealthCheckCustomConfig`, so that
    /// its instances carry a health status set by UpdateInstanceCustomHealthStatus.
    pub custom_health: bool,
    /// Epoch seconds.
    pub create_date: f64,
    pub creator_request_id: Option<String>,
    #[serde(default)]
    pub tags: Vec<Tag>,
    /// The records each instance gives, for a service in a DNS namespace
    /// created with `DnsConfig` (its `Type` is then `DNS_HTTP`, else `HTTP`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<DnsConfig>,
    /// Service-level attributes (UpdateServiceAttributes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// The health of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    /// The service has no custom health check: the instance is taken as
    /// healthy, and DiscoverInstances reports `UNKNOWN` as Cloud Map does.
    Unknown,
}

impl ServiceRecord {
    /// `DNS_HTTP` for a service with DNS records, else `HTTP`.
    pub fn service_type(&self) -> &'static str {
        if self.dns_config.is_some() {
            "DNS_HTTP"
        } else {
            "HTTP"
        }
    }

    /// Decodes a service record as read from the store.
    pub fn decode(bytes: &[u8]) -> Result<ServiceRecord, crate::RegistryError> {
        serde_json::from_slice(bytes)
            .map_err(|e| crate::RegistryError::Internal(format!("service record unreadable: {e}")))
    }
}

impl NamespaceRecord {
    /// Decodes a namespace record as read from the store.
    pub fn decode(bytes: &[u8]) -> Result<NamespaceRecord, crate::RegistryError> {
        serde_json::from_slice(bytes).map_err(|e| {
            crate::RegistryError::Internal(format!("namespace record unreadable: {e}"))
        })
    }
}

impl HealthStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "HEALTHY",
            HealthStatus::Unhealthy => "UNHEALTHY",
            HealthStatus::Unknown => "UNKNOWN",
        }
    }
}

/// A registered instance of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// The caller-chosen instance id.
    pub id: String,
    pub service_id: String,
    /// `AWS_INSTANCE_IPV4`, `AWS_INSTANCE_IPV6`, `AWS_INSTANCE_CNAME`,
    /// `AWS_INSTANCE_PORT` and custom attributes.
    pub attributes: BTreeMap<String, String>,
    pub health: HealthStatus,
    pub creator_request_id: Option<String>,
}

impl Instance {
    /// `AWS_INSTANCE_IPV4`, if set.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.attributes.get("AWS_INSTANCE_IPV4")?.parse().ok()
    }

    /// `AWS_INSTANCE_IPV6`, if set.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.attributes.get("AWS_INSTANCE_IPV6")?.parse().ok()
    }

    /// `AWS_INSTANCE_PORT`, if set.
    pub fn port(&self) -> Option<u16> {
        self.attributes.get("AWS_INSTANCE_PORT")?.parse().ok()
    }

    /// Whether traffic may go to it: healthy, or in a service without health checks.
    pub fn is_healthy(&self) -> bool {
        self.health != HealthStatus::Unhealthy
    }

    /// Decodes an instance record as read from the store (for watchers of
    /// [`crate::keys::INSTANCES`]).
    pub fn decode(bytes: &[u8]) -> Result<Instance, crate::RegistryError> {
        serde_json::from_slice(bytes)
            .map_err(|e| crate::RegistryError::Internal(format!("instance record unreadable: {e}")))
    }
}

/// An idempotency record: the request a `CreatorRequestId` came with and the answer given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RequestRecord {
    /// `sha256:` and the hex digest of the request without its
    /// `CreatorRequestId`.
    pub request: String,
    pub output: serde_json::Value,
    /// The operation id the answer carries, for DuplicateRequest.
    pub operation_id: Option<String>,
    /// Epoch seconds.
    pub at: f64,
}

/// What GetOperation answers, in the model's `Operation` shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OperationRecord {
    pub id: String,
    /// `CREATE_NAMESPACE`, `DELETE_NAMESPACE`, `UPDATE_NAMESPACE`,
    /// `UPDATE_SERVICE`, `REGISTER_INSTANCE`, `DEREGISTER_INSTANCE`.
    pub kind: String,
    /// `NAMESPACE`, `SERVICE`, `INSTANCE` to ids.
    pub targets: BTreeMap<String, String>,
    /// Epoch seconds.
    pub at: f64,
}
