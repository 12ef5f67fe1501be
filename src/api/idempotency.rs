//! `Idempotency-Key` for POSTs that move tokens: the first response is stored with
//! the effect in one transaction, and a retry with the same key gets it back verbatim.
//!
//! Flow: [`start`] begins the write transaction, claims the key (a placeholder row;
//! on PostgreSQL a concurrent claim of the same key waits on it) and sets a savepoint;
//! the handler runs its effect on the transaction; [`finish`] rolls the effect back to
//! the savepoint on a business error (402, 409, …), stores the answer and commits.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{Any, Transaction};

use super::{begin_write, now_ms};
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

pub enum Start {
    /// Run the effect on this transaction, then call [`finish`].
    Fresh(Transaction<'static, Any>),
    /// The stored answer of an earlier request with this key.
    Replay(Response),
}

/// Begins the transaction and claims the key (if any).
pub async fn start(db: &Db, key: Option<&IdemKey>) -> AppResult<Start> {
    let mut tx = begin_write(db).await?;
    if let Some(k) = key {
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (caller, idem_key, fingerprint, status, body, created_at) \
             VALUES ($1, $2, $3, 0, '', $4) ON CONFLICT (caller, idem_key) DO NOTHING",
        )
        .bind(&k.caller)
        .bind(&k.key)
        .bind(&k.fingerprint)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            let (fingerprint, status, body): (String, i64, String) = sqlx::query_as(
                "SELECT fingerprint, status, body FROM idempotency_keys WHERE caller = $1 AND idem_key = $2",
            )
            .bind(&k.caller)
            .bind(&k.key)
            .fetch_one(&mut *tx)
            .await?;
            if fingerprint != k.fingerprint {
                return Err(AppError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request; use a new key",
                ));
            }
            if status == 0 {
                return Err(AppError::conflict(
                    "idempotency_in_progress",
                    "a request with this Idempotency-Key is still being processed; retry shortly",
                ));
            }
            let status = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
            return Ok(Start::Replay(json_response(status, body, true)));
        }
    }
    sqlx::query("SAVEPOINT effect").execute(&mut *tx).await?;
    Ok(Start::Fresh(tx))
}

/// Stores the answer with the effect and commits. A server error rolls everything
/// back (nothing stored: the client may retry); a business error keeps only the
/// stored answer, so a retry gets the same error.
pub async fn finish(
    mut tx: Transaction<'static, Any>,
    key: Option<&IdemKey>,
    outcome: AppResult<(StatusCode, Value)>,
) -> AppResult<Response> {
    let (status, body) = match outcome {
        Ok((status, value)) => (status, value.to_string()),
        Err(err) if err.status.is_server_error() => return Err(err),
        Err(err) => {
            sqlx::query("ROLLBACK TO SAVEPOINT effect")
                .execute(&mut *tx)
                .await?;
            let status = err.status;
            let resp = err.into_response();
            let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                .await
                .map_err(|_| AppError::internal())?;
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    if let Some(k) = key {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $1, body = $2 WHERE caller = $3 AND idem_key = $4",
        )
        .bind(status.as_u16() as i64)
        .bind(&body)
        .bind(&k.caller)
        .bind(&k.key)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(json_response(status, body, false))
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
