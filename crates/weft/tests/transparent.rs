//! Transparent mode, as App Mesh users ran it on ECS, EC2 and EKS: unmodified programs on
//! separate hosts (network namespaces on one segment) call each other by name, and the
//! redirection rules `weft agent` applies (`APPMESH_START_ENABLED=1`) carry their traffic
//! through both Envoys. Needs root (CI runs as root), real nftables and Envoy 1.40.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use aws_sdk_appmesh::types::{
    EgressFilter, EgressFilterType, HeaderMatchMethod, HttpRetryPolicy, HttpRoute, HttpRouteAction,
    HttpRouteHeader, HttpRouteMatch, MeshSpec, RouteSpec, WeightedTarget,
};
use common::mesh::{wait_until, Proc};
use common::netns::envoy_for_others;
use common::netns::{Lan, Netns};

const MESH: &str = "tp";
const SERVICE: &str = "colors.demo.local";
/// Not any host's address: the name resolves here and the rules redirect it before it leaves.
const SERVICE_ADDRESS: &str = "10.99.0.200";

/// `weft agent` for `node` in `ns`, redirection applied at start, Envoy as `identity`.
fn transparent_agent(ns: &Netns, xds: &str, node: &str, extra: &[(&str, &str)]) -> Proc {
    let envoy = envoy_for_others();
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_weft"));
    cmd.arg("agent")
        .env(
            "APPMESH_RESOURCE_ARN",
            format!("mesh/{MESH}/virtualNode/{node}"),
        )
        .env("APPMESH_XDS_ENDPOINT", xds)
        .env("APPMESH_START_ENABLED", "1")
        .env("ENVOY_BIN", &envoy)
        .env("ENVOY_ADMIN_ACCESS_LOG_FILE", "/dev/null")
        .env("ENVOY_CONCURRENCY", "1")
        .env("ENVOY_LOG_LEVEL", "warning")
        .env("LISTENER_DRAIN_WAIT_TIME_S", "0")
        .env("WEFT_ENVOY_STOP_GRACE_S", "2")
        .env("WEFT_NETFILTER", "nftables")
        .env("WEFT_LOG", "warn")
        .envs(extra.iter().copied())
        .stdout(Stdio::null());
    let proc = Proc(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("weft agent in {}: {e}", ns.name())),
    );
    wait_until(Duration::from_secs(30), || {
        admin(ns, "/ready").is_some_and(|r| r.trim() == "LIVE")
    });
    proc
}

/// GET on the Envoy admin of `ns` (127.0.0.1:9901 there: a local destination, never
/// redirected).
fn admin(ns: &Netns, path: &str) -> Option<String> {
    let out = ns
        .command("curl")
        .args(["-sf", "-m", "2", &format!("http://127.0.0.1:9901{path}")])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The sum of the counters of `ns`'s Envoy whose name contains every one of `parts`.
fn stat(ns: &Netns, parts: &[&str]) -> u64 {
    admin(ns, "/stats")
        .unwrap_or_default()
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum()
}

fn sample_app(ns: &Netns, name: &str) -> Proc {
    let child = ns
        .command(env!("CARGO_BIN_EXE_weft"))
        .args(["sample-app", "--name", name, "--listen", "0.0.0.0:8080"])
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("sample app: {e}"));
    Proc(child)
}

/// `curl` in `ns` fetching `url` `count` times on one command line (with `options`); the HTTP
/// code and `x-weft-app` ("-" for none) of each answer.
fn curl(
    ns: &Netns,
    url: &str,
    count: usize,
    headers: &[&str],
    options: &[&str],
) -> Vec<(String, String)> {
    let mut cmd = ns.command("curl");
    cmd.args(["-s", "-m", "5", "-w", "%{http_code} %header{x-weft-app}\\n"]);
    cmd.args(options);
    for h in headers {
        cmd.args(["-H", h]);
    }
    for _ in 0..count {
        cmd.args(["-o", "/dev/null", url]);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("curl: {e}"));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (code, app) = l.split_once(' ').unwrap_or((l, ""));
            let app = if app.is_empty() { "-" } else { app };
            (code.to_string(), app.to_string())
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The colors mesh: `red` and `blue` behind router `colors` (an even split, `x-color: blue`
/// to blue, retries on server errors), virtual service `colors.demo.local`, and `front` calling it.
async fn colors_mesh(client: &aws_sdk_appmesh::Client, egress: EgressFilterType) {
    use aws_sdk_appmesh::types::PortProtocol;
    client
        .create_mesh()
        .mesh_name(MESH)
        .spec(
            MeshSpec::builder()
                .egress_filter(
                    EgressFilter::builder()
                        .r#type(egress)
                        .build()
                        .unwrap_or_else(|e| panic!("{e}")),
                )
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    for (i, node) in [(1usize, "red"), (2, "blue")] {
        client
            .create_virtual_node()
            .mesh_name(MESH)
            .virtual_node_name(node)
            .spec(common::dns_node_spec(&Lan::v4(i), 8080))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e:?}"));
    }
    client
        .create_virtual_node()
        .mesh_name(MESH)
        .virtual_node_name("front")
        .spec(common::with_backends(
            common::dns_node_spec(&Lan::v4(0), 8080),
            &[SERVICE],
        ))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    client
        .create_virtual_router()
        .mesh_name(MESH)
        .virtual_router_name("colors")
        .spec(common::router_spec(8080, PortProtocol::Http))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let target = |node: &str, weight: i32| {
        WeightedTarget::builder()
            .virtual_node(node)
            .weight(weight)
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let route = |priority: i32, matcher: HttpRouteMatch, targets: Vec<WeightedTarget>| {
        RouteSpec::builder()
            .priority(priority)
            .http_route(
                HttpRoute::builder()
                    .r#match(matcher)
                    .action(
                        HttpRouteAction::builder()
                            .set_weighted_targets(Some(targets))
                            .build()
                            .unwrap_or_else(|e| panic!("{e}")),
                    )
                    .retry_policy(
                        HttpRetryPolicy::builder()
                            .max_retries(2)
                            .per_retry_timeout(
                                aws_sdk_appmesh::types::Duration::builder()
                                    .unit(aws_sdk_appmesh::types::DurationUnit::S)
                                    .value(2)
                                    .build(),
                            )
                            .http_retry_events("server-error")
                            .build()
                            .unwrap_or_else(|e| panic!("{e}")),
                    )
                    .build(),
            )
            .build()
    };
    let by_header = HttpRouteMatch::builder()
        .prefix("/")
        .headers(
            HttpRouteHeader::builder()
                .name("x-color")
                .r#match(HeaderMatchMethod::Exact("blue".into()))
                .build()
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .build();
    client
        .create_route()
        .mesh_name(MESH)
        .virtual_router_name("colors")
        .route_name("blue-by-header")
        .spec(route(0, by_header, vec![target("blue", 1)]))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    client
        .create_route()
        .mesh_name(MESH)
        .virtual_router_name("colors")
        .route_name("split")
        .spec(route(
            10,
            HttpRouteMatch::builder().prefix("/").build(),
            vec![target("red", 1), target("blue", 1)],
        ))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    client
        .create_virtual_service()
        .mesh_name(MESH)
        .virtual_service_name(SERVICE)
        .spec(common::service_by_router("colors"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
}

#[test]
fn unmodified_clients_reach_a_service_by_its_mesh_name_through_both_envoys() {
    let lan = Lan::new(&["front", "red", "blue"]);
    let [front, red, blue] = [&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]];
    // Names resolve through the front agent's resolver: no DNS record, no hosts entry.
    front.resolv_conf("nameserver 127.0.0.1\n");
    let server = lan.hub.within(|| {
        let server = common::WeftServer::start_with(&[
            "--xds-listen",
            &format!("{}:0", Lan::HUB),
            "--dns-listen",
            &format!("{}:0", Lan::HUB),
        ]);
        runtime().block_on(colors_mesh(&server.client(), EgressFilterType::DropAll));
        server
    });
    let _apps = [sample_app(red, "red"), sample_app(blue, "blue")];
    let identity = [
        ("APPMESH_IGNORE_UID", "65534"),
        ("APPMESH_ENABLE_IPV6", "1"),
        ("APPMESH_APP_PORTS", "8080"),
    ];
    let _agents = [
        transparent_agent(red, &server.xds_addr, "red", &identity),
        transparent_agent(blue, &server.xds_addr, "blue", &identity),
        transparent_agent(
            front,
            &server.xds_addr,
            "front",
            &[
                identity[0],
                identity[1],
                ("WEFT_AGENT_DNS_LISTEN", "127.0.0.1:53"),
                ("WEFT_AGENT_DNS_SERVER", &server.dns_addr),
                // The segment has no resolver of its own; other names are not asked here.
                ("WEFT_AGENT_DNS_UPSTREAM", "10.99.0.1:53"),
            ],
        ),
    ];
    let resolved = front.run("getent", &["ahostsv4", SERVICE]);
    assert!(
        resolved.starts_with("240.240."),
        "{SERVICE} resolves to its virtual IP: {resolved}"
    );
    let url = format!("http://{SERVICE}:8080/");

    // An even split: both colours answer, and every request succeeds.
    let answers = curl(front, &url, 40, &[], &[]);
    assert_eq!(answers.len(), 40, "{answers:?}");
    assert!(answers.iter().all(|(code, _)| code == "200"), "{answers:?}");
    let reds = answers.iter().filter(|(_, app)| app == "red").count();
    let blues = answers.iter().filter(|(_, app)| app == "blue").count();
    assert_eq!(reds + blues, 40, "{answers:?}");
    assert!(
        reds >= 5 && blues >= 5,
        "an even split, got red {reds}, blue {blues}"
    );

    // The header match sends every request to blue.
    let answers = curl(front, &url, 10, &["x-color: blue"], &[]);
    assert!(
        answers.iter().all(|(c, a)| c == "200" && a == "blue"),
        "{answers:?}"
    );

    // Retries: every second request to each app fails with 503, and the client never sees it.
    let answers = curl(front, &format!("{url}fail-every/2"), 10, &[], &[]);
    assert!(answers.iter().all(|(c, _)| c == "200"), "{answers:?}");
    assert!(
        stat(front, &["upstream_rq_retry:"]) >= 1,
        "the front Envoy retried"
    );

    // IPv6 (APPMESH_ENABLE_IPV6=1): the app's IPv6 connection is redirected to Envoy as well.
    let resolve = format!("{SERVICE}:8080:[fd99::200]");
    let answers = curl(front, &url, 5, &[], &["--resolve", &resolve]);
    assert!(
        answers
            .iter()
            .all(|(c, a)| c == "200" && (a == "red" || a == "blue")),
        "over IPv6: {answers:?}"
    );
    assert!(front
        .run("nft", &["list", "tables"])
        .contains("table ip6 weft"));

    // Python's urllib, knowing nothing of the mesh.
    let py = front
        .command("python3")
        .args([
            "-c",
            &format!(
                "import urllib.request as u; r = u.urlopen('{url}', timeout=5); \
                 print(r.status, r.headers['x-weft-app'])"
            ),
        ])
        .output()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    let printed = String::from_utf8_lossy(&py.stdout);
    assert!(
        printed.starts_with("200 red") || printed.starts_with("200 blue"),
        "{printed}{}",
        String::from_utf8_lossy(&py.stderr)
    );

    // Both sides' Envoys carried them: the front's egress to the colours, and each colour's
    // ingress.
    assert!(
        stat(front, &["cds_egress_", "upstream_rq_2xx:"]) >= 50,
        "front egress"
    );
    for ns in [red, blue] {
        assert!(
            stat(ns, &["ingress", "downstream_rq_2xx:"]) >= 5,
            "{} ingress: {}",
            ns.name(),
            admin(ns, "/stats?filter=downstream_rq_2xx").unwrap_or_default()
        );
    }
    drop(server);
}

/// Listens on `addr` inside `ns`; each connection is answered with the peer address the
/// listener saw, then closed. Runs until the namespace goes.
fn peer_echo(ns: &Netns, addr: &'static str) {
    ns.within(move || {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                if let Ok(peer) = conn.peer_addr() {
                    let _ = conn.write_all(peer.to_string().as_bytes());
                }
            }
        });
    });
}

/// Connects from `ns` to `to`: this side's address, and what the other side saw (`None` when
/// the connection was refused or closed without a word).
fn dial(ns: &Netns, to: &'static str) -> (Option<SocketAddr>, Option<String>) {
    ns.within(move || {
        let to: SocketAddr = to.parse().unwrap_or_else(|e| panic!("{to}: {e}"));
        let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_secs(3)) else {
            return (None, None);
        };
        let local = s.local_addr().ok();
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let mut seen = String::new();
        let _ = s.read_to_string(&mut seen);
        (local, (!seen.is_empty()).then_some(seen))
    })
}

#[test]
fn ssh_ignored_addresses_and_ports_bypass_envoy_and_the_egress_filter_decides_the_rest() {
    let lan = Lan::new(&["front", "red", "blue"]);
    let [front, red] = [&lan.hosts[0], &lan.hosts[1]];
    // A second address on red, in APPMESH_EGRESS_IGNORED_IP.
    red.ip(&["addr", "add", "10.99.0.9/24", "dev", "eth0"]);
    let server = lan.hub.within(|| {
        let server = common::WeftServer::start_with(&["--xds-listen", &format!("{}:0", Lan::HUB)]);
        runtime().block_on(colors_mesh(&server.client(), EgressFilterType::AllowAll));
        server
    });
    for addr in ["0.0.0.0:22", "0.0.0.0:7000", "0.0.0.0:7777", "[::]:7778"] {
        peer_echo(red, addr);
    }
    // Envoy's own traffic is let through by its group here (the other test: by its user).
    let _agent = transparent_agent(
        front,
        &server.xds_addr,
        "front",
        &[
            ("APPMESH_IGNORE_GID", "65534"),
            ("APPMESH_EGRESS_IGNORED_IP", "10.99.0.9,169.254.169.254"),
            ("APPMESH_EGRESS_IGNORED_PORTS", "7000"),
        ],
    );

    for (to, why) in [
        ("10.99.0.3:22", "ssh is never redirected"),
        ("10.99.0.3:7000", "an ignored port"),
        ("10.99.0.9:7777", "an ignored address"),
        ("[fd99::3]:7778", "IPv6 with APPMESH_ENABLE_IPV6 unset"),
    ] {
        let (local, seen) = dial(front, to);
        let local = local.unwrap_or_else(|| panic!("{to} ({why}): no connection"));
        assert_eq!(
            seen.as_deref(),
            Some(local.to_string().as_str()),
            "{to} ({why}): the upstream sees the app's own address and port"
        );
    }

    // ALLOW_ALL: a TCP connection to an address outside the mesh goes through Envoy.
    let (local, seen) = dial(front, "10.99.0.3:7777");
    let local = local.unwrap_or_else(|| panic!("no connection"));
    let seen = seen.unwrap_or_else(|| panic!("ALLOW_ALL let nothing through"));
    assert_ne!(
        seen,
        local.to_string(),
        "the upstream sees Envoy's connection, not the app's"
    );
    assert!(
        stat(front, &["passthrough", "upstream_cx_total:"]) >= 1,
        "through Envoy's passthrough"
    );

    // DROP_ALL: the same connection is refused.
    let api = server.addr.clone();
    lan.hub.within(move || {
        runtime().block_on(async move {
            let client = common::client_for(&api);
            client
                .update_mesh()
                .mesh_name(MESH)
                .spec(
                    MeshSpec::builder()
                        .egress_filter(
                            EgressFilter::builder()
                                .r#type(EgressFilterType::DropAll)
                                .build()
                                .unwrap_or_else(|e| panic!("{e}")),
                        )
                        .build(),
                )
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e:?}"));
        })
    });
    wait_until(Duration::from_secs(10), || {
        dial(front, "10.99.0.3:7777").1.is_none()
    });
    assert_eq!(dial(front, "10.99.0.3:7777").1, None, "DROP_ALL refuses it");
    // The bypasses hold under DROP_ALL too.
    let (local, seen) = dial(front, "10.99.0.3:22");
    assert_eq!(seen, local.map(|l| l.to_string()));
    drop(server);
    let _ = Command::new("true").status();
}

/// Every rule any front end holds in `ns` (comment lines carry a timestamp).
fn ruleset(ns: &Netns) -> String {
    let mut all = String::new();
    for tool in [
        "iptables-nft-save",
        "ip6tables-nft-save",
        "iptables-legacy-save",
    ] {
        all.push_str(&ns.run(tool, &[]));
    }
    all.push_str(&ns.run("nft", &["list", "ruleset"]));
    all.lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `weft agent init` in `ns` behind `wrapper` (e.g. `setpriv ...`), with App Mesh's variables
/// `vars`: its exit status and error output.
fn init(ns: &Netns, wrapper: &[&str], vars: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = ns.command("env");
    cmd.args(wrapper)
        .arg(env!("CARGO_BIN_EXE_weft"))
        .args(["agent", "init"])
        .env("WEFT_LOG", "info")
        .envs(vars.iter().copied());
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("weft agent init: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn init_refuses_bad_settings_naming_the_variable_and_leaves_no_rule_behind() {
    let ns = Netns::new("badinit");
    let before = ruleset(&ns);
    let uid = ("APPMESH_IGNORE_UID", "65534");
    for (vars, wrapper, expected) in [
        (
            vec![uid, ("APPMESH_APP_PORTS", "8080,http")],
            vec![],
            "APPMESH_APP_PORTS",
        ),
        (
            vec![uid, ("APPMESH_APP_PORTS", "99999")],
            vec![],
            "APPMESH_APP_PORTS",
        ),
        (
            vec![
                uid,
                ("APPMESH_EGRESS_IGNORED_IP", "169.254.169.254;10.0.0.1"),
            ],
            vec![],
            "APPMESH_EGRESS_IGNORED_IP",
        ),
        (
            vec![("APPMESH_IGNORE_UID", "3999999917")],
            vec![],
            "APPMESH_IGNORE_UID",
        ),
        (
            vec![("APPMESH_APP_PORTS", "8080")],
            vec![],
            "APPMESH_IGNORE_UID",
        ),
        // A host without netfilter tools.
        (
            vec![uid],
            vec!["PATH=/nonexistent"],
            "no netfilter front end",
        ),
        // A process without CAP_NET_ADMIN (root, with the capability taken away).
        (
            vec![uid],
            vec![
                "setpriv",
                "--bounding-set",
                "-net_admin",
                "--inh-caps",
                "-all",
            ],
            "CAP_NET_ADMIN",
        ),
    ] {
        let (ok, output) = init(&ns, &wrapper, &vars);
        assert!(!ok, "{vars:?} {wrapper:?}: init must fail\n{output}");
        assert!(
            output.contains(expected),
            "{vars:?} {wrapper:?}: names {expected}:\n{output}"
        );
        assert_eq!(
            ruleset(&ns),
            before,
            "{vars:?} {wrapper:?}: no rule left behind"
        );
    }
    // And with good settings it applies them, says with which front end, and cleanup undoes it.
    let (ok, output) = init(&ns, &[], &[uid, ("APPMESH_APP_PORTS", "8080")]);
    assert!(
        ok && output.contains("traffic redirection applied with nftables"),
        "{output}"
    );
    assert_ne!(ruleset(&ns), before);
    let out = ns
        .command(env!("CARGO_BIN_EXE_weft"))
        .args(["agent", "cleanup"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ruleset(&ns), before);
}

/// Keeps `f`'s future running on a thread inside `ns` until the namespace goes (the thread
/// then fails its accepts and the process ends with the test).
fn serve_in<F, Fut, T>(ns: &Netns, f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    ns.within(move || {
        std::thread::spawn(move || {
            let rt = runtime();
            rt.block_on(async move {
                let _ = tx.send(f().await);
                std::future::pending::<()>().await;
            });
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("starting a server in a namespace: {e}"))
}

#[test]
fn grpc_and_tcp_clients_reach_their_services_by_name_through_both_envoys() {
    use weft_test_support::grpc::{call, grpc_app};
    use weft_test_support::sdk::MeshApi;
    use weft_test_support::spec::{Listener, MeshSpec as Mesh, NodeSpec, ServiceSpec};

    let lan = Lan::new(&["front", "rpc", "echo"]);
    let [front, rpc, echo] = [&lan.hosts[0], &lan.hosts[1], &lan.hosts[2]];
    // The apps listen on loopback of their hosts, as App Mesh apps behind their Envoy do.
    let grpc_port = serve_in(rpc, || async { grpc_app("rpc").await.port });
    let tcp_port = serve_in(echo, || async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        tokio::spawn(async move {
            while let Ok((mut conn, peer)) = listener.accept().await {
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = [0u8; 64];
                    if let Ok(n) = conn.read(&mut buf).await {
                        let reply = format!("{} from {peer}", String::from_utf8_lossy(&buf[..n]));
                        let _ = conn.write_all(reply.as_bytes()).await;
                    }
                });
            }
        });
        port
    });
    let server = lan.hub.within(move || {
        let server = common::WeftServer::start_with(&["--xds-listen", &format!("{}:0", Lan::HUB)]);
        runtime().block_on(async {
            let mesh = MeshApi::create(&server.client(), MESH, Mesh::default()).await;
            mesh.node(
                "rpc",
                NodeSpec::new()
                    .listener(Listener::grpc(grpc_port))
                    .dns(Lan::v4(1)),
            )
            .await;
            mesh.node(
                "echo",
                NodeSpec::new()
                    .listener(Listener::tcp(tcp_port))
                    .dns(Lan::v4(2)),
            )
            .await;
            mesh.node(
                "front",
                NodeSpec::client(&["rpc.demo.local", "echo.demo.local"]),
            )
            .await;
            mesh.service("rpc.demo.local", ServiceSpec::by_node("rpc"))
                .await;
            mesh.service("echo.demo.local", ServiceSpec::by_node("echo"))
                .await;
        });
        server
    });
    let uid = ("APPMESH_IGNORE_UID", "65534");
    let grpc_ports = grpc_port.to_string();
    let tcp_ports = tcp_port.to_string();
    let _agents = [
        transparent_agent(
            rpc,
            &server.xds_addr,
            "rpc",
            &[uid, ("APPMESH_APP_PORTS", &grpc_ports)],
        ),
        transparent_agent(
            echo,
            &server.xds_addr,
            "echo",
            &[uid, ("APPMESH_APP_PORTS", &tcp_ports)],
        ),
        transparent_agent(front, &server.xds_addr, "front", &[uid]),
    ];

    // A gRPC client (HTTP/2) dialling the service's address and name, nothing else.
    let answer = front.within(move || {
        runtime().block_on(async move {
            let channel = tonic::transport::Endpoint::from_shared(format!(
                "http://{SERVICE_ADDRESS}:{grpc_port}"
            ))
            .unwrap_or_else(|e| panic!("{e}"))
            .origin(
                format!("http://rpc.demo.local:{grpc_port}")
                    .parse()
                    .unwrap_or_else(|e| panic!("{e}")),
            )
            .connect_lazy();
            call(
                &channel,
                "/weft.Colors/Get",
                &[],
                Some(Duration::from_secs(5)),
            )
            .await
        })
    });
    let answer = answer.unwrap_or_else(|status| panic!("gRPC through the mesh: {status}"));
    assert_eq!(answer.app, "rpc");
    assert_eq!(answer.path, "/weft.Colors/Get");

    // A TCP client: the app sees its own host's Envoy as the peer, so both Envoys carried it.
    let reply = front.within(move || {
        let to: SocketAddr = format!("{SERVICE_ADDRESS}:{tcp_port}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("tcp through the mesh: {e}"));
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        s.write_all(b"ping").unwrap_or_else(|e| panic!("{e}"));
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    });
    assert!(reply.starts_with("ping from 127.0.0.1:"), "{reply:?}");

    assert!(
        stat(front, &["rpc", "upstream_rq_2xx:"]) >= 1,
        "front egress gRPC"
    );
    assert!(
        stat(front, &["echo", "upstream_cx_total:"]) >= 1,
        "front egress TCP"
    );
    assert!(
        stat(rpc, &["ingress", "downstream_rq_2xx:"]) >= 1,
        "rpc ingress"
    );
    assert!(
        stat(echo, &["ingress", "downstream_cx_total:"]) >= 1,
        "echo ingress"
    );
    drop(server);
}
