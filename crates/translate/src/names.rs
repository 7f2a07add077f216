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

/// `weft.r.<service>.<router>.<route>`: the `stat_prefix` of the Envoy route made from App Mesh
/// route `<route>` of virtual router `<router>` serving virtual service `<service>`, so that
/// Envoy counts its requests per route under `vhost.<virtual host>.route.<prefix>.`
/// (<https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto>,
/// `Route.stat_prefix`). The names are escaped with [`stat_token`] so that each is one
/// dot-free stat token and `weft-traffic` can read them back.
pub fn route_stat_prefix(service: &str, router: &str, route: &str) -> String {
    format!(
        "weft.r.{}.{}.{}",
        stat_token(service),
        stat_token(router),
        stat_token(route)
    )
}

/// `weft.g.<service>.<gateway route>`: the `stat_prefix` of the Envoy route made from a gateway
/// route to virtual service `<service>` (the gateway is the proxy that reports it), escaped as
/// [`route_stat_prefix`].
pub fn gateway_route_stat_prefix(service: &str, gateway_route: &str) -> String {
    format!(
        "weft.g.{}.{}",
        stat_token(service),
        stat_token(gateway_route)
    )
}

/// `name` as one stat token: ASCII letters, digits and `-` stay, every other byte of its UTF-8
/// becomes `_` and two lowercase hex digits (App Mesh names may hold `.`, which separates stat
/// tokens, and `:`, which Envoy rewrites in some stat names).
pub fn stat_token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("_{byte:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_stat_prefixes_are_dot_free_tokens_after_weft_and_their_kind() {
        assert_eq!(
            route_stat_prefix("colors.apps.local", "colors", "split_75:25"),
            "weft.r.colors_2eapps_2elocal.colors.split_5f75_3a25"
        );
        assert_eq!(
            gateway_route_stat_prefix("front", "to-front"),
            "weft.g.front.to-front"
        );
        assert_eq!(stat_token("é"), "_c3_a9");
    }
}
