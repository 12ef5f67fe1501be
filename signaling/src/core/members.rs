//! Members: joining, leaving, the grace period after a dropped connection, presence
//! (batched in large rooms), member lists and `welcome`, the host role and its
//! hand-over, and the room timer.

use std::collections::HashSet;

use super::{Close, Effect, Member, Presence, Room, Status};
use crate::identity::Identity;
use crate::server_msg::{ChatMessage, MemberInfo, RoomInfo, ServerMsg, Welcome};
use crate::wire::{Resume, UserInfo};

/// Why a connection may not join: `error {code, message}`, then close `close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub code: &'static str,
    pub message: String,
    pub close: u16,
}

/// Largest `members.list` page.
const MEMBERS_PAGE_MAX: usize = 500;

fn random_hex(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        s.push_str(&format!("{:02x}", rand::random::<u8>()));
    }
    s
}

impl Room {
    pub(super) fn on_join(
        &mut self,
        now: f64,
        conn: u64,
        ident: Identity,
        resume: Option<Resume>,
        user: UserInfo,
    ) {
        if self.bans.contains(&ident.user_id) {
            let refused = Refused {
                code: "banned",
                message: "you are banned from this room".into(),
                close: 4003,
            };
            self.outbox.push_back(Effect::Refused { conn, refused });
            return;
        }
        if let Some(r) = resume {
            if self.resume(now, conn, &ident, &r) {
                return;
            }
            self.metrics.resumes.with_label_values(&["fresh"]).inc();
        }
        if self.members.len() >= self.cfg.max_members_per_room {
            let refused = Refused {
                code: "room_full",
                message: format!(
                    "the room is full (limit: {} members per room)",
                    self.cfg.max_members_per_room
                ),
                close: 1013,
            };
            self.outbox.push_back(Effect::Refused { conn, refused });
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
        let member = Member::new(
            now,
            &self.cfg,
            random_hex(12),
            random_hex(16),
            ident.user_id,
            name,
            avatar,
            (ident.moderator, ident.can_chat),
        );
        if self.host.is_none() {
            self.host = Some(member.session.clone());
            self.state_gen += 1;
        }
        self.members.push(member);
        self.members_gen += 1;
        let idx = self.members.len() - 1;
        let mut j = self.member_info(&self.members[idx]);
        j.connected = true;
        self.presence(Presence::Join, j);
        // The others get the join; the joiner is attached after it and is listed in
        // its `welcome`, which must be the first thing it receives.
        self.by_conn.insert(conn, idx);
        self.members[idx].conn = Some(conn);
        self.outbox.push_back(Effect::Attach { conn });
        let v = self.welcome(now, idx);
        self.send_to(idx, &v);
        self.outbox.push_back(Effect::Joined { conn });
    }

    pub(super) fn welcome(&self, now: f64, idx: usize) -> ServerMsg {
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
            server_time: now,
        }))
    }

    /// `members.list`: one page of the member list, in join order, after `after`.
    pub(super) fn members_page(&self, after: Option<&str>, limit: Option<u64>) -> ServerMsg {
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

    /// One presence change of `member`: broadcast at once in a normal room; gathered
    /// into the next `presence.batch` in a large one, where one message per change
    /// to every member makes filling the room quadratic.
    pub(super) fn presence(&mut self, kind: Presence, member: MemberInfo) {
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
    fn flush_presence(&mut self, now: f64) {
        if self.pending_presence.is_empty() || now < self.next_presence_flush {
            return;
        }
        self.next_presence_flush = now + self.cfg.presence_batch_ms as f64;
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

    /// A connection went away without saying goodbye: keep the member for the grace period.
    pub(super) fn disconnect(&mut self, now: f64, idx: usize, close: Close) {
        let Some(conn) = self.members[idx].conn.take() else {
            return;
        };
        self.by_conn.remove(&conn);
        self.outbox.push_back(Effect::Detach { conn, close });
        let m = &mut self.members[idx];
        m.disconnected_at = Some(now);
        let session = m.session.clone();
        let j = self.member_info(&self.members[idx]);
        self.presence(Presence::Update, j);
        self.barrier_forget(now, &session);
    }

    /// Removes a member for good; passes the host role on when it was the host.
    pub(super) fn remove_member(
        &mut self,
        now: f64,
        idx: usize,
        host_reason: &'static str,
        close: Close,
    ) {
        let m = self.members.remove(idx);
        self.members_gen += 1;
        self.reindex();
        let was_host = self.host.as_deref() == Some(m.session.as_str());
        let mut j = self.member_info(&m);
        j.connected = false;
        if was_host {
            j.role = "host";
        }
        if let Some(conn) = m.conn {
            self.outbox.push_back(Effect::Detach { conn, close });
        }
        self.presence(Presence::Leave, j);
        if was_host {
            self.state_gen += 1;
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
                if !self.playback.paused && self.barrier.is_none() {
                    self.playback.position = self.playback.position_at(now);
                    self.playback.at = now;
                }
                self.broadcast_state(None, "host_left");
            }
        }
        self.barrier_forget(now, &m.session);
    }

    /// Removes every member of `user` (kick, ban), closing with `close`.
    pub(super) fn remove_user(&mut self, now: f64, user: &str, close: Close) {
        while let Some(i) = self.members.iter().position(|m| m.user_id == user) {
            self.remove_member(now, i, "left", close);
        }
    }

    pub(super) fn refresh_status(&mut self, now: f64, idx: usize) {
        let m = &self.members[idx];
        let idle = now - m.last_report >= self.cfg.idle_after_ms as f64;
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
                self.barrier_forget(now, &session);
            }
        }
    }

    pub(super) fn on_transfer(&mut self, idx: usize, to: &str) {
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
        self.state_gen += 1;
        let host = Some(self.members[t].user_id.clone());
        self.broadcast(|seq| ServerMsg::HostChanged {
            host,
            reason: "transfer",
            by: Some(me),
            seq,
        });
    }

    /// The room timer: grace periods, the barrier's timeout, idleness, clock pings,
    /// coalesced `call.state` changes, presence batches, expired mutes.
    pub(super) fn on_tick(&mut self, now: f64) {
        let grace = self.cfg.grace_period_ms as f64;
        while let Some(i) = self
            .members
            .iter()
            .position(|m| m.disconnected_at.is_some_and(|d| now - d >= grace))
        {
            self.remove_member(now, i, "timeout", Close::Release);
        }
        if self.barrier.as_ref().is_some_and(|b| now >= b.deadline) {
            self.fire_barrier(now);
        }
        for i in 0..self.members.len() {
            if self.members[i].conn.is_none() {
                continue;
            }
            if matches!(self.members[i].status, Status::Active | Status::Buffering) {
                self.refresh_status(now, i);
            }
            let m = &mut self.members[i];
            if now >= m.next_ping {
                let id = self.next_ping_id;
                self.next_ping_id += 1;
                m.pings_sent += 1;
                let wait = if m.pings_sent < self.cfg.ping_burst {
                    self.cfg.burst_interval_ms
                } else {
                    self.cfg.ping_interval_ms
                };
                m.next_ping = now + wait as f64;
                if let Some(conn) = m.conn {
                    self.outbox.push_back(Effect::Ping { conn, id });
                }
            }
        }
        self.flush_call_states(now);
        self.flush_presence(now);
        let now_whole = now as i64;
        self.mutes.retain(|_, until| *until > now_whole);
        if self.chat_limits.len() > 4 * self.members.len() + 16 {
            let users: HashSet<&str> = self.members.iter().map(|m| m.user_id.as_str()).collect();
            self.chat_limits.retain(|u, _| users.contains(u.as_str()));
        }
    }
}
