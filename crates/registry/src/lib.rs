//! Weft's instance registry: the subset of the AWS Cloud Map
//! (`servicediscovery`, 2017-03-14) API that App Mesh users relied on, over a
//! Weft store, so that the AWS CLI and SDKs work against it unchanged.
//!
//! - Namespaces: CreateHttpNamespace, ListNamespaces, GetNamespace, DeleteNamespace.
//! - Services: CreateService, ListServices, GetService, DeleteService.
//! - Instances: RegisterInstance, DeregisterInstance, ListInstances,
//!   GetInstance, DiscoverInstances, UpdateInstanceCustomHealthStatus.
//! - GetOperation.
//!
//! Both wire protocols of the model are served ([`http`]): awsJson 1.1 on
//! `POST /` and Smithy RPC v2 CBOR on `POST /service/…/operation/…`. Neither
//! clashes with the App Mesh API, whose paths start with `/v20190125`, so
//! [`router`] merges into the same listener:
//!
//! ```no_run
//! # async fn wire(store: weft_store::SharedStore, appmesh: axum::Router) {
//! let registry = weft_registry::RegistryService::new(store, Default::default());
//! let app = appmesh.merge(weft_registry::router(registry.clone()));
//! // The control plane reads instances, and watches `keys::INSTANCES` for changes:
//! let endpoints = registry.instances("apps.local", "colors").await;
//! # }
//! ```
//!
//! Requests are SigV4-signed by the SDKs; like the App Mesh API, the
//! registry does not check signatures, so any credentials are accepted.

pub mod error;
pub mod http;
pub mod keys;
pub mod model;
pub mod records;
pub mod service;

pub use error::RegistryError;
pub use http::router;
pub use records::{HealthStatus, Instance, NamespaceRecord, ServiceRecord, Tag};
pub use service::{RegistryConfig, RegistryService};
