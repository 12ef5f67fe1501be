//! Watch Together rooms over real WebSockets: the clock, drift correction, rooms and
//! moderation, chat persistence (SQLite, and PostgreSQL when one answers), bursts,
//! large rooms, room tokens, a headless-Chromium page, the hardening of issue 11, and
//! the together page out of the box and room invites (issue 13), and the sync SDK's
//! player adapters and the together page as a Discord Activity (issue 17), and one
//! room over three nodes with Redis, its owner killed (issue 18).

#[path = "../support/mod.rs"]
mod support;

mod activity;
mod browser;
mod burst;
mod chat;
mod clock;
mod cluster;
mod drift;
mod hardening;
mod invite;
mod large;
mod rooms;
mod together_page;
mod token;
