//! Admission: the sessions held in all, per media token and per user, checked
//! before a session is made; a [`SessionSlot`] holds one place until its session ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::MediaConfig;
use crate::error::MediaError;
use crate::kinds::SessionKind;

/// Who asks for a session: what the per-token and per-user limits count.
#[derive(Debug, Clone, Copy)]
pub struct SessionHolder<'a> {
    /// The user (`sub` of the media token).
    pub user: &'a str,
    /// The token's id (`jti`).
    pub token: &'a str,
    /// Whether `max_sessions_per_token` / `max_sessions_per_user` apply (the
    /// server-wide limits always do). The HTTP layer decides who is exempt.
    pub limited: bool,
}

/// Sessions held, in all and per token and per user: what admission checks.
/// Locked on the HTTP path (admission) and when a session ends, never per packet.
#[derive(Default)]
pub(crate) struct Admission {
    held: Mutex<Held>,
    /// Unix second of the last "limit reached" log line, so refusals in a flood
    /// log once every [`REFUSAL_LOG_INTERVAL_SECS`].
    last_refusal_log: AtomicU64,
}

#[derive(Default)]
struct Held {
    total: usize,
    by_token: HashMap<Arc<str>, usize>,
    by_user: HashMap<Arc<str>, usize>,
}

const REFUSAL_LOG_INTERVAL_SECS: u64 = 10;

/// One admitted session's place in the [`Admission`] counts. The session owns it
/// from admission to its end; dropping it gives the place back, so the counts
/// are released exactly once however the session ends (DELETE, a timeout, a
/// failed connection, a failed creation, shutdown).
pub(crate) struct SessionSlot {
    admission: Arc<Admission>,
    token: Arc<str>,
    user: Arc<str>,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut held = self.admission.lock();
        held.total = held.total.saturating_sub(1);
        release(&mut held.by_token, &self.token);
        release(&mut held.by_user, &self.user);
    }
}

fn release(counts: &mut HashMap<Arc<str>, usize>, key: &Arc<str>) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

impl Admission {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // The counts stay consistent under a panic elsewhere (every update is a
        // few integer operations), so a poisoned lock is still usable.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a place for a new session, or says which limit refuses it.
    pub(crate) fn admit(
        self: &Arc<Self>,
        config: &MediaConfig,
        kind: SessionKind,
        holder: &SessionHolder<'_>,
    ) -> Result<SessionSlot, MediaError> {
        let mut held = self.lock();
        let refusal = self.refusal(&held, config, kind, holder);
        if let Some(err) = refusal {
            drop(held);
            self.log_refusal(&err, holder);
            return Err(err);
        }
        let token: Arc<str> = Arc::from(holder.token);
        let user: Arc<str> = Arc::from(holder.user);
        held.total += 1;
        *held.by_token.entry(token.clone()).or_default() += 1;
        *held.by_user.entry(user.clone()).or_default() += 1;
        Ok(SessionSlot {
            admission: self.clone(),
            token,
            user,
        })
    }

    fn refusal(
        &self,
        held: &Held,
        config: &MediaConfig,
        kind: SessionKind,
        holder: &SessionHolder<'_>,
    ) -> Option<MediaError> {
        // A place held by a session whose client never starts ICE comes back
        // after the ICE-start timeout: the earliest a retry can succeed.
        let retry_after_secs = config.ice_start_timeout.as_secs().max(1);
        let per_token = config.max_sessions_per_token;
        let per_user = config.max_sessions_per_user;
        let count = |m: &HashMap<Arc<str>, usize>, k: &str| m.get(k).copied().unwrap_or(0);
        if holder.limited && per_token > 0 && count(&held.by_token, holder.token) >= per_token {
            return Some(MediaError::LimitReached {
                limit: "media.max_sessions_per_token",
                message: format!(
                    "this token already holds {per_token} sessions, the most one token may \
                     (media.max_sessions_per_token); DELETE the sessions it no longer uses, \
                     or retry after sessions that never connected have timed out"
                ),
                retry_after_secs,
            });
        }
        if holder.limited && per_user > 0 && count(&held.by_user, holder.user) >= per_user {
            return Some(MediaError::LimitReached {
                limit: "media.max_sessions_per_user",
                message: format!(
                    "this user already holds {per_user} sessions, the most one user may over \
                     all their tokens (media.max_sessions_per_user); DELETE the sessions no \
                     longer used, or retry after sessions that never connected have timed out"
                ),
                retry_after_secs,
            });
        }
        let max = config.max_sessions;
        if held.total >= max {
            return Some(MediaError::AtCapacity(format!(
                "{max} sessions is the configured maximum (media.max_sessions)"
            )));
        }
        let reserve = config.publisher_reserve();
        if kind == SessionKind::Viewer && held.total >= max.saturating_sub(reserve) {
            return Some(MediaError::AtCapacity(format!(
                "viewers may hold {} of the {max} sessions; the other {reserve} are kept for \
                 publishers (media.publisher_reserve_percent)",
                max.saturating_sub(reserve)
            )));
        }
        None
    }

    fn log_refusal(&self, err: &MediaError, holder: &SessionHolder<'_>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let last = self.last_refusal_log.load(Ordering::Relaxed);
        let due = now >= last + REFUSAL_LOG_INTERVAL_SECS;
        if due
            && self
                .last_refusal_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(user = holder.user, error = %err, "session refused (logged at most every 10 s)");
        } else {
            tracing::debug!(user = holder.user, error = %err, "session refused");
        }
    }

    pub(crate) fn of_token(&self, token: &str) -> usize {
        self.lock().by_token.get(token).copied().unwrap_or(0)
    }

    pub(crate) fn of_user(&self, user: &str) -> usize {
        self.lock().by_user.get(user).copied().unwrap_or(0)
    }
}
