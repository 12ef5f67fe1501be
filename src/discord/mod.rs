//! Discord beyond the Activity sign-in (`api::discord`): linked accounts and
//! course servers (issue 17, API.md "### Discord", docs/DISCORD.md).
//!
//! Module map, from the leaves up:
//! - [`links`]: linked accounts — OAuth 2.0 with PKCE (`GET /v1/discord/link`,
//!   the callback, `GET`/`DELETE /v1/me/discord`), tokens sealed at rest,
//!   [`links::access_token`] refreshed one at a time per user.

pub mod links;
