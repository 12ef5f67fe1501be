//! Restream destinations of a stream (API.md, "Platform fan-out"): which of the
//! owner's platform connections a class is pushed to, and how each push is doing.
//!
//! - `PUT /v1/streams/{id}/destinations` `[{connection_id}]` (owner): replaces the
//!   set in one transaction. While the stream is live, new destinations start and
//!   dropped ones stop within seconds; the others are not touched.
//! - `GET` the same path: each destination with its status (`idle` while the
//!   stream is not live).
//! - `GET …/destinations/events` (owner): `text/event-stream`, first the status of
//!   every destination, then each change as it happens (event `status`).
//!
//! The pushes themselves belong to [`crate::restream::Restreams`]; this module
//! decides when they run: [`go_live`] (`POST …/start`, the owner's WHIP going
//! live, a PUT while live, a server start that finds the stream live) and
//! [`stop`] (`end`, `cancel`). Resolving a connection into its RTMP URL may call
//! the platform (YouTube creates a broadcast for the class), so it happens once
//! per destination per class: a destination already running is handed back as
//! [`Target::Keep`], and one resolution runs at a time per stream.
//!
//! Imports `common` and `crate::platforms`; the stream row is read here, not
//! through `streams` (which calls [`go_live`] and [`stop`]).

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde::{Deserialize, Serialize};
use sqlx::AnyConnection;
use utoipa::ToSchema;

use super::common::{begin_write, parse_json, rfc3339};
use crate::auth::{Identity, Role};
use crate::clock::now_ms;
use crate::error::{AppError, AppResult};
use crate::extract::Instructor;
use crate::platforms::connections::{owned_connection, resolve_target};
use crate::restream::{DestinationSpec, DestinationStatus, Status, Target};
use crate::state::AppState;

/// Most destinations one stream may have (each is one ffmpeg process while live).
pub const MAX_DESTINATIONS: usize = 8;

/// How often an idle event stream says it is still there.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/streams/{id}/destinations", put(replace).get(list))
        .route("/v1/streams/{id}/destinations/events", get(events))
}

/// One entry of the PUT body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DestinationIn {
    /// A platform connection of the stream's owner (`POST /v1/platform-connections`).
    pub connection_id: String,
}

/// A destination and how its push is doing.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DestinationOut {
    pub connection_id: String,
    pub platform: String,
    /// The connection's name, as its owner gave it.
    pub name: String,
    /// `idle` (not live, or waiting to start), `connecting`, `live`, `retrying`
    /// (dropped; the next attempt is scheduled), `failed` (given up: see `last_error`).
    pub status: Status,
    /// Attempts since the push last was live.
    pub attempts: u32,
    /// Why the last attempt ended; never a key or a URL with one.
    pub last_error: Option<String>,
    /// When `status` last changed (RFC 3339).
    pub since: String,
    /// Bytes sent to the platform by the current process.
    pub bytes_sent: u64,
}

/// The stream's row as this module needs it.
struct StreamInfo {
    owner: String,
    status: String,
    title: String,
}

async fn stream_info(conn: &mut AnyConnection, id: &str) -> AppResult<StreamInfo> {
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT instructor_id, status, title FROM streams WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let (owner, status, title) = row.ok_or_else(|| AppError::not_found("no such stream"))?;
    Ok(StreamInfo {
        owner,
        status,
        title,
    })
}

/// The stream, if `who` owns it (or is an admin).
async fn owned(conn: &mut AnyConnection, id: &str, who: &Identity) -> AppResult<StreamInfo> {
    let info = stream_info(conn, id).await?;
    if info.owner != who.user && who.role != Role::Admin {
        return Err(AppError::forbidden(
            "this stream belongs to another instructor",
        ));
    }
    Ok(info)
}

/// `(connection_id, created_at)` of a stream's destinations, in the owner's order.
async fn rows(conn: &mut AnyConnection, id: &str) -> AppResult<Vec<(String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT connection_id, created_at FROM stream_destinations \
         WHERE stream_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?)
}

/// Replace a stream's destinations (owner). Changeable while live.
#[utoipa::path(put, path = "/v1/streams/{id}/destinations", tag = "restream",
    security(("identity" = [])), params(("id" = String, Path)),
    request_body = Vec<DestinationIn>,
    responses((status = 200, body = Vec<DestinationOut>), (status = 400), (status = 401),
              (status = 403), (status = 404, description = "no such stream, or a connection that is not the owner's")))]
pub async fn replace(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Instructor(me): Instructor,
    headers: HeaderMap,
    body: Bytes,
) -> AppResult<axum::Json<Vec<DestinationOut>>> {
    let wanted: Vec<DestinationIn> = parse_json(&headers, &body)?;
    let mut conn = state.db.pool.acquire().await?;
    let info = owned(&mut conn, &id, &me).await?;
    drop(conn);
    if wanted.len() > MAX_DESTINATIONS {
        return Err(AppError::bad_request(format!(
            "a stream has at most {MAX_DESTINATIONS} destinations"
        ))
        .with("field", "body"));
    }
    let mut seen = HashSet::new();
    for (i, d) in wanted.iter().enumerate() {
        if !seen.insert(d.connection_id.as_str()) {
            return Err(AppError::bad_request(format!(
                "connection {} is listed twice",
                d.connection_id
            ))
            .with("field", format!("[{i}].connection_id")));
        }
        // Another instructor's connection is as unknown as a missing one.
        owned_connection(&state, &info.owner, &d.connection_id)
            .await
            .map_err(|e| e.with("field", format!("[{i}].connection_id")))?;
    }
    let now = now_ms();
    let mut tx = begin_write(&state.db).await?;
    sqlx::query("DELETE FROM stream_destinations WHERE stream_id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    for (position, d) in wanted.iter().enumerate() {
        sqlx::query(
            "INSERT INTO stream_destinations (stream_id, connection_id, position, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(&d.connection_id)
        .bind(position as i64)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    if info.status == "live" {
        go_live(&state, &id).await;
    }
    Ok(axum::Json(current(&state, &id).await?))
}

/// A stream's destinations with their status (owner).
#[utoipa::path(get, path = "/v1/streams/{id}/destinations", tag = "restream",
    security(("identity" = [])), params(("id" = String, Path)),
    responses((status = 200, body = Vec<DestinationOut>), (status = 401), (status = 403), (status = 404)))]
pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Instructor(me): Instructor,
) -> AppResult<axum::Json<Vec<DestinationOut>>> {
    let mut conn = state.db.pool.acquire().await?;
    owned(&mut conn, &id, &me).await?;
    drop(conn);
    Ok(axum::Json(current(&state, &id).await?))
}

/// The stored destinations of `id`, each with the push's status when one runs.
async fn current(state: &AppState, id: &str) -> AppResult<Vec<DestinationOut>> {
    let mut conn = state.db.pool.acquire().await?;
    let owner = stream_info(&mut conn, id).await?.owner;
    let stored = rows(&mut conn, id).await?;
    drop(conn);
    let running = state.restreams.status(id);
    let mut out = Vec::with_capacity(stored.len());
    for (connection_id, created_at) in stored {
        let Ok(connection) = owned_connection(state, &owner, &connection_id).await else {
            continue; // deleted meanwhile (the cascade takes the row too)
        };
        let live = running.iter().find(|s| s.connection_id == connection_id);
        out.push(merge(
            connection.platform,
            connection.name,
            connection_id,
            created_at,
            live,
        ));
    }
    Ok(out)
}

fn merge(
    platform: String,
    name: String,
    connection_id: String,
    created_at: i64,
    live: Option<&DestinationStatus>,
) -> DestinationOut {
    match live {
        Some(s) => DestinationOut {
            connection_id,
            platform,
            name,
            status: s.status,
            attempts: s.attempts,
            last_error: s.last_error.clone(),
            since: s.since.clone(),
            bytes_sent: s.bytes_sent,
        },
        None => DestinationOut {
            connection_id,
            platform,
            name,
            status: Status::Idle,
            attempts: 0,
            last_error: None,
            since: rfc3339(created_at),
            bytes_sent: 0,
        },
    }
}

/// `text/event-stream` of a stream's destination statuses (owner): event
/// `status`, data one [`DestinationStatus`]; first every destination's current
/// status, then each change.
#[utoipa::path(get, path = "/v1/streams/{id}/destinations/events", tag = "restream",
    security(("identity" = [])), params(("id" = String, Path)),
    responses((status = 200, content_type = "text/event-stream",
               description = "event `status`, data a destination (as in GET …/destinations)"),
              (status = 401), (status = 403), (status = 404)))]
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Instructor(me): Instructor,
) -> AppResult<Response> {
    let mut conn = state.db.pool.acquire().await?;
    owned(&mut conn, &id, &me).await?;
    drop(conn);
    // Subscribed before the snapshot is read: a change between the two is sent
    // twice rather than never.
    let changes = state.restreams.subscribe(&id);
    let snapshot = current(&state, &id).await?;
    let first = futures_util::stream::iter(
        snapshot
            .into_iter()
            .map(|d| Ok::<_, Infallible>(status_event(&d))),
    );
    let rest = futures_util::stream::unfold(changes, |mut changes| async move {
        loop {
            match changes.recv().await {
                Ok(s) => return Some((Ok(status_event(&s)), changes)),
                // A slow reader missed some: the next change still tells the truth.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures_util::StreamExt;
    Ok(Sse::new(first.chain(rest))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response())
}

fn status_event(value: &impl Serialize) -> Event {
    Event::default()
        .event("status")
        .data(serde_json::to_string(value).unwrap_or_default())
}

/// The stream is live (or its destinations changed while live): every stored
/// destination runs, resolved into its push URL, and nothing else does.
/// Errors are logged and shown as the destination's `last_error`: a push that
/// cannot start never stops the class.
pub async fn go_live(state: &AppState, id: &str) {
    if let Err(err) = try_go_live(state, id).await {
        tracing::warn!(stream = id, error = %err.message, "restream destinations could not be read");
    }
}

async fn try_go_live(state: &AppState, id: &str) -> AppResult<()> {
    // One resolution at a time per stream: two quick PUTs must not create two
    // YouTube broadcasts for one destination.
    let _turn = state.restreams.lock(id).await;
    let mut conn = state.db.pool.acquire().await?;
    let info = stream_info(&mut conn, id).await?;
    if info.status != "live" {
        return Ok(());
    }
    let stored = rows(&mut conn, id).await?;
    drop(conn);
    let running: HashSet<String> = state
        .restreams
        .status(id)
        .into_iter()
        .filter(|s| s.status != Status::Failed)
        .map(|s| s.connection_id)
        .collect();
    let mut specs = Vec::with_capacity(stored.len());
    for (connection_id, _) in stored {
        if running.contains(&connection_id) {
            let platform = owned_connection(state, &info.owner, &connection_id)
                .await
                .map(|c| c.platform)
                .unwrap_or_default();
            specs.push(DestinationSpec {
                connection_id,
                platform,
                target: Target::Keep,
            });
            continue;
        }
        let spec = match resolve_target(state, &info.owner, &connection_id, &info.title).await {
            Ok(t) => DestinationSpec {
                connection_id,
                platform: t.platform,
                target: Target::Url(t.url),
            },
            Err(err) => {
                let platform = owned_connection(state, &info.owner, &connection_id)
                    .await
                    .map(|c| c.platform)
                    .unwrap_or_default();
                DestinationSpec {
                    connection_id,
                    platform,
                    target: Target::Unavailable(err.message),
                }
            }
        };
        specs.push(spec);
    }
    state.restreams.set(id, specs);
    Ok(())
}

/// The stream ended or was cancelled: every push stops.
pub fn stop(state: &AppState, id: &str) {
    state.restreams.stop(id);
}

/// At start: every live stream with destinations pushes again (a restart kills
/// the children with the process).
pub async fn resume_all(state: &AppState) {
    let live: Result<Vec<(String,)>, sqlx::Error> = sqlx::query_as(
        "SELECT DISTINCT d.stream_id FROM stream_destinations d \
         JOIN streams s ON s.id = d.stream_id WHERE s.status = 'live'",
    )
    .fetch_all(&state.db.pool)
    .await;
    match live {
        Ok(ids) => {
            for (id,) in ids {
                go_live(state, &id).await;
            }
        }
        Err(err) => tracing::warn!(error = %err, "live streams' destinations could not be read"),
    }
}
