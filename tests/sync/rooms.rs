//! Watch Together rooms end to end: real WebSocket clients against a spawned server
//! (SYNC_PROTOCOL.md behaviour: late join, hand-over, resume, errors, limits, moderation).

use crate::support::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn chat(cmid: &str, text: &str) -> Value {
    json!({"type":"chat.send","text":text,"client_msg_id":cmid})
}

#[tokio::test]
async fn upgrade_without_a_valid_token_is_401() {
    let dir = TempDir::new("sync");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    for url in [
        format!("{}/v1/rooms/r1/ws", s.ws_base),
        format!("{}/v1/rooms/r1/ws?token=garbage", s.ws_base),
        s.ws_url("r1", &s.room_token("other-room", "u", false)),
    ] {
        match Client::open(&url, 0.0).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 401, "{url}")
            }
            Err(e) => panic!("expected HTTP 401 for {url}, got {e}"),
            Ok(_) => panic!("upgrade accepted for {url}"),
        }
    }
    // The /.proxy prefix (Discord Activity) answers too.
    let t = s.room_token("r1", "u", false);
    let url = format!("{}/.proxy/v1/rooms/r1/ws?token={t}", s.ws_base);
    let c = Client::connect(&url, 0.0, None).await;
    assert_eq!(c.welcome["type"], "welcome");
    assert_eq!(c.welcome["you"]["role"], "host");
    s.shutdown().await;
}

#[tokio::test]
async fn late_join_gets_the_extrapolated_position() {
    let dir = TempDir::new("sync");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let mut host = Client::connect(
        &s.ws_url("late", &s.room_token("late", "h", false)),
        0.0,
        None,
    )
    .await;
    host.sync_clock().await;
    host.answered(3).await;
    let sent_at = host.local_now();
    host.send(
        json!({"type":"playback.command","action":"play","position":10.0,"rate":1.5,"at":sent_at}),
    )
    .await;
    let st = host.wait_type("playback.state").await;
    assert_eq!(st["paused"], false);
    assert_eq!(st["host"], "h");

    // A viewer with a clock 2.5 s behind joins later; only the welcome tells it anything.
    let mut v = Client::connect(
        &s.ws_url("late", &s.room_token("late", "v", false)),
        -2500.0,
        None,
    )
    .await;
    v.sync_clock().await;
    let pb = v.welcome["room"]["playback"].clone();
    assert_eq!(pb["rate"], 1.5);
    let true_now = now_ms();
    let expected = 10.0 + (true_now - sent_at) / 1000.0 * 1.5;
    let got = v.position(&pb, true_now + v.skew);
    assert!(
        (got - expected).abs() < 0.015,
        "late joiner computes {got}, expected {expected}"
    );
    assert_eq!(v.welcome["room"]["members"].as_array().unwrap().len(), 2);
    s.shutdown().await;
}

#[tokio::test]
async fn host_disconnect_hands_over_after_the_grace_period() {
    let dir = TempDir::new("sync");
    let grace = 400.0;
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(|c| c.rooms.grace_period_ms = 400)
        .spawn()
        .await;
    let room = "handover";
    let host = Client::connect(
        &s.ws_url(room, &s.room_token(room, "alice", false)),
        0.0,
        None,
    )
    .await;
    let mut bob = Client::connect(
        &s.ws_url(room, &s.room_token(room, "bob", false)),
        0.0,
        None,
    )
    .await;
    let mut carol = Client::connect(
        &s.ws_url(room, &s.room_token(room, "carol", false)),
        0.0,
        None,
    )
    .await;
    assert_eq!(bob.welcome["room"]["host"], "alice");
    drop(host); // TCP gone, no close frame: the host may come back within the grace period
    let down = bob
        .wait_for(|v| v["type"] == "presence.update" && v["member"]["id"] == "alice")
        .await;
    let t_down = now_ms();
    assert_eq!(down["member"]["connected"], false);
    let changed = bob.wait_type("host.changed").await;
    let waited = now_ms() - t_down;
    assert_eq!(changed["reason"], "timeout");
    assert_eq!(
        changed["host"], "bob",
        "the longest-present member takes over"
    );
    assert!(
        waited >= grace - 60.0,
        "hand-over after {waited} ms, grace is {grace}"
    );
    let c = carol.wait_type("host.changed").await;
    assert_eq!(c["host"], "bob");
    // The new host can command; carol still cannot.
    carol
        .send(json!({"type":"playback.command","action":"pause","position":1.0,"at":carol.local_now(),"client_msg_id":"c-1"}))
        .await;
    let e = carol.wait_type("error").await;
    assert_eq!(e["code"], "not_host");
    assert_eq!(e["ref"], "c-1");
    bob.send(
        json!({"type":"playback.command","action":"seek","position":7.0,"at":bob.local_now()}),
    )
    .await;
    let st = carol.wait_type("playback.state").await;
    assert_eq!(st["position"], 7.0);
    assert_eq!(st["by"], "bob");
    s.shutdown().await;
}

#[tokio::test]
async fn resume_replays_every_missed_event_exactly_once() {
    let dir = TempDir::new("sync");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let room = "resume";
    let mut host =
        Client::connect(&s.ws_url(room, &s.room_token(room, "h", false)), 0.0, None).await;
    let mut v = Client::connect(&s.ws_url(room, &s.room_token(room, "v", false)), 0.0, None).await;
    host.wait_type("presence.join").await;
    v.send(chat("v-1", "before the drop")).await;
    v.wait_type("chat.message").await;
    let resume = v.resume();
    drop(v);
    host.wait_for(|m| m["type"] == "presence.update" && m["member"]["connected"] == false)
        .await;
    // While v is away: chat, state changes.
    for i in 0..3 {
        host.send(chat(&format!("h-{i}"), &format!("missed {i}")))
            .await;
        host.wait_for(|m| m["type"] == "chat.message" && m["client_msg_id"] == format!("h-{i}"))
            .await;
    }
    host.send(
        json!({"type":"playback.command","action":"seek","position":30.0,"at":host.local_now()}),
    )
    .await;
    host.wait_type("playback.state").await;
    host.send(json!({"type":"playback.command","action":"rate","rate":1.25,"at":host.local_now()}))
        .await;
    let last = host.wait_type("playback.state").await;
    let head = last["seq"].as_u64().unwrap();

    let mut v = Client::connect(
        &s.ws_url(room, &s.room_token(room, "v", false)),
        0.0,
        Some(resume.clone()),
    )
    .await;
    assert_eq!(v.welcome["type"], "resumed");
    assert_eq!(v.welcome["session"], resume["session"]);
    assert_eq!(v.welcome["seq"].as_u64().unwrap(), head);
    let from = resume["last_seq"].as_u64().unwrap();
    let n = (head - from) as usize;
    assert_eq!(v.welcome["replayed"].as_u64().unwrap() as usize, n);
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(v.next().await);
    }
    let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        ((from + 1)..=head).collect::<Vec<_>>(),
        "contiguous, no duplicates"
    );
    let texts: Vec<&str> = got
        .iter()
        .filter(|m| m["type"] == "chat.message")
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["missed 0", "missed 1", "missed 2"]);
    let states: Vec<&Value> = got
        .iter()
        .filter(|m| m["type"] == "playback.state")
        .collect();
    assert_eq!(states.len(), 2);
    assert_eq!(states[1]["rate"], 1.25);
    // Back online (one presence.update, after the replay), and nothing is sent twice.
    let back = v.next().await;
    assert_eq!(back["type"], "presence.update");
    assert_eq!(back["member"]["connected"], true);
    assert_eq!(back["seq"].as_u64().unwrap(), head + 1);
    host.send(chat("h-after", "after")).await;
    let m = v.wait_type("chat.message").await;
    assert_eq!(m["text"], "after");
    assert_eq!(m["seq"].as_u64().unwrap(), head + 2);
    assert!(
        s.registry_metrics()
            .contains("tandem_room_resumes_total{result=\"replayed\"} 1")
    );
    s.shutdown().await;
}

#[tokio::test]
async fn resume_past_the_log_gets_a_fresh_welcome() {
    let dir = TempDir::new("sync");
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(|c| c.rooms.log_size = 3)
        .spawn()
        .await;
    let room = "short-log";
    let mut host =
        Client::connect(&s.ws_url(room, &s.room_token(room, "h", false)), 0.0, None).await;
    let v = Client::connect(&s.ws_url(room, &s.room_token(room, "v", false)), 0.0, None).await;
    let resume = v.resume();
    drop(v);
    for i in 0..5 {
        host.send(chat(&format!("h-{i}"), "x")).await;
        host.wait_for(|m| m["type"] == "chat.message" && m["client_msg_id"] == format!("h-{i}"))
            .await;
    }
    let v = Client::connect(
        &s.ws_url(room, &s.room_token(room, "v", false)),
        0.0,
        Some(resume.clone()),
    )
    .await;
    assert_eq!(v.welcome["type"], "welcome");
    assert_eq!(v.welcome["session"], resume["session"], "same session");
    assert_eq!(v.welcome["chat"].as_array().unwrap().len(), 5);
    s.shutdown().await;
}

#[tokio::test]
async fn bad_input_is_answered_and_the_connection_stays_usable() {
    let dir = TempDir::new("sync");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let room = "bad";
    let mut c = Client::connect(&s.ws_url(room, &s.room_token(room, "u", false)), 0.0, None).await;
    let seq0 = c.welcome["room"]["seq"].as_u64().unwrap();
    c.send_raw(Message::text("{not json")).await;
    let e = c.wait_type("error").await;
    assert_eq!(e["code"], "bad_request");
    c.send(json!({"type":"teleport"})).await;
    let e = c.wait_type("error").await;
    assert_eq!(e["code"], "unknown_type");
    assert_eq!(e["ref"], "teleport");
    c.send(json!({"type":"playback.command","action":"seek","position":-3,"at":1.0}))
        .await;
    assert_eq!(c.wait_type("error").await["code"], "bad_request");
    c.send(json!({"type":"chat.send","text":"x".repeat(501),"client_msg_id":"long"}))
        .await;
    let e = c.wait_type("error").await;
    assert_eq!(e["code"], "too_large");
    assert_eq!(e["ref"], "long");
    c.send(json!({"type":"chat.delete","id":"999"})).await;
    assert_eq!(c.wait_type("error").await["code"], "not_found");
    // Nothing changed in the room, and the connection works.
    c.send(chat("ok", "still here")).await;
    let m = c.wait_type("chat.message").await;
    assert_eq!(m["seq"].as_u64().unwrap(), seq0 + 1);
    s.shutdown().await;
}

#[tokio::test]
async fn oversize_frame_closes_with_1009() {
    let dir = TempDir::new("sync");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let mut c = Client::connect(
        &s.ws_url("big", &s.room_token("big", "u", false)),
        0.0,
        None,
    )
    .await;
    let big = json!({"type":"chat.send","text":"y".repeat(17 * 1024),"client_msg_id":"b"});
    c.send(big).await;
    assert_eq!(c.closed().await, Some(1009));
    s.shutdown().await;
}

#[tokio::test]
async fn non_host_commands_and_settings_get_not_host() {
    let dir = TempDir::new("sync");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let room = "ctl";
    let mut host =
        Client::connect(&s.ws_url(room, &s.room_token(room, "h", false)), 0.0, None).await;
    let mut v = Client::connect(&s.ws_url(room, &s.room_token(room, "v", false)), 0.0, None).await;
    v.send(json!({"type":"playback.command","action":"play","position":0,"at":v.local_now()}))
        .await;
    let e = v.wait_type("error").await;
    assert_eq!(e["code"], "not_host");
    v.send(json!({"type":"room.settings","control":"everyone"}))
        .await;
    assert_eq!(v.wait_type("error").await["code"], "not_host");
    // control: everyone lets the viewer command.
    host.send(json!({"type":"room.settings","control":"everyone"}))
        .await;
    v.wait_type("room.settings").await;
    v.send(json!({"type":"playback.command","action":"pause","position":3.0,"at":v.local_now()}))
        .await;
    let st = host.wait_type("playback.state").await;
    assert_eq!(st["by"], "v");
    assert_eq!(st["position"], 3.0);
    // Transfer: only the host hands on the role.
    v.send(json!({"type":"host.transfer","to":"v"})).await;
    assert_eq!(v.wait_type("error").await["code"], "not_host");
    host.send(json!({"type":"host.transfer","to":"v"})).await;
    let hc = v.wait_type("host.changed").await;
    assert_eq!(hc["host"], "v");
    assert_eq!(hc["reason"], "transfer");
    s.shutdown().await;
}

#[tokio::test]
async fn chat_rate_limit_and_slow_mode_answer_rate_limited() {
    let dir = TempDir::new("sync");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let room = "rl";
    let mut host =
        Client::connect(&s.ws_url(room, &s.room_token(room, "h", false)), 0.0, None).await;
    let mut v = Client::connect(&s.ws_url(room, &s.room_token(room, "v", false)), 0.0, None).await;
    for i in 0..5 {
        v.send(chat(&format!("v{i}"), "hi")).await;
        v.wait_for(|m| m["type"] == "chat.message" && m["client_msg_id"] == format!("v{i}"))
            .await;
    }
    v.send(chat("v5", "one too many")).await;
    let e = v.wait_type("error").await;
    assert_eq!(e["code"], "rate_limited");
    assert_eq!(e["ref"], "v5");
    let retry = e["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 0 && retry <= 5000, "{retry}");

    host.send(json!({"type":"room.settings","slow_mode_ms":60000}))
        .await;
    let st = host.wait_type("room.settings").await;
    assert_eq!(st["slow_mode_ms"], 60000);
    let mut w = Client::connect(&s.ws_url(room, &s.room_token(room, "w", false)), 0.0, None).await;
    assert_eq!(w.welcome["room"]["slow_mode_ms"], 60000);
    w.send(chat("w1", "first")).await;
    w.wait_type("chat.message").await;
    w.send(chat("w2", "second")).await;
    let e = w.wait_type("error").await;
    assert_eq!(e["code"], "rate_limited");
    let retry = e["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 50_000 && retry <= 60_000, "{retry}");
    // The host is not held by slow mode.
    host.send(chat("h1", "a")).await;
    host.send(chat("h2", "b")).await;
    host.wait_for(|m| m["type"] == "chat.message" && m["client_msg_id"] == "h2")
        .await;
    s.shutdown().await;
}

#[tokio::test]
async fn delete_mute_ban_propagate_and_persist() {
    let dir = TempDir::new("sync");
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(|c| c.rooms.blocked_words = vec!["frobnicate".into()])
        .spawn()
        .await;
    let room = "mod";
    let host = Client::connect(&s.ws_url(room, &s.room_token(room, "h", false)), 0.0, None).await;
    let mut b = Client::connect(
        &s.ws_url(room, &s.room_token(room, "bob", false)),
        0.0,
        None,
    )
    .await;
    let mut c = Client::connect(
        &s.ws_url(room, &s.room_token(room, "carol", false)),
        0.0,
        None,
    )
    .await;

    c.send(chat("c-bad", "please FROBNICATE now")).await;
    let e = c.wait_type("error").await;
    assert_eq!(e["code"], "forbidden");
    assert!(e["message"].as_str().unwrap().contains("blocked"));

    b.send(chat("b1", "delete me")).await;
    let m = c.wait_type("chat.message").await;
    let id = m["id"].as_str().unwrap().to_string();
    c.send(json!({"type":"chat.delete","id":id})).await;
    assert_eq!(c.wait_type("error").await["code"], "forbidden");
    host.send(json!({"type":"chat.delete","id":id})).await;
    for cl in [&mut b, &mut c] {
        let d = cl.wait_type("chat.deleted").await;
        assert_eq!(d["id"], id.as_str());
        assert_eq!(d["by"], "h");
    }
    c.send(json!({"type":"chat.history"})).await;
    let page = c.wait_type("chat.page").await;
    assert!(page["messages"].as_array().unwrap().is_empty());

    // Viewers cannot moderate.
    c.send(json!({"type":"member.mute","user":"bob","seconds":60}))
        .await;
    assert_eq!(c.wait_type("error").await["code"], "forbidden");

    host.send(json!({"type":"member.mute","user":"carol","seconds":600}))
        .await;
    for cl in [&mut b, &mut c] {
        let m = cl.wait_type("member.muted").await;
        assert_eq!(m["user"], "carol");
    }
    c.send(chat("c1", "can I talk?")).await;
    let e = c.wait_type("error").await;
    assert_eq!(e["code"], "muted");
    assert!(e["retry_after_ms"].as_u64().unwrap() > 590_000);

    host.send(json!({"type":"member.ban","user":"bob","reason":"spam"}))
        .await;
    let banned = c.wait_type("member.banned").await;
    assert_eq!(banned["user"], "bob");
    assert_eq!(b.wait_type("member.banned").await["user"], "bob");
    assert_eq!(b.closed().await, Some(4003));
    let left = c.wait_type("presence.leave").await;
    assert_eq!(left["member"]["id"], "bob");
    let metrics = s.registry_metrics();
    for action in ["delete", "mute", "ban"] {
        assert!(
            metrics.contains(&format!(
                "tandem_moderation_actions_total{{action=\"{action}\"}} 1"
            )),
            "{action}"
        );
    }
    drop(c);
    drop(host);

    // Restart: the ban and the mute are still there.
    s.shutdown().await;
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let mut b = Client::open(&s.ws_url(room, &s.room_token(room, "bob", false)), 0.0)
        .await
        .unwrap();
    b.send(json!({"type":"hello"})).await;
    let e = b.next().await;
    assert_eq!(e["code"], "banned");
    assert_eq!(b.closed().await, Some(4003));
    let mut c = Client::connect(
        &s.ws_url(room, &s.room_token(room, "carol", false)),
        0.0,
        None,
    )
    .await;
    assert!(c.welcome["you"]["muted_until"].as_f64().unwrap() > now_ms());
    c.send(chat("c2", "and now?")).await;
    assert_eq!(c.wait_type("error").await["code"], "muted");
    s.shutdown().await;
}

#[tokio::test]
async fn a_moderator_can_take_the_host_role_and_moderate() {
    let dir = TempDir::new("sync");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let room = "modtake";
    let _host = Client::connect(&s.ws_url(room, &s.room_token(room, "h", false)), 0.0, None).await;
    let mut m = Client::connect(&s.ws_url(room, &s.room_token(room, "mod", true)), 0.0, None).await;
    assert_eq!(m.welcome["you"]["role"], "moderator");
    m.send(json!({"type":"host.transfer","to":"mod"})).await;
    let hc = m.wait_type("host.changed").await;
    assert_eq!(hc["host"], "mod");
    s.shutdown().await;
}

#[tokio::test]
async fn room_and_member_limits_say_which() {
    let dir = TempDir::new("sync");
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(|c| {
            c.rooms.max_members_per_room = 1;
            c.rooms.max_rooms = 1;
        })
        .spawn()
        .await;
    let _a = Client::connect(
        &s.ws_url("one", &s.room_token("one", "a", false)),
        0.0,
        None,
    )
    .await;
    let mut b = Client::open(&s.ws_url("one", &s.room_token("one", "b", false)), 0.0)
        .await
        .unwrap();
    b.send(json!({"type":"hello"})).await;
    assert_eq!(b.next().await["code"], "room_full");
    assert_eq!(b.closed().await, Some(1013));
    let mut c = Client::open(&s.ws_url("two", &s.room_token("two", "c", false)), 0.0)
        .await
        .unwrap();
    c.send(json!({"type":"hello"})).await;
    assert_eq!(c.next().await["code"], "server_full");
    s.shutdown().await;
}

#[tokio::test]
async fn a_stalled_reader_is_disconnected_while_the_others_keep_receiving() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let dir = TempDir::new("sync");
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(|c| {
            c.rooms.queue_depth = 8;
            c.rooms.messages_per_second = 100000.0;
            c.rooms.messages_burst = 100000.0;
        })
        .spawn()
        .await;
    let room = "stall";
    let mut host =
        Client::connect(&s.ws_url(room, &s.room_token(room, "h", false)), 0.0, None).await;
    let mut v = Client::connect(&s.ws_url(room, &s.room_token(room, "v", false)), 0.0, None).await;

    // The staller: a tiny receive buffer, says hello, then never reads again.
    let url = s.ws_url(room, &s.room_token(room, "staller", false));
    let addr = s.running.as_ref().unwrap().http_addr;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(url.into_client_request().unwrap(), tcp)
        .await
        .unwrap();
    stalled
        .send(Message::text(json!({"type":"hello"}).to_string()))
        .await
        .unwrap();
    host.wait_for(|m| m["type"] == "presence.join" && m["member"]["id"] == "staller")
        .await;

    let title = "t".repeat(8 * 1024);
    let mut sent = 0u64;
    let mut gone = false;
    while !gone {
        assert!(sent < 5000, "the stalled reader was never disconnected");
        sent += 1;
        host.send(
            json!({"type":"playback.command","action":"load","position":sent as f64,
            "media":{"id":format!("m{sent}"),"url":"/v.mp4","title":title},"at":host.local_now()}),
        )
        .await;
        // The host awaits its own echo, so the room has fanned out this broadcast.
        host.wait_for(|m| m["type"] == "playback.state" && m["media"]["id"] == format!("m{sent}"))
            .await;
        gone = host.drain().iter().any(|m| {
            m["type"] == "presence.update"
                && m["member"]["id"] == "staller"
                && m["member"]["connected"] == false
        }) || v.drain().iter().any(|m| {
            m["type"] == "presence.update"
                && m["member"]["id"] == "staller"
                && m["member"]["connected"] == false
        });
    }
    // The viewer kept receiving every broadcast, in order.
    host.send(
        json!({"type":"playback.command","action":"pause","position":1.0,"at":host.local_now()}),
    )
    .await;
    let last = v
        .wait_for(|m| {
            m["type"] == "playback.state"
                && m["reason"] == "command"
                && m["paused"] == true
                && m["waiting"] == false
        })
        .await;
    assert!(last["seq"].as_u64().unwrap() > sent);
    assert!(
        s.registry_metrics()
            .contains("tandem_room_slow_consumer_disconnects_total 1")
    );
    // Reading again, the staller finds the 1013 close after what was queued.
    use futures_util::StreamExt;
    let code = tokio::time::timeout(crate::support::WAIT, async {
        while let Some(m) = stalled.next().await {
            if let Ok(Message::Close(f)) = m {
                return f.map(|f| u16::from(f.code));
            }
            if m.is_err() {
                return None;
            }
        }
        None
    })
    .await
    .expect("staller sees the end");
    assert_eq!(code, Some(1013));
    s.shutdown().await;
}

#[tokio::test]
async fn a_member_whose_socket_blocks_still_gets_every_frame_in_order() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    // The room writes broadcasts straight to each socket and queues only what would
    // block: a member that pauses reading must later get every frame, whole and in
    // order, behind the ones the kernel already took.
    let dir = TempDir::new("sync");
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(|c| {
            c.rooms.queue_depth = 100000;
            // It queues more than the default 1 MiB on purpose (several MB).
            c.rooms.max_queued_bytes_per_connection = 1000000000;
            c.rooms.messages_per_second = 100000.0;
            c.rooms.messages_burst = 100000.0;
        })
        .spawn()
        .await;
    let room = "blocked";
    let mut host =
        Client::connect(&s.ws_url(room, &s.room_token(room, "h", false)), 0.0, None).await;

    let url = s.ws_url(room, &s.room_token(room, "slow", false));
    let addr = s.running.as_ref().unwrap().http_addr;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(url.into_client_request().unwrap(), tcp)
        .await
        .unwrap();
    slow.send(Message::text(json!({"type":"hello"}).to_string()))
        .await
        .unwrap();
    host.wait_for(|m| m["type"] == "presence.join" && m["member"]["id"] == "slow")
        .await;

    // More than the server's largest socket send buffer plus the client's receive
    // buffer, so the socket blocks and frames (some cut mid-frame) are queued.
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20);
    let title = "t".repeat(12 * 1024);
    let n = (wmem_max / title.len() + 64) as u64;
    for i in 1..=n {
        host.send(
            json!({"type":"playback.command","action":"load","position":i as f64,
            "media":{"id":format!("m{i}"),"url":"/v.mp4","title":title},"at":host.local_now()}),
        )
        .await;
        host.wait_for(|m| m["type"] == "playback.state" && m["media"]["id"] == format!("m{i}"))
            .await;
    }

    // Now read: every load arrives, in order, each frame intact.
    let mut want = 1u64;
    let mut last_seq = 0u64;
    tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while want <= n {
            let m = slow.next().await.expect("open").expect("a valid frame");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).expect("whole JSON frames");
            if let Some(seq) = v["seq"].as_u64() {
                assert!(seq > last_seq, "seq went from {last_seq} to {seq}");
                last_seq = seq;
            }
            if v["type"] == "playback.state" && v["media"]["id"].is_string() {
                assert_eq!(v["media"]["id"], format!("m{want}"));
                want += 1;
            }
        }
    })
    .await
    .expect("the blocked member got every frame");
    // The connection still works after the backlog (a clock ping is answered).
    slow.send(Message::text(
        json!({"type":"time.ping","id":1,"t0":now_ms()}).to_string(),
    ))
    .await
    .unwrap();
    tokio::time::timeout(crate::support::WAIT, async {
        loop {
            if let Some(Ok(Message::Text(t))) = slow.next().await {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "time.pong" {
                    break;
                }
            }
        }
    })
    .await
    .expect("pong after the backlog");
    s.shutdown().await;
}
