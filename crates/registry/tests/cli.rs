//! The AWS CLI (v1, on botocore) against the registry: it sends awsJson 1.1
//! for `servicediscovery` as bundled, and Smithy RPC v2 CBOR when given the
//! model this crate ships (which lists CBOR first) through `AWS_DATA_PATH`.
//!
//! The CLI is a Python program, not a Cargo dependency: where `aws` is not
//! installed (`pip install awscli`), the scenario says so and passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::Registry;
use serde_json::Value;

fn aws_available() -> bool {
    Command::new("aws")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `aws servicediscovery <args>` against `endpoint`; returns its JSON output.
fn aws(
    endpoint: &str,
    data_path: Option<&std::path::Path>,
    args: &[&str],
) -> Result<Value, String> {
    let mut cmd = Command::new("aws");
    cmd.arg("servicediscovery")
        .args(args)
        .args(["--endpoint-url", endpoint, "--output", "json"])
        .env("AWS_ACCESS_KEY_ID", "weft")
        .env("AWS_SECRET_ACCESS_KEY", "weft")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        // DiscoverInstances would otherwise go to data-127.0.0.1.
        .env("AWS_DISABLE_HOST_PREFIX_INJECTION", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE");
    if let Some(p) = data_path {
        cmd.env("AWS_DATA_PATH", p);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
}

/// A namespace, service and instance through the CLI, then discovery and errors.
async fn scenario(data_path: Option<&std::path::Path>) {
    let r = Registry::start().await;
    let addr = r.addr.clone();
    let data_path = data_path.map(std::path::Path::to_path_buf);
    tokio::task::spawn_blocking(move || {
        let dp = data_path.as_deref();
        let run = |args: &[&str]| aws(&addr, dp, args).unwrap();
        let op = run(&["create-http-namespace", "--name", "apps.local"]);
        let op_id = op["OperationId"].as_str().unwrap();
        let op = run(&["get-operation", "--operation-id", op_id]);
        assert_eq!(op["Operation"]["Status"], "SUCCESS");
        let ns = op["Operation"]["Targets"]["NAMESPACE"]
            .as_str()
            .unwrap()
            .to_string();
        let svc = run(&[
            "create-service",
            "--name",
            "colors",
            "--namespace-id",
            &ns,
            "--health-check-custom-config",
            "{}",
        ]);
        let svc_id = svc["Service"]["Id"].as_str().unwrap().to_string();
        run(&[
            "register-instance",
            "--service-id",
            &svc_id,
            "--instance-id",
            "red-1",
            "--attributes",
            "AWS_INSTANCE_IPV4=10.0.0.1,AWS_INSTANCE_PORT=8080,color=red",
        ]);
        let found = run(&[
            "discover-instances",
            "--namespace-name",
            "apps.local",
            "--service-name",
            "colors",
            "--query-parameters",
            "color=red",
        ]);
        assert_eq!(found["Instances"][0]["InstanceId"], "red-1");
        assert_eq!(found["Instances"][0]["HealthStatus"], "HEALTHY");
        assert_eq!(
            found["Instances"][0]["Attributes"]["AWS_INSTANCE_PORT"],
            "8080"
        );
        run(&[
            "update-instance-custom-health-status",
            "--service-id",
            &svc_id,
            "--instance-id",
            "red-1",
            "--status",
            "UNHEALTHY",
        ]);
        let listed = run(&["list-namespaces"]);
        assert_eq!(listed["Namespaces"][0]["ServiceCount"], 1);
        assert!(!listed["Namespaces"][0]["CreateDate"].is_null());
        let err = aws(&addr, dp, &["get-namespace", "--id", "ns-nope"]).unwrap_err();
        assert!(err.contains("(NamespaceNotFound)"), "{err}");
        let err = aws(&addr, dp, &["delete-namespace", "--id", &ns]).unwrap_err();
        assert!(err.contains("(ResourceInUse)"), "{err}");
    })
    .await
    .unwrap();
}

/// The operations of DNS namespaces, updates, attributes, health,
/// operations and tags through the CLI, as App Mesh users' set-up scripts
/// call them, with the errors they can meet.
async fn dns_scenario(data_path: Option<&std::path::Path>) {
    let r = Registry::start().await;
    let addr = r.addr.clone();
    let data_path = data_path.map(std::path::Path::to_path_buf);
    tokio::task::spawn_blocking(move || {
        let dp = data_path.as_deref();
        let run = |args: &[&str]| aws(&addr, dp, args).unwrap();
        let fail = |args: &[&str]| aws(&addr, dp, args).unwrap_err();
        let namespace_of = |op: Value| {
            let op_id = op["OperationId"].as_str().unwrap().to_string();
            let op = run(&["get-operation", "--operation-id", &op_id]);
            assert_eq!(op["Operation"]["Status"], "SUCCESS");
            op["Operation"]["Targets"]["NAMESPACE"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let ns = namespace_of(run(&[
            "create-private-dns-namespace",
            "--name",
            "apps.local",
            "--vpc",
            "vpc-0a1b2c3d",
            "--properties",
            "DnsProperties={SOA={TTL=60}}",
        ]));
        let got = run(&["get-namespace", "--id", &ns]);
        assert_eq!(got["Namespace"]["Type"], "DNS_PRIVATE");
        let zone = &got["Namespace"]["Properties"]["DnsProperties"];
        assert!(zone["HostedZoneId"].as_str().unwrap().starts_with('Z'));
        assert_eq!(zone["SOA"]["TTL"], 60);
        run(&[
            "update-private-dns-namespace",
            "--id",
            &ns,
            "--namespace",
            r#"{"Description":"apps","Properties":{"DnsProperties":{"SOA":{"TTL":300}}}}"#,
        ]);
        let got = run(&["get-namespace", "--id", &ns]);
        assert_eq!(got["Namespace"]["Description"], "apps");
        assert_eq!(
            got["Namespace"]["Properties"]["DnsProperties"]["SOA"]["TTL"],
            300
        );
        let public = namespace_of(run(&[
            "create-public-dns-namespace",
            "--name",
            "example.com",
        ]));
        run(&[
            "update-public-dns-namespace",
            "--id",
            &public,
            "--namespace",
            "Description=site",
        ]);
        let http = namespace_of(run(&["create-http-namespace", "--name", "api.local"]));
        run(&[
            "update-http-namespace",
            "--id",
            &http,
            "--namespace",
            "Description=api",
        ]);
        let listed = run(&[
            "list-namespaces",
            "--filters",
            "Name=TYPE,Values=DNS_PUBLIC",
        ]);
        assert_eq!(listed["Namespaces"].as_array().unwrap().len(), 1);
        assert_eq!(listed["Namespaces"][0]["Description"], "site");

        let svc = run(&[
            "create-service",
            "--name",
            "colors",
            "--namespace-id",
            &ns,
            "--dns-config",
            "RoutingPolicy=MULTIVALUE,DnsRecords=[{Type=A,TTL=60}]",
            "--health-check-custom-config",
            "{}",
            "--tags",
            "Key=team,Value=paint",
        ]);
        assert_eq!(svc["Service"]["Type"], "DNS_HTTP");
        let svc_id = svc["Service"]["Id"].as_str().unwrap().to_string();
        let svc_arn = svc["Service"]["Arn"].as_str().unwrap().to_string();
        let op = run(&[
            "update-service",
            "--id",
            &svc_id,
            "--service",
            r#"{"Description":"paint","DnsConfig":{"DnsRecords":[{"Type":"A","TTL":5}]}}"#,
        ]);
        let op_id = op["OperationId"].as_str().unwrap();
        let op = run(&["get-operation", "--operation-id", op_id]);
        assert_eq!(op["Operation"]["Type"], "UPDATE_SERVICE");
        let got = run(&["get-service", "--id", &svc_id]);
        assert_eq!(got["Service"]["DnsConfig"]["DnsRecords"][0]["TTL"], 5);

        run(&[
            "update-service-attributes",
            "--service-id",
            &svc_id,
            "--attributes",
            "tier=gold,zone=a",
        ]);
        run(&[
            "delete-service-attributes",
            "--service-id",
            &svc_id,
            "--attributes",
            "zone",
        ]);
        let attrs = run(&["get-service-attributes", "--service-id", &svc_id]);
        assert_eq!(
            attrs["ServiceAttributes"]["Attributes"],
            serde_json::json!({"tier": "gold"})
        );

        let before = run(&[
            "discover-instances-revision",
            "--namespace-name",
            "apps.local",
            "--service-name",
            "colors",
        ])["InstancesRevision"]
            .as_i64()
            .unwrap();
        let err = fail(&[
            "register-instance",
            "--service-id",
            &svc_id,
            "--instance-id",
            "red-1",
            "--attributes",
            "color=red",
        ]);
        assert!(
            err.contains("(InvalidInput)") && err.contains("AWS_INSTANCE_IPV4"),
            "{err}"
        );
        for (id, ip) in [("red-1", "10.0.0.1"), ("red-2", "10.0.0.2")] {
            run(&[
                "register-instance",
                "--service-id",
                &svc_id,
                "--instance-id",
                id,
                "--attributes",
                &format!("AWS_INSTANCE_IPV4={ip}"),
            ]);
        }
        run(&[
            "update-instance-custom-health-status",
            "--service-id",
            &svc_id,
            "--instance-id",
            "red-2",
            "--status",
            "UNHEALTHY",
        ]);
        let health = run(&["get-instances-health-status", "--service-id", &svc_id]);
        assert_eq!(
            health["Status"],
            serde_json::json!({"red-1": "HEALTHY", "red-2": "UNHEALTHY"})
        );
        let after = run(&[
            "discover-instances-revision",
            "--namespace-name",
            "apps.local",
            "--service-name",
            "colors",
        ])["InstancesRevision"]
            .as_i64()
            .unwrap();
        assert!(after > before, "{after} > {before}");
        let ops = run(&[
            "list-operations",
            "--filters",
            "Name=TYPE,Values=REGISTER_INSTANCE,Condition=EQ",
        ]);
        assert_eq!(ops["Operations"].as_array().unwrap().len(), 2);
        assert_eq!(ops["Operations"][0]["Status"], "SUCCESS");

        run(&[
            "tag-resource",
            "--resource-arn",
            &svc_arn,
            "--tags",
            "Key=owner,Value=ana",
        ]);
        run(&[
            "untag-resource",
            "--resource-arn",
            &svc_arn,
            "--tag-keys",
            "team",
        ]);
        let tags = run(&["list-tags-for-resource", "--resource-arn", &svc_arn]);
        assert_eq!(
            tags["Tags"],
            serde_json::json!([{"Key": "owner", "Value": "ana"}])
        );

        // The errors scripts meet.
        let err = fail(&[
            "create-service",
            "--name",
            "web",
            "--namespace-id",
            &http,
            "--dns-config",
            "DnsRecords=[{Type=A,TTL=60}]",
        ]);
        assert!(
            err.contains("(InvalidInput)") && err.contains("HTTP namespaces"),
            "{err}"
        );
        let err = fail(&[
            "create-service",
            "--name",
            "web",
            "--namespace-id",
            "ns-0000000000000000",
            "--dns-config",
            "DnsRecords=[{Type=A,TTL=60}]",
        ]);
        assert!(err.contains("(NamespaceNotFound)"), "{err}");
        let err = fail(&[
            "create-service",
            "--name",
            "db",
            "--namespace-id",
            &ns,
            "--dns-config",
            "RoutingPolicy=MULTIVALUE,DnsRecords=[{Type=CNAME,TTL=60}]",
        ]);
        assert!(
            err.contains("(InvalidInput)") && err.contains("WEIGHTED"),
            "{err}"
        );
        let err = fail(&[
            "list-tags-for-resource",
            "--resource-arn",
            "arn:aws:servicediscovery:us-east-1:000000000000:namespace/ns-0000000000000000",
        ]);
        assert!(err.contains("(ResourceNotFoundException)"), "{err}");
        let err = fail(&[
            "create-private-dns-namespace",
            "--name",
            "x.local",
            "--vpc",
            "",
        ]);
        assert!(err.contains("(InvalidInput)"), "{err}");
        let err = fail(&[
            "update-http-namespace",
            "--id",
            &ns,
            "--namespace",
            "Description=x",
        ]);
        assert!(err.contains("(InvalidInput)"), "{err}");
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn the_aws_cli_sets_up_dns_namespaces_services_tags_and_attributes_over_json_1_1() {
    assert!(
        aws_available(),
        "the aws CLI is missing: python3 -m pip install awscli"
    );
    dns_scenario(None).await;
}

#[tokio::test]
async fn the_aws_cli_sets_up_dns_namespaces_services_tags_and_attributes_over_rpc_v2_cbor() {
    assert!(
        aws_available(),
        "the aws CLI is missing: python3 -m pip install awscli"
    );
    let tmp = shipped_model();
    dns_scenario(Some(tmp.path())).await;
}

/// A folder holding the model this crate ships, for `AWS_DATA_PATH`:
/// botocore picks the first protocol of the model's `protocols` it supports.
fn shipped_model() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("servicediscovery/2017-03-14");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("service-2.json"), weft_registry::model::MODEL_JSON).unwrap();
    tmp
}

#[tokio::test]
async fn the_aws_cli_drives_the_registry_over_json_1_1() {
    // scripts/test installs the CLI; a missing one is a failure, not a skip.
    assert!(
        aws_available(),
        "the aws CLI is missing: python3 -m pip install awscli"
    );
    scenario(None).await;
}

#[tokio::test]
async fn the_aws_cli_drives_the_registry_over_rpc_v2_cbor_with_the_shipped_model() {
    // scripts/test installs the CLI; a missing one is a failure, not a skip.
    assert!(
        aws_available(),
        "the aws CLI is missing: python3 -m pip install awscli"
    );
    let tmp = shipped_model();
    scenario(Some(tmp.path())).await;
}
