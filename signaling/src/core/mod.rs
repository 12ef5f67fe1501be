//! The room's sans-IO core: the one owner of a room's state (members, host,
//! playback, barrier, chat window, bans and mutes, resume log). It never reads a
//! clock, never touches a socket or a channel and never spawns:
//! [`Room::handle`] takes an [`Input`] and `now` (server time, ms since the Unix
//! epoch) and leaves what must happen in an outbox of [`Effect`]s, in order, that
//! the room task (`room.rs`, the shell) drains with [`Room::poll_effect`].
//! Database work leaves as [`StoreOp`]s and its results come back as
//! [`Input::Stored`].
//!
//! One file per family of messages, as mini-redis has one per command:
//! - `members`: joins, leaves, the grace period, presence, the host role, the timer.
//! - `resume`: a member coming back on a new connection (log replay or a fresh welcome).
//! - `playback`: commands, reports and drift, the ready barrier, clock measurement.
//! - `chat`: messages, history, deletes, reactions, and their stored results.
//! - `moderation`: settings, mutes, kicks, bans, evictions.
//! - `calls`: a call member's microphone, camera and voice (`call.state`), the
//!   host muting someone (`call.mute`).

mod calls;
mod chat;
mod members;
mod moderation;
mod playback;
mod resume;
mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use serde_json::Value;

use crate::chat::{ChatRecord, Inserted, NewChat, StoreError, TokenBucket, WindowLimiter};
use crate::clock::ClockFilter;
use crate::config::RoomsConfig;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::playback::{Barrier, Playback};
use crate::server_msg::{MediaState, MemberInfo, PlaybackState, ServerMsg, You};
use crate::wire::{ClientMsg, Control, Resume, UserInfo};

pub use members::Refused;
pub(crate) use snapshot::Snapshot;

/// What happens to a room.
pub(crate) enum Input {
    /// Several nodes: this node takes over a room another node owned (its last
    /// snapshot and the log of its broadcasts, oldest first). Before `Loaded`.
    Restore {
        snapshot: Option<Snapshot>,
        log: Vec<(u64, Utf8Bytes)>,
    },
    /// The room's bans, mutes and recent chat, read from the store as it starts.
    Loaded {
        bans: Vec<String>,
        /// (user, muted until unix ms)
        mutes: Vec<(String, i64)>,
        /// Newest first.
        chat: Vec<ChatRecord>,
    },
    /// A connection that sent `hello`. Answered with [`Effect::Joined`] or
    /// [`Effect::Refused`].
    Join {
        conn: u64,
        ident: Identity,
        resume: Option<Resume>,
        user: UserInfo,
    },
    /// A client message, received at server time `recv_at`.
    Msg {
        conn: u64,
        msg: ClientMsg,
        recv_at: f64,
    },
    /// The connection ended: with a close 1000 (`clean`: the member leaves) or
    /// without (the member is kept for the grace period).
    Leave { conn: u64, clean: bool },
    /// The server withdrew `user`'s access (`Rooms::evict`).
    Evict {
        user: String,
        code: &'static str,
        message: String,
    },
    /// A connection's outbound queue was full: it is closed with 1013.
    Slow { conn: u64 },
    /// The room timer (`tick_ms`): grace periods, the barrier's timeout, idleness,
    /// clock pings, presence batches, coalesced `call.state` changes.
    Tick,
    /// The result of a [`StoreOp`] that answers.
    Stored(Stored),
}

/// A database result, with what the room needs to answer it. `conn` is the asking
/// connection (it may have gone meanwhile).
// Each is moved once per store answer, through one channel slot: boxing the large
// one would add an allocation and save nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Stored {
    /// `chat.send`: stored once per (user, client_msg_id).
    Inserted {
        conn: Option<u64>,
        /// (user id, client_msg_id): no longer being stored.
        key: (String, String),
        /// The `ref` of an error answer.
        r: String,
        res: Result<Inserted, StoreError>,
    },
    /// `chat.history`: up to `limit + 1` records, newest first.
    Page {
        conn: Option<u64>,
        limit: u32,
        res: Result<Vec<ChatRecord>, StoreError>,
    },
    /// `chat.delete`: `Ok(true)` deleted, `Ok(false)` no such message, `Err(code)`.
    Deleted {
        conn: Option<u64>,
        id: i64,
        by: String,
        privileged: bool,
        outcome: Result<bool, &'static str>,
    },
}

/// What the shell must do, in this order.
#[derive(Debug)]
pub(crate) enum Effect {
    /// One message to one connection.
    Send { conn: u64, text: Utf8Bytes },
    /// The same bytes to every attached connection. `linger`: a reaction, which may
    /// wait up to `reaction_linger_ms` for others to leave in the same write.
    Broadcast {
        seq: u64,
        text: Utf8Bytes,
        linger: bool,
    },
    /// Answer a client's `time.ping` (`t2` is stamped as it is written).
    Pong {
        conn: u64,
        id: Value,
        t0: f64,
        t1: f64,
    },
    /// Measure a member's clock with a `time.ping` (`t0` stamped as it is written).
    Ping { conn: u64, id: u64 },
    /// Broadcasts from here on reach `conn` too (a join or a resume).
    Attach { conn: u64 },
    /// Broadcasts from here on no longer reach `conn`; close it as `close` says.
    Detach { conn: u64, close: Close },
    /// The join of `conn` succeeded.
    Joined { conn: u64 },
    /// The join of `conn` was refused.
    Refused { conn: u64, refused: Refused },
    /// Database work.
    Store(StoreOp),
}

/// How a detached connection is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// Close normally (1000) after what is queued, unless a close is under way.
    Release,
    /// Close with this code after what is queued (kick, ban, replaced).
    AfterQueue(u16, &'static str),
    /// Close with this code now, dropping what is queued (too slow).
    Now(u16, &'static str),
}

/// Database work asked for by the room (the shell adds the room id).
#[derive(Debug)]
pub(crate) enum StoreOp {
    /// Answered with [`Stored::Inserted`].
    InsertChat {
        conn: Option<u64>,
        key: (String, String),
        r: String,
        new: NewChat,
    },
    /// Answered with [`Stored::Page`].
    Page {
        conn: Option<u64>,
        before: Option<i64>,
        limit: u32,
    },
    /// Answered with [`Stored::Deleted`].
    Delete {
        conn: Option<u64>,
        id: i64,
        by: String,
        privileged: bool,
    },
    /// Not answered.
    SetBan {
        user: String,
        by: String,
        reason: Option<String>,
        banned: bool,
    },
    /// Not answered.
    SetMute {
        user: String,
        by: String,
        until: Option<i64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Active,
    Idle,
    Buffering,
    Away,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Idle => "idle",
            Status::Buffering => "buffering",
            Status::Away => "away",
        }
    }
}

/// One member. Times are server ms.
struct Member {
    session: String,
    resume_token: String,
    user_id: String,
    name: String,
    avatar: Option<String>,
    moderator: bool,
    can_chat: bool,
    conn: Option<u64>,
    disconnected_at: Option<f64>,
    status: Status,
    hidden: bool,
    buffering: bool,
    last_report: f64,
    clock: ClockFilter,
    reported_offset: Option<f64>,
    pings_sent: u32,
    next_ping: f64,
    bucket: TokenBucket,
    last_hint: Option<f64>,
    /// Calls: the member's media as its `call.state`s (and the host's
    /// `call.mute`s) left it; `None` until it sends one.
    media: Option<MediaState>,
    /// Calls: what the room last told the others of `media`, and when (server
    /// ms): a change within `call_state_interval_ms` of that waits for the timer.
    media_sent: Option<MediaState>,
    media_sent_at: f64,
}

impl Member {
    /// A member as it joins (or is restored by a take-over): who it is, and a
    /// connection state that starts over at `now`.
    #[allow(clippy::too_many_arguments)]
    fn new(
        now: f64,
        cfg: &RoomsConfig,
        session: String,
        resume_token: String,
        user_id: String,
        name: String,
        avatar: Option<String>,
        (moderator, can_chat): (bool, bool),
    ) -> Member {
        Member {
            session,
            resume_token,
            user_id,
            name,
            avatar,
            moderator,
            can_chat,
            conn: None,
            disconnected_at: None,
            status: Status::Active,
            hidden: false,
            buffering: false,
            last_report: now,
            clock: ClockFilter::default(),
            reported_offset: None,
            pings_sent: 0,
            next_ping: now,
            bucket: TokenBucket::new(cfg.messages_burst, now),
            last_hint: None,
            media: None,
            media_sent: None,
            media_sent_at: f64::NEG_INFINITY,
        }
    }
}

/// Presence changes of a large room gathered between two `presence.batch`es.
#[derive(Default)]
struct PresenceBatch {
    joined: Vec<MemberInfo>,
    left: Vec<MemberInfo>,
    updated: Vec<MemberInfo>,
    /// Changes past `welcome_members` entries, counted only.
    omitted: usize,
}

impl PresenceBatch {
    fn is_empty(&self) -> bool {
        self.joined.is_empty()
            && self.left.is_empty()
            && self.updated.is_empty()
            && self.omitted == 0
    }
    fn len(&self) -> usize {
        self.joined.len() + self.left.len() + self.updated.len()
    }
}

/// Which presence change a [`MemberInfo`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    Join,
    Leave,
    Update,
}

/// One room's state. See the module header.
pub(crate) struct Room {
    id: Arc<str>,
    cfg: Arc<RoomsConfig>,
    metrics: Metrics,
    members: Vec<Member>,
    host: Option<String>,
    control: Control,
    slow_mode_ms: u64,
    playback: Playback,
    barrier: Option<Barrier>,
    seq: u64,
    log: VecDeque<(u64, Utf8Bytes)>,
    recent_chat: VecDeque<ChatRecord>,
    pending_chat: HashSet<(String, String)>,
    bans: HashSet<String>,
    mutes: HashMap<String, i64>,
    /// Per user: the chat rate window and the time of the last message (slow mode).
    chat_limits: HashMap<String, (WindowLimiter, Option<f64>)>,
    next_ping_id: u64,
    last_correction: Option<f64>,
    /// Connection id → index in `members`: every client message names its
    /// connection, and a scan per message is quadratic in a large room.
    by_conn: HashMap<u64, usize>,
    /// Large rooms: presence changes waiting for the next `presence.batch`.
    pending_presence: PresenceBatch,
    next_presence_flush: f64,
    outbox: VecDeque<Effect>,
    /// Bumped when the host, the settings or the playback change (a snapshot for
    /// another node is due at once) and when a member comes or goes (snapshot.rs).
    state_gen: u64,
    members_gen: u64,
}

impl Room {
    pub fn new(id: &str, cfg: Arc<RoomsConfig>, metrics: Metrics, now: f64) -> Self {
        Self {
            id: id.into(),
            cfg,
            metrics,
            members: Vec::new(),
            host: None,
            control: Control::Host,
            slow_mode_ms: 0,
            playback: Playback::new(now),
            barrier: None,
            seq: 0,
            log: VecDeque::new(),
            recent_chat: VecDeque::new(),
            pending_chat: HashSet::new(),
            bans: HashSet::new(),
            mutes: HashMap::new(),
            chat_limits: HashMap::new(),
            next_ping_id: 1,
            last_correction: None,
            by_conn: HashMap::new(),
            pending_presence: PresenceBatch::default(),
            next_presence_flush: now,
            outbox: VecDeque::new(),
            state_gen: 0,
            members_gen: 0,
        }
    }

    /// Applies one input at server time `now`; what must happen is left in the outbox.
    pub fn handle(&mut self, now: f64, input: Input) {
        match input {
            Input::Restore { snapshot, log } => self.restore(now, snapshot, log),
            Input::Loaded { bans, mutes, chat } => {
                self.bans = bans.into_iter().collect();
                let now = now as i64;
                self.mutes = mutes.into_iter().filter(|(_, t)| *t > now).collect();
                let mut chat = chat;
                chat.reverse();
                self.recent_chat = chat.into();
            }
            Input::Join {
                conn,
                ident,
                resume,
                user,
            } => self.on_join(now, conn, ident, resume, user),
            Input::Msg { conn, msg, recv_at } => {
                if let Some(idx) = self.idx_by_conn(conn) {
                    self.on_msg(now, idx, msg, recv_at);
                }
            }
            Input::Leave { conn, clean } => {
                if let Some(idx) = self.idx_by_conn(conn) {
                    if clean {
                        self.remove_member(now, idx, "left", Close::Release);
                    } else {
                        self.disconnect(now, idx, Close::Release);
                    }
                }
            }
            Input::Evict {
                user,
                code,
                message,
            } => self.evict(now, &user, code, &message),
            Input::Slow { conn } => {
                if let Some(idx) = self.idx_by_conn(conn) {
                    self.metrics.slow_disconnects.inc();
                    self.disconnect(now, idx, Close::Now(1013, "too slow: outbound queue full"));
                }
            }
            Input::Tick => self.on_tick(now),
            Input::Stored(stored) => self.on_stored(stored),
        }
    }

    /// The next effect, in the order they were made.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.outbox.pop_front()
    }

    /// No members (connected or in their grace period) are left: the room ends.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn on_msg(&mut self, now: f64, idx: usize, msg: ClientMsg, recv_at: f64) {
        if !matches!(
            msg,
            ClientMsg::TimePong { .. } | ClientMsg::TimeReport { .. }
        ) {
            let (rate, burst) = (self.cfg.messages_per_second, self.cfg.messages_burst);
            if let Err(retry) = self.members[idx].bucket.take(now, rate, burst) {
                self.send_error_retry(
                    idx,
                    "rate_limited",
                    "too many messages; slow down",
                    None,
                    Some(retry),
                );
                return;
            }
        }
        match msg {
            ClientMsg::Hello { .. } => self.send_error(
                idx,
                "bad_request",
                "already joined: hello is sent once",
                Some("hello"),
            ),
            ClientMsg::Command {
                action,
                position,
                rate,
                media,
                at,
                client_msg_id,
            } => self.on_command(
                now,
                idx,
                playback::Command {
                    action,
                    position,
                    rate,
                    media,
                    at,
                    client_msg_id,
                },
            ),
            ClientMsg::Report {
                position,
                state,
                at,
                seq,
            } => self.on_report(now, idx, position, state, at, seq),
            ClientMsg::HostTransfer { to } => self.on_transfer(idx, &to),
            ClientMsg::Settings {
                control,
                slow_mode_ms,
            } => self.on_settings(idx, control, slow_mode_ms),
            ClientMsg::ChatSend {
                text,
                client_msg_id,
                media_time,
            } => self.on_chat(now, idx, text, client_msg_id, media_time),
            ClientMsg::ChatHistory { before, limit } => self.on_history(idx, before, limit),
            ClientMsg::Reaction { emoji, media_time } => {
                self.on_reaction(now, idx, emoji, media_time)
            }
            ClientMsg::ChatDelete { id } => self.on_delete(idx, id.as_i64()),
            ClientMsg::Mute { user, seconds } => self.on_mute(now, idx, user, seconds),
            ClientMsg::Unmute { user } => self.on_unmute(idx, user),
            ClientMsg::Kick { user, reason } => self.on_kick(now, idx, user, reason),
            ClientMsg::Ban { user, reason } => self.on_ban(now, idx, user, reason),
            ClientMsg::Unban { user } => self.on_unban(idx, user),
            ClientMsg::TimePing { id, t0 } => {
                // Normally answered by the connection itself; answered here too for completeness.
                if let Some(conn) = self.members[idx].conn {
                    self.outbox.push_back(Effect::Pong {
                        conn,
                        id,
                        t0,
                        t1: recv_at,
                    });
                }
            }
            ClientMsg::TimePong { t0, t1, t2, .. } => self.on_pong(idx, t0, t1, t2, recv_at),
            ClientMsg::TimeReport { offset, rtt } => {
                if offset.is_finite() && rtt.is_finite() {
                    self.members[idx].reported_offset = Some(offset);
                }
            }
            ClientMsg::Snapshot => {
                let v = self.welcome(now, idx);
                self.send_to(idx, &v);
            }
            ClientMsg::MembersList { after, limit } => {
                let v = self.members_page(after.as_deref(), limit);
                self.send_to(idx, &v);
            }
            ClientMsg::CallState {
                muted,
                camera_off,
                speaking,
            } => self.on_call_state(now, idx, muted, camera_off, speaking),
            ClientMsg::CallMute { user, kind } => self.on_call_mute(now, idx, &user, &kind),
            ClientMsg::Visibility { hidden } => {
                self.members[idx].hidden = hidden;
                if !hidden {
                    self.members[idx].last_report = now;
                }
                self.refresh_status(now, idx);
            }
        }
    }

    // ---- lookups ------------------------------------------------------------------

    fn idx_by_conn(&self, conn: u64) -> Option<usize> {
        self.by_conn.get(&conn).copied()
    }

    fn idx_by_session(&self, session: &str) -> Option<usize> {
        self.members.iter().position(|m| m.session == session)
    }

    /// After `members.remove` shifted the indices.
    fn reindex(&mut self) {
        self.by_conn.clear();
        for (i, m) in self.members.iter().enumerate() {
            if let Some(c) = m.conn {
                self.by_conn.insert(c, i);
            }
        }
    }

    fn is_large(&self) -> bool {
        self.members.len() > self.cfg.large_room_above
    }

    fn is_host(&self, idx: usize) -> bool {
        self.host.as_deref() == Some(self.members[idx].session.as_str())
    }

    fn host_user(&self) -> Option<String> {
        let h = self.host.as_deref()?;
        self.members
            .iter()
            .find(|m| m.session == h)
            .map(|m| m.user_id.clone())
    }

    fn role(&self, m: &Member) -> &'static str {
        if self.host.as_deref() == Some(m.session.as_str()) {
            "host"
        } else if m.moderator {
            "moderator"
        } else {
            "viewer"
        }
    }

    fn is_muted(&self, now: f64, idx: usize) -> bool {
        self.mutes
            .get(&self.members[idx].user_id)
            .is_some_and(|until| (*until as f64) > now)
    }

    // ---- what members see ---------------------------------------------------------

    fn member_info(&self, m: &Member) -> MemberInfo {
        MemberInfo {
            id: m.user_id.clone(),
            name: m.name.clone(),
            avatar: m.avatar.clone(),
            role: self.role(m),
            status: m.status.as_str(),
            connected: m.conn.is_some(),
            session: m.session.clone(),
            media: m.media,
        }
    }

    fn you(&self, m: &Member) -> You {
        You {
            id: m.user_id.clone(),
            name: m.name.clone(),
            avatar: m.avatar.clone(),
            role: self.role(m),
            muted_until: self.mutes.get(&m.user_id).copied(),
        }
    }

    fn playback_state(&self, by: Option<String>, reason: &'static str) -> PlaybackState {
        PlaybackState::new(
            &self.playback,
            self.host_user(),
            by,
            reason,
            self.barrier.is_some(),
        )
    }

    // ---- output -------------------------------------------------------------------

    /// Serialises once (given its `seq`), logs for resumes, and leaves the bytes for
    /// every attached connection.
    fn broadcast(&mut self, msg: impl FnOnce(u64) -> ServerMsg) -> u64 {
        self.queue_broadcast(msg, false)
    }

    /// A broadcast that may wait up to `reaction_linger_ms` for others to join it
    /// in the same write (reactions: a storm then costs one write per member per
    /// window, not per reaction).
    fn broadcast_lingering(&mut self, msg: impl FnOnce(u64) -> ServerMsg) -> u64 {
        self.queue_broadcast(msg, true)
    }

    fn queue_broadcast(&mut self, msg: impl FnOnce(u64) -> ServerMsg, linger: bool) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        let text = Utf8Bytes::from(msg(seq).to_text());
        self.log.push_back((seq, text.clone()));
        while self.log.len() > self.cfg.log_size.max(1) {
            self.log.pop_front();
        }
        self.outbox
            .push_back(Effect::Broadcast { seq, text, linger });
        seq
    }

    /// `playback.state`: its `seq` is the broadcast's, which the state keeps.
    fn broadcast_state(&mut self, by: Option<&str>, reason: &'static str) {
        self.state_gen += 1;
        self.playback.seq = self.seq + 1;
        let v = self.playback_state(by.map(str::to_string), reason);
        self.broadcast(|_| ServerMsg::PlaybackState(v));
    }

    fn send_to(&mut self, idx: usize, msg: &ServerMsg) {
        if let Some(conn) = self.members[idx].conn {
            self.outbox.push_back(Effect::Send {
                conn,
                text: msg.to_text().into(),
            });
        }
    }

    fn send_error(&mut self, idx: usize, code: &'static str, message: &str, r: Option<&str>) {
        self.send_error_retry(idx, code, message, r, None);
    }

    fn send_error_retry(
        &mut self,
        idx: usize,
        code: &'static str,
        message: &str,
        r: Option<&str>,
        retry: Option<Duration>,
    ) {
        self.metrics.errors.with_label_values(&[code]).inc();
        let retry_ms = retry.map(|d| d.as_millis().max(1) as u64);
        self.send_to(idx, &ServerMsg::error(code, message, r, retry_ms));
    }
}
