//! The crate's one error type.

/// What can go wrong reading the redirection settings or applying them.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// A variable's value is malformed or out of range; names the variable and the value.
    #[error("{variable}: {reason}")]
    InvalidSetting {
        /// The variable (and flag) at fault, e.g. `APPMESH_APP_PORTS`.
        variable: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// The process may not change the network's rules.
    #[error(
        "changing netfilter rules needs CAP_NET_ADMIN, which this process lacks: run it as root \
         (an init container or ECS proxyConfiguration has it) or grant the capability"
    )]
    NotPermitted,
    /// No usable netfilter front end on this host.
    #[error("no netfilter front end can be used here: {detail}")]
    NoNetfilter {
        /// What was tried and how each failed.
        detail: String,
    },
    /// Setting up a network namespace ([`crate::lab`]) failed.
    #[error("`{command}` failed: {detail}")]
    Lab {
        /// The command or step.
        command: String,
        /// What went wrong.
        detail: String,
    },
    /// A netfilter command failed; nothing of the failed transaction was applied.
    #[error("{backend}: `{command}` failed: {detail}")]
    Command {
        /// The front end in use.
        backend: &'static str,
        /// The command line that failed.
        command: String,
        /// Its exit status and error output.
        detail: String,
    },
}

impl InterceptError {
    pub(crate) fn invalid(variable: &'static str, reason: impl Into<String>) -> Self {
        InterceptError::InvalidSetting {
            variable,
            reason: reason.into(),
        }
    }
}
