//! The one test-support module of the integration tests. Every test area
//! (`tests/<area>/main.rs`) includes it with `#[path = "../support/mod.rs"] mod support;`
//! and its files `use crate::support::*`.
//!
//! Module map:
//! - [`app`]: [`TestApp`], a tandem server on free ports for one test, built with a
//!   typed configuration (`TestApp::builder().config(|c| c.rooms.grace_period_ms = 300)`),
//!   its tokens, metrics and shutdown; [`api_app`] is the business-API preset.
//! - [`db`]: a fresh SQLite file or PostgreSQL database per test ([`TestDb`], [`Backend`],
//!   the [`both_backends!`](crate::both_backends) macro).
//! - [`api`]: identity JWTs and JSON requests of the business-API tests ([`Resp`]).
//! - [`wait`]: event-driven waiting ([`eventually`]), metric parsing, the media lock.
//! - [`peers`]: the real WebRTC peers — headless Chromium ([`Browser`]) and aiortc
//!   ([`PyPeer`]) — installed by `scripts/test.sh`.
//! - [`providers`]: stand-in OAuth/YouTube/Twitch/Facebook/Zoom/Graph servers ([`Providers`]).
//! - [`discord`]: a stand-in Discord API (OAuth2 code exchange, `/users/@me`,
//!   activity instances) for `POST /v1/discord/token` ([`discord::Discord`]), and
//!   guild members with Discord's rate limits for course servers ([`discord_guild`]).
//! - [`probe`]: ffprobe of a recording ([`ffprobe`], [`stream_of`], [`duration_of`]).
//! - [`rtmp`]: private nginx-rtmp destinations and their `on_publish` endpoint
//!   refusing one key ([`Nginx`], [`PublishAuth`]) for the restream tests.
//! - [`ws`]: the Watch Together WebSocket client with a skewed clock ([`Client`]).
//! - [`bin`]: the real `tandem` binary as a child process and its start banner
//!   ([`spawn_tandem`], [`Banner`]).
//!
//! Each area uses part of it: what an area leaves unused (helpers, and the
//! re-exports below, e.g. `peers` in `sync`) is allowed, not warned about.
#![allow(dead_code, unused_imports)]

pub mod api;
pub mod app;
pub mod bin;
pub mod db;
pub mod discord;
pub mod discord_guild;
pub mod peers;
pub mod probe;
pub mod providers;
pub mod rtmp;
pub mod wait;
pub mod whip;
pub mod ws;

pub use api::*;
pub use app::*;
pub use bin::*;
pub use db::*;
pub use peers::*;
pub use probe::*;
pub use providers::*;
pub use rtmp::*;
pub use wait::*;
pub use whip::*;
pub use ws::*;
