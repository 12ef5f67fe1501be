//! Chat persistence seam ([`ChatStore`], implemented by the server with sqlx) and the
//! chat policy pieces: records on the wire, rate limiting, blocked words.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
#[error("chat store: {0}")]
pub struct StoreError(pub String);

/// A chat message as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRecord {
    pub id: i64,
    pub room: String,
    pub user_id: String,
    pub user_name: String,
    pub user_avatar: Option<String>,
    pub text: String,
    pub client_msg_id: String,
    pub media_time: Option<f64>,
    /// Server time, unix ms.
    pub created_at: i64,
}

/// What a new message carries before the store gives it an id.
#[derive(Debug, Clone)]
pub struct NewChat {
    pub room: String,
    pub user_id: String,
    pub user_name: String,
    pub user_avatar: Option<String>,
    pub text: String,
    pub client_msg_id: String,
    pub media_time: Option<f64>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    New(ChatRecord),
    /// The same user already sent this `client_msg_id`; here is that message.
    Duplicate(ChatRecord),
}

/// Bans and mutes of a room, as loaded when the room starts.
#[derive(Debug, Clone, Default)]
pub struct Moderation {
    pub bans: Vec<String>,
    /// (user, muted until unix ms)
    pub mutes: Vec<(String, i64)>,
}

/// Where rooms keep chat, bans and mutes. Implemented by the server (sqlx);
/// [`MemoryStore`] is for tests and store-less setups.
pub trait ChatStore: Send + Sync + 'static {
    /// Stores a message exactly once per (room, user, client_msg_id).
    fn insert(&self, msg: NewChat) -> BoxFut<'_, Result<Inserted, StoreError>>;
    /// Up to `limit` undeleted messages older than `before` (all when `None`), newest first.
    fn page(
        &self,
        room: String,
        before: Option<i64>,
        limit: u32,
    ) -> BoxFut<'_, Result<Vec<ChatRecord>, StoreError>>;
    fn get(&self, room: String, id: i64) -> BoxFut<'_, Result<Option<ChatRecord>, StoreError>>;
    /// Marks a message deleted; false when there was no such (undeleted) message.
    fn delete(&self, room: String, id: i64, by: String) -> BoxFut<'_, Result<bool, StoreError>>;
    fn moderation(&self, room: String) -> BoxFut<'_, Result<Moderation, StoreError>>;
    /// Bans (`banned`) or unbans a user in a room.
    fn set_ban(
        &self,
        room: String,
        user: String,
        by: String,
        reason: Option<String>,
        banned: bool,
    ) -> BoxFut<'_, Result<(), StoreError>>;
    /// Mutes a user until `until_ms` (unix ms), or lifts the mute with `None`.
    fn set_mute(
        &self,
        room: String,
        user: String,
        by: String,
        until_ms: Option<i64>,
    ) -> BoxFut<'_, Result<(), StoreError>>;
}

/// An in-memory [`ChatStore`].
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<MemInner>,
}

#[derive(Default)]
struct MemInner {
    next_id: i64,
    messages: Vec<(ChatRecord, bool)>,
    bans: HashMap<(String, String), ()>,
    mutes: HashMap<(String, String), i64>,
}

impl ChatStore for MemoryStore {
    fn insert(&self, msg: NewChat) -> BoxFut<'_, Result<Inserted, StoreError>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let found = g.messages.iter().find(|(r, _)| {
            r.room == msg.room && r.user_id == msg.user_id && r.client_msg_id == msg.client_msg_id
        });
        let out = if let Some((r, _)) = found {
            Inserted::Duplicate(r.clone())
        } else {
            g.next_id += 1;
            let rec = ChatRecord {
                id: g.next_id,
                room: msg.room,
                user_id: msg.user_id,
                user_name: msg.user_name,
                user_avatar: msg.user_avatar,
                text: msg.text,
                client_msg_id: msg.client_msg_id,
                media_time: msg.media_time,
                created_at: msg.created_at,
            };
            g.messages.push((rec.clone(), false));
            Inserted::New(rec)
        };
        Box::pin(async move { Ok(out) })
    }

    fn page(
        &self,
        room: String,
        before: Option<i64>,
        limit: u32,
    ) -> BoxFut<'_, Result<Vec<ChatRecord>, StoreError>> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let out: Vec<ChatRecord> = g
            .messages
            .iter()
            .rev()
            .filter(|(r, deleted)| !deleted && r.room == room && before.is_none_or(|b| r.id < b))
            .take(limit as usize)
            .map(|(r, _)| r.clone())
            .collect();
        Box::pin(async move { Ok(out) })
    }

    fn get(&self, room: String, id: i64) -> BoxFut<'_, Result<Option<ChatRecord>, StoreError>> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let out = g
            .messages
            .iter()
            .find(|(r, d)| !d && r.room == room && r.id == id)
            .map(|(r, _)| r.clone());
        Box::pin(async move { Ok(out) })
    }

    fn delete(&self, room: String, id: i64, _by: String) -> BoxFut<'_, Result<bool, StoreError>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut hit = false;
        for (r, d) in g.messages.iter_mut() {
            if r.room == room && r.id == id && !*d {
                *d = true;
                hit = true;
            }
        }
        Box::pin(async move { Ok(hit) })
    }

    fn moderation(&self, room: String) -> BoxFut<'_, Result<Moderation, StoreError>> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let m = Moderation {
            bans: g
                .bans
                .keys()
                .filter(|(r, _)| *r == room)
                .map(|(_, u)| u.clone())
                .collect(),
            mutes: g
                .mutes
                .iter()
                .filter(|((r, _), _)| *r == room)
                .map(|((_, u), until)| (u.clone(), *until))
                .collect(),
        };
        Box::pin(async move { Ok(m) })
    }

    fn set_ban(
        &self,
        room: String,
        user: String,
        _by: String,
        _reason: Option<String>,
        banned: bool,
    ) -> BoxFut<'_, Result<(), StoreError>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if banned {
            g.bans.insert((room, user), ());
        } else {
            g.bans.remove(&(room, user));
        }
        Box::pin(async { Ok(()) })
    }

    fn set_mute(
        &self,
        room: String,
        user: String,
        _by: String,
        until_ms: Option<i64>,
    ) -> BoxFut<'_, Result<(), StoreError>> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match until_ms {
            Some(t) => g.mutes.insert((room, user), t),
            None => g.mutes.remove(&(room, user)),
        };
        Box::pin(async { Ok(()) })
    }
}

/// At most `count` events per `window_ms` (sliding window of timestamps).
/// Times are milliseconds of the caller's clock (the room passes its `now`).
#[derive(Debug, Clone, Default)]
pub struct WindowLimiter {
    times: VecDeque<f64>,
}

impl WindowLimiter {
    /// `Ok(())` and records the event, or `Err(retry_after)`.
    pub fn check(&mut self, now: f64, count: u32, window_ms: f64) -> Result<(), Duration> {
        while let Some(&t) = self.times.front() {
            if now - t >= window_ms {
                self.times.pop_front();
            } else {
                break;
            }
        }
        if self.times.len() >= count as usize {
            let oldest = self.times[0];
            return Err(ms(window_ms - (now - oldest)));
        }
        self.times.push_back(now);
        Ok(())
    }
}

/// A non-negative number of milliseconds as a `Duration`.
fn ms(ms: f64) -> Duration {
    Duration::from_secs_f64(ms.max(0.0) / 1000.0)
}

/// Token bucket for all of a connection's messages. Times in milliseconds.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: f64,
}

impl TokenBucket {
    /// A full bucket at time `now`.
    pub fn new(burst: f64, now: f64) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    pub fn take(&mut self, now: f64, rate: f64, burst: f64) -> Result<(), Duration> {
        let dt = (now - self.last).max(0.0) / 1000.0;
        self.last = now;
        self.tokens = (self.tokens + dt * rate).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - self.tokens) / rate.max(1e-6)).min(3600.0),
            ))
        }
    }
}

/// The first blocked word `text` contains (case-insensitive, whole words).
pub fn blocked_word<'a>(text: &str, blocked: &'a [String]) -> Option<&'a str> {
    if blocked.is_empty() {
        return None;
    }
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    blocked
        .iter()
        .find(|b| {
            let b = b.to_lowercase();
            if b.contains(' ') {
                lower.contains(&b)
            } else {
                words.iter().any(|w| *w == b)
            }
        })
        .map(|s| s.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_limiter_counts_and_reports_retry() {
        let mut l = WindowLimiter::default();
        let t = 1_000_000.0;
        for i in 0..5 {
            assert!(l.check(t + i as f64, 5, 5000.0).is_ok());
        }
        let retry = l.check(t + 1000.0, 5, 5000.0).unwrap_err();
        assert_eq!(retry, Duration::from_secs(4));
        assert!(l.check(t + 5000.0, 5, 5000.0).is_ok());
    }

    #[test]
    fn token_bucket_refills() {
        let t = 1_000_000.0;
        let mut b = TokenBucket::new(2.0, t);
        assert!(b.take(t, 1.0, 2.0).is_ok());
        assert!(b.take(t, 1.0, 2.0).is_ok());
        assert!(b.take(t, 1.0, 2.0).is_err());
        assert!(b.take(t + 1000.0, 1.0, 2.0).is_ok());
    }

    #[test]
    fn blocked_words_match_whole_words_case_insensitively() {
        let list = vec!["spam".to_string(), "buy now".to_string()];
        assert_eq!(blocked_word("Total SPAM!", &list), Some("spam"));
        assert_eq!(blocked_word("spammer here", &list), None);
        assert_eq!(blocked_word("please Buy Now", &list), Some("buy now"));
    }

    #[tokio::test]
    async fn memory_store_dedups_pages_and_deletes() {
        let s = MemoryStore::default();
        let msg = |c: &str| NewChat {
            room: "r".into(),
            user_id: "u".into(),
            user_name: "U".into(),
            user_avatar: None,
            text: "hi".into(),
            client_msg_id: c.into(),
            media_time: None,
            created_at: 1,
        };
        let Inserted::New(a) = s.insert(msg("a")).await.unwrap() else {
            panic!()
        };
        assert!(
            matches!(s.insert(msg("a")).await.unwrap(), Inserted::Duplicate(r) if r.id == a.id)
        );
        s.insert(msg("b")).await.unwrap();
        s.insert(msg("c")).await.unwrap();
        let p = s.page("r".into(), None, 2).await.unwrap();
        assert_eq!(p.iter().map(|r| r.id).collect::<Vec<_>>(), vec![3, 2]);
        assert!(s.delete("r".into(), 2, "m".into()).await.unwrap());
        let p = s.page("r".into(), Some(3), 10).await.unwrap();
        assert_eq!(p.iter().map(|r| r.id).collect::<Vec<_>>(), vec![1]);
    }
}
