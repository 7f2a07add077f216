//! The demo's steady load: a few requests a second through the front service, so that the
//! dashboard shows live traffic on the demo's mesh from the start.

use std::future::Future;
use std::time::Duration;

/// Requests a second the demo sends through `front`.
pub(super) const PER_SECOND: u64 = 4;

/// Calls `send` [`PER_SECOND`] times a second, forever (the caller drops it to stop); a failed
/// request is only counted by the mesh's Envoys, like any other.
pub(super) async fn steady<F, Fut, T>(mut send: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / PER_SECOND));
    // After a slow request, carry on at the same pace rather than in a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let _ = send().await;
    }
}

/// The guide's lines about the dashboard: its URL with a one-time login token, and how to get
/// another.
pub(super) fn dashboard_lines(cp: &crate::server::ControlPlane, credentials: &str) -> String {
    let api = cp.api_addr;
    match cp.dashboard.login_path() {
        Ok(path) => format!(
            "Live dashboard ({PER_SECOND} requests a second go through front meanwhile):\n  \
             http://{api}{path}\n  (the link works once, within {} s; for another: {credentials}; \
             weft dashboard --endpoint {api})",
            weft_ui::session::LOGIN_TTL.as_secs()
        ),
        Err(e) => format!("The dashboard is at http://{api}/ui/ ({e})"),
    }
}
