//! Calls (docs/CALLS.md): presence and controls over a call's sync room. A member
//! says what its microphone, camera and voice do with `call.state`; the room keeps
//! it on the member (`member.media`, in presence and `welcome`) and tells the
//! others with `presence.update`. A host mutes someone with `call.mute`: the
//! target's connections get `call.muted`, the room marks it and tells the others.
//!
//! Speaking flips several times a second while someone talks, so one member's
//! `call.state`s reach the room at most once per `call_state_interval_ms`: a
//! change within the interval after the last one told waits for the room timer
//! and leaves with the latest state (a flip and back in between sends nothing).

use super::{Member, Presence, Room};
use crate::server_msg::ServerMsg;

impl Room {
    pub(super) fn on_call_state(
        &mut self,
        now: f64,
        idx: usize,
        muted: Option<bool>,
        camera_off: Option<bool>,
        speaking: Option<bool>,
    ) {
        let m = &mut self.members[idx];
        let mut media = m.media.unwrap_or_default();
        media.muted = muted.unwrap_or(media.muted);
        media.camera_off = camera_off.unwrap_or(media.camera_off);
        media.speaking = speaking.unwrap_or(media.speaking);
        m.media = Some(media);
        if due(m, now, self.cfg.call_state_interval_ms as f64) {
            self.tell_media(now, idx);
        }
    }

    /// `call.mute {user, kind}`: the call's hosts only. In a call the room's host
    /// role goes to whoever joined first (a student, maybe), so it does not
    /// suffice: the `moderate` grant, which a call token carries for the call's
    /// hosts alone, does. Nothing changes when it is refused.
    pub(super) fn on_call_mute(&mut self, now: f64, idx: usize, user: &str, kind: &str) {
        const R: Option<&str> = Some("call.mute");
        if !self.members[idx].moderator {
            return self.send_error(idx, "forbidden", "only the call's hosts mute others", R);
        }
        let kind: &'static str = match kind {
            "audio" => "audio",
            "video" => "video",
            _ => return self.send_error(idx, "bad_request", "kind: \"audio\" or \"video\"", R),
        };
        let targets: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].user_id == user && self.members[i].conn.is_some())
            .collect();
        if targets.is_empty() {
            return self.send_error(idx, "not_found", "no connected member with that id", R);
        }
        self.moderation_log("call_mute");
        let by = self.members[idx].user_id.clone();
        for t in targets {
            let m = &mut self.members[t];
            let mut media = m.media.unwrap_or_default();
            if kind == "audio" {
                media.muted = true;
                // A muted microphone is not speaking, whatever the page says next.
                media.speaking = false;
            } else {
                media.camera_off = true;
            }
            m.media = Some(media);
            let muted = ServerMsg::CallMuted {
                by: by.clone(),
                kind,
            };
            self.send_to(t, &muted);
            // A host's action is told at once, whatever the interval.
            self.tell_media(now, t);
        }
    }

    /// The timer: changes that waited for their interval leave now.
    pub(super) fn flush_call_states(&mut self, now: f64) {
        let interval = self.cfg.call_state_interval_ms as f64;
        for i in 0..self.members.len() {
            if due(&self.members[i], now, interval) {
                self.tell_media(now, i);
            }
        }
    }

    /// One `presence.update` with the member's media, unless the others know it.
    fn tell_media(&mut self, now: f64, idx: usize) {
        let m = &mut self.members[idx];
        if m.media == m.media_sent {
            return;
        }
        m.media_sent = m.media;
        m.media_sent_at = now;
        let info = self.member_info(&self.members[idx]);
        self.presence(Presence::Update, info);
    }
}

/// `m`'s media changed since the others were told, and may be told now.
fn due(m: &Member, now: f64, interval: f64) -> bool {
    m.media != m.media_sent && now - m.media_sent_at >= interval
}
