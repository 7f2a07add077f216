//! Per-proxy options read from Envoy's `node.metadata` (docs/proxy-contract.md, the `weft.*` keys).

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

use crate::TranslateError;

/// How traffic reaches the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ListenerMode {
    /// App Mesh's way: iptables redirects inbound traffic to the ingress port (15000) and
    /// outbound traffic to the egress port (15001); listeners recover the original destination.
    #[default]
    Transparent,
    /// No interception: Envoy binds the node's listener ports itself and forwards to the app on
    /// its `app_ports`; the app uses the egress port as an HTTP proxy or sends `Host: <service>`.
    Explicit,
}

/// Where the proxy listens and where the local application is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOptions {
    /// `weft.listener_mode`.
    pub listener_mode: ListenerMode,
    /// `weft.ingress_port` (transparent mode), default 15000.
    pub ingress_port: u16,
    /// `weft.egress_port`, default 15001.
    pub egress_port: u16,
    /// `weft.listen_address`: an IP address (Envoy rejects host names in a listener address).
    pub listen_address: String,
    /// `weft.app_ports`: node listener port → port the local app really listens on.
    pub app_ports: BTreeMap<u16, u16>,
    /// `weft.app_address`: the local app's IP address, default `127.0.0.1`.
    pub app_address: String,
    /// `weft.listen_address_v6`: an IPv6 address the transparent ingress and egress listeners
    /// also listen on (`APPMESH_ENABLE_IPV6=1`), so that redirected IPv6 connections reach them.
    pub listen_address_v6: Option<String>,
    /// `weft.identity`: the proxy has a Weft workload identity, so its bootstrap has the
    /// `weft_sds` cluster through which its agent serves `weft-identity` and
    /// `weft-trust-bundle` (the agent says so only when it got a certificate with a join
    /// token). Without it, no TLS context may name that cluster: the secret would never come
    /// and every TLS handshake through it would fail (see the `tls` module).
    pub identity: bool,
    /// `weft.file_secrets`: the proxy's agent serves the certificates `file` TLS sources name
    /// over SDS (secrets `file-certificate:<chain>|<key>` and `file-trust:<chain>`), reading
    /// and watching the files itself. With it, translation names those secrets instead of the
    /// files, so that a missing or unreadable file leaves only that TLS unready (the agent
    /// logs the path) instead of making Envoy refuse the whole config.
    pub file_secrets: bool,
    /// `weft.tracing`: the proxy's bootstrap has a tracing provider (the agent's tracing
    /// variables), so every HTTP connection manager sets `tracing` and Envoy traces there;
    /// without it no connection manager traces (Envoy traces nowhere else).
    pub tracing: bool,
    /// `weft.stats_intake`: the proxy streams its stats to Weft's server (the agent's
    /// `metrics_service` sink), so translation may add stats Weft reads, such as the
    /// per-caller authorization denials.
    pub stats_intake: bool,
}

/// App Mesh's ingress port (envoy-metrics.md: `lds_ingress_0.0.0.0_15000`).
pub const DEFAULT_INGRESS_PORT: u16 = 15000;
/// App Mesh's egress port (envoy-metrics.md: `lds_egress_0.0.0.0_15001`).
pub const DEFAULT_EGRESS_PORT: u16 = 15001;

impl Default for ProxyOptions {
    /// Transparent mode on App Mesh's ports, listening on all IPv4 addresses.
    fn default() -> Self {
        Self {
            listener_mode: ListenerMode::Transparent,
            ingress_port: DEFAULT_INGRESS_PORT,
            egress_port: DEFAULT_EGRESS_PORT,
            listen_address: "0.0.0.0".to_string(),
            app_ports: BTreeMap::new(),
            app_address: "127.0.0.1".to_string(),
            listen_address_v6: None,
            identity: false,
            file_secrets: false,
            tracing: false,
            stats_intake: false,
        }
    }
}

impl ProxyOptions {
    /// Explicit mode on loopback with the default egress port and no app port remapping.
    pub fn explicit() -> Self {
        Self {
            listener_mode: ListenerMode::Explicit,
            listen_address: "127.0.0.1".to_string(),
            ..Self::default()
        }
    }

    /// The port the local application serves a node listener port on.
    pub fn app_port(&self, listener_port: u16) -> u16 {
        self.app_ports
            .get(&listener_port)
            .copied()
            .unwrap_or(listener_port)
    }

    /// Reads the `weft.*` keys of `node.metadata`; absent keys take the contract's defaults,
    /// unknown keys are ignored (the agent may send more than translation needs).
    pub fn from_metadata(metadata: &Struct) -> Result<Self, TranslateError> {
        let fields = &metadata.fields;
        let listener_mode =
            match string_field(fields.get("weft.listener_mode"), "weft.listener_mode")? {
                None => ListenerMode::Transparent,
                Some(mode) => match mode.as_str() {
                    "transparent" => ListenerMode::Transparent,
                    "explicit" => ListenerMode::Explicit,
                    other => {
                        return Err(invalid(
                            "weft.listener_mode",
                            format!("expected \"transparent\" or \"explicit\", got {other:?}"),
                        ))
                    }
                },
            };
        let mut options = match listener_mode {
            ListenerMode::Transparent => Self::default(),
            ListenerMode::Explicit => Self::explicit(),
        };
        if let Some(port) = port_field(fields.get("weft.ingress_port"), "weft.ingress_port")? {
            options.ingress_port = port;
        }
        if let Some(port) = port_field(fields.get("weft.egress_port"), "weft.egress_port")? {
            options.egress_port = port;
        }
        if let Some(addr) = string_field(fields.get("weft.listen_address"), "weft.listen_address")?
        {
            options.listen_address = ip_address(addr, "weft.listen_address")?;
        }
        if let Some(addr) = string_field(
            fields.get("weft.listen_address_v6"),
            "weft.listen_address_v6",
        )? {
            let addr = ip_address(addr, "weft.listen_address_v6")?;
            if !addr.contains(':') {
                return Err(invalid(
                    "weft.listen_address_v6",
                    format!("{addr:?} is not an IPv6 address"),
                ));
            }
            options.listen_address_v6 = Some(addr);
        }
        if let Some(addr) = string_field(fields.get("weft.app_address"), "weft.app_address")? {
            options.app_address = ip_address(addr, "weft.app_address")?;
        }
        options.identity = bool_field(fields.get("weft.identity"), "weft.identity")?;
        options.file_secrets = bool_field(fields.get("weft.file_secrets"), "weft.file_secrets")?;
        options.tracing = bool_field(fields.get("weft.tracing"), "weft.tracing")?;
        options.stats_intake = bool_field(fields.get("weft.stats_intake"), "weft.stats_intake")?;
        if let Some(value) = fields.get("weft.app_ports") {
            let Some(Kind::StructValue(ports)) = &value.kind else {
                return Err(invalid(
                    "weft.app_ports",
                    "expected a struct of \"<port>\": <port>",
                ));
            };
            for (listener_port, app_port) in &ports.fields {
                let key = format!("weft.app_ports.{listener_port}");
                let listener_port: u16 = listener_port
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| invalid(&key, "the key must be a port number 1-65535"))?;
                let app_port = port_field(Some(app_port), &key)?
                    .ok_or_else(|| invalid(&key, "expected a port number"))?;
                options.app_ports.insert(listener_port, app_port);
            }
        }
        // Two listeners on one address and port would be rejected by Envoy as a whole update.
        if options.listener_mode == ListenerMode::Transparent
            && options.ingress_port == options.egress_port
        {
            return Err(invalid(
                "weft.egress_port",
                "the ingress and egress ports must differ",
            ));
        }
        Ok(options)
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> TranslateError {
    TranslateError::InvalidMetadata {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn string_field(value: Option<&Value>, key: &str) -> Result<Option<String>, TranslateError> {
    match value.and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => Ok(None),
        Some(Kind::StringValue(s)) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(key, "expected a string")),
    }
}

/// A boolean (absent or null: false).
fn bool_field(value: Option<&Value>, key: &str) -> Result<bool, TranslateError> {
    match value.and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => Ok(false),
        Some(Kind::BoolValue(b)) => Ok(*b),
        Some(_) => Err(invalid(key, "expected true or false")),
    }
}

/// A port as a number (what the contract specifies) or, leniently, a numeric string.
fn port_field(value: Option<&Value>, key: &str) -> Result<Option<u16>, TranslateError> {
    let number = match value.and_then(|v| v.kind.as_ref()) {
        None | Some(Kind::NullValue(_)) => return Ok(None),
        Some(Kind::NumberValue(n)) => *n,
        Some(Kind::StringValue(s)) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| invalid(key, "expected a port number"))?,
        Some(_) => return Err(invalid(key, "expected a port number")),
    };
    if number.fract() != 0.0 || !(1.0..=65535.0).contains(&number) {
        return Err(invalid(
            key,
            format!("{number} is not a port number 1-65535"),
        ));
    }
    // The range check above makes this conversion exact.
    Ok(Some(number as u16))
}

fn ip_address(addr: String, key: &str) -> Result<String, TranslateError> {
    addr.parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| invalid(key, format!("{addr:?} is not an IP address")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&str, Kind)]) -> Struct {
        Struct {
            fields: pairs
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        Value {
                            kind: Some(v.clone()),
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn no_metadata_means_transparent_mode_on_app_mesh_ports() {
        let options = ProxyOptions::from_metadata(&Struct::default()).unwrap();
        assert_eq!(options, ProxyOptions::default());
        assert_eq!(options.listener_mode, ListenerMode::Transparent);
        assert_eq!((options.ingress_port, options.egress_port), (15000, 15001));
        assert_eq!(options.listen_address, "0.0.0.0");
    }

    #[test]
    fn explicit_mode_listens_on_loopback_and_maps_app_ports() {
        let ports = Struct {
            fields: [(
                "8080".to_string(),
                Value {
                    kind: Some(Kind::NumberValue(18080.0)),
                },
            )]
            .into_iter()
            .collect(),
        };
        let options = ProxyOptions::from_metadata(&metadata(&[
            ("weft.listener_mode", Kind::StringValue("explicit".into())),
            ("weft.egress_port", Kind::NumberValue(25001.0)),
            ("weft.app_ports", Kind::StructValue(ports)),
        ]))
        .unwrap();
        assert_eq!(options.listener_mode, ListenerMode::Explicit);
        assert_eq!(options.listen_address, "127.0.0.1");
        assert_eq!(options.egress_port, 25001);
        assert_eq!(options.app_port(8080), 18080);
        assert_eq!(options.app_port(9090), 9090);
    }

    #[test]
    fn bad_metadata_is_a_clear_error() {
        for bad in [
            metadata(&[("weft.listener_mode", Kind::StringValue("tproxy".into()))]),
            metadata(&[("weft.egress_port", Kind::NumberValue(70000.0))]),
            metadata(&[("weft.egress_port", Kind::NumberValue(15000.0))]),
            metadata(&[("weft.listen_address", Kind::StringValue("localhost".into()))]),
            metadata(&[("weft.app_ports", Kind::StringValue("8080".into()))]),
            metadata(&[("weft.identity", Kind::StringValue("yes".into()))]),
        ] {
            let err = ProxyOptions::from_metadata(&bad).unwrap_err();
            assert!(
                matches!(err, TranslateError::InvalidMetadata { .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn a_proxy_has_a_weft_identity_only_when_its_metadata_says_so() {
        assert!(
            !ProxyOptions::from_metadata(&metadata(&[]))
                .unwrap()
                .identity
        );
        let with = metadata(&[("weft.identity", Kind::BoolValue(true))]);
        assert!(ProxyOptions::from_metadata(&with).unwrap().identity);
    }

    #[test]
    fn tracing_is_on_only_when_the_metadata_says_so() {
        assert!(!ProxyOptions::from_metadata(&metadata(&[])).unwrap().tracing);
        let with = metadata(&[("weft.tracing", Kind::BoolValue(true))]);
        assert!(ProxyOptions::from_metadata(&with).unwrap().tracing);
        let bad = metadata(&[("weft.tracing", Kind::StringValue("zipkin".into()))]);
        assert!(ProxyOptions::from_metadata(&bad).is_err());
    }

    #[test]
    fn file_secrets_is_read_from_the_metadata_and_off_without_it() {
        assert!(!ProxyOptions::default().file_secrets);
        let with = metadata(&[("weft.file_secrets", Kind::BoolValue(true))]);
        assert!(ProxyOptions::from_metadata(&with).unwrap().file_secrets);
        let bad = metadata(&[("weft.file_secrets", Kind::StringValue("yes".into()))]);
        assert!(ProxyOptions::from_metadata(&bad).is_err());
    }

    #[test]
    fn an_ipv6_listen_address_is_read_and_an_ipv4_one_refused_there() {
        let options = ProxyOptions::from_metadata(&metadata(&[(
            "weft.listen_address_v6",
            Kind::StringValue("::".into()),
        )]))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(options.listen_address_v6.as_deref(), Some("::"));
        let e = ProxyOptions::from_metadata(&metadata(&[(
            "weft.listen_address_v6",
            Kind::StringValue("10.0.0.1".into()),
        )]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("weft.listen_address_v6"), "{e}");
        let plain = ProxyOptions::from_metadata(&metadata(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plain.listen_address_v6, None);
    }
}
