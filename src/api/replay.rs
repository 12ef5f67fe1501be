//! Replay (API.md, "Recording and replay"): who may watch a stream's recording,
//! the signed HLS URL they get, the files behind it, and the thumbnail.
//!
//! - `GET /v1/streams/{id}/replay` (identity): the owner, an admin, or a user
//!   enrolled with replay access gets `{hls_url, expires_at, duration_seconds,
//!   thumbnail_url, codecs}`. The URL is `/v1/replay/{token}/master.m3u8`: the
//!   token is a path segment, so the playlists' relative URIs (segments, parts,
//!   the init segment) carry it without rewriting a playlist per user.
//! - `GET /v1/replay/{token}/{file}`: one file of the recording the token was
//!   signed for, with `Range`, the HLS MIME types and CORS. The token names the
//!   user, the stream and the recording's folder; it expires at the end of the
//!   replay window (or 24 h after it was issued, whichever is first), and the
//!   stream's row is read on every playlist request, so a replay that closed
//!   early (expiry job, deleted recording) stops at once.
//! - `GET /v1/streams/{id}/thumbnail.jpg` (anyone): the recording's latest
//!   key frame.

use std::path::{Path as FsPath, PathBuf};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use super::common::{rfc3339, rfc3339_opt};
use super::enrollment::watch_refusal;
use super::enrollment_records::enrollment_of;
use super::streams::{self, StreamRow, StreamStatus};
use crate::auth::Role;
use crate::clock::{now_ms, now_secs};
use crate::error::{AppError, AppResult};
use crate::extract::Identity;
use crate::recording::live::THUMBNAIL;
use crate::state::AppState;

/// The longest a replay URL lives (it is asked for again after that).
pub const MAX_REPLAY_URL_SECS: u64 = 24 * 3600;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/streams/{id}/replay", get(replay))
        .route("/v1/streams/{id}/thumbnail.jpg", get(thumbnail))
        .route("/v1/replay/{token}/{file}", get(replay_file))
}

/// What `GET /v1/streams/{id}/replay` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayOut {
    /// The multivariant playlist, signed for this recording and this user.
    pub hls_url: String,
    /// When `hls_url` stops working (never after the replay window closes).
    pub expires_at: String,
    /// The recording's length; null while the stream is still live.
    pub duration_seconds: Option<f64>,
    pub thumbnail_url: String,
    /// RFC 6381 codecs of the recording (null while live).
    pub codecs: Option<String>,
    /// True while the stream is live: the playlist still grows.
    pub live: bool,
}

/// The recording's folder name (`rec_…`) from its stored path.
fn recording_id(row: &StreamRow) -> Option<String> {
    let path = row.recording_path.as_deref()?;
    FsPath::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
}

/// The signed replay URL of a stream's recording.
#[utoipa::path(get, path = "/v1/streams/{id}/replay", tag = "replay", security(("identity" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = ReplayOut), (status = 401),
              (status = 403, description = "not_enrolled, replay_expired"),
              (status = 404, description = "no stream, or no_recording")))]
pub async fn replay(
    State(state): State<AppState>,
    Path(id): Path<String>,
    who: Identity,
) -> AppResult<axum::Json<ReplayOut>> {
    let mut conn = state.db.pool.acquire().await?;
    let row = streams::load(&mut conn, &id).await?;
    let now = now_ms();
    let staff = row.instructor_id == who.user || who.role == Role::Admin;
    if !staff {
        let enrollment = enrollment_of(&mut conn, &who.user, &id).await?;
        if let Some(err) = watch_refusal(&row, enrollment.as_ref(), now) {
            return Err(err);
        }
    }
    let (Some(rec), true) = (recording_id(&row), row.has_recording()) else {
        return Err(no_recording(&row));
    };
    let window_end = replay_end_secs(&row, now)?;
    let exp = window_end.min(now_secs() + MAX_REPLAY_URL_SECS);
    let token = state.tokens.mint_replay(&who.user, &id, &rec, exp);
    Ok(axum::Json(ReplayOut {
        hls_url: format!("{}/v1/replay/{token}/master.m3u8", state.public_url),
        expires_at: rfc3339(exp as i64 * 1000),
        duration_seconds: row.recording_duration_ms.map(|ms| ms as f64 / 1000.0),
        thumbnail_url: format!("{}/v1/streams/{id}/thumbnail.jpg", state.public_url),
        codecs: row.recording_codecs.clone(),
        live: row.status == StreamStatus::Live,
    }))
}

fn no_recording(row: &StreamRow) -> AppError {
    let msg = if row.recording_deleted_at.is_some() {
        "the recording was deleted when its replay window closed"
    } else if row.status == StreamStatus::Ended {
        "this stream was not recorded"
    } else {
        "nothing is recorded yet: the recording starts when the stream's publisher connects"
    };
    AppError::new(StatusCode::NOT_FOUND, "no_recording", msg)
}

/// Until when (unix seconds) the recording may be watched: the replay window's
/// end once the stream ended; while live, as long as a URL lives.
fn replay_end_secs(row: &StreamRow, now: i64) -> AppResult<u64> {
    match row.status {
        StreamStatus::Ended => {
            if !row.replay_open(now) {
                return Err(AppError::new(
                    StatusCode::FORBIDDEN,
                    "replay_expired",
                    "the replay window of this stream has closed",
                )
                .with("replay_expires_at", rfc3339_opt(row.replay_expires_at)));
            }
            Ok(row
                .replay_expires_at
                .map(|t| (t / 1000) as u64)
                .unwrap_or(0))
        }
        _ => Ok(now_secs() + MAX_REPLAY_URL_SECS),
    }
}

/// A file name of a recording: plain ASCII, no path, a known kind.
fn content_type(file: &str) -> Option<&'static str> {
    let plain = !file.is_empty()
        && file.len() <= 64
        && !file.starts_with('.')
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !plain {
        return None;
    }
    let ext = file.rsplit_once('.')?.1;
    Some(match ext {
        "m3u8" => "application/vnd.apple.mpegurl",
        "mp4" => "video/mp4",
        "m4s" => "video/iso.segment",
        "jpg" => "image/jpeg",
        _ => return None,
    })
}

/// The folder of a stored recording path (relative to the data directory, or
/// absolute when the recording root is elsewhere), only inside the root.
fn recording_folder(state: &AppState, stored: &str) -> Option<PathBuf> {
    let p = FsPath::new(stored);
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return None;
    }
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        state.config.data_dir.join(p)
    };
    full.starts_with(state.recordings.root()).then_some(full)
}

/// One file of a recording, for the holder of a replay token (`Range` honoured).
#[utoipa::path(get, path = "/v1/replay/{token}/{file}", tag = "replay",
    params(("token" = String, Path, description = "from `hls_url`"),
           ("file" = String, Path, description = "master.m3u8, index.m3u8, init.mp4, segNNNNN.m4s")),
    responses((status = 200), (status = 206, description = "a byte range"),
              (status = 400, description = "not a recording's file name"),
              (status = 401, description = "the token is not valid"),
              (status = 403, description = "replay_expired"),
              (status = 404, description = "no_recording, or no such file")))]
pub async fn replay_file(
    State(state): State<AppState>,
    Path((token, file)): Path<(String, String)>,
    req: axum::extract::Request,
) -> Response {
    match serve_replay_file(&state, &token, &file, req).await {
        Ok(r) => r,
        Err(e) => with_cors(e.into_response()),
    }
}

async fn serve_replay_file(
    state: &AppState,
    token: &str,
    file: &str,
    req: axum::extract::Request,
) -> AppResult<Response> {
    let Some(mime) = content_type(file) else {
        return Err(AppError::bad_request(
            "not a file of a recording: names are [A-Za-z0-9._-] ending in .m3u8, .mp4, .m4s or .jpg",
        ));
    };
    let claims = state.tokens.verify_replay(token)?;
    let mut conn = state.db.pool.acquire().await?;
    let row = streams::load(&mut conn, &claims.stream).await?;
    drop(conn);
    if recording_id(&row).as_deref() != Some(claims.rec.as_str()) || !row.has_recording() {
        return Err(no_recording(&row));
    }
    if row.status == StreamStatus::Ended && !row.replay_open(now_ms()) {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "replay_expired",
            "the replay window of this stream has closed",
        ));
    }
    let folder = row
        .recording_path
        .as_deref()
        .and_then(|p| recording_folder(state, p))
        .ok_or_else(|| AppError::not_found("the recording is not on this server"))?;
    let path = folder.join(file);
    if !path.is_file() {
        return Err(AppError::not_found(format!(
            "no file '{file}' in this recording"
        )));
    }
    // Playlists change while live and segments grow part by part: nobody caches
    // them until the recording is finished.
    let cache = if row.status == StreamStatus::Ended && !file.ends_with(".m3u8") {
        "private, max-age=3600"
    } else {
        "no-cache"
    };
    Ok(with_cors(serve_file(&path, req, mime, cache).await))
}

/// A file of a recording with `Range` support (tower-http's `ServeFile`), its
/// MIME type and caching as given.
async fn serve_file(
    path: &FsPath,
    req: axum::extract::Request,
    mime: &'static str,
    cache: &'static str,
) -> Response {
    use tower::ServiceExt;
    let served = match tower_http::services::ServeFile::new(path)
        .oneshot(req)
        .await
    {
        Ok(r) => r.into_response(),
        Err(never) => match never {},
    };
    let (mut parts, body) = served.into_parts();
    let h = &mut parts.headers;
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    Response::from_parts(parts, body)
}

/// Replay files are fetched by players on other origins (the platform's own
/// pages): the token is the credential, not a cookie, so any origin may read.
fn with_cors(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    if !h.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("content-length, content-range, accept-ranges"),
        );
    }
    resp
}

/// The stream's latest key frame as JPEG (anyone).
#[utoipa::path(get, path = "/v1/streams/{id}/thumbnail.jpg", tag = "replay",
    params(("id" = String, Path)),
    responses((status = 200, content_type = "image/jpeg"), (status = 404)))]
pub async fn thumbnail(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: axum::extract::Request,
) -> AppResult<Response> {
    let mut conn = state.db.pool.acquire().await?;
    let row = streams::load(&mut conn, &id).await?;
    drop(conn);
    let folder = match (row.has_recording(), row.recording_path.as_deref()) {
        (true, Some(p)) => recording_folder(&state, p),
        _ => None,
    };
    let path = folder.map(|f| f.join(THUMBNAIL)).filter(|p| p.is_file());
    let Some(path) = path else {
        return Err(AppError::not_found(
            "no picture of this stream yet: one is taken from a key frame while it is recorded",
        ));
    };
    Ok(serve_file(&path, req, "image/jpeg", "public, max-age=10").await)
}

#[cfg(test)]
mod tests {
    use super::content_type;

    #[test]
    fn only_plain_recording_file_names_are_served() {
        assert_eq!(
            content_type("master.m3u8"),
            Some("application/vnd.apple.mpegurl")
        );
        assert_eq!(content_type("seg00001.m4s"), Some("video/iso.segment"));
        assert_eq!(content_type("init.mp4"), Some("video/mp4"));
        for bad in [
            "",
            "..",
            "../x.m3u8",
            ".hidden.m3u8",
            "a/b.m4s",
            "recording.json",
            "x.m3u8%00",
            "seg.m4s.tmp",
            "x\\y.mp4",
        ] {
            assert_eq!(content_type(bad), None, "{bad:?}");
        }
    }
}
