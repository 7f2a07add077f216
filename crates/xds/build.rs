//! Generates the server side of `envoy.service.discovery.v3.AggregatedDiscoveryService` with
//! tonic-build's manual service builder (no protoc): routing, request decoding, the service
//! trait. Its methods use `crate::grpc::AdsCodec` and the crate's own response types, which are
//! written straight from the snapshot's shared resources (see `src/grpc.rs`).

fn main() {
    let method = |name: &str, route: &str, request: &str, response: &str| {
        tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!(
                "envoy_types::pb::envoy::service::discovery::v3::{request}"
            ))
            .output_type(format!("crate::wire::{response}"))
            .codec_path("crate::grpc::AdsCodec")
            .client_streaming()
            .server_streaming()
            .build()
    };
    let ads = tonic_build::manual::Service::builder()
        .name("AggregatedDiscoveryService")
        .package("envoy.service.discovery.v3")
        .method(method(
            "stream_aggregated_resources",
            "StreamAggregatedResources",
            "DiscoveryRequest",
            "SotwResponse",
        ))
        .method(method(
            "delta_aggregated_resources",
            "DeltaAggregatedResources",
            "DeltaDiscoveryRequest",
            "DeltaResponse",
        ))
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .compile(&[ads]);
    println!("cargo:rerun-if-changed=build.rs");
}
