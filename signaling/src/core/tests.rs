//! The room core driven in memory with a virtual clock (server ms): one behaviour
//! per test, no sockets, no tasks, no sleeps.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Effect, Input, Room, StoreOp, Stored};
use crate::chat::{ChatRecord, Inserted};
use crate::config::RoomsConfig;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::wire::{self, Resume, UserInfo};

/// The virtual clock starts here (a December 2024 afternoon).
const T0: f64 = 1_733_000_000_000.0;

struct Harness {
    room: Room,
    now: f64,
    cfg: RoomsConfig,
}

fn harness(cfg: RoomsConfig) -> Harness {
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    let mut room = Room::new("r1", Arc::new(cfg.clone()), metrics, T0);
    room.handle(
        T0,
        Input::Loaded {
            bans: Vec::new(),
            mutes: Vec::new(),
            chat: Vec::new(),
        },
    );
    Harness { room, now: T0, cfg }
}

fn ident(user: &str) -> Identity {
    Identity {
        user_id: user.into(),
        name: None,
        moderator: false,
        can_chat: true,
    }
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

impl Harness {
    fn advance(&mut self, ms: f64) {
        self.now += ms;
    }

    fn input(&mut self, input: Input) -> Vec<Effect> {
        self.room.handle(self.now, input);
        std::iter::from_fn(|| self.room.poll_effect()).collect()
    }

    /// Joins `user` on connection `conn`; returns its `welcome`.
    fn join(&mut self, conn: u64, user: &str) -> Value {
        let fx = self.input(Input::Join {
            conn,
            ident: ident(user),
            resume: None,
            user: UserInfo::default(),
        });
        sent(&fx, conn).remove(0)
    }

    /// The client message `msg` (a JSON object) from `conn`, received now.
    fn msg(&mut self, conn: u64, msg: Value) -> Vec<Effect> {
        let msg = wire::parse(&msg.to_string()).unwrap();
        let recv_at = self.now;
        self.input(Input::Msg { conn, msg, recv_at })
    }

    fn tick(&mut self) -> Vec<Effect> {
        self.input(Input::Tick)
    }
}

/// What `conn` was sent on its own, in order.
fn sent(fx: &[Effect], conn: u64) -> Vec<Value> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Send { conn: c, text } if *c == conn => Some(json_of(text)),
            _ => None,
        })
        .collect()
}

/// What was broadcast, in order.
fn broadcasts(fx: &[Effect]) -> Vec<Value> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Broadcast { text, .. } => Some(json_of(text)),
            _ => None,
        })
        .collect()
}

fn of_type<'a>(msgs: &'a [Value], ty: &str) -> Vec<&'a Value> {
    msgs.iter().filter(|m| m["type"] == ty).collect()
}

fn store_ops(fx: Vec<Effect>) -> Vec<StoreOp> {
    fx.into_iter()
        .filter_map(|e| match e {
            Effect::Store(op) => Some(op),
            _ => None,
        })
        .collect()
}

fn record(id: i64, user: &str, client_msg_id: &str) -> ChatRecord {
    ChatRecord {
        id,
        room: "r1".into(),
        user_id: user.into(),
        user_name: user.into(),
        user_avatar: None,
        text: "hi".into(),
        client_msg_id: client_msg_id.into(),
        media_time: None,
        created_at: T0 as i64,
    }
}

#[test]
fn a_joiner_gets_its_welcome_after_the_others_hear_of_it() {
    let mut h = harness(RoomsConfig::default());
    h.join(1, "a");
    let fx = h.input(Input::Join {
        conn: 2,
        ident: ident("b"),
        resume: None,
        user: UserInfo::default(),
    });
    let order: Vec<&str> = fx
        .iter()
        .map(|e| match e {
            Effect::Broadcast { .. } => "broadcast",
            Effect::Attach { .. } => "attach",
            Effect::Send { .. } => "send",
            Effect::Joined { .. } => "joined",
            _ => "other",
        })
        .collect();
    assert_eq!(order, ["broadcast", "attach", "send", "joined"]);
    assert_eq!(broadcasts(&fx)[0]["type"], "presence.join");
    assert_eq!(sent(&fx, 2)[0]["type"], "welcome");
}

#[test]
fn host_command_times_are_corrected_by_the_measured_clock() {
    let mut h = harness(RoomsConfig::default());
    h.join(1, "a");
    // The host's clock is 5 s ahead; 10 ms each way, 1 ms to answer.
    let t0 = h.now;
    h.advance(21.0);
    let pong =
        json!({"type": "time.pong", "id": 1, "t0": t0, "t1": t0 + 5010.0, "t2": t0 + 5011.0});
    h.msg(1, pong);
    // "play, as of 50 ms ago" in the host's clock.
    let at = h.now + 5000.0 - 50.0;
    let fx = h.msg(
        1,
        json!({"type": "playback.command", "action": "play", "position": 10.0, "at": at}),
    );
    let state = &broadcasts(&fx)[0];
    assert_eq!(state["type"], "playback.state");
    assert_eq!(state["at"].as_f64().unwrap(), h.now - 50.0);
}

/// Two members, the host `a` on 1 and `b` on 2; the host loads a video.
fn loaded(cfg: RoomsConfig) -> Harness {
    let mut h = harness(cfg);
    h.join(1, "a");
    h.join(2, "b");
    let fx = h.msg(
        1,
        json!({"type": "playback.command", "action": "load", "media": {"url": "https://v/1"}}),
    );
    let state = &broadcasts(&fx)[0];
    assert_eq!(state["waiting"], true);
    assert_eq!(state["paused"], true);
    h
}

#[test]
fn ready_barrier_starts_once_every_member_is_ready() {
    let mut h = loaded(RoomsConfig::default());
    let ready = json!({"type": "playback.report", "position": 0.0, "state": "ready", "at": 0.0});
    let fx = h.msg(1, ready.clone());
    assert!(of_type(&broadcasts(&fx), "playback.state").is_empty());
    h.advance(100.0);
    let fx = h.msg(2, ready);
    let state = &broadcasts(&fx)[0];
    assert_eq!(state["reason"], "ready");
    assert_eq!(state["paused"], false);
    assert_eq!(
        state["at"].as_f64().unwrap(),
        h.now + h.cfg.start_lead_ms as f64
    );
}

#[test]
fn ready_barrier_starts_without_the_late_at_its_timeout() {
    let mut h = loaded(RoomsConfig::default());
    let ready = json!({"type": "playback.report", "position": 0.0, "state": "ready", "at": 0.0});
    h.msg(1, ready);
    h.advance(h.cfg.ready_timeout_ms as f64 - 1.0);
    assert!(of_type(&broadcasts(&h.tick()), "playback.state").is_empty());
    h.advance(1.0);
    let fx = h.tick();
    let states = broadcasts(&fx);
    let state = of_type(&states, "playback.state")[0];
    assert_eq!(state["reason"], "ready");
    assert_eq!(state["paused"], false);
}

/// The host `a` (1) and `b` (2) playing from 0 for `ms` (past the settling time).
fn playing_for(ms: f64) -> Harness {
    let mut h = harness(RoomsConfig::default());
    h.join(1, "a");
    h.join(2, "b");
    h.msg(
        1,
        json!({"type": "playback.command", "action": "play", "position": 0.0}),
    );
    h.advance(ms);
    h
}

fn report(position: f64, at: f64) -> Value {
    json!({"type": "playback.report", "position": position, "state": "playing", "at": at})
}

#[test]
fn host_drift_past_the_threshold_corrects_the_room() {
    let mut h = playing_for(2000.0);
    let fx = h.msg(1, report(2.5, h.now));
    let state = &broadcasts(&fx)[0];
    assert_eq!(state["reason"], "correction");
    assert_eq!(state["position"], 2.5);
    assert_eq!(state["at"].as_f64().unwrap(), h.now);
}

#[test]
fn host_drift_within_the_threshold_changes_nothing() {
    let mut h = playing_for(2000.0);
    let fx = h.msg(1, report(2.03, h.now));
    assert!(broadcasts(&fx).is_empty());
}

#[test]
fn viewer_drift_gets_a_nudge_hint_only_to_that_viewer() {
    let mut h = playing_for(2000.0);
    let fx = h.msg(2, report(2.1, h.now));
    assert!(broadcasts(&fx).is_empty());
    let hint = &sent(&fx, 2)[0];
    assert_eq!(hint["type"], "sync.hint");
    assert_eq!(hint["action"], "nudge");
    assert!((hint["drift_ms"].as_f64().unwrap() - 100.0).abs() < 1e-6);
}

#[test]
fn viewer_far_off_gets_a_seek_hint() {
    let mut h = playing_for(2000.0);
    let fx = h.msg(2, report(5.0, h.now));
    assert_eq!(sent(&fx, 2)[0]["action"], "seek");
}

#[test]
fn host_keeps_the_role_through_the_grace_period() {
    let mut h = harness(RoomsConfig::default());
    h.join(1, "a");
    h.join(2, "b");
    h.input(Input::Leave {
        conn: 1,
        clean: false,
    });
    h.advance(h.cfg.grace_period_ms as f64 - 1.0);
    let fx = h.tick();
    assert!(of_type(&broadcasts(&fx), "host.changed").is_empty());
}

#[test]
fn host_role_passes_on_when_the_grace_period_ends() {
    let mut h = harness(RoomsConfig::default());
    h.join(1, "a");
    h.join(2, "b");
    h.input(Input::Leave {
        conn: 1,
        clean: false,
    });
    h.advance(h.cfg.grace_period_ms as f64);
    let fx = h.tick();
    let all = broadcasts(&fx);
    let changed = of_type(&all, "host.changed")[0];
    assert_eq!(changed["host"], "b");
    assert_eq!(changed["reason"], "timeout");
    assert_eq!(of_type(&all, "playback.state")[0]["host"], "b");
}

/// `b` (2) dropped after `a` (1) and `b` joined; then `a` changed the settings
/// `n` times. Returns b's welcome and the seq b had seen.
fn dropped_then(h: &mut Harness, n: usize) -> (Value, u64) {
    h.join(1, "a");
    let welcome = h.join(2, "b");
    let last_seq = welcome["room"]["seq"].as_u64().unwrap();
    h.input(Input::Leave {
        conn: 2,
        clean: false,
    });
    for i in 0..n {
        h.msg(1, json!({"type": "room.settings", "slow_mode_ms": i}));
    }
    (welcome, last_seq)
}

fn resume(h: &mut Harness, conn: u64, welcome: &Value, last_seq: u64) -> Vec<Effect> {
    h.input(Input::Join {
        conn,
        ident: ident("b"),
        resume: Some(Resume {
            session: welcome["session"].as_str().unwrap().into(),
            last_seq,
            resume_token: welcome["resume_token"].as_str().map(Into::into),
        }),
        user: UserInfo::default(),
    })
}

#[test]
fn resume_replays_what_was_missed_from_the_log() {
    let mut h = harness(RoomsConfig::default());
    let (welcome, last_seq) = dropped_then(&mut h, 2);
    let fx = resume(&mut h, 3, &welcome, last_seq);
    let got = sent(&fx, 3);
    assert_eq!(got[0]["type"], "resumed");
    assert_eq!(got[0]["session"], welcome["session"]);
    // b's own presence.update (disconnected), then the two settings.
    assert_eq!(got[0]["replayed"], 3);
    let seqs: Vec<u64> = got[1..]
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [last_seq + 1, last_seq + 2, last_seq + 3]);
    assert!(fx.iter().any(|e| matches!(e, Effect::Joined { conn: 3 })));
}

#[test]
fn resume_past_the_log_falls_back_to_a_fresh_welcome() {
    let mut h = harness(RoomsConfig {
        log_size: 2,
        ..RoomsConfig::default()
    });
    let (welcome, last_seq) = dropped_then(&mut h, 3);
    let fx = resume(&mut h, 3, &welcome, last_seq);
    let got = sent(&fx, 3);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["type"], "welcome");
    assert_eq!(got[0]["session"], welcome["session"]);
}

fn chat(id: &str) -> Value {
    json!({"type": "chat.send", "text": "hi", "client_msg_id": id})
}

#[test]
fn chat_is_stored_and_fanned_out_exactly_once() {
    let mut h = harness(RoomsConfig::default());
    h.join(1, "a");
    let ops = store_ops(h.msg(1, chat("c1")));
    assert!(matches!(&ops[..], [StoreOp::InsertChat { .. }]));
    // Sent again while the first is being stored: nothing more is stored.
    assert!(store_ops(h.msg(1, chat("c1"))).is_empty());
    let StoreOp::InsertChat { conn, key, r, .. } = ops.into_iter().next().unwrap() else {
        unreachable!()
    };
    let stored = Stored::Inserted {
        conn,
        key: key.clone(),
        r: r.clone(),
        res: Ok(Inserted::New(record(1, "a", "c1"))),
    };
    let fx = h.input(Input::Stored(stored));
    assert_eq!(of_type(&broadcasts(&fx), "chat.message").len(), 1);
    // Sent again later: the store finds it; only the sender hears, marked duplicate.
    assert_eq!(store_ops(h.msg(1, chat("c1"))).len(), 1);
    let stored = Stored::Inserted {
        conn,
        key,
        r,
        res: Ok(Inserted::Duplicate(record(1, "a", "c1"))),
    };
    let fx = h.input(Input::Stored(stored));
    assert!(broadcasts(&fx).is_empty());
    let answer = &sent(&fx, 1)[0];
    assert_eq!(answer["duplicate"], true);
    assert_eq!(answer["id"], "1");
}

#[test]
fn chat_rate_limit_refuses_past_the_count_until_the_window_moves() {
    let mut h = harness(RoomsConfig::default());
    h.join(1, "a");
    let count = h.cfg.chat_rate_count as usize;
    for i in 0..count {
        assert_eq!(store_ops(h.msg(1, chat(&format!("c{i}")))).len(), 1);
    }
    h.advance(1000.0);
    let fx = h.msg(1, chat("over"));
    let err = &sent(&fx, 1)[0];
    assert_eq!(err["code"], "rate_limited");
    assert_eq!(
        err["retry_after_ms"].as_u64().unwrap(),
        h.cfg.chat_rate_window_ms - 1000
    );
    h.advance(h.cfg.chat_rate_window_ms as f64 - 1000.0);
    assert_eq!(store_ops(h.msg(1, chat("later"))).len(), 1);
}

#[test]
fn slow_mode_spaces_a_viewers_messages_but_not_the_hosts() {
    let mut h = harness(RoomsConfig::default());
    h.join(1, "a");
    h.join(2, "b");
    h.msg(1, json!({"type": "room.settings", "slow_mode_ms": 10_000}));
    assert_eq!(store_ops(h.msg(2, chat("b1"))).len(), 1);
    assert_eq!(store_ops(h.msg(1, chat("a1"))).len(), 1);
    h.advance(1000.0);
    let fx = h.msg(2, chat("b2"));
    let err = &sent(&fx, 2)[0];
    assert_eq!(err["code"], "rate_limited");
    assert_eq!(err["message"], "slow mode is on");
    assert_eq!(err["retry_after_ms"], 9000);
    assert_eq!(store_ops(h.msg(1, chat("a2"))).len(), 1);
}

// ---- calls: call.state and call.mute ---------------------------------------------

/// A call of the host `h` (moderator, 1) and the participant `s` (2); the
/// participant joined first, so it holds the room's host role.
fn call() -> Harness {
    let mut h = harness(RoomsConfig::default());
    h.join(2, "s");
    h.input(Input::Join {
        conn: 1,
        ident: Identity {
            moderator: true,
            ..ident("h")
        },
        resume: None,
        user: UserInfo::default(),
    });
    h
}

fn updates(fx: &[Effect]) -> Vec<Value> {
    of_type(&broadcasts(fx), "presence.update")
        .into_iter()
        .cloned()
        .collect()
}

#[test]
fn call_state_is_fanned_out_as_the_members_media() {
    let mut h = call();
    let fx = h.msg(2, json!({"type": "call.state", "muted": true}));
    let up = updates(&fx);
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0]["member"]["id"], "s");
    assert_eq!(
        up[0]["member"]["media"],
        json!({"muted": true, "camera_off": false, "speaking": false})
    );
}

#[test]
fn members_that_never_sent_call_state_have_no_media_field() {
    let mut h = harness(RoomsConfig::default());
    h.join(1, "a");
    let fx = h.input(Input::Join {
        conn: 2,
        ident: ident("b"),
        resume: None,
        user: UserInfo::default(),
    });
    let join = &broadcasts(&fx)[0];
    assert!(join["member"].get("media").is_none(), "{join}");
    let welcome = &sent(&fx, 2)[0];
    for m in welcome["room"]["members"].as_array().unwrap() {
        assert!(m.get("media").is_none(), "{m}");
    }
}

#[test]
fn a_late_joiner_sees_who_is_muted_in_its_welcome() {
    let mut h = call();
    h.msg(
        2,
        json!({"type": "call.state", "muted": true, "camera_off": true}),
    );
    let welcome = h.join(3, "late");
    let members = welcome["room"]["members"].as_array().unwrap();
    let s = members.iter().find(|m| m["id"] == "s").unwrap();
    assert_eq!(
        s["media"],
        json!({"muted": true, "camera_off": true, "speaking": false})
    );
    let host = members.iter().find(|m| m["id"] == "h").unwrap();
    assert!(host.get("media").is_none(), "{host}");
}

#[test]
fn call_state_fields_left_out_keep_their_value() {
    let mut h = call();
    h.msg(2, json!({"type": "call.state", "muted": true}));
    h.advance(h.cfg.call_state_interval_ms as f64);
    let fx = h.msg(2, json!({"type": "call.state", "speaking": true}));
    assert_eq!(
        updates(&fx)[0]["member"]["media"],
        json!({"muted": true, "camera_off": false, "speaking": true})
    );
}

#[test]
fn speaking_flips_within_the_interval_leave_once_with_the_latest_state() {
    let mut h = call();
    let interval = h.cfg.call_state_interval_ms as f64;
    assert_eq!(
        updates(&h.msg(2, json!({"type": "call.state", "speaking": true}))).len(),
        1
    );
    // Eight flips in the next interval: none goes out by itself.
    for i in 0..8 {
        h.advance(interval / 10.0);
        let speaking = i % 2 == 0; // sends false, true, …, true
        let fx = h.msg(2, json!({"type": "call.state", "speaking": !speaking}));
        assert!(updates(&fx).is_empty(), "flip {i}");
    }
    // Ended on speaking=true, what the others know: nothing to tell.
    h.advance(interval);
    assert!(updates(&h.tick()).is_empty());
    // One more change within the interval waits for the timer, then leaves once.
    let fx = h.msg(2, json!({"type": "call.state", "speaking": false}));
    assert_eq!(updates(&fx).len(), 1);
    h.advance(interval / 5.0);
    h.msg(2, json!({"type": "call.state", "speaking": true}));
    h.advance(interval / 5.0);
    h.msg(
        2,
        json!({"type": "call.state", "muted": true, "speaking": false}),
    );
    assert!(updates(&h.tick()).is_empty(), "before the interval");
    h.advance(interval);
    let up = updates(&h.tick());
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(
        up[0]["member"]["media"],
        json!({"muted": true, "camera_off": false, "speaking": false})
    );
    assert!(updates(&h.tick()).is_empty(), "told once");
}

#[test]
fn call_state_passes_the_per_connection_rate_bucket() {
    let mut h = harness(RoomsConfig {
        messages_burst: 3.0,
        messages_per_second: 1.0,
        ..RoomsConfig::default()
    });
    h.join(1, "a");
    for _ in 0..3 {
        assert!(
            sent(
                &h.msg(1, json!({"type": "call.state", "speaking": true})),
                1
            )
            .is_empty()
        );
    }
    let fx = h.msg(1, json!({"type": "call.state", "muted": true}));
    assert_eq!(sent(&fx, 1)[0]["code"], "rate_limited");
    assert!(broadcasts(&fx).is_empty());
}

#[test]
fn a_host_mutes_a_member_who_is_told_and_the_room_sees_it_at_once() {
    let mut h = call();
    // s just told the room something: the host's mute does not wait for the interval.
    h.msg(2, json!({"type": "call.state", "speaking": true}));
    let fx = h.msg(
        1,
        json!({"type": "call.mute", "user": "s", "kind": "audio"}),
    );
    assert_eq!(
        sent(&fx, 2),
        [json!({"type": "call.muted", "by": "h", "kind": "audio"})]
    );
    assert!(sent(&fx, 1).is_empty());
    let up = updates(&fx);
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(
        up[0]["member"]["media"],
        json!({"muted": true, "camera_off": false, "speaking": false})
    );
    let fx = h.msg(
        1,
        json!({"type": "call.mute", "user": "s", "kind": "video"}),
    );
    assert_eq!(sent(&fx, 2)[0]["kind"], "video");
    assert_eq!(updates(&fx)[0]["member"]["media"]["camera_off"], true);
}

#[test]
fn call_mute_by_a_non_host_is_forbidden_even_for_the_rooms_host() {
    let mut h = call();
    let welcome = h.join(3, "t");
    assert_eq!(welcome["room"]["host"], "s", "s joined first");
    let fx = h.msg(
        2,
        json!({"type": "call.mute", "user": "t", "kind": "audio"}),
    );
    let err = &sent(&fx, 2)[0];
    assert_eq!(
        (err["code"].as_str(), err["ref"].as_str()),
        (Some("forbidden"), Some("call.mute"))
    );
    assert!(sent(&fx, 3).is_empty());
    assert!(broadcasts(&fx).is_empty());
    assert!(
        h.join(4, "u")["room"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m.get("media").is_none())
    );
}

#[test]
fn call_mute_of_someone_not_connected_is_not_found() {
    let mut h = call();
    let fx = h.msg(
        1,
        json!({"type": "call.mute", "user": "nobody", "kind": "audio"}),
    );
    assert_eq!(sent(&fx, 1)[0]["code"], "not_found");
    assert!(broadcasts(&fx).is_empty());
}

#[test]
fn call_mute_of_an_unknown_kind_is_a_bad_request_and_changes_nothing() {
    let mut h = call();
    let fx = h.msg(
        1,
        json!({"type": "call.mute", "user": "s", "kind": "screen"}),
    );
    assert_eq!(sent(&fx, 1)[0]["code"], "bad_request");
    assert!(sent(&fx, 2).is_empty());
    assert!(broadcasts(&fx).is_empty());
    let fx = h.msg(2, json!({"type": "call.state", "speaking": true}));
    assert_eq!(
        updates(&fx)[0]["member"]["media"]["muted"],
        false,
        "s was not muted"
    );
}

/// Several nodes: another node takes the room over from its snapshot and its log
/// (as the broker keeps them, bytes and JSON). Every member is disconnected with
/// its grace period; one that resumes with `last_seq` gets `resumed` and exactly
/// the broadcasts it missed; the host keeps the role and the state its playback.
#[test]
fn a_room_taken_over_from_its_snapshot_and_log_resumes_its_members() {
    let mut h = harness(RoomsConfig::default());
    let w_host = h.join(1, "hugo");
    h.join(2, "bea");
    h.msg(
        1,
        json!({"type":"playback.command","action":"pause","position":42.0,"at":h.now}),
    );
    let snapshot = serde_json::to_vec(&h.room.snapshot()).unwrap();
    // bea saw up to here; two more broadcasts follow before the owner dies.
    let bea_seq = h.room.seq;
    h.advance(10.0);
    let mut log_after = Vec::new();
    for emoji in ["🎉", "👏"] {
        let fx = h.msg(1, json!({"type":"reaction","emoji":emoji}));
        for e in fx {
            if let Effect::Broadcast { seq, text, .. } = e {
                log_after.push((seq, text));
            }
        }
    }
    let last = h.room.seq;
    let log: Vec<_> = h.room.log.iter().cloned().collect();

    // The new owner.
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    let mut t = Harness {
        room: Room::new("r1", Arc::new(RoomsConfig::default()), metrics, h.now),
        now: h.now + 2000.0,
        cfg: RoomsConfig::default(),
    };
    let snapshot = serde_json::from_slice(&snapshot).unwrap();
    t.input(Input::Restore {
        snapshot: Some(snapshot),
        log,
    });
    t.input(Input::Loaded {
        bans: Vec::new(),
        mutes: Vec::new(),
        chat: Vec::new(),
    });
    assert_eq!(t.room.seq, last, "numbering goes on after the log");
    assert!(t.room.members.iter().all(|m| m.conn.is_none()));

    let fx = t.input(Input::Join {
        conn: 7,
        ident: ident("bea"),
        resume: Some(Resume {
            session: h.room.members[1].session.clone(),
            last_seq: bea_seq,
            resume_token: Some(h.room.members[1].resume_token.clone()),
        }),
        user: UserInfo::default(),
    });
    let got = sent(&fx, 7);
    assert_eq!(got[0]["type"], "resumed", "{got:?}");
    assert_eq!(got[0]["seq"].as_u64(), Some(last));
    let replayed: Vec<u64> = got[1..]
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    let missed: Vec<u64> = log_after.iter().map(|(s, _)| *s).collect();
    assert_eq!(replayed, missed, "exactly what bea missed");

    // The host resumes as the host; a newcomer's welcome shows the paused state.
    let fx = t.input(Input::Join {
        conn: 8,
        ident: ident("hugo"),
        resume: Some(Resume {
            session: w_host["session"].as_str().unwrap().into(),
            last_seq: last,
            resume_token: w_host["resume_token"].as_str().map(String::from),
        }),
        user: UserInfo::default(),
    });
    assert_eq!(sent(&fx, 8)[0]["you"]["role"], "host");
    let w = t.join(9, "cleo");
    assert_eq!(w["room"]["host"], "hugo");
    assert_eq!(w["room"]["playback"]["paused"], true);
    assert_eq!(w["room"]["playback"]["position"], 42.0);
    assert_eq!(w["room"]["member_count"], 3);
}

/// A member that does not come back within its grace period after a take-over
/// is removed like any disconnected member.
#[test]
fn a_restored_member_that_never_resumes_leaves_after_its_grace() {
    let mut h = harness(RoomsConfig::default());
    h.join(1, "hugo");
    h.join(2, "bea");
    let snapshot =
        serde_json::from_slice(&serde_json::to_vec(&h.room.snapshot()).unwrap()).unwrap();
    let cfg = RoomsConfig::default();
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    let mut t = Harness {
        room: Room::new("r1", Arc::new(cfg.clone()), metrics, h.now),
        now: h.now,
        cfg,
    };
    t.input(Input::Restore {
        snapshot: Some(snapshot),
        log: Vec::new(),
    });
    t.join(3, "cleo");
    t.advance(t.cfg.grace_period_ms as f64 + t.cfg.tick_ms as f64);
    let fx = t.tick();
    let left: Vec<String> = of_type(&broadcasts(&fx), "presence.leave")
        .iter()
        .map(|v| v["member"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(t.room.members.len(), 1);
}
