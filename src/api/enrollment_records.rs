//! The enrollment records below the routes that use them: the row, the lookup,
//! and refunds with their effects (money back as a `refund` ledger row, the user
//! out of the stream's room). A stream's cancellation (`streams`) and the admin
//! refund (`enrollment`) both refund, so this sits under both.

use sqlx::AnyConnection;

use super::ledger::{self, Kind};
use crate::state::AppState;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EnrollmentRow {
    pub id: String,
    pub user_id: String,
    pub stream_id: String,
    pub price_paid: i64,
    pub status: String,
    pub transaction_id: Option<i64>,
    pub created_at: i64,
    pub refunded_at: Option<i64>,
}

pub const COLUMNS: &str =
    "id, user_id, stream_id, price_paid, status, transaction_id, created_at, refunded_at";

/// A user's enrollment in a stream: the active one, else the latest.
pub async fn enrollment_of(
    conn: &mut AnyConnection,
    user: &str,
    stream_id: &str,
) -> Result<Option<EnrollmentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM enrollments WHERE user_id = $1 AND stream_id = $2 \
         ORDER BY status = 'active' DESC, created_at DESC LIMIT 1"
    ))
    .bind(user)
    .bind(stream_id)
    .fetch_optional(&mut *conn)
    .await
}

/// Refunds one active enrollment (a `refund` transaction when it was paid).
/// Returns false when it was not active.
pub async fn refund_one(
    conn: &mut AnyConnection,
    e: &EnrollmentRow,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE enrollments SET status = 'refunded', refunded_at = $1 WHERE id = $2 AND status = 'active'",
    )
    .bind(now)
    .bind(&e.id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if changed == 0 {
        return Ok(false);
    }
    if e.price_paid > 0 {
        let reference = format!("stream:{}", e.stream_id);
        ledger::add(
            conn,
            &e.user_id,
            e.price_paid,
            Kind::Refund,
            Some(&reference),
            now,
        )
        .await?;
    }
    Ok(true)
}

/// Refunds every active paid enrollment of a stream (cancellation); returns the
/// users refunded.
pub async fn refund_all(
    conn: &mut AnyConnection,
    stream_id: &str,
    now: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<EnrollmentRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM enrollments WHERE stream_id = $1 AND status = 'active' AND price_paid > 0"
    ))
    .bind(stream_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut users = Vec::with_capacity(rows.len());
    for e in &rows {
        if refund_one(conn, e, now).await? {
            users.push(e.user_id.clone());
        }
    }
    Ok(users)
}

/// What the rooms are told when an enrollment is refunded: its user's connections to
/// the stream's room are closed (`error not_enrolled`, close 4004).
pub async fn evict_from_room(state: &AppState, stream: &str, user: &str) {
    state
        .rooms
        .evict(
            stream,
            user,
            "not_enrolled",
            "your enrollment in this stream was refunded; you are no longer in its room",
        )
        .await;
}
