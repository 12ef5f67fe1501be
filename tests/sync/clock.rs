//! Host clock correction (SYNC_PROTOCOL.md): a host whose clock runs 5 s ahead
//! commands playback; viewers with other skews compute the same position.

use crate::support::*;
use serde_json::json;

#[tokio::test]
async fn viewers_agree_within_5ms_with_a_host_skewed_by_5s() {
    let dir = TempDir::new("sync");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let room = "skew";
    let mut host = Client::connect(
        &s.ws_url(room, &s.room_token(room, "host", false)),
        5000.0,
        None,
    )
    .await;
    let mut viewers = Vec::new();
    for (i, skew) in [-3000.0, 1234.5, 0.0, 86_400_000.0].into_iter().enumerate() {
        let u = format!("v{i}");
        viewers.push(
            Client::connect(&s.ws_url(room, &s.room_token(room, &u, false)), skew, None).await,
        );
    }
    host.sync_clock().await;
    for v in viewers.iter_mut() {
        v.sync_clock().await;
    }
    // The host lies about its clock: only the server's own measurement can be right.
    host.send(json!({"type":"time.report","offset":0.0,"rtt":1.0}))
        .await;
    host.answered(4).await;

    // play at 42 s, then a rate change, then a seek while paused; check after each.
    let commands = [
        json!({"action":"play","position":42.0,"rate":1.0}),
        json!({"action":"rate","rate":1.5}),
        json!({"action":"pause"}),
        json!({"action":"seek","position":100.0}),
        json!({"action":"play","position":100.0}),
    ];
    // What the host meant, in true time: (position, true time, rate, paused).
    let mut intent = (0.0f64, 0.0f64, 1.0f64, true);
    for cmd in commands {
        let local = host.local_now();
        let true_at = local - host.skew;
        let pos_now = if intent.3 {
            intent.0
        } else {
            intent.0 + (true_at - intent.1) / 1000.0 * intent.2
        };
        let mut c = cmd.clone();
        c["type"] = "playback.command".into();
        c["at"] = local.into();
        if c.get("position").is_none() {
            c["position"] = pos_now.into();
        }
        let rate = c["rate"].as_f64().unwrap_or(intent.2);
        let paused = match c["action"].as_str().unwrap() {
            "play" => false,
            "pause" => true,
            _ => intent.3,
        };
        intent = (c["position"].as_f64().unwrap(), true_at, rate, paused);
        host.send(c).await;
        let host_state = host.wait_type("playback.state").await;
        let mut states = Vec::new();
        for v in viewers.iter_mut() {
            states.push(v.wait_type("playback.state").await);
        }
        // Everyone evaluates at the same true instant, each with its own clock.
        let t = now_ms();
        let truth = if intent.3 {
            intent.0
        } else {
            intent.0 + (t - intent.1) / 1000.0 * intent.2
        };
        let mut positions = vec![host.position(&host_state, t + host.skew)];
        for (v, st) in viewers.iter().zip(&states) {
            positions.push(v.position(st, t + v.skew));
        }
        for p in &positions {
            assert!(
                (p - truth).abs() * 1000.0 < 5.0,
                "{cmd}: positions {positions:?}, host meant {truth}"
            );
        }
    }
    s.shutdown().await;
}
