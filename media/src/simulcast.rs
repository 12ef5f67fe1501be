//! Which simulcast encoding a viewer should get: a pure decision from the
//! encodings on offer, the viewer's pin and caps, and its bandwidth estimate,
//! with the timers that keep it from flapping. Sans-IO: the core calls
//! [`Selector::decide`] on its tick with `now`; tests drive it with a virtual clock.
//!
//! The rules (issue 15, as LiveKit and mediasoup do it):
//! - a pinned encoding is kept while it arrives; otherwise automatic;
//! - down at once when the estimate falls below the current encoding's rate;
//! - up one step when the estimate has held above the next encoding's rate for
//!   [`UP_HOLD`];
//! - the estimate cannot rise much above what is being sent (nothing measures
//!   a path beyond its load), so after [`PROBE_AFTER`] of a clean path the next
//!   encoding is tried (a probe); a probe that is followed by a step down
//!   within [`PROBE_GRACE`] doubles the wait before the next, up to
//!   [`PROBE_MAX`]; one that holds lets the next come [`PROBE_AFTER`] after it;
//! - an encoding that stopped arriving is left for the nearest active one.

use std::time::{Duration, Instant};

use crate::layers::{LayerRequest, SwitchReason};

/// How long the estimate must hold above the next encoding's rate before an up-switch.
pub const UP_HOLD: Duration = Duration::from_secs(3);
/// A clean path for this long tries the next encoding up.
pub const PROBE_AFTER: Duration = Duration::from_secs(3);
/// The longest wait between probes after failed ones: a viewer that fell two
/// steps climbs back within about two of these and a grace once its path is
/// clear (measured 7-12 s in tests/media/simulcast.rs).
pub const PROBE_MAX: Duration = Duration::from_secs(6);
/// A step down this soon after a probe means the probe failed (GCC sees a
/// path that cannot carry the new rate within a second).
pub const PROBE_GRACE: Duration = Duration::from_secs(2);
/// Headroom: the estimate must exceed an encoding's rate by this factor to hold it.
pub const HEADROOM: f64 = 1.0;
/// During a probe's grace, the estimate must fall under this share of the
/// probed encoding's rate (or loss appear) to call the probe failed.
pub const PROBE_FLOOR: f64 = 0.7;
/// Loss above this share of packets counts as a congested path (no probing).
pub const LOSS_CONGESTED: f64 = 0.05;

/// One encoding as the decision sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Offered {
    pub active: bool,
    pub bitrate: u64,
    pub width: u32,
    pub height: u32,
}

/// What the viewer asked for through the `layer` extension.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Preference {
    pub pinned: Option<u8>,
    pub max_width: Option<u32>,
    pub max_height: Option<u32>,
}

/// The viewer's path as the estimator sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Path {
    /// Bits per second (`None`: no feedback yet).
    pub estimate: Option<u64>,
    /// Share of packets lost in the last feedback.
    pub loss: f64,
}

#[derive(Debug, Clone)]
pub struct Selector {
    /// Since when the estimate has held above the next encoding's rate.
    up_since: Option<Instant>,
    /// Since when the path has been clean (no step down, low loss).
    clean_since: Instant,
    probe_wait: Duration,
    /// A probe in progress: when it started.
    probing: Option<Instant>,
}

/// A decision: switch to `encoding` for `reason`; `probe` asks the caller to
/// restart the estimate at the new encoding's rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub encoding: u8,
    pub reason: SwitchReason,
    pub probe: bool,
}

impl Selector {
    pub fn new(now: Instant) -> Self {
        Self {
            up_since: None,
            clean_since: now,
            probe_wait: PROBE_AFTER,
            probing: None,
        }
    }

    /// The encoding a new viewer starts on: the pin if active, else the best
    /// within the caps (a new viewer is assumed to have a good path; a bad one
    /// steps down at its first feedback).
    pub fn start(offered: &[Offered], pref: &Preference) -> Option<u8> {
        if let Some(p) = pref.pinned
            && offered.get(p as usize).is_some_and(|o| o.active)
        {
            return Some(p);
        }
        ranked(offered, pref).last().copied()
    }

    /// What to do now, given the encoding being sent or switched to (`current`).
    pub fn decide(
        &mut self,
        now: Instant,
        offered: &[Offered],
        current: u8,
        pref: &Preference,
        path: &Path,
    ) -> Option<Decision> {
        let cur = offered.get(current as usize).copied().unwrap_or_default();
        if let Some(p) = pref.pinned {
            self.up_since = None;
            if offered.get(p as usize).is_some_and(|o| o.active) {
                return (p != current).then_some(Decision {
                    encoding: p,
                    reason: SwitchReason::Request,
                    probe: false,
                });
            }
            // The pinned encoding is not arriving: the nearest active one meanwhile.
            if cur.active {
                return None;
            }
            return nearest_active(offered, current).map(|e| Decision {
                encoding: e,
                reason: SwitchReason::Inactive,
                probe: false,
            });
        }
        let ranked = ranked(offered, pref);
        if ranked.is_empty() {
            return None;
        }
        let pos = ranked.iter().position(|&e| e == current);
        let Some(pos) = pos else {
            // Current is inactive or now beyond the caps: the best that fits the estimate.
            let reason = if cur.active {
                SwitchReason::Request
            } else {
                SwitchReason::Inactive
            };
            let pick = best_within(offered, &ranked, path.estimate);
            return Some(Decision {
                encoding: pick,
                reason,
                probe: false,
            });
        };
        let congested = path.loss > LOSS_CONGESTED;
        // While a probe is young, only a clear sign sends it back: loss, or an
        // estimate far under the probed rate. The delay-based half dips below
        // a rate it was just restarted at on a busy host's jitter alone
        // (seen on this 2-core VM with Chromium encoding three sizes).
        let probe_young = self
            .probing
            .is_some_and(|s| now.saturating_duration_since(s) < PROBE_GRACE);
        let floor = if probe_young { PROBE_FLOOR } else { HEADROOM };
        let down_now = match path.estimate {
            Some(e) if probe_young => congested || (e as f64) < cur.bitrate as f64 * floor,
            Some(e) => (e as f64) < cur.bitrate as f64 * floor,
            None => false,
        };
        if let Some(estimate) = path.estimate {
            // Down at once.
            if down_now && pos > 0 {
                let pick = best_within(offered, &ranked, Some(estimate));
                self.up_since = None;
                self.clean_since = now;
                if let Some(started) = self.probing.take()
                    && now.saturating_duration_since(started) < PROBE_GRACE
                {
                    self.probe_wait = (self.probe_wait * 2).min(PROBE_MAX);
                }
                return (pick != current).then_some(Decision {
                    encoding: pick,
                    reason: SwitchReason::Down,
                    probe: false,
                });
            }
        }
        if congested {
            self.clean_since = now;
            self.up_since = None;
            return None;
        }
        if self
            .probing
            .is_some_and(|s| now.saturating_duration_since(s) >= PROBE_GRACE)
        {
            // The probe held: the next one comes at the base interval.
            self.probing = None;
            self.probe_wait = PROBE_AFTER;
        }
        let Some(&next) = ranked.get(pos + 1) else {
            self.up_since = None;
            return None;
        };
        let next_rate = offered[next as usize].bitrate as f64 * HEADROOM;
        if path.estimate.is_some_and(|e| e as f64 >= next_rate) {
            let since = *self.up_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= UP_HOLD {
                self.up_since = None;
                self.clean_since = now;
                return Some(Decision {
                    encoding: next,
                    reason: SwitchReason::Up,
                    probe: false,
                });
            }
            return None;
        }
        self.up_since = None;
        if self.probing.is_none()
            && path.estimate.is_some()
            && now.saturating_duration_since(self.clean_since) >= self.probe_wait
        {
            self.probing = Some(now);
            self.clean_since = now;
            return Some(Decision {
                encoding: next,
                reason: SwitchReason::Up,
                probe: true,
            });
        }
        None
    }

    /// The wait before the next probe (tests, the load tool's report).
    pub fn probe_wait(&self) -> Duration {
        self.probe_wait
    }
}

/// Checks a `layer` request against the stream's rids and the viewer's video
/// section and turns it into a [`Preference`]; the error says what was wrong
/// (the HTTP side answers 400 with it, and nothing changes).
pub fn preference(
    request: &LayerRequest,
    rids: &[String],
    video_media_id: Option<usize>,
) -> Result<Preference, String> {
    if let Some(media_id) = &request.media_id {
        let Some(video) = video_media_id else {
            return Err("this session receives no video; only video has layers".into());
        };
        if media_id.trim() != video.to_string() {
            return Err(format!(
                "mediaId '{media_id}' is not this session's video section (its video is mediaId \
                 '{video}'); audio is never layered"
            ));
        }
    }
    for (name, value) in [
        ("spatialLayerId", request.spatial_layer_id),
        ("maxSpatialLayerId", request.max_spatial_layer_id),
    ] {
        if value.is_some_and(|v| v != 0) {
            return Err(format!(
                "{name} must be 0: simulcast encodings are picked by rid, each has one spatial layer"
            ));
        }
    }
    for (name, value) in [
        ("maxWidth", request.max_width),
        ("maxHeight", request.max_height),
    ] {
        if value == Some(0) {
            return Err(format!("{name} must be a positive number of pixels"));
        }
    }
    let pinned = match &request.rid {
        None => None,
        Some(rid) if rids.is_empty() => {
            return Err(format!(
                "rid '{rid}' is unknown: this stream sends one encoding (no simulcast)"
            ));
        }
        Some(rid) => match rids.iter().position(|r| r == rid) {
            Some(i) => Some(i as u8),
            None => {
                return Err(format!(
                    "rid '{rid}' is unknown; this stream's encodings are {}",
                    rids.join(", ")
                ));
            }
        },
    };
    Ok(Preference {
        pinned,
        max_width: request.max_width,
        max_height: request.max_height,
    })
}

/// Active encodings within the caps, lowest rate first (by size while rates
/// are unknown, then by their order).
fn ranked(offered: &[Offered], pref: &Preference) -> Vec<u8> {
    let mut out: Vec<u8> = (0..offered.len() as u8)
        .filter(|&i| {
            let o = &offered[i as usize];
            o.active
                && pref.max_width.is_none_or(|w| o.width == 0 || o.width <= w)
                && pref
                    .max_height
                    .is_none_or(|h| o.height == 0 || o.height <= h)
        })
        .collect();
    if out.is_empty() {
        // Caps no encoding meets: the smallest active one rather than nothing.
        let smallest = (0..offered.len() as u8)
            .filter(|&i| offered[i as usize].active)
            .min_by_key(|&i| (offered[i as usize].width, offered[i as usize].bitrate));
        out.extend(smallest);
    }
    out.sort_by_key(|&i| {
        let o = &offered[i as usize];
        (o.width as u64 * o.height as u64, o.bitrate, i)
    });
    out
}

/// The best ranked encoding whose rate fits `estimate` (the lowest if none does).
fn best_within(offered: &[Offered], ranked: &[u8], estimate: Option<u64>) -> u8 {
    let Some(estimate) = estimate else {
        return *ranked.last().expect("ranked is not empty");
    };
    ranked
        .iter()
        .rev()
        .find(|&&e| offered[e as usize].bitrate as f64 * HEADROOM <= estimate as f64)
        .copied()
        .unwrap_or(ranked[0])
}

fn nearest_active(offered: &[Offered], from: u8) -> Option<u8> {
    (0..offered.len() as u8)
        .filter(|&i| offered[i as usize].active)
        .min_by_key(|&i| (i as i32 - from as i32).abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Vec<Offered> {
        vec![
            Offered {
                active: true,
                bitrate: 150_000,
                width: 320,
                height: 180,
            },
            Offered {
                active: true,
                bitrate: 500_000,
                width: 640,
                height: 360,
            },
            Offered {
                active: true,
                bitrate: 1_500_000,
                width: 1280,
                height: 720,
            },
        ]
    }

    fn path(bps: u64) -> Path {
        Path {
            estimate: Some(bps),
            loss: 0.0,
        }
    }

    #[test]
    fn layer_requests_are_checked_before_anything_changes() {
        let rids = vec!["q".to_string(), "h".to_string(), "f".to_string()];
        let req = |f: &dyn Fn(&mut LayerRequest)| {
            let mut r = LayerRequest::default();
            f(&mut r);
            preference(&r, &rids, Some(1))
        };
        assert_eq!(req(&|_| {}), Ok(Preference::default()));
        assert_eq!(
            req(&|r| {
                r.media_id = Some("1".into());
                r.rid = Some("h".into());
            })
            .unwrap()
            .pinned,
            Some(1)
        );
        assert!(
            req(&|r| r.rid = Some("x".into()))
                .unwrap_err()
                .contains("q, h, f")
        );
        assert!(
            req(&|r| r.media_id = Some("0".into()))
                .unwrap_err()
                .contains("audio")
        );
        assert!(req(&|r| r.spatial_layer_id = Some(1)).is_err());
        assert!(req(&|r| r.max_width = Some(0)).is_err());
        assert_eq!(
            req(&|r| r.max_height = Some(360)).unwrap().max_height,
            Some(360)
        );
        let none: Vec<String> = vec![];
        let r = LayerRequest {
            rid: Some("f".into()),
            ..Default::default()
        };
        assert!(
            preference(&r, &none, Some(1))
                .unwrap_err()
                .contains("no simulcast")
        );
    }

    #[test]
    fn starts_on_the_best_and_honours_a_pin_and_caps() {
        let o = three();
        assert_eq!(Selector::start(&o, &Preference::default()), Some(2));
        let pinned = Preference {
            pinned: Some(0),
            ..Default::default()
        };
        assert_eq!(Selector::start(&o, &pinned), Some(0));
        let capped = Preference {
            max_width: Some(700),
            ..Default::default()
        };
        assert_eq!(Selector::start(&o, &capped), Some(1));
    }

    #[test]
    fn steps_down_at_once_to_what_fits() {
        let t0 = Instant::now();
        let mut s = Selector::new(t0);
        let d = s.decide(t0, &three(), 2, &Preference::default(), &path(400_000));
        assert_eq!(
            d,
            Some(Decision {
                encoding: 0,
                reason: SwitchReason::Down,
                probe: false
            })
        );
    }

    #[test]
    fn steps_up_only_after_the_estimate_held() {
        let t0 = Instant::now();
        let mut s = Selector::new(t0);
        let o = three();
        let pref = Preference::default();
        assert_eq!(s.decide(t0, &o, 0, &pref, &path(600_000)), None);
        let early = t0 + UP_HOLD - Duration::from_millis(100);
        assert_eq!(s.decide(early, &o, 0, &pref, &path(600_000)), None);
        let d = s.decide(t0 + UP_HOLD, &o, 0, &pref, &path(600_000));
        assert_eq!(
            d.map(|d| (d.encoding, d.reason)),
            Some((1, SwitchReason::Up))
        );
        // A dip resets the hold.
        let mut s = Selector::new(t0);
        s.decide(t0, &o, 0, &pref, &path(600_000));
        s.decide(t0 + Duration::from_secs(1), &o, 0, &pref, &path(200_000));
        assert_eq!(s.decide(t0 + UP_HOLD, &o, 0, &pref, &path(600_000)), None);
    }

    #[test]
    fn probes_after_a_clean_period_and_backs_off_when_it_fails() {
        let t0 = Instant::now();
        let mut s = Selector::new(t0);
        let o = three();
        let pref = Preference::default();
        // On h with an estimate just above h (it cannot see beyond what it carries).
        assert_eq!(s.decide(t0, &o, 1, &pref, &path(550_000)), None);
        let d = s.decide(t0 + PROBE_AFTER, &o, 1, &pref, &path(550_000));
        assert_eq!(
            d,
            Some(Decision {
                encoding: 2,
                reason: SwitchReason::Up,
                probe: true
            })
        );
        // The path does not carry f: down within the grace, the wait doubles.
        let t1 = t0 + PROBE_AFTER + Duration::from_secs(1);
        let d = s.decide(t1, &o, 2, &pref, &path(600_000));
        assert_eq!(d.map(|d| d.encoding), Some(1));
        assert_eq!(s.probe_wait(), PROBE_AFTER * 2);
        assert_eq!(
            s.decide(t1 + PROBE_AFTER, &o, 1, &pref, &path(550_000)),
            None
        );
        assert!(
            s.decide(t1 + PROBE_AFTER * 2, &o, 1, &pref, &path(550_000))
                .is_some_and(|d| d.probe)
        );
    }

    #[test]
    fn a_young_probe_survives_a_dip_but_not_loss() {
        let t0 = Instant::now();
        let o = three();
        let pref = Preference::default();
        let probe = |s: &mut Selector| {
            assert_eq!(s.decide(t0, &o, 1, &pref, &path(550_000)), None);
            let d = s.decide(t0 + PROBE_AFTER, &o, 1, &pref, &path(550_000));
            assert!(d.is_some_and(|d| d.probe && d.encoding == 2));
        };
        let t1 = t0 + PROBE_AFTER + Duration::from_millis(500);
        // 1.2 Mbit/s against f's 1.5: a dip, not a verdict.
        let mut s = Selector::new(t0);
        probe(&mut s);
        assert_eq!(s.decide(t1, &o, 2, &pref, &path(1_200_000)), None);
        // Loss is.
        let mut s = Selector::new(t0);
        probe(&mut s);
        let lossy = Path {
            estimate: Some(1_200_000),
            loss: 0.2,
        };
        assert_eq!(
            s.decide(t1, &o, 2, &pref, &lossy).map(|d| d.reason),
            Some(SwitchReason::Down)
        );
        // After the grace the usual rule holds.
        let mut s = Selector::new(t0);
        probe(&mut s);
        let t2 = t0 + PROBE_AFTER + PROBE_GRACE + Duration::from_millis(200);
        assert_eq!(
            s.decide(t2, &o, 2, &pref, &path(1_200_000))
                .map(|d| d.reason),
            Some(SwitchReason::Down)
        );
    }

    #[test]
    fn a_pin_wins_and_an_inactive_encoding_is_left() {
        let t0 = Instant::now();
        let mut s = Selector::new(t0);
        let mut o = three();
        let pinned = Preference {
            pinned: Some(2),
            ..Default::default()
        };
        // Pinned f beats a low estimate.
        assert_eq!(s.decide(t0, &o, 2, &pinned, &path(100_000)), None);
        // f stops arriving: the nearest active (h), until f is back.
        o[2].active = false;
        let d = s.decide(t0, &o, 2, &pinned, &path(100_000)).unwrap();
        assert_eq!((d.encoding, d.reason), (1, SwitchReason::Inactive));
        assert_eq!(s.decide(t0, &o, 1, &pinned, &path(100_000)), None);
        o[2].active = true;
        let d = s.decide(t0, &o, 1, &pinned, &path(100_000)).unwrap();
        assert_eq!((d.encoding, d.reason), (2, SwitchReason::Request));
        // Automatic viewers leave an inactive encoding too.
        o[1].active = false;
        let d = s
            .decide(t0, &o, 1, &Preference::default(), &path(10_000_000))
            .unwrap();
        assert_eq!((d.encoding, d.reason), (2, SwitchReason::Inactive));
    }
}
