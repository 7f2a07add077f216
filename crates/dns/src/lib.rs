//! Weft's DNS server: Cloud Map DNS namespaces answered as zones, as
//! Route 53 answered them for Cloud Map, and the meshes' virtual service
//! names answered with virtual IPs.
//!
//! - [`Zones`], [`Zone`], [`RecordSet`], [`Soa`]: what is served, built by
//!   the caller from namespaces, services' `DnsConfig` and healthy
//!   instances. Pure.
//! - [`Zones::answer`]: one question's answer (records, NODATA, NXDOMAIN or
//!   REFUSED), under each record set's routing policy (`MULTIVALUE`: up to
//!   eight records; `WEIGHTED`: one at random). Pure.
//! - [`serve`]: UDP and TCP on hickory-server, answering from the latest
//!   zones published on a `tokio::sync::watch` channel, with bounded
//!   connections and no queues.
//! - [`mesh`]: the meshes' virtual service names, each answered with a
//!   stable virtual IP derived from the name; [`cloud_map`]: the zones of
//!   Cloud Map's DNS namespaces; [`follow`]: both kept current from the
//!   store.

mod answer;
pub mod cloud_map;
mod error;
mod follow;
pub mod mesh;
mod server;
mod zones;

pub use answer::Answer;
pub use error::DnsError;
pub use follow::follow;
pub use server::{respond, serve, Limits, ZonesHandler, MAX_UDP_PAYLOAD};
pub use zones::{
    Rdata, RecordSet, RoutingPolicy, Soa, Zone, Zones, CLOUD_MAP_SOA_TTL, MULTIVALUE_MAX_ANSWERS,
    NS_TTL,
};

/// The DNS types of the answers ([`Answer`]'s records, names, codes).
pub use hickory_proto as proto;
/// The transport kinds [`respond`] takes.
pub use hickory_server::net::xfer::Protocol;
