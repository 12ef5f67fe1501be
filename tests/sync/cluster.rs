//! One Watch Together room over three nodes (issue 18, SYNC_PROTOCOL.md "Several
//! nodes"): the local Redis (127.0.0.1:6379, a fresh key prefix per test) and one
//! shared PostgreSQL database. Members connected to different nodes see one room:
//! the same `seq`, host commands and corrections, presence, chat exactly once. When
//! the owner's node is killed (`kill -9` of a real `tandem` process), the members
//! resume through the other nodes with `last_seq`, every chat message acknowledged
//! before the kill reaches every member exactly once, and the host keeps its role.

use std::collections::HashMap;
use std::process::Stdio;

use serde_json::{Value, json};
use tandem::config::ClusterConfig;

use crate::support::*;

const REDIS: &str = "redis://127.0.0.1:6379/0";
const SECRET: &str = "cluster-test-media-token-secret-0123456789";
const JWT: &str = "cluster-test-jwt-secret-abcdefghijklmnop";

fn prefix() -> String {
    format!("tandem-test-{}:", uuid::Uuid::new_v4().simple())
}

fn cluster(prefix: &str, node: &str) -> ClusterConfig {
    ClusterConfig {
        redis_url: REDIS.into(),
        node_id: node.into(),
        key_prefix: prefix.into(),
        heartbeat_ms: 200,
        node_ttl_ms: 1500,
        room_lease_ms: 1500,
        ..ClusterConfig::default()
    }
}

/// A node in this process, on the shared database.
async fn node(prefix: &str, id: &str, db: &str) -> TestApp {
    let (cfg, db) = (cluster(prefix, id), db.to_string());
    TestApp::builder()
        .config(move |c| {
            c.cluster = cfg;
            c.database_url = db;
            c.media_token_secret = SECRET.into();
            c.jwt_secret = JWT.into();
        })
        .spawn()
        .await
}

/// Resumes as `old` through `url`. A node may still see the dead owner's lease for
/// a moment and refuse the join (`unavailable`, 1013): the client tries again, as
/// the SDK does, on each refusal (bounded), never on a timer.
async fn resume_through(url: &str, old: &Client) -> Client {
    for _ in 0..20 {
        let mut c = Client::open(url, 0.0)
            .await
            .expect("the upgrade is answered");
        c.send(json!({"type":"hello","resume":old.resume()})).await;
        loop {
            match c.event().await {
                Event::Msg(v) if v["type"] == "welcome" || v["type"] == "resumed" => {
                    c.last_seq = v["seq"].as_u64().or(v["room"]["seq"].as_u64()).unwrap();
                    c.welcome = v;
                    return c;
                }
                Event::Msg(v) => assert_eq!(v["code"], "unavailable", "{v}"),
                Event::Closed(code) => {
                    assert_eq!(code, Some(1013));
                    break;
                }
            }
        }
    }
    panic!("could not resume through {url}");
}

/// Every `chat.message` id a client received, in order.
fn chat_ids(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .filter(|v| v["type"] == "chat.message")
        .map(|v| v["id"].to_string())
        .collect()
}

/// Sends `chat.send` and waits for its `chat.message` on `everyone`; returns its id.
async fn chat(
    from: usize,
    clients: &mut [&mut Client],
    logs: &mut [Vec<Value>],
    text: &str,
) -> String {
    let cid = format!("c-{}", uuid::Uuid::new_v4().simple());
    clients[from]
        .send(json!({"type":"chat.send","text":text,"client_msg_id":cid}))
        .await;
    let mut id = None;
    for (i, c) in clients.iter_mut().enumerate() {
        let m = c
            .wait_for(|v| v["type"] == "chat.message" && v["client_msg_id"] == cid)
            .await;
        logs[i].push(m.clone());
        let this = m["id"].to_string();
        assert!(
            id.is_none() || id.as_ref() == Some(&this),
            "one id for {text}"
        );
        id = Some(this);
    }
    id.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_room_over_three_nodes_has_one_seq_one_host_and_chat_exactly_once() {
    let p = prefix();
    let db = TestDb::postgres()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    let a = node(&p, "node-a", db.url()).await;
    let b = node(&p, "node-b", db.url()).await;
    let c = node(&p, "node-c", db.url()).await;
    let room = "cluster-room";

    // The first member makes node A the room's owner; the host is on B with a
    // clock 5 s fast, a viewer on C with one 3 s slow.
    let mut va = Client::connect(
        &a.ws_url(room, &a.room_token(room, "ana", false)),
        0.0,
        None,
    )
    .await;
    let mut host = Client::connect(
        &b.ws_url(room, &b.room_token(room, "hugo", true)),
        5000.0,
        None,
    )
    .await;
    let mut vc = Client::connect(
        &c.ws_url(room, &c.room_token(room, "cleo", false)),
        -3000.0,
        None,
    )
    .await;
    assert_eq!(
        va.welcome["you"]["role"], "host",
        "the first member is the host"
    );
    assert_eq!(host.welcome["room"]["member_count"], 2, "{}", host.welcome);
    assert_eq!(vc.welcome["room"]["member_count"], 3, "{}", vc.welcome);
    // Presence: ana (on A) sees cleo (on C) join.
    let j = va
        .wait_for(|v| v["type"] == "presence.join" && v["member"]["id"] == "cleo")
        .await;
    assert!(j["seq"].as_u64().unwrap() > 0);

    // The host role moves to hugo on B (ana hands it over).
    va.send(json!({"type":"host.transfer","to":"hugo"})).await;
    for cl in [&mut va, &mut host, &mut vc] {
        let h = cl.wait_type("host.changed").await;
        assert_eq!(h["host"], "hugo", "{h}");
    }
    // Clocks: hugo's is measured by its own node and by the owner's pings relayed.
    host.sync_clock().await;
    host.answered(3).await;
    vc.sync_clock().await;

    // A host command from B reaches all three with one seq.
    let at = host.local_now() - 5000.0;
    host.send(json!({"type":"playback.command","action":"play","position":100.0,"at":at}))
        .await;
    let mut seqs = Vec::new();
    let mut states = Vec::new();
    for cl in [&mut va, &mut host, &mut vc] {
        let s = cl
            .wait_for(|v| v["type"] == "playback.state" && v["reason"] == "command")
            .await;
        seqs.push(s["seq"].as_u64().unwrap());
        states.push(s);
    }
    assert!(
        seqs.iter().all(|s| *s == seqs[0]),
        "one seq everywhere: {seqs:?}"
    );
    // `at` is server time: hugo's 5 s are taken out on the way through B and A.
    let true_at = at - 5000.0;
    let got = states[0]["at"].as_f64().unwrap();
    assert!((got - true_at).abs() < 50.0, "at {got} vs {true_at}");

    // A report 300 ms ahead from the host on B corrects the room everywhere.
    let local = host.local_now();
    let pos = host.position(&states[1], local) + 0.3;
    host.send(json!({"type":"playback.report","position":pos,"state":"playing","at":local,"seq":states[1]["seq"]}))
        .await;
    let mut corr = Vec::new();
    for cl in [&mut va, &mut host, &mut vc] {
        let s = cl
            .wait_for(|v| v["type"] == "playback.state" && v["reason"] == "correction")
            .await;
        corr.push(s["seq"].as_u64().unwrap());
    }
    assert!(
        corr.iter().all(|s| *s == corr[0] && *s > seqs[0]),
        "{corr:?}"
    );

    // Chat from each node reaches every member once, under one id; a retry of the
    // same client_msg_id is not a second message.
    let mut logs = vec![Vec::new(), Vec::new(), Vec::new()];
    let mut ids = Vec::new();
    for (from, text) in [(0, "from A"), (1, "from B"), (2, "from C")] {
        ids.push(chat(from, &mut [&mut va, &mut host, &mut vc], &mut logs, text).await);
    }
    let cid = logs[2].last().unwrap()["client_msg_id"].clone();
    vc.send(json!({"type":"chat.send","text":"from C","client_msg_id":cid}))
        .await;
    for (i, cl) in [&mut va, &mut host, &mut vc].into_iter().enumerate() {
        let (before, w) = cl.until_snapshot().await;
        let chats: Vec<&Value> = before
            .iter()
            .filter(|v| v["type"] == "chat.message")
            .collect();
        if i == 2 {
            // The sender is answered with the stored message, marked as a duplicate.
            assert_eq!(chats.len(), 1, "{before:?}");
            assert_eq!(chats[0]["duplicate"], true);
            assert_eq!(chats[0]["id"].to_string(), ids[2]);
        } else {
            assert!(
                chats.is_empty(),
                "a retried message is not sent again: {before:?}"
            );
        }
        assert_eq!(w["room"]["member_count"], 3);
        assert_eq!(w["room"]["host"], "hugo");
    }
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        3
    );
    // Persisted once, in the shared database.
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chat_messages WHERE room = $1")
        .bind(room)
        .fetch_one(a.pool())
        .await
        .unwrap();
    assert_eq!(n, 3);

    // Broadcasts crossed nodes once per pass, not once per member.
    let sent = b
        .metric(
            "tandem_cluster_peer_messages_total",
            &[("outcome", "received")],
        )
        .await;
    assert!(sent > 0.0);
    assert_eq!(b.metric("tandem_room_relays", &[]).await, 1.0);
    assert_eq!(a.metric("tandem_rooms", &[]).await, 1.0);

    // A member that leaves from C is gone for everyone.
    drop(vc);
    let l = va
        .wait_for(|v| v["type"] == "presence.update" || v["type"] == "presence.leave")
        .await;
    assert_eq!(l["member"]["id"], "cleo", "{l}");

    c.shutdown().await;
    b.shutdown().await;
    a.shutdown().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_owners_node_moves_the_room_and_loses_no_acknowledged_chat() {
    let p = prefix();
    let db = TestDb::postgres()
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    // Node A is a real process (it is killed with SIGKILL); B and C run here.
    let cwd = TempDir::new("tandem-cluster-kill");
    let env = [
        ("TANDEM_HTTP_ADDR", "127.0.0.1:0"),
        ("TANDEM_MEDIA_PORT", "0"),
        ("TANDEM_DATABASE_URL", db.url()),
        ("TANDEM_MEDIA_TOKEN_SECRET", SECRET),
        ("TANDEM_JWT_SECRET", JWT),
        ("TANDEM_CLUSTER__REDIS_URL", REDIS),
        ("TANDEM_CLUSTER__NODE_ID", "node-a"),
        ("TANDEM_CLUSTER__KEY_PREFIX", p.as_str()),
        ("TANDEM_CLUSTER__HEARTBEAT_MS", "200"),
        ("TANDEM_CLUSTER__NODE_TTL_MS", "1500"),
        ("TANDEM_CLUSTER__ROOM_LEASE_MS", "1500"),
    ];
    let (mut a, banner) = spawn_tandem(cwd.path(), &env, Stdio::null()).await;
    let link = banner.link("together");
    let rest = link.split("://").nth(1).unwrap();
    let a_ws = format!("ws://{}", rest.split('/').next().unwrap());
    let b = node(&p, "node-b", db.url()).await;
    let c = node(&p, "node-c", db.url()).await;
    let room = "cluster-kill";
    let token = |user: &str, moderate: bool| b.room_token(room, user, moderate);

    // The host is the first member, on A: A owns the room.
    let mut host = Client::connect(
        &format!("{a_ws}/v1/rooms/{room}/ws?token={}", token("hugo", true)),
        0.0,
        None,
    )
    .await;
    let mut vb = Client::connect(&b.ws_url(room, &token("bea", false)), 0.0, None).await;
    let mut vc = Client::connect(&c.ws_url(room, &token("cleo", false)), 0.0, None).await;
    assert_eq!(host.welcome["you"]["role"], "host");
    assert_eq!(vc.welcome["room"]["member_count"], 3);

    // Chat from every node, each acknowledged (seen by all three) before the kill.
    let mut logs = vec![Vec::new(), Vec::new(), Vec::new()];
    let mut acked = Vec::new();
    for round in 0..2 {
        for from in 0..3 {
            let text = format!("before the kill {round}/{from}");
            acked.push(chat(from, &mut [&mut host, &mut vb, &mut vc], &mut logs, &text).await);
        }
    }
    let at = host.local_now();
    host.send(json!({"type":"playback.command","action":"pause","position":42.0,"at":at}))
        .await;
    for cl in [&mut host, &mut vb, &mut vc] {
        let s = cl
            .wait_for(|v| v["type"] == "playback.state" && v["reason"] == "command")
            .await;
        assert_eq!(s["position"], 42.0);
    }
    let seq_before = host.last_seq;
    assert_eq!((vb.last_seq, vc.last_seq), (seq_before, seq_before));

    // kill -9: A's member loses its connection; B's and C's are sent to resume
    // (1012) once A's lease has run out.
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    assert_eq!(
        host.closed().await,
        None,
        "a killed node sends no close frame"
    );
    assert_eq!(vb.closed().await, Some(1012));
    assert_eq!(vc.closed().await, Some(1012));

    // Everyone resumes through B or C with last_seq.
    let mut host2 = resume_through(&b.ws_url(room, &token("hugo", true)), &host).await;
    let mut vb2 = resume_through(&b.ws_url(room, &token("bea", false)), &vb).await;
    let mut vc2 = resume_through(&c.ws_url(room, &token("cleo", false)), &vc).await;
    // The numbering goes on (the first resumes are presence updates the later
    // ones get replayed): nothing between last_seq and now is missing.
    for (cl, old) in [(&host2, &host), (&vb2, &vb), (&vc2, &vc)] {
        assert_eq!(cl.welcome["type"], "resumed", "{}", cl.welcome);
        assert_eq!(cl.welcome["session"], old.welcome["session"]);
        let seq = cl.welcome["seq"].as_u64().unwrap();
        assert!(seq >= seq_before, "{}", cl.welcome);
        assert_eq!(
            cl.welcome["replayed"].as_u64(),
            Some(seq - seq_before),
            "{}",
            cl.welcome
        );
    }
    assert_eq!(
        host2.welcome["you"]["role"], "host",
        "the host keeps its role"
    );
    let taken = b.metric("tandem_room_takeovers_total", &[]).await
        + c.metric("tandem_room_takeovers_total", &[]).await;
    assert_eq!(taken, 1.0, "one node took the room over");

    // The room goes on: the state survived, seq goes on from where it was, and a
    // chat message after the move reaches everyone once.
    let mut logs2 = vec![Vec::new(), Vec::new(), Vec::new()];
    let after = chat(
        2,
        &mut [&mut host2, &mut vb2, &mut vc2],
        &mut logs2,
        "after the move",
    )
    .await;
    for cl in [&mut host2, &mut vb2, &mut vc2] {
        let (before, w) = cl.until_snapshot().await;
        let all: Vec<&Value> = before.iter().collect();
        assert!(all.iter().all(|v| v["type"] != "chat.message"), "{all:?}");
        assert_eq!(w["room"]["host"], "hugo");
        assert_eq!(w["room"]["playback"]["position"], 42.0);
        assert_eq!(w["room"]["playback"]["paused"], true);
        assert!(w["room"]["seq"].as_u64().unwrap() > seq_before);
        // Every acknowledged message is in the history once, and the new one too.
        let hist: Vec<String> = w["chat"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].to_string())
            .collect();
        let mut count: HashMap<&String, usize> = HashMap::new();
        for id in &hist {
            *count.entry(id).or_default() += 1;
        }
        for id in acked.iter().chain([&after]) {
            assert_eq!(count.get(id), Some(&1), "message {id} once in {hist:?}");
        }
    }
    // Each member saw each acknowledged message exactly once over both connections.
    for (i, log) in logs.iter().enumerate() {
        let mut ids = chat_ids(log);
        ids.extend(chat_ids(&logs2[i]));
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            ids.len(),
            "member {i} saw a message twice: {ids:?}"
        );
        assert_eq!(ids.len(), acked.len() + 1);
    }

    c.shutdown().await;
    b.shutdown().await;
    db.drop_now().await;
}

#[tokio::test]
async fn a_node_whose_redis_is_away_refuses_new_rooms_and_says_so() {
    let app = TestApp::builder()
        .config(|c| {
            c.cluster = ClusterConfig {
                redis_url: "redis://127.0.0.1:1/0".into(),
                node_id: "lonely".into(),
                key_prefix: prefix(),
                heartbeat_ms: 100,
                ..ClusterConfig::default()
            };
        })
        .spawn()
        .await;
    let room = "no-redis";
    let mut c = Client::open(&app.ws_url(room, &app.room_token(room, "u", false)), 0.0)
        .await
        .expect("the upgrade is answered");
    c.send(json!({"type":"hello"})).await;
    let e = c.wait_type("error").await;
    assert_eq!(e["code"], "unavailable", "{e}");
    assert_eq!(c.closed().await, Some(1013));
    assert_eq!(app.state().rooms.room_count(), 0, "no room was made");
    let r = app.get("/readyz", None).await;
    assert_eq!(
        r.status,
        reqwest::StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        r.text
    );
    assert_eq!(
        r.body["error"]["checks"]["redis"], "unreachable",
        "{}",
        r.text
    );
    app.shutdown().await;
}
