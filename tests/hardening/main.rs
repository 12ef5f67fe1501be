//! Issue 11: the holes an outside probe found, one test (or more) per item, each
//! failing before its fix. One binary, one module per area, so CI links it once.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common_api/mod.rs"]
mod common_api;
#[path = "../sync_support/mod.rs"]
mod sync_support;

mod api;
mod http;
mod media;
mod ws;
