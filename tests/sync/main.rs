//! Watch Together rooms over real WebSockets: the clock, drift correction, rooms and
//! moderation, chat persistence (SQLite, and PostgreSQL when one answers), bursts,
//! large rooms, room tokens, a headless-Chromium page, the hardening of issue 11, and
//! the together page out of the box (issue 13: demo video, unmute, invites, errors).

#[path = "../support/mod.rs"]
mod support;

mod browser;
mod burst;
mod chat;
mod clock;
mod drift;
mod hardening;
mod large;
mod rooms;
mod together_page;
mod token;
