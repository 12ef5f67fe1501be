//! The business APIs of API.md: token ledger, streams, paid enrollment, media
//! access tokens, calendar feeds, background jobs and the OpenAPI document.
//!
//! Submodules:
//! - [`common`]: what the routes share: RFC 3339 times, JSON bodies, write
//!   transactions, unique violations, watch links.
//! - [`idempotency`]: `Idempotency-Key` handling stored with the effect.
//! - [`ledger`]: balances, transactions, service-key credits.
//! - [`enrollment_records`]: the enrollment row, its lookup, refunds (money back,
//!   out of the room); under both `streams` (cancel) and `enrollment` (refund).
//! - [`streams`]: stream CRUD, lifecycle, instructor stats, publish tokens, calendar.
//! - [`media_streams`]: what is live in the SFU: the operator view, the pages'
//!   status of one stream, the broadcast page's viewer link.
//! - [`stream_keys`]: long-lived WHIP keys for encoders (OBS): mint, rotate, revoke,
//!   and the check `whip.rs` runs on a bearer token that is one.
//! - [`enrollment`]: paid enrollment, my enrollments, viewer tokens, admin refunds.
//! - [`replay`]: the signed replay URL, the recording's files, the thumbnail.
//! - [`destinations`]: a stream's restream destinations, their live status and
//!   when the pushes run (go-live, end, server start).
//! - [`calls`]: calls (issue 17): participants and roles, call tokens, history
//!   from the session records, end and removal.
//! - [`discord`]: Discord Activity sign-in: code exchange at Discord, a room
//!   token for the Activity instance's room.
//! - [`access`]: the WHIP/WHEP hook (enrollment re-check, WHIP starts a stream)
//!   and the room gate.
//! - [`jobs`]: replay expiry, recording cleanup, catalog migration, key pruning.
//! - [`openapi`]: the OpenAPI document served at `/openapi.json`.
//! - [`not_built`]: the contract's routes not built yet, answering 501
//!   `not_implemented` (merged by `server::app`).
//!
//! Each imports only modules listed above it (`common` is the leaf; `access`,
//! `jobs` and `openapi` the top); this file only gathers the routes.

pub mod access;
pub mod calls;
pub mod common;
pub mod destinations;
pub mod discord;
pub mod enrollment;
pub mod enrollment_records;
pub mod idempotency;
pub mod jobs;
pub mod ledger;
pub mod media_streams;
pub mod not_built;
pub mod openapi;
pub mod replay;
pub mod stream_keys;
pub mod streams;

use axum::Router;

use crate::state::AppState;

// Re-exported where callers (and tests) have always found it.
pub use crate::clock::now_ms;

/// Every business route (merged into the router, so also under `/.proxy`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(ledger::routes())
        .merge(streams::routes())
        .merge(media_streams::routes())
        .merge(stream_keys::routes())
        .merge(enrollment::routes())
        .merge(replay::routes())
        .merge(destinations::routes())
        .merge(calls::routes())
        .merge(discord::routes())
        .merge(crate::discord::links::routes())
        .merge(openapi::routes())
        .route_layer(axum::middleware::from_fn(crate::text::refuse_control_chars))
}
