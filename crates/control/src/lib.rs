//! Weft's control-plane core: from the store to the proxies.
//!
//! It keeps every mesh's resources in memory from the store's change feed,
//! and for every class of connected proxy (one virtual node or gateway with
//! one set of options) translates its mesh into Envoy resources and hands
//! them to the ADS server's snapshot cache
//! (<https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol>).
//!
//! Proxies of the same virtual node with the same options share one snapshot
//! key, so one translation serves all of them. Bursts of store changes are
//! coalesced: every change ready at once is applied before recomputing, and
//! only the classes whose config depends on a changed resource are
//! recomputed.
//!
//! The instance registry (the Cloud Map role) is followed the same way: every
//! mesh snapshot carries the instances of the services its Cloud Map nodes
//! name, and a registry change recomputes only the meshes naming that service,
//! so an instance that registers, deregisters or turns unhealthy reaches the
//! Envoys as an EDS update.
//!
//! A mesh no proxy has asked for is not decoded at all: its records are held
//! as stored bytes and applied when its first proxy connects, so writing to a
//! mesh before its workloads run (a Terraform or CloudFormation apply, a test
//! set-up) costs the control plane nothing.
//!
//! One module per concern:
//!
//! - `index`: the typed meshes kept from the store, and the dormant ones;
//! - `cloud_map`: the registry as translation needs it;
//! - `deps`: what each class's config was computed from, to recompute only
//!   the classes a change can affect;
//! - `classes`: the proxy classes, the resolver that registers them as
//!   Envoys connect, and the sweep that forgets idle ones;
//! - `encoded`: the pool that encodes a resource shared by many classes once;
//! - `publish`: translation and publication of class snapshots to the cache;
//! - `failures`: why a class's config was last not updated (a failed
//!   translation or invalid snapshot), until it is, for `weft proxy-status`;
//! - `runtime`: the loop that follows the store and drives the rest.
//!
//! The public surface is what the binary wires: [`new`], [`Runtime`] and
//! [`AppMeshResolver`], the idle-class TTLs, and the [`ClassFailures`] the
//! runtime records for the status endpoint.

mod classes;
mod cloud_map;
mod deps;
mod encoded;
mod failures;
mod index;
mod progress;
mod publish;
mod runtime;
#[cfg(test)]
mod test_support;

pub use classes::{AppMeshResolver, DEFAULT_IDLE_CLASS_TTL, MIN_IDLE_CLASS_TTL};
pub use failures::{ClassFailure, ClassFailures};
pub use progress::Progress;
pub use runtime::{new, Runtime};
