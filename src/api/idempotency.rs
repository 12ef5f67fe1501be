//! `Idempotency-Key` for POSTs that move tokens: the first response is stored with
//! the effect in one transaction, and a retry with the same key gets it back verbatim.
//!
//! Flow: the handler begins the write transaction ([`super::common::begin_write`]) and runs
//! its effect on it; [`finish`] answers. A success stores its answer under the key
//! in the same transaction (the key row is written last: a concurrent request with
//! the same key waits on it, then finds it taken, rolls its own effect back and
//! replays the stored answer) and commits. A business error (402, 409, 404…) rolls
//! the effect back and stores the error on its own, so a retry gets the same error
//! even if the balance has grown since. A server error stores nothing (the key stays
//! free for the retry).
//!
//! The key is claimed last, not first, so a request costs no placeholder row, no
//! savepoint and no second write of the row. PostgreSQL's enrollment goes further
//! and inserts the key in its one statement ([`answer_error`], [`replay`] and
//! [`key_taken`] serve it; docs/PERFORMANCE.md, "Enrollment").

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{Any, AnyConnection, Transaction};

use super::common::unique_violation;
use crate::clock::now_ms;
use crate::error::{AppError, AppResult};
use crate::storage::Db;

pub const HEADER: &str = "idempotency-key";
const MAX_KEY_LEN: usize = 255;

/// One keyed request: who asks (keys are scoped to the caller), the key, and a
/// fingerprint of the operation and its body.
#[derive(Debug, Clone)]
pub struct IdemKey {
    pub caller: String,
    pub key: String,
    pub fingerprint: String,
}

impl IdemKey {
    /// Reads the header; `operation` names the route and resource (e.g. `enroll:st_1`).
    pub fn from_headers(
        headers: &HeaderMap,
        caller: &str,
        operation: &str,
        body: &[u8],
    ) -> AppResult<Option<IdemKey>> {
        let Some(raw) = headers.get(HEADER) else {
            return Ok(None);
        };
        let key = raw
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN)
            .ok_or_else(|| {
                AppError::bad_request("Idempotency-Key must be 1-255 visible ASCII characters")
                    .with("field", "Idempotency-Key")
            })?;
        let mut hash = Sha256::new();
        hash.update(operation.as_bytes());
        hash.update([0u8]);
        hash.update(body);
        Ok(Some(IdemKey {
            caller: caller.to_string(),
            key: key.to_string(),
            fingerprint: hex::encode(hash.finalize()),
        }))
    }
}

/// Answers with the outcome of an effect run on `tx` (from [`super::common::begin_write`]),
/// honouring `key`: stores a success with the effect and commits; rolls a business
/// error back and stores it on its own; stores nothing for a server error.
pub async fn finish(
    db: &Db,
    mut tx: Transaction<'static, Any>,
    key: Option<&IdemKey>,
    outcome: AppResult<(StatusCode, Value)>,
) -> AppResult<Response> {
    let err = match outcome {
        Ok((status, value)) => {
            let body = value.to_string();
            if let Some(k) = key
                && !store(&mut tx, k, status, &body).await?
            {
                // Answered before: our effect is rolled back with the transaction.
                drop(tx);
                return replay(db, k).await;
            }
            tx.commit().await?;
            return Ok(json_response(status, body, false));
        }
        Err(err) => err,
    };
    // Rolled back before another connection is asked for: on SQLite the transaction
    // holds the write lock, which the store below and every waiting writer need.
    tx.rollback().await?;
    answer_error(db, key, err).await
}

/// Answers a business error (stored under the key on its own, or the answer stored
/// before if the key is taken); a server error passes through and stores nothing.
pub async fn answer_error(db: &Db, key: Option<&IdemKey>, err: AppError) -> AppResult<Response> {
    let Some(k) = key.filter(|_| !err.status.is_server_error()) else {
        return Err(err);
    };
    let status = err.status;
    let bytes = axum::body::to_bytes(err.into_response().into_body(), usize::MAX)
        .await
        .map_err(|_| AppError::internal())?;
    let body = String::from_utf8_lossy(&bytes).into_owned();
    // One connection for both: holding one while waiting for another could exhaust the pool.
    let mut conn = db.pool.acquire().await?;
    if store(&mut conn, k, status, &body).await? {
        Ok(json_response(status, body, false))
    } else {
        replay_on(&mut conn, k).await
    }
}

/// Stores the answer under the key; false when the key is taken (committed by
/// another request, which this insert waits for if it is still running).
async fn store(
    conn: &mut AnyConnection,
    k: &IdemKey,
    status: StatusCode,
    body: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (caller, idem_key, fingerprint, status, body, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (caller, idem_key) DO NOTHING",
    )
    .bind(&k.caller)
    .bind(&k.key)
    .bind(&k.fingerprint)
    .bind(status.as_u16() as i64)
    .bind(body)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// True when an insert failed because the key is taken (an effect that stores its
/// answer in the same statement, without `ON CONFLICT`, fails as a whole).
pub fn key_taken(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => {
            unique_violation(err)
                && (db.constraint() == Some("idempotency_keys_pkey")
                    || db.message().contains("idempotency_keys"))
        }
        _ => false,
    }
}

/// The stored answer for a key that is taken, or 422 when it was used for another request.
pub async fn replay(db: &Db, k: &IdemKey) -> AppResult<Response> {
    replay_on(&mut *db.pool.acquire().await?, k).await
}

async fn replay_on(conn: &mut AnyConnection, k: &IdemKey) -> AppResult<Response> {
    let (fingerprint, status, body): (String, i64, String) = sqlx::query_as(
        "SELECT fingerprint, status, body FROM idempotency_keys WHERE caller = $1 AND idem_key = $2",
    )
    .bind(&k.caller)
    .bind(&k.key)
    .fetch_one(&mut *conn)
    .await?;
    if fingerprint != k.fingerprint {
        return Err(AppError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request; use a new key",
        ));
    }
    // Status 0 is the placeholder of releases that claimed the key first.
    if status == 0 {
        return Err(AppError::conflict(
            "idempotency_in_progress",
            "a request with this Idempotency-Key is still being processed; retry shortly",
        ));
    }
    let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
    Ok(json_response(status, body, true))
}

/// A first (not replayed) answer whose body is already JSON text.
pub fn answer(status: StatusCode, body: String) -> Response {
    json_response(status, body, false)
}

fn json_response(status: StatusCode, body: String, replayed: bool) -> Response {
    let mut resp = (status, Body::from(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// Deletes keys older than `keep_ms` (at least 24 h is enforced by the caller).
pub async fn prune(db: &Db, now: i64, keep_ms: i64) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1 AND status <> 0")
            .bind(now - keep_ms)
            .execute(&db.pool)
            .await?
            .rows_affected(),
    )
}
