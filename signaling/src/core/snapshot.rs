//! Several nodes: the room's state as another node needs it to take the room over
//! when its owner dies (host, settings, playback, members and their resume
//! credentials), and taking it back with the log of broadcasts, so that members
//! resume there with `resumed` and the broadcasts they missed.
//!
//! Connection state (clock filters, rate buckets, the barrier) is not kept: the
//! members come back on new connections, which measure their clocks anew.

use std::collections::VecDeque;

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Member, Room, Status};
use crate::server_msg::MediaState;
use crate::wire::Control;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    seq: u64,
    host: Option<String>,
    control: Control,
    slow_mode_ms: u64,
    playback: PlaybackSnap,
    members: Vec<MemberSnap>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PlaybackSnap {
    paused: bool,
    position: f64,
    rate: f64,
    at: f64,
    media: Option<Value>,
    seq: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct MemberSnap {
    session: String,
    resume_token: String,
    user_id: String,
    name: String,
    avatar: Option<String>,
    moderator: bool,
    can_chat: bool,
    media: Option<MediaState>,
}

impl Room {
    /// What changed since: (host, settings or playback; who is a member). The
    /// shell writes a snapshot at once for the first, at most once a second for
    /// the second alone.
    pub fn versions(&self) -> (u64, u64) {
        (self.state_gen, self.members_gen)
    }

    pub fn snapshot(&self) -> Snapshot {
        let p = &self.playback;
        Snapshot {
            seq: self.seq,
            host: self.host.clone(),
            control: self.control,
            slow_mode_ms: self.slow_mode_ms,
            playback: PlaybackSnap {
                paused: p.paused,
                position: p.position,
                rate: p.rate,
                at: p.at,
                media: p.media.clone(),
                seq: p.seq,
            },
            members: self
                .members
                .iter()
                .map(|m| MemberSnap {
                    session: m.session.clone(),
                    resume_token: m.resume_token.clone(),
                    user_id: m.user_id.clone(),
                    name: m.name.clone(),
                    avatar: m.avatar.clone(),
                    moderator: m.moderator,
                    can_chat: m.can_chat,
                    media: m.media,
                })
                .collect(),
        }
    }

    /// Takes over a room another node owned: its state as last snapshotted, the
    /// log as the broker kept it (oldest first). Every member is disconnected as of
    /// `now` and has its grace period to resume here.
    pub(super) fn restore(
        &mut self,
        now: f64,
        snapshot: Option<Snapshot>,
        log: Vec<(u64, Utf8Bytes)>,
    ) {
        let last_logged = log.last().map_or(0, |(s, _)| *s);
        if let Some(s) = snapshot {
            self.seq = s.seq;
            self.host = s.host;
            self.control = s.control;
            self.slow_mode_ms = s.slow_mode_ms;
            let p = s.playback;
            self.playback.paused = p.paused;
            self.playback.position = p.position;
            self.playback.rate = p.rate;
            self.playback.at = p.at;
            self.playback.media = p.media;
            self.playback.seq = p.seq;
            self.members = s
                .members
                .into_iter()
                .map(|m| {
                    let mut member = Member::new(
                        now,
                        &self.cfg,
                        m.session,
                        m.resume_token,
                        m.user_id,
                        m.name,
                        m.avatar,
                        (m.moderator, m.can_chat),
                    );
                    member.disconnected_at = Some(now);
                    member.status = Status::Away;
                    member.media = m.media;
                    member.media_sent = m.media;
                    member
                })
                .collect();
            self.reindex();
        }
        // The log may run past the snapshot (presence is snapshotted at most once a
        // second): numbering goes on after the last broadcast anyone may have seen.
        self.seq = self.seq.max(last_logged);
        let keep = self.cfg.log_size.max(1);
        let skip = log.len().saturating_sub(keep);
        self.log = log.into_iter().skip(skip).collect::<VecDeque<_>>();
        self.state_gen += 1;
        self.members_gen += 1;
    }
}
