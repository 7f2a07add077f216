//! Transparent interception: the traffic redirection App Mesh's proxy route manager set up
//! (App Mesh user guide, `getting-started-ec2.md`; on ECS the task's `proxyConfiguration`, on
//! EKS the `proxyinit` init container), so that an unmodified application's TCP connections go
//! through its Envoy.
//!
//! - [`InterceptConfig`]: the `APPMESH_*` variables, parsed and validated (pure).
//! - [`rules`]: the rules as `nft` and `iptables-restore` input (pure).
//! - [`netfilter`]: choosing a front end, applying and removing the rules.
//! - [`lab`]: hosts on one machine (network namespaces on one segment) for the demo, the
//!   benchmarks and the tests.

pub mod config;
mod error;
pub mod lab;
pub mod netfilter;
pub mod rules;

pub use config::InterceptConfig;
pub use error::InterceptError;
pub use netfilter::{apply, remove, Backend, Preference};
