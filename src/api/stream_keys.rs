//! Stream keys: one long-lived, revocable WHIP credential per stream for OBS and
//! other encoders (publish tokens expire within 24 h; an encoder's bearer token
//! should not need re-pasting daily).
//!
//! - `POST /v1/streams/{id}/stream-key` (owner or admin): a new random key, shown
//!   once (201); it replaces the previous one, which stops working at once.
//! - `GET` the same path: whether a key exists, its hint and when it was created
//!   and last used; never the key.
//! - `DELETE`: revokes it (204).
//!
//! Keys are `tsk_` + 43 base64url characters (256 random bits). Only their SHA-256
//! is stored, with a hint of the last 4 characters: the server never needs a key
//! back, only to recognise it, so a database leak yields nothing usable
//! (docs/SECURITY.md, "Stream keys"). `whip.rs` hands a bearer token with the
//! prefix to [`publish_claims`], which turns a valid key for its own stream into a
//! publish grant of the stream's owner.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::common::{rfc3339, rfc3339_opt};
use super::streams::load_owned;
use crate::auth::{Grants, MediaClaims};
use crate::clock::{now_ms, now_secs};
use crate::error::{AppError, AppResult};
use crate::extract::Instructor;
use crate::state::AppState;

/// What every stream key starts with: recognisable in a config file or a leak
/// scanner, and how WHIP tells a key from a media token (a JWT starts `eyJ`).
pub const PREFIX: &str = "tsk_";

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/v1/streams/{id}/stream-key",
        post(create).get(show).delete(revoke),
    )
}

/// The answer to a new key: the key itself, this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamKeyCreated {
    /// The key; shown only in this answer. Use it as the WHIP bearer token.
    pub stream_key: String,
    /// Where an encoder sends its WHIP offer (OBS: Server).
    pub whip_url: String,
    /// `tsk_…` and the key's last 4 characters, to tell keys apart later.
    pub hint: String,
    pub created_at: String,
}

/// What is known about a stream's key, never the key.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamKeyInfo {
    pub exists: bool,
    pub hint: Option<String>,
    pub created_at: Option<String>,
    pub last_used_at: Option<String>,
}

/// SHA-256 of a key, hex: what is stored and looked up.
fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn hint_of(key: &str) -> String {
    let tail = &key[key.len().saturating_sub(4)..];
    format!("{PREFIX}…{tail}")
}

/// A new key: the prefix and 32 random bytes (256 bits) in base64url.
fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Creates or rotates the stream's key.
#[utoipa::path(post, path = "/v1/streams/{id}/stream-key", tag = "media", security(("identity" = [])),
    params(("id" = String, Path)),
    responses((status = 201, body = StreamKeyCreated, description = "the key, shown once; the previous key stops working"),
              (status = 401), (status = 403, description = "not the stream's owner (or an admin)"),
              (status = 404), (status = 409, description = "stream_closed: ended or cancelled")))]
pub async fn create(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Instructor(me): Instructor,
) -> AppResult<Response> {
    let mut conn = state.db.pool.acquire().await?;
    let row = load_owned(&mut conn, &id, &me).await?;
    if !row.status.is_open() {
        return Err(AppError::conflict(
            "stream_closed",
            format!("the stream is {}; it cannot be published again", row.status),
        )
        .with("status", row.status.as_str()));
    }
    let key = generate();
    let hint = hint_of(&key);
    let now = now_ms();
    // One row per stream: the upsert is the rotation (the old hash is gone at once).
    sqlx::query(
        "INSERT INTO stream_keys (stream_id, key_hash, hint, created_by, created_at, last_used_at) \
         VALUES ($1, $2, $3, $4, $5, NULL) \
         ON CONFLICT (stream_id) DO UPDATE SET key_hash = excluded.key_hash, hint = excluded.hint, \
         created_by = excluded.created_by, created_at = excluded.created_at, last_used_at = NULL",
    )
    .bind(&id)
    .bind(hash(&key))
    .bind(&hint)
    .bind(&me.user)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    tracing::info!(stream = %id, by = %me.user, %hint, "stream key created");
    let body = StreamKeyCreated {
        stream_key: key,
        whip_url: format!("{}/v1/whip/{}", state.public_url, id),
        hint,
        created_at: rfc3339(now),
    };
    let mut resp = (StatusCode::CREATED, axum::Json(body)).into_response();
    // A secret in the body: no cache anywhere keeps it.
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Whether the stream has a key, and its hint; never the key.
#[utoipa::path(get, path = "/v1/streams/{id}/stream-key", tag = "media", security(("identity" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = StreamKeyInfo), (status = 401), (status = 403), (status = 404)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Instructor(me): Instructor,
) -> AppResult<axum::Json<StreamKeyInfo>> {
    let mut conn = state.db.pool.acquire().await?;
    load_owned(&mut conn, &id, &me).await?;
    let row: Option<(String, i64, Option<i64>)> = sqlx::query_as(
        "SELECT hint, created_at, last_used_at FROM stream_keys WHERE stream_id = $1",
    )
    .bind(&id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(axum::Json(match row {
        Some((hint, created, used)) => StreamKeyInfo {
            exists: true,
            hint: Some(hint),
            created_at: Some(rfc3339(created)),
            last_used_at: rfc3339_opt(used),
        },
        None => StreamKeyInfo {
            exists: false,
            hint: None,
            created_at: None,
            last_used_at: None,
        },
    }))
}

/// Revokes the stream's key (204 also when it had none: the outcome is the same).
#[utoipa::path(delete, path = "/v1/streams/{id}/stream-key", tag = "media", security(("identity" = [])),
    params(("id" = String, Path)),
    responses((status = 204, description = "no key any more"), (status = 401), (status = 403), (status = 404)))]
pub async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Instructor(me): Instructor,
) -> AppResult<StatusCode> {
    let mut conn = state.db.pool.acquire().await?;
    load_owned(&mut conn, &id, &me).await?;
    let done = sqlx::query("DELETE FROM stream_keys WHERE stream_id = $1")
        .bind(&id)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() > 0 {
        tracing::info!(stream = %id, by = %me.user, "stream key revoked");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Is this bearer token a stream key (rather than a media token)?
pub fn is_stream_key(token: &str) -> bool {
    token.starts_with(PREFIX)
}

/// A publish grant for `stream`'s owner from its stream key: 401 for a key that
/// is not (or no longer) valid, 403 for another stream's key. The key is never
/// named in the answer or a log.
pub async fn publish_claims(state: &AppState, stream: &str, key: &str) -> AppResult<MediaClaims> {
    let found: Option<(String, String)> = sqlx::query_as(
        "SELECT k.stream_id, s.instructor_id FROM stream_keys k \
         JOIN streams s ON s.id = k.stream_id WHERE k.key_hash = $1",
    )
    .bind(hash(key))
    .fetch_optional(&state.db.pool)
    .await?;
    let Some((key_stream, owner)) = found else {
        return Err(AppError::unauthorized(
            "the stream key is not valid: it was rotated, revoked or never issued; \
             the stream's owner can make a new one (POST /v1/streams/{id}/stream-key)",
        ));
    };
    if key_stream != stream {
        return Err(AppError::forbidden(format!(
            "this stream key belongs to another stream, not '{stream}'"
        )));
    }
    // Best effort: a failed write must not refuse the encoder.
    if let Err(err) = sqlx::query("UPDATE stream_keys SET last_used_at = $1 WHERE stream_id = $2")
        .bind(now_ms())
        .bind(stream)
        .execute(&state.db.pool)
        .await
    {
        tracing::warn!(error = %err, stream, "recording a stream key's use");
    }
    let now = now_secs();
    Ok(MediaClaims {
        sub: owner,
        stream: Some(stream.to_string()),
        room: None,
        grants: Grants {
            publish: true,
            ..Grants::default()
        },
        name: None,
        // A platform publisher: held to the per-token and per-user session limits.
        role: Some("instructor".into()),
        aud: "tandem-media".into(),
        iat: now,
        exp: now + 60,
        // One "token" per stream key: the per-token session limit counts its sessions.
        jti: format!("stream-key:{stream}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_hinted() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 43, "{a}");
        assert!(hint_of(&a).ends_with(&a[a.len() - 4..]));
        assert_eq!(hash(&a).len(), 64);
        assert!(!hash(&a).contains(&a[PREFIX.len()..]));
    }
}
