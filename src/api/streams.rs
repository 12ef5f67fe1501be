//! Streams: create, edit, list and search, the lifecycle (`scheduled → live → ended`,
//! `scheduled → cancelled` with refunds), instructor stats, publish tokens, calendar.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::AnyConnection;
use utoipa::{IntoParams, ToSchema};

use super::common::{
    DAY_MS, begin_write, parse_json, parse_rfc3339, rfc3339, rfc3339_opt, watch_url,
};
use super::enrollment_records::{evict_from_room, refund_all};
use super::idempotency::{self, IdemKey};
use crate::auth::{Grants, Identity, Role, TokenRequest};
use crate::clock::now_ms;
use crate::error::{AppError, AppResult};
use crate::extract::Instructor;
use crate::state::AppState;

pub fn routes() -> axum::Router<AppState> {
    Router::new()
        .route("/v1/streams", post(create).get(list))
        .route("/v1/streams/{id}", get(show).patch(edit).delete(remove))
        .route("/v1/streams/{id}/start", post(start))
        .route("/v1/streams/{id}/end", post(end))
        .route("/v1/streams/{id}/cancel", post(cancel))
        .route("/v1/streams/{id}/publish-token", post(publish_token))
        .route("/v1/streams/{id}/calendar.ics", get(calendar))
        .route("/v1/instructor/streams", get(instructor_list))
}

pub const COLUMNS: &str = "id, instructor_id, title, description, status, scheduled_start, \
    duration_minutes, price_tokens, replay_days, started_at, ended_at, cancelled_at, \
    replay_expires_at, replay_closed_at, recording_path, recording_deleted_at, \
    catalog_migration_at, migrated_at, peak_viewers, record_media, recording_started_at, \
    recording_finished_at, recording_duration_ms, recording_codecs";

/// Where a stream is in its life: `scheduled` → `live` → `ended`, or
/// `scheduled` → `cancelled`. Stored as that text in `streams.status` (the
/// column and its values are unchanged) and shown as it in the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StreamStatus {
    Scheduled,
    Live,
    Ended,
    Cancelled,
}

impl StreamStatus {
    pub const ALL: [StreamStatus; 4] = [
        StreamStatus::Scheduled,
        StreamStatus::Live,
        StreamStatus::Ended,
        StreamStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StreamStatus::Scheduled => "scheduled",
            StreamStatus::Live => "live",
            StreamStatus::Ended => "ended",
            StreamStatus::Cancelled => "cancelled",
        }
    }

    /// Scheduled or live: it can still be published to and watched live.
    pub fn is_open(self) -> bool {
        matches!(self, StreamStatus::Scheduled | StreamStatus::Live)
    }
}

impl std::fmt::Display for StreamStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StreamStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("unknown stream status '{s}'"))
    }
}

impl sqlx::Type<sqlx::Any> for StreamStatus {
    fn type_info() -> <sqlx::Any as sqlx::Database>::TypeInfo {
        <String as sqlx::Type<sqlx::Any>>::type_info()
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Any> for StreamStatus {
    fn decode(
        value: <sqlx::Any as sqlx::Database>::ValueRef<'r>,
    ) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(<String as sqlx::Decode<sqlx::Any>>::decode(value)?.parse()?)
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Any> for StreamStatus {
    fn encode_by_ref(
        &self,
        buf: &mut <sqlx::Any as sqlx::Database>::ArgumentBuffer<'q>,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&'q str as sqlx::Encode<'q, sqlx::Any>>::encode(self.as_str(), buf)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StreamRow {
    pub id: String,
    pub instructor_id: String,
    pub title: String,
    pub description: Option<String>,
    pub status: StreamStatus,
    pub scheduled_start: i64,
    pub duration_minutes: Option<i64>,
    pub price_tokens: i64,
    pub replay_days: i64,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub replay_expires_at: Option<i64>,
    pub replay_closed_at: Option<i64>,
    pub recording_path: Option<String>,
    pub recording_deleted_at: Option<i64>,
    pub catalog_migration_at: Option<i64>,
    pub migrated_at: Option<i64>,
    pub peak_viewers: i64,
    /// 1 record, 0 not, NULL: `[recording] enabled`.
    pub record_media: Option<i64>,
    pub recording_started_at: Option<i64>,
    pub recording_finished_at: Option<i64>,
    pub recording_duration_ms: Option<i64>,
    pub recording_codecs: Option<String>,
}

impl StreamRow {
    /// Whether the stream is recorded when it goes live: its `record` field, or
    /// the server's default; never when recording is off in the configuration.
    pub fn records(&self, enabled: bool) -> bool {
        enabled && self.record_media.is_none_or(|r| r != 0)
    }

    /// A recording exists (started, files not deleted).
    pub fn has_recording(&self) -> bool {
        self.recording_path.is_some() && self.recording_deleted_at.is_none()
    }

    /// Replay can be watched (and bought) now.
    pub fn replay_open(&self, now: i64) -> bool {
        self.status == StreamStatus::Ended
            && self.replay_closed_at.is_none()
            && self.replay_expires_at.is_some_and(|t| now < t)
    }
    /// Enrolment is still possible: scheduled, live, or ended within the replay window.
    /// [`OPEN_FOR_ENROLLMENT_SQL`] says the same in SQL.
    pub fn open_for_enrollment(&self, now: i64) -> bool {
        self.status.is_open() || self.replay_open(now)
    }
}

/// [`StreamRow::open_for_enrollment`] over a `streams` row, with the time as `$3`
/// (PostgreSQL's one-statement enrollment).
pub const OPEN_FOR_ENROLLMENT_SQL: &str = "status IN ('scheduled', 'live') OR (status = 'ended' \
     AND replay_closed_at IS NULL AND replay_expires_at IS NOT NULL AND $3 < replay_expires_at)";

/// A stream as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamOut {
    pub id: String,
    pub title: String,
    pub description: Option<String>,
    /// The instructor's user id.
    pub instructor: String,
    pub status: StreamStatus,
    pub scheduled_start: String,
    pub duration_minutes: Option<i64>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub cancelled_at: Option<String>,
    pub price_tokens: i64,
    pub replay_days: i64,
    pub replay_expires_at: Option<String>,
    pub catalog_migration_at: Option<String>,
    pub migrated_at: Option<String>,
    /// Current WHEP viewers on this node.
    pub viewers: i64,
    pub whep_url: String,
    pub watch_url: String,
    /// Whether the stream is recorded when live (`[recording] enabled` by default).
    pub record: bool,
    /// The recording, when one exists and has not been cleaned up.
    pub recording: Option<RecordingOut>,
    /// A recent key frame of the stream as JPEG (404 until one exists).
    pub thumbnail_url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingOut {
    /// The replay can be watched now (ended, inside the replay window).
    pub available: bool,
    pub expires_at: Option<String>,
    /// Set when the recording is finished (at `end`); null while live.
    pub duration_seconds: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StreamList {
    pub streams: Vec<StreamOut>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub enrollments: i64,
    pub revenue_tokens: i64,
    pub peak_viewers: i64,
    pub current_viewers: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstructorStream {
    #[serde(flatten)]
    pub stream: StreamOut,
    pub stats: Stats,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InstructorStreamList {
    pub streams: Vec<InstructorStream>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MediaTokenOut {
    pub token: String,
    /// `whip_url` for publish tokens, `whep_url` for viewer tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whip_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whep_url: Option<String>,
    pub expires_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStream {
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
    /// RFC 3339.
    pub scheduled_start: String,
    #[serde(default)]
    pub duration_minutes: Option<i64>,
    pub price_tokens: i64,
    /// Days the replay stays watchable after the end (default 7).
    #[serde(default)]
    pub replay_days: Option<i64>,
    /// Record the stream when live (default: the server's `[recording] enabled`).
    #[serde(default)]
    pub record: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EditStream {
    pub title: Option<String>,
    /// An empty string clears it.
    pub description: Option<String>,
    pub scheduled_start: Option<String>,
    pub duration_minutes: Option<i64>,
    pub price_tokens: Option<i64>,
    pub replay_days: Option<i64>,
    pub record: Option<bool>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Comma-separated statuses (`scheduled,live,ended,cancelled`). Public default:
    /// `scheduled,live,ended`; instructor default: all.
    pub status: Option<String>,
    /// Case-insensitive search in title and description.
    pub q: Option<String>,
    /// `start` (default) or `-start`.
    pub sort: Option<String>,
    /// 1-100, default 20.
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

fn validate_title(t: &str) -> AppResult<()> {
    // One line: a title goes into calendar SUMMARY lines and page titles.
    if t.trim().is_empty() || t.chars().count() > 200 || !crate::text::is_clean_line(t) {
        return Err(AppError::bad_request(
            "title must be 1-200 characters on one line (no control characters)",
        )
        .with("field", "title"));
    }
    Ok(())
}
fn validate_description(d: &str) -> AppResult<()> {
    if d.chars().count() > 5000 {
        return Err(
            AppError::bad_request("description is at most 5000 characters")
                .with("field", "description"),
        );
    }
    Ok(())
}
fn validate_duration(d: i64) -> AppResult<()> {
    if !(1..=7 * 24 * 60).contains(&d) {
        return Err(AppError::bad_request("duration_minutes must be 1-10080")
            .with("field", "duration_minutes"));
    }
    Ok(())
}
fn validate_price(p: i64) -> AppResult<()> {
    if !(0..=1_000_000_000).contains(&p) {
        return Err(AppError::bad_request("price_tokens must be 0-1000000000")
            .with("field", "price_tokens"));
    }
    Ok(())
}
/// 2000-01-01T00:00:00Z and 2100-01-01T00:00:00Z in unix ms: a stream starts in
/// this century. Wide enough for any real schedule (and for back-filled history),
/// narrow enough that every derived time (`DTEND` = start + at most 7 days, replay
/// and catalog dates) stays a valid 4-digit-year date in calendars and RFC 3339.
pub const EARLIEST_START_MS: i64 = 946_684_800_000;
pub const LATEST_START_MS: i64 = 4_102_444_800_000;

fn validate_start(ms: i64) -> AppResult<()> {
    if !(EARLIEST_START_MS..LATEST_START_MS).contains(&ms) {
        return Err(AppError::bad_request(
            "scheduled_start must be in 2000-01-01T00:00:00Z .. 2099-12-31T23:59:59Z",
        )
        .with("field", "scheduled_start"));
    }
    Ok(())
}
fn validate_replay_days(d: i64) -> AppResult<()> {
    if !(0..=3650).contains(&d) {
        return Err(
            AppError::bad_request("replay_days must be 0-3650").with("field", "replay_days")
        );
    }
    Ok(())
}

/// The stream, or 404.
pub async fn load(conn: &mut AnyConnection, id: &str) -> AppResult<StreamRow> {
    sqlx::query_as::<_, StreamRow>(&format!("SELECT {COLUMNS} FROM streams WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| AppError::not_found(format!("no stream '{id}'")))
}

/// The stream if `who` owns it (or is an admin): 404 unknown, 403 someone else's.
pub async fn load_owned(
    conn: &mut AnyConnection,
    id: &str,
    who: &Identity,
) -> AppResult<StreamRow> {
    let row = load(conn, id).await?;
    if row.instructor_id != who.user && who.role != Role::Admin {
        return Err(AppError::forbidden(
            "this stream belongs to another instructor",
        ));
    }
    Ok(row)
}

/// Current WHEP viewers of a stream on this node (the SFU's live count).
pub fn live_viewers(state: &AppState, id: &str) -> i64 {
    state.sfu.stream(id).map(|s| s.viewers as i64).unwrap_or(0)
}

pub fn to_out(state: &AppState, r: &StreamRow, now: i64) -> StreamOut {
    let recording = r.has_recording().then(|| RecordingOut {
        available: r.replay_open(now),
        expires_at: rfc3339_opt(r.replay_expires_at),
        duration_seconds: r.recording_duration_ms.map(|ms| ms as f64 / 1000.0),
    });
    StreamOut {
        id: r.id.clone(),
        title: r.title.clone(),
        description: r.description.clone(),
        instructor: r.instructor_id.clone(),
        status: r.status,
        scheduled_start: rfc3339(r.scheduled_start),
        duration_minutes: r.duration_minutes,
        started_at: rfc3339_opt(r.started_at),
        ended_at: rfc3339_opt(r.ended_at),
        cancelled_at: rfc3339_opt(r.cancelled_at),
        price_tokens: r.price_tokens,
        replay_days: r.replay_days,
        replay_expires_at: rfc3339_opt(r.replay_expires_at),
        catalog_migration_at: rfc3339_opt(r.catalog_migration_at),
        migrated_at: rfc3339_opt(r.migrated_at),
        viewers: live_viewers(state, &r.id),
        whep_url: format!("{}/v1/whep/{}", state.public_url, r.id),
        watch_url: watch_url(state, &r.id),
        record: r.records(state.config.recording.enabled),
        recording,
        thumbnail_url: format!("{}/v1/streams/{}/thumbnail.jpg", state.public_url, r.id),
    }
}

fn json_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// Creates a scheduled stream owned by the calling instructor.
#[utoipa::path(post, path = "/v1/streams", tag = "streams", security(("identity" = [])),
    request_body = CreateStream,
    responses((status = 201, body = StreamOut), (status = 400, description = "names the field"),
              (status = 401), (status = 403, description = "not an instructor")))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    Instructor(me): Instructor,
    body: Bytes,
) -> AppResult<Response> {
    let input: CreateStream = parse_json(&headers, &body)?;
    validate_title(&input.title)?;
    if let Some(d) = &input.description {
        validate_description(d)?;
    }
    let start = parse_rfc3339(&input.scheduled_start, "scheduled_start")?;
    validate_start(start)?;
    if let Some(d) = input.duration_minutes {
        validate_duration(d)?;
    }
    validate_price(input.price_tokens)?;
    let replay_days = input
        .replay_days
        .unwrap_or(state.config.api.default_replay_days);
    validate_replay_days(replay_days)?;
    let id = format!("st_{}", uuid::Uuid::new_v4().simple());
    let now = now_ms();
    sqlx::query(
        "INSERT INTO streams (id, instructor_id, title, description, status, scheduled_start, \
         duration_minutes, price_tokens, replay_days, created_at, updated_at, record_media) \
         VALUES ($1, $2, $3, $4, 'scheduled', $5, $6, $7, $8, $9, $9, $10)",
    )
    .bind(&id)
    .bind(&me.user)
    .bind(input.title.trim())
    .bind(input.description.filter(|d| !d.is_empty()))
    .bind(start)
    .bind(input.duration_minutes)
    .bind(input.price_tokens)
    .bind(replay_days)
    .bind(now)
    .bind(input.record.map(i64::from))
    .execute(&state.db.pool)
    .await?;
    let mut conn = state.db.pool.acquire().await?;
    let row = load(&mut conn, &id).await?;
    Ok((StatusCode::CREATED, axum::Json(to_out(&state, &row, now))).into_response())
}

/// One stream (public).
#[utoipa::path(get, path = "/v1/streams/{id}", tag = "streams",
    params(("id" = String, Path)),
    responses((status = 200, body = StreamOut), (status = 404)))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> AppResult<axum::Json<StreamOut>> {
    let mut conn = state.db.pool.acquire().await?;
    let row = load(&mut conn, &id).await?;
    Ok(axum::Json(to_out(&state, &row, now_ms())))
}

/// Edits a stream while it is scheduled (owner).
#[utoipa::path(patch, path = "/v1/streams/{id}", tag = "streams", security(("identity" = [])),
    params(("id" = String, Path)), request_body = EditStream,
    responses((status = 200, body = StreamOut), (status = 400), (status = 401), (status = 403),
              (status = 404), (status = 409, description = "not_editable: no longer scheduled")))]
pub async fn edit(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Instructor(me): Instructor,
    body: Bytes,
) -> AppResult<axum::Json<StreamOut>> {
    let input: EditStream = parse_json(&headers, &body)?;
    let mut conn = state.db.pool.acquire().await?;
    let row = load_owned(&mut conn, &id, &me).await?;
    if let Some(t) = &input.title {
        validate_title(t)?;
    }
    if let Some(d) = &input.description {
        validate_description(d)?;
    }
    let start = match &input.scheduled_start {
        Some(s) => {
            let start = parse_rfc3339(s, "scheduled_start")?;
            validate_start(start)?;
            start
        }
        None => row.scheduled_start,
    };
    if let Some(d) = input.duration_minutes {
        validate_duration(d)?;
    }
    if let Some(p) = input.price_tokens {
        validate_price(p)?;
    }
    if let Some(d) = input.replay_days {
        validate_replay_days(d)?;
    }
    let description = match input.description {
        Some(d) if d.is_empty() => None,
        Some(d) => Some(d),
        None => row.description.clone(),
    };
    let now = now_ms();
    let changed = sqlx::query(
        "UPDATE streams SET title = $1, description = $2, scheduled_start = $3, \
         duration_minutes = $4, price_tokens = $5, replay_days = $6, updated_at = $7, \
         record_media = $9 WHERE id = $8 AND status = 'scheduled'",
    )
    .bind(input.title.as_deref().map(str::trim).unwrap_or(&row.title))
    .bind(description)
    .bind(start)
    .bind(input.duration_minutes.or(row.duration_minutes))
    .bind(input.price_tokens.unwrap_or(row.price_tokens))
    .bind(input.replay_days.unwrap_or(row.replay_days))
    .bind(now)
    .bind(&id)
    .bind(input.record.map(i64::from).or(row.record_media))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if changed == 0 {
        return Err(AppError::conflict(
            "not_editable",
            format!(
                "the stream is {}; only scheduled streams can be edited",
                row.status
            ),
        )
        .with("status", row.status.as_str()));
    }
    let row = load(&mut conn, &id).await?;
    Ok(axum::Json(to_out(&state, &row, now)))
}

fn invalid_transition(row: &StreamRow, to: &str) -> AppError {
    AppError::conflict(
        "invalid_transition",
        format!("a {} stream cannot become {to}", row.status),
    )
    .with("status", row.status.as_str())
    .with("to", to)
}

/// Moves a scheduled stream to live (also done by the owner's WHIP session when
/// `api.whip_starts_stream`). Returns false when it was not scheduled.
pub async fn go_live(conn: &mut AnyConnection, id: &str, now: i64) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE streams SET status = 'live', started_at = $1, updated_at = $1 \
         WHERE id = $2 AND status = 'scheduled'",
    )
    .bind(now)
    .bind(id)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1)
}

/// `scheduled → live` (owner).
#[utoipa::path(post, path = "/v1/streams/{id}/start", tag = "streams", security(("identity" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = StreamOut), (status = 401), (status = 403), (status = 404),
              (status = 409, description = "invalid_transition")))]
pub async fn start(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Instructor(me): Instructor,
) -> AppResult<axum::Json<StreamOut>> {
    let mut conn = state.db.pool.acquire().await?;
    let row = load_owned(&mut conn, &id, &me).await?;
    let now = now_ms();
    if !go_live(&mut conn, &id, now).await? {
        return Err(invalid_transition(&row, "live"));
    }
    let row = load(&mut conn, &id).await?;
    drop(conn);
    // The pushes start beside the answer (a platform's API may be slow); their
    // statuses arrive at GET/events …/destinations.
    let (pushes, stream) = (state.clone(), id.clone());
    tokio::spawn(async move { super::destinations::go_live(&pushes, &stream).await });
    Ok(axum::Json(to_out(&state, &row, now)))
}

/// `live → ended` (owner): sets the replay and catalog migration times.
#[utoipa::path(post, path = "/v1/streams/{id}/end", tag = "streams", security(("identity" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = StreamOut), (status = 401), (status = 403), (status = 404),
              (status = 409, description = "invalid_transition")))]
pub async fn end(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Instructor(me): Instructor,
) -> AppResult<axum::Json<StreamOut>> {
    let mut conn = state.db.pool.acquire().await?;
    let row = load_owned(&mut conn, &id, &me).await?;
    let now = now_ms();
    let changed = sqlx::query(
        "UPDATE streams SET status = 'ended', ended_at = $1, updated_at = $1, \
         replay_expires_at = $1 + replay_days * $2, catalog_migration_at = $3 \
         WHERE id = $4 AND status = 'live'",
    )
    .bind(now)
    .bind(DAY_MS)
    .bind(now + state.config.api.catalog_migration_days * DAY_MS)
    .bind(&id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if changed == 0 {
        return Err(invalid_transition(&row, "ended"));
    }
    // Ended means the media stops now: the publisher's and every viewer's
    // session close (new WHIP is refused as `stream_closed` by access.rs).
    state.sfu.close_stream(&id).await;
    super::destinations::stop(&state, &id);
    // The recording's last fragment and ENDLIST are on disk, and its length in
    // the row, before the answer: the replay plays right after `end`. The
    // recorder writes that row with a connection of its own: this one goes back
    // to the pool meanwhile (a pool of one would otherwise wait on itself).
    drop(conn);
    state.recordings.finish(&id).await;
    let mut conn = state.db.pool.acquire().await?;
    let row = load(&mut conn, &id).await?;
    Ok(axum::Json(to_out(&state, &row, now)))
}

/// `scheduled → cancelled` (owner): refunds every paid enrollment in the same
/// transaction. `Idempotency-Key` honoured.
#[utoipa::path(post, path = "/v1/streams/{id}/cancel", tag = "streams", security(("identity" = [])),
    params(("id" = String, Path),
           ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, body = StreamOut, description = "the stream, plus `refunded_enrollments`"),
              (status = 401), (status = 403), (status = 404),
              (status = 409, description = "invalid_transition"), (status = 422)))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Instructor(me): Instructor,
    body: Bytes,
) -> AppResult<Response> {
    let key = IdemKey::from_headers(
        &headers,
        &format!("user:{}", me.user),
        &format!("cancel:{id}"),
        &body,
    )?;
    let mut tx = begin_write(&state.db).await?;
    let mut refunded_users = Vec::new();
    let outcome = async {
        let now = now_ms();
        let row = load_owned(&mut tx, &id, &me).await?;
        let changed = sqlx::query(
            "UPDATE streams SET status = 'cancelled', cancelled_at = $1, updated_at = $1 \
             WHERE id = $2 AND status = 'scheduled'",
        )
        .bind(now)
        .bind(&id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(invalid_transition(&row, "cancelled"));
        }
        refunded_users = refund_all(&mut tx, &id, now).await?;
        let row = load(&mut tx, &id).await?;
        let mut value = json_value(&to_out(&state, &row, now));
        value["refunded_enrollments"] = Value::from(refunded_users.len());
        Ok((StatusCode::OK, value))
    }
    .await;
    let resp = idempotency::finish(&state.db, tx, key.as_ref(), outcome).await?;
    // Committed: the refunded viewers leave the stream's room, and any media
    // session of the stream (an early test broadcast, its viewers) closes.
    if resp.status() == StatusCode::OK && !resp.headers().contains_key("idempotent-replayed") {
        for user in &refunded_users {
            evict_from_room(&state, &id, user).await;
        }
        state.sfu.close_stream(&id).await;
        // Free enrollments lose their access too: every member is looked at.
        state.discord.stream_changed(&id);
    }
    Ok(resp)
}

/// Deletes a stream that never had paid enrollments (owner).
#[utoipa::path(delete, path = "/v1/streams/{id}", tag = "streams", security(("identity" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 401), (status = 403), (status = 404),
              (status = 409, description = "has_paid_enrollments, has_enrollment_history (refunded paid enrollments), or invalid_transition while live")))]
pub async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Instructor(me): Instructor,
) -> AppResult<StatusCode> {
    let mut tx = begin_write(&state.db).await?;
    if state.db.backend == crate::storage::Backend::Postgres {
        // Waits for enrollments holding the row (FOR SHARE), so the check below sees them.
        sqlx::query("SELECT id FROM streams WHERE id = $1 FOR UPDATE")
            .bind(&id)
            .execute(&mut *tx)
            .await?;
    }
    let row = load_owned(&mut tx, &id, &me).await?;
    if row.status == StreamStatus::Live {
        return Err(AppError::conflict(
            "invalid_transition",
            "a live stream cannot be deleted; end it first",
        )
        .with("status", row.status.as_str()));
    }
    // Enrollments that moved money (paid, active or refunded) are the history the
    // ledger rows point at: such a stream is never deleted (the enrollments' foreign
    // key restricts it too, migration 0006). Free enrollments carry no money and go
    // with the stream.
    let (active_paid, paid_history): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(CASE WHEN status = 'active' THEN 1 ELSE 0 END), 0) AS BIGINT), \
         COUNT(*) FROM enrollments WHERE stream_id = $1 AND price_paid > 0",
    )
    .bind(&id)
    .fetch_one(&mut *tx)
    .await?;
    if active_paid > 0 {
        return Err(AppError::conflict(
            "has_paid_enrollments",
            "the stream has paid enrollments; cancel it (which refunds them) instead",
        ));
    }
    if paid_history > 0 {
        return Err(AppError::conflict(
            "has_enrollment_history",
            "the stream has refunded paid enrollments, which the token ledger refers to; \
             it stays (cancelled streams are hidden from the public list) as their record",
        )
        .with("enrollments", paid_history));
    }
    sqlx::query("DELETE FROM enrollments WHERE stream_id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM streams WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A publish token for the owner's WHIP session.
#[utoipa::path(post, path = "/v1/streams/{id}/publish-token", tag = "media", security(("identity" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = MediaTokenOut), (status = 401), (status = 403), (status = 404),
              (status = 409, description = "stream_closed: ended or cancelled")))]
pub async fn publish_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Instructor(me): Instructor,
) -> AppResult<axum::Json<MediaTokenOut>> {
    let mut conn = state.db.pool.acquire().await?;
    let row = load_owned(&mut conn, &id, &me).await?;
    if !row.status.is_open() {
        return Err(
            AppError::conflict("stream_closed", format!("the stream is {}", row.status))
                .with("status", row.status.as_str()),
        );
    }
    let (token, claims) = state.tokens.mint(&TokenRequest {
        user: me.user.clone(),
        stream: Some(id.clone()),
        room: Some(id.clone()),
        grants: Grants {
            publish: true,
            subscribe: true,
            chat: true,
            moderate: true,
        },
        name: None,
        role: Some(me.role.as_str().into()),
        ttl_secs: state.config.api.media_token_ttl_seconds,
    });
    Ok(axum::Json(MediaTokenOut {
        token,
        whip_url: Some(format!("{}/v1/whip/{}", state.public_url, id)),
        whep_url: None,
        expires_at: rfc3339(claims.exp as i64 * 1000),
    }))
}

enum Arg {
    I(i64),
    S(String),
}

struct Filter {
    sql: String,
    args: Vec<Arg>,
}

impl Filter {
    fn arg(&mut self, a: Arg) -> String {
        self.args.push(a);
        format!("${}", self.args.len())
    }
}

struct Page {
    rows: Vec<StreamRow>,
    next_cursor: Option<String>,
}

fn bad_query(field: &str, msg: impl Into<String>) -> AppError {
    AppError::bad_request(msg).with("field", field)
}

async fn query_streams(
    state: &AppState,
    q: &ListQuery,
    owner: Option<&str>,
    default_status: &[StreamStatus],
) -> AppResult<Page> {
    let mut f = Filter {
        sql: format!("SELECT {COLUMNS} FROM streams WHERE 1 = 1"),
        args: vec![],
    };
    if let Some(owner) = owner {
        let p = f.arg(Arg::S(owner.to_string()));
        f.sql.push_str(&format!(" AND instructor_id = {p}"));
    }
    let statuses: Vec<StreamStatus> = match &q.status {
        Some(s) if !s.trim().is_empty() => s
            .split(',')
            .map(|x| {
                let x = x.trim();
                x.parse().map_err(|_| {
                    bad_query(
                        "status",
                        format!("unknown status '{x}' (scheduled, live, ended, cancelled)"),
                    )
                })
            })
            .collect::<AppResult<_>>()?,
        _ => default_status.to_vec(),
    };
    let ps: Vec<String> = statuses
        .iter()
        .map(|s| f.arg(Arg::S(s.as_str().to_string())))
        .collect();
    f.sql
        .push_str(&format!(" AND status IN ({})", ps.join(", ")));
    if let Some(text) = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        if text.len() > 200 {
            return Err(bad_query("q", "q is at most 200 characters"));
        }
        let escaped = text
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let p = f.arg(Arg::S(format!("%{escaped}%")));
        f.sql.push_str(&format!(
            " AND (LOWER(title) LIKE {p} ESCAPE '\\' OR LOWER(COALESCE(description, '')) LIKE {p} ESCAPE '\\')"
        ));
    }
    let desc = match q.sort.as_deref().unwrap_or("start") {
        "start" => false,
        "-start" => true,
        other => {
            return Err(bad_query(
                "sort",
                format!("sort must be start or -start (got '{other}')"),
            ));
        }
    };
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(bad_query("limit", "limit must be 1-100"));
    }
    if let Some(cursor) = &q.cursor {
        let (start, id) = decode_cursor(cursor).ok_or_else(|| bad_query("cursor", "bad cursor"))?;
        let ps = f.arg(Arg::I(start));
        let pi = f.arg(Arg::S(id));
        let op = if desc { "<" } else { ">" };
        f.sql.push_str(&format!(
            " AND (scheduled_start {op} {ps} OR (scheduled_start = {ps} AND id {op} {pi}))"
        ));
    }
    let dir = if desc { "DESC" } else { "ASC" };
    let pl = f.arg(Arg::I(limit + 1));
    f.sql.push_str(&format!(
        " ORDER BY scheduled_start {dir}, id {dir} LIMIT {pl}"
    ));
    let mut query = sqlx::query_as::<_, StreamRow>(&f.sql);
    for a in f.args {
        query = match a {
            Arg::I(v) => query.bind(v),
            Arg::S(v) => query.bind(v),
        };
    }
    let mut rows = query.fetch_all(&state.db.pool).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| encode_cursor(r.scheduled_start, &r.id))
    } else {
        None
    };
    Ok(Page { rows, next_cursor })
}

fn encode_cursor(start: i64, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{start}:{id}"))
}

fn decode_cursor(c: &str) -> Option<(i64, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (start, id) = text.split_once(':')?;
    // The id is bound in SQL: a forged cursor must not smuggle a NUL in.
    crate::text::is_clean_line(id).then_some(())?;
    Some((start.parse().ok()?, id.to_string()))
}

fn query_or_400(
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> AppResult<ListQuery> {
    q.map(|Query(q)| q)
        .map_err(|e| AppError::bad_request(format!("query: {e}")).with("field", "query"))
}

/// The public list: filter by status, search, sort by start, cursor pages.
#[utoipa::path(get, path = "/v1/streams", tag = "streams", params(ListQuery),
    responses((status = 200, body = StreamList), (status = 400, description = "names the parameter")))]
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> AppResult<axum::Json<StreamList>> {
    let q = query_or_400(query)?;
    let page = query_streams(
        &state,
        &q,
        None,
        &[
            StreamStatus::Scheduled,
            StreamStatus::Live,
            StreamStatus::Ended,
        ],
    )
    .await?;
    let now = now_ms();
    Ok(axum::Json(StreamList {
        streams: page.rows.iter().map(|r| to_out(&state, r, now)).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// The instructor's own streams with enrollment, revenue and viewer stats.
#[utoipa::path(get, path = "/v1/instructor/streams", tag = "streams", security(("identity" = [])),
    params(ListQuery),
    responses((status = 200, body = InstructorStreamList), (status = 400), (status = 401), (status = 403)))]
pub async fn instructor_list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    Instructor(me): Instructor,
) -> AppResult<axum::Json<InstructorStreamList>> {
    let q = query_or_400(query)?;
    let page = query_streams(&state, &q, Some(&me.user), &StreamStatus::ALL).await?;
    let now = now_ms();
    let mut streams = Vec::with_capacity(page.rows.len());
    for r in &page.rows {
        let (enrollments, revenue): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), CAST(COALESCE(SUM(price_paid), 0) AS BIGINT) FROM enrollments \
             WHERE stream_id = $1 AND status = 'active'",
        )
        .bind(&r.id)
        .fetch_one(&state.db.pool)
        .await?;
        let current = live_viewers(&state, &r.id);
        let peak = record_peak(&state, &r.id, r.peak_viewers, current).await?;
        streams.push(InstructorStream {
            stream: to_out(&state, r, now),
            stats: Stats {
                enrollments,
                revenue_tokens: revenue,
                peak_viewers: peak,
                current_viewers: current,
            },
        });
    }
    Ok(axum::Json(InstructorStreamList {
        streams,
        next_cursor: page.next_cursor,
    }))
}

/// Persists a new peak viewer count (never lowers it); returns the peak.
pub async fn record_peak(
    state: &AppState,
    id: &str,
    known_peak: i64,
    current: i64,
) -> Result<i64, sqlx::Error> {
    if current > known_peak {
        sqlx::query("UPDATE streams SET peak_viewers = $1 WHERE id = $2 AND peak_viewers < $1")
            .bind(current)
            .bind(id)
            .execute(&state.db.pool)
            .await?;
    }
    Ok(known_peak.max(current))
}

/// The stream as an RFC 5545 calendar event, with the watch URL.
#[utoipa::path(get, path = "/v1/streams/{id}/calendar.ics", tag = "streams",
    params(("id" = String, Path)),
    responses((status = 200, content_type = "text/calendar", body = String), (status = 404)))]
pub async fn calendar(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> AppResult<Response> {
    let mut conn = state.db.pool.acquire().await?;
    let row = load(&mut conn, &id).await?;
    let ics = ics_event(&row, &watch_url(&state, &row.id), now_ms());
    let mut resp = ics.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/calendar; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{}.ics\"", row.id)) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// UTC date-time in the RFC 5545 basic format (`20300131T180000Z`).
fn ics_time(ms: i64) -> String {
    // Clamped to years 0000-9999 (4-digit years, RFC 5545), so DTSTART/DTEND are
    // never empty even for rows stored before starts were bounded.
    const MIN_MS: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00Z
    const MAX_MS: i64 = 253_402_300_799_000; // 9999-12-31T23:59:59Z
    let ms = ms.clamp(MIN_MS, MAX_MS);
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

/// Escapes TEXT values (RFC 5545 §3.3.11).
fn ics_text(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace(';', "\\;")
        .replace(',', "\\,")
        .replace("\r\n", "\\n")
        .replace('\n', "\\n")
        .replace('\r', "")
}

/// Folds a content line at 75 octets (RFC 5545 §3.1), never inside a UTF-8 character.
fn fold(line: &str) -> String {
    let mut out = String::new();
    let mut width = 0;
    for ch in line.chars() {
        let n = ch.len_utf8();
        if width + n > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(ch);
        width += n;
    }
    out.push_str("\r\n");
    out
}

pub fn ics_event(r: &StreamRow, watch_url: &str, now: i64) -> String {
    let duration = r.duration_minutes.unwrap_or(60);
    let mut description = r.description.clone().unwrap_or_default();
    if !description.is_empty() {
        description.push_str("\n\n");
    }
    description.push_str(&format!("Watch: {watch_url}"));
    let status = if r.status == StreamStatus::Cancelled {
        "CANCELLED"
    } else {
        "CONFIRMED"
    };
    let lines = [
        "BEGIN:VCALENDAR".to_string(),
        "VERSION:2.0".to_string(),
        "PRODID:-//tandem//streams//EN".to_string(),
        "CALSCALE:GREGORIAN".to_string(),
        "METHOD:PUBLISH".to_string(),
        "BEGIN:VEVENT".to_string(),
        format!("UID:{}@tandem", r.id),
        format!("DTSTAMP:{}", ics_time(now)),
        format!("DTSTART:{}", ics_time(r.scheduled_start)),
        format!("DTEND:{}", ics_time(r.scheduled_start + duration * 60_000)),
        format!("SUMMARY:{}", ics_text(&r.title)),
        format!("DESCRIPTION:{}", ics_text(&description)),
        format!("URL:{watch_url}"),
        format!("STATUS:{status}"),
        "END:VEVENT".to_string(),
        "END:VCALENDAR".to_string(),
    ];
    lines.iter().map(|l| fold(l)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_status_text_is_the_stored_and_shown_value() {
        for status in StreamStatus::ALL {
            let text = status.as_str();
            assert_eq!(text.parse::<StreamStatus>(), Ok(status));
            assert_eq!(serde_json::to_value(status).unwrap(), text);
            assert_eq!(status.to_string(), text);
        }
        let stored: Vec<_> = StreamStatus::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(stored, ["scheduled", "live", "ended", "cancelled"]);
        assert!("Live".parse::<StreamStatus>().is_err());
    }

    #[test]
    fn folding_keeps_lines_within_75_octets() {
        let long = format!("DESCRIPTION:{}", "é".repeat(100));
        let folded = fold(&long);
        for line in folded.split("\r\n") {
            assert!(line.len() <= 75, "{} octets", line.len());
        }
        assert_eq!(folded.replace("\r\n ", ""), format!("{long}\r\n"));
    }

    #[test]
    fn cursor_round_trips() {
        let c = encode_cursor(1_700_000_000_000, "st_abc");
        assert_eq!(
            decode_cursor(&c),
            Some((1_700_000_000_000, "st_abc".into()))
        );
        assert_eq!(decode_cursor("!!"), None);
    }
}
