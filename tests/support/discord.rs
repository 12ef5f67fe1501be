//! A stand-in Discord API (nothing outside is reachable here): one small axum
//! server on 127.0.0.1:0 speaking Discord's documented wire format for what an
//! Activity's backend calls.
//!
//! - `POST /oauth2/token` (form `grant_type=authorization_code, code, client_id,
//!   client_secret`): [`GOOD_CODE`] with the test credentials answers
//!   `{access_token, token_type: "Bearer", expires_in, refresh_token, scope}`;
//!   any other code 400 `invalid_grant`; wrong credentials 401 `invalid_client`.
//! - `GET /users/@me` with `Bearer {ACCESS_TOKEN}`: [`USER_ID`]'s user.
//! - `GET /applications/{app}/activity-instances/{id}` with `Bot {BOT_TOKEN}`:
//!   [`INSTANCE`] with [`USER_ID`] in its `users`, [`OTHER_INSTANCE`] without,
//!   anything else 404 `Unknown Activity Instance`.
//!
//! - Guild members and roles with Discord's rate limits (course servers):
//!   [`super::discord_guild`], state in [`Discord::guild`].
//!
//! [`Discord::configure`] points a tandem configuration at it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

pub const CLIENT_ID: &str = "1200000000000000001";
pub const CLIENT_SECRET: &str = "discord-client-secret-do-not-log";
pub const BOT_TOKEN: &str = "discord-bot-token-do-not-log";
pub const GOOD_CODE: &str = "good-code-1";
pub const ACCESS_TOKEN: &str = "discord-access-token-1";
pub const USER_ID: &str = "80351110224678912";
pub const INSTANCE: &str = "i-1234567890-gc-9876543210";
pub const OTHER_INSTANCE: &str = "i-5555555555-gc-9876543210";

/// How often each endpoint was called.
#[derive(Default)]
pub struct DiscordState {
    pub token_calls: AtomicUsize,
    pub me_calls: AtomicUsize,
    pub instance_calls: AtomicUsize,
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
        let guild = Arc::new(guild);
        let state = Arc::new(DiscordState::default());
        let app = Router::new()
            .route("/api/oauth2/token", post(token))
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
    }
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
    if field("grant_type") != "authorization_code" {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    if field("code") != GOOD_CODE {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": "invalid_grant",
                "error_description": "Invalid \"code\" in request."
            })),
        )
            .into_response();
    }
    Json(json!({
        "access_token": ACCESS_TOKEN,
        "token_type": "Bearer",
        "expires_in": 604800,
        "refresh_token": "discord-refresh-token-1",
        "scope": "identify"
    }))
    .into_response()
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
    if auth(&headers) != format!("Bearer {ACCESS_TOKEN}") {
        return unauthorized();
    }
    Json(json!({
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
        INSTANCE if app == CLIENT_ID => vec![USER_ID, "41771983423143937"],
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
