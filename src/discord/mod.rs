//! Discord beyond the Activity sign-in (`api::discord`): linked accounts and
//! course servers (issue 17, API.md "### Discord", docs/DISCORD.md).
//!
//! Module map, from the leaves up:
//! - [`links`]: linked accounts — OAuth 2.0 with PKCE (`GET /v1/discord/link`,
//!   the callback, `GET`/`DELETE /v1/me/discord`), tokens sealed at rest,
//!   [`links::access_token`] refreshed one at a time per user.
//! - [`ratelimit`]: Discord's rate limits, sans-IO (per-route buckets, 429s, the
//!   global limit), driven by the caller's clock.
//! - [`bot`]: the bot's HTTP shell (`Authorization: Bot`, guild members and
//!   roles), waiting as `ratelimit` says; stops itself after repeated 401/403.
//! - [`queue`]: the worker's queue and the bot handle the `AppState` holds
//!   ([`queue::Guilds`]): what links, enrollments and jobs tell the worker.
//! - [`guild`]: course servers: `PUT/GET /v1/streams/{id}/discord`, `…/members`,
//!   and the worker that adds enrolled users to the guild and removes the role.

pub mod bot;
pub mod guild;
pub mod links;
pub mod queue;
pub mod ratelimit;
