//! App Mesh's TLS walkthroughs (github.com/aws/aws-app-mesh-examples, `walkthroughs/`) replayed
//! as their users ran them: the AWS CLI with each step's JSON (`--cli-input-json`), its variables
//! filled as the walkthroughs' `mesh.sh` fills them with jq, against a real `weft server`, real
//! agents and Envoys, and checked as the walkthroughs check: the answer through the gateway and
//! Envoy's `ssl.*` statistics.
//!
//! The specs are the walkthroughs' own but for what a test on one host must choose: free ports for
//! their port 9080, a temporary folder for their `/keys`, and DNS service discovery at 127.0.0.1
//! where `howto-mutual-tls-file-provided` used Cloud Map.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::certs::Ca;
use common::mesh::{agent, free_port, http_get, sample_app, wait_until, Agent};
use common::{aws_appmesh, WeftServer};

/// Fills a walkthrough's template: each `$NAME` in `strings` becomes a JSON string (jq's
/// `--arg`), each in `raw` is written as is (a number, as `--argjson` does, or a folder inside
/// a string). Longer names first, so that `$GATEWAY_PORT` is not taken for `$GATEWAY`.
fn fill(template: &str, strings: &[(&str, &str)], raw: &[(&str, &str)]) -> String {
    let mut vars: Vec<(String, String)> = strings
        .iter()
        .map(|(k, v)| (format!("${k}"), serde_json::Value::from(*v).to_string()))
        .chain(raw.iter().map(|(k, v)| (format!("${k}"), v.to_string())))
        .collect();
    vars.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&k, &v);
    }
    assert!(!out.contains('$'), "a variable left unfilled: {out}");
    out
}

/// `aws appmesh <command> <args> --cli-input-json file://…` with `input` written to `dir`.
fn cli(server: &WeftServer, dir: &Path, command: &str, args: &[&str], input: &str) {
    let file = dir.join(format!("{command}-{}.json", free_port()));
    std::fs::write(&file, input).unwrap();
    let mut argv = vec![command];
    argv.extend_from_slice(args);
    let url = format!("file://{}", file.display());
    argv.extend(["--cli-input-json", &url]);
    if let Err(e) = aws_appmesh(&server.addr, &argv) {
        panic!("aws appmesh {argv:?}: {e}\ninput: {input}");
    }
}

/// The sum of Envoy's counters named `<side>….ssl.<stat>` (`side`: `listener` for the
/// connections it accepts, `cluster` for those it makes).
fn ssl(envoy: &Agent, side: &str, stat: &str) -> u64 {
    let suffix = format!(".ssl.{stat}");
    envoy
        .admin("/stats?filter=ssl")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| k.starts_with(&format!("{side}.")) && k.ends_with(&suffix))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

/// What the gateway answers `GET /`: its status and body.
fn through_gateway(port: u16) -> (u16, String) {
    http_get(port, "colorteller", "/")
        .map(|(s, b)| (s, b.trim().to_string()))
        .unwrap_or((0, String::new()))
}

fn rejected(envoys: &[&Agent]) -> u64 {
    envoys.iter().map(|e| e.stat_sum("update_rejected")).sum()
}

const MESH_MTLS_VN: &str = r#"{
    "spec": {
        "listeners": [ { "portMapping": { "port": $PORT, "protocol": "http" } } ],
        "serviceDiscovery": { "dns": { "hostname": "127.0.0.1" } }
    }
}"#;

const MESH_MTLS_VS: &str = r#"{
    "spec": { "provider": { "virtualNode": { "virtualNodeName": "colorteller-vn" } } }
}"#;

const MESH_MTLS_VGW: &str = r#"{
    "spec": { "listeners": [ { "portMapping": { "port": $GATEWAY_PORT, "protocol": "http" } } ] }
}"#;

const MESH_MTLS_GWROUTE: &str = r#"{
    "spec": {
        "httpRoute": {
            "action": { "target": { "virtualService": { "virtualServiceName": $VIRTUAL_SERVICE } } },
            "match": { "prefix": "/" }
        }
    }
}"#;

/// `updates/colorteller-vn-strict-tls.json`.
const MESH_MTLS_VN_STRICT_TLS: &str = r#"{
    "spec": {
        "listeners": [
            {
                "portMapping": { "port": $PORT, "protocol": "http" },
                "tls": {
                    "mode": "STRICT",
                    "certificate": {
                        "file": {
                            "certificateChain": "$KEYS/colorteller_cert_chain.pem",
                            "privateKey": "$KEYS/colorteller_key.pem"
                        }
                    }
                }
            }
        ],
        "serviceDiscovery": { "dns": { "hostname": "127.0.0.1" } }
    }
}"#;

/// `updates/gateway-vgw-client-policy.json`.
const MESH_MTLS_VGW_CLIENT_POLICY: &str = r#"{
    "spec": {
        "listeners": [ { "portMapping": { "port": $GATEWAY_PORT, "protocol": "http" } } ],
        "backendDefaults": {
            "clientPolicy": {
                "tls": {
                    "validation": {
                        "trust": { "file": { "certificateChain": "$KEYS/ca_cert.pem" } },
                        "subjectAlternativeNames": { "match": { "exact": [ $COLOR_TELLER_SAN ] } }
                    }
                }
            }
        }
    }
}"#;

/// `updates/colorteller-vn-strict-validation.json`.
const MESH_MTLS_VN_STRICT_VALIDATION: &str = r#"{
    "spec": {
        "listeners": [
            {
                "portMapping": { "port": $PORT, "protocol": "http" },
                "tls": {
                    "mode": "STRICT",
                    "certificate": {
                        "file": {
                            "certificateChain": "$KEYS/colorteller_cert_chain.pem",
                            "privateKey": "$KEYS/colorteller_key.pem"
                        }
                    },
                    "validation": {
                        "trust": { "file": { "certificateChain": "$KEYS/ca_cert.pem" } },
                        "subjectAlternativeNames": { "match": { "exact": [ $GATEWAY_SAN ] } }
                    }
                }
            }
        ],
        "serviceDiscovery": { "dns": { "hostname": "127.0.0.1" } }
    }
}"#;

/// `updates/gateway-vgw-client-cert.json`.
const MESH_MTLS_VGW_CLIENT_CERT: &str = r#"{
    "spec": {
        "listeners": [ { "portMapping": { "port": $GATEWAY_PORT, "protocol": "http" } } ],
        "backendDefaults": {
            "clientPolicy": {
                "tls": {
                    "validation": {
                        "trust": { "file": { "certificateChain": "$KEYS/ca_cert.pem" } },
                        "subjectAlternativeNames": { "match": { "exact": [ $COLOR_TELLER_SAN ] } }
                    },
                    "certificate": {
                        "file": {
                            "certificateChain": "$KEYS/gateway_cert_chain.pem",
                            "privateKey": "$KEYS/gateway_key.pem"
                        }
                    }
                }
            }
        }
    }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn howto_mutual_tls_file_provided_step_by_step_through_the_aws_cli() {
    let domain = "appmesh-mtls.local";
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    // The walkthrough's certs.sh: one CA, and the colorteller's and the gateway's certificates
    // with their service names as SANs.
    let ca = Ca::new(&keys);
    std::fs::rename(&ca.cert, keys.join("ca_cert.pem")).unwrap();
    let colorteller_san = format!("colorteller.{domain}");
    let gateway_san = format!("gateway.{domain}");
    for (name, san) in [("colorteller", &colorteller_san), ("gateway", &gateway_san)] {
        let leaf = ca.leaf(name, &[san]);
        std::fs::rename(&leaf.cert, keys.join(format!("{name}_cert_chain.pem"))).unwrap();
        std::fs::rename(&leaf.key, keys.join(format!("{name}_key.pem"))).unwrap();
    }
    let keys_dir = keys.display().to_string();

    let server = WeftServer::start();
    let dir = tmp.path();
    let (port, gateway_port) = (free_port(), free_port());
    let (port_text, gateway_port_text) = (port.to_string(), gateway_port.to_string());
    let (_app, app_port) = sample_app("yellow");
    let service = format!("colorteller.{domain}");
    let mesh = ["--mesh-name", "ColorApp-MutualTLS"];
    let vn = [
        "--mesh-name",
        "ColorApp-MutualTLS",
        "--virtual-node-name",
        "colorteller-vn",
    ];
    let vgw = [
        "--mesh-name",
        "ColorApp-MutualTLS",
        "--virtual-gateway-name",
        "gateway-vgw",
    ];

    // Part 1 (`mesh.sh up`): plain HTTP.
    aws_appmesh(&server.addr, &["create-mesh", mesh[0], mesh[1]]).unwrap();
    cli(
        &server,
        dir,
        "create-virtual-node",
        &vn,
        &fill(MESH_MTLS_VN, &[], &[("PORT", &port_text)]),
    );
    let vs = [
        "--mesh-name",
        "ColorApp-MutualTLS",
        "--virtual-service-name",
        &service,
    ];
    cli(&server, dir, "create-virtual-service", &vs, MESH_MTLS_VS);
    cli(
        &server,
        dir,
        "create-virtual-gateway",
        &vgw,
        &fill(MESH_MTLS_VGW, &[], &[("GATEWAY_PORT", &gateway_port_text)]),
    );
    let gwroute = [
        "--mesh-name",
        "ColorApp-MutualTLS",
        "--virtual-gateway-name",
        "gateway-vgw",
        "--gateway-route-name",
        "colorteller-route",
    ];
    cli(
        &server,
        dir,
        "create-gateway-route",
        &gwroute,
        &fill(MESH_MTLS_GWROUTE, &[("VIRTUAL_SERVICE", &service)], &[]),
    );
    let colorteller = agent(
        &server.xds_addr,
        "ColorApp-MutualTLS",
        "colorteller-vn",
        &[(port, app_port)],
        "sotw",
    );
    let gateway = common::mesh::agent_with_id(
        &server.xds_addr,
        "mesh/ColorApp-MutualTLS/virtualGateway/gateway-vgw",
        &[],
        "sotw",
    );
    let answers = |status: u16| {
        move || {
            let (s, body) = through_gateway(gateway_port);
            s == status && (status != 200 || body == "yellow")
        }
    };
    wait_until(Duration::from_secs(30), answers(200));
    assert_eq!(ssl(&colorteller, "listener", "handshake"), 0, "no TLS yet");

    // Step 1: STRICT TLS on the node; the gateway originates TLS, accepting any certificate.
    let update_vn = |template: &str| {
        cli(
            &server,
            dir,
            "update-virtual-node",
            &vn,
            &fill(
                template,
                &[("GATEWAY_SAN", &gateway_san)],
                &[("PORT", &port_text), ("KEYS", &keys_dir)],
            ),
        )
    };
    let update_vgw = |template: &str, san: &str| {
        cli(
            &server,
            dir,
            "update-virtual-gateway",
            &vgw,
            &fill(
                template,
                &[("COLOR_TELLER_SAN", san)],
                &[("GATEWAY_PORT", &gateway_port_text), ("KEYS", &keys_dir)],
            ),
        )
    };
    update_vn(MESH_MTLS_VN_STRICT_TLS);
    wait_until(Duration::from_secs(30), || {
        answers(200)() && ssl(&colorteller, "listener", "handshake") > 0
    });
    assert!(ssl(&gateway, "cluster", "handshake") > 0);
    assert!(ssl(&colorteller, "listener", "no_certificate") > 0);

    // Step 2: the gateway validates the server with the wrong SAN: connection failure.
    update_vgw(MESH_MTLS_VGW_CLIENT_POLICY, &format!("bogus.{domain}"));
    wait_until(Duration::from_secs(30), || {
        answers(503)() && ssl(&gateway, "cluster", "fail_verify_san") > 0
    });

    // Step 3: the right SAN restores it.
    update_vgw(MESH_MTLS_VGW_CLIENT_POLICY, &colorteller_san);
    wait_until(Duration::from_secs(30), answers(200));

    // Step 4: the node requires a client certificate, which the gateway does not have yet.
    update_vn(MESH_MTLS_VN_STRICT_VALIDATION);
    wait_until(Duration::from_secs(30), || {
        answers(503)() && ssl(&colorteller, "listener", "fail_verify_no_cert") > 0
    });

    // Step 5: the gateway presents its certificate: mutual TLS, and the answer is back.
    update_vgw(MESH_MTLS_VGW_CLIENT_CERT, &colorteller_san);
    wait_until(Duration::from_secs(30), answers(200));
    let no_cert = ssl(&colorteller, "listener", "no_certificate");
    let handshakes = ssl(&colorteller, "listener", "handshake");
    for _ in 0..5 {
        assert_eq!(through_gateway(gateway_port), (200, "yellow".to_string()));
    }
    assert!(ssl(&colorteller, "listener", "handshake") >= handshakes);
    assert_eq!(
        ssl(&colorteller, "listener", "no_certificate"),
        no_cert,
        "every connection now carries the gateway's certificate"
    );
    assert_eq!(rejected(&[&colorteller, &gateway]), 0, "Envoy never NACKed");
}

/// `howto-ingress-gateway/mesh/colorteller-white-vn-tls.json`.
const INGRESS_WHITE_VN_TLS: &str = r#"{
    "spec": {
        "listeners": [
            {
                "healthCheck": {
                    "healthyThreshold": 2, "intervalMillis": 5000, "path": "/ping",
                    "protocol": "http", "timeoutMillis": 2000, "unhealthyThreshold": 2
                },
                "portMapping": { "port": $PORT, "protocol": "http" },
                "tls": { "mode": "STRICT", "certificate": { "acm": { "certificateArn": $CERTIFICATE_ARN } } }
            }
        ],
        "serviceDiscovery": { "dns": { "hostname": $DNS_HOSTNAME } }
    }
}"#;

/// `howto-ingress-gateway/mesh/colorgateway-vg-backendDefaults.json`.
const INGRESS_GATEWAY_VG: &str = r#"{
    "spec": {
        "listeners": [{
            "portMapping": { "port": $GATEWAY_PORT, "protocol": "http" },
            "tls": { "mode": "STRICT", "certificate": { "acm": { "certificateArn": $CERTIFICATE_ARN } } }
        }],
        "backendDefaults": {
            "clientPolicy": {
                "tls": { "validation": { "trust": { "acm": { "certificateAuthorityArns": [ $ROOT_CA_ARN ] } } } }
            }
        }
    }
}"#;

/// The walkthrough's gateway route, matching the host name its clients use.
const INGRESS_GATEWAY_ROUTE: &str = r#"{
    "spec": {
        "httpRoute": {
            "match": { "prefix": "/", "hostname": { "exact": "colors.example.com" } },
            "action": { "target": { "virtualService": { "virtualServiceName": $VIRTUAL_SERVICE } } }
        }
    }
}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn howto_ingress_gateway_tls_with_acm_certificates_from_weft_s_ca_through_the_aws_cli() {
    let server = WeftServer::start_with(&["--xds-tls"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (port, gateway_port) = (free_port(), free_port());
    let (_app, app_port) = sample_app("white");
    let certificate_arn = "arn:aws:acm:us-west-2:111122223333:certificate/0a1b2c3d";
    let root_ca_arn = "arn:aws:acm-pca:us-west-2:111122223333:certificate-authority/4e5f6a7b";
    let service = "colorteller.howto-ingress-gateway.local";

    aws_appmesh(
        &server.addr,
        &["create-mesh", "--mesh-name", "howto-ingress"],
    )
    .unwrap();
    cli(
        &server,
        dir,
        "create-virtual-node",
        &[
            "--mesh-name",
            "howto-ingress",
            "--virtual-node-name",
            "colorteller-white-vn",
        ],
        &fill(
            INGRESS_WHITE_VN_TLS,
            &[
                ("CERTIFICATE_ARN", certificate_arn),
                ("DNS_HOSTNAME", "127.0.0.1"),
            ],
            &[("PORT", &port.to_string())],
        ),
    );
    cli(
        &server,
        dir,
        "create-virtual-service",
        &[
            "--mesh-name",
            "howto-ingress",
            "--virtual-service-name",
            service,
        ],
        r#"{"spec": {"provider": {"virtualNode": {"virtualNodeName": "colorteller-white-vn"}}}}"#,
    );
    cli(
        &server,
        dir,
        "create-virtual-gateway",
        &[
            "--mesh-name",
            "howto-ingress",
            "--virtual-gateway-name",
            "colorgateway-vg",
        ],
        &fill(
            INGRESS_GATEWAY_VG,
            &[
                ("CERTIFICATE_ARN", certificate_arn),
                ("ROOT_CA_ARN", root_ca_arn),
            ],
            &[("GATEWAY_PORT", &gateway_port.to_string())],
        ),
    );
    cli(
        &server,
        dir,
        "create-gateway-route",
        &[
            "--mesh-name",
            "howto-ingress",
            "--virtual-gateway-name",
            "colorgateway-vg",
            "--gateway-route-name",
            "colorteller-route",
        ],
        &fill(INGRESS_GATEWAY_ROUTE, &[("VIRTUAL_SERVICE", service)], &[]),
    );

    // ACM stands for Weft's CA: each proxy joins with a join token and gets its certificate.
    let white = common::joined_agent(
        &server,
        "mesh/howto-ingress/virtualNode/colorteller-white-vn",
        &[(port, app_port)],
    );
    let gateway = common::joined_agent(
        &server,
        "mesh/howto-ingress/virtualGateway/colorgateway-vg",
        &[],
    );

    // A client outside the mesh trusts Weft's root (the trust bundle) and reaches the gateway
    // over HTTPS by the route's host name, which the gateway's certificate holds.
    let bundle: serde_json::Value = reqwest::get(format!("{}/weft/v1/trust-bundle", server.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bundle_file = dir.join("trust-bundle.pem");
    std::fs::write(&bundle_file, bundle["trustBundle"].as_str().unwrap()).unwrap();
    let curl = |url: &str| {
        Command::new("curl")
            .args(["-s", "-m", "5", "--cacert"])
            .arg(&bundle_file)
            .args([
                "--resolve",
                &format!("colors.example.com:{gateway_port}:127.0.0.1"),
            ])
            .arg(url)
            .output()
            .unwrap()
    };
    let https = format!("https://colors.example.com:{gateway_port}/");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = curl(&https);
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "white" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no answer over HTTPS through the gateway: {} {}\ngateway: {}\nwhite: {}\nproxy-status: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            gateway.admin("/stats?filter=ssl").unwrap_or_default(),
            white.admin("/stats?filter=ssl").unwrap_or_default(),
            common::signed_request(&server.addr, "GET", "/weft/v1/proxy-status", None, "weft")
                .await
                .text()
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // STRICT: plaintext to the gateway's listener gets no answer.
    let plain = curl(&format!("http://colors.example.com:{gateway_port}/"));
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("white"),
        "plaintext was served"
    );
    // Both hops are encrypted: the client's handshake with the gateway, the gateway's with the
    // node (validated against Weft's CA, the ACM Private CA's stand-in).
    assert!(ssl(&gateway, "listener", "handshake") > 0);
    assert!(ssl(&gateway, "cluster", "handshake") > 0);
    assert!(ssl(&white, "listener", "handshake") > 0);
    assert_eq!(ssl(&gateway, "cluster", "fail_verify_error"), 0);
    assert_eq!(rejected(&[&white, &gateway]), 0, "Envoy never NACKed");
}
