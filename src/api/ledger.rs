//! The token ledger: balances that never go negative and a transaction row for
//! every change, so a balance always equals the sum of its user's transactions.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::{IntoParams, ToSchema};

use super::common::{begin_write, parse_json, rfc3339};
use super::idempotency::{self, IdemKey};
use crate::clock::now_ms;
use crate::error::{AppError, AppResult};
use crate::extract::{Identity, ServiceCaller};
use crate::state::AppState;

/// Largest single credit, far from i64 overflow.
pub const MAX_CREDIT: i64 = 1_000_000_000_000;

pub fn routes() -> axum::Router<AppState> {
    Router::new()
        .route("/v1/me/balance", get(balance))
        .route("/v1/me/transactions", get(transactions))
        .route("/v1/admin/accounts/{user}/credits", post(credit))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Credit,
    Enrollment,
    Refund,
    Adjustment,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Credit => "credit",
            Kind::Enrollment => "enrollment",
            Kind::Refund => "refund",
            Kind::Adjustment => "adjustment",
        }
    }
}

/// One ledger row.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TransactionOut {
    pub id: i64,
    /// Signed: positive for credits and refunds, negative for enrollments.
    pub amount: i64,
    #[schema(example = "credit")]
    pub kind: String,
    pub reference: Option<String>,
    pub balance_after: i64,
    /// RFC 3339.
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BalanceOut {
    pub balance: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TransactionsOut {
    /// Newest first.
    pub transactions: Vec<TransactionOut>,
    /// Pass as `before` for the next (older) page; null on the last page.
    pub next_before: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditIn {
    /// Tokens to add, > 0.
    pub amount: i64,
    /// Why (purchase id, promotion); kept as the transaction's reference.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct TransactionsQuery {
    /// 1-200, default 50.
    pub limit: Option<i64>,
    /// Only transactions with an id below this (the previous page's `next_before`).
    pub before: Option<i64>,
}

/// Current balance (0 for a user without an account).
pub async fn balance_of(conn: &mut AnyConnection, user: &str) -> Result<i64, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as("SELECT balance FROM accounts WHERE user_id = $1")
        .bind(user)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|r| r.0).unwrap_or(0))
}

/// Adds `amount` (> 0) to a balance, creating the account, and writes the row.
/// Returns `(transaction id, balance after)`.
pub async fn add(
    conn: &mut AnyConnection,
    user: &str,
    amount: i64,
    kind: Kind,
    reference: Option<&str>,
    now: i64,
) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query(
        "INSERT INTO accounts (user_id, balance, created_at) VALUES ($1, 0, $2) \
         ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let (after,): (i64,) = sqlx::query_as(
        "UPDATE accounts SET balance = balance + $1 WHERE user_id = $2 RETURNING balance",
    )
    .bind(amount)
    .bind(user)
    .fetch_one(&mut *conn)
    .await?;
    let id = insert_row(conn, user, amount, kind, reference, after, now).await?;
    Ok((id, after))
}

/// Takes `price` (> 0) from a balance with one conditional statement; `None` when
/// the balance is short (nothing written). Returns `(transaction id, balance after)`.
pub async fn deduct(
    conn: &mut AnyConnection,
    user: &str,
    price: i64,
    kind: Kind,
    reference: Option<&str>,
    now: i64,
) -> Result<Option<(i64, i64)>, sqlx::Error> {
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE accounts SET balance = balance - $1 \
         WHERE user_id = $2 AND balance >= $1 RETURNING balance",
    )
    .bind(price)
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((after,)) = row else {
        return Ok(None);
    };
    let id = insert_row(conn, user, -price, kind, reference, after, now).await?;
    Ok(Some((id, after)))
}

async fn insert_row(
    conn: &mut AnyConnection,
    user: &str,
    amount: i64,
    kind: Kind,
    reference: Option<&str>,
    after: i64,
    now: i64,
) -> Result<i64, sqlx::Error> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO token_transactions (user_id, amount, kind, reference, balance_after, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(user)
    .bind(amount)
    .bind(kind.as_str())
    .bind(reference.map(str::to_string))
    .bind(after)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(id)
}

type TxRow = (i64, i64, String, Option<String>, i64, i64);

fn tx_out(r: TxRow) -> TransactionOut {
    TransactionOut {
        id: r.0,
        amount: r.1,
        kind: r.2,
        reference: r.3,
        balance_after: r.4,
        created_at: rfc3339(r.5),
    }
}

/// The caller's balance.
#[utoipa::path(get, path = "/v1/me/balance", tag = "ledger",
    security(("identity" = [])),
    responses((status = 200, body = BalanceOut), (status = 401, description = "no or bad identity token")))]
pub async fn balance(
    State(state): State<AppState>,
    me: Identity,
) -> AppResult<axum::Json<BalanceOut>> {
    let mut conn = state.db.pool.acquire().await?;
    Ok(axum::Json(BalanceOut {
        balance: balance_of(&mut conn, &me.user).await?,
    }))
}

/// The caller's transactions, newest first.
#[utoipa::path(get, path = "/v1/me/transactions", tag = "ledger",
    security(("identity" = [])), params(TransactionsQuery),
    responses((status = 200, body = TransactionsOut), (status = 400), (status = 401)))]
pub async fn transactions(
    State(state): State<AppState>,
    query: Result<Query<TransactionsQuery>, axum::extract::rejection::QueryRejection>,
    me: Identity,
) -> AppResult<axum::Json<TransactionsOut>> {
    let Query(q) = query
        .map_err(|e| AppError::bad_request(format!("query: {e}")).with("field", "limit/before"))?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(AppError::bad_request("limit must be 1-200").with("field", "limit"));
    }
    let rows: Vec<TxRow> = sqlx::query_as(
        "SELECT id, amount, kind, reference, balance_after, created_at FROM token_transactions \
         WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(&me.user)
    .bind(q.before.unwrap_or(i64::MAX))
    .bind(limit + 1)
    .fetch_all(&state.db.pool)
    .await?;
    let more = rows.len() as i64 > limit;
    let transactions: Vec<_> = rows.into_iter().take(limit as usize).map(tx_out).collect();
    let next_before = if more {
        transactions.last().map(|t| t.id)
    } else {
        None
    };
    Ok(axum::Json(TransactionsOut {
        transactions,
        next_before,
    }))
}

/// Credits a user's balance (after a purchase). Service key; `Idempotency-Key` honoured.
#[utoipa::path(post, path = "/v1/admin/accounts/{user}/credits", tag = "ledger",
    security(("service_key" = [])),
    params(("user" = String, Path, description = "platform user id"),
           ("Idempotency-Key" = Option<String>, Header, description = "≤255 chars; retries return the first answer")),
    request_body = CreditIn,
    responses((status = 201, body = TransactionOut), (status = 400), (status = 401), (status = 403),
              (status = 422, description = "idempotency_key_reused")))]
pub async fn credit(
    State(state): State<AppState>,
    Path(user): Path<String>,
    headers: HeaderMap,
    _: ServiceCaller,
    body: Bytes,
) -> AppResult<Response> {
    let input: CreditIn = parse_json(&headers, &body)?;
    if input.amount <= 0 || input.amount > MAX_CREDIT {
        return Err(
            AppError::bad_request(format!("amount must be 1..={MAX_CREDIT}"))
                .with("field", "amount"),
        );
    }
    if user.is_empty() || user.len() > 255 {
        return Err(AppError::bad_request("user must be 1-255 characters").with("field", "user"));
    }
    if input.reason.as_ref().is_some_and(|r| r.len() > 500) {
        return Err(
            AppError::bad_request("reason is at most 500 characters").with("field", "reason")
        );
    }
    let key = IdemKey::from_headers(&headers, "service", &format!("credit:{user}"), &body)?;
    let mut tx = begin_write(&state.db).await?;
    let outcome = async {
        let now = now_ms();
        let (id, after) = add(
            &mut tx,
            &user,
            input.amount,
            Kind::Credit,
            input.reason.as_deref(),
            now,
        )
        .await?;
        let out = TransactionOut {
            id,
            amount: input.amount,
            kind: Kind::Credit.as_str().into(),
            reference: input.reason.clone(),
            balance_after: after,
            created_at: rfc3339(now),
        };
        Ok((
            StatusCode::CREATED,
            serde_json::to_value(out).unwrap_or_default(),
        ))
    }
    .await;
    idempotency::finish(&state.db, tx, key.as_ref(), outcome).await
}
