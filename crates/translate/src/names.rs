//! Envoy resource names, following App Mesh's scheme so users' dashboards and runbooks keep
//! working (envoy-metrics.md, "Resource names"; docs/proxy-contract.md).

use weft_model::shapes::PortProtocol;

/// The protocol as it appears in App Mesh resource names: `http`, `http2`, `grpc`, `tcp`.
pub fn protocol_name(protocol: PortProtocol) -> &'static str {
    match protocol {
        PortProtocol::Http => "http",
        PortProtocol::Http2 => "http2",
        PortProtocol::Grpc => "grpc",
        PortProtocol::Tcp => "tcp",
    }
}

/// `lds_ingress_<addr>_<port>`.
pub fn ingress_listener(address: &str, port: u16) -> String {
    format!("lds_ingress_{address}_{port}")
}

/// `lds_egress_<addr>_<port>`.
pub fn egress_listener(address: &str, port: u16) -> String {
    format!("lds_egress_{address}_{port}")
}

/// `cds_ingress_<mesh>_<node>_<protocol>_<port>`: the local application.
pub fn ingress_cluster(mesh: &str, node: &str, protocol: PortProtocol, port: u16) -> String {
    format!(
        "cds_ingress_{mesh}_{node}_{}_{port}",
        protocol_name(protocol)
    )
}

/// `cds_egress_<mesh>_<node>_<protocol>_<port>`: a target virtual node's listener.
pub fn egress_cluster(mesh: &str, node: &str, protocol: PortProtocol, port: u16) -> String {
    format!(
        "cds_egress_{mesh}_{node}_{}_{port}",
        protocol_name(protocol)
    )
}

/// `cds_egress_<mesh>_passthrough`: original-destination cluster for traffic to destinations
/// outside the mesh when the mesh's egress filter is `ALLOW_ALL` (transparent mode only).
pub fn passthrough_cluster(mesh: &str) -> String {
    format!("cds_egress_{mesh}_passthrough")
}

/// `cds_egress_<mesh>_forward_proxy`: dynamic forward proxy cluster for requests to hosts
/// outside the mesh when the mesh's egress filter is `ALLOW_ALL` (explicit mode).
pub fn forward_proxy_cluster(mesh: &str) -> String {
    format!("cds_egress_{mesh}_forward_proxy")
}

/// `rds_ingress_<protocol>_<port>`.
pub fn ingress_route_config(protocol: PortProtocol, port: u16) -> String {
    format!("rds_ingress_{}_{port}", protocol_name(protocol))
}

/// `rds_egress_http_<egress port>`: one route table for all HTTP-family egress traffic.
pub fn egress_route_config(egress_port: u16) -> String {
    format!("rds_egress_http_{egress_port}")
}
