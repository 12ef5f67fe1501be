//! Discord beyond the Activity sign-in (`api::discord`): linked accounts and
//! course servers (issue 17, API.md "### Discord", docs/DISCORD.md).
//!
//! Module map, from the leaves up:
