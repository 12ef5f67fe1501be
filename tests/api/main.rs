//! The business-API tests (enrollment, the token ledger, streams, background jobs,
//! the hardening of issue 11, and issue 13's first hour: auth messages, 501 routes,
//! OpenAPI and request metrics in `first_hour`; issue 15's WHEP extensions over HTTP in
//! `whep_ext`; issue 16's platform connections and meetings in `platforms` and
//! `meetings`, against stand-in providers; issue 17's Discord Activity sign-in in
//! `discord`, against a stand-in Discord; course servers and the bot's rate limits in
//! `discord_guild`, membership end to end with linked accounts in `discord_members`), each on a fresh SQLite file and a fresh
//! PostgreSQL database: every `both_backends!` test runs as `<name>::sqlite` and
//! `<name>::postgres`. `cargo test --test api -- ::sqlite` needs nothing installed.

#[path = "../support/mod.rs"]
mod support;

mod calls;
mod cluster_ops;
mod destinations;
mod discord;
mod discord_guild;
mod discord_members;
mod enrollment;
mod first_hour;
mod hardening;
mod jobs;
mod ledger;
mod media_streams;
mod meetings;
mod platforms;
mod replay;
mod stream_keys;
mod streams;
mod whep_ext;
