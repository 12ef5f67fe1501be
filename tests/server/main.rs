//! The server as a whole: start, shutdown and the CLI (`lifecycle`), the HTTP
//! listener's limits, JSON errors and database checks at start (`hardening`, from
//! issue 11), and the first hour's command line: `tandem identity`, `tandem token`'s
//! key handling, configuration typos, the banner and exit (`cli`, issue 13), and
//! HTTPS on the listener (`tls`, issue 13); the replay page and hls.js served
//! (`replay_page`, issue 14), a recording repaired after a kill (`recording`), and
//! the node registry of several nodes over the local Redis (`cluster`, issue 18).

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod cluster;
mod first_hour;
mod hardening;
mod lifecycle;
mod recording;
mod replay_page;
mod tls;
