//! The business APIs of API.md: token ledger, streams, paid enrollment, media
//! access tokens, calendar feeds, background jobs and the OpenAPI document.
//!
//! Submodules:
//! - [`ledger`]: balances, transactions, service-key credits.
//! - [`idempotency`]: `Idempotency-Key` handling stored with the effect.
//! - [`streams`]: stream CRUD, lifecycle, instructor stats, publish tokens, calendar.
//! - [`enrollment`]: paid enrollment, my enrollments, viewer tokens, refunds.
//! - [`access`]: the WHIP/WHEP hook (enrollment re-check, WHIP starts a stream).
//! - [`jobs`]: replay expiry, recording cleanup, catalog migration, key pruning.
//! - [`openapi`]: the OpenAPI document served at `/openapi.json`.

pub mod access;
pub mod enrollment;
pub mod idempotency;
pub mod jobs;
pub mod ledger;
pub mod openapi;
pub mod streams;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use sqlx::{Any, Transaction};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::auth::{Identity, Role, bearer, secrets_equal};
use crate::error::{AppError, AppResult};
use crate::server::AppState;
use crate::storage::{Backend, Db};

/// Milliseconds in a day.
pub const DAY_MS: i64 = 86_400_000;

/// Every business route (merged into [`crate::server::app`], so also under `/.proxy`).
pub fn routes() -> Router<AppState> {
    Router::new()
        .merge(ledger::routes())
        .merge(streams::routes())
        .merge(enrollment::routes())
        .merge(openapi::routes())
        .route_layer(axum::middleware::from_fn(crate::text::refuse_control_chars))
}

/// Wall-clock unix milliseconds.
pub fn now_ms() -> i64 {
    crate::whip::now_ms()
}

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

/// The platform user behind `Authorization: Bearer <identity JWT>`.
pub fn identity(state: &AppState, headers: &HeaderMap) -> AppResult<Identity> {
    let token = bearer(headers).ok_or_else(|| {
        AppError::unauthorized("missing identity token: send Authorization: Bearer <JWT>")
    })?;
    state.identity.verify(token)
}

/// An instructor (or admin) identity; a plain user gets 403.
pub fn instructor(state: &AppState, headers: &HeaderMap) -> AppResult<Identity> {
    let id = identity(state, headers)?;
    match id.role {
        Role::Instructor | Role::Admin => Ok(id),
        Role::User => Err(AppError::forbidden("this needs the instructor role")),
    }
}

/// A server-to-server call with the configured service key. A valid identity
/// token instead gets 403; anything else 401.
pub fn service(state: &AppState, headers: &HeaderMap) -> AppResult<()> {
    let token = bearer(headers).ok_or_else(|| {
        AppError::unauthorized("missing service key: send Authorization: Bearer <service key>")
    })?;
    let key = &state.config.service_key;
    if !key.is_empty() && secrets_equal(token, key) {
        return Ok(());
    }
    if state.identity.verify(token).is_ok() {
        return Err(AppError::forbidden("this route needs the service key"));
    }
    Err(AppError::unauthorized("the service key is not valid"))
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

/// The `[api]` section of the configuration (see config/default.toml).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ApiConfig {
    pub whip_starts_stream: bool,
    pub default_replay_days: i64,
    pub media_token_ttl_seconds: u64,
    pub catalog_migration_days: i64,
    pub catalog_webhook_url: String,
    pub jobs_enabled: bool,
    pub replay_expiry_interval_seconds: u64,
    pub catalog_interval_seconds: u64,
    pub prune_interval_seconds: u64,
    pub viewer_sample_interval_seconds: u64,
    pub idempotency_keep_hours: i64,
    pub catalog_backoff_base_seconds: u64,
    pub catalog_backoff_max_seconds: u64,
    pub catalog_lease_seconds: u64,
    pub catalog_timeout_seconds: u64,
}
