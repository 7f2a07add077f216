//! Settings of the API: identity used in ARNs, App Mesh's quotas, and the
//! limits that keep one client or one request from taking the server.

/// Region, account and quotas the API answers with.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// ARN partition (`aws`).
    pub partition: String,
    /// Region written into ARNs.
    pub region: String,
    /// The 12-digit account that owns every mesh (`meshOwner`, `resourceOwner`).
    pub account: String,
    /// Per-account and per-mesh limits.
    pub quotas: Quotas,
    /// How long a `clientToken` is remembered: within it, a create or update
    /// retried with the same token and the same request answers what the
    /// first one did, and the token reused for a different request is a
    /// `ConflictException`; after it the token is forgotten and the request
    /// runs as a new one. SDKs retry within seconds; an hour leaves ample room.
    ///
    /// A token's record holds the request's SHA-256 and the answer's
    /// metadata (a few hundred bytes: the spec is not copied, a retry
    /// carries it). The records are also capped by
    /// [`ApiConfig::client_token_max_records`] and
    /// [`ApiConfig::client_token_max_bytes`]: past either, the oldest are
    /// forgotten first, even within the hour.
    pub client_token_ttl: std::time::Duration,
    /// Most `clientToken` records kept at once (default 10,000).
    pub client_token_max_records: usize,
    /// Most bytes of `clientToken` records kept at once, keys included
    /// (default 8 MiB).
    pub client_token_max_bytes: usize,
    /// Each client's request rate, as App Mesh throttles it: past it the API
    /// answers `TooManyRequestsException` (the SDKs back off and retry). A
    /// client is the access key id requests are signed with (see
    /// [`crate::throttle`]), so one client's burst does not throttle another.
    /// `None`: no limit, the default of a self-hosted control plane.
    pub rate_limit: Option<RateLimit>,
    /// Requests one client may have in flight at once (default 64); past it
    /// the request is answered at once with `TooManyRequestsException`
    /// (HTTP 429), so a client flooding the API waits on itself instead of
    /// pushing everyone's latency up. 0: no limit.
    pub max_in_flight_per_client: usize,
    /// Largest request body accepted, in bytes (default 256 KiB; the largest
    /// real App Mesh specs are a few KB). A larger one is answered
    /// `BadRequestException`.
    pub max_body_bytes: usize,
}

/// Default of [`ApiConfig::max_body_bytes`]: 256 KiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
/// Default of [`ApiConfig::max_in_flight_per_client`].
pub const DEFAULT_MAX_IN_FLIGHT_PER_CLIENT: usize = 64;
/// Default of [`ApiConfig::client_token_max_records`].
pub const DEFAULT_CLIENT_TOKEN_MAX_RECORDS: usize = 10_000;
/// Default of [`ApiConfig::client_token_max_bytes`]: 8 MiB.
pub const DEFAULT_CLIENT_TOKEN_MAX_BYTES: usize = 8 * 1024 * 1024;

/// A token bucket over the App Mesh requests of one client.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests that may arrive at once after a quiet spell.
    pub burst: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            partition: "aws".into(),
            region: "us-east-1".into(),
            account: "000000000000".into(),
            quotas: Quotas::default(),
            client_token_ttl: std::time::Duration::from_secs(3600),
            client_token_max_records: DEFAULT_CLIENT_TOKEN_MAX_RECORDS,
            client_token_max_bytes: DEFAULT_CLIENT_TOKEN_MAX_BYTES,
            rate_limit: None,
            max_in_flight_per_client: DEFAULT_MAX_IN_FLIGHT_PER_CLIENT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }
}

/// App Mesh's default service quotas; each can be raised or lowered.
///
/// Exceeding one answers `LimitExceededException`, as App Mesh does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    pub meshes: usize,
    pub virtual_nodes_per_mesh: usize,
    pub virtual_services_per_mesh: usize,
    pub virtual_routers_per_mesh: usize,
    pub routes_per_virtual_router: usize,
    pub virtual_gateways_per_mesh: usize,
    pub gateway_routes_per_virtual_gateway: usize,
    pub backends_per_virtual_node: usize,
    pub weighted_targets_per_route: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            meshes: 15,
            virtual_nodes_per_mesh: 200,
            virtual_services_per_mesh: 200,
            virtual_routers_per_mesh: 200,
            routes_per_virtual_router: 50,
            virtual_gateways_per_mesh: 50,
            gateway_routes_per_virtual_gateway: 50,
            backends_per_virtual_node: 50,
            weighted_targets_per_route: 10,
        }
    }
}

impl Quotas {
    /// The quota names accepted by [`Quotas::set`], in kebab case.
    pub const NAMES: &'static [&'static str] = &[
        "meshes",
        "virtual-nodes-per-mesh",
        "virtual-services-per-mesh",
        "virtual-routers-per-mesh",
        "routes-per-virtual-router",
        "virtual-gateways-per-mesh",
        "gateway-routes-per-virtual-gateway",
        "backends-per-virtual-node",
        "weighted-targets-per-route",
    ];

    /// Sets one quota by name; `false` if the name is unknown.
    pub fn set(&mut self, name: &str, value: usize) -> bool {
        let slot = match name {
            "meshes" => &mut self.meshes,
            "virtual-nodes-per-mesh" => &mut self.virtual_nodes_per_mesh,
            "virtual-services-per-mesh" => &mut self.virtual_services_per_mesh,
            "virtual-routers-per-mesh" => &mut self.virtual_routers_per_mesh,
            "routes-per-virtual-router" => &mut self.routes_per_virtual_router,
            "virtual-gateways-per-mesh" => &mut self.virtual_gateways_per_mesh,
            "gateway-routes-per-virtual-gateway" => &mut self.gateway_routes_per_virtual_gateway,
            "backends-per-virtual-node" => &mut self.backends_per_virtual_node,
            "weighted-targets-per-route" => &mut self.weighted_targets_per_route,
            _ => return false,
        };
        *slot = value;
        true
    }
}
