//! Self-registration of the workload in Weft's instance registry — what ECS
//! did with Cloud Map for App Mesh tasks: register the instance (address,
//! port, attributes) once the application is ready, report it unhealthy when
//! it stops answering and healthy again when it recovers, and deregister it on
//! shutdown, before Envoy drains.
//!
//! Speaks the Cloud Map API (`servicediscovery`, awsJson 1.1) to the control
//! plane, as any Cloud Map client would.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpStream;
use tracing::{info, warn};

use bytes::Bytes;

use crate::error::AgentError;
use crate::http_client;

/// Flags and variables of self-registration (all optional: without a
/// namespace and service the agent does not register).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RegistrationArgs {
    /// Cloud Map namespace (HTTP namespace name) to register in.
    #[arg(long, env = "WEFT_REGISTER_NAMESPACE")]
    pub register_namespace: Option<String>,
    /// Cloud Map service (name) to register in.
    #[arg(long, env = "WEFT_REGISTER_SERVICE")]
    pub register_service: Option<String>,
    /// Instance id (default: `<service>-<address>-<port>`).
    #[arg(long, env = "WEFT_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Address registered as AWS_INSTANCE_IPV4 (default 127.0.0.1).
    #[arg(long, env = "WEFT_INSTANCE_ADDRESS")]
    pub instance_address: Option<IpAddr>,
    /// Port registered as AWS_INSTANCE_PORT, and probed for health.
    #[arg(long, env = "WEFT_INSTANCE_PORT")]
    pub instance_port: Option<u16>,
    /// Custom attributes, `key=value,key=value`.
    #[arg(long, env = "WEFT_INSTANCE_ATTRIBUTES", default_value = "")]
    pub instance_attributes: String,
    /// HTTP path probed on the instance for health (default: a TCP connect).
    #[arg(long, env = "WEFT_HEALTH_PATH")]
    pub health_path: Option<String>,
    /// Milliseconds between health probes.
    #[arg(long, env = "WEFT_HEALTH_INTERVAL_MS", default_value_t = 1000)]
    pub health_interval_ms: u64,
    /// The registry's address (Weft's API listener); several replicas' as a comma-separated
    /// list, each call going to the next when one cannot be reached.
    #[arg(long, env = "WEFT_REGISTRY_ENDPOINT", default_value = "127.0.0.1:9080")]
    pub registry_endpoint: String,
}

/// A validated registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub namespace: String,
    pub service: String,
    pub instance_id: String,
    pub address: IpAddr,
    pub port: u16,
    pub attributes: BTreeMap<String, String>,
    pub health_path: Option<String>,
    pub interval: Duration,
    pub endpoint: String,
}

fn config_error(setting: &'static str, message: impl Into<String>) -> AgentError {
    AgentError::Config {
        setting,
        message: message.into(),
    }
}

impl RegistrationArgs {
    /// The registration these flags ask for, if any.
    pub fn registration(&self) -> Result<Option<Registration>, AgentError> {
        let (namespace, service) = match (&self.register_namespace, &self.register_service) {
            (None, None) => return Ok(None),
            (Some(n), Some(s)) => (n.clone(), s.clone()),
            _ => {
                return Err(config_error(
                    "WEFT_REGISTER_NAMESPACE / WEFT_REGISTER_SERVICE",
                    "set both the namespace and the service, or neither",
                ))
            }
        };
        let port = self.instance_port.ok_or_else(|| {
            config_error(
                "WEFT_INSTANCE_PORT (--instance-port)",
                "required to register an instance",
            )
        })?;
        let address = self
            .instance_address
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        let mut attributes = BTreeMap::new();
        for pair in self
            .instance_attributes
            .split(',')
            .filter(|p| !p.trim().is_empty())
        {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(config_error(
                    "WEFT_INSTANCE_ATTRIBUTES (--instance-attributes)",
                    format!("expected key=value, got {pair:?}"),
                ));
            };
            attributes.insert(k.trim().to_string(), v.trim().to_string());
        }
        Ok(Some(Registration {
            instance_id: self
                .instance_id
                .clone()
                .unwrap_or_else(|| format!("{service}-{address}-{port}")),
            namespace,
            service,
            address,
            port,
            attributes,
            health_path: self.health_path.clone(),
            interval: Duration::from_millis(self.health_interval_ms.max(100)),
            endpoint: self
                .registry_endpoint
                .split(',')
                .map(|e| e.trim().trim_start_matches("http://"))
                .filter(|e| !e.is_empty())
                .collect::<Vec<_>>()
                .join(","),
        }))
    }
}

/// One awsJson 1.1 call to the registry (`Route53AutoNaming_v20170314.<operation>`).
/// `endpoint` may list several replicas (comma-separated): one that cannot be reached passes
/// the call to the next; an answer, error or not, is the answer.
pub async fn call(endpoint: &str, operation: &str, body: Value) -> Result<Value, AgentError> {
    let mut last = None;
    for one in endpoint.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match call_one(one, operation, &body).await {
            Err(Unreached(e)) => {
                tracing::debug!(registry = one, error = %e, "registry replica unreachable; trying the next");
                last = Some(e);
            }
            Ok(answer) => return answer,
        }
    }
    Err(last.unwrap_or_else(|| AgentError::Registry {
        operation: operation.into(),
        message: "no registry address".into(),
    }))
}

/// A call that reached no server (so another replica may take it).
struct Unreached(AgentError);

async fn call_one(
    endpoint: &str,
    operation: &str,
    body: &Value,
) -> Result<Result<Value, AgentError>, Unreached> {
    let fail = |message: String| AgentError::Registry {
        operation: operation.into(),
        message,
    };
    let target = format!("Route53AutoNaming_v20170314.{operation}");
    let body = body.to_string();
    let mut headers = vec![
        ("x-amz-target", target.as_str()),
        ("content-type", "application/x-amz-json-1.1"),
    ];
    // Signed as any Cloud Map client signs (SigV4, service `servicediscovery`) with the
    // credentials of the environment, as the AWS CLI finds them; unsigned without any, which
    // only a server started with --insecure-no-auth accepts.
    let credentials = match weft_auth::client::from_environment() {
        Ok(c) => c,
        Err(e) => return Ok(Err(fail(e.to_string()))),
    };
    let signature = match &credentials {
        Some(creds) => match weft_auth::client::signature_headers(
            "POST",
            endpoint,
            "/",
            &headers,
            body.as_bytes(),
            creds,
            "servicediscovery",
            std::time::SystemTime::now(),
        ) {
            Ok(headers) => headers,
            Err(e) => return Ok(Err(fail(e.to_string()))),
        },
        None => Vec::new(),
    };
    headers.extend(signature.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let exchange = http_client::exchange(endpoint, "POST", "/", &headers, body.into());
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| Unreached(fail(format!("{endpoint} timed out"))))?
        .map_err(|e| Unreached(fail(format!("{endpoint}: {e}"))))?;
    let value: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
    Ok(if answer.status == 200 {
        Ok(value)
    } else {
        let kind = value["__type"].as_str().unwrap_or("error");
        let message = value["Message"]
            .as_str()
            .or(value["message"].as_str())
            .unwrap_or("");
        Err(fail(format!("{kind}: {message}")))
    })
}

/// Finds the service id of `namespace`/`service` by name.
async fn service_id(reg: &Registration) -> Result<String, AgentError> {
    let namespaces = call(
        &reg.endpoint,
        "ListNamespaces",
        json!({"Filters": [{"Name": "NAME", "Values": [reg.namespace], "Condition": "EQ"}]}),
    )
    .await?;
    let namespace_id = namespaces["Namespaces"]
        .as_array()
        .and_then(|a| a.iter().find(|n| n["Name"] == reg.namespace))
        .and_then(|n| n["Id"].as_str())
        .ok_or_else(|| AgentError::Registry {
            operation: "ListNamespaces".into(),
            message: format!("no namespace named {:?}", reg.namespace),
        })?
        .to_string();
    let mut token: Option<String> = None;
    loop {
        let mut body = json!({"Filters": [{"Name": "NAMESPACE_ID", "Values": [namespace_id], "Condition": "EQ"}]});
        if let Some(t) = &token {
            body["NextToken"] = json!(t);
        }
        let page = call(&reg.endpoint, "ListServices", body).await?;
        if let Some(id) = page["Services"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["Name"] == reg.service))
            .and_then(|s| s["Id"].as_str())
        {
            return Ok(id.to_string());
        }
        match page["NextToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => {
                return Err(AgentError::Registry {
                    operation: "ListServices".into(),
                    message: format!(
                        "no service {:?} in namespace {:?}",
                        reg.service, reg.namespace
                    ),
                })
            }
        }
    }
}

/// Whether the instance answers: an HTTP GET of the health path answering
/// 2xx, or else a TCP connect.
async fn probe(reg: &Registration) -> bool {
    let authority = std::net::SocketAddr::new(reg.address, reg.port).to_string();
    let attempt = async {
        let Some(path) = &reg.health_path else {
            return TcpStream::connect(&authority).await.is_ok();
        };
        http_client::exchange(&authority, "GET", path, &[], Bytes::new())
            .await
            .is_ok_and(|answer| (200..300).contains(&answer.status))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .unwrap_or(false)
}

/// Registers the instance once it answers, follows its health, and
/// deregisters it when `shutdown` resolves. Registry errors are logged and
/// retried: the workload keeps running whatever the registry does.
pub async fn run_registration(reg: Registration, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut service: Option<String> = None;
    let mut registered = false;
    // What the registry was last told, so only changes are sent.
    let mut reported_healthy: Option<bool> = None;
    let mut custom_health = true;
    let mut tick = tokio::time::interval(reg.interval);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {}
        }
        let healthy = probe(&reg).await;
        let id = match &service {
            Some(id) => id.clone(),
            None => match service_id(&reg).await {
                Ok(id) => {
                    service = Some(id.clone());
                    id
                }
                Err(e) => {
                    warn!(error = %e, "cannot find the registry service yet");
                    continue;
                }
            },
        };
        if !registered {
            if !healthy {
                continue; // Register only once the application answers.
            }
            let mut attributes = serde_json::Map::new();
            attributes.insert("AWS_INSTANCE_IPV4".into(), json!(reg.address.to_string()));
            attributes.insert("AWS_INSTANCE_PORT".into(), json!(reg.port.to_string()));
            for (k, v) in &reg.attributes {
                attributes.insert(k.clone(), json!(v));
            }
            let body =
                json!({"ServiceId": id, "InstanceId": reg.instance_id, "Attributes": attributes});
            match call(&reg.endpoint, "RegisterInstance", body).await {
                Ok(_) => {
                    info!(instance = %reg.instance_id, service = %reg.service, "instance registered");
                    registered = true;
                    reported_healthy = Some(true);
                }
                Err(e) => warn!(error = %e, "registering the instance failed; retrying"),
            }
            continue;
        }
        if custom_health && reported_healthy != Some(healthy) {
            let status = if healthy { "HEALTHY" } else { "UNHEALTHY" };
            let body = json!({"ServiceId": id, "InstanceId": reg.instance_id, "Status": status});
            match call(&reg.endpoint, "UpdateInstanceCustomHealthStatus", body).await {
                Ok(_) => {
                    info!(instance = %reg.instance_id, status, "instance health reported");
                    reported_healthy = Some(healthy);
                }
                Err(AgentError::Registry { message, .. })
                    if message.starts_with("CustomHealthNotFound") =>
                {
                    // The service has no custom health check: health is not tracked there.
                    warn!(service = %reg.service, "service has no HealthCheckCustomConfig; health not reported");
                    custom_health = false;
                }
                Err(e) => warn!(error = %e, "reporting health failed; retrying"),
            }
        }
    }
    if let (true, Some(id)) = (registered, service) {
        let body = json!({"ServiceId": id, "InstanceId": reg.instance_id});
        match call(&reg.endpoint, "DeregisterInstance", body).await {
            Ok(_) => info!(instance = %reg.instance_id, "instance deregistered"),
            Err(e) => warn!(error = %e, "deregistering the instance failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_namespace_and_service_means_no_registration() {
        assert_eq!(RegistrationArgs::default().registration().ok(), Some(None));
    }

    #[test]
    fn attributes_and_defaults_are_parsed() {
        let args = RegistrationArgs {
            register_namespace: Some("apps.local".into()),
            register_service: Some("red".into()),
            instance_port: Some(8080),
            instance_attributes: "version=v1, zone = a".into(),
            health_interval_ms: 1000,
            registry_endpoint: "http://127.0.0.1:9080".into(),
            ..Default::default()
        };
        let reg = args.registration().ok().flatten();
        let reg = reg.as_ref();
        assert_eq!(
            reg.map(|r| r.instance_id.as_str()),
            Some("red-127.0.0.1-8080")
        );
        assert_eq!(reg.map(|r| r.endpoint.as_str()), Some("127.0.0.1:9080"));
        assert_eq!(
            reg.and_then(|r| r.attributes.get("zone"))
                .map(String::as_str),
            Some("a")
        );
    }

    #[test]
    fn a_namespace_without_a_service_is_refused() {
        let args = RegistrationArgs {
            register_namespace: Some("n".into()),
            ..Default::default()
        };
        assert!(args.registration().is_err());
    }
}
