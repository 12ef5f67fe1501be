//! Large rooms (more members than `rooms.large_room_above`): presence in batches,
//! a capped member list in `welcome`, `members.list` paging; small rooms stay plain v1.

use std::collections::HashSet;

use crate::support::*;
use serde_json::{Value, json};
use tandem::config::Config;

/// Rooms count as large above 3 members; a welcome lists 2; presence is batched per 100 ms.
fn large_rooms(c: &mut Config) {
    c.rooms.large_room_above = 3;
    c.rooms.welcome_members = 2;
    c.rooms.presence_batch_ms = 100;
}

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn large_rooms_batch_presence_cap_welcome_and_page_members() {
    let dir = TempDir::new("sync");
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(large_rooms)
        .spawn()
        .await;
    let room = "big";
    let join = |u: &str| {
        let url = s.ws_url(room, &s.room_token(room, u, false));
        async move { Client::connect(&url, 0.0, None).await }
    };
    let mut a = join("a").await;
    let b = join("b").await;
    let c = join("c").await;
    // Up to the threshold a room is plain v1: full list, one presence.join per join.
    assert_eq!(ids(&c.welcome["room"]["members"]), ["a", "b", "c"]);
    assert_eq!(c.welcome["room"]["members_partial"], false);
    let j = a.wait_type("presence.join").await;
    assert_eq!(j["member"]["id"], "b");
    let j = a.wait_type("presence.join").await;
    assert_eq!(j["member"]["id"], "c");

    // Past it: welcome lists the host first and at most `welcome_members`.
    let mut late = Vec::new();
    for u in ["d", "e", "f", "g", "h"] {
        late.push(join(u).await);
    }
    let h = late.last_mut().unwrap();
    let w = &h.welcome["room"];
    assert_eq!(w["member_count"], 8);
    assert_eq!(w["members_partial"], true);
    assert_eq!(ids(&w["members"]), ["a", "b"]);
    assert_eq!(w["members"][0]["role"], "host");

    // The earlier members hear of the five joins only through presence.batch, each
    // batch holding at most two entries and counting the rest.
    let mut joined = Vec::new();
    let mut omitted = 0;
    while joined.len() + omitted < 5 {
        let v = a
            .wait_for(|v| v["type"] == "presence.batch" || v["type"] == "presence.join")
            .await;
        assert_eq!(v["type"], "presence.batch", "no single presence.join: {v}");
        let n = v["joined"].as_array().unwrap().len()
            + v["left"].as_array().unwrap().len()
            + v["updated"].as_array().unwrap().len();
        assert!(n <= 2, "batch over the cap: {v}");
        assert!(v["seq"].as_u64().is_some());
        joined.extend(ids(&v["joined"]));
        omitted += v["omitted"].as_u64().unwrap() as usize;
    }
    assert_eq!(joined.len() + omitted, 5, "{joined:?} + {omitted}");
    for id in &joined {
        assert!(["d", "e", "f", "g", "h"].contains(&id.as_str()), "{id}");
    }

    // members.list pages through everyone exactly once, in join order.
    let mut seen = Vec::new();
    let mut sessions = HashSet::new();
    let mut after = Value::Null;
    loop {
        h.send(json!({"type": "members.list", "after": after, "limit": 3}))
            .await;
        let p = h.wait_type("members.page").await;
        assert_eq!(p["member_count"], 8);
        let page = p["members"].as_array().unwrap();
        assert!(!page.is_empty() && page.len() <= 3, "{p}");
        for m in page {
            assert!(sessions.insert(m["session"].as_str().unwrap().to_string()));
        }
        seen.extend(ids(&p["members"]));
        if p["next"].is_null() {
            break;
        }
        after = p["next"].clone();
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e", "f", "g", "h"]);
    drop((b, c));
    s.shutdown().await;
}

#[tokio::test]
async fn a_leave_in_a_large_room_arrives_in_a_batch() {
    let dir = TempDir::new("sync");
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(large_rooms)
        .spawn()
        .await;
    let room = "big-leave";
    let mut clients = Vec::new();
    for u in ["a", "b", "c", "d", "e"] {
        let url = s.ws_url(room, &s.room_token(room, u, false));
        clients.push(Client::connect(&url, 0.0, None).await);
    }
    let mut e = clients.pop().unwrap();
    // d and e joined a large room: both are announced in a batch (at most two per
    // batch here, so the leave below gets a batch of its own).
    e.wait_for(|v| {
        v["type"] == "presence.batch"
            && v["joined"]
                .as_array()
                .is_some_and(|l| l.iter().any(|m| m["id"] == "e"))
    })
    .await;
    e.send(json!({"type": "members.list"})).await;
    let p = e.wait_type("members.page").await;
    assert_eq!(p["member_count"], 5);
    assert!(p["next"].is_null());
    // A clean close leaves at once; everyone else learns it from a batch.
    let d = clients.pop().unwrap();
    d.send_raw(tokio_tungstenite::tungstenite::Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 1000u16.into(),
            reason: "bye".into(),
        },
    )))
    .await;
    let v = e
        .wait_for(|v| {
            v["type"] == "presence.batch"
                && v["left"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|m| m["id"] == "d"))
        })
        .await;
    assert_eq!(v["member_count"], 4);
    s.shutdown().await;
}
