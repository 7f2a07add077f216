//! Generates the server side of `envoy.service.metrics.v3.MetricsService` with tonic-build's
//! manual service builder (no protoc), its messages taken from `envoy-types`
//! (<https://www.envoyproxy.io/docs/envoy/latest/api-v3/service/metrics/v3/metrics_service.proto>).

fn main() {
    let stream_metrics = tonic_build::manual::Method::builder()
        .name("stream_metrics")
        .route_name("StreamMetrics")
        .input_type("envoy_types::pb::envoy::service::metrics::v3::StreamMetricsMessage")
        .output_type("envoy_types::pb::envoy::service::metrics::v3::StreamMetricsResponse")
        .codec_path("tonic_prost::ProstCodec")
        .client_streaming()
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("MetricsService")
        .package("envoy.service.metrics.v3")
        .method(stream_metrics)
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .compile(&[service]);
    println!("cargo:rerun-if-changed=build.rs");
}
