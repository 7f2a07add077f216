//! Unit tests of the stream state machines (no I/O).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest as XdsDeltaDiscoveryRequest,
    DeltaDiscoveryResponse as XdsDeltaDiscoveryResponse, DiscoveryResponse as XdsDiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as XdsRpcStatus;
use prost::Message;

use crate::test_helpers::*;
use crate::wire::Encode;
use crate::*;

const L: &str = LISTENER_TYPE_URL;
const R: &str = ROUTE_TYPE_URL;
const C: &str = CLUSTER_TYPE_URL;
const E: &str = ENDPOINT_TYPE_URL;

/// A snapshot: listener `ingress` → route `local` → EDS cluster `to`, plus EDS clusters `extra`.
fn snap(to: &str, extra: &[&str], endpoint_port: u16) -> Arc<Snapshot> {
    let mut clusters = vec![eds_cluster(to)];
    let mut cla = vec![load_assignment(to, endpoint_port)];
    for e in extra {
        clusters.push(eds_cluster(e));
        cla.push(load_assignment(e, endpoint_port));
    }
    Arc::new(
        Snapshot::from_resources(
            vec![http_listener("ingress", 10000, "local")],
            vec![route_to("local", to)],
            clusters,
            cla,
        )
        .unwrap(),
    )
}

/// What Envoy decodes of SotW `responses`.
fn sotw(responses: Vec<SotwResponse>) -> Vec<XdsDiscoveryResponse> {
    let decode = |r: SotwResponse| XdsDiscoveryResponse::decode(&*r.encode_to_vec()).unwrap();
    responses.into_iter().map(decode).collect()
}

/// What Envoy decodes of delta `responses`.
fn delta(responses: Vec<DeltaResponse>) -> Vec<XdsDeltaDiscoveryResponse> {
    let decode = |r: DeltaResponse| XdsDeltaDiscoveryResponse::decode(&*r.encode_to_vec()).unwrap();
    responses.into_iter().map(decode).collect()
}

fn names(r: &XdsDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(resource_name).collect()
}

fn ack(
    r: &XdsDiscoveryResponse,
    names: &[&str],
) -> envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest {
    sotw_request(&r.type_url, names, &r.version_info, &r.nonce)
}

fn synced(stream: &SotwStream, snapshot: &Snapshot) -> bool {
    stream.status().is_synced_to(snapshot.version())
}

#[test]
fn test_wait_for_snapshot() {
    let mut s = SotwStream::new(&node("n"), "k");
    assert!(sotw(s.handle_request(sotw_request(C, &[], "", ""))).is_empty());
    assert!(sotw(s.handle_request(sotw_request(L, &[], "", ""))).is_empty());
    assert_eq!(s.status().rollout, RolloutPhase::Waiting);
    let a = snap("blue", &[], 1);
    let out = sotw(s.handle_snapshot_update(a.clone()));
    // Clusters first; listeners wait for the clusters' ACK.
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].type_url, C);
    assert_eq!(names(&out[0]), vec!["blue"]);
}

#[test]
fn test_sotw_ack() {
    let mut s = SotwStream::new(&node("n"), "k");
    let a = snap("blue", &[], 1);
    assert!(sotw(s.handle_snapshot_update(a.clone())).is_empty());
    let mut envoy = FakeSotwEnvoy::default();
    envoy.connect(&mut s);
    assert!(synced(&s, &a));
    let status = s.status();
    for t in [C, E, L, R] {
        let ts = &status.types[t];
        assert!(ts.acked_version.is_some(), "{t} not acked");
        assert_eq!(ts.acked_version, ts.sent_version);
        assert!(ts.pending_nonce.is_none());
    }
    assert_eq!(status.nack_count, 0);
    // Order as Envoy needs it: clusters, endpoints, listeners, routes.
    let order: Vec<&str> = envoy.log.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(order, vec![C, E, L, R]);
    // An equal snapshot (new Arc, same content) sends nothing.
    assert!(sotw(s.handle_snapshot_update(snap("blue", &[], 1))).is_empty());
}

#[test]
fn test_stale_nonce_ignored() {
    let mut s = SotwStream::new(&node("n"), "k");
    s.handle_snapshot_update(snap("blue", &["green"], 1));
    let cds = sotw(s.handle_request(sotw_request(C, &[], "", ""))).remove(0);
    // An EDS request with a nonce we never sent for EDS: stale, names not recorded.
    assert!(sotw(s.handle_request(sotw_request(E, &["blue"], "", "99"))).is_empty());
    assert!(s.status().types[E].subscribed.is_empty());
    // A CDS request carrying an older nonce (not the latest) is ignored too.
    assert!(sotw(s.handle_request(sotw_request(C, &[], "", "0"))).is_empty());
    assert!(s.status().types[C].acked_version.is_none());
    // The current nonce counts.
    s.handle_request(ack(&cds, &[]));
    assert_eq!(
        s.status().types[C].acked_version.as_deref(),
        Some(cds.version_info.as_str())
    );
    let eds = sotw(s.handle_request(sotw_request(E, &["blue", "green"], "", "")));
    assert_eq!(names(&eds[0]), vec!["blue", "green"]);
}

#[test]
fn test_lds_nack_not_resent() {
    let mut s = SotwStream::new(&node("n"), "k");
    let a = snap("blue", &[], 1);
    s.handle_snapshot_update(a.clone());
    let mut envoy = FakeSotwEnvoy::default();
    envoy.connect(&mut s);
    assert!(synced(&s, &a));
    // A new listener Envoy will reject.
    let mut bad_listener = http_listener("ingress", 10000, "local");
    bad_listener.stat_prefix = "bad".into();
    let b = Arc::new(
        Snapshot::from_resources(
            vec![bad_listener],
            vec![route_to("local", "blue")],
            vec![eds_cluster("blue")],
            vec![load_assignment("blue", 1)],
        )
        .unwrap(),
    );
    let out = sotw(s.handle_snapshot_update(b.clone()));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].type_url, L);
    let lds = &out[0];
    let mut nack = sotw_request(L, &[], &envoy.accepted_version(L), &lds.nonce);
    nack.error_detail = Some(XdsRpcStatus {
        code: 13,
        message: "bad listener".into(),
        details: vec![],
    });
    assert!(
        sotw(s.handle_request(nack)).is_empty(),
        "NACKed version resent"
    );
    let st = s.status();
    assert_eq!(st.nack_count, 1);
    let last = st.last_nack.unwrap();
    assert_eq!(last.type_url, L);
    assert_eq!(last.version, lds.version_info);
    assert_eq!(last.message, "bad listener");
    assert_eq!(st.types[L].acked_version, envoy.versions_of(L));
    // The rollout holds: no cleanup after a NACK.
    assert_eq!(st.rollout, RolloutPhase::Routes);
    // Same content again: still not resent; a newer snapshot is.
    assert!(sotw(s.handle_snapshot_update(b.clone())).is_empty());
    let c = snap("blue", &[], 2);
    let out = sotw(s.handle_snapshot_update(c.clone()));
    envoy.process(&mut s, out);
    assert!(synced(&s, &c));
}

#[test]
fn test_eds_snapshot_update_during_ack() {
    let mut s = SotwStream::new(&node("n"), "k");
    s.handle_snapshot_update(snap("blue", &[], 1));
    let cds = sotw(s.handle_request(sotw_request(C, &[], "", ""))).remove(0);
    let eds1 = sotw(s.handle_request(sotw_request(E, &["blue"], "", ""))).remove(0);
    // Endpoints change while EDS response 1 is in flight: nothing more for EDS yet.
    let out = sotw(s.handle_snapshot_update(snap("blue", &[], 2)));
    assert!(
        out.iter().all(|r| r.type_url != E),
        "second EDS while one in flight"
    );
    // The ACK of response 1 brings the newer endpoints at once.
    let out = sotw(s.handle_request(ack(&eds1, &["blue"])));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].type_url, E);
    assert_ne!(out[0].version_info, eds1.version_info);
    assert_eq!(
        s.status().types[E].acked_version.as_deref(),
        Some(eds1.version_info.as_str())
    );
    // The CDS ACK (cluster unchanged) then lets listeners go.
    let _ = cds;
}

#[test]
fn test_make_before_break_order() {
    let mut s = SotwStream::new(&node("n"), "k");
    let a = snap("blue", &[], 1);
    s.handle_snapshot_update(a.clone());
    let mut envoy = FakeSotwEnvoy::default();
    envoy.connect(&mut s);
    assert!(synced(&s, &a));
    envoy.log.clear();

    // A → B: route moves from blue to green.
    let b = snap("green", &[], 1);
    let out = sotw(s.handle_snapshot_update(b.clone()));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].type_url, C);
    assert_eq!(names(&out[0]), vec!["blue", "green"], "phase 1: union");
    envoy.process(&mut s, out);
    assert!(synced(&s, &b));
    let log: Vec<(&str, Vec<&str>)> = envoy
        .log
        .iter()
        .map(|(t, n)| (t.as_str(), n.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        log,
        vec![
            (C, vec!["blue", "green"]),
            (E, vec!["blue", "green"]),
            (R, vec!["local"]),
            (C, vec!["green"]),
            (E, vec!["green"]),
        ]
    );
    // Every route Envoy accepted at any time pointed at a cluster it had: checked by replay.
    assert_eq!(envoy.accepted[C].len(), 1);

    // B → C mid-way: C arrives while B's clusters are in flight; rollout continues to C and
    // never removes a cluster before routes stop using it.
    envoy.log.clear();
    let out_b2 = sotw(s.handle_snapshot_update(snap("blue", &[], 1)));
    assert_eq!(names(&out_b2[0]), vec!["blue", "green"]);
    let c = snap("red", &[], 1);
    assert!(
        sotw(s.handle_snapshot_update(c.clone())).is_empty(),
        "CDS in flight"
    );
    envoy.process(&mut s, out_b2);
    assert!(synced(&s, &c));
    let cds_sets: Vec<Vec<String>> = envoy
        .log
        .iter()
        .filter(|(t, _)| t == C)
        .map(|(_, n)| n.clone())
        .collect();
    assert_eq!(
        cds_sets,
        vec![
            vec!["blue".to_string(), "green".to_string()],
            vec!["blue".to_string(), "green".to_string(), "red".to_string()],
            vec!["red".to_string()],
        ]
    );
    let routes: Vec<&(String, Vec<String>)> = envoy.log.iter().filter(|(t, _)| t == R).collect();
    assert_eq!(routes.len(), 1, "routes switched once, straight to C");
}

#[test]
fn test_cds_nack_holds_routes() {
    let mut s = SotwStream::new(&node("n"), "k");
    let a = snap("blue", &[], 1);
    s.handle_snapshot_update(a.clone());
    let mut envoy = FakeSotwEnvoy::default();
    envoy.connect(&mut s);
    envoy.reject = Box::new(|r| (r.type_url == C).then(|| "bad cluster".to_string()));
    envoy.log.clear();
    let out = sotw(s.handle_snapshot_update(snap("green", &[], 1)));
    envoy.process(&mut s, out);
    let st = s.status();
    assert_eq!(st.nack_count, 1);
    assert_eq!(st.rollout, RolloutPhase::Clusters);
    // Routes never move to a cluster Envoy refused.
    assert!(envoy.log.iter().all(|(t, _)| t == C), "{:?}", envoy.log);
    assert_eq!(envoy.log.len(), 1, "NACKed CDS resent");
}

fn delta_request(
    type_url: &str,
    subscribe: &[&str],
    unsubscribe: &[&str],
    nonce: &str,
) -> XdsDeltaDiscoveryRequest {
    XdsDeltaDiscoveryRequest {
        node: Some(node("n")),
        type_url: type_url.to_string(),
        resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        resource_names_unsubscribe: unsubscribe.iter().map(|s| s.to_string()).collect(),
        response_nonce: nonce.to_string(),
        ..XdsDeltaDiscoveryRequest::default()
    }
}

#[test]
fn test_delta_initial_resource_versions() {
    let a = snap("blue", &["green"], 1);
    let mut s = DeltaStream::new(&node("n"), "k");
    s.handle_snapshot_update(a.clone());
    let clusters = a.resources(C).unwrap();
    let mut initial = HashMap::new();
    initial.insert(
        "blue".to_string(),
        clusters.get("blue").unwrap().version.clone(),
    );
    initial.insert("green".to_string(), "stale".to_string());
    initial.insert("gone".to_string(), "v0".to_string());
    let mut req = delta_request(C, &[], &[], "");
    req.initial_resource_versions = initial;
    let out = delta(s.handle_request(req));
    assert_eq!(out.len(), 1);
    // Only the difference: green; "gone" is kept during make-before-break...
    let sent: Vec<&str> = out[0].resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(sent, vec!["green"]);
    assert!(out[0].removed_resources.is_empty());
    let out = delta(s.handle_request(delta_request(C, &[], &[], &out[0].nonce)));
    assert!(out.is_empty());
    // ...and removed once routes are switched.
    let eds = delta(s.handle_request(delta_request(E, &["blue", "green"], &[], ""))).remove(0);
    assert_eq!(eds.resources.len(), 2);
    s.handle_request(delta_request(E, &[], &[], &eds.nonce));
    let lds = delta(s.handle_request(delta_request(L, &[], &[], ""))).remove(0);
    s.handle_request(delta_request(L, &[], &[], &lds.nonce));
    let rds = delta(s.handle_request(delta_request(R, &["local"], &[], ""))).remove(0);
    let out = delta(s.handle_request(delta_request(R, &[], &[], &rds.nonce)));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].type_url, C);
    assert!(out[0].resources.is_empty());
    assert_eq!(out[0].removed_resources, vec!["gone".to_string()]);
    s.handle_request(delta_request(C, &[], &[], &out[0].nonce));
    assert!(s.status().is_synced_to(a.version()));
}

#[test]
fn test_delta_subscribe_unsubscribe() {
    let a = snap("blue", &["green"], 1);
    let mut s = DeltaStream::new(&node("n"), "k");
    s.handle_snapshot_update(a.clone());
    let out = delta(s.handle_request(delta_request(E, &["blue"], &[], "")));
    assert_eq!(out[0].resources.len(), 1);
    assert_eq!(out[0].resources[0].name, "blue");
    assert!(delta(s.handle_request(delta_request(E, &[], &[], &out[0].nonce))).is_empty());
    let out = delta(s.handle_request(delta_request(E, &["green"], &[], "")));
    let sent: Vec<&str> = out[0].resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(sent, vec!["green"], "only the newly subscribed resource");
    s.handle_request(delta_request(E, &[], &[], &out[0].nonce));
    assert!(delta(s.handle_request(delta_request(E, &[], &["blue"], ""))).is_empty());
    assert_eq!(s.status().types[E].subscribed, vec!["green".to_string()]);
    // blue's endpoints change: not subscribed any more, nothing sent.
    let b = snap("blue", &["green"], 1);
    let mut with_new_blue: Vec<Resource> = Vec::new();
    for t in b.type_urls() {
        for r in b.resources(t).unwrap().values() {
            if t == E && r.name == "blue" {
                with_new_blue.push(Resource::from_message("blue", load_assignment("blue", 7)));
            } else {
                with_new_blue.push((**r).clone());
            }
        }
    }
    let out =
        delta(s.handle_snapshot_update(Arc::new(Snapshot::from_typed(with_new_blue).unwrap())));
    assert!(out.iter().all(|r| r.type_url != E));
    // Wildcard CDS: a first request with no names gets everything.
    let out = delta(s.handle_request(delta_request(C, &[], &[], "")));
    assert_eq!(out[0].resources.len(), 2);
}

#[test]
fn test_snapshot_versions_are_content_derived() {
    let a1 = snap("blue", &[], 1);
    let a2 = snap("blue", &[], 1);
    let b = snap("blue", &[], 2);
    assert_eq!(a1.version(), a2.version());
    assert_ne!(a1.version(), b.version());
    assert_eq!(a1.type_version(C), b.type_version(C));
    assert_ne!(a1.type_version(E), b.type_version(E));
    let dup = Snapshot::from_resources(
        vec![],
        vec![],
        vec![eds_cluster("x"), eds_cluster("x")],
        vec![],
    );
    assert!(matches!(dup, Err(XdsError::DuplicateResource { .. })));
}

#[tokio::test]
async fn test_cache_coalesces() {
    let cache = SnapshotCache::new();
    let mut rx = cache.watch("k");
    assert!(rx.borrow_and_update().is_none());
    for port in 1..50 {
        cache.set_snapshot("k", snap("blue", &[], port));
    }
    rx.changed().await.unwrap();
    let seen = rx.borrow_and_update().clone().unwrap();
    assert_eq!(seen.version(), snap("blue", &[], 49).version());
    assert!(!rx.has_changed().unwrap());
    assert_eq!(cache.keys(), vec!["k".to_string()]);
}

#[test]
fn test_heldset_merge_walks() {
    use crate::rollout::{Held, HeldSet};
    let a = snap("blue", &["green", "red"], 1);
    let clusters: Vec<Arc<Resource>> = a.resources(C).unwrap().values().cloned().collect();
    // Held: blue (same Arc), green (only name and version known, same version), red at an
    // older version, and "gone", which the items do not have.
    let green = &clusters[1];
    let held = HeldSet::from_unsorted(vec![
        Held::Known(Box::new(("gone".into(), "v0".into()))),
        Held::Sent(clusters[0].clone()),
        Held::Known(Box::new((green.name.clone(), green.version.clone()))),
        Held::Known(Box::new(("red".into(), "old".into()))),
    ]);
    let found: Vec<(String, Option<bool>)> = held
        .lookup(clusters.iter())
        .map(|(r, h)| (r.name.clone(), h.map(|h| h.is(r))))
        .collect();
    assert_eq!(
        found,
        vec![
            ("blue".to_string(), Some(true)),
            ("green".to_string(), Some(true)),
            ("red".to_string(), Some(false)),
        ]
    );
    let refs: Vec<&Arc<Resource>> = clusters.iter().collect();
    let extra: Vec<&str> = held.not_in(&refs).iter().map(|h| h.name()).collect();
    assert_eq!(extra, vec!["gone"]);
    // A later entry of a name replaces an earlier one.
    let dup = HeldSet::from_unsorted(vec![
        Held::Known(Box::new(("x".into(), "1".into()))),
        Held::Known(Box::new(("x".into(), "2".into()))),
    ]);
    assert_eq!(dup.len(), 1);
    assert_eq!(dup.iter().next().unwrap().version(), "2");
}

#[test]
fn test_only_canonical_nonces_match() {
    use crate::rollout::parse_nonce;
    assert_eq!(parse_nonce("1"), Some(1));
    assert_eq!(parse_nonce("42"), Some(42));
    for bad in ["", "0", "01", "+1", "-1", "1a", " 1"] {
        assert_eq!(parse_nonce(bad), None, "{bad:?}");
    }
    // A SotW ACK carrying "01" for nonce "1" is not the latest nonce: stale, ignored.
    let mut s = SotwStream::new(&node("n"), "k");
    s.handle_snapshot_update(snap("blue", &[], 1));
    let cds = sotw(s.handle_request(sotw_request(C, &[], "", ""))).remove(0);
    assert_eq!(cds.nonce, "1");
    assert!(sotw(s.handle_request(sotw_request(C, &[], &cds.version_info, "01"))).is_empty());
    assert!(s.status().types[C].acked_version.is_none());
    s.handle_request(ack(&cds, &[]));
    assert_eq!(
        s.status().types[C].acked_version.as_deref(),
        Some(cds.version_info.as_str())
    );
}

#[test]
fn test_delta_nack_restores_acked_versions() {
    let mut s = DeltaStream::new(&node("n"), "k");
    let a = snap("blue", &["green"], 1);
    s.handle_snapshot_update(a.clone());
    let out = delta(s.handle_request(delta_request(C, &[], &[], "")));
    let st = s.status();
    assert_eq!(
        st.types[C].pending_nonce.as_deref(),
        Some(out[0].nonce.as_str())
    );
    assert_eq!(
        st.types[C].sent_version.as_deref(),
        Some(out[0].system_version_info.as_str())
    );
    s.handle_request(delta_request(C, &[], &[], &out[0].nonce));
    let st = s.status();
    assert_eq!(st.types[C].acked_version, st.types[C].sent_version);
    assert!(st.types[C].pending_nonce.is_none());
    // A new cluster is NACKed: sent falls back to what Envoy ACKed, the NACKed version is
    // recorded with its nonce and not resent for the same content.
    let b = snap("blue", &["green", "red"], 1);
    let out = delta(s.handle_snapshot_update(b.clone()));
    assert_eq!(out.len(), 1);
    let sent: Vec<&str> = out[0].resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(sent, vec!["red"]);
    let mut nack = delta_request(C, &[], &[], &out[0].nonce);
    nack.error_detail = Some(XdsRpcStatus {
        code: 13,
        message: "no".into(),
        details: vec![],
    });
    assert!(delta(s.handle_request(nack)).is_empty());
    let st = s.status();
    let nack = st.last_nack.clone().unwrap();
    assert_eq!(nack.nonce, out[0].nonce);
    assert_eq!(nack.version, out[0].system_version_info);
    assert_eq!(st.types[C].sent_version, st.types[C].acked_version);
    assert_eq!(
        st.types[C].nacked_version.as_deref(),
        Some(out[0].system_version_info.as_str())
    );
    assert!(delta(s.handle_snapshot_update(snap("blue", &["green", "red"], 1))).is_empty());
}

#[test]
fn test_from_shared_keeps_the_callers_arcs() {
    let a = snap("blue", &["green"], 1);
    let shared: Vec<Arc<Resource>> = a
        .type_urls()
        .flat_map(|t| a.resources(t).unwrap().values().cloned())
        .collect();
    let b = Snapshot::from_shared(shared.clone()).unwrap();
    assert_eq!(b.version(), a.version());
    for t in a.type_urls() {
        for (name, r) in a.resources(t).unwrap().iter() {
            assert!(Arc::ptr_eq(r, b.resources(t).unwrap().get(name).unwrap()));
        }
    }
    // Same EDS/RDS references as when built from typed messages.
    assert_eq!(
        b.needed_eds().map(|r| r.name.clone()).collect::<Vec<_>>(),
        a.needed_eds().map(|r| r.name.clone()).collect::<Vec<_>>()
    );
    assert_eq!(
        b.needed_rds().map(|r| r.name.clone()).collect::<Vec<_>>(),
        vec!["local".to_string()]
    );
}

/// A stream sending a whole wildcard type reuses the snapshot's type version instead of hashing
/// the items again: both must be the version of exactly what is sent, and a partial set (make-
/// before-break keeping an old cluster) must still be hashed.
#[test]
fn test_whole_type_versions_equal_the_hash_of_what_is_sent() {
    let a = snap("blue", &[], 1);
    let b = snap("green", &[], 1);
    let mut d = DeltaStream::new(&node("n"), "k");
    d.handle_snapshot_update(a.clone());
    let cds = delta(d.handle_request(delta_request(C, &[], &[], ""))).remove(0);
    assert_eq!(
        Some(cds.system_version_info.as_str()),
        a.type_version(C).as_deref()
    );
    d.handle_request(delta_request(C, &[], &[], &cds.nonce));
    // Phase 1 towards `b`: Envoy holds blue and gets green, so it holds both.
    let add = delta(d.handle_snapshot_update(b.clone())).remove(0);
    assert_eq!(add.type_url, C);
    let both = Snapshot::from_resources(
        vec![],
        vec![],
        vec![eds_cluster("blue"), eds_cluster("green")],
        vec![],
    )
    .unwrap();
    assert_eq!(
        Some(add.system_version_info.as_str()),
        both.type_version(C).as_deref()
    );

    let mut s = SotwStream::new(&node("n"), "k");
    s.handle_snapshot_update(a.clone());
    let cds = sotw(s.handle_request(sotw_request(C, &[], "", ""))).remove(0);
    assert_eq!(
        Some(cds.version_info.as_str()),
        a.type_version(C).as_deref()
    );
    s.handle_request(ack(&cds, &[]));
    let add = sotw(s.handle_snapshot_update(b.clone())).remove(0);
    assert_eq!(names(&add), vec!["blue".to_string(), "green".to_string()]);
    assert_eq!(
        Some(add.version_info.as_str()),
        both.type_version(C).as_deref()
    );
}

#[test]
fn a_changed_snapshot_reports_its_convergence_once_at_the_last_ack_and_a_first_one_none() {
    let mut s = SotwStream::new(&node("n"), "k");
    let first = snap("blue", &[], 1);
    s.handle_snapshot_update(first.clone());
    let mut envoy = FakeSotwEnvoy::default();
    envoy.connect(&mut s);
    assert!(synced(&s, &first));
    // A proxy connecting gets its first snapshot: nothing changed for it.
    assert_eq!(s.take_convergence(), None);

    let changed = Arc::new(
        Snapshot::clone(&snap("green", &[], 1))
            .with_origin(std::time::Instant::now() - std::time::Duration::from_millis(50)),
    );
    let out = s.handle_snapshot_update(changed.clone());
    assert_eq!(s.take_convergence(), None, "not before Envoy ACKs");
    envoy.process(&mut s, sotw(out));
    assert!(synced(&s, &changed));
    let took = s.take_convergence().expect("reported at the rollout");
    assert!(took >= std::time::Duration::from_millis(50), "{took:?}");
    assert_eq!(s.take_convergence(), None, "once");
}
