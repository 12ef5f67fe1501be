//! tandem: a realtime media relay (WHIP → SFU → WHEP) and Watch Together sync server.
//! This crate is the server: configuration, HTTP routes, auth, storage and wiring.
//!
//! Module map:
//! - [`config`]: defaults, `--config` file, `TANDEM_*` environment.
//! - [`error`]: [`error::AppError`], the one error type of the HTTP surface.
//! - [`auth`]: identity JWTs, tandem media/room tokens, the service key.
//! - [`text`]: clean text at the edge (no NUL/control characters into SQL).
//! - [`storage`]: the sqlx pool (SQLite default, PostgreSQL) and migrations.
//! - [`metrics`]: the Prometheus registry and `/metrics`.
//! - [`whip`]: WHIP ingest and WHEP egress routes over [`tandem_media::Sfu`].
//! - [`pages`]: the demo pages and static files under `web/`.
//! - [`rooms`]: Watch Together WebSocket and room-token routes, the sqlx chat store.
//! - [`api`]: business APIs (ledger, streams, enrollment, media access, jobs, OpenAPI).
//! - [`server`]: [`server::AppState`], the router ([`server::app`]) and [`server::start`].
//! - [`serve`]: the HTTP accept loop: connection caps, header and idle timeouts.

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod metrics;
pub mod pages;
pub mod rooms;
pub mod serve;
pub mod server;
pub mod storage;
pub mod text;
pub mod whip;

pub use server::{AppState, Running, app, start};
