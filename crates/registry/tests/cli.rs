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
    // botocore picks the first protocol of the model's `protocols` it supports.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("servicediscovery/2017-03-14");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("service-2.json"), weft_registry::model::MODEL_JSON).unwrap();
    scenario(Some(tmp.path())).await;
}
