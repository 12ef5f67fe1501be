//! The WHEP server-sent-event registrations (`AppState::whep_events`) and
//! the vocabulary of the extensions shared with `crate::whip`: which events a
//! stream sends, the bounds on registrations, and the `Link` headers of a WHEP
//! answer. A leaf: it knows the SFU handle and the error type, not the HTTP
//! handlers (`crate::whep_ext`), so the state and the WHEP answer can use it
//! without an import running back up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::Value;

use crate::error::{AppError, AppResult};

/// Event streams (registered or open) per WHEP session.
pub const MAX_PER_SESSION: usize = 4;
/// Event streams (registered or open) on this server.
pub const MAX_TOTAL: usize = 4096;
/// A registration nobody fetched is forgotten after this.
pub const REGISTRATION_TTL: Duration = Duration::from_secs(30);

/// The `Link` headers of a WHEP answer (API.md): `session_url` is its `Location`.
pub fn links(session_url: &str) -> [String; 2] {
    [
        format!("<{session_url}/layer>; rel=\"urn:ietf:params:whep:ext:core:layer\""),
        format!(
            "<{session_url}/sse>; rel=\"urn:ietf:params:whep:ext:core:server-sent-events\"; \
             events=\"active,inactive,layers,viewercount\""
        ),
    ]
}

/// The events a stream sends: the draft's four and our `layer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSet(u8);

impl EventSet {
    pub const NAMES: [&'static str; 5] = ["active", "inactive", "layers", "viewercount", "layer"];
    pub const ALL: EventSet = EventSet(0b1_1111);

    pub fn has(self, name: &str) -> bool {
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }

    /// From a `/sse` body: a JSON array of names; none or `[]` means all.
    pub fn from_body(body: Option<&Value>) -> AppResult<EventSet> {
        let Some(body) = body else {
            return Ok(Self::ALL);
        };
        let list = body.as_array().ok_or_else(|| {
            AppError::bad_request(format!(
                "the body must be a JSON array of event names ({}); empty for all",
                Self::NAMES.join(", ")
            ))
            .with("field", "body")
        })?;
        let mut bits = 0u8;
        for (i, item) in list.iter().enumerate() {
            let known = item
                .as_str()
                .and_then(|name| Self::NAMES.iter().position(|n| *n == name));
            match known {
                Some(bit) => bits |= 1 << bit,
                None => {
                    return Err(AppError::bad_request(format!(
                        "unknown event {item}; events are {}",
                        Self::NAMES.join(", ")
                    ))
                    .with("field", format!("body[{i}]")));
                }
            }
        }
        Ok(if bits == 0 { Self::ALL } else { EventSet(bits) })
    }
}

// --- Registrations ---

/// Whether a session still exists (the SFU's, or a test's).
pub type Alive = Arc<dyn Fn(&str) -> bool + Send + Sync>;

pub fn alive_in(sfu: &tandem_media::Sfu) -> Alive {
    let sfu = sfu.clone();
    Arc::new(move |session| sfu.session(session).is_some())
}

pub struct Registration {
    session: Arc<str>,
    stream: Arc<str>,
    events: EventSet,
    /// A GET is streaming it now.
    open: bool,
    /// Registered, or last closed: when an unfetched one expires from.
    since: Instant,
}

/// The event streams registered on this server (`AppState::whep_events`).
#[derive(Clone)]
pub struct SseHub {
    inner: Arc<Mutex<HashMap<String, Registration>>>,
    max_total: usize,
}

impl Default for SseHub {
    fn default() -> Self {
        Self::with_cap(MAX_TOTAL)
    }
}

impl SseHub {
    pub fn with_cap(max_total: usize) -> Self {
        Self {
            inner: Arc::default(),
            max_total,
        }
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Registration>> {
        // A panic elsewhere while holding it leaves plain data: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets what nobody streams and is either unfetched for too long or of a
    /// session that ended.
    pub(crate) fn purge(
        map: &mut HashMap<String, Registration>,
        now: Instant,
        alive: &dyn Fn(&str) -> bool,
    ) {
        map.retain(|_, r| {
            r.open || (now.duration_since(r.since) < REGISTRATION_TTL && alive(&r.session))
        });
    }

    /// Registers an event stream of `session`; its id, or 429/503 past the caps.
    pub fn register(
        &self,
        session: &str,
        stream: &str,
        events: EventSet,
        now: Instant,
        alive: &dyn Fn(&str) -> bool,
    ) -> AppResult<String> {
        let mut map = self.lock();
        Self::purge(&mut map, now, alive);
        let of_session = map.values().filter(|r| &*r.session == session).count();
        if of_session >= MAX_PER_SESSION {
            let mut e = AppError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "this session has {MAX_PER_SESSION} event streams already; close one (or let an \
                     unfetched one expire after {} s)",
                    REGISTRATION_TTL.as_secs()
                ),
            )
            .with("limit", "sse_per_session");
            e.retry_after_secs = Some(REGISTRATION_TTL.as_secs());
            return Err(e);
        }
        if map.len() >= self.max_total {
            let mut e = AppError::unavailable(format!(
                "the server has {} event streams open, its limit; retry later",
                self.max_total
            ))
            .with("limit", "sse_total");
            e.retry_after_secs = Some(5);
            return Err(e);
        }
        let id = hex::encode(rand::random::<[u8; 16]>());
        map.insert(
            id.clone(),
            Registration {
                session: session.into(),
                stream: stream.into(),
                events,
                open: false,
                since: now,
            },
        );
        Ok(id)
    }

    /// Forgets every registration of `session` (it ended).
    pub fn forget_session(&self, session: &str) {
        self.lock().retain(|_, r| &*r.session != session);
    }

    /// Starts streaming registration `id` of `session`: its events and the guard
    /// that hands it back when the stream ends. One GET at a time per id.
    pub(crate) fn open(
        &self,
        id: &str,
        session: &str,
        stream: &str,
        now: Instant,
        alive: Alive,
    ) -> AppResult<(EventSet, OpenGuard)> {
        let mut map = self.lock();
        Self::purge(&mut map, now, &*alive);
        let reg = map
            .get_mut(id)
            .filter(|r| &*r.session == session && &*r.stream == stream)
            .ok_or_else(|| {
                AppError::not_found(format!(
                    "no such event stream (unfetched ones expire after {} s; POST {{session url}}/sse \
                     registers a new one)",
                    REGISTRATION_TTL.as_secs()
                ))
            })?;
        if reg.open {
            return Err(AppError::conflict(
                "sse_open",
                "this event stream is being read by another request; register another with POST \
                 {session url}/sse",
            ));
        }
        reg.open = true;
        Ok((
            reg.events,
            OpenGuard {
                hub: self.clone(),
                id: id.to_string(),
                alive,
                session: session.into(),
            },
        ))
    }

    /// Registrations (open or not) of `session`.
    pub fn count_of(&self, session: &str) -> usize {
        self.lock()
            .values()
            .filter(|r| &*r.session == session)
            .count()
    }

    /// All registrations.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Held by an open event stream; when it ends (client gone, session ended) the
/// registration may be fetched again (an `EventSource` reconnects) until it
/// expires or its session ends.
pub struct OpenGuard {
    hub: SseHub,
    id: String,
    /// To tell, at the end, whether the session is still there.
    alive: Alive,
    session: Arc<str>,
}

impl std::fmt::Debug for OpenGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenGuard").field("id", &self.id).finish()
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if !(self.alive)(&self.session) {
            self.hub.forget_session(&self.session);
        } else if let Some(reg) = self.hub.lock().get_mut(&self.id) {
            reg.open = false;
            reg.since = Instant::now();
        }
    }
}
