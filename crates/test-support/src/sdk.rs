//! The spec builders of [`crate::spec`] as the AWS SDK for Rust's types (`.sdk()`), and
//! [`MeshApi`]: one mesh's resources created through an SDK client.
//!
//! The SDK's builders refuse specs missing a required member; so do these renderings (a
//! panic names the member), as the SDK would before sending anything.

use aws_sdk_appmesh::types as t;
use aws_sdk_appmesh::Client;

use crate::spec::{
    AccessLog, AppMeshDuration, ConnectionPool, Discovery, GatewayRouteKind, GatewayRouteSpec,
    GatewaySpec, GrpcMatch, HeaderMatch, HealthCheck, HttpMatch, Listener, LogFormat, MeshSpec,
    NodeSpec, PathMatch, QueryMatch, Retry, RouteKind, RouteSpec, RouterSpec, ServiceSpec,
    ValueMatch,
};

/// Unwraps an SDK builder's result, naming what could not be built.
fn built<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

impl AppMeshDuration {
    /// As the SDK's `Duration`.
    pub fn sdk(&self) -> t::Duration {
        t::Duration::builder()
            .unit(t::DurationUnit::from(self.unit))
            .value(self.value)
            .build()
    }
}

fn range(start: i64, end: i64) -> t::MatchRange {
    built(
        "match range",
        t::MatchRange::builder().start(start).end(end).build(),
    )
}

impl ValueMatch {
    /// As the SDK's `HeaderMatchMethod` (headers of routes and gateway routes).
    pub fn header_sdk(&self) -> t::HeaderMatchMethod {
        match self.clone() {
            Self::Exact(v) => t::HeaderMatchMethod::Exact(v),
            Self::Prefix(v) => t::HeaderMatchMethod::Prefix(v),
            Self::Suffix(v) => t::HeaderMatchMethod::Suffix(v),
            Self::Regex(v) => t::HeaderMatchMethod::Regex(v),
            Self::Range { start, end } => t::HeaderMatchMethod::Range(range(start, end)),
        }
    }

    /// As the SDK's `GrpcRouteMetadataMatchMethod` (metadata of gRPC routes).
    pub fn route_metadata_sdk(&self) -> t::GrpcRouteMetadataMatchMethod {
        match self.clone() {
            Self::Exact(v) => t::GrpcRouteMetadataMatchMethod::Exact(v),
            Self::Prefix(v) => t::GrpcRouteMetadataMatchMethod::Prefix(v),
            Self::Suffix(v) => t::GrpcRouteMetadataMatchMethod::Suffix(v),
            Self::Regex(v) => t::GrpcRouteMetadataMatchMethod::Regex(v),
            Self::Range { start, end } => t::GrpcRouteMetadataMatchMethod::Range(range(start, end)),
        }
    }

    /// As the SDK's `GrpcMetadataMatchMethod` (metadata of gRPC gateway routes).
    pub fn gateway_metadata_sdk(&self) -> t::GrpcMetadataMatchMethod {
        match self.clone() {
            Self::Exact(v) => t::GrpcMetadataMatchMethod::Exact(v),
            Self::Prefix(v) => t::GrpcMetadataMatchMethod::Prefix(v),
            Self::Suffix(v) => t::GrpcMetadataMatchMethod::Suffix(v),
            Self::Regex(v) => t::GrpcMetadataMatchMethod::Regex(v),
            Self::Range { start, end } => t::GrpcMetadataMatchMethod::Range(range(start, end)),
        }
    }

    /// As the SDK's `GatewayRouteHostnameMatch`.
    pub fn hostname_sdk(&self) -> t::GatewayRouteHostnameMatch {
        match self {
            Self::Exact(h) => t::GatewayRouteHostnameMatch::builder().exact(h).build(),
            Self::Suffix(s) => t::GatewayRouteHostnameMatch::builder().suffix(s).build(),
            other => panic!("a hostname matches exactly or by suffix, not {other:?}"),
        }
    }
}

impl PathMatch {
    /// As the SDK's `HttpPathMatch`.
    pub fn sdk(&self) -> t::HttpPathMatch {
        match self {
            Self::Exact(p) => t::HttpPathMatch::builder().exact(p).build(),
            Self::Regex(r) => t::HttpPathMatch::builder().regex(r).build(),
        }
    }
}

impl QueryMatch {
    /// As the SDK's `HttpQueryParameter`.
    pub fn sdk(&self) -> t::HttpQueryParameter {
        let mut q = t::HttpQueryParameter::builder().name(&self.name);
        if let Some(exact) = &self.exact {
            q = q.r#match(t::QueryParameterMatch::builder().exact(exact).build());
        }
        built("query parameter", q.build())
    }
}

impl HealthCheck {
    /// As the SDK's `HealthCheckPolicy` (virtual node listeners).
    pub fn sdk(&self) -> t::HealthCheckPolicy {
        let b = t::HealthCheckPolicy::builder()
            .protocol(t::PortProtocol::from(self.protocol.as_str()))
            .set_path(self.path.clone())
            .set_port(self.port)
            .interval_millis(self.interval_millis)
            .timeout_millis(self.timeout_millis)
            .healthy_threshold(self.healthy_threshold)
            .unhealthy_threshold(self.unhealthy_threshold);
        built("health check", b.build())
    }

    /// As the SDK's `VirtualGatewayHealthCheckPolicy` (gateway listeners).
    pub fn gateway_sdk(&self) -> t::VirtualGatewayHealthCheckPolicy {
        let b = t::VirtualGatewayHealthCheckPolicy::builder()
            .protocol(t::VirtualGatewayPortProtocol::from(self.protocol.as_str()))
            .set_path(self.path.clone())
            .set_port(self.port)
            .interval_millis(self.interval_millis)
            .timeout_millis(self.timeout_millis)
            .healthy_threshold(self.healthy_threshold)
            .unhealthy_threshold(self.unhealthy_threshold);
        built("gateway health check", b.build())
    }
}

impl ConnectionPool {
    /// As the SDK's `VirtualNodeConnectionPool`.
    pub fn sdk(&self) -> t::VirtualNodeConnectionPool {
        match *self {
            Self::Http {
                max_connections,
                max_pending_requests,
            } => t::VirtualNodeConnectionPool::Http(built(
                "http connection pool",
                t::VirtualNodeHttpConnectionPool::builder()
                    .max_connections(max_connections)
                    .set_max_pending_requests(max_pending_requests)
                    .build(),
            )),
            Self::Http2 { max_requests } => t::VirtualNodeConnectionPool::Http2(built(
                "http2 connection pool",
                t::VirtualNodeHttp2ConnectionPool::builder()
                    .max_requests(max_requests)
                    .build(),
            )),
            Self::Grpc { max_requests } => t::VirtualNodeConnectionPool::Grpc(built(
                "grpc connection pool",
                t::VirtualNodeGrpcConnectionPool::builder()
                    .max_requests(max_requests)
                    .build(),
            )),
            Self::Tcp { max_connections } => t::VirtualNodeConnectionPool::Tcp(built(
                "tcp connection pool",
                t::VirtualNodeTcpConnectionPool::builder()
                    .max_connections(max_connections)
                    .build(),
            )),
        }
    }

    /// As the SDK's `VirtualGatewayConnectionPool` (no TCP pool for gateways).
    pub fn gateway_sdk(&self) -> t::VirtualGatewayConnectionPool {
        match *self {
            Self::Http {
                max_connections,
                max_pending_requests,
            } => t::VirtualGatewayConnectionPool::Http(built(
                "gateway http connection pool",
                t::VirtualGatewayHttpConnectionPool::builder()
                    .max_connections(max_connections)
                    .set_max_pending_requests(max_pending_requests)
                    .build(),
            )),
            Self::Http2 { max_requests } => t::VirtualGatewayConnectionPool::Http2(built(
                "gateway http2 connection pool",
                t::VirtualGatewayHttp2ConnectionPool::builder()
                    .max_requests(max_requests)
                    .build(),
            )),
            Self::Grpc { max_requests } => t::VirtualGatewayConnectionPool::Grpc(built(
                "gateway grpc connection pool",
                t::VirtualGatewayGrpcConnectionPool::builder()
                    .max_requests(max_requests)
                    .build(),
            )),
            Self::Tcp { .. } => panic!("a virtual gateway has no TCP connection pool"),
        }
    }
}

impl Listener {
    /// As the SDK's `Listener` (virtual nodes).
    pub fn sdk(&self) -> t::Listener {
        let port_mapping = built(
            "port mapping",
            t::PortMapping::builder()
                .port(self.port)
                .protocol(t::PortProtocol::from(self.protocol.as_str()))
                .build(),
        );
        t::Listener::builder()
            .port_mapping(port_mapping)
            .set_health_check(self.health_check.as_ref().map(HealthCheck::sdk))
            .set_connection_pool(self.connection_pool.as_ref().map(ConnectionPool::sdk))
            .build()
    }

    /// As the SDK's `VirtualGatewayListener`.
    pub fn gateway_sdk(&self) -> t::VirtualGatewayListener {
        let port_mapping = built(
            "gateway port mapping",
            t::VirtualGatewayPortMapping::builder()
                .port(self.port)
                .protocol(t::VirtualGatewayPortProtocol::from(self.protocol.as_str()))
                .build(),
        );
        t::VirtualGatewayListener::builder()
            .port_mapping(port_mapping)
            .set_health_check(self.health_check.as_ref().map(HealthCheck::gateway_sdk))
            .set_connection_pool(
                self.connection_pool
                    .as_ref()
                    .map(ConnectionPool::gateway_sdk),
            )
            .build()
    }
}

impl AccessLog {
    fn format_sdk(&self) -> Option<t::LoggingFormat> {
        self.format.as_ref().map(|f| match f {
            LogFormat::Text(text) => t::LoggingFormat::Text(text.clone()),
            LogFormat::Json(fields) => t::LoggingFormat::Json(
                fields
                    .iter()
                    .map(|(k, v)| {
                        built(
                            "json log field",
                            t::JsonFormatRef::builder().key(k).value(v).build(),
                        )
                    })
                    .collect(),
            ),
        })
    }

    /// As the SDK's `Logging` (virtual nodes).
    pub fn sdk(&self) -> t::Logging {
        let file = built(
            "file access log",
            t::FileAccessLog::builder()
                .path(&self.path)
                .set_format(self.format_sdk())
                .build(),
        );
        t::Logging::builder()
            .access_log(t::AccessLog::File(file))
            .build()
    }

    /// As the SDK's `VirtualGatewayLogging`.
    pub fn gateway_sdk(&self) -> t::VirtualGatewayLogging {
        let file = built(
            "gateway file access log",
            t::VirtualGatewayFileAccessLog::builder()
                .path(&self.path)
                .set_format(self.format_sdk())
                .build(),
        );
        t::VirtualGatewayLogging::builder()
            .access_log(t::VirtualGatewayAccessLog::File(file))
            .build()
    }
}

impl MeshSpec {
    /// As the SDK's `MeshSpec`.
    pub fn sdk(&self) -> t::MeshSpec {
        t::MeshSpec::builder()
            .set_egress_filter(self.egress_filter.as_ref().map(|kind| {
                built(
                    "egress filter",
                    t::EgressFilter::builder()
                        .r#type(t::EgressFilterType::from(kind.as_str()))
                        .build(),
                )
            }))
            .set_service_discovery(self.ip_preference.as_ref().map(|p| {
                t::MeshServiceDiscovery::builder()
                    .ip_preference(t::IpPreference::from(p.as_str()))
                    .build()
            }))
            .build()
    }
}

impl Discovery {
    /// As the SDK's `ServiceDiscovery`.
    pub fn sdk(&self) -> t::ServiceDiscovery {
        match self {
            Self::Dns {
                hostname,
                response_type,
                ip_preference,
            } => t::ServiceDiscovery::Dns(built(
                "dns discovery",
                t::DnsServiceDiscovery::builder()
                    .hostname(hostname)
                    .set_response_type(response_type.as_deref().map(t::DnsResponseType::from))
                    .set_ip_preference(ip_preference.as_deref().map(t::IpPreference::from))
                    .build(),
            )),
            Self::CloudMap {
                namespace,
                service,
                attributes,
                ip_preference,
            } => {
                let mut b = t::AwsCloudMapServiceDiscovery::builder()
                    .namespace_name(namespace)
                    .service_name(service)
                    .set_ip_preference(ip_preference.as_deref().map(t::IpPreference::from));
                for (k, v) in attributes {
                    b = b.attributes(built(
                        "cloud map attribute",
                        t::AwsCloudMapInstanceAttribute::builder()
                            .key(k)
                            .value(v)
                            .build(),
                    ));
                }
                t::ServiceDiscovery::AwsCloudMap(built("cloud map discovery", b.build()))
            }
        }
    }
}

impl NodeSpec {
    /// As the SDK's `VirtualNodeSpec`.
    pub fn sdk(&self) -> t::VirtualNodeSpec {
        let mut b = t::VirtualNodeSpec::builder()
            .set_service_discovery(self.discovery.as_ref().map(Discovery::sdk))
            .set_logging(self.access_log.as_ref().map(AccessLog::sdk));
        for listener in &self.listeners {
            b = b.listeners(listener.sdk());
        }
        for backend in &self.backends {
            b = b.backends(t::Backend::VirtualService(built(
                "backend",
                t::VirtualServiceBackend::builder()
                    .virtual_service_name(backend)
                    .build(),
            )));
        }
        b.build()
    }
}

impl RouterSpec {
    /// As the SDK's `VirtualRouterSpec`.
    pub fn sdk(&self) -> t::VirtualRouterSpec {
        let mut b = t::VirtualRouterSpec::builder();
        for (port, protocol) in &self.listeners {
            b = b.listeners(
                t::VirtualRouterListener::builder()
                    .port_mapping(built(
                        "router port mapping",
                        t::PortMapping::builder()
                            .port(*port)
                            .protocol(t::PortProtocol::from(protocol.as_str()))
                            .build(),
                    ))
                    .build(),
            );
        }
        b.build()
    }
}

impl ServiceSpec {
    /// As the SDK's `VirtualServiceSpec`.
    pub fn sdk(&self) -> t::VirtualServiceSpec {
        let provider = match self {
            Self::Unprovided => None,
            Self::ByNode(node) => Some(t::VirtualServiceProvider::VirtualNode(built(
                "node provider",
                t::VirtualNodeServiceProvider::builder()
                    .virtual_node_name(node)
                    .build(),
            ))),
            Self::ByRouter(router) => Some(t::VirtualServiceProvider::VirtualRouter(built(
                "router provider",
                t::VirtualRouterServiceProvider::builder()
                    .virtual_router_name(router)
                    .build(),
            ))),
        };
        t::VirtualServiceSpec::builder()
            .set_provider(provider)
            .build()
    }
}

impl HttpMatch {
    /// As the SDK's `HttpRouteMatch` (routes).
    pub fn sdk(&self) -> t::HttpRouteMatch {
        assert!(self.hostname.is_none(), "a route has no hostname match");
        let mut b = t::HttpRouteMatch::builder()
            .set_prefix(self.prefix.clone())
            .set_path(self.path.as_ref().map(PathMatch::sdk))
            .set_method(self.method.as_deref().map(t::HttpMethod::from))
            .set_scheme(self.scheme.as_deref().map(t::HttpScheme::from))
            .set_port(self.port);
        for h in &self.headers {
            b = b.headers(header_sdk(h));
        }
        for q in &self.query {
            b = b.query_parameters(q.sdk());
        }
        b.build()
    }

    /// As the SDK's `HttpGatewayRouteMatch` (gateway routes).
    pub fn gateway_sdk(&self) -> t::HttpGatewayRouteMatch {
        assert!(self.scheme.is_none(), "a gateway route has no scheme match");
        let mut b = t::HttpGatewayRouteMatch::builder()
            .set_prefix(self.prefix.clone())
            .set_path(self.path.as_ref().map(PathMatch::sdk))
            .set_hostname(self.hostname.as_ref().map(ValueMatch::hostname_sdk))
            .set_method(self.method.as_deref().map(t::HttpMethod::from))
            .set_port(self.port);
        for h in &self.headers {
            let mut header = t::HttpGatewayRouteHeader::builder()
                .name(&h.name)
                .set_match(h.value.as_ref().map(ValueMatch::header_sdk));
            if h.invert {
                header = header.invert(true);
            }
            b = b.headers(built("gateway route header", header.build()));
        }
        for q in &self.query {
            b = b.query_parameters(q.sdk());
        }
        b.build()
    }
}

fn header_sdk(h: &HeaderMatch) -> t::HttpRouteHeader {
    let mut b = t::HttpRouteHeader::builder()
        .name(&h.name)
        .set_match(h.value.as_ref().map(ValueMatch::header_sdk));
    if h.invert {
        b = b.invert(true);
    }
    built("route header", b.build())
}

impl GrpcMatch {
    /// As the SDK's `GrpcRouteMatch` (routes).
    pub fn sdk(&self) -> t::GrpcRouteMatch {
        assert!(self.hostname.is_none(), "a route has no hostname match");
        let mut b = t::GrpcRouteMatch::builder()
            .set_service_name(self.service_name.clone())
            .set_method_name(self.method_name.clone())
            .set_port(self.port);
        for m in &self.metadata {
            let mut entry = t::GrpcRouteMetadata::builder()
                .name(&m.name)
                .set_match(m.value.as_ref().map(ValueMatch::route_metadata_sdk));
            if m.invert {
                entry = entry.invert(true);
            }
            b = b.metadata(built("route metadata", entry.build()));
        }
        b.build()
    }

    /// As the SDK's `GrpcGatewayRouteMatch` (gateway routes).
    pub fn gateway_sdk(&self) -> t::GrpcGatewayRouteMatch {
        assert!(
            self.method_name.is_none(),
            "a gateway route has no method match"
        );
        let mut b = t::GrpcGatewayRouteMatch::builder()
            .set_service_name(self.service_name.clone())
            .set_hostname(self.hostname.as_ref().map(ValueMatch::hostname_sdk))
            .set_port(self.port);
        for m in &self.metadata {
            let mut entry = t::GrpcGatewayRouteMetadata::builder()
                .name(&m.name)
                .set_match(m.value.as_ref().map(ValueMatch::gateway_metadata_sdk));
            if m.invert {
                entry = entry.invert(true);
            }
            b = b.metadata(built("gateway route metadata", entry.build()));
        }
        b.build()
    }
}

impl Retry {
    /// As the SDK's `HttpRetryPolicy` (HTTP and HTTP/2 routes).
    pub fn http_sdk(&self) -> t::HttpRetryPolicy {
        assert!(
            self.grpc_events.is_empty(),
            "gRPC retry events are for gRPC routes"
        );
        let mut b = t::HttpRetryPolicy::builder()
            .max_retries(self.max_retries)
            .per_retry_timeout(self.per_retry_timeout.sdk());
        for e in &self.http_events {
            b = b.http_retry_events(e);
        }
        for e in &self.tcp_events {
            b = b.tcp_retry_events(t::TcpRetryPolicyEvent::from(e.as_str()));
        }
        built("http retry policy", b.build())
    }

    /// As the SDK's `GrpcRetryPolicy`.
    pub fn grpc_sdk(&self) -> t::GrpcRetryPolicy {
        let mut b = t::GrpcRetryPolicy::builder()
            .max_retries(self.max_retries)
            .per_retry_timeout(self.per_retry_timeout.sdk());
        for e in &self.http_events {
            b = b.http_retry_events(e);
        }
        for e in &self.tcp_events {
            b = b.tcp_retry_events(t::TcpRetryPolicyEvent::from(e.as_str()));
        }
        for e in &self.grpc_events {
            b = b.grpc_retry_events(t::GrpcRetryPolicyEvent::from(e.as_str()));
        }
        built("grpc retry policy", b.build())
    }
}

impl RouteSpec {
    fn weighted_targets(&self) -> Vec<t::WeightedTarget> {
        self.targets
            .iter()
            .map(|target| {
                built(
                    "weighted target",
                    t::WeightedTarget::builder()
                        .virtual_node(&target.node)
                        .weight(target.weight)
                        .set_port(target.port)
                        .build(),
                )
            })
            .collect()
    }

    /// The route as the SDK's `HttpRoute` (HTTP and HTTP/2 routes; panics for others).
    pub fn http_route_sdk(&self) -> t::HttpRoute {
        let (RouteKind::Http(m) | RouteKind::Http2(m)) = &self.kind else {
            panic!("not an HTTP route: {:?}", self.kind)
        };
        let action = built(
            "http route action",
            t::HttpRouteAction::builder()
                .set_weighted_targets(Some(self.weighted_targets()))
                .build(),
        );
        let timeout = (self.per_request.is_some() || self.idle.is_some()).then(|| {
            t::HttpTimeout::builder()
                .set_per_request(self.per_request.as_ref().map(AppMeshDuration::sdk))
                .set_idle(self.idle.as_ref().map(AppMeshDuration::sdk))
                .build()
        });
        t::HttpRoute::builder()
            .r#match(m.sdk())
            .action(action)
            .set_retry_policy(self.retry.as_ref().map(Retry::http_sdk))
            .set_timeout(timeout)
            .build()
    }

    /// As the SDK's `RouteSpec`.
    pub fn sdk(&self) -> t::RouteSpec {
        let b = t::RouteSpec::builder().set_priority(self.priority);
        match &self.kind {
            RouteKind::Http(_) => b.http_route(self.http_route_sdk()),
            RouteKind::Http2(_) => b.http2_route(self.http_route_sdk()),
            RouteKind::Grpc(m) => {
                let action = built(
                    "grpc route action",
                    t::GrpcRouteAction::builder()
                        .set_weighted_targets(Some(self.weighted_targets()))
                        .build(),
                );
                let timeout = (self.per_request.is_some() || self.idle.is_some()).then(|| {
                    t::GrpcTimeout::builder()
                        .set_per_request(self.per_request.as_ref().map(AppMeshDuration::sdk))
                        .set_idle(self.idle.as_ref().map(AppMeshDuration::sdk))
                        .build()
                });
                b.grpc_route(
                    t::GrpcRoute::builder()
                        .r#match(m.sdk())
                        .action(action)
                        .set_retry_policy(self.retry.as_ref().map(Retry::grpc_sdk))
                        .set_timeout(timeout)
                        .build(),
                )
            }
            RouteKind::Tcp(port) => {
                assert!(self.retry.is_none(), "a TCP route has no retry policy");
                assert!(
                    self.per_request.is_none(),
                    "a TCP route has no per-request timeout"
                );
                let action = built(
                    "tcp route action",
                    t::TcpRouteAction::builder()
                        .set_weighted_targets(Some(self.weighted_targets()))
                        .build(),
                );
                b.tcp_route(
                    t::TcpRoute::builder()
                        .action(action)
                        .set_match(port.map(|p| t::TcpRouteMatch::builder().port(p).build()))
                        .set_timeout(
                            self.idle
                                .as_ref()
                                .map(|idle| t::TcpTimeout::builder().idle(idle.sdk()).build()),
                        )
                        .build(),
                )
            }
        }
        .build()
    }
}

impl GatewaySpec {
    /// As the SDK's `VirtualGatewaySpec`.
    pub fn sdk(&self) -> t::VirtualGatewaySpec {
        let mut b = t::VirtualGatewaySpec::builder()
            .set_logging(self.access_log.as_ref().map(AccessLog::gateway_sdk));
        for listener in &self.listeners {
            b = b.listeners(listener.gateway_sdk());
        }
        built("virtual gateway spec", b.build())
    }
}

impl GatewayRouteSpec {
    fn target_sdk(&self) -> t::GatewayRouteTarget {
        t::GatewayRouteTarget::builder()
            .virtual_service(built(
                "gateway route target",
                t::GatewayRouteVirtualService::builder()
                    .virtual_service_name(&self.service)
                    .build(),
            ))
            .set_port(self.port)
            .build()
    }

    /// As the SDK's `GatewayRouteSpec`.
    pub fn sdk(&self) -> t::GatewayRouteSpec {
        let b = t::GatewayRouteSpec::builder().set_priority(self.priority);
        let default =
            |on: bool| t::DefaultGatewayRouteRewrite::from(if on { "ENABLED" } else { "DISABLED" });
        let hostname = |rewrite: &crate::spec::Rewrite| {
            rewrite.default_target_hostname.map(|on| {
                t::GatewayRouteHostnameRewrite::builder()
                    .default_target_hostname(default(on))
                    .build()
            })
        };
        match &self.kind {
            GatewayRouteKind::Http(m) | GatewayRouteKind::Http2(m) => {
                let rewrite =
                    self.rewrite.as_ref().map(|r| {
                        let prefix =
                            (r.default_prefix.is_some() || r.prefix_value.is_some()).then(|| {
                                t::HttpGatewayRoutePrefixRewrite::builder()
                                    .set_default_prefix(r.default_prefix.map(default))
                                    .set_value(r.prefix_value.clone())
                                    .build()
                            });
                        t::HttpGatewayRouteRewrite::builder()
                            .set_prefix(prefix)
                            .set_path(r.exact_path.as_ref().map(|p| {
                                t::HttpGatewayRoutePathRewrite::builder().exact(p).build()
                            }))
                            .set_hostname(hostname(r))
                            .build()
                    });
                let route = t::HttpGatewayRoute::builder()
                    .r#match(m.gateway_sdk())
                    .action(
                        t::HttpGatewayRouteAction::builder()
                            .target(self.target_sdk())
                            .set_rewrite(rewrite)
                            .build(),
                    )
                    .build();
                if matches!(self.kind, GatewayRouteKind::Http(_)) {
                    b.http_route(route)
                } else {
                    b.http2_route(route)
                }
            }
            GatewayRouteKind::Grpc(m) => {
                let rewrite = self.rewrite.as_ref().map(|r| {
                    assert!(
                        r.default_prefix.is_none()
                            && r.prefix_value.is_none()
                            && r.exact_path.is_none(),
                        "a gRPC gateway route rewrites only the hostname"
                    );
                    t::GrpcGatewayRouteRewrite::builder()
                        .set_hostname(hostname(r))
                        .build()
                });
                b.grpc_route(
                    t::GrpcGatewayRoute::builder()
                        .r#match(m.gateway_sdk())
                        .action(
                            t::GrpcGatewayRouteAction::builder()
                                .target(self.target_sdk())
                                .set_rewrite(rewrite)
                                .build(),
                        )
                        .build(),
                )
            }
        }
        .build()
    }
}

// ---------------------------------------------------------------------------------------------
// MeshApi

/// One mesh's resources created (and updated) through an SDK client, as a test's fixture:
/// every call must succeed, and a failure panics naming the resource and the service's answer.
/// Tests about the API's answers call the client itself ([`MeshApi::client`]).
#[derive(Clone, Debug)]
pub struct MeshApi {
    client: Client,
    mesh: String,
}

/// Panics on an SDK error, naming `what` and the error (its service error when there is one).
fn sent<T, E>(what: &str, result: Result<T, aws_sdk_appmesh::error::SdkError<E>>) -> T
where
    E: std::error::Error + Send + Sync + 'static,
{
    result.unwrap_or_else(|e| {
        panic!(
            "{what}: {}",
            aws_sdk_appmesh::error::DisplayErrorContext(&e)
        )
    })
}

impl MeshApi {
    /// Creates the mesh `mesh` with `spec` through `client` (an empty spec is not sent: the
    /// mesh gets App Mesh's defaults, as when `aws appmesh create-mesh` has no `--spec`).
    pub async fn create(client: &Client, mesh: &str, spec: MeshSpec) -> Self {
        let spec = (spec != MeshSpec::default()).then(|| spec.sdk());
        sent(
            &format!("create mesh {mesh}"),
            client
                .create_mesh()
                .mesh_name(mesh)
                .set_spec(spec)
                .send()
                .await,
        );
        Self::existing(client, mesh)
    }

    /// The mesh `mesh`, already created, through `client`.
    pub fn existing(client: &Client, mesh: &str) -> Self {
        Self {
            client: client.clone(),
            mesh: mesh.to_string(),
        }
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The mesh's name.
    pub fn name(&self) -> &str {
        &self.mesh
    }

    /// Replaces the mesh's spec.
    pub async fn update_mesh(&self, spec: MeshSpec) {
        sent(
            &format!("update mesh {}", self.mesh),
            self.client
                .update_mesh()
                .mesh_name(&self.mesh)
                .spec(spec.sdk())
                .send()
                .await,
        );
    }

    /// Creates the virtual node `name`.
    pub async fn node(&self, name: &str, spec: NodeSpec) -> t::VirtualNodeData {
        let out = sent(
            &format!("create virtual node {name}"),
            self.client
                .create_virtual_node()
                .mesh_name(&self.mesh)
                .virtual_node_name(name)
                .spec(spec.sdk())
                .send()
                .await,
        );
        out.virtual_node.expect("a created virtual node")
    }

    /// Replaces the spec of the virtual node `name`.
    pub async fn update_node(&self, name: &str, spec: NodeSpec) -> t::VirtualNodeData {
        let out = sent(
            &format!("update virtual node {name}"),
            self.client
                .update_virtual_node()
                .mesh_name(&self.mesh)
                .virtual_node_name(name)
                .spec(spec.sdk())
                .send()
                .await,
        );
        out.virtual_node.expect("an updated virtual node")
    }

    /// Creates the virtual router `name`.
    pub async fn router(&self, name: &str, spec: RouterSpec) -> t::VirtualRouterData {
        let out = sent(
            &format!("create virtual router {name}"),
            self.client
                .create_virtual_router()
                .mesh_name(&self.mesh)
                .virtual_router_name(name)
                .spec(spec.sdk())
                .send()
                .await,
        );
        out.virtual_router.expect("a created virtual router")
    }

    /// Creates the route `name` of the virtual router `router`.
    pub async fn route(&self, router: &str, name: &str, spec: RouteSpec) -> t::RouteData {
        let out = sent(
            &format!("create route {router}/{name}"),
            self.client
                .create_route()
                .mesh_name(&self.mesh)
                .virtual_router_name(router)
                .route_name(name)
                .spec(spec.sdk())
                .send()
                .await,
        );
        out.route.expect("a created route")
    }

    /// Replaces the spec of the route `name` of the virtual router `router`.
    pub async fn update_route(&self, router: &str, name: &str, spec: RouteSpec) -> t::RouteData {
        let out = sent(
            &format!("update route {router}/{name}"),
            self.client
                .update_route()
                .mesh_name(&self.mesh)
                .virtual_router_name(router)
                .route_name(name)
                .spec(spec.sdk())
                .send()
                .await,
        );
        out.route.expect("an updated route")
    }

    /// Creates the virtual service `name`.
    pub async fn service(&self, name: &str, spec: ServiceSpec) -> t::VirtualServiceData {
        let out = sent(
            &format!("create virtual service {name}"),
            self.client
                .create_virtual_service()
                .mesh_name(&self.mesh)
                .virtual_service_name(name)
                .spec(spec.sdk())
                .send()
                .await,
        );
        out.virtual_service.expect("a created virtual service")
    }

    /// Creates the virtual gateway `name`.
    pub async fn gateway(&self, name: &str, spec: GatewaySpec) -> t::VirtualGatewayData {
        let out = sent(
            &format!("create virtual gateway {name}"),
            self.client
                .create_virtual_gateway()
                .mesh_name(&self.mesh)
                .virtual_gateway_name(name)
                .spec(spec.sdk())
                .send()
                .await,
        );
        out.virtual_gateway.expect("a created virtual gateway")
    }

    /// Replaces the spec of the virtual gateway `name`.
    pub async fn update_gateway(&self, name: &str, spec: GatewaySpec) -> t::VirtualGatewayData {
        let out = sent(
            &format!("update virtual gateway {name}"),
            self.client
                .update_virtual_gateway()
                .mesh_name(&self.mesh)
                .virtual_gateway_name(name)
                .spec(spec.sdk())
                .send()
                .await,
        );
        out.virtual_gateway.expect("an updated virtual gateway")
    }

    /// Creates the gateway route `name` of the virtual gateway `gateway`.
    pub async fn gateway_route(
        &self,
        gateway: &str,
        name: &str,
        spec: GatewayRouteSpec,
    ) -> t::GatewayRouteData {
        let out = sent(
            &format!("create gateway route {gateway}/{name}"),
            self.client
                .create_gateway_route()
                .mesh_name(&self.mesh)
                .virtual_gateway_name(gateway)
                .gateway_route_name(name)
                .spec(spec.sdk())
                .send()
                .await,
        );
        out.gateway_route.expect("a created gateway route")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{ms, secs, Rewrite};

    #[test]
    fn a_node_renders_as_the_sdk_type_with_the_same_members() {
        let spec = NodeSpec::http("red.local", 8080u16)
            .backend("colors.local")
            .sdk();
        let listener = &spec.listeners.as_ref().unwrap()[0];
        let mapping = listener.port_mapping.as_ref().unwrap();
        assert_eq!(
            (mapping.port, &mapping.protocol),
            (8080, &t::PortProtocol::Http)
        );
        assert!(matches!(
            spec.service_discovery,
            Some(t::ServiceDiscovery::Dns(ref d)) if d.hostname == "red.local"
        ));
        assert_eq!(spec.backends.unwrap().len(), 1);
    }

    #[test]
    fn a_route_renders_its_retry_and_timeout_as_the_sdk_types() {
        let spec = RouteSpec::split(&[("red", 3), ("blue", 1)])
            .priority(5)
            .retry(Retry::new(3, ms(250)).http_events(&["server-error"]))
            .per_request_timeout(secs(2))
            .sdk();
        assert_eq!(spec.priority, Some(5));
        let route = spec.http_route.unwrap();
        let targets = route.action.unwrap().weighted_targets;
        assert_eq!(
            targets
                .iter()
                .map(|t| (t.virtual_node.as_str(), t.weight))
                .collect::<Vec<_>>(),
            [("red", 3), ("blue", 1)]
        );
        assert_eq!(route.retry_policy.unwrap().max_retries, 3);
        assert_eq!(route.timeout.unwrap().per_request.unwrap().value, Some(2));
    }

    #[test]
    fn a_gateway_route_renders_its_rewrites_as_the_sdk_types() {
        let spec = GatewayRouteSpec::http(HttpMatch::prefix("/old"), "colors.local")
            .rewrite(Rewrite::new().prefix("/new").keep_hostname())
            .sdk();
        let action = spec.http_route.unwrap().action.unwrap();
        let rewrite = action.rewrite.unwrap();
        assert_eq!(rewrite.prefix.unwrap().value.as_deref(), Some("/new"));
        assert_eq!(
            rewrite.hostname.unwrap().default_target_hostname,
            Some(t::DefaultGatewayRouteRewrite::Disabled)
        );
    }
}
