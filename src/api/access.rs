//! The business side of WHIP/WHEP session starts: a viewer token minted for an
//! enrollment is re-checked against it, and the owner's WHIP may start the stream.
//!
//! Called from `whip.rs` after the media token itself was verified. A call's
//! streams (`call:{id}:{user}`) and room (`call:{id}`) are checked by
//! `calls`. Streams that are not business streams (demo, rooms) pass through
//! untouched, and so do operator tokens for any stream (`stream: "*"`).

use axum::http::StatusCode;
use tandem_media::SessionKind;

use super::enrollment::watch_refusal;
use super::enrollment_records::{EnrollmentRow, enrollment_of};
use super::streams::{self, StreamRow};
use crate::auth::MediaClaims;
use crate::clock::now_ms;
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// Checks a session about to start. Refuses (403) a WHEP viewer whose enrollment
/// was refunded or whose replay window closed, and (409) publishing to a stream
/// that ended or was cancelled.
pub async fn check_session(
    state: &AppState,
    claims: &MediaClaims,
    stream: &str,
    kind: SessionKind,
) -> AppResult<()> {
    // A call's streams (`call:{id}:{user}`) have their own rules (api::calls).
    if super::calls::parse_stream(stream).is_some() {
        return super::calls::check_session(state, claims, stream, kind).await;
    }
    // Another node's edge pulling the stream (a token this cluster minted with
    // its own key, for this stream, subscribe only): the edge checks its own
    // viewers; the origin does not ask for an enrollment.
    if kind == SessionKind::Viewer
        && claims.role.as_deref() == Some(crate::cluster::edge::NODE_ROLE)
    {
        return Ok(());
    }
    let mut conn = state.db.pool.acquire().await?;
    let row: Option<StreamRow> = sqlx::query_as(&format!(
        "SELECT {} FROM streams WHERE id = $1",
        streams::COLUMNS
    ))
    .bind(stream)
    .fetch_optional(&mut *conn)
    .await?;
    // A grant recorded by /viewer-token ties the token to its enrollment.
    let granted: Option<EnrollmentRow> = sqlx::query_as(
        "SELECT e.id, e.user_id, e.stream_id, e.price_paid, e.status, e.transaction_id, \
         e.created_at, e.refunded_at FROM media_grants g JOIN enrollments e ON e.id = g.enrollment_id \
         WHERE g.jti = $1",
    )
    .bind(&claims.jti)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(());
    };
    let now = now_ms();
    let wildcard = claims.stream.as_deref() == Some("*");
    match kind {
        SessionKind::Viewer => {
            if row.instructor_id == claims.sub || (wildcard && granted.is_none()) {
                return Ok(());
            }
            let enrollment = match granted {
                Some(e) => Some(e),
                None => enrollment_of(&mut conn, &claims.sub, stream).await?,
            };
            match watch_refusal(&row, enrollment.as_ref(), now) {
                Some(err) => Err(err),
                None => Ok(()),
            }
        }
        SessionKind::Publisher => {
            if !row.status.is_open() {
                return Err(AppError::new(
                    StatusCode::CONFLICT,
                    "stream_closed",
                    format!("the stream is {}; it cannot be published again", row.status),
                ));
            }
            let admin = claims.role.as_deref() == Some("admin");
            if !wildcard && !admin && row.instructor_id != claims.sub {
                return Err(AppError::forbidden(
                    "only the stream's instructor may publish it",
                ));
            }
            Ok(())
        }
    }
}

/// After a publisher session was created: whether its stream was ended or
/// cancelled meanwhile (between `check_session` and the SFU building the
/// session, `POST …/end` may have run and closed the sessions it found). The
/// caller then closes the new session and answers 409 `stream_closed`.
pub async fn closed_meanwhile(state: &AppState, stream: &str) -> AppResult<Option<AppError>> {
    if super::calls::parse_stream(stream).is_some() {
        return super::calls::closed_meanwhile(state, stream).await;
    }
    let mut conn = state.db.pool.acquire().await?;
    let status: Option<(streams::StreamStatus,)> =
        sqlx::query_as("SELECT status FROM streams WHERE id = $1")
            .bind(stream)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(status.filter(|(s,)| !s.is_open()).map(|(s,)| {
        AppError::new(
            StatusCode::CONFLICT,
            "stream_closed",
            format!("the stream is {s}; it cannot be published again"),
        )
    }))
}

/// After a session started: the owner's WHIP turns a scheduled stream live (when
/// configured); a WHEP viewer may raise the persisted peak viewer count.
pub async fn session_started(
    state: &AppState,
    claims: &MediaClaims,
    stream: &str,
    kind: SessionKind,
) {
    let result: Result<(), sqlx::Error> = async {
        let mut conn = state.db.pool.acquire().await?;
        match kind {
            SessionKind::Publisher if state.config.api.whip_starts_stream => {
                let owner: Option<(String,)> =
                    sqlx::query_as("SELECT instructor_id FROM streams WHERE id = $1")
                        .bind(stream)
                        .fetch_optional(&mut *conn)
                        .await?;
                if owner.is_some_and(|(o,)| o == claims.sub)
                    && streams::go_live(&mut conn, stream, now_ms()).await?
                {
                    tracing::info!(stream, "owner's WHIP session started the stream");
                    // The pushes start beside the answer: resolving a destination
                    // may call its platform, and the WHIP answer must not wait.
                    let (state, stream) = (state.clone(), stream.to_string());
                    tokio::spawn(async move {
                        super::destinations::go_live(&state, &stream).await;
                    });
                }
            }
            SessionKind::Viewer => {
                let current = streams::live_viewers(state, stream);
                if current > 0 {
                    sqlx::query(
                        "UPDATE streams SET peak_viewers = $1 WHERE id = $2 AND peak_viewers < $1",
                    )
                    .bind(current)
                    .bind(stream)
                    .execute(&mut *conn)
                    .await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    .await;
    if let Err(err) = result {
        tracing::warn!(error = %err, stream, "updating the stream after a session start");
    }
}

/// Who may be in the room of a business stream (a room named after a stream id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomAccess {
    /// The room is not a business stream's: any holder of a room token may join.
    Open,
    /// The stream's owner or an admin: joins and moderates.
    Staff,
    /// A user with an active enrollment in the stream (free streams too:
    /// enrollment is the gate there as for `viewer-token`).
    Enrolled,
}

/// Decides whether `user` (with platform role `role`) may be in `room`. The room of
/// a business stream admits its owner, admins and active enrollees only; anyone
/// else gets 403 `not_enrolled`. Called when a room token is minted and again when
/// the WebSocket connects (tokens live hours; a refund in between must count).
pub async fn room_access(
    state: &AppState,
    room: &str,
    user: &str,
    role: Option<&str>,
) -> AppResult<RoomAccess> {
    // A call's room admits its participants (not removed) while it runs.
    if let Some(call) = room.strip_prefix("call:") {
        return Ok(match super::calls::room_staff(state, call, user).await? {
            true => RoomAccess::Staff,
            false => RoomAccess::Enrolled,
        });
    }
    let mut conn = state.db.pool.acquire().await?;
    let owner: Option<(String,)> =
        sqlx::query_as("SELECT instructor_id FROM streams WHERE id = $1")
            .bind(room)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((owner,)) = owner else {
        return Ok(RoomAccess::Open);
    };
    if owner == user || role == Some("admin") {
        return Ok(RoomAccess::Staff);
    }
    let active: Option<(String,)> = sqlx::query_as(
        "SELECT id FROM enrollments WHERE user_id = $1 AND stream_id = $2 AND status = 'active'",
    )
    .bind(user)
    .bind(room)
    .fetch_optional(&mut *conn)
    .await?;
    match active {
        Some(_) => Ok(RoomAccess::Enrolled),
        None => Err(AppError::new(
            StatusCode::FORBIDDEN,
            "not_enrolled",
            "this room is the chat of a stream: only its enrolled viewers, its instructor \
             and admins may join; enroll in the stream first",
        )),
    }
}
