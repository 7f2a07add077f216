//! The rules as netfilter holds them, with each front end, in namespaces the tests create.
//! Needs root (CI runs as root).

mod common;

use common::netns::{sh, Netns};
use weft_intercept::{apply, remove, Backend, InterceptConfig};

fn config(vars: &[(&str, &str)]) -> InterceptConfig {
    let vars: std::collections::BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    InterceptConfig::from_lookup(|k| vars.get(k).cloned()).unwrap_or_else(|e| panic!("{e}"))
}

fn app_mesh_ecs_settings() -> InterceptConfig {
    config(&[
        ("APPMESH_IGNORE_UID", "1337"),
        ("APPMESH_APP_PORTS", "8080,9080"),
        ("APPMESH_EGRESS_IGNORED_PORTS", "5432"),
        ("APPMESH_ENABLE_IPV6", "1"),
    ])
}

/// Everything netfilter holds in the namespace, as each front end prints it (comment lines
/// carry a timestamp and are dropped).
/// iptables-nft keeps a built-in chain it once created (empty) in nftables' own view, so for it
/// the comparison is of what the iptables tools show, as its users see it.
fn ruleset(ns: &Netns, backend: Backend) -> String {
    let mut all = String::new();
    let nft = if backend == Backend::IptablesNft {
        ("true", vec![])
    } else {
        ("nft", vec!["list", "ruleset"])
    };
    for (tool, args) in [
        nft,
        ("iptables-nft-save", vec![]),
        ("ip6tables-nft-save", vec![]),
        ("iptables-legacy-save", vec![]),
        ("ip6tables-legacy-save", vec![]),
    ] {
        all.push_str(&format!("== {tool}\n"));
        for line in ns.run(tool, &args).lines().filter(|l| !l.starts_with('#')) {
            all.push_str(line);
            all.push('\n');
        }
    }
    all
}

fn in_ns<R: Send + 'static>(ns: &Netns, f: impl FnOnce() -> R + Send + 'static) -> R {
    ns.within(f)
}

/// `seed`: the host's own rules, as command lines run in the namespace first.
fn init_twice_then_cleanup_restores_the_rule_set(backend: Backend, seed: &[String]) {
    let ns = Netns::new("rules");
    // A host's own rules, which Weft must leave exactly as they are.
    for line in seed {
        let words: Vec<&str> = line.split_whitespace().collect();
        ns.run(words[0], &words[1..]);
    }
    let before = ruleset(&ns, backend);
    let c = app_mesh_ecs_settings();
    let c2 = c.clone();
    in_ns(&ns, move || apply(&c2, backend)).unwrap_or_else(|e| panic!("first init: {e}"));
    let once = ruleset(&ns, backend);
    let c2 = c.clone();
    in_ns(&ns, move || apply(&c2, backend)).unwrap_or_else(|e| panic!("second init: {e}"));
    let twice = ruleset(&ns, backend);
    assert_eq!(once, twice, "a second init must leave one set of rules");
    assert!(
        once.contains("APPMESH_EGRESS") && once.contains("APPMESH_INGRESS"),
        "{once}"
    );
    let removed = in_ns(&ns, remove).unwrap_or_else(|e| panic!("cleanup: {e}"));
    assert_eq!(removed, vec![backend]);
    assert_eq!(
        ruleset(&ns, backend),
        before,
        "cleanup must leave the rule set as it was"
    );
    let again = in_ns(&ns, remove).unwrap_or_else(|e| panic!("second cleanup: {e}"));
    assert!(
        again.is_empty(),
        "a second cleanup finds nothing: {again:?}"
    );
    assert_eq!(ruleset(&ns, backend), before);
}

#[test]
fn nftables_init_twice_then_cleanup_leaves_an_empty_namespace_empty() {
    init_twice_then_cleanup_restores_the_rule_set(Backend::Nftables, &[]);
}

#[test]
fn nftables_cleanup_keeps_the_hosts_own_tables() {
    init_twice_then_cleanup_restores_the_rule_set(
        Backend::Nftables,
        &[
            "nft add table inet host".into(),
            "nft add chain inet host out { type filter hook output priority 0 ; policy accept ; }"
                .into(),
            "nft add rule inet host out tcp dport 9999 counter".into(),
        ],
    );
}

/// A host's own NAT rule in each family, written with the `variant` (`nft` or `legacy`) tools.
fn hosts_own_nat_rules(variant: &str) -> Vec<String> {
    ["iptables", "ip6tables"]
        .map(|family| format!("{family}-{variant} -t nat -A OUTPUT -p udp --dport 5353 -j RETURN"))
        .to_vec()
}

#[test]
fn iptables_nft_init_twice_then_cleanup_keeps_the_hosts_own_nat_rules() {
    init_twice_then_cleanup_restores_the_rule_set(
        Backend::IptablesNft,
        &hosts_own_nat_rules("nft"),
    );
}

#[test]
fn iptables_legacy_init_twice_then_cleanup_keeps_the_hosts_own_nat_rules() {
    init_twice_then_cleanup_restores_the_rule_set(
        Backend::IptablesLegacy,
        &hosts_own_nat_rules("legacy"),
    );
}

#[test]
fn with_ipv6_off_only_ipv4_is_redirected_and_an_earlier_ipv6_set_is_removed() {
    let ns = Netns::new("v6off");
    let on = app_mesh_ecs_settings();
    let mut off = on.clone();
    off.ipv6 = false;
    in_ns(&ns, move || apply(&on, Backend::Nftables)).unwrap_or_else(|e| panic!("{e}"));
    assert!(ns
        .run("nft", &["list", "tables"])
        .contains("table ip6 weft"));
    in_ns(&ns, move || apply(&off, Backend::Nftables)).unwrap_or_else(|e| panic!("{e}"));
    let tables = ns.run("nft", &["list", "tables"]);
    assert!(
        tables.contains("table ip weft") && !tables.contains("ip6"),
        "{tables}"
    );
}

#[test]
fn the_auto_choice_keeps_a_host_on_legacy_iptables_there() {
    let ns = Netns::new("auto");
    ns.run(
        "iptables-legacy",
        &["-A", "INPUT", "-p", "tcp", "--dport", "1", "-j", "ACCEPT"],
    );
    let chosen = in_ns(&ns, || Backend::choose(weft_intercept::Preference::Auto))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(chosen, Backend::IptablesLegacy);
    let fresh = Netns::new("auto");
    let chosen = in_ns(&fresh, || Backend::choose(weft_intercept::Preference::Auto))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(chosen, Backend::Nftables);
    let _ = sh("true", &[]);
}
