//! Several `weft server` replicas on one real 3-member etcd cluster: concurrent writers through
//! both (the AWS SDK) never lose an update, never both win a name, never pass a quota, and
//! every acknowledged write is read back from both; real Envoys (through `weft agent` given
//! both replicas' xDS addresses) keep serving when the replica they are connected to is killed
//! with SIGKILL, reconnect to the other, receive identical versions (no listener rebuilt), and
//! get a route change made after the kill; and an agent given both replicas' CA endpoints
//! gets its workload certificate from the second when the first is dead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::failover::{busiest, ColorsMesh, OpenLoad};
use common::WeftServer;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use weft_agent::identity::{CaServer, IdentityAgent, IdentityConfig, JoinToken, TokenSource};
use weft_store_etcd::testing::EtcdCluster;
use weft_test_support::sdk::MeshApi;
use weft_test_support::spec::{MeshSpec, NodeSpec, RouteSpec};

/// Replicas of one Weft installation on one etcd cluster: the same store and prefix, the same
/// key-encryption key file (access keys' secrets are sealed under it), the first replica's
/// administrator credentials given to the others (as an operator copies them).
struct Replicas {
    etcd: EtcdCluster,
    servers: Vec<Option<WeftServer>>,
    _dir: tempfile::TempDir,
}

impl Replicas {
    async fn start(n: usize, extra: &[&str]) -> Replicas {
        let etcd = EtcdCluster::start(3).await;
        let dir = tempfile::tempdir().unwrap();
        let kek = dir.path().join("auth-kek");
        let store = etcd.store_url();
        let mut servers = Vec::new();
        for i in 0..n {
            let data: PathBuf = dir.path().join(format!("replica-{i}"));
            std::fs::create_dir_all(&data).unwrap();
            if i > 0 {
                std::fs::copy(
                    dir.path().join("replica-0").join("admin-credentials"),
                    data.join("admin-credentials"),
                )
                .unwrap();
            }
            let mut args = vec![
                "--store",
                store.as_str(),
                "--etcd-prefix",
                "/weft-test/",
                "--auth-kek-file",
                kek.to_str().unwrap(),
            ];
            args.extend_from_slice(extra);
            servers.push(Some(WeftServer::start_in(&data, &args)));
        }
        Replicas {
            etcd,
            servers,
            _dir: dir,
        }
    }

    fn get(&self, i: usize) -> &WeftServer {
        self.servers[i].as_ref().unwrap()
    }

    /// `A,B`: every live replica's xDS address, as `APPMESH_XDS_ENDPOINT` lists them.
    fn xds_list(&self) -> String {
        let all: Vec<&str> = self
            .servers
            .iter()
            .flatten()
            .map(|s| s.xds_addr.as_str())
            .collect();
        all.join(",")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_through_two_replicas_lose_nothing_and_never_both_win() {
    let replicas = Replicas::start(2, &["--quota", "virtual-nodes-per-mesh=25"]).await;
    let (a, b) = (replicas.get(0).client(), replicas.get(1).client());
    MeshApi::create(&a, "apps", MeshSpec::new()).await;
    MeshApi::create(&b, "full", MeshSpec::new()).await;

    // Both replicas are asked for the same 20 names at once: one create wins each.
    let mut writers = Vec::new();
    for i in 0..20 {
        for client in [a.clone(), b.clone()] {
            writers.push(tokio::spawn(async move {
                let r = client
                    .create_virtual_node()
                    .mesh_name("apps")
                    .virtual_node_name(format!("node-{i}"))
                    .spec(common::dns_node_spec(&format!("node-{i}.apps.local"), 8080))
                    .send()
                    .await;
                (i, r.map_err(|e| common::error_code(&e)))
            }));
        }
    }
    let mut won = BTreeSet::new();
    let mut conflicts = 0;
    for w in writers {
        match w.await.unwrap() {
            (i, Ok(_)) => assert!(won.insert(i), "node-{i} created twice"),
            (_, Err(code)) => {
                assert_eq!(code, "ConflictException");
                conflicts += 1;
            }
        }
    }
    assert_eq!((won.len(), conflicts), (20, 20));

    // 40 different nodes for a mesh whose quota is 25: exactly 25 acknowledged.
    let mut writers = Vec::new();
    for i in 0..40 {
        let client = if i % 2 == 0 { a.clone() } else { b.clone() };
        writers.push(tokio::spawn(async move {
            let r = client
                .create_virtual_node()
                .mesh_name("full")
                .virtual_node_name(format!("n-{i}"))
                .spec(common::dns_node_spec("n.full.local", 8080))
                .send()
                .await;
            (i, r.map_err(|e| common::error_code(&e)))
        }));
    }
    let mut acknowledged = Vec::new();
    for w in writers {
        match w.await.unwrap() {
            (i, Ok(_)) => acknowledged.push(format!("n-{i}")),
            (_, Err(code)) => assert_eq!(code, "LimitExceededException"),
        }
    }
    assert_eq!(acknowledged.len(), 25, "the quota holds across replicas");

    // 30 updates of one node through both: every acknowledged update read the one before.
    let mut writers = Vec::new();
    for i in 0..30 {
        let client = if i % 2 == 0 { a.clone() } else { b.clone() };
        writers.push(tokio::spawn(async move {
            client
                .update_virtual_node()
                .mesh_name("apps")
                .virtual_node_name("node-0")
                .spec(common::dns_node_spec(&format!("v{i}.apps.local"), 8080))
                .send()
                .await
                .map(|o| o.virtual_node.unwrap().metadata.unwrap().version)
                .map_err(|e| common::error_code(&e))
        }));
    }
    let mut versions = Vec::new();
    for w in writers {
        versions.push(w.await.unwrap().expect("an update through either replica"));
    }
    versions.sort_unstable();
    assert_eq!(versions, (2..=31).collect::<Vec<i64>>(), "no lost update");

    // Every acknowledged write is read back from both replicas.
    for client in [&a, &b] {
        let listed = client
            .list_virtual_nodes()
            .mesh_name("full")
            .send()
            .await
            .unwrap();
        let mut names: Vec<String> = listed
            .virtual_nodes
            .iter()
            .map(|r| r.virtual_node_name.clone())
            .collect();
        names.sort();
        acknowledged.sort();
        assert_eq!(names, acknowledged);
        let node = client
            .describe_virtual_node()
            .mesh_name("apps")
            .virtual_node_name("node-0")
            .send()
            .await
            .unwrap()
            .virtual_node
            .unwrap();
        assert_eq!(node.metadata.unwrap().version, 31);
    }
    drop(replicas.etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn envoys_fail_over_to_the_other_replica_without_a_failed_request_or_a_rebuilt_listener() {
    let mut replicas = Replicas::start(2, &[]).await;
    let xds = replicas.xds_list();
    let api = MeshApi::create(&replicas.get(0).client(), "apps", MeshSpec::new()).await;
    let mesh = ColorsMesh::start(&[api], &xds).await;

    // The replica the most proxies are connected to is the one killed.
    let (victim, moving) = busiest([replicas.get(0), replicas.get(1)]).await;
    let survivor = 1 - victim;
    let before = mesh.rebuilds();

    let load = OpenLoad::start(mesh.front.clone());
    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    replicas.servers[victim].as_mut().unwrap().kill9();
    replicas.servers[victim] = None;
    let survivor_server = replicas.get(survivor);
    mesh.wait_moved(
        survivor_server,
        &moving,
        killed_at,
        "the other replica",
        &before,
    )
    .await;

    // A route change made after the kill, through the survivor, reaches the Envoys.
    let api = MeshApi::existing(&survivor_server.client(), "apps");
    api.update_route("colors", "main", RouteSpec::split(&[("blue", 1)]))
        .await;
    mesh.wait_answered_by("blue");
    load.finish_without_a_failure();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_is_ready_while_etcd_answers_and_not_ready_with_a_reason_once_etcd_is_down() {
    let mut replicas = Replicas::start(1, &[]).await;
    let readiness = |addr: String| async move {
        let response = reqwest::get(format!("{addr}/readyz")).await.unwrap();
        let status = response.status().as_u16();
        (status, response.json::<serde_json::Value>().await.unwrap())
    };
    let addr = replicas.get(0).addr.clone();
    let (status, body) = readiness(addr.clone()).await;
    assert_eq!(status, 200, "{body}");
    for member in 0..3 {
        replicas.etcd.kill(member);
    }
    let (status, body) = readiness(addr.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["ready"], serde_json::json!(false));
    assert!(
        body["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("store"),
        "{body}"
    );
    // Back once etcd is: ready again, without a restart.
    replicas.etcd.restart_all().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readiness(addr.clone()).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready 30 s after etcd came back: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_stays_200_naming_the_unreachable_store_while_etcd_is_down() {
    let mut replicas = Replicas::start(1, &[]).await;
    let get = |addr: String, path: &'static str| async move {
        let response = reqwest::get(format!("{addr}{path}")).await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    };
    let addr = replicas.get(0).addr.clone();
    assert_eq!(
        get(addr.clone(), "/healthz").await,
        (200, "ok\n".to_string())
    );
    for member in 0..3 {
        replicas.etcd.kill(member);
    }
    // Liveness holds (a restart cannot bring etcd back) and says why the
    // store does not serve; readiness takes the replica out.
    for _ in 0..2 {
        let (status, body) = get(addr.clone(), "/healthz").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("unreachable") && body.contains("etcd"),
            "{body}"
        );
    }
    assert_eq!(get(addr.clone(), "/readyz").await.0, 503);
    replicas.etcd.restart_all().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(addr.clone(), "/healthz").await;
        if (status, body.as_str()) == (200, "ok\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "healthz still reports the outage 30 s after etcd came back: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_s_certificate_request_skips_a_dead_replica_and_is_answered_by_the_next() {
    let mut replicas = Replicas::start(2, &[]).await;
    let first = replicas.get(0).addr.clone();
    let api = MeshApi::create(&replicas.get(0).client(), "apps", MeshSpec::new()).await;
    api.node("red", NodeSpec::http("red.apps.local", 8080))
        .await;
    // The token is made on the first replica; the shared store holds it for both, as it holds
    // the one CA root.
    let token = common::join_token(&first, "mesh/apps/virtualNode/red", "1h");
    let bundle = common::certs::trust_bundle(&first).await;
    replicas.servers[0].as_mut().unwrap().kill9();
    replicas.servers[0] = None;

    // The agent's own join, the dead replica's CA endpoint listed first (as
    // `--ca-server http://A,http://B` gives them).
    let ca_server = CaServer::parse(&format!("{first},{}", replicas.get(1).addr)).unwrap();
    assert_eq!(
        ca_server.authority(),
        first.trim_start_matches("http://"),
        "the dead replica is tried first"
    );
    let config = IdentityConfig {
        token: TokenSource::Value(JoinToken::parse(&token).unwrap()),
        ca_server,
    };
    let agent = IdentityAgent::new(config, "mesh/apps/virtualNode/red".to_string());
    let mut credentials = agent.credentials();
    let running = tokio::spawn(agent.run());
    let issued = tokio::time::timeout(
        Duration::from_secs(30),
        credentials.wait_for(Option::is_some),
    )
    .await
    .expect("no certificate 30 s after joining")
    .unwrap()
    .clone()
    .unwrap();
    running.abort();

    assert_eq!(
        issued.spiffe_id,
        "spiffe://weft.local/mesh/apps/virtualNode/red"
    );
    assert_eq!(issued.trust_bundle.trim(), bundle.trim());
    // Signed by the root both replicas share (rustls-webpki, as a peer's TLS checks it).
    let leaf = CertificateDer::from_pem_slice(issued.certificate.as_bytes()).unwrap();
    let roots: Vec<CertificateDer> = CertificateDer::pem_slice_iter(bundle.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let anchors: Vec<_> = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap())
        .collect();
    webpki::EndEntityCert::try_from(&leaf)
        .unwrap()
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .unwrap();
}
