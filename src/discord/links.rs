//! Linked Discord accounts (issue 17, API.md "### Discord", docs/DISCORD.md
//! "Account linking"): a tandem user links their Discord account with OAuth 2.0
//! (scopes `identify guilds.join`, PKCE S256), so the course-server code
//! (`discord::guild`) can put them into a guild with their own token.
//!
//! - `GET /v1/discord/link` (user): a fresh `state` in `oauth_states` (platform
//!   `discord`, bound to the caller, 10 minutes, single use, the PKCE verifier
//!   sealed — the platforms' table and code, `platforms::oauth`) → `{url,
//!   expires_at}`, Discord's authorize page (`[discord] authorize_url`).
//! - `GET /v1/discord/callback?code&state`: where Discord sends the browser back.
//!   A bearer, when sent, must be the user who started (403 otherwise, the state
//!   left usable); the state is the binding otherwise. The code is exchanged at
//!   `{api_base_url}/oauth2/token` with the verifier, the user read at
//!   `/users/@me`, the link stored with both tokens sealed → 303 to
//!   `/streams?discord=linked` (`/streams?discord=error&message=…` on failure),
//!   or JSON for `Accept: application/json` (201 with the link, or the error).
//! - `GET /v1/me/discord` · `DELETE /v1/me/discord` (best-effort revoke at
//!   Discord, then forgotten).
//!
//! [`access_token`] hands out a link's token refreshed [`REFRESH_MARGIN_MS`]
//! before it expires, one refresh at a time per user with the platforms' lock
//! pattern (in-process mutex + PostgreSQL row lock, `oauth::Locked`): Discord
//! rotates refresh tokens, so two refreshes with one token would leave one
//! caller with a dead grant. A refused refresh (`invalid_grant`) marks the link
//! `needs_relink`.
//!
//! Discord's refusals are relayed in plain words by `api::discord`'s helpers;
//! tokens never reach a log, an answer or a Debug output.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use oauth2::{CsrfToken, PkceCodeChallenge};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::api::common::rfc3339;
use crate::api::discord::{
    DiscordUser, code_refused, discord_error, me, relay, token_request, unreachable, url,
};
use crate::auth::{Identity, bearer};
use crate::clock::now_ms;
use crate::config::DiscordConfig;
use crate::error::{AppError, AppResult};
use crate::platforms::oauth::{Locked, claim_state, refresh_lock, save_state};
use crate::secrets::Sealed;
use crate::state::AppState;

/// `oauth_states.platform` of a Discord link.
const PLATFORM: &str = "discord";
/// What a link asks of Discord: who the user is, and joining guilds for them.
pub const SCOPES: &str = "identify guilds.join";
/// A token expiring within this is refreshed before use.
pub const REFRESH_MARGIN_MS: i64 = crate::platforms::oauth::REFRESH_MARGIN_MS;
/// Where the browser lands after the callback.
const PAGE: &str = "/streams";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/discord/link", get(link))
        .route("/v1/discord/callback", get(callback))
        .route("/v1/me/discord", get(show).delete(unlink))
}

/// A tandem user's linked Discord account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedAccount {
    pub user_id: String,
    pub discord_user_id: String,
    pub username: String,
}

/// A row of `discord_links`. Debug leaves the sealed fields out.
#[derive(Clone, sqlx::FromRow)]
struct LinkRow {
    user_id: String,
    discord_user_id: String,
    username: String,
    global_name: Option<String>,
    avatar: Option<String>,
    scopes: String,
    access_token_sealed: String,
    access_token_key_id: String,
    refresh_token_sealed: Option<String>,
    refresh_token_key_id: Option<String>,
    token_expires_at: Option<i64>,
    status: String,
    linked_at: i64,
}

impl std::fmt::Debug for LinkRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkRow")
            .field("user_id", &self.user_id)
            .field("discord_user_id", &self.discord_user_id)
            .field("status", &self.status)
            .field("token_expires_at", &self.token_expires_at)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "user_id, discord_user_id, username, global_name, avatar, scopes, \
     access_token_sealed, access_token_key_id, refresh_token_sealed, refresh_token_key_id, \
     token_expires_at, status, linked_at";

impl LinkRow {
    fn account(&self) -> LinkedAccount {
        LinkedAccount {
            user_id: self.user_id.clone(),
            discord_user_id: self.discord_user_id.clone(),
            username: self.username.clone(),
        }
    }

    fn expiring(&self, now: i64) -> bool {
        self.token_expires_at
            .is_some_and(|at| at - now < REFRESH_MARGIN_MS)
    }

    fn open(&self, state: &AppState, field: &str) -> AppResult<Option<String>> {
        let sealed = match field {
            "access_token" => Some(Sealed {
                key_id: self.access_token_key_id.clone(),
                blob: self.access_token_sealed.clone(),
            }),
            _ => self
                .refresh_token_sealed
                .clone()
                .zip(self.refresh_token_key_id.clone())
                .map(|(blob, key_id)| Sealed { key_id, blob }),
        };
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        state
            .keyring
            .open_string(&sealed, &aad(&self.user_id, field))
            .map(Some)
            .map_err(|err| {
                tracing::error!(user = %self.user_id, field, error = %err, "discord token does not open");
                AppError::internal()
            })
    }
}

/// The associated data of a link's sealed token (`rotate` builds the same).
fn aad(user_id: &str, field: &str) -> String {
    format!("discord_links:{user_id}:{field}")
}

async fn row(state: &AppState, user_id: &str) -> AppResult<Option<LinkRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM discord_links WHERE user_id = $1"
    ))
    .bind(user_id)
    .fetch_optional(&state.db.pool)
    .await?)
}

/// The link of a tandem user, if any (no Discord call).
pub async fn linked(state: &AppState, user_id: &str) -> AppResult<Option<LinkedAccount>> {
    Ok(row(state, user_id).await?.map(|r| r.account()))
}

/// A valid access token for the user's link, refreshed (5 min before expiry, one refresh at a
/// time per user); Ok(None) when not linked or Discord refused the refresh (link marked
/// needs_relink). Never logs the token.
pub async fn access_token(
    state: &AppState,
    user_id: &str,
) -> AppResult<Option<(LinkedAccount, String)>> {
    let Some(r) = row(state, user_id).await? else {
        return Ok(None);
    };
    if r.status != "ok" {
        return Ok(None);
    }
    if !r.expiring(now_ms()) {
        return Ok(r.open(state, "access_token")?.map(|t| (r.account(), t)));
    }
    let lock = refresh_lock(&format!("{PLATFORM}:{user_id}"));
    let _one_at_a_time = lock.lock().await;
    refresh_locked(state, user_id).await
}

/// The refresh under the row lock (PostgreSQL): the row is read again, so a
/// caller that waited finds the token the first one got and makes no call.
async fn refresh_locked(
    state: &AppState,
    user_id: &str,
) -> AppResult<Option<(LinkedAccount, String)>> {
    let mut locked = Locked::begin(state).await?;
    let select = format!(
        "SELECT {COLUMNS} FROM discord_links WHERE user_id = $1{}",
        Locked::for_update(state)
    );
    let r: Option<LinkRow> = sqlx::query_as(&select)
        .bind(user_id)
        .fetch_optional(locked.conn())
        .await?;
    let Some(r) = r else {
        return Ok(None);
    };
    let now = now_ms();
    if r.status != "ok" {
        locked.finish().await?;
        return Ok(None);
    }
    if !r.expiring(now) {
        locked.finish().await?;
        return Ok(r.open(state, "access_token")?.map(|t| (r.account(), t)));
    }
    let Some(refresh) = r.open(state, "refresh_token")? else {
        // Nothing to refresh with: link again.
        mark_needs_relink(&mut locked, user_id, now).await?;
        locked.finish().await?;
        return Ok(None);
    };
    let cfg = configured(state)?;
    let answer = token_request(
        cfg,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await?;
    match answer {
        Ok(body) => {
            let tokens = Tokens::read(&body);
            let (a, rt) = tokens.seal(state, user_id);
            sqlx::query(
                "UPDATE discord_links SET access_token_sealed = $1, access_token_key_id = $2, \
                 refresh_token_sealed = COALESCE($3, refresh_token_sealed), \
                 refresh_token_key_id = COALESCE($4, refresh_token_key_id), \
                 token_expires_at = $5, scopes = COALESCE($6, scopes), updated_at = $7 \
                 WHERE user_id = $8",
            )
            .bind(&a.blob)
            .bind(&a.key_id)
            .bind(rt.as_ref().map(|s| s.blob.clone()))
            .bind(rt.as_ref().map(|s| s.key_id.clone()))
            .bind(tokens.expires_in.map(|s| now + s * 1000))
            .bind(tokens.scope.clone())
            .bind(now)
            .bind(user_id)
            .execute(locked.conn())
            .await?;
            locked.finish().await?;
            tracing::info!(user = %user_id, "discord access token refreshed");
            Ok(Some((r.account(), tokens.access)))
        }
        Err(refusal) if refusal.error == "invalid_grant" => {
            mark_needs_relink(&mut locked, user_id, now).await?;
            locked.finish().await?;
            tracing::warn!(user = %user_id,
                "discord refresh token refused (invalid_grant): the link needs relinking");
            Ok(None)
        }
        Err(refusal) => Err(discord_error(format!(
            "Discord refused the token refresh: {}",
            refusal.words
        ))),
    }
}

async fn mark_needs_relink(locked: &mut Locked, user_id: &str, now: i64) -> AppResult<()> {
    sqlx::query(
        "UPDATE discord_links SET status = 'needs_relink', updated_at = $1 WHERE user_id = $2",
    )
    .bind(now)
    .bind(user_id)
    .execute(locked.conn())
    .await?;
    Ok(())
}

/// A token answer of Discord (`access_token, token_type, expires_in,
/// refresh_token, scope`). Debug-free: it holds tokens.
struct Tokens {
    access: String,
    refresh: Option<String>,
    /// Seconds.
    expires_in: Option<i64>,
    scope: Option<String>,
}

impl Tokens {
    fn read(body: &Value) -> Tokens {
        Tokens {
            access: body["access_token"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            refresh: body["refresh_token"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_string),
            expires_in: body["expires_in"].as_i64(),
            scope: body["scope"].as_str().map(str::to_string),
        }
    }

    fn seal(&self, state: &AppState, user_id: &str) -> (Sealed, Option<Sealed>) {
        let a = state
            .keyring
            .seal(self.access.as_bytes(), &aad(user_id, "access_token"));
        let r = self.refresh.as_ref().map(|t| {
            state
                .keyring
                .seal(t.as_bytes(), &aad(user_id, "refresh_token"))
        });
        (a, r)
    }
}

/// `[discord]` with the application's credentials, or 503 saying what to set.
fn configured(state: &AppState) -> AppResult<&DiscordConfig> {
    let cfg = &state.config.discord;
    if cfg.client_id.is_empty() || cfg.client_secret.is_empty() {
        return Err(AppError::unavailable(
            "Discord account linking is not configured: set [discord] client_id and \
             client_secret (TANDEM_DISCORD__CLIENT_ID, TANDEM_DISCORD__CLIENT_SECRET)",
        ));
    }
    Ok(cfg)
}

/// The redirect URI to register with the Discord application.
pub fn redirect_uri(state: &AppState) -> String {
    format!("{}/v1/discord/callback", state.public_url)
}

/// The answer of `GET /v1/discord/link`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LinkOut {
    /// Discord's authorize page: send the user's browser there.
    pub url: String,
    /// When the `state` in the URL stops being accepted (10 minutes).
    pub expires_at: String,
}

/// Starts linking the caller's Discord account.
#[utoipa::path(get, path = "/v1/discord/link", tag = "discord",
    security(("identity" = [])),
    responses((status = 200, body = LinkOut),
              (status = 401),
              (status = 503, description = "[discord] client_id / client_secret not configured")))]
pub async fn link(State(state): State<AppState>, me: Identity) -> AppResult<Response> {
    let cfg = configured(&state)?;
    let mut authorize = reqwest::Url::parse(&cfg.authorize_url).map_err(|_| {
        AppError::unavailable(
            "[discord] authorize_url is not a URL (TANDEM_DISCORD__AUTHORIZE_URL)",
        )
    })?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let state_id = CsrfToken::new_random().secret().clone();
    let expires = save_state(&state, &state_id, &me.user, PLATFORM, verifier.secret()).await?;
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &cfg.client_id)
        .append_pair("scope", SCOPES)
        .append_pair("state", &state_id)
        .append_pair("redirect_uri", &redirect_uri(&state))
        .append_pair("code_challenge", challenge.as_str())
        .append_pair("code_challenge_method", "S256")
        .append_pair("prompt", "consent");
    tracing::info!(user = %me.user, "discord link started");
    let mut resp = axum::Json(LinkOut {
        url: authorize.to_string(),
        expires_at: rfc3339(expires),
    })
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// What Discord appends to the redirect URI.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    /// Set instead of `code` when the user refused (`access_denied`).
    pub error: Option<String>,
}

/// A linked account as `GET /v1/me/discord` shows it: never a token.
#[derive(Debug, Serialize, ToSchema)]
pub struct LinkView {
    pub linked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discord_user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linked_at: Option<String>,
    /// `ok`, or `needs_relink` once Discord refused the refresh token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl LinkView {
    fn of(r: Option<&LinkRow>) -> LinkView {
        match r {
            None => LinkView {
                linked: false,
                discord_user_id: None,
                username: None,
                global_name: None,
                avatar: None,
                scopes: None,
                linked_at: None,
                status: None,
            },
            Some(r) => LinkView {
                linked: true,
                discord_user_id: Some(r.discord_user_id.clone()),
                username: Some(r.username.clone()),
                global_name: r.global_name.clone(),
                avatar: r.avatar.clone(),
                scopes: Some(r.scopes.split_whitespace().map(str::to_string).collect()),
                linked_at: Some(rfc3339(r.linked_at)),
                status: Some(r.status.clone()),
            },
        }
    }
}

fn bad_state() -> AppError {
    AppError::bad_request(
        "state is unknown, already used or expired (10 minutes): start linking again \
         (GET /v1/discord/link)",
    )
    .with("field", "state")
}

/// Discord's redirect back: exchanges the code, stores the link.
#[utoipa::path(get, path = "/v1/discord/callback", tag = "discord",
    params(CallbackQuery),
    responses((status = 303, description = "to /streams?discord=linked, or /streams?discord=error&message=… on any failure below"),
              (status = 201, body = LinkView, description = "linked (Accept: application/json)"),
              (status = 400, description = "unknown/used/expired state (field state); refused or missing code, in Discord's words (field code)"),
              (status = 401, description = "a bearer that is not valid"),
              (status = 403, description = "a bearer of another user than the one who started"),
              (status = 409, description = "discord_account_taken: that Discord account is linked to another user"),
              (status = 502, description = "discord_error"),
              (status = 503, description = "not configured")))]
pub async fn callback(
    State(state): State<AppState>,
    Query(q): Query<CallbackQuery>,
    headers: HeaderMap,
) -> AppResult<Response> {
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    match link_from_callback(&state, &q, &headers).await {
        Ok(view) if wants_json => Ok((StatusCode::CREATED, axum::Json(view)).into_response()),
        Ok(_) => Ok(see_other(&format!("{PAGE}?discord=linked"))),
        Err(err) if wants_json => Err(err),
        Err(err) => {
            let mut to = reqwest::Url::parse("http://x/").expect("static URL");
            to.set_path(PAGE);
            to.query_pairs_mut()
                .append_pair("discord", "error")
                .append_pair("message", &err.message);
            let location = format!("{}?{}", PAGE, to.query().unwrap_or_default());
            Ok(see_other(&location))
        }
    }
}

fn see_other(location: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(
            header::LOCATION,
            HeaderValue::from_str(location).unwrap_or_else(|_| HeaderValue::from_static(PAGE)),
        )],
    )
        .into_response()
}

async fn link_from_callback(
    state: &AppState,
    q: &CallbackQuery,
    headers: &HeaderMap,
) -> AppResult<LinkView> {
    let state_id = q
        .state
        .as_deref()
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .ok_or_else(bad_state)?;
    // A bearer sent along must be the user who started: checked before the state
    // is claimed, so another user's attempt leaves it usable by its owner.
    if let Some(token) = bearer(headers) {
        let caller = state.identity.verify(token)?;
        let owner: Option<(String,)> =
            sqlx::query_as("SELECT owner FROM oauth_states WHERE state = $1 AND platform = $2")
                .bind(state_id)
                .bind(PLATFORM)
                .fetch_optional(&state.db.pool)
                .await?;
        if let Some((owner,)) = owner
            && owner != caller.user
        {
            return Err(AppError::forbidden(
                "this link was started by another user: start linking again (GET /v1/discord/link)",
            ));
        }
    }
    let (owner, verifier) = claim_state(state, state_id, PLATFORM)
        .await?
        .ok_or_else(bad_state)?;
    if let Some(error) = &q.error {
        return Err(crate::platforms::oauth::denied(
            "Discord",
            error,
            "start linking again",
        ));
    }
    let code = q
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= 512)
        .ok_or_else(|| {
            AppError::bad_request("code is missing from the callback").with("field", "code")
        })?;
    let cfg = configured(state)?;
    let redirect = redirect_uri(state);
    let body = token_request(
        cfg,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &redirect),
            ("code_verifier", &verifier),
        ],
    )
    .await?
    .map_err(|r| code_refused(&r))?;
    let tokens = Tokens::read(&body);
    let user: DiscordUser = me(cfg, &tokens.access).await?;
    let now = now_ms();
    let taken: Option<(String,)> = sqlx::query_as(
        "SELECT user_id FROM discord_links WHERE discord_user_id = $1 AND user_id <> $2",
    )
    .bind(&user.id)
    .bind(&owner)
    .fetch_optional(&state.db.pool)
    .await?;
    if taken.is_some() {
        revoke(cfg, &tokens.access, "access_token").await;
        return Err(AppError::conflict(
            "discord_account_taken",
            "this Discord account is linked to another tandem user: unlink it there first",
        ));
    }
    let (a, r) = tokens.seal(state, &owner);
    let clean =
        |s: &str, n: usize| -> String { s.chars().filter(|c| !c.is_control()).take(n).collect() };
    let scopes = clean(tokens.scope.as_deref().unwrap_or(SCOPES), 200);
    sqlx::query(
        "INSERT INTO discord_links (user_id, discord_user_id, username, global_name, avatar, \
         scopes, access_token_sealed, access_token_key_id, refresh_token_sealed, \
         refresh_token_key_id, token_expires_at, status, linked_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'ok', $12, $12) \
         ON CONFLICT (user_id) DO UPDATE SET discord_user_id = excluded.discord_user_id, \
         username = excluded.username, global_name = excluded.global_name, \
         avatar = excluded.avatar, scopes = excluded.scopes, \
         access_token_sealed = excluded.access_token_sealed, \
         access_token_key_id = excluded.access_token_key_id, \
         refresh_token_sealed = excluded.refresh_token_sealed, \
         refresh_token_key_id = excluded.refresh_token_key_id, \
         token_expires_at = excluded.token_expires_at, status = 'ok', \
         linked_at = excluded.linked_at, updated_at = excluded.updated_at",
    )
    .bind(&owner)
    .bind(clean(&user.id, 32))
    .bind(clean(&user.username, 64))
    .bind(user.global_name.as_deref().map(|n| clean(n, 64)))
    .bind(user.avatar.as_deref().map(|n| clean(n, 64)))
    .bind(&scopes)
    .bind(&a.blob)
    .bind(&a.key_id)
    .bind(r.as_ref().map(|s| s.blob.clone()))
    .bind(r.as_ref().map(|s| s.key_id.clone()))
    .bind(tokens.expires_in.map(|s| now + s * 1000))
    .bind(now)
    .execute(&state.db.pool)
    .await?;
    tracing::info!(user = %owner, discord_user = %user.id, "discord account linked");
    // Enrolled before linking: the course servers add them now.
    state.discord.user_linked(&owner);
    Ok(LinkView::of(row(state, &owner).await?.as_ref()))
}

/// The caller's linked Discord account (`{linked: false}` when none).
#[utoipa::path(get, path = "/v1/me/discord", tag = "discord",
    security(("identity" = [])),
    responses((status = 200, body = LinkView), (status = 401)))]
pub async fn show(State(state): State<AppState>, me: Identity) -> AppResult<axum::Json<LinkView>> {
    Ok(axum::Json(LinkView::of(
        row(&state, &me.user).await?.as_ref(),
    )))
}

/// Unlinks the caller's Discord account: Discord is asked to revoke the grant
/// (best effort: a failure is logged, the link forgotten anyway). 204 also
/// when there was none.
#[utoipa::path(delete, path = "/v1/me/discord", tag = "discord",
    security(("identity" = [])),
    responses((status = 204, description = "unlinked (or was not linked)"), (status = 401)))]
pub async fn unlink(State(state): State<AppState>, me: Identity) -> AppResult<StatusCode> {
    let Some(r) = row(&state, &me.user).await? else {
        return Ok(StatusCode::NO_CONTENT);
    };
    sqlx::query("DELETE FROM discord_links WHERE user_id = $1")
        .bind(&me.user)
        .execute(&state.db.pool)
        .await?;
    crate::platforms::oauth::forget(&format!("{PLATFORM}:{}", me.user));
    tracing::info!(user = %me.user, discord_user = %r.discord_user_id, "discord account unlinked");
    // Revoking the refresh token ends the whole grant at Discord.
    let cfg = &state.config.discord;
    if !cfg.client_id.is_empty() && !cfg.client_secret.is_empty() {
        match r.open(&state, "refresh_token") {
            Ok(Some(t)) => revoke(cfg, &t, "refresh_token").await,
            _ => {
                if let Ok(Some(t)) = r.open(&state, "access_token") {
                    revoke(cfg, &t, "access_token").await
                }
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST {api_base_url}/oauth2/token/revoke`, best effort: failures are logged
/// (no token in them), never returned.
async fn revoke(cfg: &DiscordConfig, token: &str, hint: &str) {
    let res = crate::platforms::http::client()
        .post(url(cfg, "/oauth2/token/revoke"))
        .form(&[
            ("token", token),
            ("token_type_hint", hint),
            ("client_id", cfg.client_id.as_str()),
            ("client_secret", cfg.client_secret.as_str()),
        ])
        .send()
        .await;
    match res {
        Ok(r) if r.status().is_success() => {}
        Ok(r) => {
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let words = relay(cfg, body["error"].as_str().unwrap_or(""));
            tracing::warn!(%status, error = %words, "discord: token revocation refused");
        }
        Err(err) => {
            let _ = unreachable(err);
        }
    }
}
