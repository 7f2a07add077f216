//! The redirection settings, read from the variables App Mesh's proxy route manager read (App
//! Mesh user guide, `getting-started-ec2.md`, "envoy-networking.sh"; on ECS the task's
//! `proxyConfiguration` properties of the same names, `getting-started-ecs.md`).
//!
//! Parsing is pure: [`InterceptConfig::from_lookup`] takes a lookup function (the environment,
//! or a map in tests). [`InterceptConfig::check_identities`] is the one step that asks the
//! system (does the ignored user or group exist?).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::InterceptError;

/// `APPMESH_APP_PORTS`: the app's inbound ports, redirected to Envoy's ingress.
pub const APP_PORTS: &str = "APPMESH_APP_PORTS";
/// `APPMESH_IGNORE_UID`: the user Envoy runs as; its traffic is never redirected.
pub const IGNORE_UID: &str = "APPMESH_IGNORE_UID";
/// `APPMESH_IGNORE_GID`: the group Envoy runs as; its traffic is never redirected.
pub const IGNORE_GID: &str = "APPMESH_IGNORE_GID";
/// `APPMESH_ENVOY_INGRESS_PORT` (default 15000).
pub const INGRESS_PORT: &str = "APPMESH_ENVOY_INGRESS_PORT";
/// `APPMESH_ENVOY_EGRESS_PORT` (default 15001).
pub const EGRESS_PORT: &str = "APPMESH_ENVOY_EGRESS_PORT";
/// `APPMESH_EGRESS_IGNORED_IP`: destinations left alone (addresses or CIDR blocks).
pub const EGRESS_IGNORED_IP: &str = "APPMESH_EGRESS_IGNORED_IP";
/// `APPMESH_EGRESS_IGNORED_PORTS`: destination ports left alone (22 always is).
pub const EGRESS_IGNORED_PORTS: &str = "APPMESH_EGRESS_IGNORED_PORTS";
/// `APPMESH_ENABLE_IPV6`: also redirect IPv6 (`1`), or leave it alone (`0`, the default).
pub const ENABLE_IPV6: &str = "APPMESH_ENABLE_IPV6";
/// `APPMESH_START_ENABLED`: `weft agent` applies the redirection when it starts (`1`).
pub const START_ENABLED: &str = "APPMESH_START_ENABLED";

/// App Mesh's default ignored destinations: the EC2 instance metadata service and the ECS task
/// metadata / credentials endpoint.
pub const DEFAULT_EGRESS_IGNORED_IP: &str = "169.254.169.254,169.254.170.2";
/// SSH is never redirected, whatever `APPMESH_EGRESS_IGNORED_PORTS` says.
pub const ALWAYS_IGNORED_PORT: u16 = 22;

/// Validated redirection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptConfig {
    /// Inbound ports of the app; empty: no inbound redirection.
    pub app_ports: BTreeSet<u16>,
    /// Traffic of this user is not redirected (Envoy's user).
    pub ignore_uid: Option<u32>,
    /// Traffic of this group is not redirected (Envoy's group).
    pub ignore_gid: Option<u32>,
    /// Envoy's ingress listener port.
    pub ingress_port: u16,
    /// Envoy's egress listener port.
    pub egress_port: u16,
    /// Destinations whose traffic is not redirected.
    pub egress_ignored_ips: Vec<IpNet>,
    /// Destination ports whose traffic is not redirected; always holds 22.
    pub egress_ignored_ports: BTreeSet<u16>,
    /// Whether IPv6 is redirected too.
    pub ipv6: bool,
    /// Whether `weft agent` applies the redirection at start (and removes it at exit).
    pub start_enabled: bool,
}

impl InterceptConfig {
    /// Reads and validates every variable through `lookup` (e.g. `|k| std::env::var(k).ok()`).
    /// An empty value counts as unset, as in App Mesh's script (`[ -z "$VAR" ]`).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, InterceptError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let ingress_port = match get(INGRESS_PORT) {
            Some(v) => parse_port(INGRESS_PORT, &v)?,
            None => 15000,
        };
        let egress_port = match get(EGRESS_PORT) {
            Some(v) => parse_port(EGRESS_PORT, &v)?,
            None => 15001,
        };
        if ingress_port == egress_port {
            return Err(InterceptError::invalid(
                INGRESS_PORT,
                format!("{ingress_port} is also {EGRESS_PORT}; Envoy needs two listeners"),
            ));
        }
        let app_ports = match get(APP_PORTS) {
            Some(v) => parse_ports(APP_PORTS, &v)?,
            None => BTreeSet::new(),
        };
        for port in [ingress_port, egress_port] {
            if app_ports.contains(&port) {
                return Err(InterceptError::invalid(
                    APP_PORTS,
                    format!(
                        "{port} is one of Envoy's own ports ({INGRESS_PORT}={ingress_port}, \
                         {EGRESS_PORT}={egress_port}); redirecting it would loop"
                    ),
                ));
            }
        }
        let ignore_uid = get(IGNORE_UID)
            .map(|v| parse_id(IGNORE_UID, &v))
            .transpose()?;
        let ignore_gid = get(IGNORE_GID)
            .map(|v| parse_id(IGNORE_GID, &v))
            .transpose()?;
        if ignore_uid.is_none() && ignore_gid.is_none() {
            return Err(InterceptError::invalid(
                IGNORE_UID,
                format!(
                    "{IGNORE_UID} and/or {IGNORE_GID} must be set: Envoy's own traffic must not \
                     be redirected back into it"
                ),
            ));
        }
        let ignored_ips =
            get(EGRESS_IGNORED_IP).unwrap_or_else(|| DEFAULT_EGRESS_IGNORED_IP.into());
        let egress_ignored_ips = parse_nets(&ignored_ips)?;
        let mut egress_ignored_ports = match get(EGRESS_IGNORED_PORTS) {
            Some(v) => parse_ports(EGRESS_IGNORED_PORTS, &v)?,
            None => BTreeSet::new(),
        };
        egress_ignored_ports.insert(ALWAYS_IGNORED_PORT);
        let ipv6 = get(ENABLE_IPV6)
            .map(|v| parse_switch(ENABLE_IPV6, &v))
            .transpose()?
            .unwrap_or(false);
        let start_enabled = get(START_ENABLED)
            .map(|v| parse_switch(START_ENABLED, &v))
            .transpose()?
            .unwrap_or(false);
        Ok(InterceptConfig {
            app_ports,
            ignore_uid,
            ignore_gid,
            ingress_port,
            egress_port,
            egress_ignored_ips,
            egress_ignored_ports,
            ipv6,
            start_enabled,
        })
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, InterceptError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Checks that the ignored user and group exist on this host (through NSS, as `id` does):
    /// rules for an identity nothing runs as would redirect Envoy's own traffic into itself.
    pub fn check_identities(&self) -> Result<(), InterceptError> {
        let lookup =
            |variable: &'static str, id: u32, found: nix::Result<bool>, db: &str| match found {
                Ok(true) => Ok(()),
                Ok(false) => Err(InterceptError::invalid(
                    variable,
                    format!("no {db} entry has id {id} on this host (see `getent {db} {id}`)"),
                )),
                Err(e) => Err(InterceptError::invalid(
                    variable,
                    format!("looking up id {id} failed: {e}"),
                )),
            };
        if let Some(uid) = self.ignore_uid {
            let found = nix::unistd::User::from_uid(uid.into()).map(|u| u.is_some());
            lookup(IGNORE_UID, uid, found, "passwd")?;
        }
        if let Some(gid) = self.ignore_gid {
            let found = nix::unistd::Group::from_gid(gid.into()).map(|g| g.is_some());
            lookup(IGNORE_GID, gid, found, "group")?;
        }
        Ok(())
    }

    /// The ignored destinations of one family.
    pub(crate) fn ignored_nets(&self, v6: bool) -> Vec<IpNet> {
        self.egress_ignored_ips
            .iter()
            .filter(|n| matches!(n, IpNet::V6(_)) == v6)
            .copied()
            .collect()
    }
}

fn parse_port(variable: &'static str, text: &str) -> Result<u16, InterceptError> {
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(InterceptError::invalid(
            variable,
            format!("{text:?} is not a TCP port (1-65535)"),
        )),
        Ok(port) => Ok(port),
    }
}

fn parse_ports(variable: &'static str, text: &str) -> Result<BTreeSet<u16>, InterceptError> {
    text.split(',')
        .map(str::trim)
        .map(|p| {
            if p.is_empty() {
                Err(InterceptError::invalid(
                    variable,
                    format!("{text:?} has an empty entry; write ports separated by commas"),
                ))
            } else {
                parse_port(variable, p)
            }
        })
        .collect()
}

fn parse_id(variable: &'static str, text: &str) -> Result<u32, InterceptError> {
    // u32::MAX is (uid_t)-1, "no change" to setuid(2): never a real identity.
    match text.parse::<u32>() {
        Ok(id) if id != u32::MAX => Ok(id),
        _ => Err(InterceptError::invalid(
            variable,
            format!("{text:?} is not a numeric id"),
        )),
    }
}

fn parse_nets(text: &str) -> Result<Vec<IpNet>, InterceptError> {
    let mut nets = Vec::new();
    for entry in text.split(',').map(str::trim) {
        let net = if entry.contains('/') {
            entry.parse::<IpNet>().ok()
        } else {
            entry.parse::<IpAddr>().ok().map(IpNet::from)
        };
        match net {
            Some(net) => nets.push(net.trunc()),
            None => {
                return Err(InterceptError::invalid(
                    EGRESS_IGNORED_IP,
                    format!(
                        "{entry:?} (in {text:?}) is not an IPv4/IPv6 address or CIDR block; \
                         write them separated by commas"
                    ),
                ))
            }
        }
    }
    Ok(nets)
}

fn parse_switch(variable: &'static str, text: &str) -> Result<bool, InterceptError> {
    match text {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        other => Err(InterceptError::invalid(
            variable,
            format!("{other:?} is not 1 or 0"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<InterceptConfig, InterceptError> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        InterceptConfig::from_lookup(|k| vars.get(k).cloned())
    }

    fn err(vars: &[(&str, &str)]) -> String {
        match parse(vars) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn app_mesh_defaults_apply_when_only_the_ignored_uid_is_set() {
        let c = parse(&[(IGNORE_UID, "1337")]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.ingress_port, 15000);
        assert_eq!(c.egress_port, 15001);
        assert!(c.app_ports.is_empty());
        assert_eq!(c.ignore_uid, Some(1337));
        assert_eq!(c.egress_ignored_ports, BTreeSet::from([22]));
        let ips: Vec<String> = c.egress_ignored_ips.iter().map(|n| n.to_string()).collect();
        assert_eq!(ips, ["169.254.169.254/32", "169.254.170.2/32"]);
        assert!(!c.ipv6 && !c.start_enabled);
    }

    #[test]
    fn ssh_stays_ignored_when_other_ports_are_listed() {
        let c = parse(&[(IGNORE_GID, "1337"), (EGRESS_IGNORED_PORTS, "5432, 6379")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.egress_ignored_ports, BTreeSet::from([22, 5432, 6379]));
    }

    #[test]
    fn ignored_destinations_take_addresses_and_blocks_of_both_families() {
        let c = parse(&[
            (IGNORE_UID, "1337"),
            (EGRESS_IGNORED_IP, "10.0.0.0/8,fd00::1, 192.168.1.7/24"),
            (ENABLE_IPV6, "1"),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let v4: Vec<String> = c
            .ignored_nets(false)
            .iter()
            .map(|n| n.to_string())
            .collect();
        let v6: Vec<String> = c.ignored_nets(true).iter().map(|n| n.to_string()).collect();
        assert_eq!(v4, ["10.0.0.0/8", "192.168.1.0/24"]);
        assert_eq!(v6, ["fd00::1/128"]);
        assert!(c.ipv6);
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        assert!(err(&[(IGNORE_UID, "1337"), (APP_PORTS, "8080,http")]).starts_with(APP_PORTS));
        assert!(err(&[(IGNORE_UID, "1337"), (APP_PORTS, "70000")]).contains("70000"));
        assert!(err(&[(IGNORE_UID, "1337"), (APP_PORTS, "8080,,9090")]).contains("empty entry"));
        assert!(err(&[(IGNORE_UID, "1337"), (APP_PORTS, "15001")]).contains("loop"));
        assert!(err(&[(IGNORE_UID, "envoy")]).starts_with(IGNORE_UID));
        assert!(err(&[(IGNORE_UID, "-1")]).starts_with(IGNORE_UID));
        assert!(err(&[(IGNORE_GID, "4294967295")]).starts_with(IGNORE_GID));
        assert!(err(&[]).contains("must be set"));
        let bad_ip = err(&[(IGNORE_UID, "1337"), (EGRESS_IGNORED_IP, "10.0.0.1;rm -rf")]);
        assert!(bad_ip.starts_with(EGRESS_IGNORED_IP), "{bad_ip}");
        assert!(
            err(&[(IGNORE_UID, "1337"), (EGRESS_IGNORED_IP, "300.1.1.1")]).contains("300.1.1.1")
        );
        assert!(err(&[(IGNORE_UID, "1337"), (ENABLE_IPV6, "yes")]).starts_with(ENABLE_IPV6));
        assert!(err(&[(IGNORE_UID, "1",), (INGRESS_PORT, "15001")]).contains("two listeners"));
    }

    #[test]
    fn an_ignored_uid_nobody_has_is_refused_and_root_is_found() {
        let mut c =
            parse(&[(IGNORE_UID, "0"), (IGNORE_GID, "0")]).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.check_identities().is_ok());
        // No system gives this uid a passwd entry in practice; the test needs one that is unused.
        c.ignore_uid = Some(3_999_999_917);
        let e = c
            .check_identities()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with(IGNORE_UID) && e.contains("3999999917"), "{e}");
    }
}
