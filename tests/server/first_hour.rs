//! Issue 13's walk: the real binary started from an empty directory with no
//! configuration (no file, no secret; only its two ports are moved off the
//! defaults so the test can run beside another tandem), and a person's first
//! minutes with the links it prints, in headless Chromium with the browser's
//! default autoplay policy (tests/peers/first-hour.js): the demo broadcast goes
//! live, the watch link plays, the together link plays the shipped video and
//! unmutes on a click, and the operator's streams link lists the demo stream
//! with its one viewer. Screenshots go to the test's temp dir
//! (`TANDEM_SCREENSHOTS=DIR` keeps them).

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_an_empty_directory_broadcast_watch_together_and_streams() {
    chromium();
    let peers = playwright_peers();
    let cwd = TempDir::new("tandem-first-hour");
    let shots = std::env::var("TANDEM_SCREENSHOTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| cwd.path().join("shots"));
    std::fs::create_dir_all(&shots).unwrap();

    let (mut server, banner) = spawn_tandem(
        cwd.path(),
        &[
            ("TANDEM_HTTP_ADDR", "127.0.0.1:0"),
            ("TANDEM_MEDIA_PORT", "0"),
        ],
        Stdio::null(),
    )
    .await;
    let links = ["broadcast", "watch", "together", "streams"].map(|l| banner.link(l));
    assert!(
        cwd.path().join("data").is_dir(),
        "the data directory is made in the working directory"
    );

    let shots_arg = shots.display().to_string();
    let walk = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .current_dir(&peers)
            .arg("first-hour.js")
            .arg(&shots_arg)
            .args(&links)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&walk.stdout);
    let stderr = String::from_utf8_lossy(&walk.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
    eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))
        .unwrap_or_else(|_| panic!("first-hour.js printed no result: {stdout}"));
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(result["together"]["muted_before"], true, "{result}");
    assert_eq!(result["together"]["muted_after"], false, "{result}");
    assert!(
        result["together"]["src"]
            .as_str()
            .is_some_and(|s| s.ends_with("/media/demo.mp4")),
        "{result}"
    );
    assert_eq!(result["streams"]["viewers"], 1, "{result}");
    assert!(result["streams"]["publisher"].is_object(), "{result}");
    assert!(shots.join("first-hour-streams.png").exists());

    // Graceful stop, as Ctrl-C would.
    sigterm(&server);
    let exit = tokio::time::timeout(Duration::from_secs(30), server.wait())
        .await
        .expect("stops within 30 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}
