//! The sync SDK package and the `/together` page as a Discord Activity (issue 17),
//! in headless Chromium:
//! - the SDK's player adapters (tests/peers/sdk-adapters.js): a real `<video>` and
//!   a stand-in with the Kaltura Player v7 API follow the room (pause, play, rate,
//!   seek) and forward a person's own play, seek and pause as commands;
//! - two pages as the Activity under `/.proxy` (tests/peers/activity.js), two
//!   Discord users at the stand-in Discord: one room `discord:{instance}`, each
//!   sees the other by Discord name and avatar, the host's pause, seek and play
//!   reach the other; a refused code and a foreign instance show error panels;
//!   without the test's authorize hook the page runs the vendored Embedded App
//!   SDK with the configured client id;
//! - what the server serves for it: the SDK module from its one source, the
//!   Activity page with the application's client id, `/` as the Activity when
//!   Discord's launch parameters are in the query.

use std::process::Command;
use std::sync::atomic::Ordering;

use serde_json::Value;

use crate::support::discord::{self, Discord};
use crate::support::*;

/// Runs `node tests/peers/{script} args…` and returns its last stdout line as JSON.
async fn node(script: &'static str, args: Vec<String>) -> Value {
    let peers = playwright_peers();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .current_dir(&peers)
            .arg(script)
            .args(&args)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
    eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    println!("{stdout}");
    serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|_| panic!("{script} printed no result: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_adapters_drive_a_video_and_a_kaltura_player() {
    chromium();
    let app = TestApp::builder()
        .config(|c| c.media.ice_tcp = false)
        .spawn()
        .await;
    let result = node("sdk-adapters.js", vec![app.base.clone()]).await;
    assert_eq!(result["ok"], true, "{result}");
    let steps = [
        "adapter",
        "paused-at",
        "play",
        "rate",
        "seek",
        "pause",
        "forward",
    ];
    for player in ["video", "kaltura"] {
        assert_eq!(
            result[player]["steps"],
            serde_json::json!(steps),
            "{result}"
        );
        // Only the person's own moves became commands, one each.
        assert_eq!(
            result[player]["commands"],
            serde_json::json!(["play", "seek", "pause"]),
            "{result}"
        );
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_activity_pages_share_the_instance_room() {
    chromium();
    let d = Discord::spawn().await;
    let app = TestApp::builder()
        .config(|c| {
            c.media.ice_tcp = false;
            // With the bot token, tandem checks that each user is in the instance.
            d.configure(c, true);
        })
        .spawn()
        .await;
    let result = node(
        "activity.js",
        vec![
            app.base.clone(),
            discord::INSTANCE.into(),
            discord::GOOD_CODE.into(),
            discord::GOOD_CODE_2.into(),
            discord::OTHER_INSTANCE.into(),
        ],
    )
    .await;
    assert_eq!(result["ok"], true, "{result}");
    let room = format!("discord:{}", discord::INSTANCE);
    assert_eq!(result["host"]["room"], room.as_str());
    assert_eq!(result["guest"]["room"], room.as_str());
    // The tandem users are the Discord users, named as Discord shows them.
    assert_eq!(
        result["host"]["you"]["id"],
        format!("discord:{}", discord::USER_ID)
    );
    assert_eq!(result["host"]["you"]["name"], "Nelly");
    assert_eq!(
        result["guest"]["you"]["id"],
        format!("discord:{}", discord::USER_ID_2)
    );
    assert_eq!(
        result["guest"]["you"]["name"], "kit_watches",
        "no global_name: the username"
    );
    let avatars: Vec<&str> = result["guest_members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["avatar"].as_str())
        .collect();
    assert!(
        avatars.contains(&"https://cdn.discordapp.com/avatars/80351110224678912/8342729096ea3675442027381ff50dfe.png"),
        "{avatars:?}"
    );
    let after_seek = result["guest_after_seek"].as_f64().unwrap();
    assert!((after_seek - 12.0).abs() < 0.05, "{after_seek}");
    assert!(result["bad_code"].as_str().unwrap().contains("Invalid"));
    // The vendored Embedded App SDK runs in the page, with the configured client id.
    assert_eq!(result["embedded_sdk"]["clientId"], discord::CLIENT_ID);
    // Four codes exchanged (two members, the refused one, the outsider); three
    // users read and checked against the instance.
    assert_eq!(d.state.token_calls.load(Ordering::SeqCst), 4);
    assert_eq!(d.state.me_calls.load(Ordering::SeqCst), 3);
    assert_eq!(d.state.instance_calls.load(Ordering::SeqCst), 3);
    app.shutdown().await;
}

#[tokio::test]
async fn activity_page_and_sdk_module_are_served() {
    let d = Discord::spawn().await;
    let app = TestApp::builder()
        .config(|c| {
            c.media.ice_tcp = false;
            d.configure(c, false);
        })
        .spawn()
        .await;
    let get = |path: &str| {
        let url = app.url(path);
        async move {
            let r = reqwest::get(&url).await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            r.text().await.unwrap()
        }
    };
    let client_id = format!(
        r#"<meta name="tandem-discord-client-id" content="{}">"#,
        discord::CLIENT_ID
    );
    for path in [
        "/together",
        "/.proxy/together",
        "/?instance_id=i-1&frame_id=f-1",
        "/.proxy?instance_id=i-1&frame_id=f-1",
    ] {
        let html = get(path).await;
        assert!(html.contains("Watch Together"), "{path}");
        assert!(html.contains(&client_id), "{path}: the client id");
    }
    assert!(
        !get("/").await.contains("tandem-discord-client-id"),
        "/ without Discord's launch parameters is the index"
    );
    // One source: the pages' module is the npm package's file.
    let sdk = std::fs::read_to_string(repo_root().join("sdk/tandem-sync/tandem-sync.js")).unwrap();
    assert_eq!(get("/web/tandem-sync.js").await, sdk);
    assert_eq!(get("/.proxy/web/tandem-sync.js").await, sdk);
    let pkg: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("sdk/tandem-sync/package.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(pkg["type"], "module");
    for key in ["import", "types"] {
        let file = pkg["exports"]["."][key].as_str().unwrap();
        assert!(
            repo_root().join("sdk/tandem-sync").join(file).exists(),
            "{key}: {file}"
        );
    }
    let vendor = get("/.proxy/vendor/discord-embedded-app-sdk.js").await;
    assert!(vendor.contains("DiscordSDK"), "the Embedded App SDK bundle");
    app.shutdown().await;
}
