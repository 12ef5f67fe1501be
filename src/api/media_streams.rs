//! What the SFU is doing, for operators and for the pages: the operator view of
//! live media streams (`GET /v1/media/streams`, service key: MediaMTX's
//! `paths/list`), one stream's status for the watch and broadcast pages
//! (`GET /v1/media/streams/{stream}`, service key or a media token for it), and
//! the broadcast page's share link (`POST /v1/media/streams/{stream}/viewer-link`,
//! a publish token). Shapes in docs/API_NOTES.md, "Extensions to API.md".

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::Serialize;
use tandem_media::StreamSummary;
use tandem_media::registry::PublisherStatus;

use super::common::{rfc3339, rfc3339_opt, watch_url};
use super::streams::{self, StreamRow, StreamStatus};
use crate::auth::{Grants, MediaClaims, TokenRequest, bearer, now_secs, secrets_equal};
use crate::error::{AppError, AppResult};
use crate::extract::ServiceCaller;
use crate::state::AppState;

/// The stream the demo links printed at start publish and watch: the pages
/// wait for its broadcaster whatever the token.
const DEMO_STREAM: &str = "demo";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/media/streams", get(list))
        .route("/v1/media/streams/{stream}", get(status))
        .route("/v1/media/streams/{stream}/viewer-link", post(viewer_link))
}

/// A live stream's publisher in the operator view.
#[derive(Debug, Serialize)]
pub struct PublisherOut {
    /// RFC 3339: when its session connected.
    pub connected_since: String,
    /// MIME types, video first: `["video/VP8", "audio/opus"]`.
    pub codecs: Vec<String>,
    /// Media payload received over the last ~2 s, kbit/s.
    pub bitrate_kbps: u64,
    /// `udp` or `tcp` (ICE-TCP).
    pub transport: &'static str,
}

/// The business stream behind a media stream's name, when there is one.
#[derive(Debug, Serialize)]
pub struct BusinessOut {
    pub id: String,
    pub title: String,
    pub status: StreamStatus,
}

/// One media stream in the operator view.
#[derive(Debug, Serialize)]
pub struct MediaStreamOut {
    pub stream: String,
    pub publisher: Option<PublisherOut>,
    /// WHEP sessions held (connected or connecting).
    pub viewers: usize,
    /// RFC 3339: when its media began (first publisher connected); null before.
    pub started_at: Option<String>,
    /// Being recorded on this node now (docs/RECORDING.md).
    pub recorded: bool,
    /// Not built yet: always false.
    pub restreamed: bool,
    pub business: Option<BusinessOut>,
    /// The video encodings on offer (three with simulcast, one without, none
    /// before video arrives): `{rid, width, height, bitrate, active, …}` as the
    /// WHEP `layers` event lists them (docs/MEDIA.md "Simulcast").
    pub layers: Vec<tandem_media::LayerInfo>,
}

#[derive(Debug, Serialize)]
pub struct MediaStreamList {
    pub streams: Vec<MediaStreamOut>,
}

fn publisher_out(p: PublisherStatus) -> PublisherOut {
    PublisherOut {
        connected_since: rfc3339(p.connected_since_ms),
        codecs: p.codecs,
        bitrate_kbps: p.bitrate_kbps,
        transport: p.transport.as_str(),
    }
}

async fn business_row(state: &AppState, stream: &str) -> AppResult<Option<StreamRow>> {
    let mut conn = state.db.pool.acquire().await?;
    Ok(sqlx::query_as::<_, StreamRow>(&format!(
        "SELECT {} FROM streams WHERE id = $1",
        streams::COLUMNS
    ))
    .bind(stream)
    .fetch_optional(&mut *conn)
    .await?)
}

/// Who may list every stream: the service key, or an operator's media token — a
/// token for every stream (`*`) with the subscribe grant and no platform role,
/// which only the server's key can sign (`tandem token --stream '*' --subscribe`,
/// the `streams:` link printed at start). Such a token can already watch any
/// stream, so the list tells its holder nothing it could not see; it lets the
/// `/streams` dashboard work on a server started with no configuration.
pub struct Operator;

impl axum::extract::FromRequestParts<AppState> for Operator {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, AppError> {
        if let Some(token) = bearer(&parts.headers)
            && let Ok(claims) = state.tokens.verify(token)
        {
            if claims.stream.as_deref() == Some("*")
                && claims.grants.subscribe
                && claims.role.is_none()
            {
                return Ok(Operator);
            }
            return Err(AppError::forbidden(
                "this media token may not list streams: it takes the service key or an \
                 operator token for every stream (tandem token --stream '*' --subscribe)",
            ));
        }
        ServiceCaller::from_request_parts(parts, state)
            .await
            .map(|_| Operator)
    }
}

/// `GET /v1/media/streams` (service key or an operator token, [`Operator`]):
/// every stream the SFU holds (a publisher, viewers, or both), by name.
#[utoipa::path(get, path = "/v1/media/streams", tag = "media",
    security(("service_key" = []), ("media_token" = [])),
    responses((status = 200, description = "`{streams:[{stream, publisher:{connected_since, codecs, \
        bitrate_kbps, transport}|null, viewers, started_at, recorded, restreamed, \
        business:{id,title,status}|null}]}`"),
              (status = 401), (status = 403)))]
pub async fn list(
    State(state): State<AppState>,
    _operator: Operator,
) -> AppResult<axum::Json<MediaStreamList>> {
    let mut held: Vec<StreamSummary> = state.sfu.streams();
    held.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::with_capacity(held.len());
    for s in held {
        let business = business_row(&state, &s.name).await?.map(|r| BusinessOut {
            id: r.id,
            title: r.title,
            status: r.status,
        });
        out.push(MediaStreamOut {
            publisher: s.publisher.map(publisher_out),
            viewers: s.viewers,
            started_at: rfc3339_opt(s.started_at_ms),
            recorded: state.recordings.is_recording(&s.name),
            restreamed: state.restreams.is_restreaming(&s.name),
            business,
            layers: s.layers,
            stream: s.name,
        });
    }
    Ok(axum::Json(MediaStreamList { streams: out }))
}

/// Who asks for a stream's status.
enum Caller {
    Service,
    Token(MediaClaims),
}

/// The service key, or a media token valid for `stream` with a publish or a
/// subscribe grant: 401 without a credential or with a bad one, 403 for a token
/// of another stream (or one without either grant).
fn status_caller(state: &AppState, headers: &HeaderMap, stream: &str) -> AppResult<Caller> {
    let token = bearer(headers).ok_or_else(|| {
        AppError::unauthorized(
            "missing credential: send Authorization: Bearer <media token or service key>",
        )
    })?;
    let key = &state.config.service_key;
    if !key.is_empty() && secrets_equal(token, key) {
        return Ok(Caller::Service);
    }
    let claims = state.tokens.verify(token)?;
    if !claims.allows_stream(stream) {
        return Err(AppError::forbidden(format!(
            "the token is not valid for stream '{stream}'"
        )));
    }
    if !claims.grants.publish && !claims.grants.subscribe {
        return Err(AppError::forbidden(
            "the token grants neither publish nor subscribe",
        ));
    }
    Ok(Caller::Token(claims))
}

#[derive(Debug, Serialize)]
pub struct StatusPublisherOut {
    pub connected_since: String,
    pub codecs: Vec<String>,
    pub bitrate_kbps: u64,
}

#[derive(Debug, Serialize)]
pub struct StatusBusinessOut {
    pub id: String,
    pub title: String,
    pub status: StreamStatus,
    pub scheduled_start: String,
}

#[derive(Debug, Serialize)]
pub struct StreamStatusOut {
    pub stream: String,
    /// `waiting`, `live`, `ended` or `unknown`.
    pub state: &'static str,
    pub viewers: usize,
    pub publisher: Option<StatusPublisherOut>,
    pub business: Option<StatusBusinessOut>,
}

/// `GET /v1/media/streams/{stream}`: what the watch and broadcast pages show.
/// - `live`: a publisher session is connected;
/// - `ended`: a business stream that ended or was cancelled, or a publisher
///   that was live here and left (remembered for a while, until a new one);
/// - `waiting`: a business stream scheduled or live without a publisher, a
///   name the token names itself (not `*`), or the demo stream;
/// - `unknown`: anything else (a `*` token's misspelt name never seen).
#[utoipa::path(get, path = "/v1/media/streams/{stream}", tag = "media",
    security(("service_key" = []), ("media_token" = [])),
    params(("stream" = String, Path)),
    responses((status = 200, description = "`{stream, state: waiting|live|ended|unknown, viewers, \
        publisher:{connected_since, codecs, bitrate_kbps}|null, \
        business:{id,title,status,scheduled_start}|null}`"),
              (status = 401), (status = 403)))]
pub async fn status(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
) -> AppResult<axum::Json<StreamStatusOut>> {
    let caller = status_caller(&state, &headers, &stream)?;
    let valid = crate::text::valid_stream_name(&stream);
    let summary = valid.then(|| state.sfu.stream(&stream)).flatten();
    let row = if valid {
        business_row(&state, &stream).await?
    } else {
        None
    };
    let publisher = summary.as_ref().and_then(|s| s.publisher.clone());
    let named = matches!(&caller, Caller::Token(c) if c.stream.as_deref() == Some(stream.as_str()));
    let state_name = if publisher.is_some() {
        "live"
    } else if let Some(r) = &row {
        if r.status.is_open() {
            "waiting"
        } else {
            "ended"
        }
    } else if valid && state.sfu.recently_ended(&stream) {
        "ended"
    } else if valid && (named || stream == DEMO_STREAM) {
        "waiting"
    } else {
        "unknown"
    };
    Ok(axum::Json(StreamStatusOut {
        viewers: summary.as_ref().map_or(0, |s| s.viewers),
        publisher: publisher.map(|p| StatusPublisherOut {
            connected_since: rfc3339(p.connected_since_ms),
            codecs: p.codecs,
            bitrate_kbps: p.bitrate_kbps,
        }),
        business: row.map(|r| StatusBusinessOut {
            scheduled_start: rfc3339(r.scheduled_start),
            id: r.id,
            title: r.title,
            status: r.status,
        }),
        state: state_name,
        stream,
    }))
}

#[derive(Debug, Serialize)]
pub struct ViewerLinkOut {
    /// A subscribe-only media token for the stream.
    pub token: String,
    /// `{public_url}/watch/{stream}?token=…`
    pub watch_url: String,
    /// RFC 3339; never later than the publish token's expiry.
    pub expires_at: String,
}

/// `POST /v1/media/streams/{stream}/viewer-link` (a publish token for the
/// stream): a link for the broadcaster to share. Not for business streams:
/// their viewers enroll (paid) and get their own tokens.
#[utoipa::path(post, path = "/v1/media/streams/{stream}/viewer-link", tag = "media",
    security(("media_token" = [])),
    params(("stream" = String, Path)),
    responses((status = 201, description = "`{token, watch_url, expires_at}`: a subscribe-only token"),
              (status = 401), (status = 403), (status = 404),
              (status = 409, description = "business_stream: viewers enroll")))]
pub async fn viewer_link(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
) -> AppResult<(StatusCode, axum::Json<ViewerLinkOut>)> {
    let token = bearer(&headers).ok_or_else(|| {
        AppError::unauthorized("missing publish token: send Authorization: Bearer <token>")
    })?;
    let claims = state.tokens.verify(token)?;
    if !claims.allows_stream(&stream) {
        return Err(AppError::forbidden(format!(
            "the token is not valid for stream '{stream}'"
        )));
    }
    if !claims.grants.publish {
        return Err(AppError::forbidden(
            "a viewer link needs the stream's publish token",
        ));
    }
    if !crate::text::valid_stream_name(&stream) {
        return Err(AppError::not_found(
            "unknown stream: names are 1-128 characters of A-Z a-z 0-9 _ . : -",
        ));
    }
    let row = business_row(&state, &stream).await?;
    if let Some(role) = claims.role.as_deref() {
        // Platform users' tokens: only the stream's owner (or an admin) learns
        // more than "no".
        let staff = role == "admin" || row.as_ref().is_some_and(|r| r.instructor_id == claims.sub);
        if !staff {
            return Err(AppError::forbidden(
                "only the stream's owner may ask for its viewer link",
            ));
        }
    }
    if row.is_some() {
        return Err(AppError::conflict(
            "business_stream",
            format!(
                "'{stream}' is a business stream: viewers enroll and get their own link; \
                 share {} instead",
                watch_url(&state, &stream)
            ),
        ));
    }
    // Expires no later than the publish token it came from: a link cannot
    // outlive the broadcaster's own access.
    // (One second of margin: the mint reads the clock again.)
    let left = claims.exp.saturating_sub(now_secs() + 1).max(1);
    let (token, minted) = state.tokens.mint(&TokenRequest {
        user: format!("link:{}", claims.sub),
        stream: Some(stream.clone()),
        grants: Grants {
            subscribe: true,
            ..Default::default()
        },
        // No role: like the demo links, meant to be shared (held to the
        // server-wide limits only; docs/MEDIA.md "Who is exempt").
        role: None,
        ttl_secs: left,
        ..Default::default()
    });
    let watch = format!("{}?token={}", watch_url(&state, &stream), token);
    Ok((
        StatusCode::CREATED,
        axum::Json(ViewerLinkOut {
            token,
            watch_url: watch,
            expires_at: rfc3339(minted.exp as i64 * 1000),
        }),
    ))
}
