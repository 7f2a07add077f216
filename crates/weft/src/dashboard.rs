//! The dashboard at `/ui` on the API port (see `weft_ui`), and `weft dashboard`, which asks a
//! control plane for a login token with the administrator's signed call and prints the URL
//! that opens a session.

use anyhow::{bail, Context, Result};
use tokio::task::JoinHandle;
use weft_store::SharedStore;

/// Starts the dashboard's store follower (pushed onto `tasks`) and returns the dashboard, whose
/// routers the server merges: `admin_router` behind SigV4, `router` outside it.
pub fn start(
    store: SharedStore,
    ads: weft_xds::AdsServer,
    traffic: weft_ui::TrafficSource,
    open: bool,
    tasks: &mut Vec<JoinHandle<()>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> weft_ui::Dashboard {
    let dashboard = weft_ui::Dashboard::new(store, ads, traffic, open);
    tasks.push(tokio::spawn(dashboard.clone().follow(stop)));
    dashboard
}

/// Arguments of `weft dashboard`.
#[derive(clap::Args)]
pub struct DashboardArgs {
    /// The control plane's API address.
    #[arg(long, env = "WEFT_ENDPOINT", default_value = "127.0.0.1:9080")]
    endpoint: String,
}

/// The dashboard URL with a fresh one-time login token, from the control plane at `endpoint`,
/// signed with the credentials the AWS CLI would use.
pub async fn login_url(endpoint: &str) -> Result<String> {
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let creds = weft_auth::client::from_environment()?;
    let exchange =
        weft_auth::client::exchange(addr, "POST", weft_ui::SESSIONS_PATH, None, creds.as_ref());
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("the control plane at {addr} did not answer in 10 s"))?
        .map_err(|e| anyhow::anyhow!("asking the control plane at {addr}: {e}"))?;
    if answer.status != 200 {
        bail!(
            "{addr} answered {}: {}",
            answer.status,
            weft_auth::client::error_message(&answer)
        );
    }
    let body: serde_json::Value =
        serde_json::from_slice(&answer.body).context("the answer is not JSON")?;
    let path = body["path"]
        .as_str()
        .context("the answer names no dashboard path")?;
    Ok(format!("http://{addr}{path}"))
}

/// Runs `weft dashboard`: prints the URL to open (its token works once, for two minutes).
pub async fn run(args: DashboardArgs) -> Result<()> {
    let url = login_url(&args.endpoint).await?;
    println!("{url}");
    eprintln!(
        "Open this URL in a browser on this machine within {} s; it works once.",
        weft_ui::session::LOGIN_TTL.as_secs()
    );
    Ok(())
}
