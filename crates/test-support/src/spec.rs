//! Chainable builders of App Mesh specs.
//!
//! Each builder holds what a test states and renders it as App Mesh JSON ([`NodeSpec::json`],
//! or `serde_json::Value::from`), the body `aws appmesh create-* --spec` sends; with the `sdk`
//! feature, `.sdk()` renders the same spec as the AWS SDK for Rust's type (see [`crate::sdk`]).
//! Enumerations (protocols, methods, retry events, …) are written as App Mesh writes them
//! (`"http"`, `"POST"`, `"server-error"`, `"DROP_ALL"`), so a test can also send a value App
//! Mesh does not know.
//!
//! ```
//! use weft_test_support::spec::{HttpMatch, Listener, NodeSpec, RouteSpec};
//!
//! let node = NodeSpec::new().listener(Listener::http(8080)).dns("red.apps.local").backend("colors.apps.local");
//! let route = RouteSpec::http(HttpMatch::prefix("/")).to("red", 75).to("blue", 25);
//! assert_eq!(node.json()["serviceDiscovery"]["dns"]["hostname"], "red.apps.local");
//! assert_eq!(route.json()["httpRoute"]["action"]["weightedTargets"][1]["weight"], 25);
//! ```

use serde_json::{json, Map, Value};

/// Adds `key: value` to a JSON object when `value` is `Some`.
fn put(object: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        object.insert(key.to_string(), value);
    }
}

// ---------------------------------------------------------------------------------------------
// Durations and value matches

/// A duration as App Mesh writes it: a unit (`ms` or `s`) and a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppMeshDuration {
    /// `ms` or `s`.
    pub unit: &'static str,
    /// How many units.
    pub value: i64,
}

/// `value` milliseconds.
pub fn ms(value: i64) -> AppMeshDuration {
    AppMeshDuration { unit: "ms", value }
}

/// `value` seconds.
pub fn secs(value: i64) -> AppMeshDuration {
    AppMeshDuration { unit: "s", value }
}

impl AppMeshDuration {
    /// As App Mesh JSON: `{"unit": …, "value": …}`.
    pub fn json(&self) -> Value {
        json!({"unit": self.unit, "value": self.value})
    }
}

/// How the value of a header, a gRPC metadata entry or a query parameter is matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueMatch {
    /// The whole value.
    Exact(String),
    /// A prefix of the value.
    Prefix(String),
    /// A suffix of the value.
    Suffix(String),
    /// A regular expression matching the whole value.
    Regex(String),
    /// An integer value in `start..end` (end exclusive).
    Range {
        /// First value matched.
        start: i64,
        /// First value not matched.
        end: i64,
    },
}

impl ValueMatch {
    /// Matches exactly `value`.
    pub fn exact(value: impl Into<String>) -> Self {
        Self::Exact(value.into())
    }

    /// Matches values starting with `value`.
    pub fn prefix(value: impl Into<String>) -> Self {
        Self::Prefix(value.into())
    }

    /// Matches values ending with `value`.
    pub fn suffix(value: impl Into<String>) -> Self {
        Self::Suffix(value.into())
    }

    /// Matches values the regular expression `value` matches whole.
    pub fn regex(value: impl Into<String>) -> Self {
        Self::Regex(value.into())
    }

    /// Matches integers in `start..end`.
    pub fn range(start: i64, end: i64) -> Self {
        Self::Range { start, end }
    }

    /// As App Mesh JSON: `{"exact": …}`, `{"range": {"start": …, "end": …}}`, ….
    pub fn json(&self) -> Value {
        match self {
            Self::Exact(v) => json!({"exact": v}),
            Self::Prefix(v) => json!({"prefix": v}),
            Self::Suffix(v) => json!({"suffix": v}),
            Self::Regex(v) => json!({"regex": v}),
            Self::Range { start, end } => json!({"range": {"start": start, "end": end}}),
        }
    }
}

/// A header (or gRPC metadata entry) that must match, or must not when inverted. Without a
/// value match, the header only has to be present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderMatch {
    /// The header's name.
    pub name: String,
    /// How its value matches; `None`: present.
    pub value: Option<ValueMatch>,
    /// Whether the match is inverted.
    pub invert: bool,
}

impl HeaderMatch {
    /// As App Mesh JSON: `{"name": …, "match": …, "invert": true}`.
    pub fn json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        put(&mut m, "match", self.value.as_ref().map(ValueMatch::json));
        if self.invert {
            m.insert("invert".into(), json!(true));
        }
        Value::Object(m)
    }
}

/// A path matched exactly or by a regular expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A regular expression matching the whole path.
    Regex(String),
}

impl PathMatch {
    /// As App Mesh JSON: `{"exact": …}` or `{"regex": …}`.
    pub fn json(&self) -> Value {
        match self {
            Self::Exact(p) => json!({"exact": p}),
            Self::Regex(r) => json!({"regex": r}),
        }
    }
}

/// A query parameter that must be present, with an exact value if given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryMatch {
    /// The parameter's name.
    pub name: String,
    /// Its exact value; `None`: present.
    pub exact: Option<String>,
}

impl QueryMatch {
    /// As App Mesh JSON: `{"name": …, "match": {"exact": …}}`.
    pub fn json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        put(
            &mut m,
            "match",
            self.exact.as_ref().map(|v| json!({"exact": v})),
        );
        Value::Object(m)
    }
}

// ---------------------------------------------------------------------------------------------
// Listeners, health checks, connection pools, access logs

/// An active health check of a listener's app (or of a gateway's listener).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// `http`, `http2`, `grpc` or `tcp`.
    pub protocol: String,
    /// The path checked (HTTP protocols).
    pub path: Option<String>,
    /// The port checked; the listener's when `None`.
    pub port: Option<i32>,
    /// Time between checks.
    pub interval_millis: i64,
    /// Time a check may take.
    pub timeout_millis: i64,
    /// Passing checks in a row that make the app healthy.
    pub healthy_threshold: i32,
    /// Failing checks in a row that make the app unhealthy.
    pub unhealthy_threshold: i32,
}

impl HealthCheck {
    /// An HTTP check of `path` at App Mesh's minimums: every 5 s, 2 s timeout, thresholds of 2.
    pub fn http(path: impl Into<String>) -> Self {
        Self {
            protocol: "http".into(),
            path: Some(path.into()),
            port: None,
            interval_millis: 5000,
            timeout_millis: 2000,
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }

    /// Checks `port` instead of the listener's.
    pub fn port(mut self, port: impl Into<i32>) -> Self {
        self.port = Some(port.into());
        self
    }

    /// As App Mesh JSON.
    pub fn json(&self) -> Value {
        let mut m = Map::new();
        m.insert("protocol".into(), json!(self.protocol));
        put(&mut m, "path", self.path.as_ref().map(|p| json!(p)));
        put(&mut m, "port", self.port.map(|p| json!(p)));
        m.insert("intervalMillis".into(), json!(self.interval_millis));
        m.insert("timeoutMillis".into(), json!(self.timeout_millis));
        m.insert("healthyThreshold".into(), json!(self.healthy_threshold));
        m.insert("unhealthyThreshold".into(), json!(self.unhealthy_threshold));
        Value::Object(m)
    }
}

/// A listener's connection pool (circuit breaker thresholds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionPool {
    /// HTTP/1.1: connections, and requests waiting for one.
    Http {
        /// Connections at most.
        max_connections: i32,
        /// Requests waiting for a connection at most.
        max_pending_requests: Option<i32>,
    },
    /// HTTP/2: requests in flight.
    Http2 {
        /// Requests at most.
        max_requests: i32,
    },
    /// gRPC: requests in flight.
    Grpc {
        /// Requests at most.
        max_requests: i32,
    },
    /// TCP: connections (virtual nodes only).
    Tcp {
        /// Connections at most.
        max_connections: i32,
    },
}

impl ConnectionPool {
    /// An HTTP/1.1 pool of `max_connections` connections and `max_pending_requests` waiting.
    pub fn http(max_connections: i32, max_pending_requests: i32) -> Self {
        Self::Http {
            max_connections,
            max_pending_requests: Some(max_pending_requests),
        }
    }

    /// As App Mesh JSON: `{"http": {"maxConnections": …, "maxPendingRequests": …}}`, ….
    pub fn json(&self) -> Value {
        match self {
            Self::Http {
                max_connections,
                max_pending_requests,
            } => {
                let mut m = Map::new();
                m.insert("maxConnections".into(), json!(max_connections));
                put(
                    &mut m,
                    "maxPendingRequests",
                    max_pending_requests.map(|p| json!(p)),
                );
                json!({ "http": m })
            }
            Self::Http2 { max_requests } => json!({"http2": {"maxRequests": max_requests}}),
            Self::Grpc { max_requests } => json!({"grpc": {"maxRequests": max_requests}}),
            Self::Tcp { max_connections } => json!({"tcp": {"maxConnections": max_connections}}),
        }
    }
}

/// A virtual node's (or gateway's) listener: a port and protocol, with an optional health
/// check and connection pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// The port.
    pub port: i32,
    /// `http`, `http2`, `grpc` or `tcp` (gateways: not `tcp`).
    pub protocol: String,
    /// An active health check.
    pub health_check: Option<HealthCheck>,
    /// Circuit breaker thresholds.
    pub connection_pool: Option<ConnectionPool>,
}

impl Listener {
    /// A listener on `port` speaking `protocol`, as App Mesh writes it (`"http"`, …).
    pub fn new(port: impl Into<i32>, protocol: impl Into<String>) -> Self {
        Self {
            port: port.into(),
            protocol: protocol.into(),
            health_check: None,
            connection_pool: None,
        }
    }

    /// An HTTP/1.1 listener on `port`.
    pub fn http(port: impl Into<i32>) -> Self {
        Self::new(port, "http")
    }

    /// An HTTP/2 listener on `port`.
    pub fn http2(port: impl Into<i32>) -> Self {
        Self::new(port, "http2")
    }

    /// A gRPC listener on `port`.
    pub fn grpc(port: impl Into<i32>) -> Self {
        Self::new(port, "grpc")
    }

    /// A TCP listener on `port`.
    pub fn tcp(port: impl Into<i32>) -> Self {
        Self::new(port, "tcp")
    }

    /// With an active health check.
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.health_check = Some(check);
        self
    }

    /// With a connection pool.
    pub fn connection_pool(mut self, pool: ConnectionPool) -> Self {
        self.connection_pool = Some(pool);
        self
    }

    /// As App Mesh JSON: `{"portMapping": {…}, "healthCheck": …, "connectionPool": …}`.
    pub fn json(&self) -> Value {
        let mut m = Map::new();
        m.insert(
            "portMapping".into(),
            json!({"port": self.port, "protocol": self.protocol}),
        );
        put(
            &mut m,
            "healthCheck",
            self.health_check.as_ref().map(HealthCheck::json),
        );
        put(
            &mut m,
            "connectionPool",
            self.connection_pool.as_ref().map(ConnectionPool::json),
        );
        Value::Object(m)
    }
}

/// The format of an access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One line of Envoy command operators.
    Text(String),
    /// A JSON object of `key: command operator` pairs.
    Json(Vec<(String, String)>),
}

/// An access log written to a file, in Envoy's default format unless given one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLog {
    /// The file.
    pub path: String,
    /// The format; Envoy's default when `None`.
    pub format: Option<LogFormat>,
}

impl AccessLog {
    /// Written to `path` in Envoy's default format.
    pub fn file(path: impl AsRef<std::path::Path>) -> Self {
        Self {
            path: path.as_ref().to_string_lossy().into_owned(),
            format: None,
        }
    }

    /// In the text format `pattern`.
    pub fn text(mut self, pattern: impl Into<String>) -> Self {
        self.format = Some(LogFormat::Text(pattern.into()));
        self
    }

    /// In a JSON format of `fields` (key, command operator).
    pub fn json_fields(mut self, fields: &[(&str, &str)]) -> Self {
        self.format = Some(LogFormat::Json(
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        self
    }

    /// As App Mesh JSON: `{"accessLog": {"file": {"path": …, "format": …}}}`.
    pub fn json(&self) -> Value {
        let mut file = Map::new();
        file.insert("path".into(), json!(self.path));
        put(
            &mut file,
            "format",
            self.format.as_ref().map(|f| match f {
                LogFormat::Text(t) => json!({ "text": t }),
                LogFormat::Json(fields) => {
                    let fields: Vec<Value> = fields
                        .iter()
                        .map(|(k, v)| json!({"key": k, "value": v}))
                        .collect();
                    json!({ "json": fields })
                }
            }),
        );
        json!({"accessLog": {"file": file}})
    }
}

// ---------------------------------------------------------------------------------------------
// Meshes

/// A mesh's spec: its egress filter and IP preference.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshSpec {
    /// `ALLOW_ALL` or `DROP_ALL`.
    pub egress_filter: Option<String>,
    /// The mesh-wide IP preference (`IPv4_ONLY`, …).
    pub ip_preference: Option<String>,
}

impl MeshSpec {
    /// An empty spec: App Mesh's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Egress to any destination (`ALLOW_ALL`).
    pub fn allow_all() -> Self {
        Self::new().egress_filter("ALLOW_ALL")
    }

    /// Egress only to the mesh's backends (`DROP_ALL`).
    pub fn drop_all() -> Self {
        Self::new().egress_filter("DROP_ALL")
    }

    /// With the egress filter type `kind`.
    pub fn egress_filter(mut self, kind: impl Into<String>) -> Self {
        self.egress_filter = Some(kind.into());
        self
    }

    /// With the IP preference `preference`.
    pub fn ip_preference(mut self, preference: impl Into<String>) -> Self {
        self.ip_preference = Some(preference.into());
        self
    }

    /// As App Mesh JSON.
    pub fn json(&self) -> Value {
        let mut m = Map::new();
        put(
            &mut m,
            "egressFilter",
            self.egress_filter.as_ref().map(|t| json!({ "type": t })),
        );
        put(
            &mut m,
            "serviceDiscovery",
            self.ip_preference
                .as_ref()
                .map(|p| json!({ "ipPreference": p })),
        );
        Value::Object(m)
    }
}

// ---------------------------------------------------------------------------------------------
// Virtual nodes

/// How a virtual node's instances are found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// A DNS name.
    Dns {
        /// The name.
        hostname: String,
        /// `LOADBALANCER` or `ENDPOINTS`.
        response_type: Option<String>,
        /// `IPv4_ONLY`, `IPv6_PREFERRED`, ….
        ip_preference: Option<String>,
    },
    /// A Cloud Map service (Weft's instance registry).
    CloudMap {
        /// The namespace.
        namespace: String,
        /// The service.
        service: String,
        /// Attributes an instance must have.
        attributes: Vec<(String, String)>,
        /// `IPv4_ONLY`, `IPv6_PREFERRED`, ….
        ip_preference: Option<String>,
    },
}

impl Discovery {
    /// DNS at `hostname`.
    pub fn dns(hostname: impl Into<String>) -> Self {
        Self::Dns {
            hostname: hostname.into(),
            response_type: None,
            ip_preference: None,
        }
    }

    /// The Cloud Map service `service` of `namespace`.
    pub fn cloud_map(namespace: impl Into<String>, service: impl Into<String>) -> Self {
        Self::CloudMap {
            namespace: namespace.into(),
            service: service.into(),
            attributes: Vec::new(),
            ip_preference: None,
        }
    }

    /// DNS only: answered as `LOADBALANCER` or `ENDPOINTS`.
    pub fn response_type(mut self, kind: impl Into<String>) -> Self {
        if let Self::Dns { response_type, .. } = &mut self {
            *response_type = Some(kind.into());
        } else {
            panic!("a response type is for DNS discovery");
        }
        self
    }

    /// Cloud Map only: instances must have `key` = `value`.
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        if let Self::CloudMap { attributes, .. } = &mut self {
            attributes.push((key.into(), value.into()));
        } else {
            panic!("attributes are for Cloud Map discovery");
        }
        self
    }

    /// With the IP preference `preference`.
    pub fn ip_preference(mut self, preference: impl Into<String>) -> Self {
        match &mut self {
            Self::Dns { ip_preference, .. } | Self::CloudMap { ip_preference, .. } => {
                *ip_preference = Some(preference.into());
            }
        }
        self
    }

    /// As App Mesh JSON: `{"dns": {…}}` or `{"awsCloudMap": {…}}`.
    pub fn json(&self) -> Value {
        match self {
            Self::Dns {
                hostname,
                response_type,
                ip_preference,
            } => {
                let mut m = Map::new();
                m.insert("hostname".into(), json!(hostname));
                put(
                    &mut m,
                    "responseType",
                    response_type.as_ref().map(|t| json!(t)),
                );
                put(
                    &mut m,
                    "ipPreference",
                    ip_preference.as_ref().map(|p| json!(p)),
                );
                json!({ "dns": m })
            }
            Self::CloudMap {
                namespace,
                service,
                attributes,
                ip_preference,
            } => {
                let mut m = Map::new();
                m.insert("namespaceName".into(), json!(namespace));
                m.insert("serviceName".into(), json!(service));
                if !attributes.is_empty() {
                    let attributes: Vec<Value> = attributes
                        .iter()
                        .map(|(k, v)| json!({"key": k, "value": v}))
                        .collect();
                    m.insert("attributes".into(), json!(attributes));
                }
                put(
                    &mut m,
                    "ipPreference",
                    ip_preference.as_ref().map(|p| json!(p)),
                );
                json!({ "awsCloudMap": m })
            }
        }
    }
}

/// A virtual node's spec: listeners, backends (virtual service names), service discovery and
/// access log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSpec {
    /// Its listeners.
    pub listeners: Vec<Listener>,
    /// The virtual services it calls.
    pub backends: Vec<String>,
    /// How its instances are found.
    pub discovery: Option<Discovery>,
    /// Its access log.
    pub access_log: Option<AccessLog>,
}

impl NodeSpec {
    /// A node with nothing: no listener, no backend, no discovery.
    pub fn new() -> Self {
        Self::default()
    }

    /// The node most tests need: one HTTP listener on `port`, found by DNS at `hostname`.
    pub fn http(hostname: impl Into<String>, port: impl Into<i32>) -> Self {
        Self::new().listener(Listener::http(port)).dns(hostname)
    }

    /// A client: no listener, calling the virtual services `backends`.
    pub fn client(backends: &[&str]) -> Self {
        Self::new().backends(backends)
    }

    /// With one more listener.
    pub fn listener(mut self, listener: Listener) -> Self {
        self.listeners.push(listener);
        self
    }

    /// With the virtual service `service` as one more backend.
    pub fn backend(mut self, service: impl Into<String>) -> Self {
        self.backends.push(service.into());
        self
    }

    /// With the virtual services `services` as more backends.
    pub fn backends(mut self, services: &[&str]) -> Self {
        self.backends.extend(services.iter().map(|s| s.to_string()));
        self
    }

    /// Found by DNS at `hostname`.
    pub fn dns(self, hostname: impl Into<String>) -> Self {
        self.discovery(Discovery::dns(hostname))
    }

    /// Found through the Cloud Map service `service` of `namespace`.
    pub fn cloud_map(self, namespace: impl Into<String>, service: impl Into<String>) -> Self {
        self.discovery(Discovery::cloud_map(namespace, service))
    }

    /// Found as `discovery` says.
    pub fn discovery(mut self, discovery: Discovery) -> Self {
        self.discovery = Some(discovery);
        self
    }

    /// With an access log.
    pub fn access_log(mut self, log: AccessLog) -> Self {
        self.access_log = Some(log);
        self
    }

    /// Its first listener's port.
    pub fn port(&self) -> Option<i32> {
        self.listeners.first().map(|l| l.port)
    }

    /// As App Mesh JSON.
    pub fn json(&self) -> Value {
        let mut m = Map::new();
        if !self.listeners.is_empty() {
            let listeners: Vec<Value> = self.listeners.iter().map(Listener::json).collect();
            m.insert("listeners".into(), json!(listeners));
        }
        if !self.backends.is_empty() {
            let backends: Vec<Value> = self
                .backends
                .iter()
                .map(|b| json!({"virtualService": {"virtualServiceName": b}}))
                .collect();
            m.insert("backends".into(), json!(backends));
        }
        put(
            &mut m,
            "serviceDiscovery",
            self.discovery.as_ref().map(Discovery::json),
        );
        put(
            &mut m,
            "logging",
            self.access_log.as_ref().map(AccessLog::json),
        );
        Value::Object(m)
    }
}

// ---------------------------------------------------------------------------------------------
// Virtual routers and services

/// A virtual router's spec: its listeners (port and protocol).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterSpec {
    /// Its listeners: port and protocol.
    pub listeners: Vec<(i32, String)>,
}

impl RouterSpec {
    /// A router without listeners.
    pub fn new() -> Self {
        Self::default()
    }

    /// A router with one HTTP listener on `port`.
    pub fn http(port: impl Into<i32>) -> Self {
        Self::new().listener(port, "http")
    }

    /// With one more listener on `port` speaking `protocol`.
    pub fn listener(mut self, port: impl Into<i32>, protocol: impl Into<String>) -> Self {
        self.listeners.push((port.into(), protocol.into()));
        self
    }

    /// As App Mesh JSON.
    pub fn json(&self) -> Value {
        let listeners: Vec<Value> = self
            .listeners
            .iter()
            .map(|(port, protocol)| json!({"portMapping": {"port": port, "protocol": protocol}}))
            .collect();
        json!({ "listeners": listeners })
    }
}

/// A virtual service's spec: what provides it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceSpec {
    /// No provider.
    Unprovided,
    /// The virtual node named.
    ByNode(String),
    /// The virtual router named.
    ByRouter(String),
}

impl ServiceSpec {
    /// Provided by the virtual node `node`.
    pub fn by_node(node: impl Into<String>) -> Self {
        Self::ByNode(node.into())
    }

    /// Provided by the virtual router `router`.
    pub fn by_router(router: impl Into<String>) -> Self {
        Self::ByRouter(router.into())
    }

    /// As App Mesh JSON.
    pub fn json(&self) -> Value {
        match self {
            Self::Unprovided => json!({}),
            Self::ByNode(n) => json!({"provider": {"virtualNode": {"virtualNodeName": n}}}),
            Self::ByRouter(r) => {
                json!({"provider": {"virtualRouter": {"virtualRouterName": r}}})
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routes

/// What an HTTP or HTTP/2 route (or gateway route) matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpMatch {
    /// A path prefix.
    pub prefix: Option<String>,
    /// A whole-path match.
    pub path: Option<PathMatch>,
    /// Gateway routes only: the `Host` matched exactly (`Exact`) or by suffix (`Suffix`).
    pub hostname: Option<ValueMatch>,
    /// Headers.
    pub headers: Vec<HeaderMatch>,
    /// The method (`GET`, `POST`, …).
    pub method: Option<String>,
    /// Routes only: the scheme (`http`, `https`).
    pub scheme: Option<String>,
    /// Query parameters.
    pub query: Vec<QueryMatch>,
    /// The listener port.
    pub port: Option<i32>,
}

impl HttpMatch {
    /// Paths starting with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: Some(prefix.into()),
            ..Self::default()
        }
    }

    /// Exactly the path `path`.
    pub fn exact_path(path: impl Into<String>) -> Self {
        Self {
            path: Some(PathMatch::Exact(path.into())),
            ..Self::default()
        }
    }

    /// Paths the regular expression `regex` matches whole.
    pub fn regex_path(regex: impl Into<String>) -> Self {
        Self {
            path: Some(PathMatch::Regex(regex.into())),
            ..Self::default()
        }
    }

    /// Gateway routes: and a `Host` of exactly `host` (any case, any port).
    pub fn hostname_exact(mut self, host: impl Into<String>) -> Self {
        self.hostname = Some(ValueMatch::Exact(host.into()));
        self
    }

    /// Gateway routes: and a `Host` ending with `suffix`.
    pub fn hostname_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.hostname = Some(ValueMatch::Suffix(suffix.into()));
        self
    }

    /// And a header `name` whose value matches `value`.
    pub fn header(mut self, name: impl Into<String>, value: ValueMatch) -> Self {
        self.headers.push(HeaderMatch {
            name: name.into(),
            value: Some(value),
            invert: false,
        });
        self
    }

    /// And a header `name` whose value does not match `value`.
    pub fn header_not(mut self, name: impl Into<String>, value: ValueMatch) -> Self {
        self.headers.push(HeaderMatch {
            name: name.into(),
            value: Some(value),
            invert: true,
        });
        self
    }

    /// And the method `method` (`POST`, …).
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// And the scheme `scheme`.
    pub fn scheme(mut self, scheme: impl Into<String>) -> Self {
        self.scheme = Some(scheme.into());
        self
    }

    /// And the query parameter `name` equal to `value`.
    pub fn query(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.query.push(QueryMatch {
            name: name.into(),
            exact: Some(value.into()),
        });
        self
    }

    /// And arriving on the listener port `port`.
    pub fn port(mut self, port: impl Into<i32>) -> Self {
        self.port = Some(port.into());
        self
    }

    /// As App Mesh JSON.
    pub fn json(&self) -> Value {
        let mut m = Map::new();
        put(&mut m, "prefix", self.prefix.as_ref().map(|p| json!(p)));
        put(&mut m, "path", self.path.as_ref().map(PathMatch::json));
        put(
            &mut m,
            "hostname",
            self.hostname.as_ref().map(|h| match h {
                ValueMatch::Exact(e) => json!({ "exact": e }),
                ValueMatch::Suffix(s) => json!({ "suffix": s }),
                other => panic!("a hostname matches exactly or by suffix, not {other:?}"),
            }),
        );
        if !self.headers.is_empty() {
            let headers: Vec<Value> = self.headers.iter().map(HeaderMatch::json).collect();
            m.insert("headers".into(), json!(headers));
        }
        put(&mut m, "method", self.method.as_ref().map(|v| json!(v)));
        put(&mut m, "scheme", self.scheme.as_ref().map(|v| json!(v)));
        if !self.query.is_empty() {
            let query: Vec<Value> = self.query.iter().map(QueryMatch::json).collect();
            m.insert("queryParameters".into(), json!(query));
        }
        put(&mut m, "port", self.port.map(|p| json!(p)));
        Value::Object(m)
    }
}

/// What a gRPC route (or gateway route) matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcMatch {
    /// The fully qualified service name.
    pub service_name: Option<String>,
    /// Routes only: the method name (with a service name).
    pub method_name: Option<String>,
    /// Gateway routes only: the `:authority` matched exactly (`Exact`) or by suffix (`Suffix`).
    pub hostname: Option<ValueMatch>,
    /// Metadata entries.
    pub metadata: Vec<HeaderMatch>,
    /// The listener port.
    pub port: Option<i32>,
}

impl GrpcMatch {
    /// Every call.
    pub fn any() -> Self {
        Self::default()
    }

    /// Calls to the service `name`.
    pub fn service(name: impl Into<String>) -> Self {
        Self {
            service_name: Some(name.into()),
            ..Self::default()
        }
    }

    /// And to its method `name`.
    pub fn method(mut self, name: impl Into<String>) -> Self {
        self.method_name = Some(name.into());
        self
    }

    /// And a metadata entry `name` whose value matches `value`.
    pub fn metadata(mut self, name: impl Into<String>, value: ValueMatch) -> Self {
        self.metadata.push(HeaderMatch {
            name: name.into(),
            value: Some(value),
            invert: false,
        });
        self
    }

    /// And a metadata entry `name` whose value does not match `value`.
    pub fn metadata_not(mut self, name: impl Into<String>, value: ValueMatch) -> Self {
        self.metadata.push(HeaderMatch {
            name: name.into(),
            value: Some(value),
            invert: true,
        });
        self
    }

    /// And arriving on the listener port `port`.
    pub fn port(mut self, port: impl Into<i32>) -> Self {
        self.port = Some(port.into());
        self
    }

    /// As App Mesh JSON.
    pub fn json(&self) -> Value {
        let mut m = Map::new();
        put(
            &mut m,
            "serviceName",
            self.service_name.as_ref().map(|s| json!(s)),
        );
        put(
            &mut m,
            "methodName",
            self.method_name.as_ref().map(|s| json!(s)),
        );
        put(
            &mut m,
            "hostname",
            self.hostname.as_ref().map(|h| match h {
                ValueMatch::Exact(e) => json!({ "exact": e }),
                ValueMatch::Suffix(s) => json!({ "suffix": s }),
                other => panic!("a hostname matches exactly or by suffix, not {other:?}"),
            }),
        );
        if !self.metadata.is_empty() {
            let metadata: Vec<Value> = self.metadata.iter().map(HeaderMatch::json).collect();
            m.insert("metadata".into(), json!(metadata));
        }
        put(&mut m, "port", self.port.map(|p| json!(p)));
        Value::Object(m)
    }
}

/// A route's retry policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Retries at most.
    pub max_retries: i64,
    /// Time each try may take.
    pub per_retry_timeout: AppMeshDuration,
    /// HTTP events retried (`server-error`, `gateway-error`, …).
    pub http_events: Vec<String>,
    /// TCP events retried (`connection-error`).
    pub tcp_events: Vec<String>,
    /// gRPC events retried (`unavailable`, …; gRPC routes).
    pub grpc_events: Vec<String>,
}

impl Retry {
    /// Up to `max_retries` retries of `per_retry_timeout` each, on no event yet.
    pub fn new(max_retries: i64, per_retry_timeout: AppMeshDuration) -> Self {
        Self {
            max_retries,
            per_retry_timeout,
            http_events: Vec::new(),
            tcp_events: Vec::new(),
            grpc_events: Vec::new(),
        }
    }

    /// Retrying the HTTP events `events`.
    pub fn http_events(mut self, events: &[&str]) -> Self {
        self.http_events = events.iter().map(|e| e.to_string()).collect();
        self
    }

    /// Retrying the TCP events `events`.
    pub fn tcp_events(mut self, events: &[&str]) -> Self {
        self.tcp_events = events.iter().map(|e| e.to_string()).collect();
        self
    }

    /// Retrying the gRPC events `events`.
    pub fn grpc_events(mut self, events: &[&str]) -> Self {
        self.grpc_events = events.iter().map(|e| e.to_string()).collect();
        self
    }

    /// As App Mesh JSON.
    pub fn json(&self) -> Value {
        let mut m = Map::new();
        m.insert("maxRetries".into(), json!(self.max_retries));
        m.insert("perRetryTimeout".into(), self.per_retry_timeout.json());
        for (key, events) in [
            ("httpRetryEvents", &self.http_events),
            ("tcpRetryEvents", &self.tcp_events),
            ("grpcRetryEvents", &self.grpc_events),
        ] {
            if !events.is_empty() {
                m.insert(key.into(), json!(events));
            }
        }
        Value::Object(m)
    }
}

/// The kind of a route, with what it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// `httpRoute`.
    Http(HttpMatch),
    /// `http2Route`.
    Http2(HttpMatch),
    /// `grpcRoute`.
    Grpc(GrpcMatch),
    /// `tcpRoute`, optionally matching the listener port.
    Tcp(Option<i32>),
}

/// A weighted target of a route: a virtual node, optionally one of its listener ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The virtual node.
    pub node: String,
    /// Its weight.
    pub weight: i32,
    /// The node's listener port, when it has several.
    pub port: Option<i32>,
}

/// A route's spec: its kind and match, weighted targets, priority, retry policy and timeouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// Lower first; unprioritized routes last.
    pub priority: Option<i32>,
    /// Its kind and match.
    pub kind: RouteKind,
    /// Where matched traffic goes.
    pub targets: Vec<Target>,
    /// Its retry policy.
    pub retry: Option<Retry>,
    /// Per-request timeout (not TCP).
    pub per_request: Option<AppMeshDuration>,
    /// Idle timeout.
    pub idle: Option<AppMeshDuration>,
}

impl RouteSpec {
    fn of(kind: RouteKind) -> Self {
        Self {
            priority: None,
            kind,
            targets: Vec::new(),
            retry: None,
            per_request: None,
            idle: None,
        }
    }

    /// An HTTP/1.1 route matching `m`.
    pub fn http(m: HttpMatch) -> Self {
        Self::of(RouteKind::Http(m))
    }

    /// An HTTP/2 route matching `m`.
    pub fn http2(m: HttpMatch) -> Self {
        Self::of(RouteKind::Http2(m))
    }

    /// A gRPC route matching `m`.
    pub fn grpc(m: GrpcMatch) -> Self {
        Self::of(RouteKind::Grpc(m))
    }

    /// A TCP route.
    pub fn tcp() -> Self {
        Self::of(RouteKind::Tcp(None))
    }

    /// An HTTP/1.1 route for every path (`prefix: /`) sending `targets` (node, weight).
    pub fn split(targets: &[(&str, i32)]) -> Self {
        targets
            .iter()
            .fold(Self::http(HttpMatch::prefix("/")), |r, (node, weight)| {
                r.to(*node, *weight)
            })
    }

    /// At priority `priority`.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Sending a `weight` share to the virtual node `node`.
    pub fn to(mut self, node: impl Into<String>, weight: i32) -> Self {
        self.targets.push(Target {
            node: node.into(),
            weight,
            port: None,
        });
        self
    }

    /// Sending a `weight` share to the listener `port` of the virtual node `node`.
    pub fn to_port(mut self, node: impl Into<String>, port: impl Into<i32>, weight: i32) -> Self {
        self.targets.push(Target {
            node: node.into(),
            weight,
            port: Some(port.into()),
        });
        self
    }

    /// With a retry policy.
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = Some(retry);
        self
    }

    /// With a per-request timeout.
    pub fn per_request_timeout(mut self, timeout: AppMeshDuration) -> Self {
        self.per_request = Some(timeout);
        self
    }

    /// With an idle timeout.
    pub fn idle_timeout(mut self, timeout: AppMeshDuration) -> Self {
        self.idle = Some(timeout);
        self
    }

    /// The weighted targets as App Mesh JSON: `{"weightedTargets": […]}`.
    pub fn action_json(&self) -> Value {
        let targets: Vec<Value> = self
            .targets
            .iter()
            .map(|t| {
                let mut m = Map::new();
                m.insert("virtualNode".into(), json!(t.node));
                m.insert("weight".into(), json!(t.weight));
                put(&mut m, "port", t.port.map(|p| json!(p)));
                Value::Object(m)
            })
            .collect();
        json!({ "weightedTargets": targets })
    }

    /// As App Mesh JSON.
    pub fn json(&self) -> Value {
        let mut route = Map::new();
        let key = match &self.kind {
            RouteKind::Http(m) | RouteKind::Http2(m) => {
                route.insert("match".into(), m.json());
                if matches!(self.kind, RouteKind::Http(_)) {
                    "httpRoute"
                } else {
                    "http2Route"
                }
            }
            RouteKind::Grpc(m) => {
                route.insert("match".into(), m.json());
                "grpcRoute"
            }
            RouteKind::Tcp(port) => {
                put(&mut route, "match", port.map(|p| json!({ "port": p })));
                "tcpRoute"
            }
        };
        route.insert("action".into(), self.action_json());
        put(
            &mut route,
            "retryPolicy",
            self.retry.as_ref().map(Retry::json),
        );
        if self.per_request.is_some() || self.idle.is_some() {
            let mut timeout = Map::new();
            put(
                &mut timeout,
                "perRequest",
                self.per_request.as_ref().map(AppMeshDuration::json),
            );
            put(
                &mut timeout,
                "idle",
                self.idle.as_ref().map(AppMeshDuration::json),
            );
            route.insert("timeout".into(), Value::Object(timeout));
        }
        let mut m = Map::new();
        put(&mut m, "priority", self.priority.map(|p| json!(p)));
        m.insert(key.into(), Value::Object(route));
        Value::Object(m)
    }
}

// ---------------------------------------------------------------------------------------------
// Virtual gateways and gateway routes

/// A virtual gateway's spec: its listeners and access log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewaySpec {
    /// Its listeners (`http`, `http2` or `grpc`).
    pub listeners: Vec<Listener>,
    /// Its access log.
    pub access_log: Option<AccessLog>,
}

impl GatewaySpec {
    /// A gateway without listeners.
    pub fn new() -> Self {
        Self::default()
    }

    /// With one more listener.
    pub fn listener(mut self, listener: Listener) -> Self {
        self.listeners.push(listener);
        self
    }

    /// With an access log.
    pub fn access_log(mut self, log: AccessLog) -> Self {
        self.access_log = Some(log);
        self
    }

    /// As App Mesh JSON.
    pub fn json(&self) -> Value {
        let mut m = Map::new();
        let listeners: Vec<Value> = self.listeners.iter().map(Listener::json).collect();
        m.insert("listeners".into(), json!(listeners));
        put(
            &mut m,
            "logging",
            self.access_log.as_ref().map(AccessLog::json),
        );
        Value::Object(m)
    }
}

/// How a gateway route rewrites a request before it enters the mesh.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// `Some(false)`: `defaultPrefix: DISABLED`; `Some(true)`: `ENABLED`.
    pub default_prefix: Option<bool>,
    /// A prefix replacing the matched one.
    pub prefix_value: Option<String>,
    /// A path replacing the matched one.
    pub exact_path: Option<String>,
    /// `Some(false)`: `defaultTargetHostname: DISABLED`; `Some(true)`: `ENABLED`.
    pub default_target_hostname: Option<bool>,
}

impl Rewrite {
    /// App Mesh's default rewrites.
    pub fn new() -> Self {
        Self::default()
    }

    /// The matched prefix is kept (`defaultPrefix: DISABLED`).
    pub fn keep_prefix(mut self) -> Self {
        self.default_prefix = Some(false);
        self
    }

    /// The matched prefix becomes `value`.
    pub fn prefix(mut self, value: impl Into<String>) -> Self {
        self.prefix_value = Some(value.into());
        self
    }

    /// The matched path becomes `path`.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.exact_path = Some(path.into());
        self
    }

    /// The `Host` is kept (`defaultTargetHostname: DISABLED`).
    pub fn keep_hostname(mut self) -> Self {
        self.default_target_hostname = Some(false);
        self
    }

    fn enabled(on: bool) -> &'static str {
        if on {
            "ENABLED"
        } else {
            "DISABLED"
        }
    }

    /// As App Mesh JSON.
    pub fn json(&self) -> Value {
        let mut m = Map::new();
        if self.default_prefix.is_some() || self.prefix_value.is_some() {
            let mut prefix = Map::new();
            put(
                &mut prefix,
                "defaultPrefix",
                self.default_prefix.map(|on| json!(Self::enabled(on))),
            );
            put(
                &mut prefix,
                "value",
                self.prefix_value.as_ref().map(|v| json!(v)),
            );
            m.insert("prefix".into(), Value::Object(prefix));
        }
        put(
            &mut m,
            "path",
            self.exact_path.as_ref().map(|p| json!({ "exact": p })),
        );
        put(
            &mut m,
            "hostname",
            self.default_target_hostname
                .map(|on| json!({ "defaultTargetHostname": Self::enabled(on) })),
        );
        Value::Object(m)
    }
}

/// The kind of a gateway route, with what it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayRouteKind {
    /// `httpRoute`.
    Http(HttpMatch),
    /// `http2Route`.
    Http2(HttpMatch),
    /// `grpcRoute`.
    Grpc(GrpcMatch),
}

/// A gateway route's spec: its kind and match, the virtual service it targets, priority and
/// rewrites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayRouteSpec {
    /// Lower first; unprioritized routes last.
    pub priority: Option<i32>,
    /// Its kind and match.
    pub kind: GatewayRouteKind,
    /// The virtual service matched traffic goes to.
    pub service: String,
    /// The service's port, when it has several.
    pub port: Option<i32>,
    /// Its rewrites.
    pub rewrite: Option<Rewrite>,
}

impl GatewayRouteSpec {
    fn of(kind: GatewayRouteKind, service: impl Into<String>) -> Self {
        Self {
            priority: None,
            kind,
            service: service.into(),
            port: None,
            rewrite: None,
        }
    }

    /// An HTTP/1.1 gateway route matching `m`, to the virtual service `service`.
    pub fn http(m: HttpMatch, service: impl Into<String>) -> Self {
        Self::of(GatewayRouteKind::Http(m), service)
    }

    /// An HTTP/2 gateway route matching `m`, to the virtual service `service`.
    pub fn http2(m: HttpMatch, service: impl Into<String>) -> Self {
        Self::of(GatewayRouteKind::Http2(m), service)
    }

    /// A gRPC gateway route matching `m`, to the virtual service `service`.
    pub fn grpc(m: GrpcMatch, service: impl Into<String>) -> Self {
        Self::of(GatewayRouteKind::Grpc(m), service)
    }

    /// At priority `priority`.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// To the service's port `port`.
    pub fn port(mut self, port: impl Into<i32>) -> Self {
        self.port = Some(port.into());
        self
    }

    /// With rewrites.
    pub fn rewrite(mut self, rewrite: Rewrite) -> Self {
        self.rewrite = Some(rewrite);
        self
    }

    /// As App Mesh JSON.
    pub fn json(&self) -> Value {
        let mut target = Map::new();
        target.insert(
            "virtualService".into(),
            json!({ "virtualServiceName": self.service }),
        );
        put(&mut target, "port", self.port.map(|p| json!(p)));
        let mut action = Map::new();
        action.insert("target".into(), Value::Object(target));
        put(
            &mut action,
            "rewrite",
            self.rewrite.as_ref().map(Rewrite::json),
        );
        let (key, m) = match &self.kind {
            GatewayRouteKind::Http(m) => ("httpRoute", m.json()),
            GatewayRouteKind::Http2(m) => ("http2Route", m.json()),
            GatewayRouteKind::Grpc(m) => ("grpcRoute", m.json()),
        };
        let mut m = json!({ key: {"match": m, "action": action} });
        if let Some(p) = self.priority {
            m["priority"] = json!(p);
        }
        m
    }
}

macro_rules! into_json {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(spec: $t) -> Value {
                spec.json()
            }
        }
        impl From<&$t> for Value {
            fn from(spec: &$t) -> Value {
                spec.json()
            }
        }
    )*};
}

into_json!(
    MeshSpec,
    NodeSpec,
    Listener,
    RouterSpec,
    ServiceSpec,
    RouteSpec,
    GatewaySpec,
    GatewayRouteSpec
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_renders_as_the_json_aws_appmesh_takes() {
        let node = NodeSpec::http("red.local", 8080u16)
            .backend("colors.local")
            .access_log(AccessLog::file("/dev/stdout").text("%RESPONSE_CODE%\n"));
        assert_eq!(
            node.json(),
            json!({
                "listeners": [{"portMapping": {"port": 8080, "protocol": "http"}}],
                "backends": [{"virtualService": {"virtualServiceName": "colors.local"}}],
                "serviceDiscovery": {"dns": {"hostname": "red.local"}},
                "logging": {"accessLog": {"file": {"path": "/dev/stdout",
                    "format": {"text": "%RESPONSE_CODE%\n"}}}}
            })
        );
    }

    #[test]
    fn a_route_renders_its_match_targets_retry_and_timeouts() {
        let route = RouteSpec::grpc(
            GrpcMatch::service("weft.Colors")
                .method("Get")
                .metadata_not("x-env", ValueMatch::exact("prod")),
        )
        .priority(3)
        .to_port("alpha", 50051, 1)
        .retry(Retry::new(2, secs(1)).grpc_events(&["unavailable"]))
        .per_request_timeout(ms(500));
        assert_eq!(
            route.json(),
            json!({"priority": 3, "grpcRoute": {
                "match": {"serviceName": "weft.Colors", "methodName": "Get",
                          "metadata": [{"name": "x-env", "match": {"exact": "prod"}, "invert": true}]},
                "action": {"weightedTargets": [{"virtualNode": "alpha", "weight": 1, "port": 50051}]},
                "retryPolicy": {"maxRetries": 2, "perRetryTimeout": {"unit": "s", "value": 1},
                                "grpcRetryEvents": ["unavailable"]},
                "timeout": {"perRequest": {"unit": "ms", "value": 500}}}})
        );
    }

    #[test]
    fn a_gateway_route_renders_its_target_and_rewrites() {
        let route = GatewayRouteSpec::http(HttpMatch::prefix("/keep"), "colors.local")
            .priority(10)
            .rewrite(Rewrite::new().keep_prefix().keep_hostname());
        assert_eq!(
            route.json(),
            json!({"priority": 10, "httpRoute": {
                "match": {"prefix": "/keep"},
                "action": {"target": {"virtualService": {"virtualServiceName": "colors.local"}},
                           "rewrite": {"prefix": {"defaultPrefix": "DISABLED"},
                                       "hostname": {"defaultTargetHostname": "DISABLED"}}}}})
        );
    }
}
