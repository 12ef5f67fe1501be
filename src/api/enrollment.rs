//! Paid enrollment: the deduction, the enrollment row and the ledger row in one
//! transaction; my enrollments with access flags; viewer tokens; refunds.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::Value;
use sqlx::AnyConnection;
use std::sync::LazyLock;
use utoipa::ToSchema;

use super::common::{begin_write, rfc3339, rfc3339_opt, unique_violation, watch_url};
use super::enrollment_records::{
    COLUMNS, EnrollmentRow, enrollment_of, evict_from_room, refund_one,
};
use super::idempotency::{self, IdemKey};
use super::ledger::{self, Kind};
use super::streams::{self, StreamRow, StreamStatus};
use crate::auth::{Grants, TokenRequest};
use crate::clock::now_ms;
use crate::error::{AppError, AppResult};
use crate::extract::{Identity, ServiceCaller};
use crate::state::AppState;
use crate::storage::{Backend, Db};

pub fn routes() -> axum::Router<AppState> {
    Router::new()
        .route("/v1/streams/{id}/enrollments", post(enroll))
        .route("/v1/me/enrollments", get(mine))
        .route("/v1/streams/{id}/viewer-token", post(viewer_token))
        .route("/v1/admin/enrollments/{id}/refund", post(admin_refund))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnrollmentOut {
    pub id: String,
    pub stream_id: String,
    pub user: String,
    pub price_paid: i64,
    /// `active` or `refunded`.
    pub status: String,
    pub transaction_id: Option<i64>,
    pub created_at: String,
    pub refunded_at: Option<String>,
}

fn to_out(e: &EnrollmentRow) -> EnrollmentOut {
    EnrollmentOut {
        id: e.id.clone(),
        stream_id: e.stream_id.clone(),
        user: e.user_id.clone(),
        price_paid: e.price_paid,
        status: e.status.clone(),
        transaction_id: e.transaction_id,
        created_at: rfc3339(e.created_at),
        refunded_at: rfc3339_opt(e.refunded_at),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EnrolledOut {
    pub enrollment: EnrollmentOut,
    /// The balance after the deduction.
    pub balance: i64,
    /// The ledger row of the deduction; null for a free stream.
    pub transaction_id: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StreamBrief {
    pub id: String,
    pub title: String,
    pub status: StreamStatus,
    pub scheduled_start: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MyEnrollment {
    #[serde(flatten)]
    pub enrollment: EnrollmentOut,
    pub stream: StreamBrief,
    /// Active enrollment and the stream is scheduled or live.
    pub can_watch_live: bool,
    /// Active enrollment, the stream ended and its replay window is open.
    pub can_watch_replay: bool,
    pub replay_access_expires_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MyEnrollments {
    pub enrollments: Vec<MyEnrollment>,
}

/// Enrolls the caller; paid streams deduct the price in the same transaction.
/// `Idempotency-Key` honoured (a retry after a 402 gets the same 402).
#[utoipa::path(post, path = "/v1/streams/{id}/enrollments", tag = "enrollment", security(("identity" = [])),
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = EnrolledOut), (status = 401),
              (status = 402, description = "insufficient_tokens, with balance and price"),
              (status = 404),
              (status = 409, description = "already_enrolled or stream_closed"),
              (status = 422, description = "idempotency_key_reused")))]
pub async fn enroll(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    me: Identity,
    body: Bytes,
) -> AppResult<Response> {
    let key = IdemKey::from_headers(
        &headers,
        &format!("user:{}", me.user),
        &format!("enroll:{id}"),
        &body,
    )?;
    let resp = match state.db.backend {
        Backend::Postgres => enroll_pg(&state.db, key.as_ref(), &me.user, &id).await?,
        Backend::Sqlite => {
            let mut tx = begin_write(&state.db).await?;
            let outcome = enroll_in(&mut tx, &me.user, &id, now_ms()).await;
            idempotency::finish(&state.db, tx, key.as_ref(), outcome).await?
        }
    };
    // Committed: the course server's bot adds the user (a replayed answer is
    // looked at again, which changes nothing).
    if resp.status() == StatusCode::CREATED {
        state.discord.member_changed(&id, &me.user);
    }
    Ok(resp)
}

/// The enrollment on SQLite, step by step: `BEGIN IMMEDIATE` serialises writers, so
/// nothing changes between the checks and the writes.
async fn enroll_in(
    conn: &mut AnyConnection,
    user: &str,
    stream_id: &str,
    now: i64,
) -> AppResult<(StatusCode, serde_json::Value)> {
    let stream: StreamRow = sqlx::query_as(&format!(
        "SELECT {} FROM streams WHERE id = $1",
        streams::COLUMNS
    ))
    .bind(stream_id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| AppError::not_found(format!("no stream '{stream_id}'")))?;
    if !stream.open_for_enrollment(now) {
        return Err(stream_closed(stream.status));
    }
    // A refunded enrollment does not count: the user may enroll (and pay) again.
    let existing: Option<(String,)> = sqlx::query_as(
        "SELECT status FROM enrollments WHERE user_id = $1 AND stream_id = $2 AND status = 'active'",
    )
    .bind(user)
    .bind(stream_id)
    .fetch_optional(&mut *conn)
    .await?;
    if existing.is_some() {
        return Err(already_enrolled());
    }
    let enrollment_id = format!("en_{}", uuid::Uuid::new_v4().simple());
    let (transaction_id, balance) = if stream.price_tokens > 0 {
        let reference = format!("stream:{stream_id}");
        match ledger::deduct(
            conn,
            user,
            stream.price_tokens,
            Kind::Enrollment,
            Some(&reference),
            now,
        )
        .await?
        {
            Some((tx_id, after)) => (Some(tx_id), after),
            None => {
                let balance = ledger::balance_of(conn, user).await?;
                return Err(insufficient(balance, stream.price_tokens));
            }
        }
    } else {
        (None, ledger::balance_of(conn, user).await?)
    };
    let inserted = sqlx::query(
        "INSERT INTO enrollments (id, user_id, stream_id, price_paid, status, transaction_id, created_at) \
         VALUES ($1, $2, $3, $4, 'active', $5, $6)",
    )
    .bind(&enrollment_id)
    .bind(user)
    .bind(stream_id)
    .bind(stream.price_tokens)
    .bind(transaction_id)
    .bind(now)
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(_) => {}
        // Unreachable while BEGIN IMMEDIATE serialises writers; kept as the backstop.
        Err(e) if unique_violation(&e) => return Err(already_enrolled()),
        Err(e) => return Err(e.into()),
    }
    Ok(enrolled(
        enrollment_id,
        user,
        stream_id,
        stream.price_tokens,
        transaction_id,
        balance,
        now,
    ))
}

/// The whole enrollment on PostgreSQL in one statement, so one round trip and one
/// implicit transaction: lock the stream, check it is open and the caller not
/// enrolled, deduct, write the ledger row, the enrollment and (with a key) the stored
/// answer. Every part sees the same snapshot, so what must hold at write time is
/// checked by the writes themselves: the deduction's `balance >= price` (re-checked
/// on the latest row version under READ COMMITTED; the account's row lock serialises
/// a user's deductions), the unique index on active enrollments and the key's primary
/// key. A concurrent enrollment of the same user and stream makes the statement fail
/// as a whole; it runs again and answers 409. A taken key fails it too: the stored
/// answer is replayed. The stream's `FOR SHARE` lock orders the enrollment against a
/// concurrent cancel, which updates that row: either the cancel sees and refunds the
/// enrollment, or the enrollment sees the stream cancelled.
///
/// The stored body is the 201 answer serialised in Rust with quoted random tokens
/// where the statement's own results go (price, transaction id, balance), replaced
/// in SQL; the tokens cannot occur in the caller's strings.
async fn enroll_pg(
    db: &Db,
    key: Option<&IdemKey>,
    user: &str,
    stream_id: &str,
) -> AppResult<Response> {
    type Outcome = (
        String,
        i64,
        bool,
        bool,
        Option<i64>,
        Option<i64>,
        bool,
        Option<i64>,
        Option<String>,
    );
    let sql = if key.is_some() {
        &*ENROLL_PG_KEYED
    } else {
        &*ENROLL_PG
    };
    let mut tries = 0;
    loop {
        tries += 1;
        let now = now_ms();
        let enrollment_id = format!("en_{}", uuid::Uuid::new_v4().simple());
        let mut q = sqlx::query_as::<_, Outcome>(sql)
            .bind(user)
            .bind(stream_id)
            .bind(now)
            .bind(format!("stream:{stream_id}"))
            .bind(&enrollment_id);
        if let Some(k) = key {
            let token = uuid::Uuid::new_v4().simple().to_string();
            let [price, transaction, balance] =
                ["price", "transaction", "balance"].map(|what| format!("{token}:{what}"));
            let (_, mut template) =
                enrolled(enrollment_id.clone(), user, stream_id, 0, None, 0, now);
            template["enrollment"]["price_paid"] = Value::from(price.as_str());
            template["enrollment"]["transaction_id"] = Value::from(transaction.as_str());
            template["transaction_id"] = Value::from(transaction.as_str());
            template["balance"] = Value::from(balance.as_str());
            q = q
                .bind(&k.caller)
                .bind(&k.key)
                .bind(&k.fingerprint)
                .bind(template.to_string())
                .bind(format!("\"{price}\""))
                .bind(format!("\"{transaction}\""))
                .bind(format!("\"{balance}\""));
        }
        let row = match q.fetch_optional(&db.pool).await {
            Ok(row) => row,
            Err(e)
                if idempotency::key_taken(&e)
                    && let Some(k) = key =>
            {
                return idempotency::replay(db, k).await;
            }
            // A concurrent request of the same user won; the second try answers 409.
            Err(e) if tries < 2 && unique_violation(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        let err = match row {
            None => AppError::not_found(format!("no stream '{stream_id}'")),
            Some((status, _, false, ..)) => stream_closed(&status),
            Some((_, _, _, true, ..)) => already_enrolled(),
            Some((_, price, _, _, _, _, false, before, _)) => {
                insufficient(before.unwrap_or(0), price)
            }
            Some((_, price, _, _, after, transaction_id, true, before, stored)) => {
                let body = stored.unwrap_or_else(|| {
                    let balance = after.or(before).unwrap_or(0);
                    let (_, v) = enrolled(
                        enrollment_id,
                        user,
                        stream_id,
                        price,
                        transaction_id,
                        balance,
                        now,
                    );
                    v.to_string()
                });
                return Ok(idempotency::answer(StatusCode::CREATED, body));
            }
        };
        return idempotency::answer_error(db, key, err).await;
    }
}

/// [`enroll_pg`]'s statement: `$1` user, `$2` stream, `$3` now, `$4` ledger reference,
/// `$5` enrollment id; with a key also `$6` caller, `$7` key, `$8` fingerprint, `$9`
/// the body template and `$10`-`$12` its quoted tokens (price, transaction, balance).
fn enroll_pg_sql(keyed: bool) -> String {
    let store = if keyed {
        ", k AS (
            INSERT INTO idempotency_keys (caller, idem_key, fingerprint, status, body, created_at)
            SELECT $6, $7, $8, 201, replace(replace(replace($9,
                       $10, go.price_tokens::text),
                       $11, coalesce((SELECT id FROM t)::text, 'null')),
                       $12, coalesce((SELECT balance FROM d), (SELECT balance FROM accounts WHERE user_id = $1), 0)::text),
                   $3
            FROM go WHERE EXISTS (SELECT 1 FROM e)
            RETURNING body
         )"
    } else {
        ""
    };
    let stored = if keyed {
        "(SELECT body FROM k)"
    } else {
        "NULL::text"
    };
    format!(
        "WITH s AS (
            SELECT status, price_tokens, ({open}) AS open FROM streams WHERE id = $2 FOR SHARE
         ), x AS (
            SELECT 1 FROM enrollments WHERE user_id = $1 AND stream_id = $2 AND status = 'active'
         ), go AS (
            SELECT price_tokens FROM s WHERE open AND NOT EXISTS (SELECT 1 FROM x)
         ), d AS (
            UPDATE accounts SET balance = balance - go.price_tokens FROM go
            WHERE user_id = $1 AND go.price_tokens > 0 AND balance >= go.price_tokens
            RETURNING balance
         ), t AS (
            INSERT INTO token_transactions (user_id, amount, kind, reference, balance_after, created_at)
            SELECT $1, -go.price_tokens, 'enrollment', $4, d.balance, $3 FROM go, d
            RETURNING id
         ), e AS (
            INSERT INTO enrollments (id, user_id, stream_id, price_paid, status, transaction_id, created_at)
            SELECT $5, $1, $2, go.price_tokens, 'active', (SELECT id FROM t), $3 FROM go
            WHERE go.price_tokens = 0 OR EXISTS (SELECT 1 FROM t)
            RETURNING id
         ){store}
         SELECT s.status, s.price_tokens, s.open, EXISTS (SELECT 1 FROM x),
                (SELECT balance FROM d), (SELECT id FROM t), EXISTS (SELECT 1 FROM e),
                (SELECT balance FROM accounts WHERE user_id = $1), {stored}
         FROM s",
        open = streams::OPEN_FOR_ENROLLMENT_SQL
    )
}

static ENROLL_PG: LazyLock<String> = LazyLock::new(|| enroll_pg_sql(false));
static ENROLL_PG_KEYED: LazyLock<String> = LazyLock::new(|| enroll_pg_sql(true));

/// The 201 answer of a new enrollment.
fn enrolled(
    id: String,
    user: &str,
    stream_id: &str,
    price: i64,
    transaction_id: Option<i64>,
    balance: i64,
    now: i64,
) -> (StatusCode, serde_json::Value) {
    let row = EnrollmentRow {
        id,
        user_id: user.to_string(),
        stream_id: stream_id.to_string(),
        price_paid: price,
        status: "active".into(),
        transaction_id,
        created_at: now,
        refunded_at: None,
    };
    let out = EnrolledOut {
        enrollment: to_out(&row),
        balance,
        transaction_id,
    };
    (
        StatusCode::CREATED,
        serde_json::to_value(out).unwrap_or_default(),
    )
}

fn already_enrolled() -> AppError {
    AppError::conflict(
        "already_enrolled",
        "you are already enrolled in this stream",
    )
    .with("enrollment_status", "active")
}

fn stream_closed(status: impl std::fmt::Display) -> AppError {
    AppError::conflict(
        "stream_closed",
        format!("the stream is {status} and can no longer be enrolled in"),
    )
    .with("status", status.to_string())
}

fn insufficient(balance: i64, price: i64) -> AppError {
    AppError::new(
        StatusCode::PAYMENT_REQUIRED,
        "insufficient_tokens",
        format!("the stream costs {price} tokens; the balance is {balance}"),
    )
    .with("balance", balance)
    .with("price", price)
}

/// The caller's enrollments with what they may watch now.
#[utoipa::path(get, path = "/v1/me/enrollments", tag = "enrollment", security(("identity" = [])),
    responses((status = 200, body = MyEnrollments), (status = 401)))]
pub async fn mine(
    State(state): State<AppState>,
    me: Identity,
) -> AppResult<axum::Json<MyEnrollments>> {
    let rows: Vec<EnrollmentRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM enrollments WHERE user_id = $1 ORDER BY created_at DESC, id DESC"
    ))
    .bind(&me.user)
    .fetch_all(&state.db.pool)
    .await?;
    let now = now_ms();
    let mut conn = state.db.pool.acquire().await?;
    let mut enrollments = Vec::with_capacity(rows.len());
    for e in &rows {
        let s = streams::load(&mut conn, &e.stream_id).await?;
        let active = e.status == "active";
        enrollments.push(MyEnrollment {
            enrollment: to_out(e),
            can_watch_live: active && s.status.is_open(),
            can_watch_replay: active && s.replay_open(now),
            replay_access_expires_at: if s.status == StreamStatus::Ended {
                rfc3339_opt(s.replay_expires_at)
            } else {
                None
            },
            stream: StreamBrief {
                id: s.id.clone(),
                title: s.title.clone(),
                status: s.status,
                scheduled_start: rfc3339(s.scheduled_start),
            },
        });
    }
    Ok(axum::Json(MyEnrollments { enrollments }))
}

/// Why a user may not watch a stream now, or `None` when they may.
pub fn watch_refusal(stream: &StreamRow, e: Option<&EnrollmentRow>, now: i64) -> Option<AppError> {
    let Some(e) = e else {
        return Some(AppError::new(
            StatusCode::FORBIDDEN,
            "not_enrolled",
            "enroll in the stream first",
        ));
    };
    if e.status != "active" {
        return Some(AppError::new(
            StatusCode::FORBIDDEN,
            "not_enrolled",
            "the enrollment was refunded",
        ));
    }
    match stream.status {
        StreamStatus::Scheduled | StreamStatus::Live => None,
        StreamStatus::Ended if stream.replay_open(now) => None,
        StreamStatus::Ended => Some(
            AppError::new(
                StatusCode::FORBIDDEN,
                "replay_expired",
                "the replay window of this stream has closed",
            )
            .with("replay_expires_at", rfc3339_opt(stream.replay_expires_at)),
        ),
        StreamStatus::Cancelled => Some(AppError::new(
            StatusCode::FORBIDDEN,
            "not_enrolled",
            "the stream was cancelled",
        )),
    }
}

/// The viewer-token answer: the WHEP token, and the watch page link that carries it
/// (what a platform hands its student: one click plays the class).
#[derive(Debug, Serialize, ToSchema)]
pub struct ViewerTokenOut {
    pub token: String,
    pub whep_url: String,
    /// `{public_url}/watch/{id}?token=…`: the watch page, playing with this token.
    pub watch_url: String,
    pub expires_at: String,
}

/// A WHEP token for an enrolled user (or the owner), within their access.
#[utoipa::path(post, path = "/v1/streams/{id}/viewer-token", tag = "media", security(("identity" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = ViewerTokenOut), (status = 401),
              (status = 403, description = "not_enrolled or replay_expired"), (status = 404)))]
pub async fn viewer_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    me: Identity,
) -> AppResult<axum::Json<ViewerTokenOut>> {
    let mut conn = state.db.pool.acquire().await?;
    let stream = streams::load(&mut conn, &id).await?;
    let now = now_ms();
    let owner = stream.instructor_id == me.user;
    let enrollment = enrollment_of(&mut conn, &me.user, &id).await?;
    if !owner && let Some(err) = watch_refusal(&stream, enrollment.as_ref(), now) {
        return Err(err);
    }
    let mut ttl = state.config.api.media_token_ttl_seconds;
    if !owner
        && stream.status == StreamStatus::Ended
        && let Some(until) = stream.replay_expires_at
    {
        ttl = ttl.min(((until - now) / 1000).max(1) as u64);
    }
    let (token, claims) = state.tokens.mint(&TokenRequest {
        user: me.user.clone(),
        stream: Some(id.clone()),
        room: Some(id.clone()),
        grants: Grants {
            subscribe: true,
            chat: true,
            ..Default::default()
        },
        name: None,
        role: Some(me.role.as_str().into()),
        ttl_secs: ttl,
    });
    if let Some(e) = enrollment.as_ref().filter(|_| !owner) {
        sqlx::query(
            "INSERT INTO media_grants (jti, enrollment_id, expires_at) VALUES ($1, $2, $3)",
        )
        .bind(&claims.jti)
        .bind(&e.id)
        .bind(claims.exp as i64 * 1000)
        .execute(&mut *conn)
        .await?;
    }
    // Stream ids are URL-safe (checked on creation) and JWTs are base64url: no escaping.
    let watch_url = format!("{}?token={token}", watch_url(&state, &id));
    Ok(axum::Json(ViewerTokenOut {
        whep_url: format!("{}/v1/whep/{}", state.public_url, id),
        watch_url,
        token,
        expires_at: rfc3339(claims.exp as i64 * 1000),
    }))
}

/// Refunds one enrollment (support, chargebacks). Service key; `Idempotency-Key` honoured.
#[utoipa::path(post, path = "/v1/admin/enrollments/{id}/refund", tag = "enrollment",
    security(("service_key" = [])),
    params(("id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = EnrollmentOut), (status = 401), (status = 403), (status = 404),
              (status = 409, description = "already_refunded")))]
pub async fn admin_refund(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    _: ServiceCaller,
    body: Bytes,
) -> AppResult<Response> {
    let key = IdemKey::from_headers(&headers, "service", &format!("refund:{id}"), &body)?;
    let mut tx = begin_write(&state.db).await?;
    let mut refunded: Option<(String, String)> = None;
    let outcome = async {
        let e: EnrollmentRow =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM enrollments WHERE id = $1"))
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| AppError::not_found(format!("no enrollment '{id}'")))?;
        if !refund_one(&mut tx, &e, now_ms()).await? {
            return Err(AppError::conflict(
                "already_refunded",
                "the enrollment was already refunded",
            ));
        }
        refunded = Some((e.stream_id.clone(), e.user_id.clone()));
        let e: EnrollmentRow =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM enrollments WHERE id = $1"))
                .bind(&id)
                .fetch_one(&mut *tx)
                .await?;
        Ok((
            StatusCode::OK,
            serde_json::to_value(to_out(&e)).unwrap_or_default(),
        ))
    }
    .await;
    let resp = idempotency::finish(&state.db, tx, key.as_ref(), outcome).await?;
    // Committed (a replayed answer refunded nothing now): the refunded viewer
    // leaves the stream's room.
    if resp.status() == StatusCode::OK
        && !resp.headers().contains_key("idempotent-replayed")
        && let Some((stream, user)) = refunded
    {
        evict_from_room(&state, &stream, &user).await;
        state.discord.member_changed(&stream, &user);
    }
    Ok(resp)
}
