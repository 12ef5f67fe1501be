//! Watch Together over HTTP: the room WebSocket upgrade (token checked before it),
//! room-token minting for platform users, guest invite links, the videos under
//! `/media/` (with the shipped demo video), and the sqlx [`ChatStore`] of the rooms.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus::Registry;
use serde::Deserialize;
use serde_json::json;
use sqlx::Row;
use tandem_signaling::chat::{
    BoxFut, ChatRecord, ChatStore, Inserted, Moderation, NewChat, StoreError,
};
use tandem_signaling::{Broker, Identity, Rooms, WsUpgrade, valid_room_id};

use crate::api::access::{self, RoomAccess};
use crate::auth::{
    DEFAULT_MEDIA_TOKEN_TTL_SECS, Grants, MAX_MEDIA_TOKEN_TTL_SECS, Role, TokenRequest, bearer,
};
use crate::clock::now_ms;
use crate::config::Config;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::storage::Db;

/// The rooms of this server, with chat kept in its database; `broker` says where
/// each room lives (`InProcessBroker` on one node, `cluster::broker` on several).
pub fn build(
    config: &Config,
    db: &Db,
    registry: &Registry,
    broker: Arc<dyn Broker>,
) -> prometheus::Result<Rooms> {
    Rooms::new(
        config.rooms.clone(),
        Arc::new(SqlChatStore { db: db.clone() }),
        broker,
        registry,
    )
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/rooms/{room}/ws", get(ws))
        .route("/v1/rooms/{room}/token", post(mint))
        .route("/v1/rooms/{room}/invite", post(invite))
        .route("/v1/rooms/{room}/join", post(join))
        .route("/media/{file}", get(media_file))
        .route_layer(axum::middleware::from_fn(crate::text::refuse_control_chars))
}

/// The demo video every room plays out of the box (scripts/make-demo-video.sh),
/// served at `/media/demo.mp4` unless `data_dir/media/demo.mp4` replaces it.
static DEMO_MP4: &[u8] = include_bytes!("../web/media/demo.mp4");
const DEMO_NAME: &str = "demo.mp4";

/// `GET /media/{file}`: videos for Watch Together pages, from `data_dir/media`
/// (with Range support, so players can seek); `demo.mp4` falls back to the
/// embedded demo video.
async fn media_file(
    State(state): State<AppState>,
    Path(file): Path<String>,
    req: axum::extract::Request,
) -> Response {
    let ok = !file.is_empty()
        && !file.starts_with('.')
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return AppError::not_found("no such media file").into_response();
    }
    let path = state.config.data_dir.join("media").join(&file);
    if !path.is_file() {
        if file == DEMO_NAME {
            return embedded_video(DEMO_MP4, req.headers());
        }
        return AppError::not_found(format!(
            "no such media file: put it in {}",
            state.config.data_dir.join("media").display()
        ))
        .into_response();
    }
    use tower::ServiceExt;
    match tower_http::services::ServeFile::new(path)
        .oneshot(req)
        .await
    {
        Ok(r) => r.into_response(),
        Err(never) => match never {},
    }
}

/// An in-memory MP4 with single-range `Range` support (what `<video>` asks for):
/// 200 whole, 206 a part, 416 past the end. Multi-range requests get the whole file.
fn embedded_video(bytes: &'static [u8], headers: &HeaderMap) -> Response {
    use axum::http::{StatusCode, header};
    let len = bytes.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
        .filter(|r| !r.contains(','));
    let base = [
        (header::CONTENT_TYPE, "video/mp4".to_string()),
        (header::ACCEPT_RANGES, "bytes".to_string()),
        (header::CACHE_CONTROL, "public, max-age=3600".to_string()),
    ];
    let Some(spec) = range else {
        return (StatusCode::OK, base, bytes).into_response();
    };
    let (start, end) = match spec.split_once('-') {
        Some(("", n)) => match n.trim().parse::<u64>() {
            Ok(n) if n > 0 => (len.saturating_sub(n), len - 1),
            _ => (len, len),
        },
        Some((a, b)) => match (a.trim().parse::<u64>(), b.trim()) {
            (Ok(a), "") => (a, len.saturating_sub(1)),
            (Ok(a), b) => match b.parse::<u64>() {
                Ok(b) if b >= a => (a, b.min(len.saturating_sub(1))),
                _ => (len, len),
            },
            _ => (len, len),
        },
        None => (len, len),
    };
    if start >= len {
        return (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{len}"))],
        )
            .into_response();
    }
    let part = &bytes[start as usize..=end as usize];
    (
        StatusCode::PARTIAL_CONTENT,
        base,
        [(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))],
        part,
    )
        .into_response()
}

/// The WebSocket upgrade, or nothing (so a plain GET gets a JSON 400, not a bare rejection).
struct MaybeUpgrade(Option<WsUpgrade>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeUpgrade {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(MaybeUpgrade(
            WsUpgrade::from_request_parts(parts, state).await.ok(),
        ))
    }
}

async fn ws(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    upgrade: MaybeUpgrade,
) -> AppResult<Response> {
    if !valid_room_id(&room) {
        return Err(AppError::bad_request(
            "room: 1–128 characters of [A-Za-z0-9_.:-]",
        ));
    }
    let token = query
        .get("token")
        .map(String::as_str)
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(&headers))
        .ok_or_else(|| {
            AppError::unauthorized("a room token is required (?token= or Authorization: Bearer)")
        })?;
    let claims = state.tokens.verify(token)?;
    if !claims.allows_room(&room) {
        return Err(AppError::unauthorized("the token is not for this room"));
    }
    if claims.role.as_deref() == Some(INVITE_ROLE) {
        return Err(AppError::unauthorized(
            "this is an invite, not a room token: open the invite link (the page asks for \
             your name), or POST /v1/rooms/{room}/join with it",
        ));
    }
    // A stream's room admits its enrollees, owner and admins, checked now (not only
    // when the token was minted: a refund since then counts). Operator `*` tokens
    // (`tandem token --room '*'`) pass.
    if claims.room.as_deref() != Some("*") {
        access::room_access(&state, &room, &claims.sub, claims.role.as_deref()).await?;
    }
    let Some(upgrade) = upgrade.0 else {
        return Err(AppError::bad_request(
            "this route needs a WebSocket upgrade: GET over HTTP/1.1 with Connection: upgrade, \
             Upgrade: websocket and Sec-WebSocket-Version: 13",
        ));
    };
    let ident = Identity {
        user_id: claims.sub,
        name: claims.name,
        moderator: claims.grants.moderate,
        can_chat: claims.grants.chat,
    };
    // The signaling crate answers the upgrade itself (buffers and frame limits are
    // its own): its rooms write to the upgraded connection directly.
    Ok(state.rooms.upgrade(upgrade, room, ident))
}

#[derive(Debug, Default, Deserialize)]
struct MintBody {
    #[serde(default)]
    name: Option<String>,
}

/// Largest room-token request body: `{"name": …}` needs well under 1 KiB.
const MINT_BODY_LIMIT: usize = 16 * 1024;

/// `POST /v1/rooms/{room}/token`: a room token for the identity-authenticated caller.
/// Instructors and admins get the `moderate` grant. The identity is checked
/// before the body is read, so a caller without one learns nothing from its body
/// and costs no buffering.
async fn mint(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> AppResult<Response> {
    check_room_id(&room)?;
    let token = bearer(&headers)
        .ok_or_else(|| AppError::unauthorized("Authorization: Bearer <identity JWT> required"))?;
    let who = state.identity.verify(token)?;
    let bytes = axum::body::to_bytes(body, MINT_BODY_LIMIT)
        .await
        .map_err(|_| {
            AppError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {MINT_BODY_LIMIT} bytes"),
            )
        })?;
    // No body at all is fine (the name is optional).
    let body: MintBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        MintBody::default()
    } else {
        crate::api::common::parse_json(&headers, &bytes)?
    };
    if body
        .name
        .as_deref()
        .is_some_and(|n| !crate::text::is_clean_line(n))
    {
        return Err(crate::text::control_char_error("name"));
    }
    let name = body
        .name
        .map(|n| n.trim().chars().take(64).collect::<String>())
        .filter(|n| !n.is_empty());
    // In a stream's room only its owner and admins moderate; non-members get 403
    // here already (and again when they connect).
    let staff = match access::room_access(&state, &room, &who.user, Some(who.role.as_str())).await?
    {
        RoomAccess::Open => matches!(who.role, Role::Instructor | Role::Admin),
        RoomAccess::Staff => true,
        RoomAccess::Enrolled => false,
    };
    let (token, claims) = state.tokens.mint(&TokenRequest {
        user: who.user.clone(),
        stream: None,
        room: Some(room.clone()),
        grants: Grants {
            chat: true,
            moderate: staff,
            ..Default::default()
        },
        name,
        role: Some(who.role.as_str().to_string()),
        ttl_secs: DEFAULT_MEDIA_TOKEN_TTL_SECS,
    });
    Ok(Json(json!({
        "token": token,
        "ws_url": format!("{}/v1/rooms/{room}/ws", ws_base(&state)),
        "expires_at": rfc3339(claims.exp),
    }))
    .into_response())
}

/// The `role` claim of an invite token: it only buys a guest token from
/// [`join`]; the WebSocket, WHIP/WHEP and [`invite`] refuse it.
const INVITE_ROLE: &str = "room-invite";

/// A room id from the path: 400 naming the field when it is not one.
fn check_room_id(room: &str) -> AppResult<()> {
    if valid_room_id(room) {
        Ok(())
    } else {
        Err(
            AppError::bad_request("room: 1–128 characters of [A-Za-z0-9_.:-]")
                .with("field", "room"),
        )
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteBody {
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinBody {
    #[serde(default)]
    name: Option<String>,
}

/// A small JSON body (none at all is `T::default()`), after the caller was checked.
async fn small_body<T: serde::de::DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: axum::body::Body,
) -> AppResult<T> {
    let bytes = axum::body::to_bytes(body, MINT_BODY_LIMIT)
        .await
        .map_err(|_| {
            AppError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than {MINT_BODY_LIMIT} bytes"),
            )
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    crate::api::common::parse_json(headers, &bytes)
}

/// The base of `ws_url` answers: the public URL with ws(s)://.
fn ws_base(state: &AppState) -> String {
    state
        .public_url
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1)
}

/// `POST /v1/rooms/{room}/invite` with a room token that has the `moderate` grant
/// for this room: an invite link for guests (`{invite_url, invite_token,
/// expires_at}`). The invite token grants nothing by itself; [`join`] trades it,
/// with a name the guest types, for a room token of a new guest user. It is not
/// revocable (a signed token, like every media token): keep `ttl_seconds` short
/// (default and most 24 h). A business stream's room admits enrollees only: no
/// invites there (409 `stream_room`).
async fn invite(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> AppResult<Response> {
    check_room_id(&room)?;
    let token = bearer(&headers).ok_or_else(|| {
        AppError::unauthorized(
            "Authorization: Bearer <room token with the moderate grant> required \
             (tandem token --room ROOM --moderate, or POST /v1/rooms/{room}/token as an instructor)",
        )
    })?;
    let claims = state.tokens.verify(token)?;
    if !claims.allows_room(&room) || claims.role.as_deref() == Some(INVITE_ROLE) {
        return Err(AppError::forbidden(
            "the token is not a room token for this room",
        ));
    }
    if !claims.grants.moderate {
        return Err(AppError::forbidden(
            "only a moderator may invite: the room token needs the moderate grant",
        ));
    }
    let body: InviteBody = small_body(&headers, body).await?;
    let ttl = body.ttl_seconds.unwrap_or(MAX_MEDIA_TOKEN_TTL_SECS);
    if !(60..=MAX_MEDIA_TOKEN_TTL_SECS).contains(&ttl) {
        return Err(AppError::bad_request(format!(
            "ttl_seconds must be 60-{MAX_MEDIA_TOKEN_TTL_SECS}"
        ))
        .with("field", "ttl_seconds"));
    }
    let stream: Option<(String,)> = sqlx::query_as("SELECT id FROM streams WHERE id = $1")
        .bind(&room)
        .fetch_optional(&state.db.pool)
        .await?;
    if stream.is_some() {
        return Err(AppError::conflict(
            "stream_room",
            "this room is a stream's: its viewers join by enrolling in the stream, not by invite",
        ));
    }
    let (invite, inv) = state.tokens.mint(&TokenRequest {
        user: claims.sub.clone(),
        stream: None,
        room: Some(room.clone()),
        grants: Grants::default(),
        name: None,
        role: Some(INVITE_ROLE.into()),
        ttl_secs: ttl,
    });
    tracing::info!(room = %room, by = %claims.sub, ttl, "room invite created");
    Ok(Json(json!({
        "invite_url": format!("{}/together/{room}?invite={invite}", state.public_url),
        "invite_token": invite,
        "expires_at": rfc3339(inv.exp),
    }))
    .into_response())
}

/// `POST /v1/rooms/{room}/join` with an invite token and `{"name": "…"}`: a room
/// token (chat, no moderation) for a new guest user `guest-…` with that name.
async fn join(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> AppResult<Response> {
    check_room_id(&room)?;
    let token = bearer(&headers).ok_or_else(|| {
        AppError::unauthorized(
            "Authorization: Bearer <invite token> required (from the invite link)",
        )
    })?;
    let claims = state.tokens.verify(token).map_err(|mut e| {
        e.message = format!("{}: ask for a new invite link", e.message);
        e
    })?;
    if claims.role.as_deref() != Some(INVITE_ROLE) || !claims.allows_room(&room) {
        return Err(AppError::unauthorized(
            "this is not an invite for this room: ask for a new invite link",
        ));
    }
    let body: JoinBody = small_body(&headers, body).await?;
    let name = body.name.unwrap_or_default();
    if !crate::text::is_clean_line(&name) {
        return Err(crate::text::control_char_error("name"));
    }
    let name: String = name.trim().chars().take(64).collect();
    if name.is_empty() {
        return Err(
            AppError::bad_request("name: type the name others will see (1-64 characters)")
                .with("field", "name"),
        );
    }
    let user = format!("guest-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let (token, minted) = state.tokens.mint(&TokenRequest {
        user: user.clone(),
        stream: None,
        room: Some(room.clone()),
        grants: Grants {
            chat: true,
            ..Default::default()
        },
        name: Some(name),
        role: None,
        ttl_secs: DEFAULT_MEDIA_TOKEN_TTL_SECS,
    });
    Ok(Json(json!({
        "token": token,
        "user": user,
        "ws_url": format!("{}/v1/rooms/{room}/ws", ws_base(&state)),
        "expires_at": rfc3339(minted.exp),
    }))
    .into_response())
}

/// Unix seconds as RFC 3339 UTC.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Chat, bans and mutes in the server's database (SQLite or PostgreSQL).
#[derive(Clone)]
pub struct SqlChatStore {
    pub db: Db,
}

const CHAT_COLUMNS: &str =
    "id, room, user_id, user_name, user_avatar, text, client_msg_id, media_time, created_at";

fn record(row: &sqlx::any::AnyRow) -> Result<ChatRecord, sqlx::Error> {
    Ok(ChatRecord {
        id: row.try_get("id")?,
        room: row.try_get("room")?,
        user_id: row.try_get("user_id")?,
        user_name: row.try_get("user_name")?,
        user_avatar: row.try_get("user_avatar")?,
        text: row.try_get("text")?,
        client_msg_id: row.try_get("client_msg_id")?,
        media_time: row.try_get("media_time")?,
        created_at: row.try_get("created_at")?,
    })
}

fn store_err(e: sqlx::Error) -> StoreError {
    StoreError(e.to_string())
}

impl SqlChatStore {
    async fn find(&self, room: &str, user: &str, cmid: &str) -> Result<ChatRecord, StoreError> {
        let sql = format!(
            "SELECT {CHAT_COLUMNS} FROM chat_messages WHERE room = $1 AND user_id = $2 AND client_msg_id = $3"
        );
        let row = sqlx::query(&sql)
            .bind(room)
            .bind(user)
            .bind(cmid)
            .fetch_one(&self.db.pool)
            .await
            .map_err(store_err)?;
        record(&row).map_err(store_err)
    }
}

impl ChatStore for SqlChatStore {
    fn insert(&self, msg: NewChat) -> BoxFut<'_, Result<Inserted, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(
                "INSERT INTO chat_messages \
                 (room, user_id, user_name, user_avatar, text, client_msg_id, media_time, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (room, user_id, client_msg_id) DO NOTHING RETURNING id",
            )
            .bind(&msg.room)
            .bind(&msg.user_id)
            .bind(&msg.user_name)
            .bind(msg.user_avatar.clone())
            .bind(&msg.text)
            .bind(&msg.client_msg_id)
            .bind(msg.media_time)
            .bind(msg.created_at)
            .fetch_optional(&self.db.pool)
            .await
            .map_err(store_err)?;
            match row {
                Some(row) => Ok(Inserted::New(ChatRecord {
                    id: row.try_get("id").map_err(store_err)?,
                    room: msg.room,
                    user_id: msg.user_id,
                    user_name: msg.user_name,
                    user_avatar: msg.user_avatar,
                    text: msg.text,
                    client_msg_id: msg.client_msg_id,
                    media_time: msg.media_time,
                    created_at: msg.created_at,
                })),
                None => Ok(Inserted::Duplicate(
                    self.find(&msg.room, &msg.user_id, &msg.client_msg_id)
                        .await?,
                )),
            }
        })
    }

    fn page(
        &self,
        room: String,
        before: Option<i64>,
        limit: u32,
    ) -> BoxFut<'_, Result<Vec<ChatRecord>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {CHAT_COLUMNS} FROM chat_messages \
                 WHERE room = $1 AND deleted_at IS NULL AND id < $2 ORDER BY id DESC LIMIT $3"
            );
            let rows = sqlx::query(&sql)
                .bind(&room)
                .bind(before.unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(&self.db.pool)
                .await
                .map_err(store_err)?;
            rows.iter().map(|r| record(r).map_err(store_err)).collect()
        })
    }

    fn get(&self, room: String, id: i64) -> BoxFut<'_, Result<Option<ChatRecord>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {CHAT_COLUMNS} FROM chat_messages WHERE room = $1 AND id = $2 AND deleted_at IS NULL"
            );
            let row = sqlx::query(&sql)
                .bind(&room)
                .bind(id)
                .fetch_optional(&self.db.pool)
                .await
                .map_err(store_err)?;
            row.as_ref().map(record).transpose().map_err(store_err)
        })
    }

    fn delete(&self, room: String, id: i64, by: String) -> BoxFut<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE chat_messages SET deleted_at = $1, deleted_by = $2 \
                 WHERE room = $3 AND id = $4 AND deleted_at IS NULL",
            )
            .bind(now_ms())
            .bind(&by)
            .bind(&room)
            .bind(id)
            .execute(&self.db.pool)
            .await
            .map_err(store_err)?;
            Ok(done.rows_affected() > 0)
        })
    }

    fn moderation(&self, room: String) -> BoxFut<'_, Result<Moderation, StoreError>> {
        Box::pin(async move {
            let bans = sqlx::query("SELECT user_id FROM room_bans WHERE room = $1")
                .bind(&room)
                .fetch_all(&self.db.pool)
                .await
                .map_err(store_err)?
                .iter()
                .map(|r| r.try_get::<String, _>("user_id"))
                .collect::<Result<Vec<_>, _>>()
                .map_err(store_err)?;
            let mutes = sqlx::query(
                "SELECT user_id, until_ms FROM room_mutes WHERE room = $1 AND until_ms > $2",
            )
            .bind(&room)
            .bind(now_ms())
            .fetch_all(&self.db.pool)
            .await
            .map_err(store_err)?
            .iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("user_id")?,
                    r.try_get::<i64, _>("until_ms")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(store_err)?;
            Ok(Moderation { bans, mutes })
        })
    }

    fn set_ban(
        &self,
        room: String,
        user: String,
        by: String,
        reason: Option<String>,
        banned: bool,
    ) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let q = if banned {
                sqlx::query(
                    "INSERT INTO room_bans (room, user_id, by_user, reason, created_at) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (room, user_id) DO UPDATE SET by_user = excluded.by_user, \
                     reason = excluded.reason, created_at = excluded.created_at",
                )
                .bind(&room)
                .bind(&user)
                .bind(&by)
                .bind(reason)
                .bind(now_ms())
            } else {
                sqlx::query("DELETE FROM room_bans WHERE room = $1 AND user_id = $2")
                    .bind(&room)
                    .bind(&user)
            };
            q.execute(&self.db.pool).await.map_err(store_err)?;
            Ok(())
        })
    }

    fn set_mute(
        &self,
        room: String,
        user: String,
        by: String,
        until_ms: Option<i64>,
    ) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let q = match until_ms {
                Some(until) => sqlx::query(
                    "INSERT INTO room_mutes (room, user_id, by_user, until_ms, created_at) \
                     VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (room, user_id) DO UPDATE SET by_user = excluded.by_user, \
                     until_ms = excluded.until_ms, created_at = excluded.created_at",
                )
                .bind(&room)
                .bind(&user)
                .bind(&by)
                .bind(until)
                .bind(now_ms()),
                None => sqlx::query("DELETE FROM room_mutes WHERE room = $1 AND user_id = $2")
                    .bind(&room)
                    .bind(&user),
            };
            q.execute(&self.db.pool).await.map_err(store_err)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_732_250_000), "2024-11-22T04:33:20Z");
    }
}
