//! Weft's live dashboard at `/ui` on the API port, for an operator who used the App Mesh and
//! CloudWatch consoles: a mesh's topology with route weights and live traffic (failing edges in
//! red), every resource with its references both ways and its history, and the connected
//! proxies with what they ACKed and NACKed.
//!
//! The page and its scripts (`/ui/…`) are public: they hold no data. The data (`/ui/api/…`)
//! needs a session, opened with a one-time login token that an administrator's signed call
//! (`POST /weft/v1/ui/sessions`, what `weft dashboard` does) returns — unless the server runs
//! with `--insecure-no-auth`. The page refreshes through server-sent events
//! (<https://html.spec.whatwg.org/multipage/server-sent-events.html>) driven by the store's
//! watch and the traffic store's change counter.

mod assets;
mod error;
pub mod graph;
mod proxies;
mod resources;
pub mod session;
pub mod traffic;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{watch, Semaphore};
use weft_store::{Range, SharedStore};

pub use error::UiError;
pub use session::Sessions;
pub use traffic::TrafficSource;

/// The signed administrator's endpoint that issues login tokens.
pub const SESSIONS_PATH: &str = "/weft/v1/ui/sessions";
/// Live-refresh (SSE) connections open at once.
pub const MAX_EVENT_STREAMS: usize = 32;
/// The error rate over which an edge or node is drawn failing (5%).
pub const FAILING_ERROR_RATE: f64 = 0.05;
/// Changes closer together than this are sent to the page as one.
const COALESCE: Duration = Duration::from_millis(150);
/// Live figures go to a page at most this often.
const LIVE_EVERY: Duration = Duration::from_secs(1);

/// The dashboard: its sources and its sessions.
#[derive(Clone)]
pub struct Dashboard {
    inner: Arc<Inner>,
}

struct Inner {
    store: SharedStore,
    ads: weft_xds::AdsServer,
    traffic: TrafficSource,
    sessions: Sessions,
    open: bool,
    revisions: watch::Sender<i64>,
    /// Bumped when a mesh is created, updated or deleted.
    meshes: watch::Sender<u64>,
    /// Set when the server stops: open event streams end, so that connections close.
    stopped: watch::Sender<bool>,
    streams: Arc<Semaphore>,
}

impl Dashboard {
    /// A dashboard over `store` (the meshes), `ads` (the proxies) and `traffic`. With `open`
    /// (`--insecure-no-auth`) its data needs no session.
    pub fn new(
        store: SharedStore,
        ads: weft_xds::AdsServer,
        traffic: TrafficSource,
        open: bool,
    ) -> Dashboard {
        Dashboard {
            inner: Arc::new(Inner {
                store,
                ads,
                traffic,
                sessions: Sessions::default(),
                open,
                revisions: watch::channel(0).0,
                meshes: watch::channel(0).0,
                stopped: watch::channel(false).0,
                streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
            }),
        }
    }

    /// Follows the store's meshes and resources until `shutdown`, telling every open page of
    /// each change (one watch for all of them).
    pub async fn follow(self, shutdown: impl std::future::Future<Output = ()>) {
        self.follow_until(shutdown).await;
        self.inner.stopped.send_replace(true);
    }

    async fn follow_until(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let store = &self.inner.store;
            let watched = async {
                let revision = store.revision().await?;
                let meshes = store.watch("mesh/", revision).await?;
                let resources = store.watch("res/", revision).await?;
                Ok::<_, weft_store::StoreError>((revision, meshes, resources))
            };
            let (revision, meshes, resources) = tokio::select! {
                _ = &mut shutdown => return,
                w = watched => match w {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::warn!(error = %e, "the dashboard could not watch the store; retrying");
                        tokio::select! {
                            _ = &mut shutdown => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                }
            };
            self.inner.revisions.send_replace(revision);
            let mut feed = futures::stream::select(meshes, resources);
            loop {
                tokio::select! {
                    _ = &mut shutdown => return,
                    event = feed.next() => match event {
                        Some(Ok(event)) => {
                            if event.key.starts_with("mesh/") {
                                self.inner.meshes.send_modify(|n| *n += 1);
                            }
                            self.inner.revisions.send_replace(event.revision);
                        }
                        _ => break,
                    }
                }
            }
            // The watch ended (compaction, a store restart): watch again from the latest.
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// The public page and the session-guarded data endpoints (`/ui/…`), to be served outside
    /// the API's SigV4 layer.
    pub fn router(&self) -> Router {
        let data = Router::new()
            .route("/ui/api/meshes", get(meshes))
            .route("/ui/api/graph", get(graph))
            .route("/ui/api/events", get(events))
            .route("/ui/api/edge", get(edge))
            .route("/ui/api/resources", get(resources::list))
            .route("/ui/api/resource", get(resources::one))
            .route("/ui/api/proxies", get(proxies::list))
            .route("/ui/api/proxy-config", get(proxies::config))
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                require_session,
            ));
        Router::new()
            .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
            .route("/ui/", get(|| async { assets::serve("") }))
            .route(
                "/ui/{*path}",
                get(|Path(path): Path<String>| async move { assets::serve(&path) }),
            )
            .route("/ui/api/login", post(login))
            .merge(data)
            .with_state(self.clone())
    }

    /// The administrator's endpoint issuing login tokens, to be served behind the API's SigV4
    /// layer (IAM action `weft:CreateDashboardSession`).
    pub fn admin_router(&self) -> Router {
        Router::new()
            .route(SESSIONS_PATH, post(create_session))
            .with_state(self.clone())
    }

    /// A new one-time login token, as the path that opens a session with it
    /// (`/ui/?login=TOKEN`): for in-process callers such as `weft demo`.
    pub fn login_path(&self) -> Result<String, UiError> {
        let token = self.inner.sessions.issue_login(Instant::now())?;
        Ok(format!("/ui/?login={token}"))
    }

    pub(crate) fn store(&self) -> &SharedStore {
        &self.inner.store
    }

    pub(crate) fn ads(&self) -> &weft_xds::AdsServer {
        &self.inner.ads
    }

    /// The graph of `mesh` with its live figures.
    async fn graph_of(&self, mesh: &str) -> Result<(graph::Graph, graph::LiveFigures), UiError> {
        let resources = resources::of_mesh(self.store(), mesh).await?;
        let graph = graph::build(mesh, &resources);
        let live = graph::live(&graph, &self.inner.traffic.view(), FAILING_ERROR_RATE);
        Ok((graph, live))
    }
}

async fn require_session(
    State(ui): State<Dashboard>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if ui.inner.open
        || Sessions::from_headers(request.headers())
            .is_some_and(|s| ui.inner.sessions.is_open(&s, Instant::now()))
    {
        return next.run(request).await;
    }
    UiError::Unauthenticated.into_response()
}

async fn create_session(State(ui): State<Dashboard>) -> Result<Response, UiError> {
    let path = ui.login_path()?;
    let token = path.trim_start_matches("/ui/?login=");
    Ok(Json(serde_json::json!({
        "loginToken": token,
        "expiresInSeconds": session::LOGIN_TTL.as_secs(),
        "path": path,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct LoginBody {
    token: String,
}

async fn login(
    State(ui): State<Dashboard>,
    Json(body): Json<LoginBody>,
) -> Result<Response, UiError> {
    let session = ui.inner.sessions.redeem(&body.token, Instant::now())?;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, Sessions::cookie(&session))],
    )
        .into_response())
}

/// The names of every mesh.
async fn mesh_names(store: &SharedStore) -> Result<Vec<String>, UiError> {
    let found = store.range(Range::prefix("mesh/")).await?;
    Ok(found
        .kvs
        .iter()
        .filter_map(|kv| kv.key.strip_prefix("mesh/"))
        .map(weft_model::keys::unescape)
        .collect())
}

async fn meshes(State(ui): State<Dashboard>) -> Result<Response, UiError> {
    let names = mesh_names(ui.store()).await?;
    Ok(Json(serde_json::json!({"meshes": names, "open": ui.inner.open})).into_response())
}

#[derive(Deserialize)]
struct MeshQuery {
    mesh: String,
}

async fn graph(
    State(ui): State<Dashboard>,
    Query(q): Query<MeshQuery>,
) -> Result<Response, UiError> {
    let (graph, live) = ui.graph_of(&q.mesh).await?;
    Ok(Json(serde_json::json!({"graph": graph, "live": live})).into_response())
}

#[derive(Deserialize)]
struct EdgeQuery {
    mesh: String,
    id: String,
}

/// `GET /ui/api/edge?mesh=&id=`: the traffic that crossed one edge of the graph, each source
/// and target with its figures and history (one point per flush).
async fn edge(
    State(ui): State<Dashboard>,
    Query(q): Query<EdgeQuery>,
) -> Result<Response, UiError> {
    let resources = resources::of_mesh(ui.store(), &q.mesh).await?;
    let graph = graph::build(&q.mesh, &resources);
    let traffic = ui.inner.traffic.view();
    let crossing = graph::crossing(&graph, &traffic, &q.id);
    Ok(Json(serde_json::json!({"id": q.id, "traffic": crossing})).into_response())
}

/// What one page's event stream remembers between events.
struct StreamState {
    ui: Dashboard,
    mesh: String,
    revisions: watch::Receiver<i64>,
    meshes: watch::Receiver<u64>,
    traffic: watch::Receiver<u64>,
    stopped: watch::Receiver<bool>,
    last: Option<graph::Graph>,
    last_live: tokio::time::Instant,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

fn event(name: &str, body: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(body)
        .unwrap_or_else(|_| Event::default().event(name).data("{}"))
}

/// Resolves once the server stops (the guard `wait_for` returns is not kept: it is not `Send`).
async fn stopping(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}

impl StreamState {
    /// The next event: the graph when the mesh's resources changed (read again from the store),
    /// else the live figures when the traffic did (from the graph already built, at most once
    /// a [`LIVE_EVERY`]); `None` when the server stops.
    async fn next(&mut self) -> Option<Event> {
        loop {
            let mut structure = self.last.is_none();
            if !structure {
                tokio::select! {
                    () = stopping(&mut self.stopped) => return None,
                    r = self.meshes.changed() => {
                        r.ok()?;
                        self.meshes.mark_unchanged();
                        // The list of meshes first; this mesh's own change, if any, next.
                        match mesh_names(self.ui.store()).await {
                            Ok(names) => return Some(event("meshes", &serde_json::json!({"meshes": names}))),
                            Err(e) => {
                                tracing::warn!(error = %e, "listing meshes for the dashboard failed");
                                continue;
                            }
                        }
                    }
                    r = self.revisions.changed() => { r.ok()?; structure = true; }
                    r = self.traffic.changed() => r.ok()?,
                }
                if structure {
                    // A burst of writes (a script creating a mesh) makes one event.
                    tokio::time::sleep(COALESCE).await;
                } else {
                    // Every proxy's flush bumps the traffic: the page needs a tick, not each.
                    tokio::time::sleep_until(self.last_live + LIVE_EVERY).await;
                    structure = self.revisions.has_changed().unwrap_or(false);
                }
                self.revisions.mark_unchanged();
                self.traffic.mark_unchanged();
            }
            self.last_live = tokio::time::Instant::now();
            if structure {
                let (graph, live) = match self.ui.graph_of(&self.mesh).await {
                    Ok(built) => built,
                    Err(e) => {
                        tracing::warn!(error = %e, "building the dashboard's graph failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if self.last.as_ref() != Some(&graph) {
                    let e = event("graph", &serde_json::json!({"graph": graph, "live": live}));
                    self.last = Some(graph);
                    return Some(e);
                }
                // Another mesh changed: nothing to tell this page.
                continue;
            }
            let graph = self.last.as_ref()?;
            let live = graph::live(graph, &self.ui.inner.traffic.view(), FAILING_ERROR_RATE);
            return Some(event("live", &live));
        }
    }
}

async fn events(
    State(ui): State<Dashboard>,
    Query(q): Query<MeshQuery>,
) -> Result<Response, UiError> {
    let permit = ui
        .inner
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| UiError::TooManyConnections)?;
    let state = StreamState {
        revisions: ui.inner.revisions.subscribe(),
        meshes: ui.inner.meshes.subscribe(),
        stopped: ui.inner.stopped.subscribe(),
        traffic: ui.inner.traffic.subscribe(),
        ui,
        mesh: q.mesh,
        last: None,
        last_live: tokio::time::Instant::now(),
        _permit: permit,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        let e = s.next().await?;
        Some((Ok::<_, Infallible>(e), s))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}
