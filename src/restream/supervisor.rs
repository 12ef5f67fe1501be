//! The life of one restream destination as a sans-IO state machine: no
//! process, no socket, no clock read. The shell ([`super::manager`]) hands it
//! events stamped with an `Instant` (the publisher's media is ready or gone,
//! ffmpeg's progress, ffmpeg exited, a tick) and carries out the actions it
//! returns (spawn ffmpeg, kill it, ask the publisher for a key frame), waking
//! it again at [`Supervisor::next_wake`]. So every rule below is unit-tested
//! with a manual clock, faster than real time.
//!
//! The rules:
//! - `connecting` while the publisher's media is not there yet (no attempt is
//!   spent waiting) and while ffmpeg connects; `live` once ffmpeg's output
//!   grows (`-progress`'s `total_size`) with the picture in it (its `frame`
//!   count: audio alone starts first, and a VP8 decoder waits for a key frame,
//!   which is asked for every [`KEYFRAME_EVERY`] until then).
//! - No growth for `stall` while live (or for twice that while starting):
//!   killed and restarted (reason `stall`).
//! - Any other end: `retrying`, and the next start after a backoff with full
//!   jitter (uniform in `[0, cap]`, the cap doubling from `backoff_min` to
//!   `backoff_max`). Staying live for [`STABLE_AFTER`] forgets past failures.
//! - The server refusing the publish (a wrong key) twice in a row before any
//!   byte went out: `failed`, not retried.

use std::time::{Duration, Instant};

use super::Status;
use crate::config::RestreamConfig;

/// Live this long: earlier failures no longer grow the backoff, and attempts
/// count from this run.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Refusals of the key in a row (before any byte went out) that mean `failed`.
pub const MAX_REFUSALS: u32 = 2;

/// How often a starting destination asks the publisher for a key frame (ffmpeg
/// needs one to begin: the H.264 parameter sets, a decodable VP8 frame).
pub const KEYFRAME_EVERY: Duration = Duration::from_secs(2);

/// The timings of a supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// Live without output growth this long: killed (stall).
    pub stall: Duration,
    /// Starting without any output this long: killed (stall).
    pub start_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl SupervisorConfig {
    pub fn from_config(config: &RestreamConfig) -> Self {
        let stall = Duration::from_secs(config.stall_seconds.max(1));
        Self {
            stall,
            start_timeout: stall * 2,
            backoff_min: Duration::from_millis(config.backoff_min_ms.max(1)),
            backoff_max: Duration::from_millis(config.backoff_max_ms.max(config.backoff_min_ms)),
        }
    }
}

/// How an ffmpeg run ended, as its stderr tells (see [`super::ffmpeg::classify`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    /// The server refused the publish: a wrong or revoked stream key.
    Refused,
    /// The server could not be reached or went away (refused connection,
    /// reset, timeout, name resolution, TLS).
    Network,
    /// Anything else.
    Other,
}

/// Why a run ended or a restart happened (the `reason` label of
/// `tandem_restream_restarts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No progress for the stall time.
    Stall,
    /// The server refused the key.
    Auth,
    /// The server was unreachable or dropped the connection.
    Network,
    /// ffmpeg ended for another reason (or could not be started).
    Exit,
    /// The publisher left: the run stops until its media is back.
    PublisherLeft,
    /// The destination was removed or the stream ended.
    Stopped,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Stall => "stall",
            Reason::Auth => "auth",
            Reason::Network => "network",
            Reason::Exit => "exit",
            Reason::PublisherLeft => "publisher_left",
            Reason::Stopped => "stopped",
        }
    }
}

/// What happened, stamped by the shell with the `Instant` it happened at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The publisher's media is flowing (`true`) or gone (`false`).
    Media(bool),
    /// ffmpeg's `-progress` reported this many bytes written so far in this
    /// run; `picture`: the output carries video (or the stream has none). A
    /// destination is live only with its picture: audio alone starts first.
    Progress { total_bytes: u64, picture: bool },
    /// The running ffmpeg ended; `error` is its redacted last error line.
    Exited {
        class: ExitClass,
        error: Option<String>,
    },
    /// ffmpeg could not be started (not installed, no ports, no temp dir).
    SpawnFailed { error: String },
    /// Time passed (the shell wakes at [`Supervisor::next_wake`]).
    Tick,
}

/// What the shell must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start ffmpeg (new ports, a new SDP) and ask for a key frame.
    Spawn,
    /// Kill the running ffmpeg; its exit comes back as [`Event::Exited`].
    Kill(Reason),
    /// Ask the publisher for a key frame.
    RequestKeyframe,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// No ffmpeg: waiting for the publisher's media.
    Waiting,
    /// ffmpeg runs, nothing written yet.
    Starting {
        started: Instant,
        keyframe_at: Instant,
    },
    /// ffmpeg's output grows.
    Running {
        live_since: Instant,
        grew_at: Instant,
    },
    /// Kill sent; waiting for the exit.
    Killing(Reason),
    /// No ffmpeg until `until`.
    Backoff {
        until: Instant,
    },
    Failed,
    Stopped,
}

/// One destination's state machine.
#[derive(Debug, Clone)]
pub struct Supervisor {
    config: SupervisorConfig,
    phase: Phase,
    status: Status,
    since: Instant,
    attempts: u32,
    last_error: Option<String>,
    /// Bytes of finished runs, and of the current one.
    bytes_done: u64,
    bytes_run: u64,
    /// Failures since the destination last stayed live for [`STABLE_AFTER`]
    /// (the backoff's exponent).
    failures: u32,
    /// Refusals of the key in a row.
    refusals: u32,
    media: bool,
    /// Why the last run ended (the next spawn is a restart for this reason).
    restart_reason: Option<Reason>,
    rng: u64,
}

impl Supervisor {
    /// A destination set at `now`; `seed` drives the jitter (tests fix it).
    pub fn new(config: SupervisorConfig, now: Instant, seed: u64) -> Self {
        Self {
            config,
            phase: Phase::Waiting,
            status: Status::Connecting,
            since: now,
            attempts: 0,
            last_error: None,
            bytes_done: 0,
            bytes_run: 0,
            failures: 0,
            refusals: 0,
            media: false,
            restart_reason: None,
            rng: seed | 1,
        }
    }

    /// A destination that cannot run (its target could not be resolved, a
    /// limit): `failed` with `error` from the start.
    pub fn failed(config: SupervisorConfig, now: Instant, error: String) -> Self {
        let mut s = Self::new(config, now, 1);
        s.phase = Phase::Failed;
        s.status = Status::Failed;
        s.last_error = Some(error);
        s
    }

    pub fn status(&self) -> Status {
        self.status
    }

    pub fn since(&self) -> Instant {
        self.since
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    pub fn bytes_sent(&self) -> u64 {
        self.bytes_done + self.bytes_run
    }

    /// Whether an ffmpeg is (or should be) running: the shell holds a child.
    pub fn running(&self) -> bool {
        matches!(
            self.phase,
            Phase::Starting { .. } | Phase::Running { .. } | Phase::Killing(_)
        )
    }

    /// Why the run that is being replaced ended (set when a run ends; the
    /// shell counts a restart with it when the next spawn happens).
    pub fn restart_reason(&self) -> Option<Reason> {
        self.restart_reason
    }

    /// When the shell must wake the machine with [`Event::Tick`] next.
    pub fn next_wake(&self) -> Option<Instant> {
        match self.phase {
            Phase::Starting {
                started,
                keyframe_at,
            } => Some((started + self.config.start_timeout).min(keyframe_at + KEYFRAME_EVERY)),
            Phase::Running {
                live_since,
                grew_at,
            } => {
                let stall = grew_at + self.config.stall;
                if self.failures > 0 || self.attempts > 1 {
                    Some(stall.min(live_since + STABLE_AFTER))
                } else {
                    Some(stall)
                }
            }
            Phase::Backoff { until } => Some(until),
            _ => None,
        }
    }

    /// The destination is removed (or its stream ended): `idle`, ffmpeg killed.
    pub fn stop(&mut self, now: Instant) -> Vec<Action> {
        let running = self.running();
        self.phase = Phase::Stopped;
        self.set_status(Status::Idle, now);
        if running {
            vec![Action::Kill(Reason::Stopped)]
        } else {
            Vec::new()
        }
    }

    /// Feeds one event; returns what the shell must do.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        if matches!(self.phase, Phase::Failed | Phase::Stopped) {
            return Vec::new();
        }
        match event {
            Event::Media(ready) => self.media(ready, now),
            Event::Progress {
                total_bytes,
                picture,
            } => {
                self.progress(total_bytes, picture, now);
                Vec::new()
            }
            Event::Exited { class, error } => self.exited(class, error, now),
            Event::SpawnFailed { error } => {
                self.bytes_done += std::mem::take(&mut self.bytes_run);
                self.failure(Reason::Exit, Some(error), now);
                Vec::new()
            }
            Event::Tick => self.tick(now),
        }
    }

    fn media(&mut self, ready: bool, now: Instant) -> Vec<Action> {
        self.media = ready;
        match (ready, self.phase) {
            (true, Phase::Waiting) => self.spawn(now),
            (false, Phase::Starting { .. } | Phase::Running { .. }) => {
                // Not a failure: the run resumes when the publisher is back.
                self.phase = Phase::Killing(Reason::PublisherLeft);
                self.set_status(Status::Connecting, now);
                vec![Action::Kill(Reason::PublisherLeft)]
            }
            (false, Phase::Backoff { .. }) => {
                self.phase = Phase::Waiting;
                self.set_status(Status::Connecting, now);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    fn progress(&mut self, total: u64, picture: bool, now: Instant) {
        if total <= self.bytes_run {
            return;
        }
        self.bytes_run = total;
        match self.phase {
            Phase::Starting { .. } if picture => {
                self.phase = Phase::Running {
                    live_since: now,
                    grew_at: now,
                };
                self.refusals = 0;
                self.set_status(Status::Live, now);
            }
            Phase::Running { live_since, .. } => {
                self.phase = Phase::Running {
                    live_since,
                    grew_at: now,
                };
            }
            _ => {}
        }
    }

    fn tick(&mut self, now: Instant) -> Vec<Action> {
        match self.phase {
            Phase::Starting {
                started,
                keyframe_at,
            } => {
                if now >= started + self.config.start_timeout {
                    self.phase = Phase::Killing(Reason::Stall);
                    vec![Action::Kill(Reason::Stall)]
                } else if now >= keyframe_at + KEYFRAME_EVERY {
                    self.phase = Phase::Starting {
                        started,
                        keyframe_at: now,
                    };
                    vec![Action::RequestKeyframe]
                } else {
                    Vec::new()
                }
            }
            Phase::Running {
                live_since,
                grew_at,
            } => {
                if now >= grew_at + self.config.stall {
                    self.phase = Phase::Killing(Reason::Stall);
                    return vec![Action::Kill(Reason::Stall)];
                }
                if now >= live_since + STABLE_AFTER {
                    // A long live run: the past is forgiven.
                    self.failures = 0;
                    self.attempts = 1;
                }
                Vec::new()
            }
            Phase::Backoff { until } if now >= until => {
                if self.media {
                    self.spawn(now)
                } else {
                    self.phase = Phase::Waiting;
                    self.set_status(Status::Connecting, now);
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    fn exited(&mut self, class: ExitClass, error: Option<String>, now: Instant) -> Vec<Action> {
        let phase = self.phase;
        let wrote = self.bytes_run > 0;
        self.bytes_done += std::mem::take(&mut self.bytes_run);
        match phase {
            Phase::Killing(Reason::PublisherLeft) => {
                self.restart_reason = None;
                if self.media {
                    self.spawn(now)
                } else {
                    self.phase = Phase::Waiting;
                    Vec::new()
                }
            }
            Phase::Killing(Reason::Stall) => {
                let waited = if wrote {
                    self.config.stall
                } else {
                    self.config.start_timeout
                };
                let error = format!("stalled: no progress for {} s", waited.as_secs());
                self.failure(Reason::Stall, Some(error), now);
                Vec::new()
            }
            Phase::Starting { .. } | Phase::Running { .. } | Phase::Killing(_) => {
                let long_live = matches!(phase, Phase::Running { live_since, .. } if now >= live_since + STABLE_AFTER);
                if long_live {
                    self.failures = 0;
                }
                let reason = match class {
                    // A refusal counts only before any byte went out (a
                    // server that took the stream and then dropped it did
                    // not refuse the key).
                    ExitClass::Refused if !wrote => Reason::Auth,
                    ExitClass::Refused | ExitClass::Network => Reason::Network,
                    ExitClass::Other => Reason::Exit,
                };
                if reason == Reason::Auth {
                    self.refusals += 1;
                    if self.refusals >= MAX_REFUSALS {
                        self.phase = Phase::Failed;
                        self.restart_reason = Some(Reason::Auth);
                        self.last_error =
                            Some(error.unwrap_or_else(|| {
                                "the server refused the stream key".to_string()
                            }));
                        self.set_status(Status::Failed, now);
                        return Vec::new();
                    }
                } else {
                    self.refusals = 0;
                }
                let error = error.or_else(|| Some(format!("ffmpeg ended ({})", reason.as_str())));
                self.failure(reason, error, now);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// A run ended badly: `retrying` after a backoff.
    fn failure(&mut self, reason: Reason, error: Option<String>, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.restart_reason = Some(reason);
        self.last_error = error;
        let delay = self.backoff();
        self.phase = Phase::Backoff { until: now + delay };
        self.set_status(Status::Retrying, now);
    }

    /// Full jitter: uniform in `[0, cap]`, the cap doubling per failure from
    /// `backoff_min` up to `backoff_max`.
    pub fn backoff(&mut self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(30);
        let cap = self
            .config
            .backoff_min
            .saturating_mul(1u32 << exp)
            .min(self.config.backoff_max);
        let unit = (self.next_random() >> 11) as f64 / (1u64 << 53) as f64;
        cap.mul_f64(unit)
    }

    fn spawn(&mut self, now: Instant) -> Vec<Action> {
        self.attempts = self.attempts.saturating_add(1);
        self.phase = Phase::Starting {
            started: now,
            keyframe_at: now,
        };
        // The first start is `connecting`; a restart stays `retrying` until live.
        let status = if self.failures == 0 {
            Status::Connecting
        } else {
            Status::Retrying
        };
        self.set_status(status, now);
        vec![Action::Spawn]
    }

    fn set_status(&mut self, status: Status, now: Instant) {
        if self.status != status {
            self.status = status;
            self.since = now;
        }
    }

    /// xorshift64*: the jitter needs spread, not secrecy.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SupervisorConfig {
        SupervisorConfig {
            stall: Duration::from_secs(10),
            start_timeout: Duration::from_secs(20),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }

    /// A supervisor and a manual clock.
    struct Run {
        s: Supervisor,
        now: Instant,
    }

    impl Run {
        fn new() -> Self {
            let now = Instant::now();
            Self {
                s: Supervisor::new(config(), now, 42),
                now,
            }
        }

        fn at(&mut self, after: Duration) {
            self.now += after;
        }

        fn ev(&mut self, e: Event) -> Vec<Action> {
            self.s.handle(e, self.now)
        }

        /// Ticks at every wake until `until` has passed; returns the actions.
        fn run_until(&mut self, until: Instant) -> Vec<Action> {
            let mut out = Vec::new();
            while let Some(wake) = self.s.next_wake() {
                if wake > until {
                    break;
                }
                self.now = wake.max(self.now);
                out.extend(self.s.handle(Event::Tick, self.now));
            }
            self.now = until.max(self.now);
            out
        }

        /// Ticks until the next spawn (after a backoff).
        fn until_spawn(&mut self) {
            while let Some(wake) = self.s.next_wake() {
                self.now = wake.max(self.now);
                if self
                    .s
                    .handle(Event::Tick, self.now)
                    .contains(&Action::Spawn)
                {
                    return;
                }
            }
            panic!("no spawn");
        }

        /// Started and live.
        fn live(&mut self) {
            assert_eq!(self.ev(Event::Media(true)), vec![Action::Spawn]);
            self.at(Duration::from_millis(500));
            self.ev(Event::Progress {
                total_bytes: 4000,
                picture: true,
            });
            assert_eq!(self.s.status(), Status::Live);
        }

        fn exit(&mut self, class: ExitClass, error: &str) -> Vec<Action> {
            self.ev(Event::Exited {
                class,
                error: Some(error.into()),
            })
        }
    }

    #[test]
    fn waits_for_media_without_spending_attempts() {
        let mut r = Run::new();
        assert_eq!(r.s.status(), Status::Connecting);
        let end = r.now + Duration::from_secs(600);
        assert!(r.run_until(end).is_empty(), "nothing to do without media");
        assert_eq!(r.s.attempts(), 0);
        assert_eq!(r.s.status(), Status::Connecting);
        assert_eq!(r.ev(Event::Media(true)), vec![Action::Spawn]);
        assert_eq!(r.s.attempts(), 1);
    }

    #[test]
    fn live_when_output_grows() {
        let mut r = Run::new();
        r.ev(Event::Media(true));
        r.ev(Event::Progress {
            total_bytes: 0,
            picture: true,
        });
        assert_eq!(r.s.status(), Status::Connecting, "no bytes yet");
        r.at(Duration::from_secs(1));
        r.ev(Event::Progress {
            total_bytes: 1234,
            picture: true,
        });
        assert_eq!(r.s.status(), Status::Live);
        assert_eq!(r.s.since(), r.now);
        assert_eq!(r.s.bytes_sent(), 1234);
    }

    #[test]
    fn audio_alone_is_not_live_and_key_frames_are_asked_until_the_picture() {
        let mut r = Run::new();
        r.ev(Event::Media(true));
        r.at(Duration::from_millis(300));
        r.ev(Event::Progress {
            total_bytes: 500,
            picture: false,
        });
        assert_eq!(r.s.status(), Status::Connecting);
        assert_eq!(r.s.bytes_sent(), 500);
        let end = r.now + Duration::from_secs(3);
        assert_eq!(r.run_until(end), vec![Action::RequestKeyframe]);
        r.ev(Event::Progress {
            total_bytes: 9000,
            picture: true,
        });
        assert_eq!(r.s.status(), Status::Live);
    }

    #[test]
    fn asks_for_key_frames_while_starting() {
        let mut r = Run::new();
        r.ev(Event::Media(true));
        let end = r.now + Duration::from_secs(5);
        let actions = r.run_until(end);
        assert_eq!(actions, vec![Action::RequestKeyframe; 2]);
    }

    #[test]
    fn stall_kills_and_restarts() {
        let mut r = Run::new();
        r.live();
        // Progress stops: after the stall time, a kill.
        let end = r.now + Duration::from_secs(11);
        assert_eq!(r.run_until(end), vec![Action::Kill(Reason::Stall)]);
        assert_eq!(r.s.status(), Status::Live, "live until the exit");
        r.exit(ExitClass::Other, "killed");
        assert_eq!(r.s.status(), Status::Retrying);
        assert_eq!(r.s.restart_reason(), Some(Reason::Stall));
        assert!(r.s.last_error().unwrap().contains("stalled"));
        // The first backoff is at most backoff_min.
        let end = r.now + Duration::from_secs(1);
        assert_eq!(r.run_until(end), vec![Action::Spawn]);
        assert_eq!(r.s.attempts(), 2);
        assert_eq!(r.s.status(), Status::Retrying, "retrying until live again");
        r.ev(Event::Progress {
            total_bytes: 10,
            picture: true,
        });
        assert_eq!(r.s.status(), Status::Live);
        assert_eq!(r.s.bytes_sent(), 4010);
    }

    #[test]
    fn starting_without_output_is_a_stall() {
        let mut r = Run::new();
        r.ev(Event::Media(true));
        let end = r.now + Duration::from_secs(21);
        let actions = r.run_until(end);
        assert_eq!(actions.last(), Some(&Action::Kill(Reason::Stall)));
    }

    #[test]
    fn backoff_grows_with_full_jitter_up_to_the_cap() {
        let mut r = Run::new();
        r.ev(Event::Media(true));
        let mut delays = Vec::new();
        for _ in 0..12 {
            r.exit(ExitClass::Network, "Connection refused (rtmp://h)");
            assert_eq!(r.s.status(), Status::Retrying);
            let start = r.now;
            let end = r.now + Duration::from_secs(61);
            let mut spawned = false;
            while let Some(w) = r.s.next_wake() {
                if w > end {
                    break;
                }
                r.now = w;
                if r.ev(Event::Tick).contains(&Action::Spawn) {
                    spawned = true;
                    break;
                }
            }
            assert!(spawned, "a spawn within the 60 s cap");
            delays.push(r.now - start);
        }
        // Caps 1, 2, 4, 8, 16, 32, 60, 60...: every delay under its cap.
        for (i, d) in delays.iter().enumerate() {
            let cap = Duration::from_secs((1u64 << i).min(60));
            assert!(*d <= cap, "delay {i} = {d:?} over {cap:?}");
        }
        // Jitter: not all the late delays are the cap.
        assert!(delays[6..].iter().any(|d| *d < Duration::from_secs(59)));
        assert!(delays[6..].iter().any(|d| *d > Duration::from_secs(2)));
        assert_eq!(r.s.attempts(), 13);
    }

    #[test]
    fn long_live_run_resets_the_backoff() {
        let mut r = Run::new();
        r.ev(Event::Media(true));
        for _ in 0..6 {
            r.exit(ExitClass::Network, "reset");
            r.until_spawn();
        }
        assert_eq!(r.s.attempts(), 7);
        r.ev(Event::Progress {
            total_bytes: 100,
            picture: true,
        });
        // Live for 70 s with progress every second.
        for i in 0..70 {
            r.at(Duration::from_secs(1));
            r.ev(Event::Progress {
                total_bytes: 200 + i,
                picture: true,
            });
            r.ev(Event::Tick);
        }
        assert_eq!(r.s.attempts(), 1, "attempts count from the stable run");
        r.exit(ExitClass::Network, "reset");
        let start = r.now;
        r.until_spawn();
        assert!(
            r.now - start <= Duration::from_secs(1),
            "the backoff starts again from its minimum"
        );
    }

    #[test]
    fn refused_key_fails_after_two_quick_attempts() {
        let mut r = Run::new();
        r.ev(Event::Media(true));
        r.exit(
            ExitClass::Refused,
            "the server refused the publish (rtmp://h)",
        );
        assert_eq!(r.s.status(), Status::Retrying);
        let end = r.now + Duration::from_secs(1);
        assert_eq!(r.run_until(end), vec![Action::Spawn]);
        r.exit(
            ExitClass::Refused,
            "the server refused the publish (rtmp://h)",
        );
        assert_eq!(r.s.status(), Status::Failed);
        assert_eq!(r.s.attempts(), 2);
        assert_eq!(r.s.restart_reason(), Some(Reason::Auth));
        assert!(r.s.last_error().unwrap().contains("refused"));
        // Never again.
        assert_eq!(r.s.next_wake(), None);
        assert!(r.ev(Event::Media(true)).is_empty());
    }

    #[test]
    fn a_drop_after_live_is_not_a_refusal() {
        let mut r = Run::new();
        r.live();
        r.exit(ExitClass::Refused, "dropped");
        let end = r.now + Duration::from_secs(1);
        r.run_until(end);
        r.ev(Event::Progress {
            total_bytes: 5,
            picture: true,
        });
        r.exit(ExitClass::Refused, "dropped");
        assert_eq!(
            r.s.status(),
            Status::Retrying,
            "took bytes: not an auth failure"
        );
        assert_eq!(r.s.restart_reason(), Some(Reason::Network));
    }

    #[test]
    fn publisher_leaving_waits_without_a_failure() {
        let mut r = Run::new();
        r.live();
        assert_eq!(
            r.ev(Event::Media(false)),
            vec![Action::Kill(Reason::PublisherLeft)]
        );
        assert_eq!(r.s.status(), Status::Connecting);
        assert!(r.exit(ExitClass::Other, "killed").is_empty());
        let end = r.now + Duration::from_secs(600);
        assert!(r.run_until(end).is_empty());
        assert_eq!(r.s.status(), Status::Connecting);
        assert_eq!(r.ev(Event::Media(true)), vec![Action::Spawn]);
        assert_eq!(r.s.status(), Status::Connecting, "not a retry");
        assert_eq!(r.s.last_error(), None);
    }

    #[test]
    fn stop_kills_and_goes_idle() {
        let mut r = Run::new();
        r.live();
        assert_eq!(r.s.stop(r.now), vec![Action::Kill(Reason::Stopped)]);
        assert_eq!(r.s.status(), Status::Idle);
        assert!(r.exit(ExitClass::Other, "killed").is_empty());
        assert_eq!(r.s.status(), Status::Idle);
        assert_eq!(r.s.next_wake(), None);
    }

    #[test]
    fn spawn_failure_retries() {
        let mut r = Run::new();
        r.ev(Event::Media(true));
        r.ev(Event::SpawnFailed {
            error: "ffmpeg not found".into(),
        });
        assert_eq!(r.s.status(), Status::Retrying);
        assert_eq!(r.s.last_error(), Some("ffmpeg not found"));
    }

    #[test]
    fn unavailable_target_is_failed_at_once() {
        let now = Instant::now();
        let mut s = Supervisor::failed(config(), now, "needs reconnect".into());
        assert_eq!(s.status(), Status::Failed);
        assert!(s.handle(Event::Media(true), now).is_empty());
        assert_eq!(s.last_error(), Some("needs reconnect"));
    }
}
