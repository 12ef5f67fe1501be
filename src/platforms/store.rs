//! The rows of `platform_connections` and what every part of `platforms` shares
//! about them: the row and its API view, the columns, how a sealed field is
//! named (associated data) and read back, the key hint, the push URL, the
//! owner's lookup and the `needs_reconnect` answer. The leaf of `platforms`:
//! `providers`, `oauth` and `connections` import it, it imports none of them.

use serde::Serialize;
use utoipa::ToSchema;

use crate::api::common::rfc3339;
use crate::error::{AppError, AppResult};
use crate::secrets::Sealed;
use crate::state::AppState;

/// A connection as the API shows it: never a key or a token.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConnectionOut {
    pub id: String,
    /// youtube, facebook, twitch, restream, instagram or rtmp.
    pub platform: String,
    pub name: String,
    /// `stream_key` or `oauth`.
    pub kind: String,
    /// Where the stream is pushed (stream-key connections); null for OAuth ones,
    /// whose URL the platform's API hands out per class.
    pub ingest_url: Option<String>,
    /// `…` and the key's last characters (stream-key connections).
    pub stream_key_hint: Option<String>,
    /// `ok`, or `needs_reconnect` when the platform revoked the grant.
    pub status: String,
    pub created_at: String,
}

/// A row of `platform_connections`. Debug leaves the sealed fields out.
#[derive(Clone, sqlx::FromRow)]
pub struct ConnectionRow {
    pub id: String,
    pub owner: String,
    pub platform: String,
    pub name: String,
    pub kind: String,
    pub ingest_url: Option<String>,
    pub stream_key_sealed: Option<String>,
    pub stream_key_key_id: Option<String>,
    pub stream_key_hint: Option<String>,
    pub access_token_sealed: Option<String>,
    pub access_token_key_id: Option<String>,
    pub refresh_token_sealed: Option<String>,
    pub refresh_token_key_id: Option<String>,
    pub token_expires_at: Option<i64>,
    pub provider_account_id: Option<String>,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl std::fmt::Debug for ConnectionRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionRow")
            .field("id", &self.id)
            .field("owner", &self.owner)
            .field("platform", &self.platform)
            .field("kind", &self.kind)
            .field("status", &self.status)
            .field("token_expires_at", &self.token_expires_at)
            .finish_non_exhaustive()
    }
}

/// The columns of [`ConnectionRow`], for `SELECT`.
pub const COLUMNS: &str = "id, owner, platform, name, kind, ingest_url, stream_key_sealed, \
     stream_key_key_id, stream_key_hint, access_token_sealed, access_token_key_id, \
     refresh_token_sealed, refresh_token_key_id, token_expires_at, provider_account_id, \
     status, created_at, updated_at";

impl ConnectionRow {
    pub fn out(&self) -> ConnectionOut {
        ConnectionOut {
            id: self.id.clone(),
            platform: self.platform.clone(),
            name: self.name.clone(),
            kind: self.kind.clone(),
            ingest_url: self.ingest_url.clone(),
            stream_key_hint: self.stream_key_hint.clone(),
            status: self.status.clone(),
            created_at: rfc3339(self.created_at),
        }
    }
}

/// The associated data of a sealed field: the table, the row and the field.
pub fn aad(id: &str, field: &str) -> String {
    format!("platform_connections:{id}:{field}")
}

/// A sealed pair of columns as [`Sealed`], when both are set.
pub fn sealed(blob: &Option<String>, key_id: &Option<String>) -> Option<Sealed> {
    Some(Sealed {
        key_id: key_id.clone()?,
        blob: blob.clone()?,
    })
}

/// `…` and the last 4 characters of a key (fewer of a short key, so the hint
/// never gives most of it away).
pub fn hint_of(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    let n = if chars.len() >= 12 {
        4
    } else {
        chars.len() / 4
    };
    let tail: String = chars[chars.len() - n..].iter().collect();
    format!("…{tail}")
}

/// The push URL: the ingest URL and the key as its last path segment.
pub fn push_url(ingest: &str, key: &str) -> String {
    format!("{}/{key}", ingest.trim_end_matches('/'))
}

pub fn no_connection(id: &str) -> AppError {
    AppError::not_found(format!("no platform connection '{id}' of yours"))
        .with("field", "connection_id")
}

/// `owner`'s connection `id`, or 404.
pub async fn load(state: &AppState, owner: &str, id: &str) -> AppResult<ConnectionRow> {
    let row: Option<ConnectionRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM platform_connections WHERE id = $1 AND owner = $2"
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(&state.db.pool)
    .await?;
    row.ok_or_else(|| no_connection(id))
}

/// 409 `needs_reconnect`: the platform revoked the grant.
pub fn needs_reconnect(row: &ConnectionRow) -> AppError {
    AppError::conflict(
        "needs_reconnect",
        format!(
            "the {} connection '{}' needs to be connected again: the platform no longer \
             accepts its grant (GET /v1/platform-connections/oauth/{}/start)",
            row.platform, row.name, row.platform
        ),
    )
    .with("connection_id", row.id.clone())
}
