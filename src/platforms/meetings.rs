//! Meetings: one call makes the links of a 1:1 or group meeting on the platforms
//! chosen, one of them primary.
//!
//! - `POST /v1/meetings` (instructor): `{title, start, duration_minutes?, platforms,
//!   primary, invitees?}` → 201 with `links` (primary first). The platforms are
//!   asked at once; one that fails (or is not configured) gives its link
//!   `url: null` and an `error`, and the others are unaffected.
//! - `GET /v1/meetings/{id}`: the owner or an invitee (403 for others).
//!
//! - Jitsi (self-hosted, token auth): `{base_url}/{room}?jwt=…`, an HS256 JWT of
//!   `app_id`/`app_secret` (iss, aud `jitsi`, sub = the Jitsi host, room, nbf,
//!   exp = the meeting's end + 1 h, `context.user`). The JWT is minted for whoever
//!   reads the meeting (the owner as moderator), so only the room is stored.
//! - Zoom: Server-to-Server OAuth (`account_credentials`), then
//!   `POST /v2/users/me/meetings` → `join_url`.
//! - Teams: a client-credentials token for Microsoft Graph, then
//!   `POST /v1.0/users/{organizer}/onlineMeetings` → `joinWebUrl`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::http::{client, json as call};
use crate::api::common::{begin_write, parse_json, parse_rfc3339, rfc3339};
use crate::clock::now_ms;
use crate::error::{AppError, AppResult};
use crate::extract::{Identity, Instructor};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/meetings", post(create))
        .route("/v1/meetings/{id}", get(show))
}

/// The meeting platforms.
pub const MEETING_PLATFORMS: &[&str] = &["jitsi", "zoom", "teams"];
/// Longest title.
pub const MAX_TITLE: usize = 200;
/// Most invitees of one meeting.
pub const MAX_INVITEES: usize = 200;

/// What `POST /v1/meetings` takes.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateMeeting {
    pub title: String,
    /// RFC 3339.
    pub start: String,
    /// 1-1440, default 60.
    #[serde(default)]
    pub duration_minutes: Option<i64>,
    /// Non-empty, no repeats: jitsi, zoom, teams.
    pub platforms: Vec<String>,
    /// One of `platforms`.
    pub primary: String,
    /// User ids who may read the meeting (GET).
    #[serde(default)]
    pub invitees: Vec<String>,
}

/// One platform's link.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MeetingLink {
    pub platform: String,
    /// The join link; null when the platform failed.
    pub url: Option<String>,
    pub primary: bool,
    /// Why there is no link (the platform failed or is not configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A meeting with its links, the primary first.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeetingOut {
    pub id: String,
    pub owner: String,
    pub title: String,
    pub start: String,
    pub duration_minutes: i64,
    pub links: Vec<MeetingLink>,
}

fn bad(field: &str, message: impl Into<String>) -> AppError {
    AppError::bad_request(message).with("field", field)
}

/// Creates the meeting's links.
#[utoipa::path(post, path = "/v1/meetings", tag = "platforms", security(("identity" = [])),
    request_body = CreateMeeting,
    responses((status = 201, body = MeetingOut, description = "created; a failed platform's link has url null and an error"),
              (status = 400, description = "bad_request naming the field"), (status = 401),
              (status = 403, description = "not an instructor")))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Instructor(me): Instructor,
    body: Bytes,
) -> AppResult<Response> {
    let input: CreateMeeting = parse_json(&headers, &body)?;
    let title = input.title.trim().to_string();
    if title.is_empty() || title.chars().count() > MAX_TITLE {
        return Err(bad(
            "title",
            format!("title must be 1-{MAX_TITLE} characters"),
        ));
    }
    let start = parse_rfc3339(&input.start, "start")?;
    let duration = input.duration_minutes.unwrap_or(60);
    if !(1..=1440).contains(&duration) {
        return Err(bad("duration_minutes", "duration_minutes must be 1-1440"));
    }
    if input.platforms.is_empty() {
        return Err(bad(
            "platforms",
            format!(
                "platforms must name at least one of {}",
                MEETING_PLATFORMS.join(", ")
            ),
        ));
    }
    for (i, p) in input.platforms.iter().enumerate() {
        if !MEETING_PLATFORMS.contains(&p.as_str()) {
            return Err(bad(
                "platforms",
                format!(
                    "platforms[{i}] must be one of {}",
                    MEETING_PLATFORMS.join(", ")
                ),
            ));
        }
        if input.platforms[..i].contains(p) {
            return Err(bad("platforms", format!("platforms names {p} twice")));
        }
    }
    if !input.platforms.contains(&input.primary) {
        return Err(bad("primary", "primary must be one of platforms"));
    }
    let mut invitees: Vec<String> = Vec::new();
    for (i, u) in input.invitees.iter().enumerate() {
        if !crate::text::is_clean_id(u) || u.len() > 256 {
            return Err(bad("invitees", format!("invitees[{i}] must be a user id")));
        }
        if !invitees.contains(u) && *u != me.user {
            invitees.push(u.clone());
        }
    }
    if invitees.len() > MAX_INVITEES {
        return Err(bad("invitees", format!("at most {MAX_INVITEES} invitees")));
    }
    // Primary first, then in the order given.
    let mut order: Vec<String> = vec![input.primary.clone()];
    order.extend(
        input
            .platforms
            .iter()
            .filter(|p| **p != input.primary)
            .cloned(),
    );
    let id = format!("mt_{}", uuid::Uuid::new_v4().simple());
    let end = start + duration * 60_000;
    let made = futures_util::future::join_all(
        order
            .iter()
            .map(|p| make_link(&state, p, &title, start, end, duration)),
    )
    .await;
    let now = now_ms();
    let mut tx = begin_write(&state.db).await?;
    sqlx::query(
        "INSERT INTO meetings (id, owner, title, start_at, duration_minutes, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&id)
    .bind(&me.user)
    .bind(&title)
    .bind(start)
    .bind(duration)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    for (pos, (platform, result)) in order.iter().zip(&made).enumerate() {
        let (url, error) = match result {
            Ok(url) => (Some(url.clone()), None),
            Err(e) => (None, Some(e.clone())),
        };
        sqlx::query(
            "INSERT INTO meeting_links (meeting_id, platform, url, error, is_primary, position) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(platform)
        .bind(url)
        .bind(error)
        .bind(i64::from(pos == 0))
        .bind(pos as i64)
        .execute(&mut *tx)
        .await?;
    }
    for u in &invitees {
        sqlx::query("INSERT INTO meeting_invitees (meeting_id, user_id) VALUES ($1, $2)")
            .bind(&id)
            .bind(u)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    let failed = made.iter().filter(|r| r.is_err()).count();
    tracing::info!(meeting = %id, owner = %me.user, platforms = ?order, failed, "meeting created");
    let out = load(&state, &id, &me).await?;
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

/// The meeting with its links (the owner or an invitee).
#[utoipa::path(get, path = "/v1/meetings/{id}", tag = "platforms", security(("identity" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = MeetingOut), (status = 401),
              (status = 403, description = "neither the owner nor invited"), (status = 404)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    me: Identity,
) -> AppResult<axum::Json<MeetingOut>> {
    Ok(axum::Json(load(&state, &id, &me).await?))
}

type MeetingRow = (String, String, i64, i64);

async fn load(state: &AppState, id: &str, me: &Identity) -> AppResult<MeetingOut> {
    let row: Option<MeetingRow> = sqlx::query_as(
        "SELECT owner, title, start_at, duration_minutes FROM meetings WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&state.db.pool)
    .await?;
    let (owner, title, start, duration) =
        row.ok_or_else(|| AppError::not_found(format!("no meeting '{id}'")))?;
    if owner != me.user {
        let invited: Option<(String,)> = sqlx::query_as(
            "SELECT user_id FROM meeting_invitees WHERE meeting_id = $1 AND user_id = $2",
        )
        .bind(id)
        .bind(&me.user)
        .fetch_optional(&state.db.pool)
        .await?;
        if invited.is_none() {
            return Err(AppError::forbidden(
                "this meeting is visible to its owner and the users invited to it",
            ));
        }
    }
    let links: Vec<(String, Option<String>, Option<String>, i64)> = sqlx::query_as(
        "SELECT platform, url, error, is_primary FROM meeting_links WHERE meeting_id = $1 \
         ORDER BY position",
    )
    .bind(id)
    .fetch_all(&state.db.pool)
    .await?;
    let end = start + duration * 60_000;
    let links = links
        .into_iter()
        .map(|(platform, url, error, primary)| {
            // Jitsi's stored link is the room; the token is the reader's own.
            let url = match (platform.as_str(), url) {
                ("jitsi", Some(room_url)) => {
                    jitsi_token(state, &room_url, end, me, me.user == owner)
                        .map(|jwt| format!("{room_url}?jwt={jwt}"))
                }
                (_, url) => url,
            };
            MeetingLink {
                platform,
                url,
                primary: primary != 0,
                error,
            }
        })
        .collect();
    Ok(MeetingOut {
        id: id.to_string(),
        owner,
        title,
        start: rfc3339(start),
        duration_minutes: duration,
        links,
    })
}

/// One platform's link (Jitsi: the room URL without its token), or why not.
async fn make_link(
    state: &AppState,
    platform: &str,
    title: &str,
    start: i64,
    end: i64,
    duration: i64,
) -> Result<String, String> {
    let result = match platform {
        "jitsi" => jitsi_room(state, title),
        "zoom" => zoom(state, title, start, duration).await,
        "teams" => teams(state, title, start, end).await,
        _ => Err(format!("{platform} is not a meeting platform")),
    };
    if let Err(e) = &result {
        tracing::warn!(platform, error = %e, "meeting link not made");
    }
    result
}

fn not_configured(platform: &str, keys: &str) -> String {
    format!("{platform} is not configured on this server: set {keys} in [platforms.{platform}]")
}

/// A room name from the title: lowercase letters, digits and dashes, plus a
/// random suffix so two meetings of one title never share a room.
pub fn room_name(title: &str) -> String {
    let mut slug = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 40 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    let suffix = hex::encode(rand::random::<[u8; 5]>());
    if slug.is_empty() {
        format!("meeting-{suffix}")
    } else {
        format!("{slug}-{suffix}")
    }
}

fn jitsi_room(state: &AppState, title: &str) -> Result<String, String> {
    let cfg = &state.config.platforms.jitsi;
    if cfg.base_url.is_empty() || cfg.app_id.is_empty() || cfg.app_secret.is_empty() {
        return Err(not_configured("jitsi", "base_url, app_id and app_secret"));
    }
    let base = cfg.base_url.trim_end_matches('/');
    match reqwest::Url::parse(base) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
        _ => return Err("jitsi: base_url is not an http(s) URL".into()),
    }
    Ok(format!("{base}/{}", room_name(title)))
}

/// The Jitsi JWT for `me` in the room of `room_url`, valid until an hour after the meeting.
fn jitsi_token(
    state: &AppState,
    room_url: &str,
    end: i64,
    me: &Identity,
    moderator: bool,
) -> Option<String> {
    let cfg = &state.config.platforms.jitsi;
    if cfg.app_secret.is_empty() {
        return None;
    }
    let url = reqwest::Url::parse(room_url).ok()?;
    let host = url.host_str()?.to_string();
    let room = url.path_segments()?.next_back()?.to_string();
    let now = now_ms() / 1000;
    let claims = json!({
        "iss": cfg.app_id,
        "aud": "jitsi",
        "sub": host,
        "room": room,
        "iat": now,
        "nbf": now - 60,
        "exp": end / 1000 + 3600,
        "context": {"user": {"id": me.user, "name": me.user, "moderator": moderator}},
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(cfg.app_secret.as_bytes()),
    )
    .ok()
}

#[derive(Deserialize)]
struct AccessToken {
    access_token: String,
}

#[derive(Deserialize)]
struct ZoomMeeting {
    join_url: String,
}

async fn zoom(state: &AppState, title: &str, start: i64, duration: i64) -> Result<String, String> {
    let cfg = &state.config.platforms.zoom;
    if cfg.account_id.is_empty() || cfg.client_id.is_empty() || cfg.client_secret.is_empty() {
        return Err(not_configured(
            "zoom",
            "account_id, client_id and client_secret",
        ));
    }
    let token: AccessToken = call(
        "zoom",
        "the Server-to-Server OAuth token",
        client()
            .post(&cfg.token_url)
            .query(&[
                ("grant_type", "account_credentials"),
                ("account_id", cfg.account_id.as_str()),
            ])
            .basic_auth(&cfg.client_id, Some(&cfg.client_secret))
            .body(""),
    )
    .await
    .map_err(|e| e.message)?;
    let meeting: ZoomMeeting = call(
        "zoom",
        "creating the meeting",
        client()
            .post(format!(
                "{}/v2/users/me/meetings",
                cfg.api_base_url.trim_end_matches('/')
            ))
            .bearer_auth(&token.access_token)
            .json(&json!({
                "topic": title,
                "type": 2,
                "start_time": rfc3339(start),
                "duration": duration,
                "timezone": "UTC",
            })),
    )
    .await
    .map_err(|e| e.message)?;
    Ok(meeting.join_url)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OnlineMeeting {
    join_web_url: String,
}

async fn teams(state: &AppState, title: &str, start: i64, end: i64) -> Result<String, String> {
    let cfg = &state.config.platforms.teams;
    if cfg.tenant_id.is_empty()
        || cfg.client_id.is_empty()
        || cfg.client_secret.is_empty()
        || cfg.organizer_user_id.is_empty()
    {
        return Err(not_configured(
            "teams",
            "tenant_id, client_id, client_secret and organizer_user_id",
        ));
    }
    let token: AccessToken = call(
        "teams",
        "the client-credentials token",
        client()
            .post(cfg.token_url.replace("{tenant}", &cfg.tenant_id))
            .form(&[
                ("client_id", cfg.client_id.as_str()),
                ("client_secret", cfg.client_secret.as_str()),
                ("scope", "https://graph.microsoft.com/.default"),
                ("grant_type", "client_credentials"),
            ]),
    )
    .await
    .map_err(|e| e.message)?;
    let meeting: OnlineMeeting = call(
        "teams",
        "creating the online meeting",
        client()
            .post(format!(
                "{}/v1.0/users/{}/onlineMeetings",
                cfg.api_base_url.trim_end_matches('/'),
                cfg.organizer_user_id
            ))
            .bearer_auth(&token.access_token)
            .json(&json!({
                "subject": title,
                "startDateTime": rfc3339(start),
                "endDateTime": rfc3339(end),
            })),
    )
    .await
    .map_err(|e| e.message)?;
    Ok(meeting.join_web_url)
}

#[cfg(test)]
mod tests {
    use super::room_name;

    #[test]
    fn room_names_are_url_safe_and_distinct() {
        let a = room_name("Yoga 1:1 — Ana & Bo!");
        assert!(a.starts_with("yoga-1-1-ana-bo-"), "{a}");
        assert!(
            a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{a}"
        );
        assert_ne!(a, room_name("Yoga 1:1 — Ana & Bo!"));
        assert!(room_name("!!!").starts_with("meeting-"));
    }
}
