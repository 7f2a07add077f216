//! The command line: `weft server`'s CA flags ([`CaArgs`]) and `weft join-token`
//! ([`JoinTokenArgs`]), which calls a running server's API, signed with an administrator's
//! access key.

use std::path::PathBuf;

use weft_auth::client::Answer;

use crate::duration;
use crate::http::{CreateTokenJson, TokenJson, TokenListJson, JOIN_TOKENS};
use crate::identity::{TrustDomain, DEFAULT_TRUST_DOMAIN};
use crate::service::{CaConfig, MAX_WORKLOAD_CERT_TTL, MIN_WORKLOAD_CERT_TTL};
use crate::CaError;

/// `weft server`'s certificate authority flags.
#[derive(clap::Args, Debug, Clone)]
pub struct CaArgs {
    /// SPIFFE trust domain of the workload certificates
    /// (`spiffe://<trust-domain>/mesh/<mesh>/virtualNode/<name>`).
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// The operator's CA certificate (PEM): the signing certificate (a root or an
    /// intermediate) first, then the certificates above it up to the root. Without it, Weft
    /// generates a root on first start and keeps it in its store. Needs --ca-key.
    #[arg(long, env = "WEFT_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, SEC1 or PKCS#1) of --ca-cert's first certificate. Read at
    /// start; never copied into the store.
    #[arg(long, env = "WEFT_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Lifetime of the workload certificates the CA issues (e.g. 24h, 90m; 1m to 365d).
    #[arg(long, env = "WEFT_WORKLOAD_CERT_TTL", default_value = "24h")]
    pub workload_cert_ttl: String,
    /// Lifetime of join tokens created without a --ttl of their own (at most 30d).
    #[arg(long, env = "WEFT_JOIN_TOKEN_TTL", default_value = "1h")]
    pub join_token_ttl: String,
}

impl Default for CaArgs {
    fn default() -> Self {
        CaArgs {
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            ca_cert: None,
            ca_key: None,
            workload_cert_ttl: "24h".into(),
            join_token_ttl: "1h".into(),
        }
    }
}

impl CaArgs {
    /// The flags, checked.
    pub fn config(&self) -> Result<CaConfig, CaError> {
        let trust_domain: TrustDomain = self.trust_domain.parse()?;
        let workload_cert_ttl = duration::parse(&self.workload_cert_ttl)
            .map_err(|e| CaError::Config(format!("--workload-cert-ttl: {e}")))?;
        if !(MIN_WORKLOAD_CERT_TTL..=MAX_WORKLOAD_CERT_TTL).contains(&workload_cert_ttl) {
            return Err(CaError::Config(format!(
                "--workload-cert-ttl must be between 10s and 365d, got {}",
                self.workload_cert_ttl
            )));
        }
        let join_token_ttl = duration::parse(&self.join_token_ttl)
            .and_then(crate::token::check_ttl)
            .map_err(|e| CaError::Config(format!("--join-token-ttl: {e}")))?;
        let operator_ca = match (&self.ca_cert, &self.ca_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => return Err(CaError::Config("--ca-cert and --ca-key go together".into())),
        };
        Ok(CaConfig {
            trust_domain,
            workload_cert_ttl,
            join_token_ttl,
            operator_ca,
        })
    }
}

/// `weft join-token`: create, list and revoke the tokens proxies join with.
#[derive(clap::Args, Debug)]
pub struct JoinTokenArgs {
    #[command(subcommand)]
    command: JoinTokenCommand,
    /// The server's API address.
    #[arg(
        long,
        global = true,
        env = "WEFT_SERVER",
        default_value = "http://127.0.0.1:9080"
    )]
    server: String,
    /// Print the server's JSON answer instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand, Debug)]
enum JoinTokenCommand {
    /// Create a token for one virtual node or gateway. Prints the token alone on stdout (it is
    /// shown only once; the server keeps only its hash) and its details on stderr, so that
    /// `TOKEN=$(weft join-token create --resource …)` works. Reusable by every replica until
    /// it expires or is revoked.
    Create {
        /// `mesh/<mesh>/virtualNode/<name>`, `mesh/<mesh>/virtualGateway/<name>`, or its ARN.
        #[arg(long)]
        resource: String,
        /// Lifetime (e.g. 1h, 30m, 7d; at most 30d). Default: the server's --join-token-ttl.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List tokens (never their secrets): id, resource, state, expiry.
    List,
    /// Revoke a token: proxies can no longer join with it. Certificates already issued stay
    /// valid until they expire.
    Revoke {
        /// The token's id (the second part of `weft-jt.<id>.<secret>`, or from `list`).
        id: String,
    },
}

/// One exchange with the server's admin endpoints, signed with SigV4 (service `weft`) with the
/// credentials of the environment, as the AWS CLI finds them (see [`weft_auth::client`]).
async fn exchange(
    base: &str,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Answer, CaError> {
    let creds =
        weft_auth::client::from_environment().map_err(|e| CaError::Client(e.to_string()))?;
    weft_auth::client::exchange(base, method, path, body, creds.as_ref())
        .await
        .map_err(|e| CaError::Client(e.to_string()))
}

fn decode<T: serde::de::DeserializeOwned>(answer: &Answer) -> Result<T, CaError> {
    if !(200..300).contains(&answer.status) {
        return Err(CaError::Client(weft_auth::client::error_message(answer)));
    }
    serde_json::from_slice(&answer.body)
        .map_err(|e| CaError::Client(format!("the server's answer is not the expected JSON: {e}")))
}

fn print_json(answer: &Answer) {
    println!("{}", String::from_utf8_lossy(&answer.body));
}

/// Runs `weft join-token …`.
pub async fn run(args: JoinTokenArgs) -> Result<(), CaError> {
    match args.command {
        JoinTokenCommand::Create { resource, ttl } => {
            let ttl_seconds = ttl
                .map(|t| duration::parse(&t).map(|d| d.as_secs()))
                .transpose()?;
            let body = serde_json::to_vec(&CreateTokenJson {
                resource,
                ttl_seconds,
            })
            .map_err(|e| CaError::Client(e.to_string()))?;
            let answer = exchange(&args.server, "POST", JOIN_TOKENS, Some(body)).await?;
            let token: TokenJson = decode(&answer)?;
            if args.json {
                print_json(&answer);
                return Ok(());
            }
            println!("{}", token.token.unwrap_or_default());
            eprintln!(
                "join token {} for {} ({}), expires {}; shown once, reusable until then",
                token.id, token.resource, token.spiffe_id, token.expires_at
            );
        }
        JoinTokenCommand::List => {
            let answer = exchange(&args.server, "GET", JOIN_TOKENS, None).await?;
            let list: TokenListJson = decode(&answer)?;
            if args.json {
                print_json(&answer);
                return Ok(());
            }
            println!("{:<18} {:<8} {:<21} RESOURCE", "ID", "STATE", "EXPIRES");
            for t in &list.join_tokens {
                println!(
                    "{:<18} {:<8} {:<21} {}",
                    t.id, t.state, t.expires_at, t.resource
                );
            }
            if list.join_tokens.is_empty() {
                println!("(no join tokens)");
            }
        }
        JoinTokenCommand::Revoke { id } => {
            let path = format!("{JOIN_TOKENS}/{id}");
            let answer = exchange(&args.server, "DELETE", &path, None).await?;
            let token: TokenJson = decode(&answer)?;
            if args.json {
                print_json(&answer);
                return Ok(());
            }
            println!("revoked join token {} for {}", token.id, token.resource);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_default_flags_make_a_valid_config_and_bad_ones_are_refused() {
        let config = CaArgs::default().config().unwrap();
        assert_eq!(config.trust_domain.as_str(), "weft.local");
        assert_eq!(config.workload_cert_ttl, Duration::from_secs(86_400));
        assert_eq!(config.join_token_ttl, Duration::from_secs(3600));
        assert!(config.operator_ca.is_none());
        for bad in [
            CaArgs {
                workload_cert_ttl: "9s".into(),
                ..CaArgs::default()
            },
            CaArgs {
                join_token_ttl: "31d".into(),
                ..CaArgs::default()
            },
            CaArgs {
                trust_domain: "Not A Domain".into(),
                ..CaArgs::default()
            },
            CaArgs {
                ca_cert: Some("x".into()),
                ..CaArgs::default()
            },
        ] {
            assert!(bad.config().is_err(), "{bad:?}");
        }
    }
}
