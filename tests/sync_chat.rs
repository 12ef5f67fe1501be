//! Chat persistence: messages survive a server restart and `chat.history` pages
//! through them (SQLite always; PostgreSQL when one answers on 127.0.0.1:5432).

mod sync_support;

use serde_json::json;
use sync_support::{Client, TempDir, start};

const ROOM: &str = "persist";
const TOTAL: usize = 120;

async fn chat_survives_restart(env: &[(&str, &str)]) {
    let dir = TempDir::new("sync-chat");
    let mut env: Vec<(&str, &str)> = env.to_vec();
    env.push(("TANDEM_ROOMS__CHAT_RATE_COUNT", "100000"));
    env.push(("TANDEM_ROOMS__MESSAGES_BURST", "100000"));
    let s = start(dir.path(), &env).await;
    let mut a = Client::connect(&s.url(ROOM, &s.token(ROOM, "a", false)), 0.0, None).await;
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
    s.stop().await;

    let s = start(dir.path(), &env).await;
    let mut b = Client::connect(&s.url(ROOM, &s.token(ROOM, "b", false)), 0.0, None).await;
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
    let mut a = Client::connect(&s.url(ROOM, &s.token(ROOM, "a", false)), 0.0, None).await;
    a.send(json!({"type":"chat.send","text":"retry of 7","client_msg_id":"a-7"}))
        .await;
    let dup = a.wait_type("chat.message").await;
    assert_eq!(dup["duplicate"], true);
    assert_eq!(dup["text"], "message 7");
    a.send(json!({"type":"chat.send","text":"new","client_msg_id":"a-new"}))
        .await;
    let m = b.wait_type("chat.message").await;
    assert_eq!(m["text"], "new", "b never saw the duplicate");
    s.stop().await;
}

#[tokio::test]
async fn chat_survives_a_restart_and_history_pages_through_it_sqlite() {
    chat_survives_restart(&[]).await;
}

#[tokio::test]
async fn chat_survives_a_restart_and_history_pages_through_it_postgres() {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let admin = "postgres://postgres@127.0.0.1:5432/postgres";
    let Ok(mut conn) = sqlx::AnyConnection::connect(admin).await else {
        eprintln!("PostgreSQL is not reachable on 127.0.0.1:5432; skipping");
        return;
    };
    let name = format!("tandem_test_sync_{:016x}", rand::random::<u64>());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    chat_survives_restart(&[("TANDEM_DATABASE_URL", url.as_str())]).await;
    let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await;
}
