//! Resume: a member coming back on a new connection within its grace period (or
//! taking over from a connection still open) gets `resumed` and the broadcasts it
//! missed from the room's log, or a fresh `welcome` when the log no longer covers
//! them.

use super::{Close, Effect, Presence, Room};
use crate::chat::TokenBucket;
use crate::identity::Identity;
use crate::server_msg::ServerMsg;
use crate::wire::Resume;

impl Room {
    /// Resumes the member `r` names on connection `conn`; false when there is no
    /// such member of this user (the join then goes on as a new member).
    pub(super) fn resume(&mut self, now: f64, conn: u64, ident: &Identity, r: &Resume) -> bool {
        let found = self.idx_by_session(&r.session).filter(|&i| {
            let m = &self.members[i];
            m.user_id == ident.user_id
                && r.resume_token
                    .as_deref()
                    .is_none_or(|t| t == m.resume_token)
        });
        let Some(idx) = found else {
            return false;
        };
        let was_connected = self.members[idx].conn.is_some();
        if let Some(old) = self.members[idx].conn.replace(conn) {
            self.by_conn.remove(&old);
            let close = Close::AfterQueue(4000, "replaced by a newer connection");
            self.outbox.push_back(Effect::Detach { conn: old, close });
        }
        self.by_conn.insert(conn, idx);
        // What was broadcast so far is in the log: it reaches the resuming
        // connection replayed after `resumed`, not before it.
        self.outbox.push_back(Effect::Attach { conn });
        let m = &mut self.members[idx];
        m.disconnected_at = None;
        m.pings_sent = 0;
        m.next_ping = now;
        m.last_report = now;
        m.bucket = TokenBucket::new(self.cfg.messages_burst, now);
        if self.log_covers(r.last_seq) {
            self.metrics.resumes.with_label_values(&["replayed"]).inc();
            let missed: Vec<_> = self
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
                server_time: now,
            };
            self.send_to(idx, &v);
            self.outbox
                .extend(missed.into_iter().map(|text| Effect::Send { conn, text }));
        } else {
            self.metrics.resumes.with_label_values(&["fresh"]).inc();
            let v = self.welcome(now, idx);
            self.send_to(idx, &v);
        }
        self.outbox.push_back(Effect::Joined { conn });
        if !was_connected {
            let j = self.member_info(&self.members[idx]);
            self.presence(Presence::Update, j);
        }
        true
    }

    /// The log still holds every broadcast after `last_seq`.
    fn log_covers(&self, last_seq: u64) -> bool {
        last_seq <= self.seq
            && (last_seq == self.seq || self.log.front().is_some_and(|(s, _)| *s <= last_seq + 1))
    }
}
