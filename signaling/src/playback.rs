//! The room's playback state machine: the current state in server time, its
//! extrapolation, and the ready barrier that schedules a synchronised start.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

/// "At server time `at` the media was at `position`, moving at `rate` unless paused."
#[derive(Debug, Clone, PartialEq)]
pub struct Playback {
    pub paused: bool,
    pub position: f64,
    pub rate: f64,
    pub at: f64,
    pub media: Option<Value>,
    /// `seq` of the broadcast that set this state.
    pub seq: u64,
}

impl Playback {
    pub fn new(now: f64) -> Self {
        Self {
            paused: true,
            position: 0.0,
            rate: 1.0,
            at: now,
            media: None,
            seq: 0,
        }
    }

    /// Expected media position at server time `t`.
    pub fn position_at(&self, t: f64) -> f64 {
        if self.paused {
            self.position
        } else {
            (self.position + (t - self.at) / 1000.0 * self.rate).max(0.0)
        }
    }

    /// The state object of the protocol (without `type`/`by`/`reason`).
    pub fn to_json(&self, host: Option<&str>) -> Map<String, Value> {
        let v = json!({
            "paused": self.paused,
            "position": self.position,
            "rate": self.rate,
            "at": self.at,
            "media": self.media,
            "host": host,
            "seq": self.seq,
        });
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }
}

/// Rates a command may set.
pub const MIN_RATE: f64 = 0.25;
pub const MAX_RATE: f64 = 4.0;

/// Waiting for members to report `ready` before a scheduled start.
#[derive(Debug, Clone)]
pub struct Barrier {
    pub position: f64,
    /// Server time (ms) at which the start goes ahead whoever is not ready.
    pub deadline: f64,
    /// Sessions still to report `ready`.
    pub pending: HashSet<String>,
    /// Who caused it (the `by` of the final state).
    pub by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extrapolates_with_rate_only_while_playing() {
        let mut p = Playback::new(1000.0);
        p.position = 10.0;
        assert_eq!(p.position_at(5000.0), 10.0);
        p.paused = false;
        p.rate = 1.5;
        assert!((p.position_at(3000.0) - 13.0).abs() < 1e-9);
        assert_eq!(p.position_at(-1e9), 0.0);
    }
}
