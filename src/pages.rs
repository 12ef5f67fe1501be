//! The demo pages and browser assets under `web/`, embedded in the binary so the
//! server needs no files beside it. Third-party browser code (`web/vendor/`, copied
//! from npm by `scripts/update-hls.sh` and `scripts/update-discord-sdk.sh`) is
//! served under `/vendor/`. The sync SDK's module has one source,
//! `sdk/tandem-sync/tandem-sync.js` (the npm package an Activity installs), served
//! to the pages as `/web/tandem-sync.js`.
//!
//! `/together` without a room is the Discord Activity (docs/DISCORD.md, "The
//! Activity"), and so is `/` when Discord's launch parameters (`instance_id` and
//! `frame_id`) are in the query: a root URL mapping to the tandem host opens it.

use axum::Router;
use std::collections::HashMap;

use axum::extract::{Path, Query, State};
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
        include_str!("../sdk/tandem-sync/tandem-sync.js"),
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
    // @discord/embedded-app-sdk 2.5.0 (MIT) bundled with its dependencies: the
    // together page as a Discord Activity.
    (
        "discord-embedded-app-sdk.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/vendor/discord-embedded-app-sdk.js"),
    ),
    (
        "discord-embedded-app-sdk.LICENSE",
        "text/plain; charset=utf-8",
        include_str!("../web/vendor/discord-embedded-app-sdk.LICENSE"),
    ),
    (
        "hls.js.LICENSE",
        "text/plain; charset=utf-8",
        include_str!("../web/vendor/hls.js.LICENSE"),
    ),
];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/broadcast/{stream}",
            get(|| async { asset("broadcast.html") }),
        )
        .route("/watch/{stream}", get(|| async { asset("watch.html") }))
        .route("/together/{room}", get(|| async { asset("together.html") }))
        .route("/together", get(activity))
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

/// `/`: the index, or the Activity when Discord opens the root URL mapping (its
/// iframe's address carries `instance_id` and `frame_id`).
async fn index(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if q.contains_key("instance_id") && q.contains_key("frame_id") {
        return activity(State(state)).await;
    }
    asset("index.html")
}

/// The together page as the Discord Activity, with the application's public
/// client id (`[discord] client_id`, not a secret: Discord puts it in the
/// Activity's own host name) for the Embedded App SDK's `new DiscordSDK(id)`.
async fn activity(State(state): State<AppState>) -> Response {
    const PLACEHOLDER: &str = r#"<meta name="tandem-discord-client-id" content="">"#;
    let html = include_str!("../web/together.html");
    // A client id is a snowflake (digits); anything else is left out, never pasted into HTML.
    let id = &state.config.discord.client_id;
    let id = if id.bytes().all(|b| b.is_ascii_digit()) {
        id.as_str()
    } else {
        ""
    };
    let body = html.replacen(
        PLACEHOLDER,
        &format!(r#"<meta name="tandem-discord-client-id" content="{id}">"#),
        1,
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
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
