//! The Discord bot's HTTP shell: guild membership calls with `Authorization: Bot
//! {token}` over the one shared client (`crate::platforms::http`), waiting as
//! the sans-IO [`Limiter`] says and retrying 429s.
//!
//! Repeated refusals (401/403, [`MAX_REFUSALS`] in a row) stop the bot: every
//! later call fails at once with [`BotError::Stopped`], and the stop is logged
//! once, as an error. Discord bans bots (and IPs) that keep sending requests it
//! refuses (10,000 invalid requests in 10 minutes), and a token that was reset or
//! a bot that lost its permissions will not get better by retrying.
//!
//! No token (the bot's, a user's) is ever logged, put in an error or shown by
//! `Debug`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use axum::http::Method;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::ratelimit::{Decision, Limiter, Outcome, Route};
use crate::clock::now_ms;

/// 401/403 answers in a row that stop the bot.
pub const MAX_REFUSALS: u32 = 3;

/// 429s one call sits through before giving up (it is retried later).
const MAX_RATE_LIMITED: u32 = 10;

/// Why a bot call failed. Messages are for the owner's member list and the log:
/// plain words, no token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BotError {
    #[error(
        "the Discord bot is stopped: Discord refused it {refusals} times in a row (last: HTTP \
         {status}{message}); check [discord] bot_token and the bot's permissions (Manage Roles, \
         Create Instant Invite) and restart tandem"
    )]
    Stopped {
        refusals: u32,
        status: u16,
        message: String,
    },
    #[error("Discord refused the bot's request (HTTP {status}{message})")]
    Refused { status: u16, message: String },
    #[error("Discord kept answering 429 (rate limited) {0} times; will try again later")]
    RateLimited(u32),
    #[error("Discord could not be reached{0}")]
    Unreachable(&'static str),
    #[error("Discord answered HTTP {status}{message}")]
    Failed { status: u16, message: String },
}

/// What adding a member did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// 201: the user joined the guild (with the role).
    Added,
    /// 204: already a member; the role was given separately.
    AlreadyMember,
}

/// A guild member as far as tandem looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub roles: Vec<String>,
}

/// One bot (one token). Cheap to clone; clones share the limiter and the stop.
#[derive(Clone)]
pub struct Bot {
    inner: Arc<Inner>,
}

struct Inner {
    base: String,
    token: String,
    limiter: Mutex<Limiter>,
    refusals: AtomicU32,
    stopped: std::sync::Mutex<Option<BotError>>,
    /// Requests that left for Discord (429s included).
    sent: AtomicU64,
}

impl std::fmt::Debug for Bot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bot")
            .field("base", &self.inner.base)
            .field("token", &"<secret>")
            .field("stopped", &self.stopped().is_some())
            .finish()
    }
}

/// An answer the caller looks at (never a 429).
struct Answer {
    status: u16,
    body: Value,
}

impl Bot {
    /// A bot calling `api_base_url` (e.g. `https://discord.com/api`) with `token`.
    pub fn new(api_base_url: &str, token: &str) -> Bot {
        Bot {
            inner: Arc::new(Inner {
                base: api_base_url.trim_end_matches('/').to_string(),
                token: token.to_string(),
                limiter: Mutex::new(Limiter::default()),
                refusals: AtomicU32::new(0),
                stopped: std::sync::Mutex::new(None),
                sent: AtomicU64::new(0),
            }),
        }
    }

    /// Requests sent to Discord so far (a stopped bot sends none).
    pub fn requests_sent(&self) -> u64 {
        self.inner.sent.load(Ordering::SeqCst)
    }

    /// Why the bot stopped, if it did.
    pub fn stopped(&self) -> Option<BotError> {
        self.inner.stopped.lock().ok().and_then(|s| s.clone())
    }

    /// `PUT /guilds/{g}/members/{u}` with the user's `guilds.join` token and the
    /// role; when the user is already a member (204, roles ignored by Discord),
    /// the role is given with `PUT …/roles/{r}`.
    pub async fn add_member(
        &self,
        guild: &str,
        user: &str,
        access_token: &str,
        role: Option<&str>,
    ) -> Result<Joined, BotError> {
        let roles: Vec<&str> = role.into_iter().collect();
        let a = self
            .call(
                Method::PUT,
                &format!("/guilds/{guild}/members/{user}"),
                Some(json!({"access_token": access_token, "roles": roles})),
            )
            .await?;
        match a.status {
            201 => Ok(Joined::Added),
            204 => {
                if let Some(role) = role {
                    self.add_role(guild, user, role).await?;
                }
                Ok(Joined::AlreadyMember)
            }
            s => Err(failed(s, &a.body)),
        }
    }

    /// `PUT /guilds/{g}/members/{u}/roles/{r}`.
    pub async fn add_role(&self, guild: &str, user: &str, role: &str) -> Result<(), BotError> {
        let a = self
            .call(
                Method::PUT,
                &format!("/guilds/{guild}/members/{user}/roles/{role}"),
                None,
            )
            .await?;
        match a.status {
            204 | 200 => Ok(()),
            s => Err(failed(s, &a.body)),
        }
    }

    /// `DELETE /guilds/{g}/members/{u}/roles/{r}`; a user no longer in the guild
    /// (404 Unknown Member) has no role to lose: done.
    pub async fn remove_role(&self, guild: &str, user: &str, role: &str) -> Result<(), BotError> {
        let a = self
            .call(
                Method::DELETE,
                &format!("/guilds/{guild}/members/{user}/roles/{role}"),
                None,
            )
            .await?;
        match a.status {
            204 | 200 => Ok(()),
            404 if a.body["code"] == 10007 => Ok(()),
            s => Err(failed(s, &a.body)),
        }
    }

    /// `GET /guilds/{g}/members/{u}`: the member, or `None` when not in the guild.
    pub async fn get_member(&self, guild: &str, user: &str) -> Result<Option<Member>, BotError> {
        let a = self
            .call(
                Method::GET,
                &format!("/guilds/{guild}/members/{user}"),
                None,
            )
            .await?;
        match a.status {
            200 => Ok(Some(Member {
                roles: a.body["roles"]
                    .as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            })),
            404 => Ok(None),
            s => Err(failed(s, &a.body)),
        }
    }

    /// One request through the limiter, 429s retried; 401/403 counted toward the stop.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Answer, BotError> {
        let route = Route::new(method.as_str(), path);
        let mut limited = 0;
        loop {
            if let Some(stopped) = self.stopped() {
                return Err(stopped);
            }
            let decision = self.inner.limiter.lock().await.before(&route, now_ms());
            if let Decision::Wait(ms) = decision {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                continue;
            }
            let mut req = crate::platforms::http::client()
                .request(method.clone(), format!("{}{path}", self.inner.base))
                .header(
                    axum::http::header::AUTHORIZATION,
                    format!("Bot {}", self.inner.token),
                );
            if let Some(b) = &body {
                req = req.json(b);
            }
            self.inner.sent.fetch_add(1, Ordering::SeqCst);
            let resp = match req.send().await {
                Ok(r) => r,
                Err(err) => {
                    tracing::warn!(route = %route.key, timeout = err.is_timeout(), "discord bot: request failed");
                    return Err(BotError::Unreachable(if err.is_timeout() {
                        " in time"
                    } else {
                        ""
                    }));
                }
            };
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let bytes = resp.bytes().await.unwrap_or_default();
            let header = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let outcome =
                self.inner
                    .limiter
                    .lock()
                    .await
                    .after(&route, status, header, &bytes, now_ms());
            if let Outcome::RateLimited {
                retry_after_ms,
                global,
                scope,
            } = outcome
            {
                limited += 1;
                tracing::info!(route = %route.key, retry_after_ms, global, scope = scope.as_deref().unwrap_or(""),
                    "discord bot: rate limited (429); waiting");
                if limited >= MAX_RATE_LIMITED {
                    return Err(BotError::RateLimited(limited));
                }
                continue;
            }
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status == 401 || status == 403 {
                return Err(self.refused(status, &body));
            }
            self.inner.refusals.store(0, Ordering::SeqCst);
            return Ok(Answer { status, body });
        }
    }

    /// Counts a 401/403; the [`MAX_REFUSALS`]th in a row stops the bot.
    fn refused(&self, status: u16, body: &Value) -> BotError {
        let n = self.inner.refusals.fetch_add(1, Ordering::SeqCst) + 1;
        let message = discord_message(body);
        if n < MAX_REFUSALS {
            tracing::warn!(
                status,
                refusals = n,
                "discord bot: request refused{message}"
            );
            return BotError::Refused { status, message };
        }
        let err = BotError::Stopped {
            refusals: n,
            status,
            message,
        };
        let mut stopped = self.inner.stopped.lock().unwrap_or_else(|e| e.into_inner());
        if stopped.is_none() {
            tracing::error!(
                "DISCORD BOT STOPPED: {err}. No further Discord call is made until tandem restarts."
            );
            *stopped = Some(err.clone());
        }
        stopped.clone().unwrap_or(err)
    }
}

/// `": {message} (code {code})"` from Discord's error body, short and clean
/// (Discord's messages name no token), or `""`.
fn discord_message(body: &Value) -> String {
    let text: String = body["message"]
        .as_str()
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(160)
        .collect();
    match (text.is_empty(), body["code"].as_i64()) {
        (true, _) => String::new(),
        (false, Some(code)) if code != 0 => format!(": {text} (code {code})"),
        (false, _) => format!(": {text}"),
    }
}

fn failed(status: u16, body: &Value) -> BotError {
    BotError::Failed {
        status,
        message: discord_message(body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_errors_carry_no_token() {
        let bot = Bot::new("http://127.0.0.1:9/api", "tok-secret-123");
        assert!(!format!("{bot:?}").contains("tok-secret-123"));
        let e = bot.refused(401, &json!({"message": "401: Unauthorized", "code": 0}));
        assert!(matches!(e, BotError::Refused { status: 401, .. }), "{e}");
        bot.refused(
            403,
            &json!({"message": "Missing Permissions", "code": 50013}),
        );
        let e = bot.refused(401, &json!({}));
        assert!(matches!(e, BotError::Stopped { refusals: 3, .. }), "{e}");
        assert_eq!(bot.stopped(), Some(e.clone()));
        assert!(e.to_string().contains("stopped"), "{e}");
        assert!(!e.to_string().contains("tok-secret-123"));
    }
}
