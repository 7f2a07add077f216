//! The Weft agent: runs beside a workload.
//!
//! It reads the environment variables App Mesh's Envoy image reads
//! (`APPMESH_RESOURCE_ARN`, `ENVOY_ADMIN_ACCESS_PORT`, …; see the App Mesh user guide,
//! `envoy-config.md`), writes the Envoy bootstrap that points Envoy at Weft's ADS server
//! (`docs/proxy-contract.md`), and supervises Envoy: start, restart on exit, drain and stop on
//! shutdown. It also carries the small sample HTTP app used by `weft demo` and by tests.
//!
//! One concern per module:
//! - [`config`]: [`AgentConfig`] from environment variables and flags ([`AgentArgs`]).
//! - [`bootstrap`]: the Envoy bootstrap (JSON).
//! - [`envoy`]: finding Envoy and building its command line.
//! - [`launch`]: starting Envoy as its own identity, tied to the agent's life.
//! - [`redirect`]: `weft agent init` / `cleanup`: the traffic redirection of transparent mode.
//! - [`admin`]: a tiny client for Envoy's admin interface (drain, readiness).
//! - [`supervisor`]: running Envoy beside the workload.
//! - [`registration`]: registering the workload in Weft's instance registry.
//! - [`dns`]: the workload's DNS resolver: mesh names from Weft, the rest upstream.
//! - [`identity`]: the proxy's key and its certificate from Weft's CA (join token, renewal);
//!   [`ca_client`] calls the CA; [`sds`] serves them to Envoy over SDS on a Unix socket.
//! - [`sample_app`]: the demo/test HTTP server (`weft sample-app`).
//! - [`telemetry`]: Envoy's stats sinks, stats config and tracing from App Mesh's variables.

pub mod admin;
pub mod bootstrap;
pub mod ca_client;
pub mod config;
pub mod dns;
pub mod envoy;
pub mod error;
pub mod file_secrets;
pub mod http_client;
pub mod identity;
pub mod launch;
pub mod redirect;
pub mod registration;
pub mod sample_app;
pub mod sds;
pub mod signal;
pub mod supervisor;
pub mod telemetry;

pub use bootstrap::{bootstrap, bootstrap_json};
pub use config::{AgentArgs, AgentConfig, ListenerMode, XdsEndpoint, XdsProtocol};
pub use error::AgentError;
pub use registration::{run_registration, Registration, RegistrationArgs};
pub use sample_app::{run_sample_app, serve_sample_app, SampleAppArgs};
pub use supervisor::{run, EnvoyState, Outcome, Supervisor};
