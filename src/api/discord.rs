//! Discord Activity sign-in (issue 17, API.md "### Discord"): `POST
//! /v1/discord/token` trades the authorization code an Activity gets from the
//! Embedded App SDK's `authorize()` for Discord's access token (which the SDK's
//! `authenticate()` needs) and a tandem room token for the Activity instance's
//! sync room, so the Activity joins Watch Together with no tandem account.
//!
//! The exchange runs at Discord (`{api_base_url}/oauth2/token`, then
//! `/users/@me`); with a bot token configured, the user must also be in the
//! instance (`/applications/{app}/activity-instances/{id}`), or anyone holding
//! a Discord account could name any instance. The room is
//! `discord:{instance_id}`: its own namespace, so an instance id can never name
//! a stream's or a call's room. The tandem user is `discord:{user id}`.
//!
//! Secrets (client secret, bot token, the access token in logs) never leave
//! this module except in the requests to Discord; Discord's refusals are
//! relayed in plain words. The token endpoint call, `/users/@me` and the
//! relaying are shared with account linking (`discord::links`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};
use tandem_signaling::valid_room_id;

use crate::auth::{DEFAULT_MEDIA_TOKEN_TTL_SECS, Grants, TokenRequest};
use crate::config::DiscordConfig;
use crate::error::{AppError, AppResult};
use crate::state::AppState;

/// Prefix of the room of an Activity instance and of the tandem user of a Discord user.
const PREFIX: &str = "discord:";

/// Longest Discord message relayed to the caller.
const RELAY_CHARS: usize = 200;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/discord/token", post(token))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    code: String,
    #[serde(default)]
    instance_id: Option<String>,
}

/// Discord's `/users/@me` (the fields tandem uses).
#[derive(Debug, Deserialize)]
pub(crate) struct DiscordUser {
    pub id: String,
    pub username: String,
    #[serde(default)]
    pub global_name: Option<String>,
    #[serde(default)]
    pub avatar: Option<String>,
}

/// `POST /v1/discord/token`, anyone: `{code, instance_id}` →
/// `{access_token, user, session_token, room, expires_at}`.
#[utoipa::path(post, path = "/v1/discord/token", tag = "rooms",
    responses((status = 200, description = "{access_token, user: {id, username, global_name, avatar}, session_token, room, expires_at}"),
              (status = 400, description = "bad body, or Discord refused the code (field code)"),
              (status = 403, description = "not_in_instance (bot token configured)"),
              (status = 502, description = "discord_error: Discord unreachable or failing"),
              (status = 503, description = "[discord] client_id / client_secret not configured")))]
pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> AppResult<Response> {
    let body: TokenBody = crate::api::common::parse_json(&headers, &body)?;
    let code = body.code.trim();
    if code.is_empty() || code.len() > 512 || !crate::text::is_clean_line(code) {
        return Err(AppError::bad_request(
            "code: the authorization code from the SDK's authorize()",
        )
        .with("field", "code"));
    }
    let instance = body.instance_id.unwrap_or_default();
    let room = format!("{PREFIX}{instance}");
    if instance.is_empty() || !valid_room_id(&room) {
        return Err(AppError::bad_request(
            "instance_id: the Activity's instanceId (1–120 characters of [A-Za-z0-9_.:-]); \
             the session token is for that instance's room",
        )
        .with("field", "instance_id"));
    }
    let cfg = &state.config.discord;
    if cfg.client_id.is_empty() || cfg.client_secret.is_empty() {
        return Err(AppError::unavailable(
            "Discord sign-in is not configured: set [discord] client_id and client_secret \
             (TANDEM_DISCORD__CLIENT_ID, TANDEM_DISCORD__CLIENT_SECRET)",
        ));
    }
    let access_token = exchange(cfg, code).await?;
    let user = me(cfg, &access_token).await?;
    if !cfg.bot_token.is_empty() {
        check_instance(cfg, &instance, &user.id).await?;
    }
    let name = user
        .global_name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| user.username.clone());
    let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
    let (session_token, claims) = state.tokens.mint(&TokenRequest {
        user: format!("{PREFIX}{}", user.id),
        stream: None,
        room: Some(room.clone()),
        grants: Grants {
            chat: true,
            ..Default::default()
        },
        name: Some(name),
        role: Some("user".into()),
        ttl_secs: DEFAULT_MEDIA_TOKEN_TTL_SECS,
    });
    Ok(axum::Json(json!({
        "access_token": access_token,
        "user": {
            "id": user.id,
            "username": user.username,
            "global_name": user.global_name,
            "avatar": user.avatar,
        },
        "session_token": session_token,
        "room": room,
        "expires_at": crate::api::common::rfc3339(claims.exp as i64 * 1000),
    }))
    .into_response())
}

/// Discord's token endpoint refused the grant (400): OAuth's error code and
/// Discord's own words, already cleaned by [`relay`].
#[derive(Debug)]
pub(crate) struct Refusal {
    /// `invalid_grant`, `invalid_request`, …
    pub error: String,
    /// What to tell the caller (Discord's `error_description`, else `error`).
    pub words: String,
}

/// A form posted to `{api_base_url}/oauth2/token` with the application's
/// credentials added: the JSON answer, or Discord's refusal of the grant (400).
/// Discord unreachable, this server's credentials refused (401) or another
/// status are `discord_error` (502). Shared by the Activity's exchange and
/// `discord::links` (code with PKCE, refresh).
pub(crate) async fn token_request(
    cfg: &DiscordConfig,
    fields: &[(&str, &str)],
) -> AppResult<Result<Value, Refusal>> {
    let mut form: Vec<(&str, &str)> = fields.to_vec();
    form.push(("client_id", cfg.client_id.as_str()));
    form.push(("client_secret", cfg.client_secret.as_str()));
    let res = crate::platforms::http::client()
        .post(url(cfg, "/oauth2/token"))
        .form(&form)
        .send()
        .await
        .map_err(unreachable)?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if status == StatusCode::BAD_REQUEST {
        let error = relay(cfg, body["error"].as_str().unwrap_or("invalid_request"));
        let what = body["error_description"]
            .as_str()
            .or(body["error"].as_str())
            .unwrap_or("no reason given");
        return Ok(Err(Refusal {
            error,
            words: relay(cfg, what),
        }));
    }
    if status == StatusCode::UNAUTHORIZED {
        // `invalid_client`: the server's own credentials are wrong, not the caller's code.
        return Err(discord_error(
            "Discord refused this server's application credentials: check [discord] \
             client_id and client_secret",
        ));
    }
    if !status.is_success() {
        return Err(discord_error(format!(
            "Discord's token endpoint answered {status}"
        )));
    }
    if body["access_token"].as_str().is_none_or(str::is_empty) {
        return Err(discord_error(
            "Discord's token answer carried no access_token",
        ));
    }
    Ok(Ok(body))
}

/// A refused code as the caller's 400, in Discord's words.
pub(crate) fn code_refused(refusal: &Refusal) -> AppError {
    AppError::bad_request(format!("Discord refused the code: {}", refusal.words))
        .with("field", "code")
}

/// The code exchange at `{api_base_url}/oauth2/token`: Discord's access token.
async fn exchange(cfg: &DiscordConfig, code: &str) -> AppResult<String> {
    let mut form = vec![("grant_type", "authorization_code"), ("code", code)];
    if !cfg.redirect_uri.is_empty() {
        form.push(("redirect_uri", cfg.redirect_uri.as_str()));
    }
    let body = token_request(cfg, &form)
        .await?
        .map_err(|r| code_refused(&r))?;
    Ok(body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// `{api_base_url}/users/@me` with the user's access token.
pub(crate) async fn me(cfg: &DiscordConfig, access_token: &str) -> AppResult<DiscordUser> {
    let res = crate::platforms::http::client()
        .get(url(cfg, "/users/@me"))
        .bearer_auth(access_token)
        .send()
        .await
        .map_err(unreachable)?;
    if !res.status().is_success() {
        return Err(discord_error(format!(
            "Discord's /users/@me answered {}",
            res.status()
        )));
    }
    res.json()
        .await
        .map_err(|_| discord_error("Discord's /users/@me answer was not a user"))
}

/// The user must be in the Activity instance (checked with the bot token);
/// an unknown instance counts as not in it.
async fn check_instance(cfg: &DiscordConfig, instance: &str, user: &str) -> AppResult<()> {
    let path = format!(
        "/applications/{}/activity-instances/{instance}",
        cfg.client_id
    );
    let res = crate::platforms::http::client()
        .get(url(cfg, &path))
        .header(
            axum::http::header::AUTHORIZATION,
            format!("Bot {}", cfg.bot_token),
        )
        .send()
        .await
        .map_err(unreachable)?;
    let not_in = || {
        AppError::new(
            StatusCode::FORBIDDEN,
            "not_in_instance",
            "the Discord user is not in this Activity instance",
        )
    };
    if res.status() == StatusCode::NOT_FOUND {
        return Err(not_in());
    }
    if !res.status().is_success() {
        return Err(discord_error(format!(
            "Discord's activity-instances answered {}",
            res.status()
        )));
    }
    let body: Value = res
        .json()
        .await
        .map_err(|_| discord_error("Discord's activity instance answer was not JSON"))?;
    let users = body["users"]
        .as_array()
        .ok_or_else(|| discord_error("Discord's activity instance carried no users"))?;
    if users.iter().any(|u| u.as_str() == Some(user)) {
        Ok(())
    } else {
        Err(not_in())
    }
}

pub(crate) fn url(cfg: &DiscordConfig, path: &str) -> String {
    format!("{}{path}", cfg.api_base_url.trim_end_matches('/'))
}

pub(crate) fn discord_error(message: impl Into<String>) -> AppError {
    AppError::new(StatusCode::BAD_GATEWAY, "discord_error", message)
}

/// Discord could not be reached (or timed out). reqwest's error names the URL,
/// never a form field or header, but the message is ours anyway.
pub(crate) fn unreachable(err: reqwest::Error) -> AppError {
    tracing::warn!(
        timeout = err.is_timeout(),
        connect = err.is_connect(),
        "discord: request failed"
    );
    discord_error(if err.is_timeout() {
        "Discord did not answer in time"
    } else {
        "Discord could not be reached"
    })
}

/// Discord's own words, one short clean line, with no secret of ours in it.
pub(crate) fn relay(cfg: &DiscordConfig, text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(RELAY_CHARS)
        .collect();
    for secret in [&cfg.client_secret, &cfg.bot_token] {
        if !secret.is_empty() {
            out = out.replace(secret.as_str(), "<secret>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_is_short_clean_and_secret_free() {
        let cfg = DiscordConfig {
            client_secret: "s3cret".into(),
            bot_token: "b0t".into(),
            ..Default::default()
        };
        let text = format!("bad s3cret and b0t\n{}", "x".repeat(500));
        let out = relay(&cfg, &text);
        assert!(!out.contains("s3cret") && !out.contains("b0t"), "{out}");
        assert!(!out.contains('\n'));
        assert!(out.chars().count() <= RELAY_CHARS + 20, "{}", out.len());
    }
}
