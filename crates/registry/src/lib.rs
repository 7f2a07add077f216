//! Weft's instance registry: the AWS Cloud Map (`servicediscovery`,
//! 2017-03-14) API over a Weft store, so that the AWS CLI and SDKs work
//! against it unchanged. Every operation of the model is served:
//!
//! - Namespaces: CreateHttpNamespace, CreatePrivateDnsNamespace,
//!   CreatePublicDnsNamespace, UpdateHttpNamespace, UpdatePrivateDnsNamespace,
//!   UpdatePublicDnsNamespace, ListNamespaces, GetNamespace, DeleteNamespace.
//! - Services: CreateService, UpdateService, ListServices, GetService,
//!   DeleteService, GetServiceAttributes, UpdateServiceAttributes,
//!   DeleteServiceAttributes.
//! - Instances: RegisterInstance, DeregisterInstance, ListInstances,
//!   GetInstance, GetInstancesHealthStatus, DiscoverInstances,
//!   DiscoverInstancesRevision, UpdateInstanceCustomHealthStatus.
//! - GetOperation, ListOperations; TagResource, UntagResource,
//!   ListTagsForResource.
//!
//! DNS namespaces are stored with what a DNS server needs to answer for them
//! (see [`keys`] for the layout and [`dns`] for the records a service's
//! instances give); Weft's registry itself answers no DNS queries.
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
//! Requests are SigV4-signed by the SDKs. The registry itself does not check
//! signatures: `weft server` puts weft-auth's layer in front of it (and of the
//! App Mesh API), which verifies them and the key's policy before a request
//! gets here.

pub mod dns;
pub mod error;
pub mod http;
pub mod keys;
pub mod model;
pub mod records;
pub mod service;

pub use dns::{service_records, DnsConfig, NamespaceType, Record, RecordData, RecordType};
pub use error::RegistryError;
pub use http::router;
pub use records::{HealthStatus, Instance, NamespaceRecord, ServiceRecord, Tag};
pub use service::{RegistryConfig, RegistryService};
