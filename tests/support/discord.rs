//! A stand-in Discord API (nothing outside is reachable here): one small axum
//! server on 127.0.0.1:0 speaking Discord's documented wire format for what an
//! Activity's backend calls.
//!
//! - `GET /oauth2/authorize` (Discord's authorize page, at the host's root like
//!   discord.com's; `response_type=code, client_id, scope, state, redirect_uri,
//!   code_challenge, code_challenge_method=S256`): the user "signed in at
//!   Discord" is named by the header [`SIGNED_IN`] (a browser's session there);
//!   consent is automatic → 302 to `redirect_uri?code&state`. The code is good
//!   once, for that user, redirect URI and PKCE challenge.
//! - `POST /oauth2/token` (form, client credentials in the body):
//!   `grant_type=authorization_code` — [`GOOD_CODE`] (the Activity's, no PKCE)
//!   or a code of the authorize page with its `redirect_uri` and a
//!   `code_verifier` whose S256 is the challenge — answers `{access_token,
//!   token_type: "Bearer", expires_in, refresh_token, scope}`;
//!   `grant_type=refresh_token` with a live refresh token answers a new pair
//!   (Discord rotates refresh tokens: the old one dies); anything else 400
//!   `invalid_grant`; wrong credentials 401 `invalid_client`.
//! - `POST /oauth2/token/revoke` (form `token, token_type_hint`, credentials):
//!   the token (and its grant's other tokens) dies; 200 `{}`.
//! - `GET /users/@me` with `Bearer {ACCESS_TOKEN}`: [`USER_ID`]'s user; with a
//!   live issued token, that token's user.
//! - A second user for two-person flows (the Activity test): [`GOOD_CODE_2`] →
//!   [`ACCESS_TOKEN_2`] → [`USER_ID_2`], who has no `global_name` (Discord then
//!   shows the `username`) and is in [`INSTANCE`] too.
//! - `GET /applications/{app}/activity-instances/{id}` with `Bot {BOT_TOKEN}`:
//!   [`INSTANCE`] with [`USER_ID`] in its `users`, [`OTHER_INSTANCE`] without,
//!   anything else 404 `Unknown Activity Instance`.
//!
//! - Guild members and roles with Discord's rate limits (course servers):
//!   [`super::discord_guild`], state in [`Discord::guild`].
//!
//! [`Discord::configure`] points a tandem configuration at it; [`link_account`]
//! links a tandem user through the real flow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::api::Resp;
use super::app::TestApp;

pub const CLIENT_ID: &str = "1200000000000000001";
pub const CLIENT_SECRET: &str = "discord-client-secret-do-not-log";
pub const BOT_TOKEN: &str = "discord-bot-token-do-not-log";
pub const GOOD_CODE: &str = "good-code-1";
pub const ACCESS_TOKEN: &str = "discord-access-token-1";
pub const USER_ID: &str = "80351110224678912";
pub const GOOD_CODE_2: &str = "good-code-2";
pub const ACCESS_TOKEN_2: &str = "discord-access-token-2";
pub const USER_ID_2: &str = "41771983423143937";
pub const INSTANCE: &str = "i-1234567890-gc-9876543210";
pub const OTHER_INSTANCE: &str = "i-5555555555-gc-9876543210";
/// The header naming the Discord user signed in at the authorize page.
pub const SIGNED_IN: &str = "x-stand-in-discord-user";

/// How often each endpoint was called, the knobs, and the grants handed out.
pub struct DiscordState {
    pub token_calls: AtomicUsize,
    pub me_calls: AtomicUsize,
    pub instance_calls: AtomicUsize,
    /// `grant_type=refresh_token` requests (refused ones too).
    pub refresh_calls: AtomicUsize,
    pub revoke_calls: AtomicUsize,
    /// `expires_in` of the tokens handed out from now on (seconds).
    pub expires_in: AtomicI64,
    /// How long a refresh takes (so concurrent callers overlap).
    pub refresh_delay_ms: AtomicU64,
    grants: Mutex<Grants>,
}

impl Default for DiscordState {
    fn default() -> Self {
        DiscordState {
            token_calls: AtomicUsize::new(0),
            me_calls: AtomicUsize::new(0),
            instance_calls: AtomicUsize::new(0),
            refresh_calls: AtomicUsize::new(0),
            revoke_calls: AtomicUsize::new(0),
            expires_in: AtomicI64::new(604800),
            refresh_delay_ms: AtomicU64::new(0),
            grants: Mutex::new(Grants::default()),
        }
    }
}

/// What the authorize page and the token endpoint handed out.
#[derive(Default)]
struct Grants {
    n: u64,
    /// code → (user, redirect_uri, code_challenge, scope)
    codes: HashMap<String, (String, String, String, String)>,
    /// access token → user
    access: HashMap<String, String>,
    /// refresh token → (user, scope)
    refresh: HashMap<String, (String, String)>,
}

impl Grants {
    /// A new token pair for `user`.
    fn issue(&mut self, user: &str, scope: &str, expires_in: i64) -> serde_json::Value {
        self.n += 1;
        let access = format!("dc-at-{user}-{}", self.n);
        let refresh = format!("dc-rt-{user}-{}", self.n);
        self.access.insert(access.clone(), user.to_string());
        self.refresh
            .insert(refresh.clone(), (user.to_string(), scope.to_string()));
        json!({
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "refresh_token": refresh,
            "scope": scope
        })
    }
}

pub struct Discord {
    pub base: String,
    pub state: Arc<DiscordState>,
    /// Guild members, roles, rate limits and violations (`discord_guild.rs`).
    pub guild: Arc<super::discord_guild::GuildState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Discord {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Discord {
    pub async fn spawn() -> Discord {
        Self::spawn_with(super::discord_guild::GuildState::new()).await
    }

    /// With the guild routes' limits and state given.
    pub async fn spawn_with(guild: super::discord_guild::GuildState) -> Discord {
        let state = Arc::new(DiscordState::default());
        // Adding a member takes that user's own live access token, as at Discord.
        let grants = state.clone();
        let _ = guild.token_user.set(Box::new(move |token: &str| {
            grants.grants.lock().unwrap().access.get(token).cloned()
        }));
        let guild = Arc::new(guild);
        let app = Router::new()
            .route("/oauth2/authorize", get(authorize))
            .route("/api/oauth2/token", post(token))
            .route("/api/oauth2/token/revoke", post(revoke))
            .route("/api/users/@me", get(me))
            .route(
                "/api/applications/{app}/activity-instances/{id}",
                get(instance),
            )
            .with_state(state.clone())
            .merge(super::discord_guild::routes(guild.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Discord {
            base,
            state,
            guild,
            task,
        }
    }

    /// Points `[discord]` of `c` at this server, with the test credentials;
    /// `bot`: with the bot token (instance membership is checked).
    pub fn configure(&self, c: &mut tandem::config::Config, bot: bool) {
        c.discord.api_base_url = self.base.clone();
        c.discord.client_id = CLIENT_ID.into();
        c.discord.client_secret = CLIENT_SECRET.into();
        c.discord.bot_token = if bot { BOT_TOKEN.into() } else { String::new() };
        c.discord.authorize_url = format!("{}/oauth2/authorize", self.root());
    }

    /// `http://127.0.0.1:PORT` (the authorize page lives there, the API under `/api`).
    pub fn root(&self) -> &str {
        self.base.trim_end_matches("/api")
    }

    /// Every refresh token handed out dies (the user deauthorized the app at
    /// Discord): the next refresh is `invalid_grant`.
    pub fn revoke_refresh_tokens(&self) {
        self.state.grants.lock().unwrap().refresh.clear();
    }

    /// Whether `token` (access or refresh) is still live.
    pub fn is_live(&self, token: &str) -> bool {
        let g = self.state.grants.lock().unwrap();
        g.access.contains_key(token) || g.refresh.contains_key(token)
    }

    /// How many access tokens are live.
    pub fn live_access_tokens(&self) -> usize {
        self.state.grants.lock().unwrap().access.len()
    }

    /// The user's browser at the authorize page `url` (from `GET
    /// /v1/discord/link`), signed in at Discord as `discord_user_id`: the
    /// stand-in consents and answers its redirect; this returns the callback's
    /// query (`code=…&state=…`).
    pub async fn authorize(&self, url: &str, discord_user_id: &str) -> String {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let res = client
            .get(url)
            .header(SIGNED_IN, discord_user_id)
            .send()
            .await
            .expect("authorize page");
        assert_eq!(
            res.status(),
            StatusCode::FOUND,
            "authorize: {:?}",
            res.text().await
        );
        let location = res.headers()["location"].to_str().unwrap().to_string();
        let to = reqwest::Url::parse(&location).unwrap();
        assert_eq!(to.path(), "/v1/discord/callback", "{location}");
        to.query().unwrap_or_default().to_string()
    }
}

/// Links the tandem user of `user_bearer` to the Discord account
/// `discord_user_id` through the real flow: `GET /v1/discord/link` → the
/// stand-in's authorize page → `GET /v1/discord/callback?code&state` (with the
/// bearer and `Accept: application/json`); panics unless it answers 201.
pub async fn link_account(
    app: &TestApp,
    discord: &Discord,
    user_bearer: &str,
    discord_user_id: &str,
) {
    let r = app.get("/v1/discord/link", Some(user_bearer)).await;
    assert_eq!(r.status, StatusCode::OK, "link: {}", r.text);
    let query = discord
        .authorize(r.body["url"].as_str().expect("url"), discord_user_id)
        .await;
    let r = callback(app, &query, Some(user_bearer)).await;
    assert_eq!(r.status, StatusCode::CREATED, "callback: {}", r.text);
    assert_eq!(r.body["discord_user_id"], discord_user_id, "{}", r.text);
}

/// `GET /v1/discord/callback?{query}` as JSON, with `bearer` if given.
pub async fn callback(app: &TestApp, query: &str, bearer: Option<&str>) -> Resp {
    app.send(
        reqwest::Method::GET,
        &format!("/v1/discord/callback?{query}"),
        bearer,
        None,
        &[("accept", "application/json")],
    )
    .await
}

/// Discord's authorize page (see the module header).
async fn authorize(
    State(state): State<Arc<DiscordState>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let field = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let bad = |what: &str| (StatusCode::BAD_REQUEST, what.to_string()).into_response();
    if field("client_id") != CLIENT_ID {
        return bad("Unknown application");
    }
    if field("response_type") != "code" || field("state").is_empty() {
        return bad("response_type=code and a state, please");
    }
    if field("code_challenge_method") != "S256" || field("code_challenge").len() != 43 {
        return bad("Invalid code_challenge");
    }
    let scopes: Vec<&str> = field("scope").split(' ').collect();
    if !scopes.contains(&"identify") {
        return bad("Invalid scope");
    }
    let Some(user) = headers.get(SIGNED_IN).and_then(|v| v.to_str().ok()) else {
        return bad("not signed in at Discord");
    };
    let Ok(mut to) = reqwest::Url::parse(field("redirect_uri")) else {
        return bad("Invalid \"redirect_uri\" in request.");
    };
    let mut g = state.grants.lock().unwrap();
    g.n += 1;
    let code = format!("dc-code-{}", g.n);
    g.codes.insert(
        code.clone(),
        (
            user.to_string(),
            field("redirect_uri").to_string(),
            field("code_challenge").to_string(),
            field("scope").to_string(),
        ),
    );
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", field("state"));
    (StatusCode::FOUND, [("location", to.to_string())]).into_response()
}

fn invalid_grant(why: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_grant", "error_description": why})),
    )
        .into_response()
}

async fn revoke(
    State(state): State<Arc<DiscordState>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    state.revoke_calls.fetch_add(1, Ordering::SeqCst);
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if field("client_id") != CLIENT_ID || field("client_secret") != CLIENT_SECRET {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let mut g = state.grants.lock().unwrap();
    // The whole grant of that token's user dies.
    let user = g
        .access
        .get(field("token"))
        .cloned()
        .or_else(|| g.refresh.get(field("token")).map(|(u, _)| u.clone()));
    if let Some(user) = user {
        g.access.retain(|_, u| *u != user);
        g.refresh.retain(|_, (u, _)| *u != user);
    }
    Json(json!({})).into_response()
}

async fn token(
    State(state): State<Arc<DiscordState>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    state.token_calls.fetch_add(1, Ordering::SeqCst);
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if field("client_id") != CLIENT_ID || field("client_secret") != CLIENT_SECRET {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let expires_in = state.expires_in.load(Ordering::SeqCst);
    match field("grant_type") {
        "authorization_code" if field("code") == GOOD_CODE_2 => Json(json!({
            "access_token": ACCESS_TOKEN_2,
            "token_type": "Bearer",
            "expires_in": 604800,
            "refresh_token": "discord-refresh-token-2",
            "scope": "identify"
        }))
        .into_response(),
        "authorization_code" if field("code") == GOOD_CODE => Json(json!({
            "access_token": ACCESS_TOKEN,
            "token_type": "Bearer",
            "expires_in": 604800,
            "refresh_token": "discord-refresh-token-1",
            "scope": "identify"
        }))
        .into_response(),
        "authorization_code" => {
            let mut g = state.grants.lock().unwrap();
            // Good once: taken out whatever follows.
            let Some((user, redirect, challenge, scope)) = g.codes.remove(field("code")) else {
                return invalid_grant("Invalid \"code\" in request.");
            };
            if field("redirect_uri") != redirect {
                return invalid_grant("Invalid \"redirect_uri\" in request.");
            }
            let verifier = oauth2::PkceCodeVerifier::new(field("code_verifier").to_string());
            if oauth2::PkceCodeChallenge::from_code_verifier_sha256(&verifier).as_str() != challenge
            {
                return invalid_grant("Invalid \"code_verifier\" in request.");
            }
            Json(g.issue(&user, &scope, expires_in)).into_response()
        }
        "refresh_token" => {
            state.refresh_calls.fetch_add(1, Ordering::SeqCst);
            let delay = state.refresh_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                // A slow refresh, so that concurrent callers overlap.
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let mut g = state.grants.lock().unwrap();
            let Some((user, scope)) = g.refresh.remove(field("refresh_token")) else {
                return invalid_grant("Invalid \"refresh_token\" in request.");
            };
            Json(g.issue(&user, &scope, expires_in)).into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response(),
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"message": "401: Unauthorized", "code": 0})),
    )
        .into_response()
}

async fn me(State(state): State<Arc<DiscordState>>, headers: HeaderMap) -> Response {
    state.me_calls.fetch_add(1, Ordering::SeqCst);
    let bearer = auth(&headers).strip_prefix("Bearer ").unwrap_or("");
    if bearer == ACCESS_TOKEN {
        return Json(json!({
            "id": USER_ID,
            "username": "nelly",
            "global_name": "Nelly",
            "avatar": "8342729096ea3675442027381ff50dfe",
            "discriminator": "0",
            "public_flags": 64,
            "flags": 64,
            "locale": "en-US",
            "mfa_enabled": true
        }))
        .into_response();
    }
    if bearer == ACCESS_TOKEN_2 {
        return Json(json!({
            "id": USER_ID_2,
            "username": "kit_watches",
            "global_name": null,
            "avatar": "a_1f0e2d3c4b5a69788796a5b4c3d2e1f0",
            "discriminator": "0",
            "public_flags": 0,
            "flags": 0,
            "locale": "en-GB",
            "mfa_enabled": false
        }))
        .into_response();
    }
    let user = state.grants.lock().unwrap().access.get(bearer).cloned();
    let Some(user) = user else {
        return unauthorized();
    };
    Json(json!({
        "id": user,
        "username": format!("user{user}"),
        "global_name": format!("User {user}"),
        "avatar": null,
        "discriminator": "0",
        "public_flags": 0,
        "flags": 0
    }))
    .into_response()
}

async fn instance(
    State(state): State<Arc<DiscordState>>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    state.instance_calls.fetch_add(1, Ordering::SeqCst);
    if auth(&headers) != format!("Bot {BOT_TOKEN}") {
        return unauthorized();
    }
    let users = match id.as_str() {
        INSTANCE if app == CLIENT_ID => vec![USER_ID, USER_ID_2],
        OTHER_INSTANCE if app == CLIENT_ID => vec!["41771983423143937"],
        _ => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"message": "Unknown Activity Instance", "code": 10106})),
            )
                .into_response();
        }
    };
    Json(json!({
        "application_id": app,
        "instance_id": id,
        "launch_id": "1270000000000000000",
        "location": {
            "id": "gc-9876543210-123",
            "kind": "gc",
            "channel_id": "9876543210",
            "guild_id": "123"
        },
        "users": users
    }))
    .into_response()
}

fn auth(headers: &HeaderMap) -> &str {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}
