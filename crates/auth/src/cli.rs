//! `weft access-key`: create, list and revoke the keys the API accepts, through a running
//! server's `/weft/v1/access-keys`, signed with an administrator key from the environment
//! (see [`crate::client`]).

use serde_json::Value;

use crate::admin::{CreateKeyJson, KeyJson, KeyListJson, ACCESS_KEYS};
use crate::client::{self, Answer};
use crate::AuthError;

/// `weft access-key`'s flags.
#[derive(clap::Args, Debug)]
pub struct AccessKeyArgs {
    #[command(subcommand)]
    command: AccessKeyCommand,
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
enum AccessKeyCommand {
    /// Create a key. Prints it as an AWS credentials file on stdout (the secret is shown only
    /// once), so that `weft access-key create --name ci > ci-credentials` and
    /// `AWS_SHARED_CREDENTIALS_FILE=ci-credentials aws appmesh …` work.
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// What the key may do: a managed policy's name (AdministratorAccess,
        /// AWSAppMeshFullAccess, AWSAppMeshReadOnly, AWSAppMeshEnvoyAccess,
        /// AWSCloudMapFullAccess, AWSCloudMapReadOnlyAccess), a policy document (JSON), or
        /// @FILE holding one. Default: AdministratorAccess.
        #[arg(long)]
        policy: Option<String>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key: requests signed with it are refused at once.
    Revoke {
        /// The access key id.
        id: String,
    },
}

fn decode<T: serde::de::DeserializeOwned>(answer: &Answer) -> Result<T, AuthError> {
    if !(200..300).contains(&answer.status) {
        return Err(AuthError::Client(client::error_message(answer)));
    }
    serde_json::from_slice(&answer.body).map_err(|e| {
        AuthError::Client(format!("the server's answer is not the expected JSON: {e}"))
    })
}

fn policy_value(policy: &str) -> Result<Value, AuthError> {
    let text = match policy.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| AuthError::Client(format!("reading the policy in {path}: {e}")))?,
        None => policy.to_string(),
    };
    let text = text.trim();
    if text.starts_with('{') {
        serde_json::from_str(text).map_err(|e| {
            AuthError::InvalidInput(format!("The policy document does not parse: {e}"))
        })
    } else {
        Ok(Value::String(text.to_string()))
    }
}

/// Runs `weft access-key …`.
pub async fn run(args: AccessKeyArgs) -> Result<(), AuthError> {
    let creds = client::from_environment()?;
    let creds = creds.as_ref();
    match args.command {
        AccessKeyCommand::Create { name, policy } => {
            let policy = policy.as_deref().map(policy_value).transpose()?;
            let body = serde_json::to_vec(&CreateKeyJson { name, policy })
                .map_err(|e| AuthError::Client(e.to_string()))?;
            let answer =
                client::exchange(&args.server, "POST", ACCESS_KEYS, Some(body), creds).await?;
            let key: KeyJson = decode(&answer)?;
            if args.json {
                println!("{}", String::from_utf8_lossy(&answer.body));
                return Ok(());
            }
            let secret = crate::Secret::new(key.secret_access_key.unwrap_or_default());
            print!(
                "{}",
                crate::keys::credentials_file(
                    &key.access_key_id,
                    &secret,
                    &format!("Weft access key {:?} ({})", key.name, key.policy_name)
                )
            );
            eprintln!(
                "access key {} ({}, {}); the secret is shown once",
                key.access_key_id, key.name, key.policy_name
            );
        }
        AccessKeyCommand::List => {
            let answer = client::exchange(&args.server, "GET", ACCESS_KEYS, None, creds).await?;
            let list: KeyListJson = decode(&answer)?;
            if args.json {
                println!("{}", String::from_utf8_lossy(&answer.body));
                return Ok(());
            }
            println!("{:<22} {:<8} {:<26} NAME", "ID", "STATE", "POLICY");
            for k in &list.access_keys {
                println!(
                    "{:<22} {:<8} {:<26} {}",
                    k.access_key_id, k.state, k.policy_name, k.name
                );
            }
        }
        AccessKeyCommand::Revoke { id } => {
            let path = format!("{ACCESS_KEYS}/{id}");
            let answer = client::exchange(&args.server, "DELETE", &path, None, creds).await?;
            let key: KeyJson = decode(&answer)?;
            if args.json {
                println!("{}", String::from_utf8_lossy(&answer.body));
                return Ok(());
            }
            println!("revoked access key {} ({})", key.access_key_id, key.name);
        }
    }
    Ok(())
}
