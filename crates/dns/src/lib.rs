//! Weft's DNS server: Cloud Map DNS namespaces answered as zones, as
//! Route 53 answered them for Cloud Map, and the meshes' virtual service
//! names answered with virtual IPs.
//!
//! - [`transport`]: DNS over UDP and TCP, bounded, for any
//!   [`Respond`]er; what weft-agent's workload resolver serves with too.
//!   Always built: with `default-features = false` it is all there is, with
//!   [`proto`].
//!
//! With the `server` feature (default):
//!
//! - `Zones`, `Zone`, `RecordSet`, `Soa`: what is served, built by the
//!   caller from namespaces, services' `DnsConfig` and healthy instances.
//!   Pure.
//! - `Zones::answer`: one question's answer (records, NODATA, NXDOMAIN or
//!   REFUSED), under each record set's routing policy (`MULTIVALUE`: up to
//!   eight records; `WEIGHTED`: one at random). Pure.
//! - `ZonesHandler`: hickory-server's parsing and answering of each message
//!   from the latest zones published on a `tokio::sync::watch` channel;
//!   `serve`: it over the transport, with bounded connections and no
//!   queues.
//! - `mesh`: the meshes' virtual service names, each answered with a
//!   stable virtual IP derived from the name; `cloud_map`: the zones of
//!   Cloud Map's DNS namespaces; `follow`: both kept current from the
//!   store.

mod error;
pub mod transport;

#[cfg(feature = "server")]
mod answer;
#[cfg(feature = "server")]
pub mod cloud_map;
#[cfg(feature = "server")]
mod follow;
#[cfg(feature = "server")]
pub mod mesh;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
mod zones;

pub use error::DnsError;
pub use transport::{Limits, Protocol, Respond};

#[cfg(feature = "server")]
pub use answer::Answer;
#[cfg(feature = "server")]
pub use follow::follow;
#[cfg(feature = "server")]
pub use server::{serve, ZonesHandler, MAX_UDP_PAYLOAD};
#[cfg(feature = "server")]
pub use zones::{
    Rdata, RecordSet, RoutingPolicy, Soa, Zone, Zones, CLOUD_MAP_SOA_TTL, MULTIVALUE_MAX_ANSWERS,
    NS_TTL,
};

/// The DNS types of messages (records, names, codes).
pub use hickory_proto as proto;
