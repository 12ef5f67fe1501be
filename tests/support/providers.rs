//! Stand-ins for the platforms tandem calls (nothing outside is reachable here):
//! one small axum server on 127.0.0.1:0 speaking each provider's documented wire
//! format, with call counters and switches for the failure cases.
//!
//! - OAuth 2.0 (`/oauth/{platform}/authorize`, `/oauth/{platform}/token`) as
//!   Google, Twitch and Facebook run it: the authorize endpoint "consents" at once
//!   and redirects to the `redirect_uri` with a code; the token endpoint checks the
//!   client credentials (form body), the redirect URI and PKCE (S256 of the
//!   `code_verifier` must equal the `code_challenge`), and refreshes tokens
//!   (`invalid_grant` for a revoked refresh token). API calls take only the latest
//!   access token of their platform.
//! - YouTube Data API v3 (`/youtube/v3/liveBroadcasts`, `liveStreams`, `bind`),
//!   Twitch Helix (`/helix/users`, `/helix/streams/key`), Facebook Graph
//!   (`/fb/me/live_videos`).
//! - Zoom (`/zoom/oauth/token` account credentials, `/zoom/v2/users/me/meetings`),
//!   Microsoft identity + Graph (`/teams/{tenant}/oauth2/v2.0/token`,
//!   `/graph/v1.0/users/{id}/onlineMeetings`).
//!
//! [`Providers::configure`] points a tandem configuration at it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const CLIENT_ID: &str = "test-client-id";
pub const CLIENT_SECRET: &str = "test-client-secret-do-not-log";
pub const TWITCH_USER_ID: &str = "141981764";
pub const TWITCH_KEY: &str = "live_141981764_TwitchSecretKey";
pub const YOUTUBE_STREAM_NAME: &str = "yt-abcd-efgh-ijkl-mnop";
pub const YOUTUBE_INGEST: &str = "rtmp://a.rtmp.youtube.com/live2";
pub const FB_STREAM_URL: &str = "rtmps://live-api-s.facebook.com:443/rtmp/FB-1234-secret";
pub const ZOOM_ACCOUNT: &str = "zoom-account-1";
pub const ZOOM_JOIN: &str = "https://zoom.us/j/85012345678?pwd=abc";
pub const TEAMS_TENANT: &str = "tenant-1";
pub const TEAMS_ORGANIZER: &str = "organizer-1";
pub const TEAMS_JOIN: &str = "https://teams.microsoft.com/l/meetup-join/19%3ameeting_1";

/// What one issued authorization code was bound to.
struct Code {
    platform: String,
    challenge: String,
    redirect_uri: String,
}

/// The stand-ins' state: counters, switches, issued codes and tokens.
#[derive(Default)]
pub struct ProvidersState {
    codes: Mutex<HashMap<String, Code>>,
    /// platform → the access token its APIs accept now.
    access: Mutex<HashMap<String, String>>,
    /// refresh token → platform, of tokens not revoked.
    refresh: Mutex<HashMap<String, String>>,
    serial: AtomicU64,
    /// `expires_in` of issued access tokens (seconds).
    pub expires_in: AtomicI64,
    /// Hand out no refresh token (Facebook's way).
    pub no_refresh: AtomicBool,
    /// How long the token endpoint takes to answer a refresh.
    pub refresh_delay_ms: AtomicU64,
    pub code_exchanges: AtomicUsize,
    pub refreshes: AtomicUsize,
    pub pkce_failures: AtomicUsize,
    pub yt_broadcasts: AtomicUsize,
    pub yt_streams: AtomicUsize,
    pub yt_binds: AtomicUsize,
    /// The last bind's (id, streamId).
    pub yt_bound: Mutex<Option<(String, String)>>,
    pub twitch_key_calls: AtomicUsize,
    pub fb_live_videos: AtomicUsize,
    pub zoom_tokens: AtomicUsize,
    pub zoom_meetings: AtomicUsize,
    pub teams_meetings: AtomicUsize,
    /// Zoom's meeting creation answers 500.
    pub zoom_fails: AtomicBool,
    /// The last Zoom meeting body and Teams meeting body.
    pub zoom_body: Mutex<Option<Value>>,
    pub teams_body: Mutex<Option<Value>>,
}

/// The running stand-in server.
pub struct Providers {
    pub base: String,
    pub state: Arc<ProvidersState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Providers {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Providers {
    pub async fn spawn() -> Providers {
        let state = Arc::new(ProvidersState::default());
        state.expires_in.store(3600, Ordering::SeqCst);
        let app = Router::new()
            .route("/oauth/{platform}/authorize", get(authorize))
            .route("/oauth/{platform}/token", post(token))
            .route("/youtube/v3/liveBroadcasts", post(yt_broadcast))
            .route("/youtube/v3/liveStreams", post(yt_stream))
            .route("/youtube/v3/liveBroadcasts/bind", post(yt_bind))
            .route("/helix/users", get(twitch_users))
            .route("/helix/streams/key", get(twitch_key))
            .route("/fb/me/live_videos", post(fb_live_video))
            .route("/zoom/oauth/token", post(zoom_token))
            .route("/zoom/v2/users/me/meetings", post(zoom_meeting))
            .route("/teams/{tenant}/oauth2/v2.0/token", post(teams_token))
            .route(
                "/graph/v1.0/users/{user}/onlineMeetings",
                post(teams_meeting),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Providers { base, state, task }
    }

    /// Points every provider of `c` at this server, with the test app credentials.
    pub fn configure(&self, c: &mut tandem::config::Config) {
        let b = &self.base;
        for (p, cfg) in [
            ("youtube", &mut c.platforms.youtube),
            ("twitch", &mut c.platforms.twitch),
            ("facebook", &mut c.platforms.facebook),
        ] {
            cfg.client_id = CLIENT_ID.into();
            cfg.client_secret = CLIENT_SECRET.into();
            cfg.auth_url = format!("{b}/oauth/{p}/authorize");
            cfg.token_url = format!("{b}/oauth/{p}/token");
            cfg.api_base_url = b.clone();
        }
        c.platforms.facebook.api_base_url = format!("{b}/fb");
        c.platforms.zoom.account_id = ZOOM_ACCOUNT.into();
        c.platforms.zoom.client_id = CLIENT_ID.into();
        c.platforms.zoom.client_secret = CLIENT_SECRET.into();
        c.platforms.zoom.token_url = format!("{b}/zoom/oauth/token");
        c.platforms.zoom.api_base_url = format!("{b}/zoom");
        c.platforms.teams.tenant_id = TEAMS_TENANT.into();
        c.platforms.teams.client_id = CLIENT_ID.into();
        c.platforms.teams.client_secret = CLIENT_SECRET.into();
        c.platforms.teams.token_url = format!("{b}/teams/{{tenant}}/oauth2/v2.0/token");
        c.platforms.teams.api_base_url = format!("{b}/graph");
        c.platforms.teams.organizer_user_id = TEAMS_ORGANIZER.into();
    }

    /// Revokes every refresh token issued so far (the user removed the app).
    pub fn revoke_refresh_tokens(&self) {
        self.state.refresh.lock().unwrap().clear();
    }

    pub fn count(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

fn oauth_error(code: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": code, "error_description": format!("stand-in: {code}")})),
    )
        .into_response()
}

fn s256(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The user consents at once: back to the redirect URI with a code.
async fn authorize(
    State(st): State<Arc<ProvidersState>>,
    Path(platform): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| q.get(k).cloned().unwrap_or_default();
    if get("response_type") != "code"
        || get("client_id") != CLIENT_ID
        || get("code_challenge_method") != "S256"
        || get("code_challenge").is_empty()
        || get("state").is_empty()
    {
        return (StatusCode::BAD_REQUEST, "bad authorize request").into_response();
    }
    let code = format!("code-{}", st.serial.fetch_add(1, Ordering::SeqCst));
    st.codes.lock().unwrap().insert(
        code.clone(),
        Code {
            platform,
            challenge: get("code_challenge"),
            redirect_uri: get("redirect_uri"),
        },
    );
    let mut to = reqwest::Url::parse(&get("redirect_uri")).unwrap();
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &get("state"))
        .append_pair("scope", &get("scope"));
    Redirect::to(to.as_str()).into_response()
}

fn issue(st: &ProvidersState, platform: &str) -> Value {
    let n = st.serial.fetch_add(1, Ordering::SeqCst);
    let access = format!("at-{platform}-{n}");
    st.access
        .lock()
        .unwrap()
        .insert(platform.to_string(), access.clone());
    let mut body = json!({
        "access_token": access,
        "token_type": "bearer",
        "expires_in": st.expires_in.load(Ordering::SeqCst),
    });
    if !st.no_refresh.load(Ordering::SeqCst) {
        let refresh = format!("rt-{platform}-{n}");
        st.refresh
            .lock()
            .unwrap()
            .insert(refresh.clone(), platform.to_string());
        body["refresh_token"] = json!(refresh);
    }
    // Twitch lists scopes as an array; the others as a space-separated string.
    body["scope"] = if platform == "twitch" {
        json!(["channel:read:stream_key"])
    } else {
        json!("publish")
    };
    body
}

async fn token(
    State(st): State<Arc<ProvidersState>>,
    Path(platform): Path<String>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    if get("client_id") != CLIENT_ID || get("client_secret") != CLIENT_SECRET {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    match get("grant_type").as_str() {
        "authorization_code" => {
            st.code_exchanges.fetch_add(1, Ordering::SeqCst);
            let Some(code) = st.codes.lock().unwrap().remove(&get("code")) else {
                return oauth_error("invalid_grant");
            };
            if code.platform != platform || code.redirect_uri != get("redirect_uri") {
                return oauth_error("invalid_grant");
            }
            if s256(&get("code_verifier")) != code.challenge {
                st.pkce_failures.fetch_add(1, Ordering::SeqCst);
                return oauth_error("invalid_grant");
            }
            Json(issue(&st, &platform)).into_response()
        }
        "refresh_token" => {
            st.refreshes.fetch_add(1, Ordering::SeqCst);
            let delay = st.refresh_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let known = st.refresh.lock().unwrap().remove(&get("refresh_token"));
            if known.as_deref() != Some(platform.as_str()) {
                return oauth_error("invalid_grant");
            }
            Json(issue(&st, &platform)).into_response()
        }
        _ => oauth_error("unsupported_grant_type"),
    }
}

/// Whether the bearer is the platform's current access token.
fn bearer_ok(st: &ProvidersState, platform: &str, headers: &HeaderMap) -> bool {
    let want = st.access.lock().unwrap().get(platform).cloned();
    let got = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    want.is_some() && want == got
}

/// What the APIs answer a missing or stale token.
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": {"code": 401, "message": "Invalid Credentials"}})),
    )
        .into_response()
}

async fn yt_broadcast(
    State(st): State<Arc<ProvidersState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    if !bearer_ok(&st, "youtube", &headers) {
        return unauthorized();
    }
    if q.get("part").map(String::as_str) != Some("snippet,status,contentDetails")
        || body["snippet"]["title"].as_str().is_none()
    {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let n = st.yt_broadcasts.fetch_add(1, Ordering::SeqCst);
    Json(json!({"kind": "youtube#liveBroadcast", "id": format!("bc-{n}"), "snippet": body["snippet"]}))
        .into_response()
}

async fn yt_stream(
    State(st): State<Arc<ProvidersState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    if !bearer_ok(&st, "youtube", &headers) {
        return unauthorized();
    }
    if q.get("part").map(String::as_str) != Some("snippet,cdn,contentDetails")
        || body["cdn"]["ingestionType"] != "rtmp"
        || body["cdn"]["resolution"] != "variable"
        || body["cdn"]["frameRate"] != "variable"
    {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let n = st.yt_streams.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "kind": "youtube#liveStream",
        "id": format!("ls-{n}"),
        "cdn": {
            "ingestionType": "rtmp",
            "ingestionInfo": {
                "streamName": YOUTUBE_STREAM_NAME,
                "ingestionAddress": YOUTUBE_INGEST,
                "backupIngestionAddress": "rtmp://b.rtmp.youtube.com/live2?backup=1",
            },
            "resolution": "variable",
            "frameRate": "variable",
        },
    }))
    .into_response()
}

async fn yt_bind(
    State(st): State<Arc<ProvidersState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !bearer_ok(&st, "youtube", &headers) {
        return unauthorized();
    }
    let (Some(id), Some(stream)) = (q.get("id"), q.get("streamId")) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    st.yt_binds.fetch_add(1, Ordering::SeqCst);
    *st.yt_bound.lock().unwrap() = Some((id.clone(), stream.clone()));
    Json(json!({"kind": "youtube#liveBroadcast", "id": id})).into_response()
}

fn twitch_client_id(headers: &HeaderMap) -> bool {
    headers.get("client-id").and_then(|v| v.to_str().ok()) == Some(CLIENT_ID)
}

async fn twitch_users(State(st): State<Arc<ProvidersState>>, headers: HeaderMap) -> Response {
    if !bearer_ok(&st, "twitch", &headers) {
        return unauthorized();
    }
    if !twitch_client_id(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(json!({"data": [{"id": TWITCH_USER_ID, "login": "teacher", "display_name": "Teacher"}]}))
        .into_response()
}

async fn twitch_key(
    State(st): State<Arc<ProvidersState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !bearer_ok(&st, "twitch", &headers) {
        return unauthorized();
    }
    if !twitch_client_id(&headers)
        || q.get("broadcaster_id").map(String::as_str) != Some(TWITCH_USER_ID)
    {
        return StatusCode::BAD_REQUEST.into_response();
    }
    st.twitch_key_calls.fetch_add(1, Ordering::SeqCst);
    Json(json!({"data": [{"stream_key": TWITCH_KEY}]})).into_response()
}

async fn fb_live_video(
    State(st): State<Arc<ProvidersState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !bearer_ok(&st, "facebook", &headers) {
        return unauthorized();
    }
    if q.get("status").map(String::as_str) != Some("LIVE_NOW") {
        return StatusCode::BAD_REQUEST.into_response();
    }
    st.fb_live_videos.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "id": "10158",
        "stream_url": "rtmp://live-api-s.facebook.com:80/rtmp/FB-1234-secret",
        "secure_stream_url": FB_STREAM_URL,
    }))
    .into_response()
}

fn basic_ok(headers: &HeaderMap) -> bool {
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(want.as_str())
}

async fn zoom_token(
    State(st): State<Arc<ProvidersState>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !basic_ok(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({"reason": "Invalid client_id or client_secret", "error": "invalid_client"}),
            ),
        )
            .into_response();
    }
    if q.get("grant_type").map(String::as_str) != Some("account_credentials")
        || q.get("account_id").map(String::as_str) != Some(ZOOM_ACCOUNT)
    {
        return oauth_error("invalid_request");
    }
    st.zoom_tokens.fetch_add(1, Ordering::SeqCst);
    st.access
        .lock()
        .unwrap()
        .insert("zoom".into(), "zoom-token".into());
    Json(json!({"access_token": "zoom-token", "token_type": "bearer", "expires_in": 3599, "scope": "meeting:write:meeting:admin"}))
        .into_response()
}

async fn zoom_meeting(
    State(st): State<Arc<ProvidersState>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !bearer_ok(&st, "zoom", &headers) {
        return unauthorized();
    }
    if st.zoom_fails.load(Ordering::SeqCst) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"code": 500, "message": "stand-in failure"})),
        )
            .into_response();
    }
    st.zoom_meetings.fetch_add(1, Ordering::SeqCst);
    *st.zoom_body.lock().unwrap() = Some(body.clone());
    (
        StatusCode::CREATED,
        Json(json!({"id": 85012345678u64, "topic": body["topic"], "join_url": ZOOM_JOIN, "start_time": body["start_time"]})),
    )
        .into_response()
}

async fn teams_token(
    State(st): State<Arc<ProvidersState>>,
    Path(tenant): Path<String>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let get = |k: &str| f.get(k).cloned().unwrap_or_default();
    if tenant != TEAMS_TENANT
        || get("client_id") != CLIENT_ID
        || get("client_secret") != CLIENT_SECRET
        || get("grant_type") != "client_credentials"
        || get("scope") != "https://graph.microsoft.com/.default"
    {
        return oauth_error("invalid_client");
    }
    st.access
        .lock()
        .unwrap()
        .insert("teams".into(), "graph-token".into());
    Json(json!({"token_type": "Bearer", "expires_in": 3599, "access_token": "graph-token"}))
        .into_response()
}

async fn teams_meeting(
    State(st): State<Arc<ProvidersState>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !bearer_ok(&st, "teams", &headers) {
        return unauthorized();
    }
    if user != TEAMS_ORGANIZER || body["subject"].as_str().is_none() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    st.teams_meetings.fetch_add(1, Ordering::SeqCst);
    *st.teams_body.lock().unwrap() = Some(body.clone());
    (
        StatusCode::CREATED,
        Json(json!({"id": "MSo1N2Y5", "joinWebUrl": TEAMS_JOIN, "subject": body["subject"]})),
    )
        .into_response()
}
