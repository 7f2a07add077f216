//! The generated bootstrap passes real Envoy's `--mode validate`, in every mode the agent offers.

mod common;

use std::net::IpAddr;

use weft_agent::envoy::validate_bootstrap;
use weft_agent::{bootstrap_json, AgentConfig, ListenerMode, XdsProtocol};

async fn assert_envoy_accepts(config: &AgentConfig, label: &str) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, bootstrap_json(config)).unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = validate_bootstrap(&common::envoy(), &path).await {
        panic!("{label}: {e}\n{}", bootstrap_json(config));
    }
}

fn variants(mut base: AgentConfig) -> Vec<(String, AgentConfig)> {
    let mut out = Vec::new();
    for protocol in [XdsProtocol::Delta, XdsProtocol::Sotw] {
        for tags in [false, true] {
            base.xds_protocol = protocol;
            base.stats_tags = tags;
            out.push((format!("{protocol:?}, stats tags {tags}"), base.clone()));
        }
    }
    out
}

#[tokio::test]
async fn transparent_bootstraps_pass_envoy_validate_sotw_and_delta_with_and_without_tags() {
    let base = AgentConfig::for_resource(
        "arn:aws:appmesh:us-west-2:111122223333:mesh/apps/virtualNode/red",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    for (label, config) in variants(base) {
        assert_envoy_accepts(&config, &format!("transparent, {label}")).await;
    }
}

#[tokio::test]
async fn explicit_bootstraps_pass_envoy_validate_sotw_and_delta_with_and_without_tags() {
    let mut base =
        AgentConfig::for_resource("mesh/apps/virtualNode/blue").unwrap_or_else(|e| panic!("{e}"));
    base.listener_mode = ListenerMode::Explicit;
    base.listen_address = IpAddr::from([127, 0, 0, 1]);
    base.app_ports = [(8080, 18080), (9090, 19090)].into();
    base.concurrency = Some(2);
    base.initial_fetch_timeout = std::time::Duration::from_millis(1500);
    base.validate().unwrap_or_else(|e| panic!("{e}"));
    for (label, config) in variants(base) {
        assert_envoy_accepts(&config, &format!("explicit, {label}")).await;
    }
}

#[tokio::test]
async fn a_gateway_with_a_dns_named_control_plane_passes_envoy_validate() {
    let mut config = AgentConfig::for_resource("mesh/apps/virtualGateway/edge")
        .unwrap_or_else(|e| panic!("{e}"));
    config.xds_endpoint = "localhost:15010".parse().unwrap_or_else(|e| panic!("{e}"));
    config.stats_tags = true;
    config.node_cluster = "edge-cluster".into();
    assert_envoy_accepts(&config, "gateway").await;
}

#[tokio::test]
async fn bootstraps_with_workload_identity_pass_envoy_validate_with_the_weft_sds_cluster() {
    use weft_agent::identity::{CaServer, IdentityConfig, TokenSource};
    for resource in ["mesh/apps/virtualNode/red", "mesh/apps/virtualGateway/edge"] {
        let mut base = AgentConfig::for_resource(resource).unwrap_or_else(|e| panic!("{e}"));
        base.identity = Some(IdentityConfig {
            token: TokenSource::File("/run/weft/token".into()),
            ca_server: CaServer::beside(&base.xds_endpoint),
        });
        base.sds_socket = Some("/run/weft/sds.sock".into());
        let clusters = weft_agent::bootstrap(&base)["static_resources"]["clusters"].clone();
        assert_eq!(clusters[1]["name"], weft_agent::bootstrap::SDS_CLUSTER);
        assert_eq!(weft_agent::bootstrap::SDS_CLUSTER, "weft_sds");
        for (label, config) in variants(base) {
            assert_envoy_accepts(&config, &format!("{resource} with identity, {label}")).await;
        }
    }
}

#[tokio::test]
async fn bootstraps_with_mutual_tls_to_the_xds_server_pass_envoy_validate() {
    use weft_agent::identity::{CaServer, IdentityConfig, TokenSource};
    for xds in ["127.0.0.1:15010", "weft.internal:15010"] {
        let mut base = AgentConfig::for_resource("mesh/apps/virtualNode/red")
            .unwrap_or_else(|e| panic!("{e}"));
        base.xds_endpoint = xds.parse().unwrap_or_else(|e| panic!("{e}"));
        base.identity = Some(IdentityConfig {
            token: TokenSource::File("/run/weft/token".into()),
            ca_server: CaServer::beside(&base.xds_endpoint),
        });
        base.sds_socket = Some("/run/weft/sds.sock".into());
        base.xds_tls = true;
        let bootstrap = weft_agent::bootstrap(&base);
        let tls = &bootstrap["static_resources"]["clusters"][0]["transport_socket"];
        assert_eq!(tls["name"], "envoy.transport_sockets.tls", "{bootstrap}");
        let context = &tls["typed_config"]["common_tls_context"];
        assert_eq!(
            context["tls_certificate_sds_secret_configs"][0]["name"],
            "weft-identity"
        );
        assert_eq!(
            context["combined_validation_context"]["validation_context_sds_secret_config"]["name"],
            "weft-trust-bundle"
        );
        let host = xds.split(':').next().unwrap_or_default();
        assert_eq!(
            context["combined_validation_context"]["default_validation_context"]
                ["match_typed_subject_alt_names"][0]["matcher"]["exact"],
            host
        );
        for (label, config) in variants(base) {
            assert_envoy_accepts(&config, &format!("mutual TLS to {xds}, {label}")).await;
        }
    }
}

#[tokio::test]
async fn envoy_validate_really_rejects_a_broken_bootstrap() {
    // Guards the tests above: validation must be able to fail.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("bootstrap.json");
    let config =
        AgentConfig::for_resource("mesh/m/virtualNode/n").unwrap_or_else(|e| panic!("{e}"));
    let mut value = weft_agent::bootstrap(&config);
    value["dynamic_resources"]["ads_config"]["api_type"] = "NOT_AN_API".into();
    std::fs::write(&path, value.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let result = validate_bootstrap(&common::envoy(), &path).await;
    assert!(result.is_err(), "Envoy accepted a broken bootstrap");
}
