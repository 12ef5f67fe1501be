//! WHIP ingest and WHEP egress (RFC 9725 and its WHEP sibling) over the SFU:
//! token checks, content types, size limits, ETag/If-Match, CORS and ICE server links.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use tandem_media::{MediaError, PatchOutcome, SessionHolder, SessionKind, SessionSummary};
use tokio::sync::mpsc;

use crate::auth::{MediaClaims, bearer};
use crate::clock::now_ms;
use crate::config::IceServer;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use crate::storage::Db;

const SDP: &str = "application/sdp";
const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

pub fn routes() -> Router<AppState> {
    Router::new()
        // OPTIONS never reaches these routes: the CORS layer answers it and
        // `options_headers` adds what WHIP/WHEP clients read from the answer.
        .route("/v1/whip/{stream}", post(whip_post))
        .route("/v1/whep/{stream}", post(whep_post))
        .route(
            "/v1/whip/{stream}/{session}",
            patch(whip_session_patch).delete(whip_session_delete),
        )
        .route(
            "/v1/whep/{stream}/{session}",
            patch(whep_session_patch).delete(whep_session_delete),
        )
}

pub(crate) fn media_error(err: MediaError) -> AppError {
    match err {
        MediaError::BadSdp(m) => AppError::new(
            StatusCode::BAD_REQUEST,
            "bad_sdp",
            format!("malformed SDP offer: {m}"),
        ),
        MediaError::NoCommonCodec(m) => AppError::new(
            StatusCode::NOT_ACCEPTABLE,
            "no_common_codec",
            format!("nothing in the offer can be used: {m}"),
        ),
        MediaError::StreamBusy(s) => AppError::conflict(
            "stream_busy",
            format!(
                "stream '{s}' already has a live publisher of another user; it must DELETE \
                 its session first (the same user's new session would replace it)"
            ),
        ),
        MediaError::UnknownSession => {
            AppError::not_found("no such session (ended or never existed)")
        }
        MediaError::BadLayer(m) => AppError::bad_request(m),
        MediaError::AtCapacity(m) => {
            let mut e = AppError::unavailable(format!("server at capacity: {m}; retry later"));
            e.retry_after_secs = Some(5);
            e
        }
        MediaError::LimitReached {
            limit,
            message,
            retry_after_secs,
        } => {
            let mut e = AppError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
                .with("limit", limit);
            e.retry_after_secs = Some(retry_after_secs);
            e
        }
        MediaError::ShuttingDown => {
            let mut e = AppError::unavailable("the server is shutting down; retry on another node");
            e.retry_after_secs = Some(5);
            e
        }
        MediaError::Internal(m) => {
            tracing::error!(error = %m, "media error");
            AppError::internal()
        }
        // Only at start; a request never sees it.
        e @ MediaError::PortInUse(_) => {
            tracing::error!(error = %e, "media error");
            AppError::internal()
        }
    }
}

fn require_content_type(headers: &HeaderMap, expected: &str) -> AppResult<()> {
    let got = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = got.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(AppError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type must be {expected} (got '{}')",
                if got.is_empty() { "none" } else { got }
            ),
        ))
    }
}

async fn read_body(body: Body, limit: usize) -> AppResult<String> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body larger than {limit} bytes"),
        )
    })?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| AppError::new(StatusCode::BAD_REQUEST, "bad_sdp", "body is not UTF-8"))
}

/// Verifies the bearer media token and its grant for this stream. A stream key
/// (`tsk_…`, `api::stream_keys`) is a publish grant of the stream's owner for its
/// own stream only.
async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    stream: &str,
    kind: SessionKind,
) -> AppResult<MediaClaims> {
    let token = bearer(headers).ok_or_else(|| {
        AppError::unauthorized("missing media token: send Authorization: Bearer <token>")
    })?;
    if crate::api::stream_keys::is_stream_key(token) {
        if kind == SessionKind::Viewer {
            return Err(AppError::forbidden(
                "a stream key only publishes (WHIP); watching needs a viewer token",
            ));
        }
        return crate::api::stream_keys::publish_claims(state, stream, token).await;
    }
    let claims = state.tokens.verify(token)?;
    if !claims.allows_stream(stream) {
        return Err(AppError::forbidden(format!(
            "the token is not valid for stream '{stream}'"
        )));
    }
    let granted = match kind {
        SessionKind::Publisher => claims.grants.publish,
        SessionKind::Viewer => claims.grants.subscribe,
    };
    if !granted {
        return Err(AppError::forbidden(match kind {
            SessionKind::Publisher => "the token does not grant publish",
            SessionKind::Viewer => "the token does not grant subscribe",
        }));
    }
    Ok(claims)
}

fn path_prefix(kind: SessionKind) -> &'static str {
    match kind {
        SessionKind::Publisher => "/v1/whip",
        SessionKind::Viewer => "/v1/whep",
    }
}

async fn whip_post(
    state: State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    create_session(state, stream, headers, body, SessionKind::Publisher)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn whep_post(
    state: State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    create_session(state, stream, headers, body, SessionKind::Viewer)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn create_session(
    State(state): State<AppState>,
    stream: String,
    headers: HeaderMap,
    body: Body,
    kind: SessionKind,
) -> AppResult<Response> {
    if !crate::text::valid_stream_name(&stream) {
        return Err(AppError::not_found(
            "unknown stream: names are 1-128 characters of A-Z a-z 0-9 _ . : -",
        ));
    }
    // The token first: a client without a valid one learns nothing else (not
    // the content rules, not the capacity or its limits), and no body is read.
    let claims = authorize(&state, &headers, &stream, kind).await?;
    require_content_type(&headers, SDP)?;
    // Several nodes: a stream published to another node is answered 307 to its
    // origin when `cluster.media_redirect` is set (docs/CLUSTER.md).
    if kind == SessionKind::Viewer
        && let crate::cluster::edge::Route::Redirect(to) =
            crate::cluster::edge::route_viewer(&state, &stream, &claims).await
    {
        let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
        resp.headers_mut()
            .insert(header::LOCATION, header_value(&to));
        return Ok(resp);
    }
    let offer = read_body(body, state.config.media.max_sdp_bytes).await?;
    crate::api::access::check_session(&state, &claims, &stream, kind).await?;
    let from_edge = claims.role.as_deref() == Some(crate::cluster::edge::NODE_ROLE);
    let holder = SessionHolder {
        user: &claims.sub,
        token: &claims.jti,
        // Tokens the API mints for platform users carry their `role`; tokens
        // without one were minted by the operator with the server's key (`tandem
        // token`, the demo links): they are not held to the per-token and
        // per-user limits (docs/MEDIA.md, "Limits and lifecycle"). Nor is another
        // node's edge pulling a stream from this one (a node-minted token).
        limited: claims.role.is_some() && !from_edge,
    };
    if kind == SessionKind::Publisher {
        // This node becomes the stream's origin: a pull of it from elsewhere stops.
        crate::cluster::edge::yield_to_publisher(&state, &stream).await;
        // Before the session exists: its first packet already goes to the recorder.
        state.recordings.publisher_starting(&stream).await;
    } else {
        // Published to another node: this node becomes an edge (one pull,
        // shared by its viewers) before the viewer's session is made.
        crate::cluster::edge::before_subscribe(&state, &stream, &claims).await;
    }
    let answer = match kind {
        SessionKind::Publisher => state.sfu.publish(&stream, &offer, &holder).await,
        SessionKind::Viewer => state.sfu.subscribe(&stream, &offer, &holder).await,
    }
    .map_err(media_error)?;
    if kind == SessionKind::Publisher {
        // Ending a stream closes the sessions it finds; one built while it ran
        // is closed here, so nothing publishes to an ended stream.
        let closed = match crate::api::access::closed_meanwhile(&state, &stream).await {
            Ok(closed) => closed,
            Err(err) => Some(err),
        };
        if let Some(err) = closed {
            let _ = state.sfu.end(&answer.session_id).await;
            return Err(err);
        }
    }
    crate::api::access::session_started(&state, &claims, &stream, kind).await;
    if kind == SessionKind::Publisher {
        // The origin moves here now (edges re-pull from here within a tick);
        // Redis away: the heartbeat claims it when it answers again.
        let _ = state.cluster.claim_origin(&stream).await;
    } else if from_edge {
        state.pulls.metrics.origin_pulls.inc();
    }

    let location = format!("{}/{}/{}", path_prefix(kind), stream, answer.session_id);
    let mut resp = (StatusCode::CREATED, answer.sdp).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDP));
    h.insert(header::LOCATION, header_value(&location));
    h.insert(header::ETAG, header_value(&quote_etag(&answer.etag)));
    h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
    add_ice_server_links(h, &state.config.ice_servers, true);
    if kind == SessionKind::Viewer {
        // The WHEP extensions (API.md): layer selection and server-sent events.
        for link in crate::whep_events::links(&location) {
            h.append(header::LINK, header_value(&link));
        }
    }
    Ok(resp)
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn quote_etag(tag: &str) -> String {
    format!("\"{tag}\"")
}

/// `Link: <url>; rel="ice-server"` per configured ICE server URL (RFC 9725 §4.6).
/// `with_credentials: false` leaves out servers that carry credentials (TURN): an
/// OPTIONS request needs no token, and TURN credentials handed to anyone who asks
/// make the relay an open one. The 201 answer, which took a valid token, has them all.
fn add_ice_server_links(headers: &mut HeaderMap, servers: &[IceServer], with_credentials: bool) {
    for server in servers {
        if !with_credentials && (server.username.is_some() || server.credential.is_some()) {
            continue;
        }
        for url in &server.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(user), Some(cred)) = (&server.username, &server.credential) {
                link.push_str(&format!(
                    "; username=\"{user}\"; credential=\"{cred}\"; credential-type=\"password\""
                ));
            }
            if let Ok(v) = HeaderValue::from_str(&link) {
                headers.append(header::LINK, v);
            }
        }
    }
}

/// What an OPTIONS request is for: a WHIP/WHEP endpoint or a session URL.
#[derive(Debug, PartialEq)]
enum OptionsTarget {
    Endpoint,
    Session,
}

fn options_target(path: &str) -> Option<OptionsTarget> {
    let path = path.strip_prefix("/.proxy").unwrap_or(path);
    let mut parts = path.trim_start_matches('/').split('/');
    if parts.next() != Some("v1") || !matches!(parts.next(), Some("whip" | "whep")) {
        return None;
    }
    match (parts.next(), parts.next(), parts.next()) {
        (Some(s), None, None) if !s.is_empty() => Some(OptionsTarget::Endpoint),
        (Some(s), Some(id), None) if !s.is_empty() && !id.is_empty() => {
            Some(OptionsTarget::Session)
        }
        _ => None,
    }
}

/// The `{stream}` of a WHIP/WHEP endpoint path.
fn options_stream(path: &str) -> Option<&str> {
    let path = path.strip_prefix("/.proxy").unwrap_or(path);
    path.trim_start_matches('/').split('/').nth(2)
}

/// Adds the WHIP/WHEP headers to OPTIONS answers. The CORS layer answers every
/// OPTIONS itself (preflight or not), so this is the one place they are set.
pub async fn options_headers(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let target = (request.method() == axum::http::Method::OPTIONS)
        .then(|| options_target(request.uri().path()))
        .flatten();
    let token_for_stream = target == Some(OptionsTarget::Endpoint)
        && options_stream(request.uri().path()).is_some_and(|stream| {
            bearer(request.headers())
                .and_then(|t| state.tokens.verify(t).ok())
                .is_some_and(|c| c.allows_stream(stream))
        });
    let mut resp = next.run(request).await;
    let h = resp.headers_mut();
    match target {
        Some(OptionsTarget::Endpoint) => {
            h.insert("accept-post", HeaderValue::from_static(SDP));
            h.insert(header::ALLOW, HeaderValue::from_static("OPTIONS, POST"));
            // A token valid for this stream (a WHIP client may send it with OPTIONS)
            // also gets the TURN servers' credentials; a bare preflight does not.
            add_ice_server_links(h, &state.config.ice_servers, token_for_stream);
        }
        Some(OptionsTarget::Session) => {
            h.insert("accept-patch", HeaderValue::from_static(SDPFRAG));
            h.insert(
                header::ALLOW,
                HeaderValue::from_static("OPTIONS, PATCH, DELETE"),
            );
        }
        None => {}
    }
    resp
}

/// The session URL is an unguessable capability (RFC 9725 §4.3); a token, when the
/// client sends one, must still be valid for the stream. A session answers only
/// under its own URL: its kind (`/v1/whip` publishers, `/v1/whep` viewers) and
/// its stream; anything else is 404, as for a session that does not exist.
/// Encoders (OBS) send their stream key with the DELETE that ends a session.
pub(crate) async fn session_for(
    state: &AppState,
    headers: &HeaderMap,
    stream: &str,
    session: &str,
    kind: SessionKind,
) -> AppResult<SessionSummary> {
    let summary = state
        .sfu
        .session(session)
        .filter(|s| &*s.stream == stream && s.kind == kind)
        .ok_or_else(|| media_error(MediaError::UnknownSession))?;
    if let Some(key) = bearer(headers).filter(|t| crate::api::stream_keys::is_stream_key(t)) {
        crate::api::stream_keys::publish_claims(state, stream, key).await?;
    } else if bearer(headers).is_some() {
        let claims = state.tokens.verify(bearer(headers).unwrap_or_default())?;
        if !claims.allows_stream(stream) {
            return Err(AppError::forbidden(format!(
                "the token is not valid for stream '{stream}'"
            )));
        }
    }
    Ok(summary)
}

async fn whip_session_patch(
    state: State<AppState>,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Response> {
    session_patch(state, path, headers, body, SessionKind::Publisher).await
}

async fn whep_session_patch(
    state: State<AppState>,
    path: Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> AppResult<Response> {
    session_patch(state, path, headers, body, SessionKind::Viewer).await
}

async fn whip_session_delete(
    state: State<AppState>,
    path: Path<(String, String)>,
    headers: HeaderMap,
) -> AppResult<StatusCode> {
    session_delete(state, path, headers, SessionKind::Publisher).await
}

async fn whep_session_delete(
    state: State<AppState>,
    path: Path<(String, String)>,
    headers: HeaderMap,
) -> AppResult<StatusCode> {
    session_delete(state, path, headers, SessionKind::Viewer).await
}

async fn session_patch(
    State(state): State<AppState>,
    Path((stream, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
    kind: SessionKind,
) -> AppResult<Response> {
    let summary = session_for(&state, &headers, &stream, &session, kind).await?;
    require_content_type(&headers, SDPFRAG)?;
    // Some clients send their entity-tag as `ETag` instead of `If-Match` (see TESTING.md).
    let tag = headers
        .get(header::IF_MATCH)
        .or_else(|| headers.get(header::ETAG))
        .and_then(|v| v.to_str().ok());
    if let Some(tag) = tag {
        let tag = tag.trim();
        if tag != "*" && tag.trim_matches('"') != summary.etag {
            return Err(AppError::new(
                StatusCode::PRECONDITION_FAILED,
                "etag_mismatch",
                "If-Match does not match the session's current entity-tag; the session was restarted",
            ));
        }
    }
    let frag = read_body(body, state.config.media.max_sdp_bytes).await?;
    match state
        .sfu
        .patch(&session, &frag)
        .await
        .map_err(media_error)?
    {
        PatchOutcome::Trickled => Ok(StatusCode::NO_CONTENT.into_response()),
        PatchOutcome::Restarted { sdpfrag, etag } => {
            let mut resp = (StatusCode::OK, sdpfrag).into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(SDPFRAG));
            h.insert(header::ETAG, header_value(&quote_etag(&etag)));
            Ok(resp)
        }
    }
}

async fn session_delete(
    State(state): State<AppState>,
    Path((stream, session)): Path<(String, String)>,
    headers: HeaderMap,
    kind: SessionKind,
) -> AppResult<StatusCode> {
    session_for(&state, &headers, &stream, &session, kind).await?;
    state.sfu.end(&session).await.map_err(media_error)?;
    if kind == SessionKind::Publisher
        && state
            .sfu
            .stream(&stream)
            .is_none_or(|s| s.publisher.is_none())
    {
        // Not published here any more: edges stop looking here at once.
        let _ = state.cluster.release_origin(&stream).await;
    }
    Ok(StatusCode::OK)
}

/// Writes each session's start and end to `media_sessions`, off the media threads.
#[derive(Clone)]
pub struct SessionRecorder {
    tx: mpsc::UnboundedSender<SessionEvent>,
}

enum SessionEvent {
    Started(SessionSummary),
    Ended(SessionSummary),
    /// Answered once everything sent before it is written (shutdown).
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl SessionRecorder {
    pub fn spawn(db: Db) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<SessionEvent>();
        tokio::spawn(async move {
            // Ends that failed (database away) are retried on the next write and
            // every 5 s while some are pending (storage::SessionEnds).
            let mut ends = crate::storage::SessionEnds::default();
            loop {
                let event = if ends.pending() > 0 {
                    match tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await {
                        Ok(event) => event,
                        Err(_) => {
                            ends.retry(&db).await;
                            continue;
                        }
                    }
                } else {
                    rx.recv().await
                };
                let Some(event) = event else { break };
                let result = match event {
                    SessionEvent::Flush(done) => {
                        let _ = done.send(());
                        continue;
                    }
                    // A call's sessions: the row and the call's state change
                    // in one transaction (api::calls).
                    SessionEvent::Started(s) if crate::api::calls::parse_stream(&s.stream).is_some() => {
                        crate::api::calls::record_start(&db, &s).await
                    }
                    SessionEvent::Ended(s) if crate::api::calls::parse_stream(&s.stream).is_some() => {
                        let at = now_ms();
                        match crate::api::calls::record_end(&db, &s, at).await {
                            Ok(()) => Ok(()),
                            // Kept for the retry of plain ends: the row's end at least.
                            Err(_) => ends.end(&db, s.id.to_string(), at).await,
                        }
                    }
                    SessionEvent::Started(s) => sqlx::query(
                        "INSERT INTO media_sessions (id, stream, kind, user_id, started_at) VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(s.id.to_string())
                    .bind(s.stream.to_string())
                    .bind(s.kind.as_str())
                    .bind(s.user.to_string())
                    .bind(s.started_at_ms)
                    .execute(&db.pool)
                    .await
                    .map(|_| ()),
                    SessionEvent::Ended(s) => ends.end(&db, s.id.to_string(), now_ms()).await,
                };
                if let Err(err) = result {
                    tracing::warn!(error = %err, "recording media session");
                }
            }
        });
        Self { tx }
    }

    /// Waits until every start and end reported so far is in the database.
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(SessionEvent::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// An edge's local publisher (`cluster::edge`) is plumbing, not a session of a
/// user: the origin records the real publisher once.
impl tandem_media::sfu::SessionObserver for SessionRecorder {
    fn session_started(&self, session: &SessionSummary) {
        if &*session.user != crate::cluster::edge::EDGE_USER {
            let _ = self.tx.send(SessionEvent::Started(session.clone()));
        }
    }
    fn session_ended(&self, session: &SessionSummary) {
        if &*session.user != crate::cluster::edge::EDGE_USER {
            let _ = self.tx.send(SessionEvent::Ended(session.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_targets() {
        assert_eq!(
            options_target("/v1/whip/cam"),
            Some(OptionsTarget::Endpoint)
        );
        assert_eq!(
            options_target("/.proxy/v1/whep/cam"),
            Some(OptionsTarget::Endpoint)
        );
        assert_eq!(
            options_target("/v1/whep/cam/abc"),
            Some(OptionsTarget::Session)
        );
        assert_eq!(options_target("/v1/rooms/r/ws"), None);
        assert_eq!(options_target("/v1/whip/"), None);
        assert_eq!(options_target("/v1/whip/a/b/c"), None);
    }
}
