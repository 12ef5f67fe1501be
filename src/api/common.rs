//! What the API routes share: times as RFC 3339, a JSON body with the failing
//! field named, write transactions, unique-violation detection, watch links
//! (the callers come from `crate::extract`).
//! A leaf below every route module, so none of them imports another for these.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use sqlx::{Any, Transaction};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::storage::{Backend, Db};

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// Unix ms as RFC 3339 (UTC, `Z`).
pub fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

pub fn rfc3339_opt(ms: Option<i64>) -> Option<String> {
    ms.map(rfc3339)
}

/// Parses an RFC 3339 time into unix ms; `field` names it in the 400 answer.
pub fn parse_rfc3339(value: &str, field: &str) -> AppResult<i64> {
    OffsetDateTime::parse(value, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        .map_err(|_| {
            AppError::bad_request(format!(
                "{field} must be an RFC 3339 time such as 2030-01-31T18:00:00Z"
            ))
            .with("field", field)
        })
}

/// Begins a write transaction. On SQLite `BEGIN IMMEDIATE` takes the write lock up
/// front, so two writers never deadlock upgrading read locks; dropping the
/// transaction without commit rolls it back.
pub async fn begin_write(db: &Db) -> Result<Transaction<'static, Any>, sqlx::Error> {
    match db.backend {
        Backend::Sqlite => db.pool.begin_with("BEGIN IMMEDIATE").await,
        Backend::Postgres => db.pool.begin().await,
    }
}

/// A JSON body parsed with the failing field named in the 400 answer.
pub fn parse_json<T: DeserializeOwned>(headers: &HeaderMap, body: &Bytes) -> AppResult<T> {
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.is_empty() && !ct.to_ascii_lowercase().starts_with("application/json") {
        return Err(AppError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        ));
    }
    // Every string of the body is clean text (no NUL for PostgreSQL to refuse);
    // a body that is not JSON at all gets the syntax error below.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        crate::text::check_json(&value)?;
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let (field, message) = if inner.is_syntax() || inner.is_eof() {
            (
                "body".to_string(),
                format!("body is not valid JSON: {inner}"),
            )
        } else if path == "." || path.is_empty() {
            // Missing fields are reported at the parent; serde names them in the text.
            let text = inner.to_string();
            let field = text
                .split('`')
                .nth(1)
                .filter(|_| text.starts_with("missing field"))
                .unwrap_or("body")
                .to_string();
            (field, text)
        } else {
            (path.clone(), format!("{path}: {inner}"))
        };
        AppError::bad_request(message).with("field", field)
    })
}

/// The page a viewer opens to watch a stream.
pub fn watch_url(state: &AppState, stream: &str) -> String {
    format!("{}/watch/{}", state.public_url, stream)
}

/// Maps a unique-constraint violation to `conflict`, anything else to 500.
pub fn unique_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation)
                || db.code().as_deref() == Some("23505")
                || db.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}
