//! What the `fuzz/` crate's `room_core` target drives (only with the `fuzzing`
//! feature; not part of the crate's API): a room core fed client frames as a
//! connection would pass them on, joins, leaves and ticks on a virtual clock, with
//! every database request answered at once. It checks what must hold whatever
//! the input: every message the room sends is one JSON object with a `type`, and
//! broadcasts are numbered one by one.

use std::sync::{Arc, OnceLock};

use crate::chat::{ChatRecord, Inserted};
use crate::config::RoomsConfig;
use crate::core::{Effect, Input, Room, StoreOp, Stored};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::wire::{self, ClientMsg};

/// The virtual clock starts here (server ms).
const T0: f64 = 1_733_000_000_000.0;
/// Connection slots the input addresses (`0`..`3`).
const SLOTS: usize = 4;

/// One room, its clock, and which connection each slot holds now.
pub struct RoomFuzz {
    room: Room,
    now: f64,
    /// The connection id a slot holds (joined or not yet), and whether it joined.
    slots: [(u64, bool); SLOTS],
    next_conn: u64,
    last_seq: u64,
    next_chat_id: i64,
}

fn metrics() -> Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS
        .get_or_init(|| Metrics::register(&prometheus::Registry::new()).unwrap())
        .clone()
}

impl RoomFuzz {
    /// A room with the default limits, or (`small`) limits small enough for a few
    /// members to reach them: a large room of three, a short log, slow mode-like
    /// chat windows, a short grace period.
    pub fn new(small: bool) -> Self {
        let mut cfg = RoomsConfig::default();
        if small {
            cfg.large_room_above = 2;
            cfg.log_size = 4;
            cfg.chat_rate_count = 2;
            cfg.welcome_chat = 2;
            cfg.welcome_members = 1;
            cfg.grace_period_ms = 500;
            cfg.ready_timeout_ms = 300;
            cfg.messages_burst = 4.0;
            cfg.blocked_words = vec!["darn".into()];
        }
        let mut room = Room::new("fuzz", Arc::new(cfg), metrics(), T0);
        room.handle(
            T0,
            Input::Loaded {
                bans: vec!["banned".into()],
                mutes: vec![("u1".into(), (T0 as i64) + 60_000)],
                chat: Vec::new(),
            },
        );
        let mut fuzz = Self {
            room,
            now: T0,
            slots: [(0, false); SLOTS],
            next_conn: 0,
            last_seq: 0,
            next_chat_id: 1,
        };
        for s in 0..SLOTS {
            fuzz.slots[s] = (fuzz.new_conn(), false);
        }
        fuzz.drain();
        fuzz
    }

    fn new_conn(&mut self) -> u64 {
        self.next_conn += 1;
        self.next_conn
    }

    /// Runs a script, one operation per line:
    /// - `0`..`3` then a frame: the text frame from that slot's connection. Before
    ///   it joined, only a `hello` counts (it joins as user `u<slot>`, slot 0 a
    ///   moderator); a frame that does not parse never reaches the room.
    /// - `t<ms>`: the clock moves on `ms` (at most 100 s), then the room timer fires.
    /// - `l<slot>` / `d<slot>`: the slot's connection closes cleanly / drops.
    /// - `s<slot>`: the slot's connection is too slow.
    /// - `e<slot>`: the slot's user is evicted.
    pub fn run(&mut self, script: &str) {
        for line in script.lines() {
            let mut chars = line.chars();
            let Some(op) = chars.next() else { continue };
            let rest = chars.as_str();
            let slot = |s: &str| -> Option<usize> {
                let n: usize = s.trim().parse().ok()?;
                (n < SLOTS).then_some(n)
            };
            match op {
                '0'..='3' => self.frame(op as usize - '0' as usize, rest),
                't' => {
                    let ms: f64 = rest.trim().parse().unwrap_or(10.0);
                    if ms.is_finite() {
                        self.now += ms.clamp(0.0, 100_000.0);
                    }
                    self.input(Input::Tick);
                }
                'l' | 'd' | 's' => {
                    if let Some(s) = slot(rest) {
                        let conn = self.slots[s].0;
                        self.input(match op {
                            's' => Input::Slow { conn },
                            _ => Input::Leave {
                                conn,
                                clean: op == 'l',
                            },
                        });
                    }
                }
                'e' => {
                    if let Some(s) = slot(rest) {
                        self.input(Input::Evict {
                            user: format!("u{s}"),
                            code: "revoked",
                            message: "fuzz".into(),
                        });
                    }
                }
                _ => {}
            }
        }
    }

    fn frame(&mut self, slot: usize, text: &str) {
        let Ok(msg) = wire::parse(text) else { return };
        let (conn, joined) = self.slots[slot];
        if joined {
            let recv_at = self.now;
            self.input(Input::Msg { conn, msg, recv_at });
        } else if let ClientMsg::Hello { resume, user } = msg {
            self.input(Input::Join {
                conn,
                ident: Identity {
                    user_id: format!("u{slot}"),
                    name: None,
                    moderator: slot == 0,
                    can_chat: slot != 3,
                },
                resume,
                user: user.unwrap_or_default(),
            });
        }
    }

    fn input(&mut self, input: Input) {
        self.room.handle(self.now, input);
        self.drain();
    }

    /// Plays the shell: reads every effect, checks it, answers database requests.
    fn drain(&mut self) {
        while let Some(effect) = self.room.poll_effect() {
            match effect {
                Effect::Send { text, .. } => check_message(&text),
                Effect::Broadcast { seq, text, .. } => {
                    check_message(&text);
                    assert_eq!(seq, self.last_seq + 1, "broadcasts are numbered one by one");
                    self.last_seq = seq;
                }
                Effect::Joined { conn } => {
                    if let Some(s) = self.slots.iter_mut().find(|(c, _)| *c == conn) {
                        s.1 = true;
                    }
                }
                Effect::Detach { conn, .. } | Effect::Refused { conn, .. } => {
                    // The connection is closed: its slot gets a fresh one.
                    if let Some(s) = self.slots.iter().position(|(c, _)| *c == conn) {
                        self.slots[s] = (self.new_conn(), false);
                    }
                }
                Effect::Store(op) => self.answer(op),
                Effect::Pong { .. } | Effect::Ping { .. } | Effect::Attach { .. } => {}
            }
        }
    }

    /// Answers a store request as a store that always succeeds would.
    fn answer(&mut self, op: StoreOp) {
        let stored = match op {
            StoreOp::InsertChat { conn, key, r, new } => {
                let id = self.next_chat_id;
                self.next_chat_id += 1;
                let record = ChatRecord {
                    id,
                    room: new.room,
                    user_id: new.user_id,
                    user_name: new.user_name,
                    user_avatar: new.user_avatar,
                    text: new.text,
                    client_msg_id: new.client_msg_id,
                    media_time: new.media_time,
                    created_at: new.created_at,
                };
                Stored::Inserted {
                    conn,
                    key,
                    r,
                    res: Ok(Inserted::New(record)),
                }
            }
            StoreOp::Page { conn, limit, .. } => Stored::Page {
                conn,
                limit,
                res: Ok(Vec::new()),
            },
            StoreOp::Delete {
                conn,
                id,
                by,
                privileged,
            } => Stored::Deleted {
                conn,
                id,
                by,
                privileged,
                outcome: Ok(id > 0 && id < self.next_chat_id),
            },
            StoreOp::SetBan { .. } | StoreOp::SetMute { .. } => return,
        };
        // Answered after what the room is doing now, as the shell's task would.
        self.room.handle(self.now, Input::Stored(stored));
    }
}

/// Every message the room sends is one JSON object naming its `type`.
fn check_message(text: &str) {
    let v: serde_json::Value = serde_json::from_str(text).expect("the room sent invalid JSON");
    assert!(
        v.get("type").is_some_and(|t| t.is_string()),
        "a message without a type: {text}"
    );
}
