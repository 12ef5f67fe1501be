//! Chat persistence: messages survive a server restart and `chat.history` pages
//! through them (SQLite always; PostgreSQL when one answers on 127.0.0.1:5432).

use crate::support::*;
use serde_json::json;

const ROOM: &str = "persist";
const TOTAL: usize = 120;

/// A server on `dir` (and on `db` when given, else SQLite in `dir`) whose chat
/// limits never refuse the test's messages.
async fn server(dir: &TempDir, db: Option<&TestDb>) -> TestApp {
    TestApp::builder()
        .data_dir(dir.path())
        .config(|c| {
            if let Some(db) = db {
                c.database_url = db.url().to_string();
            }
            c.rooms.chat_rate_count = 100000;
            c.rooms.messages_burst = 100000.0;
        })
        .spawn()
        .await
}

async fn chat_survives_restart(db: Option<&TestDb>) {
    let dir = TempDir::new("sync-chat");
    let s = server(&dir, db).await;
    let mut a = Client::connect(&s.ws_url(ROOM, &s.room_token(ROOM, "a", false)), 0.0, None).await;
    for i in 0..TOTAL {
        a.send(json!({"type":"chat.send","text":format!("message {i}"),"client_msg_id":format!("a-{i}"),"media_time": i as f64}))
            .await;
    }
    let mut last_id = String::new();
    for i in 0..TOTAL {
        let m = a.wait_type("chat.message").await;
        assert_eq!(m["text"], format!("message {i}"), "fan-out order");
        last_id = m["id"].as_str().unwrap().to_string();
    }
    drop(a);
    s.shutdown().await;

    let s = server(&dir, db).await;
    let mut b = Client::connect(&s.ws_url(ROOM, &s.room_token(ROOM, "b", false)), 0.0, None).await;
    let recent = b.welcome["chat"].as_array().unwrap().clone();
    assert_eq!(recent.len(), 50, "welcome carries the last 50");
    assert_eq!(recent[49]["id"], last_id.as_str());
    assert_eq!(recent[0]["text"], format!("message {}", TOTAL - 50));
    assert_eq!(recent[49]["media_time"], (TOTAL - 1) as f64);
    let mut seen: Vec<String> = recent
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    let mut before = recent[0]["id"].clone();
    loop {
        b.send(json!({"type":"chat.history","before":before,"limit":50}))
            .await;
        let page = b.wait_type("chat.page").await;
        let msgs = page["messages"].as_array().unwrap();
        let mut texts: Vec<String> = msgs
            .iter()
            .map(|m| m["text"].as_str().unwrap().to_string())
            .collect();
        texts.append(&mut seen);
        seen = texts;
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        before = msgs[0]["id"].clone();
    }
    let expected: Vec<String> = (0..TOTAL).map(|i| format!("message {i}")).collect();
    assert_eq!(seen, expected, "every message once, in order");

    // Exactly once per client_msg_id, across the restart too.
    let mut a = Client::connect(&s.ws_url(ROOM, &s.room_token(ROOM, "a", false)), 0.0, None).await;
    a.send(json!({"type":"chat.send","text":"retry of 7","client_msg_id":"a-7"}))
        .await;
    let dup = a.wait_type("chat.message").await;
    assert_eq!(dup["duplicate"], true);
    assert_eq!(dup["text"], "message 7");
    a.send(json!({"type":"chat.send","text":"new","client_msg_id":"a-new"}))
        .await;
    let m = b.wait_type("chat.message").await;
    assert_eq!(m["text"], "new", "b never saw the duplicate");
    s.shutdown().await;
}

#[tokio::test]
async fn chat_survives_a_restart_and_history_pages_through_it_sqlite() {
    chat_survives_restart(None).await;
}

#[tokio::test]
async fn chat_survives_a_restart_and_history_pages_through_it_postgres() {
    let Ok(db) = TestDb::postgres().await else {
        eprintln!("PostgreSQL is not reachable on 127.0.0.1:5432; skipping");
        return;
    };
    chat_survives_restart(Some(&db)).await;
    db.drop_now().await;
}
