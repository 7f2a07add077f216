//! The rules, rendered as text for the netfilter front ends. Pure.
//!
//! The rules are App Mesh's proxy route manager's (App Mesh user guide,
//! `getting-started-ec2.md`): an `APPMESH_EGRESS` chain that returns for Envoy's own user or group,
//! the ignored ports and the ignored destinations, and redirects every other TCP connection to
//! Envoy's egress port, applied from `OUTPUT` to non-local destinations; an `APPMESH_INGRESS`
//! chain that redirects TCP to the app's ports to Envoy's ingress port, applied from `PREROUTING`
//! to traffic from non-local sources.

use std::fmt::Write as _;

use crate::InterceptConfig;

/// The egress chain's name, as App Mesh named it (operators look for it).
pub const EGRESS_CHAIN: &str = "APPMESH_EGRESS";
/// The ingress chain's name, as App Mesh named it.
pub const INGRESS_CHAIN: &str = "APPMESH_INGRESS";
/// Weft's own nftables table (one per family), so that removing Weft's rules is removing it.
pub const NFT_TABLE: &str = "weft";

/// An IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// nftables' family keyword.
    pub fn nft(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// The address keyword of nftables' `daddr` match.
    fn nft_addr(self) -> &'static str {
        self.nft()
    }
}

/// The nftables script that makes Weft's table of `family` hold exactly `config`'s rules, in one
/// transaction: declaring the table first makes the `delete` valid whether or not it existed.
pub fn nft_apply(config: &InterceptConfig, family: Family) -> String {
    let f = family.nft();
    let mut s = String::new();
    let _ = writeln!(s, "table {f} {NFT_TABLE}");
    let _ = writeln!(s, "delete table {f} {NFT_TABLE}");
    let _ = writeln!(s, "table {f} {NFT_TABLE} {{");
    let _ = writeln!(s, "\tchain {EGRESS_CHAIN} {{");
    if let Some(uid) = config.ignore_uid {
        let _ = writeln!(s, "\t\tmeta skuid {uid} return");
    }
    if let Some(gid) = config.ignore_gid {
        let _ = writeln!(s, "\t\tmeta skgid {gid} return");
    }
    let _ = writeln!(
        s,
        "\t\ttcp dport {{ {} }} return",
        join(config.egress_ignored_ports.iter())
    );
    let nets = config.ignored_nets(family == Family::V6);
    if !nets.is_empty() {
        let _ = writeln!(
            s,
            "\t\t{} daddr {{ {} }} return",
            family.nft_addr(),
            join(nets.iter())
        );
    }
    let _ = writeln!(
        s,
        "\t\tmeta l4proto tcp redirect to :{}",
        config.egress_port
    );
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "\tchain output {{");
    let _ = writeln!(s, "\t\ttype nat hook output priority -100; policy accept;");
    let _ = writeln!(
        s,
        "\t\tmeta l4proto tcp fib daddr type != local jump {EGRESS_CHAIN}"
    );
    let _ = writeln!(s, "\t}}");
    if !config.app_ports.is_empty() {
        let _ = writeln!(s, "\tchain {INGRESS_CHAIN} {{");
        let _ = writeln!(
            s,
            "\t\ttcp dport {{ {} }} redirect to :{}",
            join(config.app_ports.iter()),
            config.ingress_port
        );
        let _ = writeln!(s, "\t}}");
        let _ = writeln!(s, "\tchain prerouting {{");
        let _ = writeln!(
            s,
            "\t\ttype nat hook prerouting priority -100; policy accept;"
        );
        let _ = writeln!(
            s,
            "\t\tmeta l4proto tcp fib saddr type != local jump {INGRESS_CHAIN}"
        );
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "}}");
    s
}

/// The nftables script that removes Weft's table of `family` if it exists, and does nothing
/// otherwise.
pub fn nft_delete(family: Family) -> String {
    let f = family.nft();
    format!("table {f} {NFT_TABLE}\ndelete table {f} {NFT_TABLE}\n")
}

/// The `OUTPUT` rule that sends traffic to non-local destinations through the egress chain, as
/// arguments of `iptables -t nat -A/-C/-D OUTPUT`.
pub const OUTPUT_JUMP: [&str; 9] = [
    "-p",
    "tcp",
    "-m",
    "addrtype",
    "!",
    "--dst-type",
    "LOCAL",
    "-j",
    EGRESS_CHAIN,
];

/// The `PREROUTING` rule that sends traffic from non-local sources through the ingress chain.
pub const PREROUTING_JUMP: [&str; 9] = [
    "-p",
    "tcp",
    "-m",
    "addrtype",
    "!",
    "--src-type",
    "LOCAL",
    "-j",
    INGRESS_CHAIN,
];

/// What Weft's rules look like in one family's `nat` table now (from `iptables-save -t nat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IptablesState {
    /// The egress chain exists.
    pub egress_chain: bool,
    /// The ingress chain exists.
    pub ingress_chain: bool,
    /// How many `OUTPUT` rules jump to the egress chain as Weft (and App Mesh) write them.
    pub output_jumps: usize,
    /// How many `PREROUTING` rules jump to the ingress chain as Weft writes them.
    pub prerouting_jumps: usize,
}

impl IptablesState {
    /// Reads `iptables-save` output (its `nat` table; none: nothing of ours). Lines are compared to the canonical form
    /// `iptables-save` prints for Weft's rules, so a user's own rules are never counted as ours.
    pub fn parse(save: &str) -> Self {
        let output = format!("-A OUTPUT {}", OUTPUT_JUMP.join(" "));
        let prerouting = format!("-A PREROUTING {}", PREROUTING_JUMP.join(" "));
        let mut state = IptablesState::default();
        let mut in_nat = false;
        for line in save.lines().map(str::trim_end) {
            if let Some(table) = line.strip_prefix('*') {
                in_nat = table == "nat";
            } else if !in_nat {
                continue;
            } else if line.starts_with(&format!(":{EGRESS_CHAIN} ")) {
                state.egress_chain = true;
            } else if line.starts_with(&format!(":{INGRESS_CHAIN} ")) {
                state.ingress_chain = true;
            } else if line == output {
                state.output_jumps += 1;
            } else if line == prerouting {
                state.prerouting_jumps += 1;
            }
        }
        state
    }

    /// Whether any of Weft's rules or chains is present.
    pub fn is_empty(&self) -> bool {
        *self == IptablesState::default()
    }
}

/// The `iptables-restore --noflush` input that turns `state` into exactly `config`'s rules for
/// `family`, in one transaction per table. Declaring a chain (`:NAME - [0:0]`) empties it, so
/// re-running leaves one set of rules; jump rules are added only when missing and extra copies
/// (an earlier script run twice) are removed.
pub fn iptables_apply(config: &InterceptConfig, family: Family, state: IptablesState) -> String {
    let mut s = String::from("*nat\n");
    let _ = writeln!(s, ":{EGRESS_CHAIN} - [0:0]");
    let ingress = !config.app_ports.is_empty();
    if ingress {
        let _ = writeln!(s, ":{INGRESS_CHAIN} - [0:0]");
    }
    if let Some(uid) = config.ignore_uid {
        let _ = writeln!(s, "-A {EGRESS_CHAIN} -m owner --uid-owner {uid} -j RETURN");
    }
    if let Some(gid) = config.ignore_gid {
        let _ = writeln!(s, "-A {EGRESS_CHAIN} -m owner --gid-owner {gid} -j RETURN");
    }
    for ports in chunks(config.egress_ignored_ports.iter().copied()) {
        let _ = writeln!(
            s,
            "-A {EGRESS_CHAIN} -p tcp -m multiport --dports {ports} -j RETURN"
        );
    }
    for net in config.ignored_nets(family == Family::V6) {
        let _ = writeln!(s, "-A {EGRESS_CHAIN} -p tcp -d {net} -j RETURN");
    }
    let _ = writeln!(
        s,
        "-A {EGRESS_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        config.egress_port
    );
    if ingress {
        for ports in chunks(config.app_ports.iter().copied()) {
            let _ = writeln!(
                s,
                "-A {INGRESS_CHAIN} -p tcp -m multiport --dports {ports} -j REDIRECT --to-ports {}",
                config.ingress_port
            );
        }
    }
    jumps(&mut s, "OUTPUT", &OUTPUT_JUMP, state.output_jumps, 1);
    let wanted = usize::from(ingress);
    jumps(
        &mut s,
        "PREROUTING",
        &PREROUTING_JUMP,
        state.prerouting_jumps,
        wanted,
    );
    if !ingress && state.ingress_chain {
        let _ = writeln!(s, "-F {INGRESS_CHAIN}");
        let _ = writeln!(s, "-X {INGRESS_CHAIN}");
    }
    s.push_str("COMMIT\n");
    s
}

/// The `iptables-restore --noflush` input that removes every rule and chain of Weft's in
/// `state`, or `None` when there is none (so that a table nobody uses is not created).
pub fn iptables_delete(state: IptablesState) -> Option<String> {
    if state.is_empty() {
        return None;
    }
    let mut s = String::from("*nat\n");
    jumps(&mut s, "OUTPUT", &OUTPUT_JUMP, state.output_jumps, 0);
    jumps(
        &mut s,
        "PREROUTING",
        &PREROUTING_JUMP,
        state.prerouting_jumps,
        0,
    );
    for (exists, chain) in [
        (state.egress_chain, EGRESS_CHAIN),
        (state.ingress_chain, INGRESS_CHAIN),
    ] {
        if exists {
            let _ = writeln!(s, "-F {chain}");
            let _ = writeln!(s, "-X {chain}");
        }
    }
    s.push_str("COMMIT\n");
    Some(s)
}

/// Adds or deletes copies of a jump rule so that `wanted` remain of `present`.
fn jumps(s: &mut String, chain: &str, spec: &[&str], present: usize, wanted: usize) {
    for _ in wanted..present {
        let _ = writeln!(s, "-D {chain} {}", spec.join(" "));
    }
    for _ in present..wanted {
        let _ = writeln!(s, "-A {chain} {}", spec.join(" "));
    }
}

/// `multiport` takes at most 15 ports per rule.
fn chunks(ports: impl Iterator<Item = u16>) -> Vec<String> {
    let ports: Vec<u16> = ports.collect();
    ports
        .chunks(15)
        .map(|c| c.iter().map(u16::to_string).collect::<Vec<_>>().join(","))
        .collect()
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> InterceptConfig {
        let vars: std::collections::BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        InterceptConfig::from_lookup(|k| vars.get(k).cloned()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_nft_table_holds_app_mesh_rules_in_their_order() {
        let c = config(&[
            ("APPMESH_IGNORE_UID", "1337"),
            ("APPMESH_APP_PORTS", "8080,9090"),
            ("APPMESH_EGRESS_IGNORED_PORTS", "5432"),
        ]);
        let script = nft_apply(&c, Family::V4);
        let egress = [
            "meta skuid 1337 return",
            "tcp dport { 22, 5432 } return",
            "ip daddr { 169.254.169.254/32, 169.254.170.2/32 } return",
            "meta l4proto tcp redirect to :15001",
        ];
        let mut at = 0;
        for rule in egress {
            let found = script[at..]
                .find(rule)
                .unwrap_or_else(|| panic!("{rule} in\n{script}"));
            at += found;
        }
        assert!(script.contains("tcp dport { 8080, 9090 } redirect to :15000"));
        assert!(script.contains("fib daddr type != local jump APPMESH_EGRESS"));
        assert!(script.contains("fib saddr type != local jump APPMESH_INGRESS"));
        assert!(script.starts_with("table ip weft\ndelete table ip weft\n"));
    }

    #[test]
    fn without_app_ports_there_is_no_inbound_redirection() {
        let c = config(&[("APPMESH_IGNORE_GID", "1337")]);
        let script = nft_apply(&c, Family::V4);
        assert!(
            !script.contains("prerouting") && !script.contains("INGRESS"),
            "{script}"
        );
        assert!(script.contains("meta skgid 1337 return"));
        let restore = iptables_apply(&c, Family::V4, IptablesState::default());
        assert!(!restore.contains("PREROUTING") && !restore.contains("APPMESH_INGRESS"));
    }

    #[test]
    fn ipv6_rules_take_only_ipv6_ignored_destinations() {
        let c = config(&[
            ("APPMESH_IGNORE_UID", "1337"),
            ("APPMESH_EGRESS_IGNORED_IP", "10.1.0.0/16,fd00:ec2::254"),
            ("APPMESH_ENABLE_IPV6", "1"),
        ]);
        let v6 = nft_apply(&c, Family::V6);
        assert!(
            v6.contains("ip6 daddr { fd00:ec2::254/128 } return"),
            "{v6}"
        );
        assert!(!v6.contains("10.1.0.0"));
        let v4 = iptables_apply(&c, Family::V4, IptablesState::default());
        assert!(
            v4.contains("-A APPMESH_EGRESS -p tcp -d 10.1.0.0/16 -j RETURN"),
            "{v4}"
        );
        assert!(!v4.contains("fd00"));
    }

    #[test]
    fn iptables_jumps_are_added_once_and_extra_copies_removed() {
        let c = config(&[("APPMESH_IGNORE_UID", "1337"), ("APPMESH_APP_PORTS", "80")]);
        let fresh = iptables_apply(&c, Family::V4, IptablesState::default());
        assert_eq!(fresh.matches("-A OUTPUT ").count(), 1, "{fresh}");
        assert_eq!(fresh.matches("-A PREROUTING ").count(), 1);
        let twice = IptablesState {
            egress_chain: true,
            ingress_chain: true,
            output_jumps: 2,
            prerouting_jumps: 1,
        };
        let again = iptables_apply(&c, Family::V4, twice);
        assert_eq!(again.matches("-A OUTPUT ").count(), 0, "{again}");
        assert_eq!(again.matches("-D OUTPUT ").count(), 1);
        assert_eq!(again.matches("PREROUTING").count(), 0);
    }

    #[test]
    fn more_than_fifteen_ports_are_split_across_multiport_rules() {
        let ports: Vec<String> = (8000..8020).map(|p| p.to_string()).collect();
        let c = config(&[
            ("APPMESH_IGNORE_UID", "1"),
            ("APPMESH_APP_PORTS", &ports.join(",")),
        ]);
        let s = iptables_apply(&c, Family::V4, IptablesState::default());
        assert_eq!(s.matches("-A APPMESH_INGRESS ").count(), 2, "{s}");
    }

    #[test]
    fn the_saved_state_counts_only_rules_written_as_weft_writes_them() {
        let save =
            "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:APPMESH_EGRESS - [0:0]\n\
                    -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS\n\
                    -A OUTPUT -p tcp -m addrtype ! --dst-type LOCAL -j APPMESH_EGRESS\n\
                    -A OUTPUT -p udp -j APPMESH_EGRESS\nCOMMIT\n";
        let state = IptablesState::parse(save);
        assert_eq!(
            state,
            IptablesState {
                egress_chain: true,
                ingress_chain: false,
                output_jumps: 2,
                prerouting_jumps: 0
            }
        );
        let delete = iptables_delete(state).unwrap_or_default();
        assert_eq!(delete.matches("-D OUTPUT").count(), 2, "{delete}");
        assert!(delete.contains("-X APPMESH_EGRESS") && !delete.contains("APPMESH_INGRESS"));
        assert_eq!(iptables_delete(IptablesState::default()), None);
    }
}
