//! The stand-in Discord's guild members (course servers, issue 17), merged into
//! [`super::discord::Discord`]'s router under `/api`. Discord's documented wire
//! format, with `Authorization: Bot {BOT_TOKEN}`:
//!
//! - `PUT /guilds/{g}/members/{u}` `{access_token, roles}`: 201 with the member
//!   (joined with `roles`), 204 when already a member (roles untouched, as
//!   Discord does); 403 `Invalid OAuth2 access token` (50025) without a live
//!   access token the stand-in issued to that user.
//! - `PUT|DELETE /guilds/{g}/members/{u}/roles/{r}`: 204; 404 `Unknown Member`
//!   (10007) when not in the guild.
//! - `GET /guilds/{g}/members/{u}`: `{user: {id}, roles, joined_at}` or 404.
//!
//! Rate limits, as Discord announces them: every route has a bucket per guild
//! (the major parameter) of [`GuildState::route_limit`] requests per
//! `route_window_ms`, sent as `X-RateLimit-Limit/Remaining/Reset/Reset-After/Bucket`;
//! over it, 429 `{message, retry_after, global: false}` with `Retry-After` and
//! `X-RateLimit-Scope: user`. A global limit of `global_limit` requests per
//! `global_window_ms` over every guild route, announced by nobody (as Discord's):
//! over it, 429 with `global: true`, `X-RateLimit-Global: true`, scope `global`.
//!
//! A *violation* is a request that arrives while the client was told to wait:
//! its bucket's last answer said `Remaining: 0` and the reset has not come, or a
//! 429's `retry_after` has not passed. They are counted in
//! [`GuildState::violations`]; a client that follows the headers makes none.
//!
//! [`GuildState::refuse`] makes every guild call answer 401 (a reset bot token).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::discord::BOT_TOKEN;

/// A route's bucket in one guild.
struct Bucket {
    remaining: u32,
    reset_at: Instant,
    /// An answer told the client `Remaining: 0` for this window.
    told_zero: bool,
}

/// Guild state, limits and what was seen.
pub struct GuildState {
    /// Requests per bucket window (per route and guild).
    pub route_limit: u32,
    pub route_window_ms: u64,
    /// Requests per global window over all guild routes.
    pub global_limit: u32,
    pub global_window_ms: u64,
    /// Answer 401 to every guild call.
    pub refuse: AtomicBool,
    /// Guild requests received (refused and rate-limited ones too).
    pub calls: AtomicUsize,
    /// 429s answered (route and global).
    pub rate_limited: AtomicUsize,
    pub global_rate_limited: AtomicUsize,
    /// Requests that arrived while told to wait (see the module header).
    pub violations: AtomicUsize,
    /// The user an access token was issued to (set by `Discord::spawn_with`):
    /// adding a member needs that member's own live token.
    pub(super) token_user: OnceLock<TokenUser>,
    /// Accept any non-empty access token (tests of the bot alone, with no
    /// linked users).
    pub any_token: AtomicBool,
    inner: Mutex<Inner>,
}

pub(super) type TokenUser = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

#[derive(Default)]
struct Inner {
    /// (guild, user) → roles.
    members: HashMap<(String, String), HashSet<String>>,
    /// (route, guild) → bucket.
    buckets: HashMap<(String, String), Bucket>,
    global_start: Option<Instant>,
    global_sent: u32,
    /// A global 429 said: nothing before this.
    global_until: Option<Instant>,
    /// Access tokens that were presented, per user.
    tokens: HashMap<String, String>,
}

impl GuildState {
    /// Limits as Discord's (generous), so tests that do not look at rate limits
    /// never meet one.
    pub fn new() -> GuildState {
        GuildState::with_limits(1000, 1000, 1000, 1000)
    }

    pub fn with_limits(
        route_limit: u32,
        route_window_ms: u64,
        global_limit: u32,
        global_window_ms: u64,
    ) -> GuildState {
        GuildState {
            route_limit,
            route_window_ms,
            global_limit,
            global_window_ms,
            refuse: AtomicBool::new(false),
            calls: AtomicUsize::new(0),
            rate_limited: AtomicUsize::new(0),
            global_rate_limited: AtomicUsize::new(0),
            violations: AtomicUsize::new(0),
            token_user: OnceLock::new(),
            any_token: AtomicBool::new(false),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The roles of `user` in `guild`, or `None` when not a member.
    pub fn roles(&self, guild: &str, user: &str) -> Option<Vec<String>> {
        let inner = self.inner.lock().unwrap();
        inner
            .members
            .get(&(guild.to_string(), user.to_string()))
            .map(|r| {
                let mut v: Vec<String> = r.iter().cloned().collect();
                v.sort();
                v
            })
    }

    /// Members of `guild`.
    pub fn member_count(&self, guild: &str) -> usize {
        let inner = self.inner.lock().unwrap();
        inner.members.keys().filter(|(g, _)| g == guild).count()
    }

    /// Takes a role away by hand (drift for the reconcile pass to repair).
    pub fn take_role(&self, guild: &str, user: &str, role: &str) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(r) = inner
            .members
            .get_mut(&(guild.to_string(), user.to_string()))
        {
            r.remove(role);
        }
    }

    /// The access token last presented for `user` when adding them.
    pub fn token_of(&self, user: &str) -> Option<String> {
        self.inner.lock().unwrap().tokens.get(user).cloned()
    }
}

impl Default for GuildState {
    fn default() -> Self {
        GuildState::new()
    }
}

/// The guild routes (merged under `/api`).
pub fn routes(state: Arc<GuildState>) -> Router {
    Router::new()
        .route(
            "/api/guilds/{g}/members/{u}",
            put(add_member).get(get_member),
        )
        .route(
            "/api/guilds/{g}/members/{u}/roles/{r}",
            put(add_role).delete(remove_role),
        )
        .with_state(state)
}

fn unix_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Seconds, rounded up to the millisecond (as Discord's `Reset-After`).
fn secs(d: Duration) -> f64 {
    (d.as_micros() as f64 / 1000.0).ceil() / 1000.0
}

fn json_error(status: StatusCode, message: &str, code: i64) -> Response {
    (status, Json(json!({"message": message, "code": code}))).into_response()
}

/// The rate-limit gate of one request on `route` in `guild`: `Err` is the 429,
/// `Ok` the headers to send with the answer.
/// (The 429 is boxed: a `Response` is large.)
fn gate(state: &GuildState, route: &str, guild: &str) -> Result<HeaderMap, Box<Response>> {
    let now = Instant::now();
    let mut inner = state.inner.lock().unwrap();
    // Told to wait globally and did not.
    if let Some(until) = inner.global_until {
        if now < until {
            state.violations.fetch_add(1, Ordering::SeqCst);
            return Err(Box::new(global_429(state, until - now)));
        }
        inner.global_until = None;
    }
    let window = Duration::from_millis(state.global_window_ms);
    if inner.global_start.is_none_or(|start| now >= start + window) {
        inner.global_start = Some(now);
        inner.global_sent = 0;
    }
    if inner.global_sent >= state.global_limit {
        let until = inner.global_start.unwrap() + window;
        inner.global_until = Some(until);
        return Err(Box::new(global_429(state, until - now)));
    }
    let key = (route.to_string(), guild.to_string());
    let route_window = Duration::from_millis(state.route_window_ms);
    let limit = state.route_limit;
    let b = inner.buckets.entry(key).or_insert(Bucket {
        remaining: limit,
        reset_at: now + route_window,
        told_zero: false,
    });
    if now >= b.reset_at {
        b.remaining = limit;
        b.reset_at = now + route_window;
        b.told_zero = false;
    }
    let hash = format!("{:016x}", fxhash(route));
    if b.remaining == 0 {
        if b.told_zero {
            state.violations.fetch_add(1, Ordering::SeqCst);
        }
        b.told_zero = true;
        let wait = b.reset_at - now;
        state.rate_limited.fetch_add(1, Ordering::SeqCst);
        let mut resp = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({
                "message": "You are being rate limited.",
                "retry_after": secs(wait),
                "global": false
            })),
        )
            .into_response();
        let h = resp.headers_mut();
        bucket_headers(h, limit, 0, wait, &hash);
        h.insert(
            "retry-after",
            HeaderValue::from(wait.as_secs_f64().ceil() as u64),
        );
        h.insert("x-ratelimit-scope", HeaderValue::from_static("user"));
        return Err(Box::new(resp));
    }
    b.remaining -= 1;
    let (remaining, wait) = (b.remaining, b.reset_at - now);
    if remaining == 0 {
        b.told_zero = true;
    }
    inner.global_sent += 1;
    let mut h = HeaderMap::new();
    bucket_headers(&mut h, limit, remaining, wait, &hash);
    Ok(h)
}

fn bucket_headers(h: &mut HeaderMap, limit: u32, remaining: u32, wait: Duration, hash: &str) {
    h.insert("x-ratelimit-limit", HeaderValue::from(limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    let reset = format!("{:.3}", unix_secs_f64() + secs(wait));
    h.insert("x-ratelimit-reset", HeaderValue::from_str(&reset).unwrap());
    let after = format!("{:.3}", secs(wait));
    h.insert(
        "x-ratelimit-reset-after",
        HeaderValue::from_str(&after).unwrap(),
    );
    h.insert("x-ratelimit-bucket", HeaderValue::from_str(hash).unwrap());
}

fn global_429(state: &GuildState, wait: Duration) -> Response {
    state.rate_limited.fetch_add(1, Ordering::SeqCst);
    state.global_rate_limited.fetch_add(1, Ordering::SeqCst);
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(json!({
            "message": "You are being rate limited.",
            "retry_after": secs(wait),
            "global": true
        })),
    )
        .into_response();
    let h = resp.headers_mut();
    h.insert(
        "retry-after",
        HeaderValue::from(wait.as_secs_f64().ceil() as u64),
    );
    h.insert("x-ratelimit-global", HeaderValue::from_static("true"));
    h.insert("x-ratelimit-scope", HeaderValue::from_static("global"));
    resp
}

/// A stable small hash (the bucket id Discord sends is opaque).
fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Auth, counting and the rate-limit gate shared by every guild route.
fn enter(
    state: &GuildState,
    headers: &HeaderMap,
    route: &str,
    guild: &str,
) -> Result<HeaderMap, Box<Response>> {
    state.calls.fetch_add(1, Ordering::SeqCst);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if state.refuse.load(Ordering::SeqCst) || auth != format!("Bot {BOT_TOKEN}") {
        return Err(Box::new(json_error(
            StatusCode::UNAUTHORIZED,
            "401: Unauthorized",
            0,
        )));
    }
    gate(state, route, guild)
}

fn with(headers: HeaderMap, resp: impl IntoResponse) -> Response {
    let mut resp = resp.into_response();
    resp.headers_mut().extend(headers);
    resp
}

fn member_json(guild: &str, user: &str, roles: &HashSet<String>) -> Value {
    let mut roles: Vec<&String> = roles.iter().collect();
    roles.sort();
    json!({
        "user": {"id": user, "username": format!("user{user}")},
        "roles": roles,
        "joined_at": "2026-12-07T20:00:00.000000+00:00",
        "deaf": false,
        "mute": false,
        "guild_id": guild,
    })
}

async fn add_member(
    State(state): State<Arc<GuildState>>,
    Path((g, u)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = match enter(&state, &headers, "PUT /guilds/{g}/members/{u}", &g) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let owned = |t: &str| {
        state.any_token.load(Ordering::SeqCst)
            || state
                .token_user
                .get()
                .is_none_or(|user_of| user_of(t).as_deref() == Some(u.as_str()))
    };
    let Some(token) = body["access_token"]
        .as_str()
        .filter(|t| !t.is_empty() && owned(t))
    else {
        return with(
            h,
            json_error(StatusCode::FORBIDDEN, "Invalid OAuth2 access token", 50025),
        );
    };
    let roles: HashSet<String> = body["roles"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let mut inner = state.inner.lock().unwrap();
    inner.tokens.insert(u.clone(), token.to_string());
    let key = (g.clone(), u.clone());
    if inner.members.contains_key(&key) {
        return with(h, StatusCode::NO_CONTENT);
    }
    let json = member_json(&g, &u, &roles);
    inner.members.insert(key, roles);
    with(h, (StatusCode::CREATED, Json(json)))
}

async fn get_member(
    State(state): State<Arc<GuildState>>,
    Path((g, u)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let h = match enter(&state, &headers, "GET /guilds/{g}/members/{u}", &g) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    let inner = state.inner.lock().unwrap();
    match inner.members.get(&(g.clone(), u.clone())) {
        Some(roles) => with(h, Json(member_json(&g, &u, roles))),
        None => with(
            h,
            json_error(StatusCode::NOT_FOUND, "Unknown Member", 10007),
        ),
    }
}

async fn add_role(
    State(state): State<Arc<GuildState>>,
    Path((g, u, r)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    role(&state, &headers, g, u, r, true)
}

async fn remove_role(
    State(state): State<Arc<GuildState>>,
    Path((g, u, r)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    role(&state, &headers, g, u, r, false)
}

fn role(
    state: &GuildState,
    headers: &HeaderMap,
    g: String,
    u: String,
    r: String,
    add: bool,
) -> Response {
    let route = if add {
        "PUT /guilds/{g}/members/{u}/roles/{r}"
    } else {
        "DELETE /guilds/{g}/members/{u}/roles/{r}"
    };
    let h = match enter(state, headers, route, &g) {
        Ok(h) => h,
        Err(resp) => return *resp,
    };
    let mut inner = state.inner.lock().unwrap();
    match inner.members.get_mut(&(g, u)) {
        Some(roles) => {
            if add {
                roles.insert(r);
            } else {
                roles.remove(&r);
            }
            with(h, StatusCode::NO_CONTENT)
        }
        None => with(
            h,
            json_error(StatusCode::NOT_FOUND, "Unknown Member", 10007),
        ),
    }
}
