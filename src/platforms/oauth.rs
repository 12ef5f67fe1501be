//! OAuth 2.0 with PKCE (S256) for YouTube, Twitch and Facebook, with the
//! `oauth2` crate over the shared reqwest client.
//!
//! - `GET /v1/platform-connections/oauth/{platform}/start` (instructor): a fresh
//!   `state` bound to the caller and the platform (10 minutes, single use) with its
//!   PKCE verifier sealed, and the provider's authorize URL → 200 `{authorize_url, state}`.
//! - `GET /v1/platform-connections/oauth/{platform}/callback?code&state`: where
//!   the provider sends the browser back (no bearer: the state is the binding).
//!   The state is claimed (an unknown, used, expired or other platform's state is
//!   400 naming `state`), the code exchanged with the verifier, and an `oauth`
//!   connection stored with its tokens sealed → 303 to `/restream`, or 201 with
//!   the connection for `Accept: application/json`.
//!
//! [`access_token`] hands out a connection's access token, refreshed when it
//! expires within [`REFRESH_MARGIN_MS`]. One refresh at a time per connection: an
//! in-process async mutex per connection, and across nodes the row lock of
//! PostgreSQL (`SELECT … FOR UPDATE` in a transaction held over the provider call;
//! SQLite runs on one node, where the mutex is the whole story). Under the lock
//! the row is read again, so a caller that waited finds the token the first one
//! got and makes no call. `invalid_grant` (revoked or expired refresh token) reads
//! the row once more (a refresh elsewhere may have replaced the token) and then
//! marks the connection `needs_reconnect`.

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dashmap::DashMap;
use oauth2::basic::{
    BasicErrorResponse, BasicErrorResponseType, BasicRevocationErrorResponse,
    BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AccessToken, AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    EndpointNotSet, EndpointSet, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardRevocableToken, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, Transaction};
use utoipa::{IntoParams, ToSchema};

use super::OAUTH_PLATFORMS;
use super::http::{client as http_client, platform_error};
use super::store::{COLUMNS, ConnectionOut, ConnectionRow, aad, needs_reconnect, sealed};
use crate::clock::now_ms;
use crate::config::OAuthProvider;
use crate::error::{AppError, AppResult};
use crate::extract::Instructor;
use crate::secrets::Sealed;
use crate::state::AppState;
use crate::storage::Backend;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/platform-connections/oauth/{platform}/start",
            get(start),
        )
        .route(
            "/v1/platform-connections/oauth/{platform}/callback",
            get(callback),
        )
}

/// How long a started authorization may take to come back.
pub const STATE_TTL_MS: i64 = 10 * 60 * 1000;
/// A token expiring within this is refreshed before use.
pub const REFRESH_MARGIN_MS: i64 = 5 * 60 * 1000;

/// The client the `oauth2` crate builds: authorize and token endpoints set,
/// token answers read as [`TokenAnswer`].
type Client = oauth2::Client<
    BasicErrorResponse,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// [`Client`] before its endpoints are set.
type NewClient = oauth2::Client<
    BasicErrorResponse,
    TokenAnswer,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
>;

/// A token endpoint's answer. Not the crate's `StandardTokenResponse`, which
/// takes `scope` only as RFC 6749's space-separated string: Twitch answers a
/// JSON array there (and Facebook may leave `token_type` out). The scope is not
/// used, so it is not read at all.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TokenAnswer {
    access_token: AccessToken,
    #[serde(
        default = "bearer",
        deserialize_with = "oauth2::helpers::deserialize_untagged_enum_case_insensitive"
    )]
    token_type: BasicTokenType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<RefreshToken>,
}

fn bearer() -> BasicTokenType {
    BasicTokenType::Bearer
}

impl TokenResponse for TokenAnswer {
    type TokenType = BasicTokenType;
    fn access_token(&self) -> &AccessToken {
        &self.access_token
    }
    fn token_type(&self) -> &BasicTokenType {
        &self.token_type
    }
    fn expires_in(&self) -> Option<std::time::Duration> {
        self.expires_in.map(std::time::Duration::from_secs)
    }
    fn refresh_token(&self) -> Option<&RefreshToken> {
        self.refresh_token.as_ref()
    }
    fn scopes(&self) -> Option<&Vec<Scope>> {
        None
    }
}

/// The scopes asked of each platform (docs/RESTREAM.md).
pub fn scopes(platform: &str) -> &'static [&'static str] {
    match platform {
        "youtube" => &["https://www.googleapis.com/auth/youtube"],
        "twitch" => &["channel:read:stream_key"],
        "facebook" => &["publish_video"],
        _ => &[],
    }
}

/// What a connection made by OAuth is called at first.
fn display_name(platform: &str) -> &'static str {
    match platform {
        "youtube" => "YouTube",
        "twitch" => "Twitch",
        "facebook" => "Facebook",
        _ => "OAuth",
    }
}

/// The `[platforms.{platform}]` section of an OAuth platform: 400 naming
/// `platform` for another platform, 409 `platform_not_configured` when the
/// operator set no app.
pub fn provider<'a>(state: &'a AppState, platform: &str) -> AppResult<&'a OAuthProvider> {
    let p = &state.config.platforms;
    let cfg = match platform {
        "youtube" => &p.youtube,
        "twitch" => &p.twitch,
        "facebook" => &p.facebook,
        _ => {
            return Err(AppError::bad_request(format!(
                "platform must be one of {} for OAuth (the others take a stream key: POST /v1/platform-connections)",
                OAUTH_PLATFORMS.join(", ")
            ))
            .with("field", "platform"));
        }
    };
    if cfg.client_id.is_empty() || cfg.client_secret.is_empty() {
        return Err(not_configured(
            platform,
            "the server has no OAuth app for it: set client_id and client_secret",
        ));
    }
    Ok(cfg)
}

fn not_configured(platform: &str, why: &str) -> AppError {
    AppError::conflict(
        "platform_not_configured",
        format!(
            "{platform} is not configured: {why} in [platforms.{platform}] \
             (TANDEM_PLATFORMS__{up}__CLIENT_ID, TANDEM_PLATFORMS__{up}__CLIENT_SECRET); docs/RESTREAM.md",
            up = platform.to_uppercase()
        ),
    )
    .with("platform", platform.to_string())
}

/// The redirect URI to register with the provider.
pub fn redirect_uri(state: &AppState, platform: &str) -> String {
    format!(
        "{}/v1/platform-connections/oauth/{platform}/callback",
        state.public_url
    )
}

fn build_client(state: &AppState, platform: &str, cfg: &OAuthProvider) -> AppResult<Client> {
    let bad = |key: &str| not_configured(platform, &format!("{key} is not a URL"));
    Ok(NewClient::new(ClientId::new(cfg.client_id.clone()))
        .set_client_secret(ClientSecret::new(cfg.client_secret.clone()))
        // Twitch and Facebook take the client credentials in the form body only;
        // Google takes either.
        .set_auth_type(AuthType::RequestBody)
        .set_auth_uri(AuthUrl::new(cfg.auth_url.clone()).map_err(|_| bad("auth_url"))?)
        .set_token_uri(TokenUrl::new(cfg.token_url.clone()).map_err(|_| bad("token_url"))?)
        .set_redirect_uri(
            RedirectUrl::new(redirect_uri(state, platform)).map_err(|_| bad("public_url"))?,
        ))
}

/// The answer of `start`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StartOut {
    /// Where to send the instructor's browser.
    pub authorize_url: String,
    /// The `state` the provider hands back to the callback (10 minutes, single use).
    pub state: String,
}

/// Starts connecting `platform`: the provider's authorize URL with PKCE.
#[utoipa::path(get, path = "/v1/platform-connections/oauth/{platform}/start", tag = "platforms",
    security(("identity" = [])),
    params(("platform" = String, Path, description = "youtube, twitch or facebook")),
    responses((status = 200, body = StartOut),
              (status = 400, description = "not an OAuth platform (field platform)"),
              (status = 401), (status = 403),
              (status = 409, description = "platform_not_configured: the server has no OAuth app for it")))]
pub async fn start(
    State(state): State<AppState>,
    Path(platform): Path<String>,
    Instructor(me): Instructor,
) -> AppResult<Response> {
    let cfg = provider(&state, &platform)?;
    let client = build_client(&state, &platform, cfg)?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut req = client
        .authorize_url(CsrfToken::new_random)
        .set_pkce_challenge(challenge);
    for scope in scopes(&platform) {
        req = req.add_scope(Scope::new(scope.to_string()));
    }
    if platform == "youtube" {
        // A refresh token (offline access), asked for again on every consent.
        req = req
            .add_extra_param("access_type", "offline")
            .add_extra_param("prompt", "consent");
    }
    let (url, csrf) = req.url();
    let state_id = csrf.secret().clone();
    save_state(&state, &state_id, &me.user, &platform, verifier.secret()).await?;
    tracing::info!(owner = %me.user, %platform, "OAuth connection started");
    let mut resp = axum::Json(StartOut {
        authorize_url: url.to_string(),
        state: state_id,
    })
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// The associated data of a state's sealed PKCE verifier.
/// The callback of an authorization the user (or the provider) refused:
/// 400 naming OAuth's short error code (anything else in it is not echoed).
pub(crate) fn denied(provider: &str, error: &str, again: &str) -> AppError {
    let code: String = error
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect();
    AppError::bad_request(format!("{provider} did not grant access ({code}): {again}"))
        .with("field", "code")
}

pub fn state_aad(state_id: &str) -> String {
    format!("oauth_states:{state_id}:pkce_verifier")
}

/// Stores a started authorization in `oauth_states`: bound to `owner` and
/// `platform`, its PKCE verifier sealed, good for [`STATE_TTL_MS`]; drops the
/// states nobody came back for. Shared with `discord::links` (platform
/// `discord`). Answers the expiry (unix ms).
pub(crate) async fn save_state(
    state: &AppState,
    state_id: &str,
    owner: &str,
    platform: &str,
    verifier: &str,
) -> AppResult<i64> {
    let sealed = state
        .keyring
        .seal(verifier.as_bytes(), &state_aad(state_id));
    let now = now_ms();
    // States nobody came back for are dropped here (an hour past their expiry).
    sqlx::query("DELETE FROM oauth_states WHERE expires_at < $1")
        .bind(now - 3_600_000)
        .execute(&state.db.pool)
        .await?;
    sqlx::query(
        "INSERT INTO oauth_states (state, owner, platform, verifier_sealed, verifier_key_id, \
         created_at, expires_at, used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
    )
    .bind(state_id)
    .bind(owner)
    .bind(platform)
    .bind(&sealed.blob)
    .bind(&sealed.key_id)
    .bind(now)
    .bind(now + STATE_TTL_MS)
    .execute(&state.db.pool)
    .await?;
    Ok(now + STATE_TTL_MS)
}

/// Claims a state of `platform` (once: of two callbacks with one state, one
/// wins; unknown, used or expired → `Ok(None)`) and answers its owner and the
/// opened PKCE verifier. Shared with `discord::links`.
pub(crate) async fn claim_state(
    state: &AppState,
    state_id: &str,
    platform: &str,
) -> AppResult<Option<(String, String)>> {
    let now = now_ms();
    // Claimed by one conditional update: of two callbacks with one state, one wins.
    let claimed = sqlx::query(
        "UPDATE oauth_states SET used_at = $1 WHERE state = $2 AND platform = $3 \
         AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(state_id)
    .bind(platform)
    .execute(&state.db.pool)
    .await?;
    if claimed.rows_affected() != 1 {
        return Ok(None);
    }
    let (owner, blob, key_id): (String, String, String) = sqlx::query_as(
        "SELECT owner, verifier_sealed, verifier_key_id FROM oauth_states WHERE state = $1",
    )
    .bind(state_id)
    .fetch_one(&state.db.pool)
    .await?;
    let verifier = state
        .keyring
        .open_string(&Sealed { key_id, blob }, &state_aad(state_id))
        .map_err(|err| {
            tracing::error!(error = %err, "PKCE verifier does not open");
            AppError::internal()
        })?;
    Ok(Some((owner, verifier)))
}

/// What the provider appends to the redirect URI.
#[derive(Debug, Deserialize, IntoParams)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    /// Set instead of `code` when the user (or the provider) refused.
    pub error: Option<String>,
}

fn bad_state() -> AppError {
    AppError::bad_request(
        "state is unknown, already used, expired (10 minutes) or of another platform: \
         start connecting again",
    )
    .with("field", "state")
}

/// The provider's redirect back: exchanges the code, stores the connection.
#[utoipa::path(get, path = "/v1/platform-connections/oauth/{platform}/callback", tag = "platforms",
    params(("platform" = String, Path), CallbackQuery),
    responses((status = 303, description = "connected: to the /restream page (?connected={id})"),
              (status = 201, body = ConnectionOut, description = "connected (Accept: application/json)"),
              (status = 400, description = "bad_request: unknown/used/expired state (field state), refused or missing code (field code)"),
              (status = 409, description = "platform_not_configured"),
              (status = 502, description = "platform_error: the token exchange failed")))]
pub async fn callback(
    State(state): State<AppState>,
    Path(platform): Path<String>,
    Query(q): Query<CallbackQuery>,
    headers: HeaderMap,
) -> AppResult<Response> {
    if !OAUTH_PLATFORMS.contains(&platform.as_str()) {
        return Err(AppError::bad_request(format!(
            "platform must be one of {}",
            OAUTH_PLATFORMS.join(", ")
        ))
        .with("field", "platform"));
    }
    let state_id = q
        .state
        .as_deref()
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .ok_or_else(bad_state)?;
    let (owner, verifier) = claim_state(&state, state_id, &platform)
        .await?
        .ok_or_else(bad_state)?;
    let now = now_ms();
    if let Some(error) = &q.error {
        return Err(denied(&platform, error, "start connecting again"));
    }
    let code = q.code.as_deref().filter(|c| !c.is_empty()).ok_or_else(|| {
        AppError::bad_request("code is missing from the callback").with("field", "code")
    })?;
    let cfg = provider(&state, &platform)?;
    let client = build_client(&state, &platform, cfg)?;
    let token = client
        .exchange_code(AuthorizationCode::new(code.to_string()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .request_async(http_client())
        .await
        .map_err(|err| token_error(&platform, "the code exchange", &err))?;
    let access = token.access_token().secret().clone();
    let account = super::providers::account_id(&state, &platform, &access).await?;
    let id = format!("pc_{}", uuid::Uuid::new_v4().simple());
    let a = state
        .keyring
        .seal(access.as_bytes(), &aad(&id, "access_token"));
    let r = token.refresh_token().map(|t| {
        state
            .keyring
            .seal(t.secret().as_bytes(), &aad(&id, "refresh_token"))
    });
    let expires = token.expires_in().map(|d| now + d.as_millis() as i64);
    sqlx::query(
        "INSERT INTO platform_connections (id, owner, platform, name, kind, ingest_url, \
         access_token_sealed, access_token_key_id, refresh_token_sealed, refresh_token_key_id, \
         token_expires_at, provider_account_id, status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, 'oauth', NULL, $5, $6, $7, $8, $9, $10, 'ok', $11, $11)",
    )
    .bind(&id)
    .bind(&owner)
    .bind(&platform)
    .bind(display_name(&platform))
    .bind(&a.blob)
    .bind(&a.key_id)
    .bind(r.as_ref().map(|s| s.blob.clone()))
    .bind(r.as_ref().map(|s| s.key_id.clone()))
    .bind(expires)
    .bind(account)
    .bind(now)
    .execute(&state.db.pool)
    .await?;
    tracing::info!(connection = %id, %owner, %platform, refresh = r.is_some(), "OAuth connection stored");
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    if wants_json {
        let out = ConnectionOut {
            id,
            platform: platform.clone(),
            name: display_name(&platform).into(),
            kind: "oauth".into(),
            ingest_url: None,
            stream_key_hint: None,
            status: "ok".into(),
            created_at: crate::api::common::rfc3339(now),
        };
        return Ok((StatusCode::CREATED, axum::Json(out)).into_response());
    }
    let location = format!("/restream?connected={id}");
    Ok((
        StatusCode::SEE_OTHER,
        [(
            header::LOCATION,
            HeaderValue::from_str(&location).expect("ascii"),
        )],
    )
        .into_response())
}

type TokenError = RequestTokenError<
    oauth2::HttpClientError<reqwest::Error>,
    oauth2::StandardErrorResponse<BasicErrorResponseType>,
>;

/// A token endpoint failure as `platform_error`: OAuth's error code, never a body.
fn token_error(platform: &str, what: &str, err: &TokenError) -> AppError {
    match err {
        RequestTokenError::ServerResponse(resp) => {
            tracing::warn!(platform, what, error = %resp.error(), "token endpoint refused");
            platform_error(platform, &format!("{what} ({})", resp.error()), None)
                .with("oauth_error", resp.error().to_string())
        }
        other => {
            tracing::warn!(platform, what, error = %other, "token endpoint failed");
            platform_error(platform, what, None)
        }
    }
}

/// Per-connection refresh locks of this process.
static REFRESH_LOCKS: LazyLock<DashMap<String, Arc<tokio::sync::Mutex<()>>>> =
    LazyLock::new(DashMap::new);

/// Drops a deleted connection's lock.
pub fn forget(connection_id: &str) {
    REFRESH_LOCKS.remove(connection_id);
}

/// The in-process refresh lock of `key` (a connection id, or `discord:{user}`
/// for `discord::links`).
pub(crate) fn refresh_lock(key: &str) -> Arc<tokio::sync::Mutex<()>> {
    REFRESH_LOCKS.entry(key.to_string()).or_default().clone()
}

fn expiring(row: &ConnectionRow, now: i64) -> bool {
    row.token_expires_at
        .is_some_and(|at| at - now < REFRESH_MARGIN_MS)
}

fn open_access(state: &AppState, row: &ConnectionRow) -> AppResult<String> {
    let s = sealed(&row.access_token_sealed, &row.access_token_key_id)
        .ok_or_else(AppError::internal)?;
    state
        .keyring
        .open_string(&s, &aad(&row.id, "access_token"))
        .map_err(|err| {
            tracing::error!(connection = %row.id, error = %err, "access token does not open");
            AppError::internal()
        })
}

/// The access token of OAuth connection `row`, refreshed first when it expires
/// within [`REFRESH_MARGIN_MS`] (one refresh at a time per connection).
pub async fn access_token(state: &AppState, row: &ConnectionRow) -> AppResult<String> {
    if row.status == "needs_reconnect" {
        return Err(needs_reconnect(row));
    }
    if !expiring(row, now_ms()) {
        return open_access(state, row);
    }
    let lock = refresh_lock(&row.id);
    let _one_at_a_time = lock.lock().await;
    refresh_row_locked(state, &row.id).await
}

/// The database half of a refresh, without this process's lock (what another
/// node does): under the row lock (PostgreSQL), re-reads the row and refreshes
/// only when the token still expires soon. Public for the multi-node test.
pub async fn refresh_row_locked(state: &AppState, id: &str) -> AppResult<String> {
    let mut locked = Locked::begin(state).await?;
    let select = format!(
        "SELECT {COLUMNS} FROM platform_connections WHERE id = $1{}",
        Locked::for_update(state)
    );
    let row: Option<ConnectionRow> = sqlx::query_as(&select)
        .bind(id)
        .fetch_optional(locked.conn())
        .await?;
    let row = row.ok_or_else(|| AppError::not_found(format!("no platform connection '{id}'")))?;
    if row.status == "needs_reconnect" {
        return Err(needs_reconnect(&row));
    }
    let now = now_ms();
    if !expiring(&row, now) {
        // Another caller refreshed while this one waited.
        locked.finish().await?;
        return open_access(state, &row);
    }
    let refresh = match sealed(&row.refresh_token_sealed, &row.refresh_token_key_id) {
        Some(s) => state
            .keyring
            .open_string(&s, &aad(&row.id, "refresh_token"))
            .map_err(|err| {
                tracing::error!(connection = %row.id, error = %err, "refresh token does not open");
                AppError::internal()
            })?,
        None => {
            // Nothing to refresh with (Facebook hands out none): connect again.
            mark_needs_reconnect(locked.conn(), &row.id, now).await?;
            locked.finish().await?;
            return Err(needs_reconnect(&row));
        }
    };
    let cfg = provider(state, &row.platform)?;
    let client = build_client(state, &row.platform, cfg)?;
    let answer: Result<TokenAnswer, TokenError> = client
        .exchange_refresh_token(&RefreshToken::new(refresh))
        .request_async(http_client())
        .await;
    match answer {
        Ok(token) => {
            let access = token.access_token().secret().clone();
            let a = state
                .keyring
                .seal(access.as_bytes(), &aad(&row.id, "access_token"));
            // A provider that rotates refresh tokens (Twitch may) hands a new one.
            let r = token.refresh_token().map(|t| {
                state
                    .keyring
                    .seal(t.secret().as_bytes(), &aad(&row.id, "refresh_token"))
            });
            let expires = token.expires_in().map(|d| now + d.as_millis() as i64);
            sqlx::query(
                "UPDATE platform_connections SET access_token_sealed = $1, access_token_key_id = $2, \
                 refresh_token_sealed = COALESCE($3, refresh_token_sealed), \
                 refresh_token_key_id = COALESCE($4, refresh_token_key_id), \
                 token_expires_at = $5, updated_at = $6 WHERE id = $7",
            )
            .bind(&a.blob)
            .bind(&a.key_id)
            .bind(r.as_ref().map(|s| s.blob.clone()))
            .bind(r.as_ref().map(|s| s.key_id.clone()))
            .bind(expires)
            .bind(now)
            .bind(&row.id)
            .execute(locked.conn())
            .await?;
            locked.finish().await?;
            tracing::info!(connection = %row.id, platform = %row.platform, "access token refreshed");
            Ok(access)
        }
        Err(RequestTokenError::ServerResponse(resp))
            if *resp.error() == BasicErrorResponseType::InvalidGrant =>
        {
            // Read again: a refresh that landed meanwhile (another node without
            // the row lock, SQLite's second process) left a good token.
            let again: Option<ConnectionRow> = sqlx::query_as(&select)
                .bind(id)
                .fetch_optional(locked.conn())
                .await?;
            if let Some(again) = again
                && again.refresh_token_sealed != row.refresh_token_sealed
                && again.status == "ok"
                && !expiring(&again, now_ms())
            {
                locked.finish().await?;
                return open_access(state, &again);
            }
            mark_needs_reconnect(locked.conn(), &row.id, now).await?;
            locked.finish().await?;
            tracing::warn!(connection = %row.id, platform = %row.platform,
                "refresh token refused (invalid_grant): the connection needs reconnecting");
            Err(needs_reconnect(&row))
        }
        Err(err) => Err(token_error(&row.platform, "the token refresh", &err)),
    }
}

async fn mark_needs_reconnect(
    conn: &mut AnyConnection,
    id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE platform_connections SET status = 'needs_reconnect', updated_at = $1 WHERE id = $2",
    )
    .bind(now)
    .bind(id)
    .execute(conn)
    .await
    .map(|_| ())
}

/// The connection a refresh runs on: PostgreSQL's transaction holding the row
/// lock, or SQLite's plain connection (one node; a transaction held over an HTTP
/// call would stall every other writer of the file).
/// Shared with `discord::links`.
pub(crate) enum Locked {
    Tx(Transaction<'static, Any>),
    Conn(PoolConnection<Any>),
}

impl Locked {
    pub(crate) async fn begin(state: &AppState) -> Result<Locked, sqlx::Error> {
        Ok(match state.db.backend {
            Backend::Postgres => Locked::Tx(state.db.pool.begin().await?),
            Backend::Sqlite => Locked::Conn(state.db.pool.acquire().await?),
        })
    }

    /// What ends a `SELECT` of the row to refresh: the row lock on PostgreSQL.
    pub(crate) fn for_update(state: &AppState) -> &'static str {
        match state.db.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }

    pub(crate) fn conn(&mut self) -> &mut AnyConnection {
        match self {
            Locked::Tx(tx) => tx,
            Locked::Conn(c) => c,
        }
    }

    /// Commits (PostgreSQL), releasing the row lock; dropping instead rolls back.
    pub(crate) async fn finish(self) -> Result<(), sqlx::Error> {
        match self {
            Locked::Tx(tx) => tx.commit().await,
            Locked::Conn(_) => Ok(()),
        }
    }
}
