//! The demo pages and browser assets under `web/`, embedded in the binary so the
//! server needs no files beside it. Third-party browser code (`web/vendor/`, copied
//! from npm by `scripts/update-hls.sh`) is served under `/vendor/`.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::state::AppState;

/// (file name, content type, contents) of every asset served under `/web/`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../web/index.html"),
    ),
    (
        "broadcast.html",
        "text/html; charset=utf-8",
        include_str!("../web/broadcast.html"),
    ),
    (
        "watch.html",
        "text/html; charset=utf-8",
        include_str!("../web/watch.html"),
    ),
    (
        "whip-whep.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/whip-whep.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../web/style.css"),
    ),
    // Issue 13 pages (operator dashboard at /streams).
    (
        "streams.html",
        "text/html; charset=utf-8",
        include_str!("../web/streams.html"),
    ),
    (
        "together.html",
        "text/html; charset=utf-8",
        include_str!("../web/together.html"),
    ),
    (
        "tandem-sync.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/tandem-sync.js"),
    ),
    (
        "together.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/together.js"),
    ),
    // Issue 14: the replay page (/replay/{stream}).
    (
        "replay.html",
        "text/html; charset=utf-8",
        include_str!("../web/replay.html"),
    ),
    (
        "fmp4-webm.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/fmp4-webm.js"),
    ),
    // Issue 15: the watch page's layer choice and server events (WHEP extensions).
    (
        "whep-layers.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/whep-layers.js"),
    ),
    // Issue 16: the instructor's restream page (/restream).
    (
        "restream.html",
        "text/html; charset=utf-8",
        include_str!("../web/restream.html"),
    ),
    // Issue 17: a call (/call/{id}).
    (
        "call.html",
        "text/html; charset=utf-8",
        include_str!("../web/call.html"),
    ),
];

/// Third-party files under `/vendor/` (see web/vendor/README.md for versions and licences).
const VENDOR: &[(&str, &str, &str)] = &[
    // hls.js 1.7.4 (Apache-2.0): the replay page's player where the browser has MSE.
    (
        "hls.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/vendor/hls.min.js"),
    ),
    (
        "hls.js.LICENSE",
        "text/plain; charset=utf-8",
        include_str!("../web/vendor/hls.js.LICENSE"),
    ),
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { asset("index.html") }))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/broadcast/{stream}",
            get(|| async { asset("broadcast.html") }),
        )
        .route("/watch/{stream}", get(|| async { asset("watch.html") }))
        .route("/together/{room}", get(|| async { asset("together.html") }))
        .route("/streams", get(|| async { asset("streams.html") }))
        .route("/replay/{stream}", get(|| async { asset("replay.html") }))
        .route("/restream", get(|| async { asset("restream.html") }))
        .route("/call/{id}", get(|| async { asset("call.html") }))
        .route(
            "/web/{file}",
            get(|Path(file): Path<String>| async move { asset(&file) }),
        )
        .route(
            "/vendor/{file}",
            get(|Path(file): Path<String>| async move { serve(VENDOR, &file) }),
        )
}

fn asset(name: &str) -> Response {
    serve(ASSETS, name)
}

/// One embedded file by exact name (so no path can reach anything else), with the
/// same cache policy for all: `no-cache`, the browser revalidates, a new binary's
/// files are seen at once.
fn serve(files: &[(&str, &'static str, &'static str)], name: &str) -> Response {
    match files.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}
