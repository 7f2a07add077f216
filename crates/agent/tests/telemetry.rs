//! App Mesh's telemetry variables, as `weft agent` reads them, give bootstraps that real Envoy
//! 1.40 accepts (`--mode validate`), and bad values stop the agent naming the variable.

mod common;

use clap::Parser;
use serde_json::Value;
use weft_agent::envoy::validate_bootstrap;
use weft_agent::{bootstrap, bootstrap_json, AgentArgs, AgentConfig, AgentError};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: AgentArgs,
}

/// The agent's configuration from flags (each the twin of an App Mesh variable).
fn config(flags: &[&str]) -> Result<AgentConfig, AgentError> {
    let mut argv = vec!["weft-agent", "--resource-arn", "mesh/apps/virtualNode/red"];
    argv.extend_from_slice(flags);
    let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
    AgentConfig::from_args(&cli.args)
}

fn accepted(flags: &[&str]) -> AgentConfig {
    config(flags).unwrap_or_else(|e| panic!("{flags:?}: {e}"))
}

fn refused(flags: &[&str]) -> String {
    match config(flags) {
        Ok(_) => panic!("accepted {flags:?}"),
        Err(e) => e.to_string(),
    }
}

async fn assert_envoy_accepts(config: &AgentConfig, label: &str) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, bootstrap_json(config)).unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = validate_bootstrap(&common::envoy(), &path).await {
        panic!("{label}: {e}\n{}", bootstrap_json(config));
    }
}

fn cluster<'a>(b: &'a Value, name: &str) -> Option<&'a Value> {
    b["static_resources"]["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
}

#[tokio::test]
async fn each_tracing_driver_gives_envoy_a_provider_and_a_cluster_to_its_collector() {
    let cases: [(&str, &[&str], &str, Option<&str>); 6] = [
        (
            "X-Ray",
            &["--enable-xray-tracing", "--xray-sampling-rate", "0.2"],
            "envoy.tracers.xray",
            None,
        ),
        (
            "Datadog",
            &[
                "--enable-datadog-tracing=1",
                "--datadog-tracer-address",
                "datadog.local",
            ],
            "envoy.tracers.datadog",
            Some("datadog_agent"),
        ),
        (
            "Jaeger (proto)",
            &["--enable-jaeger-tracing"],
            "envoy.tracers.zipkin",
            Some("jaeger"),
        ),
        (
            "Jaeger (JSON)",
            &[
                "--enable-jaeger-tracing",
                "--jaeger-tracer-version",
                "json",
                "--jaeger-tracer-port",
                "19411",
            ],
            "envoy.tracers.zipkin",
            Some("jaeger"),
        ),
        (
            "OpenTelemetry",
            &[
                "--enable-otel-tracing",
                "--otel-exporter-otlp-endpoint",
                "http://127.0.0.1:14317",
            ],
            "envoy.tracers.opentelemetry",
            Some("opentelemetry_collector"),
        ),
        ("none", &["--enable-xray-tracing=0"], "", None),
    ];
    for (label, flags, tracer, collector) in cases {
        let c = accepted(flags);
        let b = bootstrap(&c);
        if tracer.is_empty() {
            assert!(b.get("tracing").is_none(), "{label}: {b}");
            assert!(b["node"]["metadata"].get("weft.tracing").is_none());
        } else {
            assert_eq!(b["tracing"]["http"]["name"], tracer, "{label}");
            // Translation turns tracing on in every connection manager only when told.
            assert_eq!(b["node"]["metadata"]["weft.tracing"], true, "{label}");
        }
        if let Some(name) = collector {
            assert!(
                cluster(&b, name).is_some(),
                "{label}: no {name} cluster in {b}"
            );
        }
        assert_envoy_accepts(&c, label).await;
    }
    // App Mesh's names and defaults.
    let xray = bootstrap(&accepted(&["--enable-xray-tracing"]));
    let typed = &xray["tracing"]["http"]["typed_config"];
    assert_eq!(typed["segment_name"], "apps/red");
    assert_eq!(typed["daemon_endpoint"]["port_value"], 2000);
    assert_eq!(typed["segment_fields"]["origin"], "AWS::AppMesh::Proxy");
    assert!(
        typed.get("sampling_rule_manifest").is_none(),
        "5% is X-Ray's default"
    );
    let jaeger = bootstrap(&accepted(&[
        "--enable-jaeger-tracing",
        "--jaeger-tracer-version",
        "JSON",
    ]));
    let typed = &jaeger["tracing"]["http"]["typed_config"];
    assert_eq!(typed["collector_endpoint"], "/api/v2/spans");
    assert_eq!(typed["collector_endpoint_version"], "HTTP_JSON");
    let port = &cluster(&jaeger, "jaeger").unwrap_or_else(|| panic!("{jaeger}"))["load_assignment"]
        ["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
    assert_eq!(port["port_value"], 9411);
    let dd = bootstrap(&accepted(&["--enable-datadog-tracing"]));
    assert_eq!(
        dd["tracing"]["http"]["typed_config"]["service_name"],
        "envoy-apps/red"
    );
}

#[tokio::test]
async fn dog_statsd_flush_interval_and_stats_tags_give_a_bootstrap_envoy_accepts() {
    let c = accepted(&[
        "--enable-dog-statsd",
        "--statsd-port",
        "18125",
        "--stats-flush-interval",
        "1500ms",
        "--enable-stats-tags",
    ]);
    let b = bootstrap(&c);
    let sink = &b["stats_sinks"][0];
    assert_eq!(sink["name"], "envoy.stat_sinks.dog_statsd");
    let address = &sink["typed_config"]["address"]["socket_address"];
    assert_eq!(
        (address["address"].as_str(), address["port_value"].as_u64()),
        (Some("127.0.0.1"), Some(18125))
    );
    assert_eq!(address["protocol"], "UDP");
    assert_eq!(b["stats_flush_interval"], "1.500000000s");
    assert_eq!(
        b["stats_config"]["stats_tags"][0]["tag_name"],
        "appmesh.mesh"
    );
    assert_envoy_accepts(&c, "DogStatsD over UDP").await;

    let c = accepted(&[
        "--enable-dog-statsd",
        "--statsd-socket-path",
        "/run/datadog/dsd.socket",
    ]);
    let b = bootstrap(&c);
    assert_eq!(
        b["stats_sinks"][0]["typed_config"]["address"]["pipe"]["path"],
        "/run/datadog/dsd.socket"
    );
    assert_envoy_accepts(&c, "DogStatsD over a Unix socket").await;

    // DogStatsD is off by default: Weft's own sink is the only one.
    let sinks = bootstrap(&accepted(&[]))["stats_sinks"].clone();
    assert_eq!(sinks.as_array().map(Vec::len), Some(1), "{sinks}");
    assert_eq!(sinks[0]["name"], "envoy.stat_sinks.metrics_service");
}

#[tokio::test]
async fn envoy_streams_its_stats_to_weft_over_the_xds_cluster_unless_weft_stats_intake_is_0() {
    let c = accepted(&["--enable-dog-statsd"]);
    let b = bootstrap(&c);
    let names: Vec<&str> = b["stats_sinks"]
        .as_array()
        .unwrap_or_else(|| panic!("no sinks"))
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    // App Mesh's DogStatsD sink keeps working beside Weft's.
    assert_eq!(
        names,
        [
            "envoy.stat_sinks.dog_statsd",
            "envoy.stat_sinks.metrics_service"
        ]
    );
    let intake = &b["stats_sinks"][1]["typed_config"];
    assert_eq!(
        intake["grpc_service"]["envoy_grpc"]["cluster_name"],
        "xds_cluster"
    );
    assert_eq!(intake["report_counters_as_deltas"], true);
    assert_eq!(intake["histogram_emit_mode"], "HISTOGRAM");
    // Flushed every 10 s unless told otherwise, and the server is told how often.
    assert_eq!(b["stats_flush_interval"], "10s");
    assert_eq!(
        b["node"]["metadata"]["weft.stats_flush_interval_seconds"],
        10.0
    );
    assert_envoy_accepts(&c, "the metrics_service sink").await;
    let b = bootstrap(&accepted(&["--stats-flush-interval", "2s"]));
    assert_eq!(
        b["node"]["metadata"]["weft.stats_flush_interval_seconds"],
        2.0
    );

    let off = bootstrap(&accepted(&["--stats-intake", "0"]));
    assert!(off.get("stats_sinks").is_none(), "{off}");
    assert!(off.get("stats_flush_interval").is_none());
    assert!(refused(&["--stats-intake", "maybe"]).contains("WEFT_STATS_INTAKE"));
}

#[tokio::test]
async fn stats_and_tracing_files_in_yaml_or_json_are_merged_into_the_bootstrap() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path.display().to_string()
    };
    // App Mesh's shapes: bootstrap fragments, snake_case or camelCase.
    let stats = write(
        "stats.yaml",
        "stats_config:\n  stats_tags:\n    - tag_name: team\n      fixed_value: payments\n  use_all_default_tags: true\n",
    );
    let sinks = write(
        "sinks.json",
        r#"{"statsSinks": [{"name": "envoy.stat_sinks.statsd", "typed_config": {
            "@type": "type.googleapis.com/envoy.config.metrics.v3.StatsdSink",
            "address": {"socket_address": {"protocol": "UDP", "address": "127.0.0.1", "port_value": 9125}},
            "prefix": "mesh"}}]}"#,
    );
    let tracing = write(
        "tracing.yaml",
        r#"tracing:
  http:
    name: envoy.tracers.zipkin
    typed_config:
      "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
      collector_cluster: zipkin
      collector_endpoint: /api/v2/spans
      collector_endpoint_version: HTTP_JSON
static_resources:
  clusters:
    - name: zipkin
      type: STRICT_DNS
      connect_timeout: 1s
      load_assignment:
        cluster_name: zipkin
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: { address: zipkin.local, port_value: 9411 }
"#,
    );
    let c = accepted(&[
        "--enable-stats-tags",
        "--stats-config-file",
        &stats,
        "--enable-dog-statsd",
        "--stats-sinks-file",
        &sinks,
        "--tracing-cfg-file",
        &tracing,
    ]);
    let b = bootstrap(&c);
    // The stats config file replaces the default one, App Mesh's tags included.
    assert_eq!(b["stats_config"]["stats_tags"][0]["tag_name"], "team");
    // The sinks file overrides the DogStatsD variables (Weft's own sink stays).
    let names: Vec<&str> = b["stats_sinks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "envoy.stat_sinks.statsd",
            "envoy.stat_sinks.metrics_service"
        ]
    );
    assert_eq!(b["tracing"]["http"]["name"], "envoy.tracers.zipkin");
    assert!(cluster(&b, "zipkin").is_some(), "{b}");
    assert_eq!(b["node"]["metadata"]["weft.tracing"], true);
    assert_envoy_accepts(&c, "files").await;

    // A plain StatsConfig and a plain list of sinks are taken as well.
    let stats = write(
        "plain-stats.json",
        r#"{"stats_tags": [{"tag_name": "team", "fixed_value": "x"}]}"#,
    );
    let sinks = write("plain-sinks.yaml", "- name: envoy.stat_sinks.statsd\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.config.metrics.v3.StatsdSink\n    tcp_cluster_name: xds_cluster\n");
    let c = accepted(&["--stats-config-file", &stats, "--stats-sinks-file", &sinks]);
    let b = bootstrap(&c);
    assert_eq!(b["stats_config"]["stats_tags"][0]["fixed_value"], "x");
    assert_eq!(b["stats_sinks"][0]["name"], "envoy.stat_sinks.statsd");
    assert_envoy_accepts(&c, "plain files").await;
}

#[test]
fn bad_telemetry_values_stop_the_agent_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let garbage = dir.path().join("garbage.yaml");
    std::fs::write(&garbage, "tracing: [unclosed").unwrap_or_else(|e| panic!("{e}"));
    let garbage = garbage.display().to_string();
    let foreign = dir.path().join("foreign.yaml");
    std::fs::write(&foreign, "admin:\n  address: {}\n").unwrap_or_else(|e| panic!("{e}"));
    let foreign = foreign.display().to_string();
    let taken = dir.path().join("taken.yaml");
    std::fs::write(
        &taken,
        "tracing:\n  http:\n    name: envoy.tracers.zipkin\nstatic_resources:\n  clusters:\n    - name: xds_cluster\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let taken = taken.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--enable-dog-statsd", "--statsd-port", "eighty"],
            "STATSD_PORT",
        ),
        (
            vec!["--enable-dog-statsd", "--statsd-port", "70000"],
            "STATSD_PORT",
        ),
        (
            vec!["--enable-dog-statsd", "--statsd-address", "statsd.local"],
            "STATSD_ADDRESS",
        ),
        (vec!["--enable-dog-statsd=maybe"], "ENABLE_ENVOY_DOG_STATSD"),
        (
            vec!["--stats-flush-interval", "soon"],
            "ENVOY_STATS_FLUSH_INTERVAL",
        ),
        (
            vec!["--stats-flush-interval", "10m"],
            "ENVOY_STATS_FLUSH_INTERVAL",
        ),
        (
            vec!["--stats-config-file", "/nonexistent/stats.yaml"],
            "ENVOY_STATS_CONFIG_FILE",
        ),
        (
            vec!["--stats-sinks-file", "/nonexistent/sinks.yaml"],
            "ENVOY_STATS_SINKS_CFG_FILE",
        ),
        (
            vec!["--tracing-cfg-file", "/nonexistent/tracing.yaml"],
            "ENVOY_TRACING_CFG_FILE",
        ),
        (
            vec!["--tracing-cfg-file", &garbage],
            "ENVOY_TRACING_CFG_FILE",
        ),
        (
            vec!["--stats-sinks-file", &foreign],
            "ENVOY_STATS_SINKS_CFG_FILE",
        ),
        (vec!["--tracing-cfg-file", &taken], "ENVOY_TRACING_CFG_FILE"),
        (vec!["--enable-xray-tracing=2"], "ENABLE_ENVOY_XRAY_TRACING"),
        (
            vec!["--enable-xray-tracing", "--xray-daemon-port", "x"],
            "XRAY_DAEMON_PORT",
        ),
        (
            vec!["--enable-xray-tracing", "--xray-sampling-rate", "5"],
            "XRAY_SAMPLING_RATE",
        ),
        (
            vec![
                "--enable-xray-tracing",
                "--xray-daemon-address",
                "xray.local",
            ],
            "AWS_XRAY_DAEMON_ADDRESS",
        ),
        (
            vec![
                "--enable-jaeger-tracing",
                "--jaeger-tracer-version",
                "thrift",
            ],
            "JAEGER_TRACER_VERSION",
        ),
        (
            vec!["--enable-jaeger-tracing", "--jaeger-tracer-port", "0"],
            "JAEGER_TRACER_PORT",
        ),
        (
            vec!["--enable-datadog-tracing", "--datadog-tracer-port=-1"],
            "DATADOG_TRACER_PORT",
        ),
        (
            vec![
                "--enable-otel-tracing",
                "--otel-exporter-otlp-endpoint",
                "collector",
            ],
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            vec!["--enable-xray-tracing", "--enable-jaeger-tracing"],
            "only one tracing driver",
        ),
    ];
    for (flags, expected) in cases {
        let e = refused(&flags);
        assert!(e.contains(expected), "{flags:?}: {e}");
    }
    // Both tracers named when two are on.
    let e = refused(&["--enable-datadog-tracing", "--enable-otel-tracing"]);
    assert!(
        e.contains("ENABLE_ENVOY_DATADOG_TRACING") && e.contains("ENABLE_ENVOY_OTEL_TRACING"),
        "{e}"
    );
}
