//! `weft backup` and `weft restore` (see the `weft-backup` crate): every App Mesh and Cloud Map
//! resource of a control plane as one JSON document, through its API, signed with the AWS CLI's
//! credentials as `weft proxy-status` signs; and that document created on another control plane.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};

/// `weft backup`.
#[derive(clap::Args)]
pub struct BackupArgs {
    /// The control plane's API address.
    #[arg(
        long = "endpoint-url",
        env = "WEFT_ENDPOINT",
        default_value = "http://127.0.0.1:9080"
    )]
    endpoint_url: String,
    /// Write the backup to this file instead of standard output.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
}

/// `weft restore`.
#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The control plane's API address.
    #[arg(
        long = "endpoint-url",
        env = "WEFT_ENDPOINT",
        default_value = "http://127.0.0.1:9080"
    )]
    endpoint_url: String,
    /// Read the backup from this file instead of standard input.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
}

fn client(endpoint: &str) -> Result<weft_backup::Client> {
    // Signed with the credentials the AWS CLI would use; unsigned without any, which only a
    // server with --insecure-no-auth answers.
    let creds = weft_auth::client::from_environment()?;
    Ok(weft_backup::Client::new(endpoint, creds))
}

/// Exports every resource of the control plane at `--endpoint-url`.
pub async fn backup(args: BackupArgs) -> Result<()> {
    let backup = weft_backup::export(&client(&args.endpoint_url)?)
        .await
        .with_context(|| format!("reading the resources of {}", args.endpoint_url))?;
    let mut text = serde_json::to_vec_pretty(&backup)?;
    text.push(b'\n');
    match &args.file {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().lock().write_all(&text)?,
    }
    eprintln!(
        "backed up {} App Mesh resources and {} Cloud Map namespaces from {}",
        backup.app_mesh.len(),
        backup.cloud_map.len(),
        args.endpoint_url
    );
    Ok(())
}

/// Creates every resource of a backup the control plane at `--endpoint-url` lacks.
pub async fn restore(args: RestoreArgs) -> Result<()> {
    let text = match &args.file {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => {
            let mut text = Vec::new();
            std::io::stdin().lock().read_to_end(&mut text)?;
            text
        }
    };
    let backup = weft_backup::Backup::from_json(&text)?;
    let restored = weft_backup::restore(&client(&args.endpoint_url)?, &backup).await?;
    eprintln!(
        "restored into {}: {} created, {} already there and identical",
        args.endpoint_url, restored.created, restored.unchanged
    );
    Ok(())
}
