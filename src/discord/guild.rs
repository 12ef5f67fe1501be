//! Course servers (issue 17, API.md "### Discord"): a stream's Discord server
//! and the bot that keeps its members in step with the enrollments.
//!
//! - `PUT /v1/streams/{id}/discord` (owner) `{invite_url?, guild_id?, role_id?}`:
//!   the invite link shown to the enrolled (the simple path), and with a bot
//!   token and a `guild_id` automatic membership with the role `role_id`.
//! - `GET /v1/streams/{id}/discord`: the invite link, only to users enrolled with
//!   access now and to the owner (403 otherwise).
//! - `GET /v1/streams/{id}/discord/members` (owner): per user the bot's last
//!   attempt (`status: pending|invited|joined|removed|failed`, `last_error`,
//!   `attempts`).
//!
//! The work runs in one tokio task ([`spawn`]) fed by a bounded queue
//! ([`Guilds`], in the `AppState`): enrollment (after commit), refunds and
//! cancellation, the end of replay access (`api::jobs::expire_replays`) and a
//! PUT only say "look at this member / this stream"; the worker reads what
//! should be (active enrollment with access now → in the guild with the role;
//! otherwise → the role removed) from the database and makes Discord match, one
//! call at a time through the bot's rate limiter. A full queue or a stop
//! mid-call loses nothing: the reconcile pass (`[discord]
//! reconcile_interval_seconds`, daily by default) walks every configured stream
//! and also checks each member at Discord (`GET …/members/{u}`), repairing
//! drift (a role removed by hand, a member who left).
//!
//! Users without a linked account stay `pending` (the invite link is their way
//! in; the next look after they link adds them). Every attempt is logged and
//! written to `discord_members`; a stopped bot (repeated 401/403, `bot.rs`)
//! makes every member it would touch `failed` with the bot's reason, without a
//! call.
//!
//! Reads the stream and enrollment rows itself (SQL), so it depends on no
//! `api` module; `api::enrollment`, `api::streams` and `api::jobs` call
//! [`Guilds`].

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use utoipa::ToSchema;

use super::bot::BotError;
pub use super::queue::{Guilds, Job};
use crate::api::common::{parse_json, rfc3339};
use crate::auth::Role;
use crate::clock::now_ms;
use crate::error::{AppError, AppResult};
use crate::extract::Identity;
use crate::state::AppState;

/// Longest invite URL accepted.
const MAX_URL: usize = 200;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/streams/{id}/discord", get(show).put(replace))
        .route("/v1/streams/{id}/discord/members", get(members))
        .route_layer(axum::middleware::from_fn(crate::text::refuse_control_chars))
}

/// The running worker; [`GuildWorker::stop`] ends it (a call in flight is dropped:
/// its member keeps its last status and the next look repeats it).
pub struct GuildWorker {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl GuildWorker {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts the worker on `rx` (from [`Guilds::new`]).
pub fn spawn(state: &AppState, mut rx: mpsc::Receiver<Job>) -> GuildWorker {
    let (stop, mut stopped) = watch::channel(false);
    let state = state.clone();
    let every = state.config.discord.reconcile_interval_seconds;
    let task = tokio::spawn(async move {
        let period = Duration::from_secs(every.max(1));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let job = tokio::select! {
                _ = stopped.changed() => break,
                job = rx.recv() => match job { Some(j) => j, None => break },
                _ = tick.tick(), if every > 0 => {
                    if !claim_reconcile(&state, period).await {
                        continue; // another node runs this period's pass
                    }
                    Job::Reconcile
                }
            };
            tokio::select! {
                _ = stopped.changed() => break,
                result = run(&state, &job) => if let Err(err) = result {
                    tracing::warn!(?job, error = %err, "discord: job failed; the next look repeats it");
                },
            }
        }
    });
    GuildWorker { stop, task }
}

/// Whether this node runs the timed reconcile pass of the period starting
/// now: one node per period across a cluster (a claim in Redis a little
/// shorter than the period, so the next period's first tick wins it again);
/// always on a single node. `reconcile_now` is not gated.
pub async fn claim_reconcile(state: &AppState, period: Duration) -> bool {
    state
        .cluster
        .claim("discord_reconcile", period.mul_f64(0.9))
        .await
}

async fn run(state: &AppState, job: &Job) -> AppResult<()> {
    match job {
        Job::Member { stream, user } => sync_member(state, stream, user, false).await,
        Job::Stream(stream) => {
            for user in users_of(state, stream).await? {
                sync_member(state, stream, &user, false).await?;
            }
            Ok(())
        }
        Job::User(user) => {
            let streams: Vec<(String,)> = sqlx::query_as(
                "SELECT d.stream_id FROM stream_discord d JOIN enrollments e \
                 ON e.stream_id = d.stream_id \
                 WHERE e.user_id = $1 AND e.status = 'active' AND d.guild_id IS NOT NULL \
                 ORDER BY 1",
            )
            .bind(user)
            .fetch_all(&state.db.pool)
            .await?;
            for (stream,) in streams {
                sync_member(state, &stream, user, false).await?;
            }
            Ok(())
        }
        Job::Reconcile => {
            let streams: Vec<(String,)> =
                sqlx::query_as("SELECT stream_id FROM stream_discord ORDER BY stream_id")
                    .fetch_all(&state.db.pool)
                    .await?;
            let mut n = 0;
            for (stream,) in streams {
                for user in users_of(state, &stream).await? {
                    sync_member(state, &stream, &user, true).await?;
                    n += 1;
                }
            }
            tracing::info!(members = n, "discord: reconcile pass done");
            Ok(())
        }
    }
}

/// Users with an active enrollment in the stream, and users the bot recorded.
async fn users_of(state: &AppState, stream: &str) -> AppResult<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT user_id FROM enrollments WHERE stream_id = $1 AND status = 'active' \
         UNION SELECT user_id FROM discord_members WHERE stream_id = $1 ORDER BY 1",
    )
    .bind(stream)
    .fetch_all(&state.db.pool)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// A stream's course server.
#[derive(Debug, Clone, sqlx::FromRow)]
struct ConfigRow {
    invite_url: Option<String>,
    guild_id: Option<String>,
    role_id: Option<String>,
    updated_at: i64,
}

async fn config_of(state: &AppState, stream: &str) -> AppResult<Option<ConfigRow>> {
    Ok(sqlx::query_as(
        "SELECT invite_url, guild_id, role_id, updated_at FROM stream_discord WHERE stream_id = $1",
    )
    .bind(stream)
    .fetch_optional(&state.db.pool)
    .await?)
}

/// The user holds an active enrollment and the stream can be watched now
/// (scheduled, live, or ended within its open replay window): the same rule as
/// the viewer token's (`api::enrollment::watch_refusal`).
async fn has_access(state: &AppState, stream: &str, user: &str) -> AppResult<bool> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT e.id FROM enrollments e JOIN streams s ON s.id = e.stream_id \
         WHERE e.stream_id = $1 AND e.user_id = $2 AND e.status = 'active' \
         AND (s.status IN ('scheduled', 'live') OR (s.status = 'ended' \
              AND s.replay_closed_at IS NULL AND s.replay_expires_at IS NOT NULL \
              AND $3 < s.replay_expires_at))",
    )
    .bind(stream)
    .bind(user)
    .bind(now_ms())
    .fetch_optional(&state.db.pool)
    .await?;
    Ok(row.is_some())
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct MemberRow {
    user_id: String,
    discord_user_id: Option<String>,
    status: String,
    last_error: Option<String>,
    attempts: i64,
    updated_at: i64,
}

async fn member_of(state: &AppState, stream: &str, user: &str) -> AppResult<Option<MemberRow>> {
    Ok(sqlx::query_as(
        "SELECT user_id, discord_user_id, status, last_error, attempts, updated_at \
         FROM discord_members WHERE stream_id = $1 AND user_id = $2",
    )
    .bind(stream)
    .bind(user)
    .fetch_optional(&state.db.pool)
    .await?)
}

/// Writes a member's status; `attempted`: a Discord call was made for it.
async fn record(
    state: &AppState,
    stream: &str,
    user: &str,
    discord_user: Option<&str>,
    status: &str,
    error: Option<&str>,
    attempted: bool,
) -> AppResult<()> {
    sqlx::query(
        "INSERT INTO discord_members \
           (stream_id, user_id, discord_user_id, status, last_error, attempts, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (stream_id, user_id) DO UPDATE SET \
           discord_user_id = COALESCE(excluded.discord_user_id, discord_members.discord_user_id), \
           status = excluded.status, last_error = excluded.last_error, \
           attempts = discord_members.attempts + excluded.attempts, \
           updated_at = excluded.updated_at",
    )
    .bind(stream)
    .bind(user)
    .bind(discord_user)
    .bind(status)
    .bind(error)
    .bind(attempted as i64)
    .bind(now_ms())
    .execute(&state.db.pool)
    .await?;
    Ok(())
}

/// The linked Discord account's id and a valid access token (`guilds.join`).
async fn user_token(state: &AppState, user: &str) -> AppResult<Option<(String, String)>> {
    Ok(super::links::access_token(state, user)
        .await?
        .map(|(account, token)| (account.discord_user_id, token)))
}

/// The linked Discord account's id, without a Discord call.
async fn linked_id(state: &AppState, user: &str) -> AppResult<Option<String>> {
    Ok(super::links::linked(state, user)
        .await?
        .map(|account| account.discord_user_id))
}

const NOT_LINKED: &str = "no usable linked Discord account (not linked, or the link needs \
                          renewing): the invite link is their way in; linking adds them";

/// Makes one member match what should be. `verify`: also ask Discord whether a
/// member recorded as joined (or removed) still is (the reconcile pass).
async fn sync_member(state: &AppState, stream: &str, user: &str, verify: bool) -> AppResult<()> {
    let Some(cfg) = config_of(state, stream).await? else {
        return Ok(());
    };
    let want = has_access(state, stream, user).await?;
    let row = member_of(state, stream, user).await?;
    let status = row.as_ref().map(|r| r.status.as_str());
    let (Some(bot), Some(guild)) = (state.discord.bot(), cfg.guild_id.as_deref()) else {
        // No automatic membership: the invite link is the way in.
        if want && status != Some("invited") {
            record(state, stream, user, None, "invited", None, false).await?;
        } else if !want && row.is_some() && status != Some("removed") {
            record(state, stream, user, None, "removed", None, false).await?;
        }
        return Ok(());
    };
    let role = cfg.role_id.as_deref();
    let sent = bot.requests_sent();
    let called = || bot.requests_sent() > sent;
    if want {
        if verify
            && status == Some("joined")
            && let Some(duid) = row.as_ref().and_then(|r| r.discord_user_id.clone())
        {
            match bot.get_member(guild, &duid).await {
                Ok(Some(m)) if role.is_none_or(|r| m.roles.iter().any(|x| x == r)) => {
                    return Ok(());
                }
                Ok(Some(_)) => {
                    // In the guild without the role (removed by hand): give it back.
                    let r = bot.add_role(guild, &duid, role.unwrap_or_default()).await;
                    return outcome(state, stream, user, &duid, "join", called(), r).await;
                }
                // Left the guild: added again below.
                Ok(None) => {}
                Err(e) => {
                    return check_failed(state, stream, user, &duid, called(), e).await;
                }
            }
        }
        let Some((duid, token)) = user_token(state, user).await? else {
            if status != Some("pending") {
                tracing::info!(stream, user, "discord: no linked account; pending");
            }
            return record(
                state,
                stream,
                user,
                None,
                "pending",
                Some(NOT_LINKED),
                false,
            )
            .await;
        };
        let result = bot.add_member(guild, &duid, &token, role).await;
        if let Ok(j) = &result {
            tracing::debug!(stream, user, joined = ?j, "discord: member added");
        }
        outcome(
            state,
            stream,
            user,
            &duid,
            "join",
            called(),
            result.map(|_| ()),
        )
        .await
    } else {
        let Some(row) = row else {
            return Ok(());
        };
        if row.status == "removed" && !verify {
            return Ok(());
        }
        let duid = match row.discord_user_id.clone() {
            Some(d) => Some(d),
            None => linked_id(state, user).await?,
        };
        let (Some(duid), Some(role)) = (duid, role) else {
            // Never in the guild through tandem, or no role to take: nothing to call.
            if row.status != "removed" {
                record(state, stream, user, None, "removed", None, false).await?;
            }
            return Ok(());
        };
        if row.status == "pending" && row.discord_user_id.is_none() {
            return record(state, stream, user, None, "removed", None, false).await;
        }
        if verify && row.status == "removed" {
            match bot.get_member(guild, &duid).await {
                Ok(Some(m)) if m.roles.iter().any(|x| x == role) => {}
                Ok(_) => return Ok(()),
                Err(e) => {
                    return check_failed(state, stream, user, &duid, called(), e).await;
                }
            }
        }
        let result = bot.remove_role(guild, &duid, role).await;
        outcome(state, stream, user, &duid, "remove", called(), result).await
    }
}

/// The reconcile pass could not check a member (Discord failing, the bot
/// stopped): its status stays what it was, the reason is recorded.
async fn check_failed(
    state: &AppState,
    stream: &str,
    user: &str,
    discord_user: &str,
    called: bool,
    err: BotError,
) -> AppResult<()> {
    let message = format!("reconcile could not check the member: {err}");
    tracing::warn!(stream, user, discord_user, error = %message, "discord: check failed");
    let status = member_of(state, stream, user)
        .await?
        .map(|r| r.status)
        .unwrap_or_else(|| "failed".into());
    record(
        state,
        stream,
        user,
        Some(discord_user),
        &status,
        Some(&message),
        called,
    )
    .await
}

/// Logs and records one attempt.
/// `called`: whether a request reached Discord (a stopped bot sends none).
async fn outcome(
    state: &AppState,
    stream: &str,
    user: &str,
    discord_user: &str,
    action: &str,
    called: bool,
    result: Result<(), BotError>,
) -> AppResult<()> {
    match result {
        Ok(()) => {
            let status = if action == "remove" {
                "removed"
            } else {
                "joined"
            };
            tracing::info!(stream, user, discord_user, action, "discord: done");
            record(
                state,
                stream,
                user,
                Some(discord_user),
                status,
                None,
                called,
            )
            .await
        }
        Err(err) => {
            let message = err.to_string();
            tracing::warn!(stream, user, discord_user, action, error = %message, "discord: attempt failed");
            record(
                state,
                stream,
                user,
                Some(discord_user),
                "failed",
                Some(&message),
                called,
            )
            .await
        }
    }
}

// ---------------------------------------------------------------------------
// Routes.

/// `PUT` body: every field optional; absent or `""` clears it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscordIn {
    /// `https://discord.gg/CODE` or `https://discord.com/invite/CODE`.
    #[serde(default)]
    pub invite_url: Option<String>,
    /// The guild (server) id: a snowflake.
    #[serde(default)]
    pub guild_id: Option<String>,
    /// The role given to enrolled members: a snowflake; needs `guild_id`.
    #[serde(default)]
    pub role_id: Option<String>,
}

/// A stream's course server.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscordOut {
    pub stream_id: String,
    pub invite_url: Option<String>,
    pub guild_id: Option<String>,
    pub role_id: Option<String>,
    /// The bot adds enrolled users with a linked account (a bot token is configured
    /// and `guild_id` is set).
    pub automatic: bool,
    /// The caller's own membership (enrolled users): `status`, `last_error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<MemberOut>,
    pub updated_at: Option<String>,
}

/// One user's membership as the bot last left it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemberOut {
    pub user: String,
    pub discord_user_id: Option<String>,
    /// `pending` (no linked account yet), `invited` (no automatic membership: the
    /// invite link), `joined`, `removed`, `failed` (see `last_error`).
    pub status: String,
    pub last_error: Option<String>,
    /// Calls made to Discord for this user.
    pub attempts: i64,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MembersOut {
    pub members: Vec<MemberOut>,
}

fn member_out(r: MemberRow) -> MemberOut {
    MemberOut {
        user: r.user_id,
        discord_user_id: r.discord_user_id,
        status: r.status,
        last_error: r.last_error,
        attempts: r.attempts,
        updated_at: rfc3339(r.updated_at),
    }
}

/// `(owner)` of the stream, or 404.
async fn owner_of(state: &AppState, id: &str) -> AppResult<String> {
    let row: Option<(String,)> = sqlx::query_as("SELECT instructor_id FROM streams WHERE id = $1")
        .bind(id)
        .fetch_optional(&state.db.pool)
        .await?;
    row.map(|r| r.0)
        .ok_or_else(|| AppError::not_found(format!("no stream '{id}'")))
}

async fn owned(state: &AppState, id: &str, who: &Identity) -> AppResult<()> {
    let owner = owner_of(state, id).await?;
    if owner != who.user && who.role != Role::Admin {
        return Err(AppError::forbidden(
            "this stream belongs to another instructor",
        ));
    }
    Ok(())
}

fn out(state: &AppState, id: &str, cfg: Option<ConfigRow>) -> DiscordOut {
    let automatic =
        state.discord.bot().is_some() && cfg.as_ref().is_some_and(|c| c.guild_id.is_some());
    match cfg {
        Some(c) => DiscordOut {
            stream_id: id.to_string(),
            invite_url: c.invite_url,
            guild_id: c.guild_id,
            role_id: c.role_id,
            automatic,
            member: None,
            updated_at: Some(rfc3339(c.updated_at)),
        },
        None => DiscordOut {
            stream_id: id.to_string(),
            invite_url: None,
            guild_id: None,
            role_id: None,
            automatic,
            member: None,
            updated_at: None,
        },
    }
}

/// Checks an invite link: `https://discord.gg/CODE`, `https://discord.com/invite/CODE`
/// (also `www.` and `discordapp.com`).
pub fn valid_invite(url: &str) -> bool {
    if url.len() > MAX_URL {
        return false;
    }
    let Ok(u) = reqwest::Url::parse(url) else {
        return false;
    };
    if u.scheme() != "https"
        || !u.username().is_empty()
        || u.password().is_some()
        || u.port().is_some()
        || u.fragment().is_some()
    {
        return false;
    }
    let code_ok = |c: &str| {
        (2..=64).contains(&c.len()) && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let segs: Vec<&str> = u.path().trim_start_matches('/').split('/').collect();
    match u.host_str().unwrap_or("") {
        "discord.gg" => segs.len() == 1 && code_ok(segs[0]),
        "discord.com" | "www.discord.com" | "discordapp.com" | "www.discordapp.com" => {
            segs.len() == 2 && segs[0] == "invite" && code_ok(segs[1])
        }
        _ => false,
    }
}

/// A Discord snowflake: a 64-bit id in decimal, 17 to 20 digits.
pub fn valid_snowflake(s: &str) -> bool {
    (17..=20).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_digit())
        && s.parse::<u64>().is_ok()
}

fn field_error(field: &str, message: &str) -> AppError {
    AppError::bad_request(format!("{field}: {message}")).with("field", field)
}

/// `""` and absent are the same: not set.
fn given(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Sets a stream's course server (owner). Enrolled users are looked at again.
#[utoipa::path(put, path = "/v1/streams/{id}/discord", tag = "discord", security(("identity" = [])),
    params(("id" = String, Path)), request_body = DiscordIn,
    responses((status = 200, body = DiscordOut),
              (status = 400, description = "a field is not valid (named in `field`); nothing stored"),
              (status = 401), (status = 403), (status = 404)))]
pub async fn replace(
    State(state): State<AppState>,
    Path(id): Path<String>,
    me: Identity,
    headers: HeaderMap,
    body: Bytes,
) -> AppResult<axum::Json<DiscordOut>> {
    owned(&state, &id, &me).await?;
    let body: DiscordIn = parse_json(&headers, &body)?;
    let invite_url = given(body.invite_url);
    let guild_id = given(body.guild_id);
    let role_id = given(body.role_id);
    if let Some(u) = &invite_url
        && !valid_invite(u)
    {
        return Err(field_error(
            "invite_url",
            "an https Discord invite: https://discord.gg/CODE or https://discord.com/invite/CODE",
        ));
    }
    if let Some(g) = &guild_id
        && !valid_snowflake(g)
    {
        return Err(field_error(
            "guild_id",
            "the server's id: a Discord snowflake, 17-20 digits",
        ));
    }
    if let Some(r) = &role_id {
        if !valid_snowflake(r) {
            return Err(field_error(
                "role_id",
                "the role's id: a Discord snowflake, 17-20 digits",
            ));
        }
        if guild_id.is_none() {
            return Err(field_error("role_id", "a role needs guild_id"));
        }
        if guild_id.as_deref() == Some(r.as_str()) {
            return Err(field_error(
                "role_id",
                "that is the server's @everyone role, which every member has; name a course role",
            ));
        }
    }
    if invite_url.is_none() && guild_id.is_none() {
        return Err(field_error(
            "invite_url",
            "give invite_url, guild_id or both (to remove the course server, send invite_url \
             of another server or ask an admin)",
        ));
    }
    let now = now_ms();
    sqlx::query(
        "INSERT INTO stream_discord (stream_id, invite_url, guild_id, role_id, updated_by, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (stream_id) DO UPDATE SET invite_url = excluded.invite_url, \
           guild_id = excluded.guild_id, role_id = excluded.role_id, \
           updated_by = excluded.updated_by, updated_at = excluded.updated_at",
    )
    .bind(&id)
    .bind(&invite_url)
    .bind(&guild_id)
    .bind(&role_id)
    .bind(&me.user)
    .bind(now)
    .execute(&state.db.pool)
    .await?;
    tracing::info!(stream = %id, guild = guild_id.as_deref().unwrap_or(""), "discord: course server set");
    state.discord.stream_changed(&id);
    Ok(axum::Json(out(&state, &id, config_of(&state, &id).await?)))
}

/// The course server: all of it to the owner; the invite link (and their own
/// membership) to users enrolled with access now.
#[utoipa::path(get, path = "/v1/streams/{id}/discord", tag = "discord", security(("identity" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = DiscordOut), (status = 401),
              (status = 403, description = "not_enrolled: neither the owner nor enrolled with access now"),
              (status = 404)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    me: Identity,
) -> AppResult<axum::Json<DiscordOut>> {
    let owner = owner_of(&state, &id).await?;
    let cfg = config_of(&state, &id).await?;
    if owner == me.user || me.role == Role::Admin {
        return Ok(axum::Json(out(&state, &id, cfg)));
    }
    if !has_access(&state, &id, &me.user).await? {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "not_enrolled",
            "the course server is shown to users enrolled in the stream (with access now) \
             and to its owner",
        ));
    }
    let mut o = out(&state, &id, cfg);
    o.member = member_of(&state, &id, &me.user).await?.map(member_out);
    Ok(axum::Json(o))
}

/// Every user the bot looked at, with its last attempt (owner).
#[utoipa::path(get, path = "/v1/streams/{id}/discord/members", tag = "discord",
    security(("identity" = [])), params(("id" = String, Path)),
    responses((status = 200, body = MembersOut), (status = 401), (status = 403), (status = 404)))]
pub async fn members(
    State(state): State<AppState>,
    Path(id): Path<String>,
    me: Identity,
) -> AppResult<axum::Json<MembersOut>> {
    owned(&state, &id, &me).await?;
    let rows: Vec<MemberRow> = sqlx::query_as(
        "SELECT user_id, discord_user_id, status, last_error, attempts, updated_at \
         FROM discord_members WHERE stream_id = $1 ORDER BY user_id",
    )
    .bind(&id)
    .fetch_all(&state.db.pool)
    .await?;
    Ok(axum::Json(MembersOut {
        members: rows.into_iter().map(member_out).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invites_are_https_discord_invites() {
        for good in [
            "https://discord.gg/abc123",
            "https://discord.com/invite/Abc-123",
            "https://www.discord.com/invite/abc123",
        ] {
            assert!(valid_invite(good), "{good}");
        }
        for bad in [
            "http://discord.gg/abc123",
            "https://discord.gg/",
            "https://discord.gg/a/b",
            "https://evil.example/discord.gg/abc",
            "https://discord.gg.evil.example/abc",
            "https://discord.com/channels/1/2",
            "https://user@discord.gg/abc123",
            "https://discord.gg:8443/abc123",
            "https://discord.gg/abc123#x",
            "javascript:alert(1)",
            "discord.gg/abc123",
        ] {
            assert!(!valid_invite(bad), "{bad}");
        }
    }

    #[test]
    fn snowflakes_are_17_to_20_digits_of_a_u64() {
        assert!(valid_snowflake("80351110224678912"));
        assert!(valid_snowflake("1200000000000000001"));
        assert!(!valid_snowflake("123"));
        assert!(!valid_snowflake("99999999999999999999"), "over u64");
        assert!(!valid_snowflake("12345678901234567a"));
        assert!(!valid_snowflake("-1234567890123456"));
    }
}
