//! The server as a whole: start, shutdown and the CLI (`lifecycle`), and the HTTP
//! listener's limits, JSON errors and database checks at start (`hardening`, from
//! issue 11), HTTPS on the listener (`tls`, issue 13).

#[path = "../support/mod.rs"]
mod support;

mod hardening;
mod lifecycle;
mod tls;
