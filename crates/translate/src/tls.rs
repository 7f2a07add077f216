//! Transport Layer Security: App Mesh's listener TLS (termination, with mutual TLS when the
//! listener validates its clients) and client policies (origination), as Envoy's TLS transport
//! sockets (App Mesh user guide, "Transport Layer Security (TLS)" and "Mutual TLS
//! Authentication"; <https://docs.aws.amazon.com/app-mesh/latest/userguide/tls.html>).
//!
//! # Listener TLS (termination)
//!
//! - `STRICT`: the listener's filter chain carries a `DownstreamTlsContext` and nothing else, so
//!   a plaintext client fails the handshake and is refused.
//! - `PERMISSIVE`: Envoy's TLS inspector tells the two apart, and two chains serve the port: one
//!   for TLS (`transport_protocol: tls`) and one for plaintext (`raw_buffer`). A client that says
//!   nothing first (a server-speaks-first TCP protocol) is taken as plaintext once the inspector
//!   gives up.
//! - `DISABLED`: plaintext, as without `tls`.
//! - `validation` (mutual TLS): the client must present a certificate issued by the trusted
//!   CA (`trust`) and, if `subjectAlternativeNames` is given, naming one of them.
//!
//! # Client policy (origination)
//!
//! A client's policy for a backend is the backend's own `clientPolicy`, else the node's (or
//! gateway's) `backendDefaults.clientPolicy`. It is *in force* for a target listener when its
//! `tls.enforce` is true (the default) and its `tls.ports` is empty or lists the target
//! listener's port: the cluster of that target then originates TLS, validating the server with
//! `validation.trust` and the server's SANs with `validation.subjectAlternativeNames` (without
//! SANs, the server certificate must name the target's service discovery name — its DNS
//! hostname, or `<service>.<namespace>` for Cloud Map — as App Mesh requires, tls.md
//! "Certificate requirements"), presenting `certificate` if given (mutual TLS). SNI is the
//! backend's virtual service name.
//!
//! Otherwise the server decides (tls.md, "Without client policies"): a target listener in
//! `STRICT` or `PERMISSIVE` mode is reached over TLS; its certificate is validated against
//! Weft's trust bundle when it is an ACM certificate (see below), and not validated when it
//! comes from a file or SDS, as App Mesh does for file certificates.
//!
//! # Certificate sources
//!
//! - `file`: paths on the proxy's host, read by Envoy (`certificateChain`, `privateKey`).
//! - `sds`: the secret of that name, served by the local agent over SDS: Envoy reaches it
//!   through the bootstrap's static cluster [`SDS_CLUSTER`] (the Unix socket at
//!   `APPMESH_SDS_SOCKET_PATH`). The name is kept verbatim, so the names a SPIRE agent served
//!   under App Mesh keep working when the agent serves them.
//! - `acm`: Weft has no AWS Certificate Manager. An ACM certificate ARN on a listener stands
//!   for the certificate Weft's CA issues to the proxy for its own virtual node or gateway:
//!   the SDS secret [`IDENTITY_SECRET`]. ACM Private CA ARNs in a validation trust stand for
//!   Weft's CA: the SDS secret [`TRUST_BUNDLE_SECRET`]. So App Mesh specs written for ACM work
//!   unchanged, with Weft's CA in the role of the private CA.
//!
//! # Mesh-wide mutual TLS (a Weft extension)
//!
//! A mesh tagged `weft:mtls` = `STRICT` or `PERMISSIVE` ([`weft_model::MeshMtls`]) gets mutual
//! TLS with Weft identities between its proxies without any TLS spec:
//! - a virtual node listener without its own `tls` serves TLS with the proxy's identity
//!   ([`IDENTITY_SECRET`]) and asks for a client certificate from Weft's CA
//!   ([`TRUST_BUNDLE_SECRET`]) naming a SPIFFE id of the same mesh
//!   (`spiffe://<trust domain>/mesh/<mesh>/…`): required under `STRICT`; under `PERMISSIVE`
//!   the TLS inspector sends plaintext clients to a plaintext chain, as a `PERMISSIVE` listener
//!   does (Istio's PeerAuthentication `PERMISSIVE` works the same way);
//! - a cluster to such a listener, when no client policy is in force for it, presents the
//!   client's identity and validates the target against the trust bundle and its SPIFFE id
//!   (`spiffe://<trust domain>/mesh/<mesh>/virtualNode/<target>`), from nodes and gateways alike.
//!
//! Explicit specs win: a listener with its own `tls` serves what it says, a client policy in
//! force originates what it says, and virtual gateway listeners (traffic from outside the
//! mesh) are as their spec says.
//!
//! # Proxies without an identity
//!
//! Every SDS secret is fetched through the bootstrap's [`SDS_CLUSTER`], which only an agent
//! with a workload identity (a join token) puts there, and which it announces with the node
//! metadata `weft.identity: true` ([`crate::ProxyOptions::identity`]). Envoy 1.40 takes a TLS
//! context whose SDS cluster it does not have, but the secret never comes (the SDS stream
//! fails with "Cluster not available"): the listener or cluster warms for the secret's
//! `initial_fetch_timeout` (15 s), then fails every handshake. So a proxy without an identity
//! is never sent an SDS reference: in an mTLS mesh it gets its config without the mesh-wide mutual TLS (and
//! [`identity_notice`] says why, for `weft proxy-status`); a spec of its own naming an `sds` or
//! `acm` certificate or trust fails its translation ([`TranslateError::NoIdentity`]) rather
//! than serve plaintext where the spec asks for TLS; and a target listener with an ACM
//! certificate is reached over TLS without validation, as a `file` one is.
//!
//! A TLS setting of the proxy's own spec that Envoy would refuse (an empty secret name or path,
//! a NUL character) fails the proxy's translation with [`TranslateError::InvalidTls`] naming
//! the resource; nothing is sent, so no plaintext listener ever stands in for a TLS one.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType as XdsApiType;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier as XdsConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as XdsDataSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{
    EnvoyGrpc as XdsEnvoyGrpc, TargetSpecifier as XdsGrpcTarget,
};
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as XdsTransportSocketConfigType;
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource as XdsApiConfigSource, ApiVersion as XdsApiVersion,
    ConfigSource as XdsConfigSource, DataSource as XdsDataSource, GrpcService as XdsGrpcService,
    TransportSocket as XdsTransportSocket,
};
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as XdsListenerFilterConfigType;
use envoy_types::pb::envoy::config::listener::v3::listener_filter_chain_match_predicate::{
    MatchSet as XdsPredicateMatchSet, Rule as XdsPredicateRule,
};
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain as XdsFilterChain, Listener as XdsListener, ListenerFilter as XdsListenerFilter,
    ListenerFilterChainMatchPredicate as XdsListenerFilterChainMatchPredicate,
};
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector as XdsTlsInspector;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext as XdsCombinedValidationContext,
    ValidationContextType as XdsValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType as XdsSanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext as XdsCertificateValidationContext,
    CommonTlsContext as XdsCommonTlsContext, DownstreamTlsContext as XdsDownstreamTlsContext,
    SdsSecretConfig as XdsSdsSecretConfig, SubjectAltNameMatcher as XdsSubjectAltNameMatcher,
    TlsCertificate as XdsTlsCertificate, UpstreamTlsContext as XdsUpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern as XdsMatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher as XdsStringMatcher;
use envoy_types::pb::envoy::r#type::v3::Int32Range as XdsInt32Range;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use weft_model::shapes::{
    BackendDefaults, ClientPolicy, ClientPolicyTls, ClientTlsCertificate, ListenerTls,
    ListenerTlsAcmCertificate, ListenerTlsCertificate, ListenerTlsFileCertificate, ListenerTlsMode,
    ListenerTlsSdsCertificate, ListenerTlsValidationContextTrust, PortProtocol, ServiceDiscovery,
    SubjectAlternativeNames, TlsValidationContext, TlsValidationContextAcmTrust,
    TlsValidationContextFileTrust, TlsValidationContextSdsTrust, TlsValidationContextTrust,
    VirtualGatewayBackendDefaults, VirtualGatewayClientTlsCertificate, VirtualGatewayData,
    VirtualGatewayListenerTls, VirtualGatewayListenerTlsCertificate, VirtualGatewayListenerTlsMode,
    VirtualGatewayListenerTlsValidationContextTrust, VirtualGatewayTlsValidationContextTrust,
    VirtualNodeData,
};

use crate::route::is_http_family;
use crate::{MeshSnapshot, ProxyIdentity, ProxyKind, ProxyOptions, TranslateError};
use weft_model::MeshMtls;

/// The bootstrap's static cluster through which Envoy reaches the local agent's SDS server
/// (a Unix socket at `APPMESH_SDS_SOCKET_PATH`, gRPC over HTTP/2).
pub const SDS_CLUSTER: &str = "weft_sds";
/// The SDS secret holding the certificate and key Weft's CA issued to the proxy for its
/// virtual node or gateway: what an ACM certificate ARN on a listener stands for.
pub const IDENTITY_SECRET: &str = "weft-identity";
/// The SDS secret holding Weft's trust bundle (a validation context): what ACM Private CA
/// ARNs in a validation trust stand for.
pub const TRUST_BUNDLE_SECRET: &str = "weft-trust-bundle";

const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

/// A listener's TLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Strict,
    Permissive,
    Disabled,
}

/// Where a certificate and its key come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Certificate {
    /// Files on the proxy's host.
    File { chain: String, key: String },
    /// An SDS secret served by the agent.
    Sds(String),
    /// An ACM certificate: Weft's identity for the proxy ([`IDENTITY_SECRET`]).
    Acm,
}

/// Where the trusted CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trust {
    /// A file on the proxy's host.
    File(String),
    /// An SDS secret (a validation context) served by the agent.
    Sds(String),
    /// ACM Private CAs: Weft's CA ([`TRUST_BUNDLE_SECRET`]).
    Acm,
}

/// How a peer's certificate is validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Validation {
    pub trust: Trust,
    /// `subjectAlternativeNames.match.exact`: the peer must name one (empty: any).
    pub sans: Vec<String>,
    /// Mesh-wide mutual TLS: the peer's SPIFFE id must start with this
    /// (`spiffe://<trust domain>/mesh/<mesh>/`), i.e. be a proxy of the same mesh.
    pub mesh_peers: Option<String>,
}

/// A listener's `tls` (virtual node or virtual gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerTls {
    pub mode: Mode,
    pub certificate: Certificate,
    /// Mutual TLS: the client must present a certificate that passes this.
    pub validation: Option<Validation>,
}

/// A client policy's `tls` (virtual node or virtual gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientTls {
    pub enforce: bool,
    /// Empty: every port.
    pub ports: Vec<i32>,
    /// Mutual TLS: the certificate presented to the server.
    pub certificate: Option<Certificate>,
    pub validation: Validation,
}

fn sans(names: Option<&SubjectAlternativeNames>) -> Vec<String> {
    names.map(|n| n.r#match.exact.clone()).unwrap_or_default()
}

fn file_certificate(file: &ListenerTlsFileCertificate) -> Certificate {
    Certificate::File {
        chain: file.certificate_chain.clone(),
        key: file.private_key.clone(),
    }
}

fn sds_certificate(sds: &ListenerTlsSdsCertificate) -> Certificate {
    Certificate::Sds(sds.secret_name.clone())
}

impl From<&ListenerTls> for ServerTls {
    fn from(tls: &ListenerTls) -> Self {
        Self {
            mode: match tls.mode {
                ListenerTlsMode::Strict => Mode::Strict,
                ListenerTlsMode::Permissive => Mode::Permissive,
                ListenerTlsMode::Disabled => Mode::Disabled,
            },
            certificate: match &tls.certificate {
                ListenerTlsCertificate::Acm(ListenerTlsAcmCertificate { .. }) => Certificate::Acm,
                ListenerTlsCertificate::File(file) => file_certificate(file),
                ListenerTlsCertificate::Sds(sds) => sds_certificate(sds),
            },
            validation: tls.validation.as_ref().map(|v| Validation {
                trust: match &v.trust {
                    ListenerTlsValidationContextTrust::File(f) => {
                        Trust::File(f.certificate_chain.clone())
                    }
                    ListenerTlsValidationContextTrust::Sds(s) => Trust::Sds(s.secret_name.clone()),
                },
                sans: sans(v.subject_alternative_names.as_ref()),
                mesh_peers: None,
            }),
        }
    }
}

impl From<&VirtualGatewayListenerTls> for ServerTls {
    fn from(tls: &VirtualGatewayListenerTls) -> Self {
        Self {
            mode: match tls.mode {
                VirtualGatewayListenerTlsMode::Strict => Mode::Strict,
                VirtualGatewayListenerTlsMode::Permissive => Mode::Permissive,
                VirtualGatewayListenerTlsMode::Disabled => Mode::Disabled,
            },
            certificate: match &tls.certificate {
                VirtualGatewayListenerTlsCertificate::Acm(_) => Certificate::Acm,
                VirtualGatewayListenerTlsCertificate::File(f) => Certificate::File {
                    chain: f.certificate_chain.clone(),
                    key: f.private_key.clone(),
                },
                VirtualGatewayListenerTlsCertificate::Sds(s) => {
                    Certificate::Sds(s.secret_name.clone())
                }
            },
            validation: tls.validation.as_ref().map(|v| Validation {
                trust: match &v.trust {
                    VirtualGatewayListenerTlsValidationContextTrust::File(f) => {
                        Trust::File(f.certificate_chain.clone())
                    }
                    VirtualGatewayListenerTlsValidationContextTrust::Sds(s) => {
                        Trust::Sds(s.secret_name.clone())
                    }
                },
                sans: sans(v.subject_alternative_names.as_ref()),
                mesh_peers: None,
            }),
        }
    }
}

impl From<&ClientPolicyTls> for ClientTls {
    fn from(tls: &ClientPolicyTls) -> Self {
        Self {
            enforce: tls.enforce.unwrap_or(true),
            ports: tls.ports.clone().unwrap_or_default(),
            certificate: tls.certificate.as_ref().map(|c| match c {
                ClientTlsCertificate::File(file) => file_certificate(file),
                ClientTlsCertificate::Sds(sds) => sds_certificate(sds),
            }),
            validation: Validation {
                trust: match &tls.validation.trust {
                    TlsValidationContextTrust::Acm(_) => Trust::Acm,
                    TlsValidationContextTrust::File(f) => Trust::File(f.certificate_chain.clone()),
                    TlsValidationContextTrust::Sds(s) => Trust::Sds(s.secret_name.clone()),
                },
                sans: sans(tls.validation.subject_alternative_names.as_ref()),
                mesh_peers: None,
            },
        }
    }
}

/// A virtual gateway's `backendDefaults` in the shape of a virtual node's (the two are the same
/// App Mesh structure under different names), so that a gateway's egress originates TLS with
/// exactly the code a node's does.
pub(crate) fn gateway_backend_defaults(
    defaults: &VirtualGatewayBackendDefaults,
) -> BackendDefaults {
    BackendDefaults {
        client_policy: defaults.client_policy.as_ref().map(|policy| ClientPolicy {
            tls: policy.tls.as_ref().map(|tls| ClientPolicyTls {
                certificate: tls.certificate.as_ref().map(|c| match c {
                    VirtualGatewayClientTlsCertificate::File(f) => {
                        ClientTlsCertificate::File(ListenerTlsFileCertificate {
                            certificate_chain: f.certificate_chain.clone(),
                            private_key: f.private_key.clone(),
                        })
                    }
                    VirtualGatewayClientTlsCertificate::Sds(s) => {
                        ClientTlsCertificate::Sds(ListenerTlsSdsCertificate {
                            secret_name: s.secret_name.clone(),
                        })
                    }
                }),
                enforce: tls.enforce,
                ports: tls.ports.clone(),
                validation: TlsValidationContext {
                    subject_alternative_names: tls.validation.subject_alternative_names.clone(),
                    trust: match &tls.validation.trust {
                        VirtualGatewayTlsValidationContextTrust::Acm(a) => {
                            TlsValidationContextTrust::Acm(TlsValidationContextAcmTrust {
                                certificate_authority_arns: a.certificate_authority_arns.clone(),
                            })
                        }
                        VirtualGatewayTlsValidationContextTrust::File(f) => {
                            TlsValidationContextTrust::File(TlsValidationContextFileTrust {
                                certificate_chain: f.certificate_chain.clone(),
                            })
                        }
                        VirtualGatewayTlsValidationContextTrust::Sds(s) => {
                            TlsValidationContextTrust::Sds(TlsValidationContextSdsTrust {
                                secret_name: s.secret_name.clone(),
                            })
                        }
                    },
                },
            }),
        }),
    }
}

// ---- files over SDS ----

/// The prefix of the SDS secret under which an agent serves a `file` certificate and key (the
/// proxy contract, `docs/proxy-contract.md`).
pub const FILE_CERTIFICATE_SECRET_PREFIX: &str = "file-certificate:";
/// The prefix of the SDS secret under which an agent serves a `file` validation trust.
pub const FILE_TRUST_SECRET_PREFIX: &str = "file-trust:";

/// A path in a secret name: `%` and `|` (the separator) percent-encoded.
fn encode_path(path: &str) -> String {
    path.replace('%', "%25").replace('|', "%7C")
}

impl Certificate {
    /// With `on` (the agent serves files over SDS), a `file` certificate becomes the SDS secret
    /// the agent serves it as.
    fn files_over_sds(self, on: bool) -> Certificate {
        match self {
            Certificate::File { chain, key } if on => Certificate::Sds(format!(
                "{FILE_CERTIFICATE_SECRET_PREFIX}{}|{}",
                encode_path(&chain),
                encode_path(&key)
            )),
            other => other,
        }
    }
}

impl Trust {
    /// Like [`Certificate::files_over_sds`], for a `file` trust.
    fn files_over_sds(self, on: bool) -> Trust {
        match self {
            Trust::File(chain) if on => {
                Trust::Sds(format!("{FILE_TRUST_SECRET_PREFIX}{}", encode_path(&chain)))
            }
            other => other,
        }
    }
}

impl ServerTls {
    /// This listener TLS with its `file` sources over SDS when the proxy's agent serves them
    /// ([`crate::ProxyOptions::file_secrets`]). Applied after the spec's checks, which
    /// judge the spec as written.
    pub(crate) fn with_file_secrets(mut self, on: bool) -> ServerTls {
        self.certificate = self.certificate.files_over_sds(on);
        if let Some(v) = &mut self.validation {
            v.trust = std::mem::replace(&mut v.trust, Trust::Acm).files_over_sds(on);
        }
        self
    }
}

// ---- checks ----

/// Why Envoy would refuse `value` as a path or secret name: empty, or with a NUL (which no
/// path or name can hold).
fn unusable(what: &str, value: &str) -> Option<String> {
    if value.is_empty() {
        Some(format!("{what} is empty"))
    } else if value.contains('\0') {
        Some(format!("{what} {value:?} contains a NUL character"))
    } else {
        None
    }
}

fn check_certificate(at: &str, certificate: &Certificate) -> Result<(), String> {
    let problem = match certificate {
        Certificate::File { chain, key } => unusable("certificate.file.certificateChain", chain)
            .or_else(|| unusable("certificate.file.privateKey", key)),
        Certificate::Sds(name) => unusable("certificate.sds.secretName", name),
        Certificate::Acm => None,
    };
    problem.map_or(Ok(()), |p| Err(format!("{at}: {p}")))
}

fn check_validation(at: &str, validation: &Validation) -> Result<(), String> {
    let problem = match &validation.trust {
        Trust::File(chain) => unusable("validation.trust.file.certificateChain", chain),
        Trust::Sds(name) => unusable("validation.trust.sds.secretName", name),
        Trust::Acm => None,
    }
    .or_else(|| {
        validation.sans.iter().find_map(|san| {
            san.contains('\0').then(|| {
                format!("validation.subjectAlternativeNames {san:?} contains a NUL character")
            })
        })
    });
    problem.map_or(Ok(()), |p| Err(format!("{at}: {p}")))
}

/// Whether a certificate is fetched over SDS (through [`SDS_CLUSTER`]).
fn certificate_over_sds(certificate: &Certificate) -> bool {
    matches!(certificate, Certificate::Sds(_) | Certificate::Acm)
}

/// Whether a trust is fetched over SDS (through [`SDS_CLUSTER`]).
fn trust_over_sds(trust: &Trust) -> bool {
    matches!(trust, Trust::Sds(_) | Trust::Acm)
}

/// Why a proxy without a Weft identity cannot be given a TLS setting of its spec: `what` says
/// which secret source it names.
fn no_identity(at: &str, what: &str) -> String {
    format!(
        "{at} names {what}, an SDS secret served only to a proxy with a Weft identity; this \
         proxy has none (its agent was started without a join token, so its Envoy has no \
         {SDS_CLUSTER} cluster): give its agent a join token (weft join-token create)"
    )
}

impl ServerTls {
    /// Whether a proxy without an identity can be given this listener TLS (see the module
    /// documentation): nothing served over SDS while the listener speaks TLS.
    fn check_without_identity(&self, at: &str) -> Result<(), String> {
        if self.mode == Mode::Disabled {
            return Ok(());
        }
        if certificate_over_sds(&self.certificate) {
            return Err(no_identity(at, "an sds or acm certificate"));
        }
        if self
            .validation
            .as_ref()
            .is_some_and(|v| trust_over_sds(&v.trust))
        {
            return Err(no_identity(at, "an sds validation trust"));
        }
        Ok(())
    }

    /// Whether Envoy can be given this listener TLS; `at` names the listener in the error.
    pub(crate) fn check(&self, at: &str) -> Result<(), String> {
        check_certificate(at, &self.certificate)?;
        if let Some(validation) = &self.validation {
            check_validation(at, validation)?;
        }
        Ok(())
    }
}

impl ClientTls {
    /// Whether Envoy can be given this client policy; `at` names it in the error.
    pub(crate) fn check(&self, at: &str) -> Result<(), String> {
        if let Some(certificate) = &self.certificate {
            check_certificate(at, certificate)?;
        }
        check_validation(at, &self.validation)
    }

    /// Whether a proxy without an identity can be given this client policy: nothing served
    /// over SDS when it is enforced.
    fn check_without_identity(&self, at: &str) -> Result<(), String> {
        if !self.enforce {
            return Ok(());
        }
        if self.certificate.as_ref().is_some_and(certificate_over_sds) {
            return Err(no_identity(at, "an sds client certificate"));
        }
        if trust_over_sds(&self.validation.trust) {
            return Err(no_identity(at, "an sds or acm validation trust"));
        }
        Ok(())
    }

    /// Whether the policy is in force for a target listener on `port`.
    fn applies_to(&self, port: u16) -> bool {
        self.enforce && (self.ports.is_empty() || self.ports.contains(&i32::from(port)))
    }
}

/// Checks every TLS setting of a virtual node's spec (listeners, backend defaults, backends):
/// the error names the node as App Mesh does. A proxy without an identity (`identity` false)
/// may not have settings served over SDS ([`TranslateError::NoIdentity`]).
pub(crate) fn check_node(node: &VirtualNodeData, identity: bool) -> Result<(), TranslateError> {
    let resource = format!("virtualNode/{}", node.virtual_node_name);
    let fail = |reason: String| TranslateError::InvalidTls {
        resource: resource.clone(),
        reason,
    };
    let no_identity = |reason: String| TranslateError::NoIdentity {
        resource: resource.clone(),
        reason,
    };
    for listener in node.spec.listeners.iter().flatten() {
        if let Some(tls) = &listener.tls {
            let at = format!("listener {} tls", listener.port_mapping.port);
            let tls = ServerTls::from(tls);
            tls.check(&at).map_err(fail)?;
            if !identity {
                tls.check_without_identity(&at).map_err(no_identity)?;
            }
        }
    }
    let defaults = node
        .spec
        .backend_defaults
        .as_ref()
        .and_then(|d| d.client_policy.as_ref())
        .and_then(|p| p.tls.as_ref());
    if let Some(tls) = defaults {
        let at = "backendDefaults.clientPolicy.tls";
        let tls = ClientTls::from(tls);
        tls.check(at).map_err(fail)?;
        if !identity {
            tls.check_without_identity(at).map_err(no_identity)?;
        }
    }
    for backend in node.spec.backends.iter().flatten() {
        let weft_model::shapes::Backend::VirtualService(vs) = backend;
        if let Some(tls) = vs.client_policy.as_ref().and_then(|p| p.tls.as_ref()) {
            let at = format!("backend {} clientPolicy.tls", vs.virtual_service_name);
            let tls = ClientTls::from(tls);
            tls.check(&at).map_err(fail)?;
            if !identity {
                tls.check_without_identity(&at).map_err(no_identity)?;
            }
        }
    }
    Ok(())
}

/// Checks every TLS setting of a virtual gateway's spec (listeners, backend defaults); as
/// [`check_node`] for a proxy without an identity.
pub(crate) fn check_gateway(
    gateway: &VirtualGatewayData,
    identity: bool,
) -> Result<(), TranslateError> {
    let resource = format!("virtualGateway/{}", gateway.virtual_gateway_name);
    let fail = |reason: String| TranslateError::InvalidTls {
        resource: resource.clone(),
        reason,
    };
    let no_identity = |reason: String| TranslateError::NoIdentity {
        resource: resource.clone(),
        reason,
    };
    for listener in &gateway.spec.listeners {
        if let Some(tls) = &listener.tls {
            let at = format!("listener {} tls", listener.port_mapping.port);
            let tls = ServerTls::from(tls);
            tls.check(&at).map_err(fail)?;
            if !identity {
                tls.check_without_identity(&at).map_err(no_identity)?;
            }
        }
    }
    let defaults = gateway
        .spec
        .backend_defaults
        .as_ref()
        .map(gateway_backend_defaults)
        .and_then(|d| d.client_policy)
        .and_then(|p| p.tls);
    if let Some(tls) = defaults {
        let at = "backendDefaults.clientPolicy.tls";
        let tls = ClientTls::from(&tls);
        tls.check(at).map_err(fail)?;
        if !identity {
            tls.check_without_identity(at).map_err(no_identity)?;
        }
    }
    Ok(())
}

// ---- mesh-wide mutual TLS ----

/// `spiffe://<trust domain>/mesh/<mesh>/`: the start of every SPIFFE id of the snapshot's mesh
/// (the form Weft's CA issues: `…/virtualNode/<name>`, `…/virtualGateway/<name>`).
fn mesh_spiffe_prefix(snapshot: &MeshSnapshot) -> String {
    format!(
        "spiffe://{}/mesh/{}/",
        snapshot.trust_domain,
        snapshot.mesh_name()
    )
}

/// The SPIFFE id Weft's CA issues to the proxies of virtual node `node` of the snapshot's mesh.
pub(crate) fn node_spiffe_id(snapshot: &MeshSnapshot, node: &str) -> String {
    format!("{}virtualNode/{node}", mesh_spiffe_prefix(snapshot))
}

/// The TLS a virtual node listener without its own `tls` serves: mutual TLS with the proxy's
/// Weft identity when the mesh's `weft:mtls` tag turns it on and the proxy has an identity,
/// else none (plaintext, App Mesh's behaviour).
pub(crate) fn mesh_server(snapshot: &MeshSnapshot, options: &ProxyOptions) -> Option<ServerTls> {
    let mode = match snapshot.mtls {
        MeshMtls::Strict => Mode::Strict,
        MeshMtls::Permissive => Mode::Permissive,
        MeshMtls::Disabled => return None,
    };
    options.identity.then(|| ServerTls {
        mode,
        certificate: Certificate::Acm,
        validation: Some(Validation {
            trust: Trust::Acm,
            sans: Vec::new(),
            mesh_peers: Some(mesh_spiffe_prefix(snapshot)),
        }),
    })
}

/// Why `proxy`'s config lacks the mutual TLS its mesh asks for: the mesh's `weft:mtls` tag
/// turns it on, but the proxy has no Weft identity, so it is served its config without it (its
/// listeners take plaintext, its clusters speak plaintext, which `STRICT` peers refuse). For
/// `weft proxy-status`; `None` when nothing is missing.
pub fn identity_notice(
    snapshot: &MeshSnapshot,
    proxy: &ProxyIdentity,
    options: &ProxyOptions,
) -> Option<String> {
    if !snapshot.mtls.is_on() || options.identity {
        return None;
    }
    let peers = match proxy.kind {
        ProxyKind::VirtualNode => "its listeners accept plaintext and its clusters speak plaintext",
        ProxyKind::VirtualGateway => "its clusters speak plaintext",
    };
    Some(format!(
        "mesh {:?} is tagged {}={} but this proxy has no Weft identity (its agent was started \
         without a join token, so its Envoy has no {SDS_CLUSTER} cluster): it is served without \
         mesh-wide mutual TLS ({peers}; STRICT peers refuse them). Give its agent a join token \
         (weft join-token create)",
        snapshot.mesh_name(),
        weft_model::MTLS_TAG,
        snapshot.mtls.as_str(),
    ))
}

/// The client policy of `node` for its backend `service`: the backend's own, else the node's
/// backend defaults.
pub(crate) fn client_policy<'a>(
    node: &'a VirtualNodeData,
    service: &str,
) -> Option<&'a ClientPolicyTls> {
    let own = node
        .spec
        .backends
        .iter()
        .flatten()
        .find_map(|backend| {
            let weft_model::shapes::Backend::VirtualService(vs) = backend;
            (vs.virtual_service_name == service).then_some(vs.client_policy.as_deref())
        })
        .flatten();
    own.or_else(|| {
        node.spec
            .backend_defaults
            .as_ref()
            .and_then(|d| d.client_policy.as_ref())
    })
    .and_then(|p| p.tls.as_ref())
}

/// The names a target's certificate must carry when the client gives none: its service
/// discovery name (tls.md, "Certificate requirements").
pub(crate) fn discovery_names(target: &VirtualNodeData) -> Vec<String> {
    match target.spec.service_discovery.as_ref() {
        Some(ServiceDiscovery::Dns(dns)) => vec![dns.hostname.clone()],
        Some(ServiceDiscovery::AwsCloudMap(cm)) => {
            vec![format!("{}.{}", cm.service_name, cm.namespace_name)]
        }
        None => Vec::new(),
    }
}

// ---- Envoy structures ----

/// An SDS secret served by the agent through [`SDS_CLUSTER`]. Until the secret arrives, a
/// listener or cluster that needs it stays warming (Envoy's `initial_fetch_timeout`, 15 s by
/// default); then it serves without it, and its handshakes fail: nothing falls back to
/// plaintext.
fn sds_secret(name: &str) -> XdsSdsSecretConfig {
    XdsSdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(XdsConfigSource {
            resource_api_version: XdsApiVersion::V3 as i32,
            config_source_specifier: Some(XdsConfigSourceSpecifier::ApiConfigSource(
                XdsApiConfigSource {
                    api_type: XdsApiType::Grpc as i32,
                    transport_api_version: XdsApiVersion::V3 as i32,
                    grpc_services: vec![XdsGrpcService {
                        target_specifier: Some(XdsGrpcTarget::EnvoyGrpc(XdsEnvoyGrpc {
                            cluster_name: SDS_CLUSTER.to_string(),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    set_node_on_first_message_only: true,
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
    }
}

fn file(path: &str) -> Option<XdsDataSource> {
    Some(XdsDataSource {
        specifier: Some(XdsDataSourceSpecifier::Filename(path.to_string())),
        ..Default::default()
    })
}

/// A SAN as Envoy matches it: an IP address, a URI (`spiffe://…`, anything with a scheme) or a
/// DNS name (App Mesh: "SANs must be in the FQDN or URI format"). Envoy matches a DNS name
/// against a wildcard certificate SAN (`*.apps.local`) as TLS does.
fn san_matcher(san: &str) -> XdsSubjectAltNameMatcher {
    let san_type = if san.parse::<IpAddr>().is_ok() {
        XdsSanType::IpAddress
    } else if san.contains(':') {
        XdsSanType::Uri
    } else {
        XdsSanType::Dns
    };
    XdsSubjectAltNameMatcher {
        san_type: san_type as i32,
        matcher: Some(XdsStringMatcher {
            match_pattern: Some(XdsMatchPattern::Exact(san.to_string())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn validation_context(validation: &Validation) -> XdsValidationContextType {
    let mut sans: Vec<XdsSubjectAltNameMatcher> =
        validation.sans.iter().map(|s| san_matcher(s)).collect();
    if let Some(prefix) = &validation.mesh_peers {
        // Envoy accepts a certificate when any matcher matches one of its SANs
        // (CertificateValidationContext.match_typed_subject_alt_names).
        sans.push(XdsSubjectAltNameMatcher {
            san_type: XdsSanType::Uri as i32,
            matcher: Some(XdsStringMatcher {
                match_pattern: Some(XdsMatchPattern::Prefix(prefix.clone())),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let sds = |name: &str| {
        if sans.is_empty() {
            XdsValidationContextType::ValidationContextSdsSecretConfig(sds_secret(name))
        } else {
            XdsValidationContextType::CombinedValidationContext(XdsCombinedValidationContext {
                default_validation_context: Some(XdsCertificateValidationContext {
                    match_typed_subject_alt_names: sans.clone(),
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds_secret(name)),
                ..Default::default()
            })
        }
    };
    match &validation.trust {
        Trust::File(chain) => {
            XdsValidationContextType::ValidationContext(XdsCertificateValidationContext {
                trusted_ca: file(chain),
                match_typed_subject_alt_names: sans.clone(),
                ..Default::default()
            })
        }
        Trust::Sds(name) => sds(name),
        Trust::Acm => sds(TRUST_BUNDLE_SECRET),
    }
}

fn add_certificate(context: &mut XdsCommonTlsContext, certificate: &Certificate) {
    match certificate {
        Certificate::File { chain, key } => context.tls_certificates.push(XdsTlsCertificate {
            certificate_chain: file(chain),
            private_key: file(key),
            ..Default::default()
        }),
        Certificate::Sds(name) => context
            .tls_certificate_sds_secret_configs
            .push(sds_secret(name)),
        Certificate::Acm => context
            .tls_certificate_sds_secret_configs
            .push(sds_secret(IDENTITY_SECRET)),
    }
}

fn transport_socket(config: envoy_types::pb::google::protobuf::Any) -> XdsTransportSocket {
    XdsTransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_string(),
        config_type: Some(XdsTransportSocketConfigType::TypedConfig(config)),
    }
}

/// The ALPN protocols a TLS listener of `protocol` offers: HTTP/2 and HTTP/1.1 for the HTTP
/// family (the connection manager speaks whichever the client picks), none for `tcp`.
fn downstream_alpn(protocol: PortProtocol) -> Vec<String> {
    if is_http_family(protocol) {
        vec!["h2".to_string(), "http/1.1".to_string()]
    } else {
        Vec::new()
    }
}

/// The ALPN protocol a cluster to a target listener of `protocol` asks for: the one it speaks.
fn upstream_alpn(protocol: PortProtocol) -> Vec<String> {
    match protocol {
        PortProtocol::Http => vec!["http/1.1".to_string()],
        PortProtocol::Http2 | PortProtocol::Grpc => vec!["h2".to_string()],
        PortProtocol::Tcp => Vec::new(),
    }
}

/// The transport socket terminating TLS for a listener of `protocol`.
pub(crate) fn downstream(tls: &ServerTls, protocol: PortProtocol) -> XdsTransportSocket {
    let mut context = XdsCommonTlsContext {
        alpn_protocols: downstream_alpn(protocol),
        validation_context_type: tls.validation.as_ref().map(validation_context),
        ..Default::default()
    };
    add_certificate(&mut context, &tls.certificate);
    transport_socket(pack_any(XdsDownstreamTlsContext {
        common_tls_context: Some(context),
        require_client_certificate: tls.validation.as_ref().map(|_| BoolValue { value: true }),
        ..Default::default()
    }))
}

/// What decides how a client reaches one target listener.
pub(crate) struct Origination<'a> {
    /// The client's policy for the backend, if any.
    pub client: Option<&'a ClientPolicyTls>,
    /// The target listener's `tls`, if any.
    pub server: Option<&'a ListenerTls>,
    /// The target listener's port and protocol.
    pub port: u16,
    pub protocol: PortProtocol,
    /// The backend's virtual service name (SNI).
    pub sni: &'a str,
    /// The target's service discovery names (the SANs required when the client names none).
    pub discovery_names: Vec<String>,
    /// Whether the client proxy has a Weft identity (may use SDS).
    pub identity: bool,
    /// Whether the client proxy's agent serves `file` certificates over SDS
    /// ([`crate::ProxyOptions::file_secrets`]).
    pub file_secrets: bool,
    /// The target's SPIFFE id when the mesh's `weft:mtls` tag is on: a target listener
    /// without its own `tls` then serves mesh-wide mutual TLS.
    pub mesh_peer: Option<String>,
}

/// The transport socket originating TLS to a target listener, or `None` for plaintext (see the
/// module documentation for who decides).
pub(crate) fn upstream(origination: &Origination<'_>) -> Option<XdsTransportSocket> {
    let client = origination
        .client
        .map(ClientTls::from)
        .filter(|c| c.applies_to(origination.port));
    let (validation, certificate) =
        match (client, origination.server) {
            (Some(client), _) => (Some(client.validation), client.certificate),
            (None, Some(server)) => {
                let server = ServerTls::from(server);
                if server.mode == Mode::Disabled {
                    return None;
                }
                // Weft's trust bundle comes over SDS: a client without an identity reaches an ACM
                // server without validating it, as App Mesh reaches a `file` one.
                let validation = (server.certificate == Certificate::Acm && origination.identity)
                    .then(|| Validation {
                        trust: Trust::Acm,
                        sans: Vec::new(),
                        mesh_peers: None,
                    });
                (validation, None)
            }
            // The target serves the mesh-wide default: mutual TLS, Weft identities, its SPIFFE id.
            // A client without an identity has nothing to present: plaintext (a PERMISSIVE mesh
            // serves it; identity_notice says why a STRICT one does not).
            (None, None) => {
                let peer = origination
                    .mesh_peer
                    .as_ref()
                    .filter(|_| origination.identity)?;
                (
                    Some(Validation {
                        trust: Trust::Acm,
                        sans: vec![peer.clone()],
                        mesh_peers: None,
                    }),
                    Some(Certificate::Acm),
                )
            }
        };
    let validation = validation.map(|mut v| {
        if v.sans.is_empty() {
            v.sans.clone_from(&origination.discovery_names);
        }
        v.trust = v.trust.files_over_sds(origination.file_secrets);
        v
    });
    let certificate = certificate.map(|c| c.files_over_sds(origination.file_secrets));
    let mut context = XdsCommonTlsContext {
        alpn_protocols: upstream_alpn(origination.protocol),
        validation_context_type: validation.as_ref().map(validation_context),
        ..Default::default()
    };
    if let Some(certificate) = &certificate {
        add_certificate(&mut context, certificate);
    }
    Some(transport_socket(pack_any(XdsUpstreamTlsContext {
        common_tls_context: Some(context),
        sni: origination.sni.to_string(),
        ..Default::default()
    })))
}

/// The TLS inspector, which tells TLS from plaintext for `PERMISSIVE` listeners.
pub(crate) fn inspector() -> XdsListenerFilter {
    XdsListenerFilter {
        name: TLS_INSPECTOR.to_string(),
        config_type: Some(XdsListenerFilterConfigType::TypedConfig(pack_any(
            XdsTlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// Adds the [`inspector`] to `listener`, for connections to `ports` only when given (the
/// transparent ingress listener serves every node port: a port that is not `PERMISSIVE` must
/// not wait for the inspector). A client that sends nothing first is served as plaintext once
/// the inspector gives up waiting (Envoy's `listener_filters_timeout`, 15 s), rather than
/// dropped, so a server-speaks-first TCP protocol still works on a `PERMISSIVE` port, late.
pub(crate) fn add_inspector(listener: &mut XdsListener, ports: &[u16]) {
    let mut filter = inspector();
    if !ports.is_empty() {
        let any_port = XdsListenerFilterChainMatchPredicate {
            rule: Some(XdsPredicateRule::OrMatch(XdsPredicateMatchSet {
                rules: ports
                    .iter()
                    .map(|port| XdsListenerFilterChainMatchPredicate {
                        rule: Some(XdsPredicateRule::DestinationPortRange(XdsInt32Range {
                            start: i32::from(*port),
                            end: i32::from(*port) + 1,
                        })),
                    })
                    .collect(),
            })),
        };
        filter.filter_disabled = Some(XdsListenerFilterChainMatchPredicate {
            rule: Some(XdsPredicateRule::NotMatch(Box::new(any_port))),
        });
    }
    listener.listener_filters.push(filter);
    listener.continue_on_listener_filters_timeout = true;
}

/// The filter chains serving one listener port: `chain` (plaintext, as built for a listener
/// without TLS) as the listener's TLS mode wants it. Returns the chains and whether they need
/// the [`inspector`] (`PERMISSIVE`).
pub(crate) fn chains(
    chain: XdsFilterChain,
    tls: Option<&ServerTls>,
    protocol: PortProtocol,
) -> (Vec<XdsFilterChain>, bool) {
    let Some(tls) = tls else {
        return (vec![chain], false);
    };
    match tls.mode {
        Mode::Disabled => (vec![chain], false),
        Mode::Strict => (
            vec![XdsFilterChain {
                transport_socket: Some(downstream(tls, protocol)),
                ..chain
            }],
            false,
        ),
        Mode::Permissive => {
            let with_protocol = |chain: &XdsFilterChain, transport_protocol: &str| {
                let mut m = chain.filter_chain_match.clone().unwrap_or_default();
                m.transport_protocol = transport_protocol.to_string();
                Some(m)
            };
            let secure = XdsFilterChain {
                name: format!("{}_tls", chain.name),
                filter_chain_match: with_protocol(&chain, "tls"),
                transport_socket: Some(downstream(tls, protocol)),
                ..chain.clone()
            };
            let plain = XdsFilterChain {
                filter_chain_match: with_protocol(&chain, "raw_buffer"),
                ..chain
            };
            (vec![secure, plain], true)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::listener::v3::Filter as XdsFilter;
    use prost::Message;
    use weft_model::shapes::ListenerTlsValidationContext;

    fn chain(port: Option<u16>) -> XdsFilterChain {
        crate::listener::filter_chain(
            "ingress_http_8080".to_string(),
            port,
            XdsFilter {
                name: "f".to_string(),
                config_type: None,
            },
        )
    }

    fn server(mode: ListenerTlsMode, certificate: ListenerTlsCertificate) -> ListenerTls {
        ListenerTls {
            certificate,
            mode,
            validation: None,
        }
    }

    fn file_cert() -> ListenerTlsCertificate {
        ListenerTlsCertificate::File(ListenerTlsFileCertificate {
            certificate_chain: "/certs/red.pem".into(),
            private_key: "/certs/red.key".into(),
        })
    }

    fn downstream_context(socket: &XdsTransportSocket) -> XdsDownstreamTlsContext {
        assert_eq!(socket.name, TLS_TRANSPORT_SOCKET);
        let Some(XdsTransportSocketConfigType::TypedConfig(any)) = &socket.config_type else {
            panic!("no typed config")
        };
        XdsDownstreamTlsContext::decode(any.value.as_slice()).unwrap()
    }

    fn upstream_context(socket: &XdsTransportSocket) -> XdsUpstreamTlsContext {
        let Some(XdsTransportSocketConfigType::TypedConfig(any)) = &socket.config_type else {
            panic!("no typed config")
        };
        XdsUpstreamTlsContext::decode(any.value.as_slice()).unwrap()
    }

    #[test]
    fn file_sources_become_the_agent_s_sds_secrets_when_it_serves_them() {
        let mut spec = server(ListenerTlsMode::Strict, file_cert());
        spec.validation = Some(ListenerTlsValidationContext {
            trust: ListenerTlsValidationContextTrust::File(TlsValidationContextFileTrust {
                certificate_chain: "/certs/100%|ca.pem".into(),
            }),
            subject_alternative_names: None,
        });
        // An older agent, or Envoy without Weft's agent: Envoy reads the files itself.
        let ctx = downstream_context(&downstream(
            &ServerTls::from(&spec).with_file_secrets(false),
            PortProtocol::Http,
        ));
        let common = ctx.common_tls_context.unwrap();
        assert_eq!(common.tls_certificates.len(), 1);
        assert!(common.tls_certificate_sds_secret_configs.is_empty());
        // Weft's agent: secrets it reads, checks and watches, so a missing file never makes
        // Envoy refuse the config.
        let ctx = downstream_context(&downstream(
            &ServerTls::from(&spec).with_file_secrets(true),
            PortProtocol::Http,
        ));
        let common = ctx.common_tls_context.unwrap();
        assert!(common.tls_certificates.is_empty());
        let secret = &common.tls_certificate_sds_secret_configs[0];
        assert_eq!(
            secret.name,
            "file-certificate:/certs/red.pem|/certs/red.key"
        );
        let Some(XdsValidationContextType::ValidationContextSdsSecretConfig(trust)) =
            common.validation_context_type
        else {
            panic!("trust over SDS")
        };
        assert_eq!(trust.name, "file-trust:/certs/100%25%7Cca.pem");
        let source = format!("{:?}", secret.sds_config);
        assert!(source.contains(SDS_CLUSTER), "{source}");
    }

    #[test]
    fn strict_is_one_chain_that_only_speaks_tls() {
        let tls = ServerTls::from(&server(ListenerTlsMode::Strict, file_cert()));
        let (chains, inspector) = chains(chain(Some(8080)), Some(&tls), PortProtocol::Http);
        assert!(!inspector);
        assert_eq!(chains.len(), 1);
        let m = chains[0].filter_chain_match.clone().unwrap();
        assert_eq!(m.destination_port.unwrap().value, 8080);
        assert_eq!(
            m.transport_protocol, "",
            "a plaintext client gets no other chain"
        );
        let ctx = downstream_context(chains[0].transport_socket.as_ref().unwrap());
        let common = ctx.common_tls_context.unwrap();
        assert_eq!(common.tls_certificates.len(), 1);
        assert_eq!(
            common.tls_certificates[0].certificate_chain,
            file("/certs/red.pem")
        );
        assert_eq!(
            common.tls_certificates[0].private_key,
            file("/certs/red.key")
        );
        assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
        assert!(common.validation_context_type.is_none());
        assert_eq!(ctx.require_client_certificate, None);
    }

    #[test]
    fn permissive_is_a_tls_chain_and_a_plaintext_chain_told_apart_by_the_inspector() {
        let tls = ServerTls::from(&server(ListenerTlsMode::Permissive, file_cert()));
        let (chains, inspector) = chains(chain(None), Some(&tls), PortProtocol::Tcp);
        assert!(inspector);
        assert_eq!(chains.len(), 2);
        assert_eq!(chains[0].name, "ingress_http_8080_tls");
        assert_eq!(
            chains[0]
                .filter_chain_match
                .as_ref()
                .unwrap()
                .transport_protocol,
            "tls"
        );
        let ctx = downstream_context(chains[0].transport_socket.as_ref().unwrap());
        assert!(ctx.common_tls_context.unwrap().alpn_protocols.is_empty());
        assert_eq!(chains[1].name, "ingress_http_8080");
        assert_eq!(
            chains[1]
                .filter_chain_match
                .as_ref()
                .unwrap()
                .transport_protocol,
            "raw_buffer"
        );
        assert!(chains[1].transport_socket.is_none());
    }

    #[test]
    fn disabled_and_no_tls_are_the_plaintext_chain_unchanged() {
        let tls = ServerTls::from(&server(ListenerTlsMode::Disabled, file_cert()));
        for tls in [Some(&tls), None] {
            let (chains, inspector) = chains(chain(Some(8080)), tls, PortProtocol::Http);
            assert!(!inspector);
            assert_eq!(chains, vec![chain(Some(8080))]);
        }
    }

    #[test]
    fn listener_validation_requires_a_client_certificate_from_the_trusted_ca_with_a_listed_san() {
        let mut spec = server(
            ListenerTlsMode::Strict,
            ListenerTlsCertificate::Sds(ListenerTlsSdsCertificate {
                secret_name: "spiffe://apps/red".into(),
            }),
        );
        spec.validation = Some(ListenerTlsValidationContext {
            subject_alternative_names: Some(SubjectAlternativeNames {
                r#match: weft_model::shapes::SubjectAlternativeNameMatchers {
                    exact: vec!["web.apps.local".into(), "spiffe://apps/web".into()],
                },
            }),
            trust: ListenerTlsValidationContextTrust::File(TlsValidationContextFileTrust {
                certificate_chain: "/certs/ca.pem".into(),
            }),
        });
        let ctx = downstream_context(&downstream(&ServerTls::from(&spec), PortProtocol::Grpc));
        assert_eq!(
            ctx.require_client_certificate,
            Some(BoolValue { value: true })
        );
        let common = ctx.common_tls_context.unwrap();
        assert!(common.tls_certificates.is_empty());
        let sds = &common.tls_certificate_sds_secret_configs[0];
        assert_eq!(
            sds.name, "spiffe://apps/red",
            "an sds secret name is kept verbatim"
        );
        let Some(XdsConfigSourceSpecifier::ApiConfigSource(source)) =
            &sds.sds_config.as_ref().unwrap().config_source_specifier
        else {
            panic!("SDS from an API config source")
        };
        assert_eq!(source.api_type, XdsApiType::Grpc as i32);
        assert_eq!(source.transport_api_version, XdsApiVersion::V3 as i32);
        assert_eq!(
            source.grpc_services[0].target_specifier,
            Some(XdsGrpcTarget::EnvoyGrpc(XdsEnvoyGrpc {
                cluster_name: SDS_CLUSTER.into(),
                ..Default::default()
            }))
        );
        let Some(XdsValidationContextType::ValidationContext(v)) = common.validation_context_type
        else {
            panic!("a file trust is a static validation context")
        };
        assert_eq!(v.trusted_ca, file("/certs/ca.pem"));
        let sans: Vec<(i32, String)> = v
            .match_typed_subject_alt_names
            .iter()
            .map(|m| {
                let Some(XdsMatchPattern::Exact(e)) =
                    m.matcher.as_ref().unwrap().match_pattern.clone()
                else {
                    panic!()
                };
                (m.san_type, e)
            })
            .collect();
        assert_eq!(
            sans,
            [
                (XdsSanType::Dns as i32, "web.apps.local".to_string()),
                (XdsSanType::Uri as i32, "spiffe://apps/web".to_string())
            ]
        );
    }

    #[test]
    fn an_acm_certificate_is_weft_identity_and_acm_private_cas_are_weft_trust_bundle() {
        let spec = server(
            ListenerTlsMode::Strict,
            ListenerTlsCertificate::Acm(ListenerTlsAcmCertificate {
                certificate_arn: "arn:aws:acm:us-west-2:111122223333:certificate/abc".into(),
            }),
        );
        let ctx = downstream_context(&downstream(&ServerTls::from(&spec), PortProtocol::Http));
        let common = ctx.common_tls_context.unwrap();
        assert_eq!(
            common.tls_certificate_sds_secret_configs[0].name,
            IDENTITY_SECRET
        );

        let policy = ClientPolicyTls {
            certificate: None,
            enforce: None,
            ports: None,
            validation: TlsValidationContext {
                subject_alternative_names: None,
                trust: TlsValidationContextTrust::Acm(TlsValidationContextAcmTrust {
                    certificate_authority_arns: vec![
                        "arn:aws:acm-pca:us-west-2:111122223333:certificate-authority/x".into(),
                    ],
                }),
            },
        };
        let socket = upstream(&Origination {
            client: Some(&policy),
            server: None,
            port: 8080,
            protocol: PortProtocol::Http2,
            sni: "red.apps.local",
            discovery_names: vec!["red.apps.local".into()],
            identity: true,
            file_secrets: false,
            mesh_peer: None,
        })
        .unwrap();
        let ctx = upstream_context(&socket);
        assert_eq!(ctx.sni, "red.apps.local");
        let common = ctx.common_tls_context.unwrap();
        assert_eq!(common.alpn_protocols, ["h2"]);
        let Some(XdsValidationContextType::CombinedValidationContext(combined)) =
            common.validation_context_type
        else {
            panic!("SDS trust with SANs is a combined validation context")
        };
        assert_eq!(
            combined.validation_context_sds_secret_config.unwrap().name,
            TRUST_BUNDLE_SECRET
        );
        let sans = combined
            .default_validation_context
            .unwrap()
            .match_typed_subject_alt_names;
        assert_eq!(
            sans,
            vec![san_matcher("red.apps.local")],
            "the discovery name by default"
        );
    }

    fn file_policy(enforce: Option<bool>, ports: Option<Vec<i32>>) -> ClientPolicyTls {
        ClientPolicyTls {
            certificate: Some(ClientTlsCertificate::File(ListenerTlsFileCertificate {
                certificate_chain: "/certs/web.pem".into(),
                private_key: "/certs/web.key".into(),
            })),
            enforce,
            ports,
            validation: TlsValidationContext {
                subject_alternative_names: Some(SubjectAlternativeNames {
                    r#match: weft_model::shapes::SubjectAlternativeNameMatchers {
                        exact: vec!["red.apps.local".into(), "10.0.0.7".into()],
                    },
                }),
                trust: TlsValidationContextTrust::File(TlsValidationContextFileTrust {
                    certificate_chain: "/certs/ca.pem".into(),
                }),
            },
        }
    }

    fn origination<'a>(
        client: Option<&'a ClientPolicyTls>,
        server: Option<&'a ListenerTls>,
        port: u16,
    ) -> Origination<'a> {
        Origination {
            client,
            server,
            port,
            protocol: PortProtocol::Http,
            sni: "colors.apps.local",
            discovery_names: vec!["red.local".into()],
            identity: true,
            file_secrets: false,
            mesh_peer: None,
        }
    }

    #[test]
    fn a_client_policy_in_force_validates_the_server_and_presents_its_certificate() {
        let policy = file_policy(None, Some(vec![8080]));
        let ctx = upstream_context(&upstream(&origination(Some(&policy), None, 8080)).unwrap());
        assert_eq!(ctx.sni, "colors.apps.local");
        let common = ctx.common_tls_context.unwrap();
        assert_eq!(common.alpn_protocols, ["http/1.1"]);
        assert_eq!(
            common.tls_certificates[0].certificate_chain,
            file("/certs/web.pem")
        );
        let Some(XdsValidationContextType::ValidationContext(v)) = common.validation_context_type
        else {
            panic!()
        };
        assert_eq!(v.trusted_ca, file("/certs/ca.pem"));
        assert_eq!(
            v.match_typed_subject_alt_names,
            vec![san_matcher("red.apps.local"), san_matcher("10.0.0.7")]
        );
        assert_eq!(
            v.match_typed_subject_alt_names[1].san_type,
            XdsSanType::IpAddress as i32
        );
    }

    #[test]
    fn a_policy_not_enforced_or_for_other_ports_leaves_the_choice_to_the_server() {
        let strict_file = server(ListenerTlsMode::Strict, file_cert());
        let disabled = server(ListenerTlsMode::Disabled, file_cert());
        let not_enforced = file_policy(Some(false), None);
        let other_port = file_policy(Some(true), Some(vec![9090]));
        for policy in [&not_enforced, &other_port] {
            assert_eq!(upstream(&origination(Some(policy), None, 8080)), None);
            assert_eq!(
                upstream(&origination(Some(policy), Some(&disabled), 8080)),
                None
            );
            // A STRICT server with a file certificate: TLS without validation, no client
            // certificate (tls.md, "Without client policies").
            let ctx = upstream_context(
                &upstream(&origination(Some(policy), Some(&strict_file), 8080)).unwrap(),
            );
            let common = ctx.common_tls_context.unwrap();
            assert!(common.validation_context_type.is_none());
            assert!(common.tls_certificates.is_empty());
        }
        // No policy, a PERMISSIVE server with an ACM certificate: validated against Weft's CA.
        let acm = server(
            ListenerTlsMode::Permissive,
            ListenerTlsCertificate::Acm(ListenerTlsAcmCertificate {
                certificate_arn: "arn:aws:acm:eu-west-1:1:certificate/x".into(),
            }),
        );
        let ctx = upstream_context(&upstream(&origination(None, Some(&acm), 8080)).unwrap());
        let Some(XdsValidationContextType::CombinedValidationContext(c)) =
            ctx.common_tls_context.unwrap().validation_context_type
        else {
            panic!()
        };
        assert_eq!(
            c.validation_context_sds_secret_config.unwrap().name,
            TRUST_BUNDLE_SECRET
        );
        assert_eq!(upstream(&origination(None, None, 8080)), None);
    }

    fn mesh(mtls: MeshMtls) -> MeshSnapshot {
        let mut snapshot = MeshSnapshot::new(
            serde_json::from_value(serde_json::json!({
                "meshName": "apps", "spec": {}, "status": {"status": "ACTIVE"},
                "metadata": {"arn": "", "createdAt": 0.0, "lastUpdatedAt": 0.0, "meshOwner": "",
                    "resourceOwner": "", "uid": "", "version": 1}
            }))
            .unwrap(),
        );
        snapshot.mtls = mtls;
        snapshot.trust_domain = "example.org".into();
        snapshot
    }

    fn with_identity(identity: bool) -> ProxyOptions {
        ProxyOptions {
            identity,
            ..ProxyOptions::explicit()
        }
    }

    #[test]
    fn a_strict_mesh_serves_node_listeners_mutual_tls_with_weft_identities_of_the_mesh() {
        let tls = mesh_server(&mesh(MeshMtls::Strict), &with_identity(true)).unwrap();
        let (chains, inspector) = chains(chain(Some(8080)), Some(&tls), PortProtocol::Http);
        assert!(!inspector);
        assert_eq!(chains.len(), 1, "no plaintext chain");
        let ctx = downstream_context(chains[0].transport_socket.as_ref().unwrap());
        assert_eq!(
            ctx.require_client_certificate,
            Some(BoolValue { value: true })
        );
        let common = ctx.common_tls_context.unwrap();
        assert_eq!(
            common.tls_certificate_sds_secret_configs[0].name,
            IDENTITY_SECRET
        );
        let Some(XdsValidationContextType::CombinedValidationContext(combined)) =
            common.validation_context_type
        else {
            panic!("the trust bundle over SDS with the mesh's SPIFFE ids")
        };
        assert_eq!(
            combined.validation_context_sds_secret_config.unwrap().name,
            TRUST_BUNDLE_SECRET
        );
        let peers = &combined
            .default_validation_context
            .unwrap()
            .match_typed_subject_alt_names;
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].san_type, XdsSanType::Uri as i32);
        assert_eq!(
            peers[0].matcher.as_ref().unwrap().match_pattern,
            Some(XdsMatchPattern::Prefix(
                "spiffe://example.org/mesh/apps/".into()
            ))
        );
    }

    #[test]
    fn a_permissive_mesh_adds_a_plaintext_chain_told_apart_by_the_inspector() {
        let tls = mesh_server(&mesh(MeshMtls::Permissive), &with_identity(true)).unwrap();
        let (chains, inspector) = chains(chain(None), Some(&tls), PortProtocol::Http);
        assert!(inspector);
        assert_eq!(chains.len(), 2);
        assert!(chains[0].transport_socket.is_some());
        assert!(chains[1].transport_socket.is_none());
    }

    #[test]
    fn no_mesh_tls_without_the_tag_or_without_an_identity() {
        assert_eq!(
            mesh_server(&mesh(MeshMtls::Disabled), &with_identity(true)),
            None
        );
        assert_eq!(
            mesh_server(&mesh(MeshMtls::Strict), &with_identity(false)),
            None
        );
    }

    fn mesh_origination(identity: bool, server: Option<&ListenerTls>) -> Origination<'_> {
        Origination {
            client: None,
            server,
            port: 8080,
            protocol: PortProtocol::Http,
            sni: "red.apps.local",
            discovery_names: vec!["red.local".into()],
            identity,
            file_secrets: false,
            mesh_peer: Some("spiffe://example.org/mesh/apps/virtualNode/red".into()),
        }
    }

    #[test]
    fn in_an_mtls_mesh_a_client_presents_its_identity_and_checks_the_target_spiffe_id() {
        let ctx = upstream_context(&upstream(&mesh_origination(true, None)).unwrap());
        assert_eq!(ctx.sni, "red.apps.local");
        let common = ctx.common_tls_context.unwrap();
        assert_eq!(
            common.tls_certificate_sds_secret_configs[0].name,
            IDENTITY_SECRET
        );
        let Some(XdsValidationContextType::CombinedValidationContext(combined)) =
            common.validation_context_type
        else {
            panic!()
        };
        assert_eq!(
            combined.validation_context_sds_secret_config.unwrap().name,
            TRUST_BUNDLE_SECRET
        );
        assert_eq!(
            combined
                .default_validation_context
                .unwrap()
                .match_typed_subject_alt_names,
            vec![san_matcher(
                "spiffe://example.org/mesh/apps/virtualNode/red"
            )],
            "exactly the target's SPIFFE id, not its discovery name"
        );
    }

    #[test]
    fn explicit_tls_wins_over_the_mesh_default() {
        // The target's own DISABLED listener: plaintext.
        let disabled = server(ListenerTlsMode::Disabled, file_cert());
        assert_eq!(upstream(&mesh_origination(true, Some(&disabled))), None);
        // The target's own STRICT file certificate: TLS as App Mesh does it, no identity.
        let strict = server(ListenerTlsMode::Strict, file_cert());
        let ctx = upstream_context(&upstream(&mesh_origination(true, Some(&strict))).unwrap());
        let common = ctx.common_tls_context.unwrap();
        assert!(common.tls_certificate_sds_secret_configs.is_empty());
        assert!(common.validation_context_type.is_none());
        // A client policy in force: its own certificate and trust.
        let policy = file_policy(None, None);
        let mut origination = mesh_origination(true, None);
        origination.client = Some(&policy);
        let common = upstream_context(&upstream(&origination).unwrap())
            .common_tls_context
            .unwrap();
        assert_eq!(
            common.tls_certificates[0].certificate_chain,
            file("/certs/web.pem")
        );
    }

    #[test]
    fn a_client_without_an_identity_is_never_given_an_sds_secret() {
        // The mesh default: nothing to present, plaintext.
        assert_eq!(upstream(&mesh_origination(false, None)), None);
        // An ACM target: TLS, unvalidated (the trust bundle comes over SDS).
        let acm = server(
            ListenerTlsMode::Strict,
            ListenerTlsCertificate::Acm(ListenerTlsAcmCertificate {
                certificate_arn: "arn:aws:acm:eu-west-1:1:certificate/x".into(),
            }),
        );
        let ctx = upstream_context(&upstream(&mesh_origination(false, Some(&acm))).unwrap());
        let common = ctx.common_tls_context.unwrap();
        assert!(common.validation_context_type.is_none());
        assert!(common.tls_certificate_sds_secret_configs.is_empty());
    }

    #[test]
    fn an_own_sds_or_acm_setting_needs_an_identity_unless_it_is_off() {
        let acm = ServerTls::from(&server(
            ListenerTlsMode::Permissive,
            ListenerTlsCertificate::Acm(ListenerTlsAcmCertificate {
                certificate_arn: "arn:aws:acm:eu-west-1:1:certificate/x".into(),
            }),
        ));
        let why = acm.check_without_identity("listener 8080 tls").unwrap_err();
        assert!(
            why.contains("listener 8080 tls names an sds or acm certificate"),
            "{why}"
        );
        assert!(why.contains("join token"), "{why}");
        let off = ServerTls {
            mode: Mode::Disabled,
            ..acm
        };
        assert_eq!(off.check_without_identity("l"), Ok(()));
        let file_only = ServerTls::from(&server(ListenerTlsMode::Strict, file_cert()));
        assert_eq!(file_only.check_without_identity("l"), Ok(()));
        let mut policy = ClientTls::from(&file_policy(None, None));
        assert_eq!(policy.check_without_identity("c"), Ok(()));
        policy.validation.trust = Trust::Acm;
        assert!(policy.check_without_identity("c").is_err());
        policy.enforce = false;
        assert_eq!(policy.check_without_identity("c"), Ok(()));
    }

    #[test]
    fn a_proxy_without_an_identity_in_an_mtls_mesh_is_told_why_it_has_no_mtls() {
        let node = ProxyIdentity::virtual_node("apps", "red");
        let notice =
            identity_notice(&mesh(MeshMtls::Strict), &node, &with_identity(false)).unwrap();
        assert!(notice.contains("weft:mtls=STRICT"), "{notice}");
        assert!(notice.contains("no Weft identity"), "{notice}");
        assert_eq!(
            identity_notice(&mesh(MeshMtls::Strict), &node, &with_identity(true)),
            None
        );
        assert_eq!(
            identity_notice(&mesh(MeshMtls::Disabled), &node, &with_identity(false)),
            None
        );
    }

    #[test]
    fn empty_names_and_nul_characters_are_refused_before_envoy_sees_them() {
        let mut tls = ServerTls::from(&server(ListenerTlsMode::Strict, file_cert()));
        assert_eq!(tls.check("l"), Ok(()));
        tls.certificate = Certificate::Sds(String::new());
        assert!(tls.check("l").unwrap_err().contains("secretName is empty"));
        tls.certificate = Certificate::File {
            chain: "/a\0b".into(),
            key: "/k".into(),
        };
        assert!(tls.check("l").unwrap_err().contains("NUL"));
        let mut client = ClientTls::from(&file_policy(None, None));
        assert_eq!(client.check("c"), Ok(()));
        client.validation.trust = Trust::Sds(String::new());
        assert!(client.check("c").is_err());
    }
}
