//! The page and its scripts, embedded in the binary: the dashboard needs no internet access.
//! The vendored libraries are served under paths naming their versions, so that browsers may
//! keep them for good; the page and its own scripts are revalidated (they change with Weft).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    immutable: bool,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../assets/index.html"),
        immutable: false,
    },
    Asset {
        path: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/app.js"),
        immutable: false,
    },
    Asset {
        path: "hooks.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/hooks.js"),
        immutable: false,
    },
    Asset {
        path: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/style.css"),
        immutable: false,
    },
    Asset {
        path: "vendor/cytoscape-3.35.0.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/vendor/cytoscape/cytoscape.min.js"),
        immutable: true,
    },
    Asset {
        path: "vendor/cytoscape-dagre-4.0.1.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/vendor/cytoscape-dagre/cytoscape-dagre.min.js"),
        immutable: true,
    },
];

/// The asset at `path` (relative to `/ui/`; empty for the page), or 404.
pub fn serve(path: &str) -> Response {
    let path = if path.is_empty() { "index.html" } else { path };
    match ASSETS.iter().find(|a| a.path == path) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (
                    header::CACHE_CONTROL,
                    if asset.immutable {
                        "public, max-age=31536000, immutable"
                    } else {
                        "no-cache"
                    },
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                // Everything the page loads comes from Weft itself.
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
                ),
                (header::REFERRER_POLICY, "no-referrer"),
            ],
            asset.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}
