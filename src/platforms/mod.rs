//! Platform fan-out and meetings (API.md "Platform fan-out"): the instructor's
//! restream destinations ("platform connections": a stored stream key, or an OAuth
//! grant of YouTube, Twitch or Facebook), the push URL of one for a live class,
//! and meeting links on Jitsi, Zoom and Teams. Restreaming itself (the ffmpeg
//! children) is `crate::restream`; a stream's destinations are `api::destinations`.
//!
//! Submodules, from the leaves up (each imports only those above it):
//! - [`http`]: the one outbound HTTP client (no redirects, timeouts) and the
//!   `platform_error` answer of a failed provider call (no secret in it).
//! - [`store`]: the connection row, its API view, sealed fields' associated
//!   data, the key hint and push URL, the owner's lookup.
//! - [`rotate`]: re-sealing every sealed field under the active key
//!   (`tandem secrets rotate`).
//! - [`providers`]: what YouTube, Twitch and Facebook's APIs are asked, with a
//!   fresh access token, to get a push URL for an OAuth connection (and the
//!   account behind a new grant).
//! - [`oauth`]: OAuth 2.0 + PKCE with the `oauth2` crate: start, callback, and
//!   [`oauth::access_token`], which refreshes one connection's token at a time.
//! - [`connections`]: the connections' routes, [`connections::resolve_target`] and
//!   [`connections::owned_connection`] for the destinations of a stream.
//! - [`meetings`]: `POST /v1/meetings`, `GET /v1/meetings/{id}`.

pub mod connections;
pub mod http;
pub mod meetings;
pub mod oauth;
pub mod providers;
pub mod rotate;
pub mod store;

use axum::Router;

use crate::state::AppState;

/// Every route of the module (merged into the router, so also under `/.proxy`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(connections::routes())
        .merge(oauth::routes())
        .merge(meetings::routes())
        .route_layer(axum::middleware::from_fn(crate::text::refuse_control_chars))
}

/// The platforms a connection may name (API.md).
pub const PLATFORMS: &[&str] = &[
    "youtube",
    "facebook",
    "twitch",
    "restream",
    "instagram",
    "rtmp",
];

/// The platforms connected with OAuth 2.0 (the others take a stream key).
pub const OAUTH_PLATFORMS: &[&str] = &["youtube", "twitch", "facebook"];
