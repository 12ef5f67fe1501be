//! Platform connections: where an instructor's classes can be restreamed.
//!
//! - `POST /v1/platform-connections` (instructor): a stream-key connection
//!   (`{platform, name?, ingest_url?, stream_key}`); the key is sealed at rest
//!   (src/secrets.rs) and only its hint (`…9f2c`) ever leaves again.
//! - `GET /v1/platform-connections`: the caller's own, newest first.
//! - `DELETE /v1/platform-connections/{id}`: the owner's; anyone else's is 404.
//!
//! OAuth connections are made by `oauth`'s callback. [`resolve_target`] turns a
//! connection into the RTMP(S) URL a restream pushes to (the only place a key is
//! opened), [`owned_connection`] checks one without opening anything.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Deserialize;
use utoipa::ToSchema;

use super::PLATFORMS;
use super::store::{
    COLUMNS, ConnectionOut, ConnectionRow, aad, hint_of, load, needs_reconnect, no_connection,
    push_url, sealed,
};
use crate::api::common::{parse_json, rfc3339};
use crate::clock::now_ms;
use crate::error::{AppError, AppResult};
use crate::extract::Instructor;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/platform-connections", get(list).post(create))
        .route("/v1/platform-connections/{id}", delete(remove))
}

/// Longest stream key accepted.
pub const MAX_KEY_LEN: usize = 512;
/// Longest connection name.
pub const MAX_NAME_LEN: usize = 100;
/// Longest ingest URL.
pub const MAX_URL_LEN: usize = 1024;

/// Where to push one stream: the RTMP(S) URL with the key (secret: Debug redacts it).
#[derive(Clone)]
pub struct ResolvedTarget {
    pub connection_id: String,
    pub platform: String,
    pub url: String,
}

impl std::fmt::Debug for ResolvedTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedTarget")
            .field("connection_id", &self.connection_id)
            .field("platform", &self.platform)
            .field("url", &crate::restream::ffmpeg::redact_url(&self.url))
            .finish()
    }
}

/// The documented ingest of a platform, used when a stream-key connection
/// gives none (docs/RESTREAM.md).
pub fn default_ingest(state: &AppState, platform: &str) -> Option<String> {
    match platform {
        "youtube" => Some("rtmp://a.rtmp.youtube.com/live2".into()),
        "facebook" => Some("rtmps://live-api-s.facebook.com:443/rtmp".into()),
        "twitch" => Some(state.config.platforms.twitch.ingest_url.clone()),
        "restream" => Some("rtmp://live.restream.io/live".into()),
        _ => None,
    }
}

/// An `rtmp://` or `rtmps://` URL with a host; `field` names it in the 400 answer.
pub fn check_rtmp_url(url: &str, field: &str) -> AppResult<()> {
    let bad = || {
        AppError::bad_request(format!(
            "{field} must be an rtmp:// or rtmps:// URL with a host, e.g. rtmp://live.example.com/app"
        ))
        .with("field", field)
    };
    if url.len() > MAX_URL_LEN || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| bad())?;
    let scheme_ok = matches!(parsed.scheme(), "rtmp" | "rtmps");
    if !scheme_ok || parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(())
}

/// A stream key: present, at most [`MAX_KEY_LEN`], no whitespace or control characters.
pub fn check_stream_key(key: Option<&str>) -> AppResult<&str> {
    let bad = |m: &str| AppError::bad_request(m.to_string()).with("field", "stream_key");
    let key = key.ok_or_else(|| bad("stream_key is required: the key the platform gives you"))?;
    if key.is_empty() {
        return Err(bad(
            "stream_key is required: the key the platform gives you",
        ));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(bad(&format!(
            "stream_key is longer than {MAX_KEY_LEN} bytes"
        )));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            "stream_key must not contain spaces or control characters (copy it without the line break)",
        ));
    }
    Ok(key)
}

/// 400 naming `platform` for anything not in [`PLATFORMS`].
pub fn check_platform(platform: &str) -> AppResult<()> {
    if PLATFORMS.contains(&platform) {
        return Ok(());
    }
    Err(
        AppError::bad_request(format!("platform must be one of {}", PLATFORMS.join(", ")))
            .with("field", "platform"),
    )
}

/// What `POST /v1/platform-connections` takes.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateConnection {
    /// youtube, facebook, twitch, restream, instagram or rtmp.
    pub platform: String,
    /// A name to tell connections apart (default: the platform).
    #[serde(default)]
    pub name: Option<String>,
    /// rtmp:// or rtmps:// with a host; optional for youtube, twitch, facebook and
    /// restream (their documented ingest is used).
    #[serde(default)]
    pub ingest_url: Option<String>,
    /// The platform's stream key (at most 512 bytes, no whitespace). Never returned.
    #[serde(default)]
    pub stream_key: Option<String>,
}

/// Stores a stream-key connection (the key sealed).
#[utoipa::path(post, path = "/v1/platform-connections", tag = "platforms", security(("identity" = [])),
    request_body = CreateConnection,
    responses((status = 201, body = ConnectionOut, description = "stored; the key is never returned, only its hint"),
              (status = 400, description = "bad_request naming the field (platform, ingest_url, stream_key, name)"),
              (status = 401), (status = 403, description = "not an instructor")))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Instructor(me): Instructor,
    body: Bytes,
) -> AppResult<Response> {
    let input: CreateConnection = parse_json(&headers, &body)?;
    check_platform(&input.platform)?;
    let name = match input.name.as_deref().map(str::trim) {
        None | Some("") => input.platform.clone(),
        Some(n) if n.chars().count() > MAX_NAME_LEN => {
            return Err(AppError::bad_request(format!(
                "name is longer than {MAX_NAME_LEN} characters"
            ))
            .with("field", "name"));
        }
        Some(n) => n.to_string(),
    };
    let ingest = match input.ingest_url.as_deref().filter(|u| !u.is_empty()) {
        Some(url) => {
            check_rtmp_url(url, "ingest_url")?;
            url.to_string()
        }
        None => default_ingest(&state, &input.platform).ok_or_else(|| {
            AppError::bad_request(format!(
                "ingest_url is required for {} (an rtmp:// or rtmps:// URL)",
                input.platform
            ))
            .with("field", "ingest_url")
        })?,
    };
    let key = check_stream_key(input.stream_key.as_deref())?;
    let id = format!("pc_{}", uuid::Uuid::new_v4().simple());
    let sealed = state.keyring.seal(key.as_bytes(), &aad(&id, "stream_key"));
    let hint = hint_of(key);
    let now = now_ms();
    sqlx::query(
        "INSERT INTO platform_connections (id, owner, platform, name, kind, ingest_url, \
         stream_key_sealed, stream_key_key_id, stream_key_hint, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 'stream_key', $5, $6, $7, $8, 'ok', $9, $9)",
    )
    .bind(&id)
    .bind(&me.user)
    .bind(&input.platform)
    .bind(&name)
    .bind(&ingest)
    .bind(&sealed.blob)
    .bind(&sealed.key_id)
    .bind(&hint)
    .bind(now)
    .execute(&state.db.pool)
    .await?;
    tracing::info!(connection = %id, owner = %me.user, platform = %input.platform, %hint, "platform connection stored");
    let out = ConnectionOut {
        id,
        platform: input.platform,
        name,
        kind: "stream_key".into(),
        ingest_url: Some(ingest),
        stream_key_hint: Some(hint),
        status: "ok".into(),
        created_at: rfc3339(now),
    };
    Ok((StatusCode::CREATED, axum::Json(out)).into_response())
}

/// The caller's connections, newest first.
#[utoipa::path(get, path = "/v1/platform-connections", tag = "platforms", security(("identity" = [])),
    responses((status = 200, body = [ConnectionOut]), (status = 401), (status = 403)))]
pub async fn list(
    State(state): State<AppState>,
    Instructor(me): Instructor,
) -> AppResult<axum::Json<Vec<ConnectionOut>>> {
    let rows: Vec<ConnectionRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM platform_connections WHERE owner = $1 ORDER BY created_at DESC, id"
    ))
    .bind(&me.user)
    .fetch_all(&state.db.pool)
    .await?;
    Ok(axum::Json(rows.iter().map(ConnectionRow::out).collect()))
}

/// Deletes the caller's connection (another's is 404: its existence is not told).
#[utoipa::path(delete, path = "/v1/platform-connections/{id}", tag = "platforms", security(("identity" = [])),
    params(("id" = String, Path)),
    responses((status = 204, description = "deleted with its sealed key and tokens"),
              (status = 401), (status = 403), (status = 404, description = "no such connection of the caller")))]
pub async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Instructor(me): Instructor,
) -> AppResult<StatusCode> {
    let done = sqlx::query("DELETE FROM platform_connections WHERE id = $1 AND owner = $2")
        .bind(&id)
        .bind(&me.user)
        .execute(&state.db.pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(no_connection(&id));
    }
    super::oauth::forget(&id);
    tracing::info!(connection = %id, owner = %me.user, "platform connection deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// (platform, name) of `owner`'s connection, or 404; no secrets decrypted. For validating PUT destinations.
pub async fn owned_connection(
    state: &AppState,
    owner: &str,
    connection_id: &str,
) -> AppResult<ConnectionOut> {
    Ok(load(state, owner, connection_id).await?.out())
}

/// The connection `connection_id` of `owner`, resolved into a push URL for a class titled `title`
/// (stream-key connections: ingest_url + key; OAuth connections: token refreshed if needed, then
/// YouTube liveBroadcast+liveStream / Twitch stream key / Facebook live_video).
/// Errors: 404 not_found (no such connection of this owner), 409 needs_reconnect, 502 platform_error (message without secrets).
pub async fn resolve_target(
    state: &AppState,
    owner: &str,
    connection_id: &str,
    title: &str,
) -> AppResult<ResolvedTarget> {
    let row = load(state, owner, connection_id).await?;
    if row.status == "needs_reconnect" {
        return Err(needs_reconnect(&row));
    }
    let url = match row.kind.as_str() {
        "stream_key" => {
            let ingest = row.ingest_url.as_deref().ok_or_else(AppError::internal)?;
            let sealed_key = sealed(&row.stream_key_sealed, &row.stream_key_key_id)
                .ok_or_else(AppError::internal)?;
            let key = state
                .keyring
                .open_string(&sealed_key, &aad(&row.id, "stream_key"))
                .map_err(|err| {
                    tracing::error!(connection = %row.id, error = %err, "stream key does not open");
                    AppError::internal()
                })?;
            push_url(ingest, &key)
        }
        _ => {
            let token = super::oauth::access_token(state, &row).await?;
            super::providers::resolve(state, &row, &token, title).await?
        }
    };
    Ok(ResolvedTarget {
        connection_id: row.id,
        platform: row.platform,
        url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_and_urls() {
        assert_eq!(hint_of("live_abcdef_9f2c"), "…9f2c");
        assert_eq!(hint_of("abcdefgh"), "…gh");
        assert_eq!(push_url("rtmp://h/app/", "k"), "rtmp://h/app/k");
        let t = ResolvedTarget {
            connection_id: "c".into(),
            platform: "rtmp".into(),
            url: "rtmps://live.example.com:443/app/SECRETKEY".into(),
        };
        let d = format!("{t:?}");
        assert!(
            !d.contains("SECRETKEY") && d.contains("live.example.com"),
            "{d}"
        );
    }

    #[test]
    fn rtmp_urls_only() {
        assert!(check_rtmp_url("rtmp://live.example.com/app", "ingest_url").is_ok());
        assert!(check_rtmp_url("rtmps://live.example.com:443/app", "ingest_url").is_ok());
        for bad in [
            "http://x/app",
            "rtmp://",
            "rtmp:///app",
            "not a url",
            "rtmp://h/a b",
        ] {
            assert!(check_rtmp_url(bad, "ingest_url").is_err(), "{bad}");
        }
        assert!(check_stream_key(Some("ab cd")).is_err());
        assert!(check_stream_key(Some(&"k".repeat(513))).is_err());
        assert!(check_stream_key(None).is_err());
        assert!(check_platform("myspace").is_err());
    }
}
