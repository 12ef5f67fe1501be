//! One viewer that stops reading (a frozen tab, a laptop lid closing) must never
//! delay the others: the SFU never waits on a viewer — its datagrams go into the
//! kernel without blocking and whatever does not fit is dropped for that viewer
//! alone. This test freezes one aiortc viewer with SIGSTOP for the whole of
//! another viewer's run and checks the other decodes every second.

use std::time::Duration;

use crate::support::*;

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_viewer_does_not_slow_the_others() {
    let _guard = media_lock().await;
    let app = spawn_app().await;
    let mut publisher = PyPeer::publisher(&app, "frozen", &["--codec", "VP8"]);
    publisher
        .wait_event("connected", Duration::from_secs(30))
        .await;

    let mut frozen = PyPeer::viewer(
        &app,
        "frozen-viewer",
        "frozen",
        &["--duration", "120", "--hold"],
    );
    frozen
        .wait_event("first_frame", Duration::from_secs(30))
        .await;
    signal(frozen.pid(), "-STOP");

    let mut healthy = PyPeer::viewer(
        &app,
        "healthy-viewer",
        "frozen",
        &[
            "--frames",
            "300",
            "--audio-frames",
            "200",
            "--min-seconds",
            "10",
            "--duration",
            "120",
        ],
    );
    let done = healthy.done(Duration::from_secs(150)).await;
    signal(frozen.pid(), "-CONT");

    assert_eq!(
        done["ok"], true,
        "the healthy viewer reached its goals: {done}"
    );
    let per_second: Vec<f64> = done["frames_per_second"]
        .as_array()
        .map(|a| a.iter().map(num).collect())
        .unwrap_or_default();
    let whole = &per_second[..per_second.len().saturating_sub(1)];
    assert!(
        whole.len() >= 9 && whole.iter().all(|f| *f >= 10.0),
        "at least 10 frames in every second while the other viewer was frozen: {per_second:?}"
    );
    assert!(
        done["max_gap_s"].as_f64().unwrap_or(f64::MAX) < 0.5,
        "no gap of half a second between frames: {done}"
    );
    // The healthy viewer DELETEd its session when done; the frozen one is kept.
    assert_eq!(
        app.session_count(),
        2,
        "publisher and the frozen viewer remain"
    );
    publisher.stop(Duration::from_secs(20)).await;
    app.shutdown().await;
}
