//! The room task: the one owner of a room's state (members, host, playback, barrier,
//! chat window, bans/mutes, resume log). Every broadcast is serialised here once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::chat::{ChatRecord, Inserted, NewChat, TokenBucket, WindowLimiter, blocked_word};
use crate::clock::{ClockFilter, now_ms, sample};
use crate::config::RoomsConfig;
use crate::event::{JoinReply, JoinRequest, Refused, RoomEvent, Stored};
use crate::frame::{MAX_FRAMES_PER_WRITE, Outbound, SendError, text_frame};
use crate::link::{ConnHandle, outside_io_budget};
use crate::playback::{Barrier, MAX_RATE, MIN_RATE, Playback};
use crate::server_msg::{
    ChatMessage, MemberInfo, PlaybackState, RoomInfo, ServerMsg, UserRef, Welcome, You,
};
use crate::state::Inner;
use crate::wire::{Action, ClientMsg, Control, ReportState};

/// Database work done off the room task; its result comes back as [`RoomEvent::Stored`].
type Job = std::pin::Pin<Box<dyn std::future::Future<Output = Stored> + Send>>;

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

struct Member {
    session: String,
    resume_token: String,
    user_id: String,
    name: String,
    avatar: Option<String>,
    moderator: bool,
    can_chat: bool,
    conn: Option<ConnHandle>,
    disconnected_at: Option<Instant>,
    status: Status,
    hidden: bool,
    buffering: bool,
    last_report: Instant,
    clock: ClockFilter,
    reported_offset: Option<f64>,
    pings_sent: u32,
    next_ping: Instant,
    bucket: TokenBucket,
    last_hint: Option<Instant>,
}

pub(crate) struct Room {
    id: Arc<str>,
    generation: u64,
    inner: Arc<Inner>,
    cfg: Arc<RoomsConfig>,
    jobs: mpsc::UnboundedSender<Job>,
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
    chat_limits: HashMap<String, (WindowLimiter, Option<Instant>)>,
    slow: Vec<u64>,
    /// Broadcasts of this pass not yet written: they leave together, one vectored
    /// write per member, when the pass ends or before anything else reaches a member.
    unsent: Vec<Bytes>,
    unsent_since: Instant,
    /// Set while `unsent` holds only reactions: when they must leave
    /// (`reaction_linger_ms` after the first). `None` with frames unsent means
    /// they leave at the end of this pass.
    linger_until: Option<tokio::time::Instant>,
    next_ping_id: u64,
    last_correction: Option<Instant>,
    /// Connection id → index in `members`: every client message names its
    /// connection, and a scan per message is quadratic in a large room.
    by_conn: HashMap<u64, usize>,
    /// Large rooms: presence changes waiting for the next `presence.batch`.
    pending_presence: PresenceBatch,
    next_presence_flush: Instant,
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

fn random_hex(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        s.push_str(&format!("{:02x}", rand::random::<u8>()));
    }
    s
}

/// Largest `members.list` page.
const MEMBERS_PAGE_MAX: usize = 500;

/// Most events handled in one pass before the pass's broadcasts are written out:
/// enough to turn a burst (a chat or reaction storm) into one write per member,
/// few enough that the first event's broadcast waits well under a millisecond.
const EVENTS_PER_PASS: usize = 32;

/// Which presence change a [`MemberInfo`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    Join,
    Leave,
    Update,
}

/// Starts the task of room `id` and returns its channel.
pub(crate) fn spawn(id: &str, generation: u64, inner: Arc<Inner>) -> mpsc::Sender<RoomEvent> {
    Room::spawn(id, generation, inner)
}

impl Room {
    fn spawn(id: &str, generation: u64, inner: Arc<Inner>) -> mpsc::Sender<RoomEvent> {
        let (tx, rx) = mpsc::channel(4096);
        let cfg = inner.cfg.clone();
        let (jobs, mut jobs_rx) = mpsc::unbounded_channel::<Job>();
        let apply_tx = tx.clone();
        tokio::spawn(async move {
            while let Some(job) = jobs_rx.recv().await {
                let stored = job.await;
                if apply_tx.send(RoomEvent::Stored(stored)).await.is_err() {
                    break;
                }
            }
        });
        let room = Room {
            id: id.into(),
            generation,
            inner,
            cfg,
            jobs,
            members: Vec::new(),
            host: None,
            control: Control::Host,
            slow_mode_ms: 0,
            playback: Playback::new(now_ms()),
            barrier: None,
            seq: 0,
            log: VecDeque::new(),
            recent_chat: VecDeque::new(),
            pending_chat: HashSet::new(),
            bans: HashSet::new(),
            mutes: HashMap::new(),
            chat_limits: HashMap::new(),
            slow: Vec::new(),
            unsent: Vec::with_capacity(MAX_FRAMES_PER_WRITE),
            unsent_since: Instant::now(),
            linger_until: None,
            next_ping_id: 1,
            last_correction: None,
            by_conn: HashMap::new(),
            pending_presence: PresenceBatch::default(),
            next_presence_flush: Instant::now(),
        };
        tokio::spawn(room.run(rx));
        tx
    }

    async fn run(mut self, mut rx: mpsc::Receiver<RoomEvent>) {
        self.inner.metrics.rooms.inc();
        self.load().await;
        let tick_every = Duration::from_millis(self.cfg.tick_ms.max(5));
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + tick_every, tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut shutdown_reply = None;
        // Events that are already waiting are handled in one pass, so that the
        // broadcasts they cause reach each member in one write.
        let mut batch = Vec::with_capacity(EVENTS_PER_PASS);
        // Events of the batch that came after a shutdown: answered like queued ones.
        let mut after_shutdown = Vec::new();
        // One timer for the reactions' linger window, moved only when a new window
        // opens (not rebuilt on every pass of a busy room).
        let linger = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(linger);
        'serve: loop {
            if let Some(until) = self.linger_until
                && linger.deadline() != until
            {
                linger.as_mut().reset(until);
            }
            tokio::select! {
                n = rx.recv_many(&mut batch, EVENTS_PER_PASS) => {
                    if n == 0 {
                        break;
                    }
                    let mut events = batch.drain(..);
                    while let Some(ev) = events.next() {
                        if let RoomEvent::Shutdown(reply) = ev {
                            after_shutdown.extend(events);
                            // What the room said before the shutdown still reaches its members.
                            self.write_unsent();
                            for m in self.members.iter_mut() {
                                if let Some(c) = m.conn.take() {
                                    c.close(1001, "server shutting down");
                                }
                            }
                            self.members.clear();
                            self.by_conn.clear();
                            shutdown_reply = Some(reply);
                            break 'serve;
                        }
                        self.handle(ev);
                    }
                }
                _ = tick.tick() => self.on_tick(),
                _ = &mut linger, if self.linger_until.is_some() => self.write_unsent(),
            }
            if self.linger_until.is_none() {
                self.write_unsent();
            }
            self.flush_slow();
            if self.members.is_empty() {
                break;
            }
        }
        // Leave the registry first, then refuse whatever is still queued.
        let generation = self.generation;
        self.inner
            .rooms
            .remove_if(&*self.id, |_, h| h.generation == generation);
        rx.close();
        let mut left = after_shutdown.into_iter();
        while let Some(ev) = match left.next() {
            Some(ev) => Some(ev),
            None => rx.recv().await,
        } {
            match ev {
                RoomEvent::Join(req, reply) => {
                    let _ = reply.send(JoinReply::Retry(req));
                }
                RoomEvent::Shutdown(reply) => {
                    let _ = reply.send(());
                }
                _ => {}
            }
        }
        self.inner.metrics.rooms.dec();
        if let Some(r) = shutdown_reply {
            let _ = r.send(());
        }
    }

    async fn load(&mut self) {
        let store = self.inner.store.clone();
        match store.moderation(self.id.to_string()).await {
            Ok(m) => {
                self.bans = m.bans.into_iter().collect();
                let now = now_ms() as i64;
                self.mutes = m.mutes.into_iter().filter(|(_, t)| *t > now).collect();
            }
            Err(e) => tracing::error!(error = %e, "loading room moderation"),
        }
        match store
            .page(self.id.to_string(), None, self.cfg.welcome_chat as u32)
            .await
        {
            Ok(mut page) => {
                page.reverse();
                self.recent_chat = page.into();
            }
            Err(e) => tracing::error!(error = %e, "loading room chat"),
        }
    }

    fn handle(&mut self, ev: RoomEvent) {
        if !matches!(ev, RoomEvent::Msg { .. }) {
            // Joins, leaves and the rest change who gets what: earlier broadcasts
            // go to the members that were there when they were made.
            self.write_unsent();
        }
        match ev {
            RoomEvent::Join(req, reply) => self.on_join(*req, reply),
            RoomEvent::Msg { conn, msg, recv_at } => {
                if let Some(idx) = self.idx_by_conn(conn) {
                    self.on_msg(idx, msg, recv_at);
                }
            }
            RoomEvent::Leave { conn, clean } => {
                if let Some(idx) = self.idx_by_conn(conn) {
                    if clean {
                        self.remove_member(idx, "left", None);
                    } else {
                        self.disconnect(idx, None);
                    }
                }
            }
            RoomEvent::Evict {
                user,
                code,
                message,
            } => self.evict(&user, code, &message),
            RoomEvent::Stored(stored) => self.on_stored(stored),
            RoomEvent::Shutdown(_) => {}
        }
    }

    fn idx_by_conn(&self, conn: u64) -> Option<usize> {
        self.by_conn.get(&conn).copied()
    }

    /// After `members.remove` shifted the indices.
    fn reindex(&mut self) {
        self.by_conn.clear();
        for (i, m) in self.members.iter().enumerate() {
            if let Some(c) = &m.conn {
                self.by_conn.insert(c.id, i);
            }
        }
    }

    fn is_large(&self) -> bool {
        self.members.len() > self.cfg.large_room_above
    }

    /// One presence change (`presence.join|leave|update` of `member`): broadcast at
    /// once in a normal room; gathered into the next `presence.batch` in a large one,
    /// where one message per change to every member makes filling the room quadratic.
    fn presence(&mut self, kind: Presence, member: MemberInfo) {
        if !self.is_large() {
            self.broadcast(|seq| match kind {
                Presence::Join => ServerMsg::PresenceJoin { member, seq },
                Presence::Leave => ServerMsg::PresenceLeave { member, seq },
                Presence::Update => ServerMsg::PresenceUpdate { member, seq },
            });
            return;
        }
        let b = &mut self.pending_presence;
        if b.len() >= self.cfg.welcome_members {
            b.omitted += 1;
            return;
        }
        match kind {
            Presence::Join => b.joined.push(member),
            Presence::Leave => b.left.push(member),
            Presence::Update => b.updated.push(member),
        }
    }

    /// Sends the gathered presence changes (at most once per `presence_batch_ms`).
    fn flush_presence(&mut self, now: Instant) {
        if self.pending_presence.is_empty() || now < self.next_presence_flush {
            return;
        }
        self.next_presence_flush = now + Duration::from_millis(self.cfg.presence_batch_ms);
        let b = std::mem::take(&mut self.pending_presence);
        let member_count = self.members.len();
        self.broadcast(|seq| ServerMsg::PresenceBatch {
            joined: b.joined,
            left: b.left,
            updated: b.updated,
            omitted: b.omitted,
            member_count,
            seq,
        });
    }

    /// `members.list`: one page of the member list, in join order, after `after`.
    fn members_page(&self, after: Option<&str>, limit: Option<u64>) -> ServerMsg {
        let limit = limit.unwrap_or(100).clamp(1, MEMBERS_PAGE_MAX as u64) as usize;
        let start = after
            .and_then(|a| self.idx_by_session(a).map(|i| i + 1))
            .unwrap_or(0);
        let page: Vec<MemberInfo> = self
            .members
            .iter()
            .skip(start)
            .take(limit)
            .map(|m| self.member_info(m))
            .collect();
        let next = (start + page.len() < self.members.len())
            .then(|| self.members[start + page.len() - 1].session.clone());
        ServerMsg::MembersPage {
            members: page,
            next,
            member_count: self.members.len(),
        }
    }

    fn idx_by_session(&self, session: &str) -> Option<usize> {
        self.members.iter().position(|m| m.session == session)
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

    fn member_info(&self, m: &Member) -> MemberInfo {
        MemberInfo {
            id: m.user_id.clone(),
            name: m.name.clone(),
            avatar: m.avatar.clone(),
            role: self.role(m),
            status: m.status.as_str(),
            connected: m.conn.is_some(),
            session: m.session.clone(),
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

    /// Serialises once, logs for resumes, and queues the same bytes to every
    /// connection; they leave at the end of the pass.
    fn broadcast(&mut self, msg: impl FnOnce(u64) -> ServerMsg) -> u64 {
        self.linger_until = None;
        self.queue_broadcast(msg)
    }

    /// A broadcast that may wait up to `reaction_linger_ms` for others to join it
    /// in the same write (reactions: a storm then costs one write per member per
    /// window, not per reaction).
    fn broadcast_lingering(&mut self, msg: impl FnOnce(u64) -> ServerMsg) -> u64 {
        if self.unsent.is_empty() && self.cfg.reaction_linger_ms > 0 {
            self.linger_until = Some(
                tokio::time::Instant::now() + Duration::from_millis(self.cfg.reaction_linger_ms),
            );
        }
        self.queue_broadcast(msg)
    }

    /// `msg` is given the broadcast's `seq` and serialised once.
    fn queue_broadcast(&mut self, msg: impl FnOnce(u64) -> ServerMsg) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        let bytes = Utf8Bytes::from(msg(seq).to_text());
        self.inner.broker.publish(&self.id, seq, &bytes);
        // Framed once: every member gets the same header and payload bytes.
        let frame = text_frame(bytes.as_bytes());
        self.log.push_back((seq, bytes));
        while self.log.len() > self.cfg.log_size.max(1) {
            self.log.pop_front();
        }
        if self.unsent.is_empty() {
            self.unsent_since = Instant::now();
        }
        self.unsent.push(frame);
        if self.unsent.len() == MAX_FRAMES_PER_WRITE {
            self.write_unsent();
        }
        seq
    }

    /// Hands this pass's broadcasts to every connected member, one vectored write each.
    fn write_unsent(&mut self) {
        self.linger_until = None;
        if self.unsent.is_empty() {
            return;
        }
        let started = Instant::now();
        let (members, unsent, since, slow) = (
            &self.members,
            &self.unsent,
            self.unsent_since,
            &mut self.slow,
        );
        outside_io_budget(|| {
            for m in members {
                if let Some(c) = &m.conn
                    && c.tx.try_send_frames(unsent, since) == Err(SendError::Full)
                {
                    slow.push(c.id);
                }
            }
        });
        self.unsent.clear();
        self.inner
            .metrics
            .broadcast_pass
            .observe(started.elapsed().as_secs_f64());
    }

    fn send_to(&mut self, idx: usize, msg: &ServerMsg) {
        self.write_unsent();
        if let Some(c) = &self.members[idx].conn
            && let Err(SendError::Full) =
                c.tx.try_send(Outbound::Text(msg.to_text().into(), Instant::now()))
        {
            self.slow.push(c.id);
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
        self.inner.metrics.errors.with_label_values(&[code]).inc();
        let retry_ms = retry.map(|d| d.as_millis().max(1) as u64);
        self.send_to(idx, &ServerMsg::error(code, message, r, retry_ms));
    }

    /// Connections whose queue was full: close with 1013 and treat as disconnected.
    fn flush_slow(&mut self) {
        while let Some(conn) = self.slow.pop() {
            if let Some(idx) = self.idx_by_conn(conn) {
                self.inner.metrics.slow_disconnects.inc();
                self.disconnect(idx, Some((1013, "too slow: outbound queue full")));
            }
        }
    }

    // ---- membership ---------------------------------------------------------------

    fn on_join(&mut self, req: JoinRequest, reply: oneshot::Sender<JoinReply>) {
        let JoinRequest {
            conn,
            ident,
            resume,
            user,
        } = req;
        if self.bans.contains(&ident.user_id) {
            let _ = reply.send(JoinReply::Refused(Refused {
                code: "banned",
                message: "you are banned from this room".into(),
                close: 4003,
            }));
            return;
        }
        let now = Instant::now();
        if let Some(r) = resume {
            let found = self.idx_by_session(&r.session).filter(|&i| {
                let m = &self.members[i];
                m.user_id == ident.user_id
                    && r.resume_token
                        .as_deref()
                        .is_none_or(|t| t == m.resume_token)
            });
            if let Some(idx) = found {
                // What this pass broadcast so far is in the log: it reaches the
                // resuming connection replayed after `resumed`, not before it.
                self.write_unsent();
                let was_connected = self.members[idx].conn.is_some();
                let m = &mut self.members[idx];
                let new_id = conn.id;
                if let Some(old) = m.conn.replace(conn) {
                    self.by_conn.remove(&old.id);
                    old.close_after_queue(4000, "replaced by a newer connection");
                }
                self.by_conn.insert(new_id, idx);
                let m = &mut self.members[idx];
                m.disconnected_at = None;
                m.pings_sent = 0;
                m.next_ping = now;
                m.last_report = now;
                m.bucket = TokenBucket::new(self.cfg.messages_burst);
                let covers = r.last_seq <= self.seq
                    && (r.last_seq == self.seq
                        || self.log.front().is_some_and(|(s, _)| *s <= r.last_seq + 1));
                if covers {
                    self.inner
                        .metrics
                        .resumes
                        .with_label_values(&["replayed"])
                        .inc();
                    let missed: Vec<Utf8Bytes> = self
                        .log
                        .iter()
                        .filter(|(s, _)| *s > r.last_seq)
                        .map(|(_, b)| b.clone())
                        .collect();
                    let m = &self.members[idx];
                    let v = ServerMsg::Resumed {
                        session: m.session.clone(),
                        resume_token: m.resume_token.clone(),
                        you: self.you(m),
                        seq: self.seq,
                        replayed: missed.len(),
                        server_time: now_ms(),
                    };
                    self.send_to(idx, &v);
                    if let Some(c) = &self.members[idx].conn {
                        for b in missed {
                            if c.tx.try_send(Outbound::Text(b, now)).is_err() {
                                self.slow.push(c.id);
                                break;
                            }
                        }
                    }
                } else {
                    self.inner
                        .metrics
                        .resumes
                        .with_label_values(&["fresh"])
                        .inc();
                    let v = self.welcome(idx);
                    self.send_to(idx, &v);
                }
                let _ = reply.send(JoinReply::Joined);
                if !was_connected {
                    let j = self.member_info(&self.members[idx]);
                    self.presence(Presence::Update, j);
                }
                return;
            }
            self.inner
                .metrics
                .resumes
                .with_label_values(&["fresh"])
                .inc();
        }
        if self.members.len() >= self.cfg.max_members_per_room {
            let _ = reply.send(JoinReply::Refused(Refused {
                code: "room_full",
                message: format!(
                    "the room is full (limit: {} members per room)",
                    self.cfg.max_members_per_room
                ),
                close: 1013,
            }));
            return;
        }
        let name = ident
            .name
            .clone()
            .or(user
                .name
                .map(|n| n.trim().chars().take(64).collect::<String>()))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| ident.user_id.clone());
        let avatar = user.avatar.filter(|a| {
            a.len() <= 2048
                && (a.starts_with("https://") || a.starts_with("http://") || a.starts_with("/"))
        });
        let member = Member {
            session: random_hex(12),
            resume_token: random_hex(16),
            user_id: ident.user_id,
            name,
            avatar,
            moderator: ident.moderator,
            can_chat: ident.can_chat,
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
            bucket: TokenBucket::new(self.cfg.messages_burst),
            last_hint: None,
        };
        if self.host.is_none() {
            self.host = Some(member.session.clone());
        }
        self.members.push(member);
        let idx = self.members.len() - 1;
        let mut j = self.member_info(&self.members[idx]);
        j.connected = true;
        self.presence(Presence::Join, j);
        // The others get the join now; the joiner is listed in its `welcome`, which
        // must be the first thing it receives (it got its own join before it).
        self.write_unsent();
        self.by_conn.insert(conn.id, idx);
        self.members[idx].conn = Some(conn);
        let v = self.welcome(idx);
        self.send_to(idx, &v);
        let _ = reply.send(JoinReply::Joined);
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

    fn welcome(&self, idx: usize) -> ServerMsg {
        let m = &self.members[idx];
        // A large room's full list would make every join cost O(members) bytes:
        // the host first, then the earliest members; `members.list` pages the rest.
        let partial = self.is_large();
        let members: Vec<MemberInfo> = if partial {
            let host = self.host.as_deref();
            let first = self
                .members
                .iter()
                .filter(|x| Some(x.session.as_str()) == host);
            let rest = self
                .members
                .iter()
                .filter(|x| Some(x.session.as_str()) != host);
            first
                .chain(rest)
                .take(self.cfg.welcome_members.max(1))
                .map(|x| self.member_info(x))
                .collect()
        } else {
            self.members.iter().map(|x| self.member_info(x)).collect()
        };
        ServerMsg::Welcome(Box::new(Welcome {
            session: m.session.clone(),
            resume_token: m.resume_token.clone(),
            you: self.you(m),
            room: RoomInfo {
                id: self.id.to_string(),
                host: self.host_user(),
                control: self.control,
                slow_mode_ms: self.slow_mode_ms,
                members,
                member_count: self.members.len(),
                members_partial: partial,
                playback: self.playback_state(None, "command"),
                seq: self.seq,
            },
            chat: self.recent_chat.iter().map(ChatMessage::from).collect(),
            server_time: now_ms(),
        }))
    }

    /// A connection went away without saying goodbye: keep the member for the grace period.
    fn disconnect(&mut self, idx: usize, close: Option<(u16, &'static str)>) {
        self.write_unsent();
        let m = &mut self.members[idx];
        let Some(c) = m.conn.take() else { return };
        self.by_conn.remove(&c.id);
        if let Some((code, reason)) = close {
            c.close(code, reason);
        }
        let m = &mut self.members[idx];
        m.disconnected_at = Some(Instant::now());
        let session = m.session.clone();
        let j = self.member_info(&self.members[idx]);
        self.presence(Presence::Update, j);
        self.barrier_forget(&session);
    }

    /// Removes a member for good; passes the host role on when it was the host.
    fn remove_member(
        &mut self,
        idx: usize,
        host_reason: &'static str,
        close: Option<(u16, &'static str)>,
    ) {
        self.write_unsent();
        let m = self.members.remove(idx);
        self.reindex();
        let was_host = self.host.as_deref() == Some(m.session.as_str());
        let mut j = self.member_info(&m);
        j.connected = false;
        if was_host {
            j.role = "host";
        }
        if let Some(c) = m.conn {
            match close {
                Some((code, reason)) => c.close_after_queue(code, reason),
                None => drop(c),
            }
        }
        self.presence(Presence::Leave, j);
        if was_host {
            self.host = self
                .members
                .iter()
                .find(|x| x.conn.is_some())
                .map(|x| x.session.clone());
            if !self.members.is_empty() {
                let host = self.host_user();
                self.broadcast(|seq| ServerMsg::HostChanged {
                    host,
                    reason: host_reason,
                    by: None,
                    seq,
                });
                // Re-announce the state so that it names the new host.
                let now = now_ms();
                if !self.playback.paused && self.barrier.is_none() {
                    self.playback.position = self.playback.position_at(now);
                    self.playback.at = now;
                }
                self.broadcast_state(None, "host_left");
            }
        }
        self.barrier_forget(&m.session);
    }

    // ---- messages -----------------------------------------------------------------

    fn on_msg(&mut self, idx: usize, msg: ClientMsg, recv_at: f64) {
        let now = Instant::now();
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
            } => self.on_command(idx, action, position, rate, media, at, client_msg_id),
            ClientMsg::Report {
                position,
                state,
                at,
                seq,
            } => self.on_report(idx, position, state, at, seq),
            ClientMsg::HostTransfer { to } => self.on_transfer(idx, &to),
            ClientMsg::Settings {
                control,
                slow_mode_ms,
            } => {
                if !self.is_host(idx) {
                    return self.send_error(
                        idx,
                        "not_host",
                        "only the host changes room settings",
                        Some("room.settings"),
                    );
                }
                if let Some(c) = control {
                    self.control = c;
                }
                if let Some(ms) = slow_mode_ms {
                    self.slow_mode_ms = ms.min(3_600_000);
                }
                let by = self.members[idx].user_id.clone();
                let (control, slow_mode_ms) = (self.control, self.slow_mode_ms);
                self.broadcast(|seq| ServerMsg::RoomSettings {
                    control,
                    slow_mode_ms,
                    by,
                    seq,
                });
            }
            ClientMsg::ChatSend {
                text,
                client_msg_id,
                media_time,
            } => self.on_chat(idx, text, client_msg_id, media_time),
            ClientMsg::ChatHistory { before, limit } => {
                let before = match before {
                    None => None,
                    Some(b) => match b.as_i64() {
                        Some(b) => Some(b),
                        None => {
                            return self.send_error(
                                idx,
                                "bad_request",
                                "before: not a message id",
                                Some("chat.history"),
                            );
                        }
                    },
                };
                let limit = limit.unwrap_or(50).clamp(1, 100);
                let conn = self.members[idx].conn.as_ref().map(|c| c.id);
                let store = self.inner.store.clone();
                let room = self.id.to_string();
                self.spawn_job(async move {
                    let res = store.page(room, before, limit + 1).await;
                    Stored::ChatPage { conn, limit, res }
                });
            }
            ClientMsg::Reaction { emoji, media_time } => {
                let ok_short = emoji.len() >= 3
                    && emoji.len() <= 34
                    && emoji.starts_with(':')
                    && emoji.ends_with(':')
                    && emoji[1..emoji.len() - 1]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '+' || c == '-');
                let ok_glyph = !emoji.is_empty()
                    && emoji.len() <= 32
                    && emoji.chars().count() <= 10
                    && !emoji.chars().any(|c| c.is_ascii() || c.is_whitespace());
                if !(ok_short || ok_glyph) {
                    return self.send_error(
                        idx,
                        "bad_request",
                        "emoji: one emoji or a :short_name:",
                        Some("reaction"),
                    );
                }
                if self.is_muted(idx) {
                    return self.send_error(idx, "muted", "you are muted", Some("reaction"));
                }
                let m = &self.members[idx];
                let user = UserRef {
                    id: m.user_id.clone(),
                    name: m.name.clone(),
                    avatar: m.avatar.clone(),
                };
                let at = now_ms();
                self.broadcast_lingering(|seq| ServerMsg::Reaction {
                    user,
                    emoji,
                    at,
                    media_time: media_time.filter(|t| t.is_finite()),
                    seq,
                });
            }
            ClientMsg::ChatDelete { id } => self.on_delete(idx, id.as_i64()),
            ClientMsg::Mute { user, seconds } => {
                if !self.can_moderate(idx, "member.mute") {
                    return;
                }
                if !seconds.is_finite() || seconds <= 0.0 {
                    return self.send_error(
                        idx,
                        "bad_request",
                        "seconds: a positive number",
                        Some("member.mute"),
                    );
                }
                let until = (now_ms() + seconds.min(30.0 * 86400.0) * 1000.0) as i64;
                self.mutes.insert(user.clone(), until);
                self.moderation_log(idx, "mute");
                let by = self.members[idx].user_id.clone();
                self.persist_mute(user.clone(), by.clone(), Some(until));
                self.broadcast(|seq| ServerMsg::MemberMuted {
                    user,
                    until: until as f64,
                    by,
                    seq,
                });
            }
            ClientMsg::Unmute { user } => {
                if !self.can_moderate(idx, "member.unmute") {
                    return;
                }
                self.mutes.remove(&user);
                self.moderation_log(idx, "unmute");
                let by = self.members[idx].user_id.clone();
                self.persist_mute(user.clone(), by.clone(), None);
                self.broadcast(|seq| ServerMsg::MemberUnmuted { user, by, seq });
            }
            ClientMsg::Kick { user, reason } => {
                if !self.can_moderate(idx, "member.kick") {
                    return;
                }
                if !self.members.iter().any(|m| m.user_id == user) {
                    return self.send_error(
                        idx,
                        "not_found",
                        "no such member in the room",
                        Some("member.kick"),
                    );
                }
                self.moderation_log(idx, "kick");
                let by = self.members[idx].user_id.clone();
                let u = user.clone();
                self.broadcast(|seq| ServerMsg::MemberKicked {
                    user: u,
                    by,
                    reason,
                    seq,
                });
                self.remove_user(&user, (4001, "kicked"));
            }
            ClientMsg::Ban { user, reason } => {
                if !self.can_moderate(idx, "member.ban") {
                    return;
                }
                self.bans.insert(user.clone());
                self.moderation_log(idx, "ban");
                let by = self.members[idx].user_id.clone();
                let store = self.inner.store.clone();
                let (room, u, b, rs) = (
                    self.id.to_string(),
                    user.clone(),
                    by.clone(),
                    reason.clone(),
                );
                tokio::spawn(async move {
                    if let Err(e) = store.set_ban(room, u, b, rs, true).await {
                        tracing::error!(error = %e, "persisting a ban");
                    }
                });
                let u = user.clone();
                self.broadcast(|seq| ServerMsg::MemberBanned {
                    user: u,
                    by,
                    reason,
                    seq,
                });
                self.remove_user(&user, (4003, "banned"));
            }
            ClientMsg::Unban { user } => {
                if !self.can_moderate(idx, "member.unban") {
                    return;
                }
                self.bans.remove(&user);
                self.moderation_log(idx, "unban");
                let by = self.members[idx].user_id.clone();
                let store = self.inner.store.clone();
                let (room, u, b) = (self.id.to_string(), user.clone(), by.clone());
                tokio::spawn(async move {
                    if let Err(e) = store.set_ban(room, u, b, None, false).await {
                        tracing::error!(error = %e, "persisting an unban");
                    }
                });
                self.broadcast(|seq| ServerMsg::MemberUnbanned { user, by, seq });
            }
            ClientMsg::TimePing { id, t0 } => {
                // Normally answered by the connection itself; answer here too for completeness.
                self.write_unsent();
                if let Some(c) = &self.members[idx].conn {
                    let _ = c.tx.try_send(Outbound::Pong {
                        id,
                        t0,
                        t1: recv_at,
                    });
                }
            }
            ClientMsg::TimePong { t0, t1, t2, .. } => {
                if ![t0, t1, t2].iter().all(|t| t.is_finite()) || t0 > recv_at {
                    return self.send_error(
                        idx,
                        "bad_request",
                        "time.pong: bad timestamps",
                        Some("time.pong"),
                    );
                }
                // sample() gives client - server; the room keeps server - client.
                let (client_minus_server, rtt) = sample(t0, t1, t2, recv_at);
                self.inner.metrics.clock_rtt.observe(rtt / 1000.0);
                self.members[idx].clock.add(-client_minus_server, rtt);
            }
            ClientMsg::TimeReport { offset, rtt } => {
                if offset.is_finite() && rtt.is_finite() {
                    self.members[idx].reported_offset = Some(offset);
                }
            }
            ClientMsg::Snapshot => {
                let v = self.welcome(idx);
                self.send_to(idx, &v);
            }
            ClientMsg::MembersList { after, limit } => {
                let v = self.members_page(after.as_deref(), limit);
                self.send_to(idx, &v);
            }
            ClientMsg::Visibility { hidden } => {
                self.members[idx].hidden = hidden;
                if !hidden {
                    self.members[idx].last_report = now;
                }
                self.refresh_status(idx);
            }
        }
    }

    /// Runs store work off the room task, one job at a time in order (so chat is
    /// fanned out in the order it was sent); its result comes back as an event.
    fn spawn_job<F>(&self, fut: F)
    where
        F: std::future::Future<Output = Stored> + Send + 'static,
    {
        let _ = self.jobs.send(Box::pin(fut));
    }

    /// A database result, applied on the room task in the order the work was asked for.
    fn on_stored(&mut self, stored: Stored) {
        match stored {
            Stored::ChatInserted { conn, key, r, res } => {
                self.pending_chat.remove(&key);
                let idx = conn.and_then(|c| self.idx_by_conn(c));
                match res {
                    Ok(Inserted::New(rec)) => {
                        self.inner.metrics.chat_messages.inc();
                        self.recent_chat.push_back(rec.clone());
                        while self.recent_chat.len() > self.cfg.welcome_chat {
                            self.recent_chat.pop_front();
                        }
                        self.broadcast(|seq| {
                            let mut m = ChatMessage::from(&rec);
                            m.seq = Some(seq);
                            ServerMsg::ChatMessage(m)
                        });
                    }
                    Ok(Inserted::Duplicate(rec)) => {
                        if let Some(idx) = idx {
                            let mut m = ChatMessage::from(&rec);
                            m.duplicate = Some(true);
                            self.send_to(idx, &ServerMsg::ChatMessage(m));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "storing a chat message");
                        if let Some(idx) = idx {
                            self.send_error(
                                idx,
                                "internal",
                                "the message could not be stored",
                                Some(&r),
                            );
                        }
                    }
                }
            }
            Stored::ChatPage { conn, limit, res } => {
                let Some(idx) = conn.and_then(|c| self.idx_by_conn(c)) else {
                    return;
                };
                match res {
                    Ok(mut page) => {
                        let has_more = page.len() > limit as usize;
                        page.truncate(limit as usize);
                        page.reverse();
                        let v = ServerMsg::ChatPage {
                            messages: page.iter().map(ChatMessage::from).collect(),
                            has_more,
                        };
                        self.send_to(idx, &v);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "chat history");
                        self.send_error(
                            idx,
                            "internal",
                            "could not read chat history",
                            Some("chat.history"),
                        );
                    }
                }
            }
            Stored::ChatDeleted {
                conn,
                id,
                by,
                privileged,
                outcome,
            } => {
                let idx = conn.and_then(|c| self.idx_by_conn(c));
                match outcome {
                    Ok(true) => {
                        self.recent_chat.retain(|m| m.id != id);
                        if privileged {
                            self.moderation_log(0, "delete");
                        }
                        self.broadcast(|seq| ServerMsg::ChatDeleted {
                            id: id.to_string(),
                            by,
                            seq,
                        });
                    }
                    Ok(false) => {
                        if let Some(i) = idx {
                            self.send_error(
                                i,
                                "not_found",
                                "no such chat message",
                                Some("chat.delete"),
                            );
                        }
                    }
                    Err(code) => {
                        if let Some(i) = idx {
                            let msg = if code == "forbidden" {
                                "only the author, the host and moderators delete a message"
                            } else {
                                "the message could not be deleted"
                            };
                            self.send_error(i, code, msg, Some("chat.delete"));
                        }
                    }
                }
            }
        }
    }

    fn can_moderate(&mut self, idx: usize, what: &str) -> bool {
        if self.is_host(idx) || self.members[idx].moderator {
            true
        } else {
            self.send_error(
                idx,
                "forbidden",
                "only the host and moderators moderate",
                Some(what),
            );
            false
        }
    }

    fn moderation_log(&self, _idx: usize, action: &str) {
        self.inner
            .metrics
            .moderation_actions
            .with_label_values(&[action])
            .inc();
    }

    fn persist_mute(&self, user: String, by: String, until: Option<i64>) {
        let store = self.inner.store.clone();
        let room = self.id.to_string();
        tokio::spawn(async move {
            if let Err(e) = store.set_mute(room, user, by, until).await {
                tracing::error!(error = %e, "persisting a mute");
            }
        });
    }

    /// The server withdrew `user`'s access to the room (e.g. their enrollment in the
    /// stream the room belongs to was refunded): each of their connections gets an
    /// `error {code, message}` and is closed with 4004; members in their grace
    /// period are removed too, so they cannot resume.
    fn evict(&mut self, user: &str, code: &'static str, message: &str) {
        while let Some(i) = self.members.iter().position(|m| m.user_id == user) {
            self.send_error(i, code, message, None);
            self.remove_member(i, "left", Some((4004, "access revoked")));
        }
    }

    fn remove_user(&mut self, user: &str, close: (u16, &'static str)) {
        while let Some(i) = self.members.iter().position(|m| m.user_id == user) {
            self.remove_member(i, "left", Some(close));
        }
    }

    fn is_muted(&self, idx: usize) -> bool {
        self.mutes
            .get(&self.members[idx].user_id)
            .is_some_and(|until| (*until as f64) > now_ms())
    }

    fn refresh_status(&mut self, idx: usize) {
        let m = &self.members[idx];
        let idle = m.last_report.elapsed() >= Duration::from_millis(self.cfg.idle_after_ms);
        let status = if m.hidden {
            Status::Away
        } else if idle {
            Status::Idle
        } else if m.buffering {
            Status::Buffering
        } else {
            Status::Active
        };
        if status != m.status {
            self.members[idx].status = status;
            let j = self.member_info(&self.members[idx]);
            self.presence(Presence::Update, j);
            // The barrier waits for connected, non-idle members only.
            if matches!(status, Status::Idle | Status::Away) {
                let session = self.members[idx].session.clone();
                self.barrier_forget(&session);
            }
        }
    }

    /// A member's `at` (its local clock) in server time, from the server's own
    /// measurement of its clock (its report as a fallback), kept within reason.
    fn to_server_time(&self, idx: usize, at: Option<f64>) -> f64 {
        let now = now_ms();
        let m = &self.members[idx];
        let offset = m.clock.estimate().map(|(o, _)| o).or(m.reported_offset);
        match (at, offset) {
            (Some(a), Some(o)) if a.is_finite() => (a + o).clamp(now - 10_000.0, now),
            _ => now,
        }
    }

    /// `playback.state`: its `seq` is the broadcast's, which the state keeps.
    fn broadcast_state(&mut self, by: Option<&str>, reason: &'static str) {
        self.playback.seq = self.seq + 1;
        let v = self.playback_state(by.map(str::to_string), reason);
        self.broadcast(|_| ServerMsg::PlaybackState(v));
    }

    #[allow(clippy::too_many_arguments)]
    fn on_command(
        &mut self,
        idx: usize,
        action: Action,
        position: Option<f64>,
        rate: Option<f64>,
        media: Option<Value>,
        at: Option<f64>,
        client_msg_id: Option<String>,
    ) {
        let r = client_msg_id
            .as_deref()
            .unwrap_or("playback.command")
            .to_string();
        if self.control == Control::Host && !self.is_host(idx) {
            return self.send_error(
                idx,
                "not_host",
                "only the host controls playback in this room",
                Some(&r),
            );
        }
        if position.is_some_and(|p| !p.is_finite() || p < 0.0) {
            return self.send_error(
                idx,
                "bad_request",
                "position: a number of seconds ≥ 0",
                Some(&r),
            );
        }
        if rate.is_some_and(|x| !x.is_finite() || !(MIN_RATE..=MAX_RATE).contains(&x)) {
            return self.send_error(idx, "bad_request", "rate: between 0.25 and 4", Some(&r));
        }
        let t = self.to_server_time(idx, at);
        let by = self.members[idx].user_id.clone();
        let current = self.playback.position_at(t);
        match action {
            Action::Play => {
                self.barrier = None;
                self.playback.paused = false;
                self.playback.position = position.unwrap_or(current);
                self.playback.at = t;
                if let Some(x) = rate {
                    self.playback.rate = x;
                }
                self.broadcast_state(Some(&by), "command");
            }
            Action::Pause => {
                let pos = position.unwrap_or(if self.barrier.is_some() {
                    self.playback.position
                } else {
                    current
                });
                self.barrier = None;
                self.playback.paused = true;
                self.playback.position = pos;
                self.playback.at = t;
                self.broadcast_state(Some(&by), "command");
            }
            Action::Seek => {
                let Some(pos) = position else {
                    return self.send_error(idx, "bad_request", "seek needs position", Some(&r));
                };
                if self.playback.paused && self.barrier.is_none() {
                    self.playback.position = pos;
                    self.playback.at = t;
                    self.broadcast_state(Some(&by), "command");
                } else {
                    self.start_barrier(pos, by);
                }
            }
            Action::Rate => {
                let Some(x) = rate else {
                    return self.send_error(idx, "bad_request", "rate needs rate", Some(&r));
                };
                if self.barrier.is_none() {
                    self.playback.position = position.unwrap_or(current);
                    self.playback.at = t;
                }
                self.playback.rate = x;
                self.broadcast_state(Some(&by), "command");
            }
            Action::Load => {
                let ok = media.as_ref().is_some_and(|m| {
                    m.is_object()
                        && (m.get("url").is_some_and(Value::is_string)
                            || m.get("id").is_some_and(Value::is_string))
                });
                if !ok {
                    return self.send_error(
                        idx,
                        "bad_request",
                        "load needs media: {id or url, ...}",
                        Some(&r),
                    );
                }
                self.playback.media = media;
                self.playback.rate = rate.unwrap_or(1.0);
                self.start_barrier(position.unwrap_or(0.0), by);
            }
        }
    }

    /// Pauses at `position` and waits for every connected, non-idle member's `ready`.
    fn start_barrier(&mut self, position: f64, by: String) {
        let pending: HashSet<String> = self
            .members
            .iter()
            .filter(|m| m.conn.is_some() && matches!(m.status, Status::Active | Status::Buffering))
            .map(|m| m.session.clone())
            .collect();
        self.barrier = Some(Barrier {
            position,
            deadline: Instant::now() + Duration::from_millis(self.cfg.ready_timeout_ms),
            pending,
            by: by.clone(),
        });
        self.playback.paused = true;
        self.playback.position = position;
        self.playback.at = now_ms();
        self.broadcast_state(Some(&by), "command");
        if self.barrier.as_ref().is_some_and(|b| b.pending.is_empty()) {
            self.fire_barrier();
        }
    }

    /// Stops waiting for `session` (gone, idle or away); starts if nobody is left.
    fn barrier_forget(&mut self, session: &str) {
        if let Some(b) = &mut self.barrier {
            b.pending.remove(session);
            if b.pending.is_empty() {
                self.fire_barrier();
            }
        }
    }

    /// Everyone is ready (or the wait timed out): start a little in the future.
    fn fire_barrier(&mut self) {
        let Some(b) = self.barrier.take() else { return };
        self.playback.paused = false;
        self.playback.position = b.position;
        self.playback.at = now_ms() + self.cfg.start_lead_ms as f64;
        self.broadcast_state(Some(&b.by), "ready");
    }

    fn on_report(
        &mut self,
        idx: usize,
        position: f64,
        state: ReportState,
        at: f64,
        seq: Option<u64>,
    ) {
        if !position.is_finite() || !at.is_finite() {
            return self.send_error(
                idx,
                "bad_request",
                "playback.report: bad numbers",
                Some("playback.report"),
            );
        }
        let now = Instant::now();
        self.members[idx].last_report = now;
        self.members[idx].buffering = state == ReportState::Buffering;
        self.refresh_status(idx);
        if state == ReportState::Ready {
            let session = self.members[idx].session.clone();
            if let Some(b) = &mut self.barrier {
                b.pending.remove(&session);
                if b.pending.is_empty() {
                    self.fire_barrier();
                }
            }
            return;
        }
        if self.barrier.is_some() || seq.is_some_and(|s| s < self.playback.seq) {
            return;
        }
        let t = self.to_server_time(idx, Some(at));
        let settle = 1000.0;
        if t < self.playback.at + settle {
            return;
        }
        let expected = self.playback.position_at(t);
        let drift_ms = (position - expected) * 1000.0;
        let comparable = match state {
            ReportState::Playing => !self.playback.paused,
            ReportState::Paused => self.playback.paused,
            _ => false,
        };
        if !comparable {
            return;
        }
        let threshold = if self.playback.paused {
            self.cfg.drift_seek_threshold_ms
        } else {
            self.cfg.drift_threshold_ms
        };
        if drift_ms.abs() <= threshold {
            return;
        }
        if self.is_host(idx) {
            if self
                .last_correction
                .is_some_and(|l| now.duration_since(l) < Duration::from_secs(2))
            {
                return;
            }
            self.last_correction = Some(now);
            self.inner.metrics.drift_corrections.inc();
            self.playback.position = position;
            self.playback.at = t;
            let by = self.members[idx].user_id.clone();
            self.broadcast_state(Some(&by), "correction");
        } else {
            let m = &mut self.members[idx];
            if m.last_hint
                .is_some_and(|l| now.duration_since(l) < Duration::from_secs(3))
            {
                return;
            }
            m.last_hint = Some(now);
            self.inner.metrics.sync_hints.inc();
            let action = if drift_ms.abs() > self.cfg.drift_seek_threshold_ms {
                "seek"
            } else {
                "nudge"
            };
            let v = ServerMsg::SyncHint {
                drift_ms,
                action,
                seq: self.playback.seq,
            };
            self.send_to(idx, &v);
        }
    }

    fn on_transfer(&mut self, idx: usize, to: &str) {
        let me = self.members[idx].user_id.clone();
        let allowed = self.is_host(idx) || (self.members[idx].moderator && to == me);
        if !allowed {
            return self.send_error(
                idx,
                "not_host",
                "only the host hands the role on (moderators may take it)",
                Some("host.transfer"),
            );
        }
        let target = if to == me {
            Some(idx)
        } else {
            self.members
                .iter()
                .position(|m| m.user_id == to && m.conn.is_some())
        };
        let Some(t) = target else {
            return self.send_error(
                idx,
                "not_found",
                "no connected member with that id",
                Some("host.transfer"),
            );
        };
        self.host = Some(self.members[t].session.clone());
        let host = Some(self.members[t].user_id.clone());
        self.broadcast(|seq| ServerMsg::HostChanged {
            host,
            reason: "transfer",
            by: Some(me),
            seq,
        });
    }

    fn on_chat(
        &mut self,
        idx: usize,
        text: String,
        client_msg_id: String,
        media_time: Option<f64>,
    ) {
        let r = client_msg_id.chars().take(128).collect::<String>();
        let m = &self.members[idx];
        if !m.can_chat {
            return self.send_error(idx, "forbidden", "your token does not allow chat", Some(&r));
        }
        if client_msg_id.is_empty() || client_msg_id.len() > 128 {
            return self.send_error(
                idx,
                "bad_request",
                "client_msg_id: 1–128 characters",
                Some(&r),
            );
        }
        let text = text.trim().to_string();
        let chars = text.chars().count();
        if chars == 0 {
            return self.send_error(idx, "bad_request", "text is empty", Some(&r));
        }
        if chars > self.cfg.chat_max_chars {
            return self.send_error(
                idx,
                "too_large",
                &format!("text is longer than {} characters", self.cfg.chat_max_chars),
                Some(&r),
            );
        }
        if self.bans.contains(&m.user_id) {
            return self.send_error(idx, "banned", "you are banned from this room", Some(&r));
        }
        if let Some(until) = self.mutes.get(&m.user_id).copied()
            && (until as f64) > now_ms()
        {
            let retry = Duration::from_millis((until as f64 - now_ms()).max(1.0) as u64);
            return self.send_error_retry(idx, "muted", "you are muted", Some(&r), Some(retry));
        }
        if let Some(w) = blocked_word(&text, &self.cfg.blocked_words) {
            let msg = format!("the message contains a blocked word ({w})");
            return self.send_error(idx, "forbidden", &msg, Some(&r));
        }
        let key = (m.user_id.clone(), client_msg_id.clone());
        if self.pending_chat.contains(&key) {
            return; // the same message is being stored; it will be fanned out once
        }
        let privileged = self.is_host(idx) || self.members[idx].moderator;
        let now = Instant::now();
        let slow_mode = Duration::from_millis(self.slow_mode_ms);
        let (count, window) = (
            self.cfg.chat_rate_count,
            Duration::from_millis(self.cfg.chat_rate_window_ms),
        );
        let user_id = self.members[idx].user_id.clone();
        let entry = self.chat_limits.entry(user_id.clone()).or_default();
        if !privileged
            && !slow_mode.is_zero()
            && let Some(last) = entry.1
            && now.duration_since(last) < slow_mode
        {
            let retry = slow_mode - now.duration_since(last);
            return self.send_error_retry(
                idx,
                "rate_limited",
                "slow mode is on",
                Some(&r),
                Some(retry),
            );
        }
        if let Err(retry) = entry.0.check(now, count, window) {
            return self.send_error_retry(
                idx,
                "rate_limited",
                "too many chat messages",
                Some(&r),
                Some(retry),
            );
        }
        entry.1 = Some(now);
        self.pending_chat.insert(key.clone());
        let m = &self.members[idx];
        let new = NewChat {
            room: self.id.to_string(),
            user_id: m.user_id.clone(),
            user_name: m.name.clone(),
            user_avatar: m.avatar.clone(),
            text,
            client_msg_id,
            media_time: media_time.filter(|t| t.is_finite()),
            created_at: now_ms() as i64,
        };
        let conn = m.conn.as_ref().map(|c| c.id);
        let store = self.inner.store.clone();
        self.spawn_job(async move {
            let res = store.insert(new).await;
            Stored::ChatInserted { conn, key, r, res }
        });
    }

    fn on_delete(&mut self, idx: usize, id: Option<i64>) {
        let Some(id) = id else {
            return self.send_error(
                idx,
                "bad_request",
                "id: a chat message id",
                Some("chat.delete"),
            );
        };
        let privileged = self.is_host(idx) || self.members[idx].moderator;
        let me = self.members[idx].user_id.clone();
        let conn = self.members[idx].conn.as_ref().map(|c| c.id);
        let store = self.inner.store.clone();
        let room = self.id.to_string();
        self.spawn_job(async move {
            let outcome: Result<bool, &'static str> = match store.get(room.clone(), id).await {
                Ok(Some(rec)) if privileged || rec.user_id == me => {
                    store.delete(room, id, me.clone()).await.map_err(|e| {
                        tracing::error!(error = %e, "deleting a chat message");
                        "internal"
                    })
                }
                Ok(Some(_)) => Err("forbidden"),
                Ok(None) => Ok(false),
                Err(e) => {
                    tracing::error!(error = %e, "reading a chat message");
                    Err("internal")
                }
            };
            Stored::ChatDeleted {
                conn,
                id,
                by: me,
                privileged,
                outcome,
            }
        });
    }

    // ---- timers -------------------------------------------------------------------

    fn on_tick(&mut self) {
        // Lingering reactions keep waiting: nothing below is ordered against them
        // except what writes them out itself (a removal, a broadcast, a reply).
        if self.linger_until.is_none() {
            self.write_unsent();
        }
        let now = Instant::now();
        let grace = Duration::from_millis(self.cfg.grace_period_ms);
        while let Some(i) = self.members.iter().position(|m| {
            m.disconnected_at
                .is_some_and(|d| now.duration_since(d) >= grace)
        }) {
            self.remove_member(i, "timeout", None);
        }
        if self.barrier.as_ref().is_some_and(|b| now >= b.deadline) {
            self.fire_barrier();
        }
        for i in 0..self.members.len() {
            if self.members[i].conn.is_none() {
                continue;
            }
            if self.members[i].status == Status::Active
                || self.members[i].status == Status::Buffering
            {
                self.refresh_status(i);
            }
            let m = &mut self.members[i];
            if now >= m.next_ping {
                let id = self.next_ping_id;
                self.next_ping_id += 1;
                m.pings_sent += 1;
                m.next_ping = now
                    + Duration::from_millis(if m.pings_sent < self.cfg.ping_burst {
                        self.cfg.burst_interval_ms
                    } else {
                        self.cfg.ping_interval_ms
                    });
                if let Some(c) = &m.conn
                    && let Err(SendError::Full) = c.tx.try_send(Outbound::Ping { id })
                {
                    self.slow.push(c.id);
                }
            }
        }
        self.flush_presence(now);
        let now_wall = now_ms() as i64;
        self.mutes.retain(|_, until| *until > now_wall);
        if self.chat_limits.len() > 4 * self.members.len() + 16 {
            let users: HashSet<&str> = self.members.iter().map(|m| m.user_id.as_str()).collect();
            self.chat_limits.retain(|u, _| users.contains(u.as_str()));
        }
    }
}
