//! Moderation: room settings (who controls playback, slow mode), mutes, kicks, bans,
//! and the server's evictions. Bans and mutes are persisted through the store.

use super::{Close, Effect, Room, StoreOp};
use crate::server_msg::ServerMsg;
use crate::wire::Control;

/// Longest mute: 30 days, in seconds.
const MAX_MUTE_S: f64 = 30.0 * 86_400.0;
/// Longest slow mode: one hour, in ms.
const MAX_SLOW_MODE_MS: u64 = 3_600_000;

impl Room {
    pub(super) fn on_settings(
        &mut self,
        idx: usize,
        control: Option<Control>,
        slow_mode_ms: Option<u64>,
    ) {
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
            self.state_gen += 1;
        }
        if let Some(ms) = slow_mode_ms {
            self.slow_mode_ms = ms.min(MAX_SLOW_MODE_MS);
            self.state_gen += 1;
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

    pub(super) fn on_mute(&mut self, now: f64, idx: usize, user: String, seconds: f64) {
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
        let until = (now + seconds.min(MAX_MUTE_S) * 1000.0) as i64;
        self.mutes.insert(user.clone(), until);
        self.moderation_log("mute");
        let by = self.members[idx].user_id.clone();
        self.persist_mute(user.clone(), by.clone(), Some(until));
        self.broadcast(|seq| ServerMsg::MemberMuted {
            user,
            until: until as f64,
            by,
            seq,
        });
    }

    pub(super) fn on_unmute(&mut self, idx: usize, user: String) {
        if !self.can_moderate(idx, "member.unmute") {
            return;
        }
        self.mutes.remove(&user);
        self.moderation_log("unmute");
        let by = self.members[idx].user_id.clone();
        self.persist_mute(user.clone(), by.clone(), None);
        self.broadcast(|seq| ServerMsg::MemberUnmuted { user, by, seq });
    }

    pub(super) fn on_kick(&mut self, now: f64, idx: usize, user: String, reason: Option<String>) {
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
        self.moderation_log("kick");
        let by = self.members[idx].user_id.clone();
        let u = user.clone();
        self.broadcast(|seq| ServerMsg::MemberKicked {
            user: u,
            by,
            reason,
            seq,
        });
        self.remove_user(now, &user, Close::AfterQueue(4001, "kicked"));
    }

    pub(super) fn on_ban(&mut self, now: f64, idx: usize, user: String, reason: Option<String>) {
        if !self.can_moderate(idx, "member.ban") {
            return;
        }
        self.bans.insert(user.clone());
        self.moderation_log("ban");
        let by = self.members[idx].user_id.clone();
        self.outbox.push_back(Effect::Store(StoreOp::SetBan {
            user: user.clone(),
            by: by.clone(),
            reason: reason.clone(),
            banned: true,
        }));
        let u = user.clone();
        self.broadcast(|seq| ServerMsg::MemberBanned {
            user: u,
            by,
            reason,
            seq,
        });
        self.remove_user(now, &user, Close::AfterQueue(4003, "banned"));
    }

    pub(super) fn on_unban(&mut self, idx: usize, user: String) {
        if !self.can_moderate(idx, "member.unban") {
            return;
        }
        self.bans.remove(&user);
        self.moderation_log("unban");
        let by = self.members[idx].user_id.clone();
        self.outbox.push_back(Effect::Store(StoreOp::SetBan {
            user: user.clone(),
            by: by.clone(),
            reason: None,
            banned: false,
        }));
        self.broadcast(|seq| ServerMsg::MemberUnbanned { user, by, seq });
    }

    /// The server withdrew `user`'s access to the room (e.g. their enrollment in the
    /// stream the room belongs to was refunded): each of their connections gets an
    /// `error {code, message}` and is closed with 4004; members in their grace
    /// period are removed too, so they cannot resume.
    pub(super) fn evict(&mut self, now: f64, user: &str, code: &'static str, message: &str) {
        while let Some(i) = self.members.iter().position(|m| m.user_id == user) {
            self.send_error(i, code, message, None);
            self.remove_member(now, i, "left", Close::AfterQueue(4004, "access revoked"));
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

    pub(super) fn moderation_log(&self, action: &str) {
        self.metrics
            .moderation_actions
            .with_label_values(&[action])
            .inc();
    }

    fn persist_mute(&mut self, user: String, by: String, until: Option<i64>) {
        self.outbox
            .push_back(Effect::Store(StoreOp::SetMute { user, by, until }));
    }
}
