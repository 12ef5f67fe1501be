//! Playback: commands (play, pause, seek, rate, load), the ready barrier that
//! schedules a synchronised start, members' reports and what their drift causes (a
//! correction from the host, a `sync.hint` to a viewer), and the measurement of
//! each member's clock.

use std::collections::HashSet;

use serde_json::Value;

use super::{Room, Status};
use crate::clock::sample;
use crate::playback::{Barrier, MAX_RATE, MIN_RATE};
use crate::server_msg::ServerMsg;
use crate::wire::{Action, Control, ReportState};

/// A host report corrects the room at most once per this long (ms).
const CORRECTION_EVERY_MS: f64 = 2_000.0;
/// A viewer gets a `sync.hint` at most once per this long (ms).
const HINT_EVERY_MS: f64 = 3_000.0;
/// Reports this soon after the state changed are not compared (players settle).
const SETTLE_MS: f64 = 1_000.0;
/// A member's `at` in server time is kept within this much of now (ms).
const AT_WINDOW_MS: f64 = 10_000.0;

/// A `playback.command`.
pub(super) struct Command {
    pub action: Action,
    pub position: Option<f64>,
    pub rate: Option<f64>,
    pub media: Option<Value>,
    pub at: Option<f64>,
    pub client_msg_id: Option<String>,
}

impl Room {
    pub(super) fn on_command(&mut self, now: f64, idx: usize, c: Command) {
        let r = c
            .client_msg_id
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
        if c.position.is_some_and(|p| !p.is_finite() || p < 0.0) {
            return self.send_error(
                idx,
                "bad_request",
                "position: a number of seconds ≥ 0",
                Some(&r),
            );
        }
        if c.rate
            .is_some_and(|x| !x.is_finite() || !(MIN_RATE..=MAX_RATE).contains(&x))
        {
            return self.send_error(idx, "bad_request", "rate: between 0.25 and 4", Some(&r));
        }
        let t = self.to_server_time(now, idx, c.at);
        let by = self.members[idx].user_id.clone();
        let current = self.playback.position_at(t);
        match c.action {
            Action::Play => {
                self.barrier = None;
                self.playback.paused = false;
                self.playback.position = c.position.unwrap_or(current);
                self.playback.at = t;
                if let Some(x) = c.rate {
                    self.playback.rate = x;
                }
                self.broadcast_state(Some(&by), "command");
            }
            Action::Pause => {
                let pos = c.position.unwrap_or(if self.barrier.is_some() {
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
                let Some(pos) = c.position else {
                    return self.send_error(idx, "bad_request", "seek needs position", Some(&r));
                };
                if self.playback.paused && self.barrier.is_none() {
                    self.playback.position = pos;
                    self.playback.at = t;
                    self.broadcast_state(Some(&by), "command");
                } else {
                    self.start_barrier(now, pos, by);
                }
            }
            Action::Rate => {
                let Some(x) = c.rate else {
                    return self.send_error(idx, "bad_request", "rate needs rate", Some(&r));
                };
                if self.barrier.is_none() {
                    self.playback.position = c.position.unwrap_or(current);
                    self.playback.at = t;
                }
                self.playback.rate = x;
                self.broadcast_state(Some(&by), "command");
            }
            Action::Load => {
                let ok = c.media.as_ref().is_some_and(|m| {
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
                self.playback.media = c.media;
                self.playback.rate = c.rate.unwrap_or(1.0);
                self.start_barrier(now, c.position.unwrap_or(0.0), by);
            }
        }
    }

    /// Pauses at `position` and waits for every connected, non-idle member's `ready`.
    fn start_barrier(&mut self, now: f64, position: f64, by: String) {
        let pending: HashSet<String> = self
            .members
            .iter()
            .filter(|m| m.conn.is_some() && matches!(m.status, Status::Active | Status::Buffering))
            .map(|m| m.session.clone())
            .collect();
        self.barrier = Some(Barrier {
            position,
            deadline: now + self.cfg.ready_timeout_ms as f64,
            pending,
            by: by.clone(),
        });
        self.playback.paused = true;
        self.playback.position = position;
        self.playback.at = now;
        self.broadcast_state(Some(&by), "command");
        if self.barrier.as_ref().is_some_and(|b| b.pending.is_empty()) {
            self.fire_barrier(now);
        }
    }

    /// Stops waiting for `session` (gone, idle or away); starts if nobody is left.
    pub(super) fn barrier_forget(&mut self, now: f64, session: &str) {
        if let Some(b) = &mut self.barrier {
            b.pending.remove(session);
            if b.pending.is_empty() {
                self.fire_barrier(now);
            }
        }
    }

    /// Everyone is ready (or the wait timed out): start a little in the future.
    pub(super) fn fire_barrier(&mut self, now: f64) {
        let Some(b) = self.barrier.take() else { return };
        self.playback.paused = false;
        self.playback.position = b.position;
        self.playback.at = now + self.cfg.start_lead_ms as f64;
        self.broadcast_state(Some(&b.by), "ready");
    }

    pub(super) fn on_report(
        &mut self,
        now: f64,
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
        self.members[idx].last_report = now;
        self.members[idx].buffering = state == ReportState::Buffering;
        self.refresh_status(now, idx);
        if state == ReportState::Ready {
            let session = self.members[idx].session.clone();
            self.barrier_forget(now, &session);
            return;
        }
        if self.barrier.is_some() || seq.is_some_and(|s| s < self.playback.seq) {
            return;
        }
        let t = self.to_server_time(now, idx, Some(at));
        if t < self.playback.at + SETTLE_MS {
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
                .is_some_and(|l| now - l < CORRECTION_EVERY_MS)
            {
                return;
            }
            self.last_correction = Some(now);
            self.metrics.drift_corrections.inc();
            self.playback.position = position;
            self.playback.at = t;
            let by = self.members[idx].user_id.clone();
            self.broadcast_state(Some(&by), "correction");
        } else {
            let m = &mut self.members[idx];
            if m.last_hint.is_some_and(|l| now - l < HINT_EVERY_MS) {
                return;
            }
            m.last_hint = Some(now);
            self.metrics.sync_hints.inc();
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

    /// A `time.pong` answering the room's `time.ping`, received at server time `recv_at`.
    pub(super) fn on_pong(&mut self, idx: usize, t0: f64, t1: f64, t2: f64, recv_at: f64) {
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
        self.metrics.clock_rtt.observe(rtt / 1000.0);
        self.members[idx].clock.add(-client_minus_server, rtt);
    }

    /// A member's `at` (its local clock) in server time, from the server's own
    /// measurement of its clock (its report as a fallback), kept within reason.
    fn to_server_time(&self, now: f64, idx: usize, at: Option<f64>) -> f64 {
        let m = &self.members[idx];
        let offset = m.clock.estimate().map(|(o, _)| o).or(m.reported_offset);
        match (at, offset) {
            (Some(a), Some(o)) if a.is_finite() => (a + o).clamp(now - AT_WINDOW_MS, now),
            _ => now,
        }
    }
}
