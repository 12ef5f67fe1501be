//! The business-API tests (enrollment, the token ledger, streams, background jobs,
//! and the hardening of issue 11), each on a fresh SQLite file and a fresh
//! PostgreSQL database: every `both_backends!` test runs as `<name>::sqlite` and
//! `<name>::postgres`. `cargo test --test api -- ::sqlite` needs nothing installed.

#[path = "../support/mod.rs"]
mod support;

mod enrollment;
mod hardening;
mod jobs;
mod ledger;
mod stream_keys;
mod streams;
