//! tandem: a realtime media relay (WHIP → SFU → WHEP) and Watch Together sync server.
//! This crate is the server: configuration, HTTP routes, auth, storage and wiring.
//!
//! Module map, from the leaves up (each imports only modules above it in
//! this list; nothing imports [`server`]):
//! - [`clock`]: the one wall clock (`now_ms`, `now_secs`) and the [`clock::Clock`]
//!   trait with a manual clock for tests.
//! - [`error`]: [`error::AppError`], the one error type of the HTTP surface.
//! - [`text`]: clean text at the edge (no NUL/control characters into SQL).
//! - [`config`]: defaults (config/default.toml), `--config` file, `TANDEM_*` environment.
//! - [`secrets`]: AES-256-GCM sealing of secrets at rest under a keyring (rotation).
//! - [`storage`]: the sqlx pool (SQLite default, PostgreSQL) and migrations.
//! - [`recording`]: a stream's packets → CMAF segments + HLS playlists (synchronous core), crash repair.
//! - [`restream`]: a live stream pushed to RTMP(S) destinations, one supervised ffmpeg each.
//! - [`auth`]: identity JWTs, tandem media/room tokens, the service key.
//! - [`serve`]: the HTTP accept loop: connection caps, header and idle timeouts.
//! - [`whep_events`]: the WHEP event-stream registrations the state holds, the extensions' links.
//! - [`state`]: [`AppState`], what every handler shares.
//! - [`extract`]: the caller as axum extractors: [`extract::Identity`],
//!   [`extract::Instructor`], [`extract::ServiceCaller`].
//! - [`metrics`]: the Prometheus registry and `/metrics`.
//! - [`pages`]: the demo pages and static files under `web/`.
//! - [`recording`]: live streams recorded as fMP4 + HLS (the SFU's tap, the muxer, repair).
//! - [`api`]: business APIs (ledger, streams, enrollment, media access, jobs, OpenAPI).
//! - [`platforms`]: restream destinations (stream keys, OAuth 2.0 + PKCE, the push
//!   URL of a connection) and meetings (Jitsi, Zoom, Teams links); uses
//!   `api::common`, and `api::openapi` documents its routes.
//! - [`discord`]: linked Discord accounts (OAuth 2.0 + PKCE, sealed tokens) and
//!   course servers (guild membership by the bot, Discord's rate limits).
//! - [`cluster`]: several nodes: the node registry in Redis, `GET /v1/cluster/nodes`.
//! - [`whip`]: WHIP ingest and WHEP egress routes over [`tandem_media::Sfu`].
//! - [`whep_ext`]: the WHEP `layer` and server-sent-events extensions' routes.
//! - [`rooms`]: Watch Together WebSocket and room-token routes, the sqlx chat store.
//! - [`server`]: the router ([`server::app`]), [`server::start`] and [`server::Running`].

pub mod api;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod discord;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod pages;
pub mod platforms;
pub mod recording;
pub mod restream;
pub mod rooms;
pub mod secrets;
pub mod serve;
pub mod server;
pub mod state;
pub mod storage;
pub mod text;
pub mod whep_events;
pub mod whep_ext;
pub mod whip;

pub use server::{Running, app, start};
pub use state::AppState;
