//! Calls (issue 17): a small group call (up to 8) between an instructor and
//! students. Every participant publishes one stream, `call:{id}:{user}`, and
//! views every other participant's over WHEP; the call's sync room is
//! `call:{id}`.
//!
//! - `POST /v1/calls` (service key or instructor): the participants and their
//!   roles (`host`, `participant`, `audience`).
//! - `POST /v1/calls/{id}/token` (a participant): one media + room token, scoped
//!   to the call's streams (`call:{id}:*`) with the role's grants (audience:
//!   subscribe only). Which stream it may publish, its own only, is checked by
//!   [`check_session`], the WHIP/WHEP hook of `access`, at every session start:
//!   a token lives hours, a removal or the call's end must count at once.
//! - `GET /v1/calls?user&limit` (the user, service key): history;
//!   `GET /v1/calls/{id}` (participant, service key): the call and who is
//!   connected now.
//! - `POST /v1/calls/{id}/end` (host, service key) and
//!   `POST /v1/calls/{id}/participants/{user}/remove` (host, service key;
//!   an extension, docs/API_NOTES.md): close the sessions and refuse new ones;
//!   the user (every participant, for the end) leaves the call's sync room.
//!
//! When each participant was connected is not stored here: it is read from
//! `media_sessions`, the server's own session records. The session recorder
//! (`whip::SessionRecorder`) hands a call stream's session start and end to
//! [`record_start`] / [`record_end`], which write the session row and the
//! call's state change (`started_at`; the end when the last session closed,
//! `last_left`) in one transaction, so a participant dropping without leaving
//! (a killed browser: the SFU ends its session on timeout) is recorded too.

use std::collections::{BTreeMap, HashSet};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tandem_media::{SessionKind, SessionSummary};
use utoipa::{IntoParams, ToSchema};

use super::common::{begin_write, parse_json, rfc3339, rfc3339_opt};
use crate::auth::{Grants, Identity, MediaClaims, TokenRequest, bearer, secrets_equal};
use crate::clock::now_ms;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::storage::Db;

/// Most participants in one call (issue 17: "a call of up to 8 works").
pub const MAX_PARTICIPANTS: usize = 8;
/// Longest user id in a call: `call:{32 hex}:{user}` stays a valid stream name
/// (128 characters).
const MAX_USER_LEN: usize = 80;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/calls", post(create).get(history))
        .route("/v1/calls/{id}", get(show))
        .route("/v1/calls/{id}/token", post(token))
        .route("/v1/calls/{id}/end", post(end))
        .route("/v1/calls/{id}/participants/{user}/remove", post(remove))
}

/// Who calls a route open to the service key and to some users.
pub enum Caller {
    Service,
    User(Identity),
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let key = &state.config.service_key;
        if !key.is_empty() && bearer(&parts.headers).is_some_and(|t| secrets_equal(t, key)) {
            return Ok(Caller::Service);
        }
        Identity::from_request_parts(parts, state)
            .await
            .map(Caller::User)
    }
}

/// A participant's role in a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallRole {
    /// Publishes, views, ends the call and removes participants.
    Host,
    /// Publishes and views.
    Participant,
    /// Views only.
    Audience,
}

impl CallRole {
    fn parse(s: &str) -> Option<CallRole> {
        match s {
            "host" => Some(CallRole::Host),
            "participant" => Some(CallRole::Participant),
            "audience" => Some(CallRole::Audience),
            _ => None,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            CallRole::Host => "host",
            CallRole::Participant => "participant",
            CallRole::Audience => "audience",
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateCall {
    pub participants: Vec<ParticipantIn>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ParticipantIn {
    pub user: String,
    /// `host`, `participant` or `audience`.
    pub role: String,
}

/// One participant of a call.
#[derive(Debug, Serialize, ToSchema)]
pub struct ParticipantOut {
    pub user: String,
    pub role: CallRole,
    /// First media session of this participant in the call (history).
    pub joined_at: Option<String>,
    /// End of its last session; null while connected or never joined.
    pub left_at: Option<String>,
    /// Whether it has a media session open now.
    pub connected: bool,
    /// Set when the host removed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<String>,
}

/// A call.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallOut {
    pub id: String,
    pub created_by: String,
    pub created_at: String,
    /// The first media session of the call.
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// `last_left` or `ended_by_host`.
    pub end_reason: Option<String>,
    /// From `started_at` to `ended_at` (null until both are known), in seconds.
    pub duration_seconds: Option<f64>,
    /// The call's sync room.
    pub room: String,
    /// The call page.
    pub page_url: String,
    pub participants: Vec<ParticipantOut>,
}

/// What a participant connects with.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallToken {
    /// Media token (WHIP/WHEP of the call's streams) and room token (`room`).
    pub token: String,
    pub expires_at: String,
    pub room: String,
    /// Who the token is for.
    pub user: String,
    /// The sync room's WebSocket.
    pub ws_url: String,
    pub role: CallRole,
    /// Where this participant publishes; absent for the audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whip_url: Option<String>,
    /// Every other publishing participant: user → WHEP URL.
    pub whep_urls: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct HistoryQuery {
    /// Whose calls; an identity's own by default (the service key must name one).
    pub user: Option<String>,
    /// 1..=100, default 20.
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CallList {
    pub calls: Vec<CallOut>,
}

/// The answer to a removal.
#[derive(Debug, Serialize, ToSchema)]
pub struct Removed {
    pub user: String,
    pub removed_at: String,
    /// Media sessions closed by it.
    pub closed_sessions: usize,
}

type CallRow = (
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
);
type MemberRow = (String, String, Option<i64>);

/// The stream a participant publishes.
pub fn stream_of(call: &str, user: &str) -> String {
    format!("call:{call}:{user}")
}

/// `(call id, user)` of a call stream `call:{id}:{user}`.
pub fn parse_stream(stream: &str) -> Option<(&str, &str)> {
    let rest = stream.strip_prefix("call:")?;
    let (id, user) = rest.split_once(':')?;
    (!id.is_empty() && !user.is_empty()).then_some((id, user))
}

/// The bounds of the call's streams, `[call:{id}:, call:{id};)`: a range (`;`
/// follows `:`) instead of LIKE, whose `_` would be a wildcard.
fn range(call: &str) -> (String, String) {
    (format!("call:{call}:"), format!("call:{call};"))
}

fn field_error(field: &str, message: impl Into<String>) -> AppError {
    AppError::bad_request(message).with("field", field)
}

fn call_ended() -> AppError {
    AppError::conflict("call_ended", "the call has ended")
}

fn not_invited() -> AppError {
    AppError::new(
        StatusCode::FORBIDDEN,
        "not_invited",
        "you are not a participant of this call",
    )
}

fn removed() -> AppError {
    AppError::new(
        StatusCode::FORBIDDEN,
        "removed",
        "the host removed you from this call",
    )
}

/// Checks a create body; the participants with their parsed roles.
fn validate(input: &CreateCall) -> AppResult<Vec<(String, CallRole)>> {
    let n = input.participants.len();
    if n == 0 || n > MAX_PARTICIPANTS {
        return Err(field_error(
            "participants",
            format!("participants must list 1 to {MAX_PARTICIPANTS} users (got {n})"),
        ));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    for (i, p) in input.participants.iter().enumerate() {
        let user = p.user.as_str();
        let valid = crate::text::is_clean_id(user)
            && user.len() <= MAX_USER_LEN
            && crate::text::valid_stream_name(user);
        if !valid {
            return Err(field_error(
                &format!("participants[{i}].user"),
                format!(
                    "participants[{i}].user must be 1-{MAX_USER_LEN} characters of \
                     A-Z a-z 0-9 _ . : -"
                ),
            ));
        }
        if !seen.insert(user) {
            return Err(field_error(
                &format!("participants[{i}].user"),
                format!("participants[{i}].user: '{user}' is listed twice"),
            ));
        }
        let role = CallRole::parse(&p.role).ok_or_else(|| {
            field_error(
                &format!("participants[{i}].role"),
                format!("participants[{i}].role must be host, participant or audience"),
            )
        })?;
        out.push((user.to_string(), role));
    }
    if !out.iter().any(|(_, r)| *r == CallRole::Host) {
        return Err(field_error(
            "participants",
            "participants must include at least one host",
        ));
    }
    Ok(out)
}

#[utoipa::path(post, path = "/v1/calls", tag = "calls",
    security(("service_key" = []), ("identity" = [])), request_body = CreateCall,
    responses((status = 201, body = CallOut), (status = 400, description = "the failing field named"),
              (status = 401), (status = 403, description = "neither the service key nor an instructor")))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    caller: Caller,
    body: Bytes,
) -> AppResult<Response> {
    let created_by = match caller {
        Caller::Service => "service".to_string(),
        Caller::User(id) => match id.role {
            crate::auth::Role::Instructor | crate::auth::Role::Admin => id.user,
            crate::auth::Role::User => {
                return Err(AppError::forbidden(
                    "creating a call needs the instructor role or the service key",
                ));
            }
        },
    };
    let input: CreateCall = parse_json(&headers, &body)?;
    let participants = validate(&input)?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let now = now_ms();
    let mut tx = begin_write(&state.db).await?;
    sqlx::query("INSERT INTO calls (id, created_by, created_at) VALUES ($1, $2, $3)")
        .bind(&id)
        .bind(&created_by)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    for (i, (user, role)) in participants.iter().enumerate() {
        sqlx::query(
            "INSERT INTO call_participants (call_id, user_id, role, position) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(user)
        .bind(role.as_str())
        .bind(i as i64)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    let call = load_out(&state, &id)
        .await?
        .ok_or_else(AppError::internal)?;
    Ok((StatusCode::CREATED, axum::Json(call)).into_response())
}

async fn load_call(db: &Db, id: &str) -> AppResult<Option<CallRow>> {
    Ok(sqlx::query_as(
        "SELECT id, created_by, created_at, started_at, ended_at, end_reason FROM calls WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&db.pool)
    .await?)
}

async fn members(db: &Db, id: &str) -> AppResult<Vec<MemberRow>> {
    Ok(sqlx::query_as(
        "SELECT user_id, role, removed_at FROM call_participants WHERE call_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await?)
}

/// The call as answered, with each participant's times from `media_sessions`
/// and who is connected now from the SFU.
async fn load_out(state: &AppState, id: &str) -> AppResult<Option<CallOut>> {
    let Some(row) = load_call(&state.db, id).await? else {
        return Ok(None);
    };
    Ok(Some(render(state, row).await?))
}

async fn render(state: &AppState, row: CallRow) -> AppResult<CallOut> {
    let (id, created_by, created_at, started_at, ended_at, end_reason) = row;
    let (lo, hi) = range(&id);
    let sessions: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT user_id, started_at, ended_at FROM media_sessions \
         WHERE stream >= $1 AND stream < $2",
    )
    .bind(&lo)
    .bind(&hi)
    .fetch_all(&state.db.pool)
    .await?;
    let live: HashSet<String> = state
        .sfu
        .sessions()
        .into_iter()
        .filter(|s| s.stream.starts_with(&lo))
        .map(|s| s.user.to_string())
        .collect();
    let mut participants = Vec::new();
    for (user, role, removed_at) in members(&state.db, &id).await? {
        let mine: Vec<_> = sessions.iter().filter(|s| s.0 == user).collect();
        let joined = mine.iter().map(|s| s.1).min();
        let open = mine.iter().any(|s| s.2.is_none());
        let left = if open || mine.is_empty() {
            None
        } else {
            mine.iter().filter_map(|s| s.2).max()
        };
        participants.push(ParticipantOut {
            connected: live.contains(&user),
            user,
            role: CallRole::parse(&role).unwrap_or(CallRole::Audience),
            joined_at: rfc3339_opt(joined),
            left_at: rfc3339_opt(left),
            removed_at: rfc3339_opt(removed_at),
        });
    }
    let duration_seconds = match (started_at, ended_at) {
        (Some(s), Some(e)) => Some((e - s).max(0) as f64 / 1000.0),
        _ => None,
    };
    Ok(CallOut {
        room: format!("call:{id}"),
        page_url: format!("{}/call/{id}", state.public_url),
        id,
        created_by,
        created_at: rfc3339(created_at),
        started_at: rfc3339_opt(started_at),
        ended_at: rfc3339_opt(ended_at),
        end_reason,
        duration_seconds,
        participants,
    })
}

/// The caller's row in the call: `None` for the service key; 403 for a
/// non-participant. `need_host` also refuses participants that are not hosts.
fn member_of(caller: &Caller, rows: &[MemberRow], need_host: bool) -> AppResult<Option<CallRole>> {
    let Caller::User(me) = caller else {
        return Ok(None);
    };
    let (_, role, _) = rows
        .iter()
        .find(|(u, _, _)| *u == me.user)
        .ok_or_else(not_invited)?;
    let role = CallRole::parse(role).unwrap_or(CallRole::Audience);
    if need_host && role != CallRole::Host {
        return Err(AppError::forbidden("only a host of the call may do this"));
    }
    Ok(Some(role))
}

#[utoipa::path(get, path = "/v1/calls/{id}", tag = "calls",
    security(("service_key" = []), ("identity" = [])), params(("id" = String, Path)),
    responses((status = 200, body = CallOut), (status = 401), (status = 403, description = "not a participant"),
              (status = 404)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> AppResult<axum::Json<CallOut>> {
    let row = load_call(&state.db, &id)
        .await?
        .ok_or_else(|| AppError::not_found("no such call"))?;
    member_of(&caller, &members(&state.db, &id).await?, false)?;
    Ok(axum::Json(render(&state, row).await?))
}

#[utoipa::path(post, path = "/v1/calls/{id}/token", tag = "calls", security(("identity" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = CallToken), (status = 401),
              (status = 403, description = "not_invited, or removed by the host"), (status = 404),
              (status = 409, description = "call_ended")))]
pub async fn token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    me: Identity,
) -> AppResult<axum::Json<CallToken>> {
    let row = load_call(&state.db, &id)
        .await?
        .ok_or_else(|| AppError::not_found("no such call"))?;
    let rows = members(&state.db, &id).await?;
    let (_, role, removed_at) = rows
        .iter()
        .find(|(u, _, _)| *u == me.user)
        .ok_or_else(not_invited)?;
    if removed_at.is_some() {
        return Err(removed());
    }
    if row.4.is_some() {
        return Err(call_ended());
    }
    let role = CallRole::parse(role).unwrap_or(CallRole::Audience);
    let room = format!("call:{id}");
    let (token, claims) = state.tokens.mint(&TokenRequest {
        user: me.user.clone(),
        stream: Some(format!("call:{id}:*")),
        room: Some(room.clone()),
        grants: Grants {
            publish: role != CallRole::Audience,
            subscribe: true,
            chat: true,
            moderate: role == CallRole::Host,
        },
        name: None,
        role: Some(me.role.as_str().into()),
        ttl_secs: state.config.api.media_token_ttl_seconds,
    });
    let base = &state.public_url;
    let whep_urls = rows
        .iter()
        .filter(|(u, r, removed)| *u != me.user && r.as_str() != "audience" && removed.is_none())
        .map(|(u, _, _)| (u.clone(), format!("{base}/v1/whep/{}", stream_of(&id, u))))
        .collect();
    let ws_base = base
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    Ok(axum::Json(CallToken {
        token,
        expires_at: rfc3339(claims.exp as i64 * 1000),
        ws_url: format!("{ws_base}/v1/rooms/{room}/ws"),
        room,
        user: me.user.clone(),
        role,
        whip_url: (role != CallRole::Audience)
            .then(|| format!("{base}/v1/whip/{}", stream_of(&id, &me.user))),
        whep_urls,
    }))
}

#[utoipa::path(get, path = "/v1/calls", tag = "calls",
    security(("service_key" = []), ("identity" = [])), params(HistoryQuery),
    responses((status = 200, body = CallList), (status = 400, description = "the failing field named"),
              (status = 401), (status = 403, description = "another user's calls")))]
pub async fn history(
    State(state): State<AppState>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
    caller: Caller,
) -> AppResult<axum::Json<CallList>> {
    let Query(q) = query.map_err(|e| field_error("limit", format!("query: {e}")))?;
    let user = match (&caller, q.user) {
        (Caller::Service, Some(u)) => u,
        (Caller::Service, None) => {
            return Err(field_error("user", "user is required with the service key"));
        }
        (Caller::User(me), None) => me.user.clone(),
        (Caller::User(me), Some(u)) if u == me.user || me.role == crate::auth::Role::Admin => u,
        (Caller::User(_), Some(_)) => {
            return Err(AppError::forbidden("only your own call history"));
        }
    };
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(field_error("limit", "limit must be 1 to 100"));
    }
    let rows: Vec<CallRow> = sqlx::query_as(
        "SELECT c.id, c.created_by, c.created_at, c.started_at, c.ended_at, c.end_reason \
         FROM calls c JOIN call_participants p ON p.call_id = c.id \
         WHERE p.user_id = $1 ORDER BY c.created_at DESC, c.id LIMIT $2",
    )
    .bind(&user)
    .bind(limit)
    .fetch_all(&state.db.pool)
    .await?;
    let mut calls = Vec::with_capacity(rows.len());
    for row in rows {
        calls.push(render(&state, row).await?);
    }
    Ok(axum::Json(CallList { calls }))
}

#[utoipa::path(post, path = "/v1/calls/{id}/end", tag = "calls",
    security(("service_key" = []), ("identity" = [])), params(("id" = String, Path)),
    responses((status = 200, body = CallOut, description = "ended; every session of it closed"),
              (status = 401), (status = 403, description = "not a host"), (status = 404),
              (status = 409, description = "call_ended")))]
pub async fn end(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Caller,
) -> AppResult<axum::Json<CallOut>> {
    load_call(&state.db, &id)
        .await?
        .ok_or_else(|| AppError::not_found("no such call"))?;
    let rows = members(&state.db, &id).await?;
    member_of(&caller, &rows, true)?;
    let now = now_ms();
    // Marked first: from here the hook refuses new sessions, then the open ones close.
    let mut tx = begin_write(&state.db).await?;
    let done = sqlx::query(
        "UPDATE calls SET ended_at = $1, end_reason = 'ended_by_host', \
         started_at = COALESCE(started_at, $1) WHERE id = $2 AND ended_at IS NULL",
    )
    .bind(now)
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(call_ended());
    }
    tx.commit().await?;
    let closed = close_sessions(&state, &id, None).await;
    for (user, _, _) in &rows {
        state
            .rooms
            .evict(
                &format!("call:{id}"),
                user,
                "call_ended",
                "the host ended the call",
            )
            .await;
    }
    tracing::info!(call = %id, closed, "call ended by its host");
    Ok(axum::Json(
        load_out(&state, &id)
            .await?
            .ok_or_else(AppError::internal)?,
    ))
}

/// Closes the call's live sessions (of `user` only: its own stream's, viewers
/// included, and its views of the others). Returns how many closed.
async fn close_sessions(state: &AppState, call: &str, user: Option<&str>) -> usize {
    let (prefix, _) = range(call);
    let own = user.map(|u| stream_of(call, u));
    let targets: Vec<SessionSummary> = state
        .sfu
        .sessions()
        .into_iter()
        .filter(|s| s.stream.starts_with(&prefix))
        .filter(|s| match (user, &own) {
            (Some(u), Some(own)) => &*s.user == u || &*s.stream == own.as_str(),
            _ => true,
        })
        .collect();
    let mut closed = 0;
    for s in targets {
        if state.sfu.end(&s.id).await.is_ok() {
            closed += 1;
        }
    }
    closed
}

#[utoipa::path(post, path = "/v1/calls/{id}/participants/{user}/remove", tag = "calls",
    security(("service_key" = []), ("identity" = [])),
    params(("id" = String, Path), ("user" = String, Path)),
    responses((status = 200, body = Removed, description = "removed: its sessions closed, its token opens no new one"),
              (status = 401), (status = 403, description = "not a host"),
              (status = 404, description = "no such call or participant")))]
pub async fn remove(
    State(state): State<AppState>,
    Path((id, user)): Path<(String, String)>,
    caller: Caller,
) -> AppResult<axum::Json<Removed>> {
    load_call(&state.db, &id)
        .await?
        .ok_or_else(|| AppError::not_found("no such call"))?;
    let rows = members(&state.db, &id).await?;
    member_of(&caller, &rows, true)?;
    if !rows.iter().any(|(u, _, _)| *u == user) {
        return Err(AppError::not_found("no such participant in this call"));
    }
    let now = now_ms();
    let mut tx = begin_write(&state.db).await?;
    sqlx::query(
        "UPDATE call_participants SET removed_at = $1 \
         WHERE call_id = $2 AND user_id = $3 AND removed_at IS NULL",
    )
    .bind(now)
    .bind(&id)
    .bind(&user)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let removed_at: Option<(Option<i64>,)> = sqlx::query_as(
        "SELECT removed_at FROM call_participants WHERE call_id = $1 AND user_id = $2",
    )
    .bind(&id)
    .bind(&user)
    .fetch_optional(&state.db.pool)
    .await?;
    let closed_sessions = close_sessions(&state, &id, Some(&user)).await;
    state
        .rooms
        .evict(
            &format!("call:{id}"),
            &user,
            "removed",
            "the host removed you from this call",
        )
        .await;
    tracing::info!(call = %id, closed_sessions, "participant removed by the host");
    Ok(axum::Json(Removed {
        user,
        removed_at: rfc3339(removed_at.and_then(|(r,)| r).unwrap_or(now)),
        closed_sessions,
    }))
}

/// The WHIP/WHEP hook for a call stream (`access::check_session`): the call
/// exists and runs, the token's user is a participant not removed, and a
/// publisher publishes its own stream and is not audience. The operator's
/// wildcard tokens pass.
pub async fn check_session(
    state: &AppState,
    claims: &MediaClaims,
    stream: &str,
    kind: SessionKind,
) -> AppResult<()> {
    if claims.stream.as_deref() == Some("*") {
        return Ok(());
    }
    let (id, owner) =
        parse_stream(stream).ok_or_else(|| AppError::not_found("no such call stream"))?;
    let row = load_call(&state.db, id)
        .await?
        .ok_or_else(|| AppError::not_found("no such call"))?;
    if row.4.is_some() {
        return Err(call_ended());
    }
    let rows = members(&state.db, id).await?;
    let (_, role, removed_at) = rows
        .iter()
        .find(|(u, _, _)| *u == claims.sub)
        .ok_or_else(not_invited)?;
    if removed_at.is_some() {
        return Err(removed());
    }
    if kind == SessionKind::Publisher {
        if role == "audience" {
            return Err(AppError::forbidden(
                "the audience of a call views only; it does not publish",
            ));
        }
        if owner != claims.sub {
            return Err(AppError::forbidden(format!(
                "a participant publishes its own stream only ({})",
                stream_of(id, &claims.sub)
            )));
        }
    }
    Ok(())
}

/// After a call publisher's session was built (`whip::create_session`): whether
/// the call ended or the participant was removed meanwhile.
pub async fn closed_meanwhile(state: &AppState, stream: &str) -> AppResult<Option<AppError>> {
    let Some((id, user)) = parse_stream(stream) else {
        return Ok(None);
    };
    let row: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT c.ended_at, p.removed_at FROM calls c \
         LEFT JOIN call_participants p ON p.call_id = c.id AND p.user_id = $2 WHERE c.id = $1",
    )
    .bind(id)
    .bind(user)
    .fetch_optional(&state.db.pool)
    .await?;
    Ok(match row {
        Some((Some(_), _)) => Some(call_ended()),
        Some((None, Some(_))) => Some(removed()),
        _ => None,
    })
}

/// Who may be in the call's sync room `call:{id}` (`access::room_access`): its
/// participants, not removed, while it runs. Hosts moderate.
pub async fn room_staff(state: &AppState, id: &str, user: &str) -> AppResult<bool> {
    let row = load_call(&state.db, id)
        .await?
        .ok_or_else(|| AppError::not_found("no such call"))?;
    if row.4.is_some() {
        return Err(call_ended());
    }
    let rows = members(&state.db, id).await?;
    let (_, role, removed_at) = rows
        .iter()
        .find(|(u, _, _)| u == user)
        .ok_or_else(not_invited)?;
    if removed_at.is_some() {
        return Err(removed());
    }
    Ok(role == "host")
}

/// A call stream's session start: its `media_sessions` row and the call's
/// `started_at` (first session) in one transaction.
pub async fn record_start(db: &Db, s: &SessionSummary) -> Result<(), sqlx::Error> {
    let mut tx = begin_write(db).await?;
    sqlx::query(
        "INSERT INTO media_sessions (id, stream, kind, user_id, started_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(s.id.to_string())
    .bind(s.stream.to_string())
    .bind(s.kind.as_str())
    .bind(s.user.to_string())
    .bind(s.started_at_ms)
    .execute(&mut *tx)
    .await?;
    if let Some((id, _)) = parse_stream(&s.stream) {
        sqlx::query(
            // The earliest start: two sessions' starts may reach the recorder
            // out of order.
            "UPDATE calls SET started_at = $1 WHERE id = $2 AND ended_at IS NULL \
             AND (started_at IS NULL OR started_at > $1)",
        )
        .bind(s.started_at_ms)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// A call stream's session end: the row's `ended_at` and, when it was the
/// call's last open session, the call's end (`last_left`) in one transaction.
pub async fn record_end(db: &Db, s: &SessionSummary, at: i64) -> Result<(), sqlx::Error> {
    let mut tx = begin_write(db).await?;
    sqlx::query("UPDATE media_sessions SET ended_at = $1 WHERE id = $2 AND ended_at IS NULL")
        .bind(at)
        .bind(s.id.to_string())
        .execute(&mut *tx)
        .await?;
    if let Some((id, _)) = parse_stream(&s.stream) {
        let (lo, hi) = range(id);
        let open: (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM media_sessions WHERE stream >= $1 AND stream < $2 \
             AND ended_at IS NULL",
        )
        .bind(&lo)
        .bind(&hi)
        .fetch_one(&mut *tx)
        .await?;
        if open.0 == 0 {
            sqlx::query(
                "UPDATE calls SET ended_at = $1, end_reason = 'last_left' \
                 WHERE id = $2 AND ended_at IS NULL AND started_at IS NOT NULL",
            )
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_streams_parse() {
        assert_eq!(parse_stream("call:abc:alice"), Some(("abc", "alice")));
        assert_eq!(parse_stream("call:abc:a:b"), Some(("abc", "a:b")));
        assert_eq!(parse_stream("call::alice"), None);
        assert_eq!(parse_stream("call:abc:"), None);
        assert_eq!(parse_stream("st_1"), None);
    }

    #[test]
    fn bad_create_bodies_name_their_field() {
        let body = |v: serde_json::Value| serde_json::from_value::<CreateCall>(v).unwrap();
        let field = |v| validate(&body(v)).unwrap_err().details["field"].clone();
        assert_eq!(
            field(serde_json::json!({"participants": []})),
            "participants"
        );
        assert_eq!(
            field(serde_json::json!({"participants": [{"user": "a", "role": "boss"}]})),
            "participants[0].role"
        );
        assert_eq!(
            field(serde_json::json!({"participants": [
                {"user": "a", "role": "host"}, {"user": "a", "role": "participant"}]})),
            "participants[1].user"
        );
        assert_eq!(
            field(serde_json::json!({"participants": [{"user": "a", "role": "participant"}]})),
            "participants"
        );
        assert_eq!(
            field(serde_json::json!({"participants": [{"user": "a b", "role": "host"}]})),
            "participants[0].user"
        );
        assert!(
            validate(&body(serde_json::json!({"participants": [
            {"user": "a", "role": "host"}, {"user": "b", "role": "audience"}]})))
            .is_ok()
        );
    }

    #[test]
    fn a_call_token_scope_covers_its_call_only() {
        let claims = MediaClaims {
            sub: "a".into(),
            stream: Some("call:abc:*".into()),
            room: None,
            grants: Grants::default(),
            name: None,
            role: None,
            aud: String::new(),
            iat: 0,
            exp: 0,
            jti: String::new(),
        };
        assert!(claims.allows_stream("call:abc:a"));
        assert!(claims.allows_stream("call:abc:b"));
        assert!(!claims.allows_stream("call:abc:"));
        assert!(!claims.allows_stream("call:abcd:a"));
        assert!(!claims.allows_stream("st_1"));
    }
}
