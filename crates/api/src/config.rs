//! Settings of the API: identity used in ARNs and App Mesh's quotas.

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
    /// How long a `clientToken` is remembered. SDKs retry within seconds;
    /// an hour leaves ample room while keeping the records bounded.
    pub client_token_ttl: std::time::Duration,
    /// The account's request rate, as App Mesh throttles it: past it the API
    /// answers `TooManyRequestsException` (the SDKs back off and retry).
    /// `None`: no limit, the default of a self-hosted control plane.
    pub rate_limit: Option<RateLimit>,
}

/// A token bucket over every App Mesh request of the account.
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
            rate_limit: None,
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
