//! `weft server --store`: which store backend the control plane runs on — the
//! embedded store in `--data-dir` (the default, for one machine) or an etcd
//! cluster (for several replicas).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use weft_store::{EmbeddedOptions, EmbeddedStore, SharedStore};
use weft_store_etcd::{EtcdOptions, EtcdStore, EtcdTls};

/// Flags choosing and reaching the store.
#[derive(clap::Args, Clone, Debug)]
pub struct StoreArgs {
    /// `embedded` (a crash-safe store in --data-dir, for one machine) or
    /// `etcd://HOST:PORT[,HOST:PORT...]` (an etcd v3 cluster that several
    /// `weft server` replicas share).
    #[arg(long = "store", env = "WEFT_STORE", default_value = "embedded")]
    pub store: String,
    /// Every key Weft writes in etcd starts with this, so that several Weft
    /// installations share one cluster.
    #[arg(long, env = "WEFT_ETCD_PREFIX", default_value = weft_store_etcd::DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// PEM CA bundle of etcd's server certificates: connects with TLS.
    #[arg(long, env = "WEFT_ETCD_CA_FILE", value_name = "FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM client certificate for etcd (with --etcd-key-file): connects with TLS.
    #[arg(long, env = "WEFT_ETCD_CERT_FILE", value_name = "FILE")]
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM key of --etcd-cert-file.
    #[arg(long, env = "WEFT_ETCD_KEY_FILE", value_name = "FILE")]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd user name (with --etcd-password-file), for a cluster with authentication on.
    #[arg(long, env = "WEFT_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// File holding the password of --etcd-user (a file, so that it shows in no process list).
    #[arg(long, env = "WEFT_ETCD_PASSWORD_FILE", value_name = "FILE")]
    pub etcd_password_file: Option<PathBuf>,
    /// Seconds to keep retrying an unreachable etcd at start before giving up.
    #[arg(long, env = "WEFT_ETCD_CONNECT_TIMEOUT", default_value_t = 30.0)]
    pub etcd_connect_timeout: f64,
}

impl Default for StoreArgs {
    fn default() -> Self {
        StoreArgs {
            store: "embedded".into(),
            etcd_prefix: weft_store_etcd::DEFAULT_PREFIX.into(),
            etcd_ca_file: None,
            etcd_cert_file: None,
            etcd_key_file: None,
            etcd_user: None,
            etcd_password_file: None,
            etcd_connect_timeout: 30.0,
        }
    }
}

/// Where the store lives, as `--store` says.
#[derive(Debug, PartialEq, Eq)]
enum Choice {
    Embedded,
    Etcd(Vec<String>),
}

fn parse(store: &str) -> Result<Choice> {
    if store == "embedded" {
        return Ok(Choice::Embedded);
    }
    let Some(list) = store.strip_prefix("etcd://") else {
        bail!("--store must be `embedded` or `etcd://HOST:PORT[,HOST:PORT...]`, got {store:?}");
    };
    let endpoints: Vec<String> = list
        .split(',')
        .map(|e| e.trim().trim_end_matches('/').to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        bail!("--store {store:?} names no etcd endpoint");
    }
    Ok(Choice::Etcd(endpoints))
}

/// Opens the store `args` choose: the embedded one in `data_dir`, or etcd
/// (retrying an unreachable cluster with backoff, then failing with the
/// endpoints named).
pub async fn open(args: &StoreArgs, data_dir: &Path, segment_size: u64) -> Result<SharedStore> {
    match parse(&args.store)? {
        Choice::Embedded => {
            let store = EmbeddedStore::open(EmbeddedOptions {
                segment_size,
                ..EmbeddedOptions::new(data_dir)
            })
            .await
            .with_context(|| format!("opening the store in {}", data_dir.display()))?;
            Ok(store)
        }
        Choice::Etcd(endpoints) => {
            let user = match (&args.etcd_user, &args.etcd_password_file) {
                (Some(user), Some(file)) => {
                    let password = std::fs::read_to_string(file).with_context(|| {
                        format!("reading --etcd-password-file {}", file.display())
                    })?;
                    Some((
                        user.clone(),
                        password.trim_end_matches(['\r', '\n']).to_string(),
                    ))
                }
                (None, None) => None,
                _ => bail!("--etcd-user and --etcd-password-file go together"),
            };
            let tls = (args.etcd_ca_file.is_some()
                || args.etcd_cert_file.is_some()
                || args.etcd_key_file.is_some())
            .then(|| EtcdTls {
                ca_file: args.etcd_ca_file.clone(),
                cert_file: args.etcd_cert_file.clone(),
                key_file: args.etcd_key_file.clone(),
            });
            let connect_for = Duration::try_from_secs_f64(args.etcd_connect_timeout)
                .context("--etcd-connect-timeout must be a number of seconds")?;
            let options = EtcdOptions {
                prefix: args.etcd_prefix.clone(),
                tls,
                user,
                connect_for,
                ..EtcdOptions::new(endpoints)
            };
            let store = EtcdStore::connect(options)
                .await
                .context("opening the etcd store (--store)")?;
            tracing::info!(store = %args.store, prefix = %args.etcd_prefix, "serving from etcd");
            Ok(store)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn store_takes_embedded_or_an_etcd_endpoint_list() {
        assert_eq!(parse("embedded").unwrap(), Choice::Embedded);
        assert_eq!(
            parse("etcd://127.0.0.1:2379,127.0.0.1:2381/").unwrap(),
            Choice::Etcd(vec!["127.0.0.1:2379".into(), "127.0.0.1:2381".into()])
        );
        assert!(parse("etcd://").is_err());
        assert!(parse("consul://x:8500").is_err());
    }
}
