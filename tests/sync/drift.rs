//! Drift and idle detection (SYNC_PROTOCOL.md "Behaviour every implementation must
//! have", issue 3), implemented in `signaling/src/room.rs` but untested until now:
//! - a host `playback.report` past the threshold (40 ms playing, 1 s paused) rebases
//!   the room (`playback.state reason=correction`); a viewer's gets it a `sync.hint`;
//!   reports within the threshold, too early, or about an old state do neither;
//! - a member that stops reporting (`idle_after_ms`) is `idle`, one that says it is
//!   hidden (`client.visibility`) is `away`; neither is waited for by the ready
//!   barrier, and reporting / becoming visible again makes it `active`.
//!
//! "Nothing happened" is asserted with `room.snapshot`: the room handles a
//! connection's messages in order, so anything a report caused arrives before the
//! `welcome` that answers the snapshot sent after it.

use crate::support::*;
use serde_json::{Value, json};
use tandem::config::Config;

/// Joins `room` as `user` with a clock `skew` ms off, measures the clock and waits
/// until the server has measured it too (so `at` conversion is the server's own).
async fn join(s: &TestApp, room: &str, user: &str, skew: f64) -> Client {
    let mut c = Client::connect(
        &s.ws_url(room, &s.room_token(room, user, false)),
        skew,
        None,
    )
    .await;
    c.sync_clock().await;
    c.answered(3).await;
    c
}

/// Sends a playback command stamped `ago_ms` in the host's past and returns the
/// resulting state as each client received it (host first).
async fn command(clients: &mut [&mut Client], cmd: Value, ago_ms: f64) -> Vec<Value> {
    let mut c = cmd;
    c["type"] = "playback.command".into();
    c["at"] = (clients[0].local_now() - ago_ms).into();
    clients[0].send(c).await;
    let mut out = Vec::new();
    for cl in clients.iter_mut() {
        out.push(
            cl.wait_for(|v| v["type"] == "playback.state" && v["reason"] == "command")
                .await,
        );
    }
    out
}

/// Reports the position `state` implies now (by this client's clock) plus `drift_s`.
/// Returns (reported position, true time of the report).
async fn report(c: &Client, state: &Value, drift_s: f64, kind: &str) -> (f64, f64) {
    let local = c.local_now();
    let pos = c.position(state, local) + drift_s;
    c.send(
        json!({"type":"playback.report","position":pos,"state":kind,"at":local,"seq":state["seq"]}),
    )
    .await;
    (pos, local - c.skew)
}

fn of_type<'a>(msgs: &'a [Value], ty: &str) -> Vec<&'a Value> {
    msgs.iter().filter(|m| m["type"] == ty).collect()
}

fn metric(s: &TestApp, name: &str) -> f64 {
    s.registry_metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} not found"))
}

fn assert_near(got: f64, want: f64, tol: f64, what: &str) {
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, want {want} ± {tol}"
    );
}

// ---- drift -------------------------------------------------------------------------

#[tokio::test]
async fn the_shipped_thresholds_are_the_protocols() {
    // The drift tests below run on the defaults; these are the numbers they prove.
    let dir = TempDir::new("sync-drift");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let cfg = s.running.as_ref().unwrap().state.rooms.config().clone();
    assert_eq!(cfg.drift_threshold_ms, 40.0);
    assert_eq!(cfg.drift_seek_threshold_ms, 1000.0);
    assert_eq!(
        cfg.idle_after_ms, 60_000,
        "idle after 60 s without a report"
    );
    assert_eq!(cfg.ready_timeout_ms, 3000);
    s.shutdown().await;
}

#[tokio::test]
async fn host_drift_past_40ms_corrects_the_room_and_smaller_drift_does_not() {
    let dir = TempDir::new("sync-drift");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let room = "drift-host";
    // The host's clock is 5 s fast, the viewer's 3 s slow: the server must convert.
    let mut host = join(&s, room, "host", 5000.0).await;
    let mut viewer = join(&s, room, "viewer", -3000.0).await;

    // Playing since 5 s ago, so reports are past the server's 1 s settling window.
    let st = command(
        &mut [&mut host, &mut viewer],
        json!({"action":"play","position":100.0}),
        5000.0,
    )
    .await
    .remove(0);
    let seq0 = st["seq"].as_u64().unwrap();

    // 15 ms off: within the 40 ms threshold, no correction.
    report(&host, &st, 0.015, "playing").await;
    let (before, welcome) = host.until_snapshot().await;
    assert!(
        of_type(&before, "playback.state").is_empty(),
        "no correction for 15 ms: {before:?}"
    );
    assert_eq!(welcome["room"]["playback"]["seq"].as_u64(), Some(seq0));
    assert_eq!(welcome["room"]["playback"]["position"], 100.0);

    // 300 ms ahead: past 40 ms, the room follows the host.
    let (pos, true_at) = report(&host, &st, 0.3, "playing").await;
    let corr = host.wait_type("playback.state").await;
    assert_eq!(corr["reason"], "correction", "{corr}");
    assert_eq!(corr["by"], "host");
    assert_eq!(corr["paused"], false);
    assert!(corr["seq"].as_u64().unwrap() > seq0);
    assert_near(
        corr["position"].as_f64().unwrap(),
        pos,
        1e-9,
        "rebased on the report",
    );
    // `at` is the report's time converted to server time (the host's +5 s removed).
    assert_near(
        corr["at"].as_f64().unwrap(),
        true_at,
        5.0,
        "correction at (server ms)",
    );

    // The viewer gets the same correction and, with its own clock, lands where the host is.
    let vc = viewer
        .wait_for(|v| v["type"] == "playback.state" && v["reason"] == "correction")
        .await;
    assert_eq!(vc["seq"], corr["seq"]);
    let t = now_ms();
    let host_is_at = pos + (t - true_at) / 1000.0;
    assert_near(
        viewer.position(&vc, t + viewer.skew),
        host_is_at,
        0.010,
        "viewer position after the correction",
    );
    assert_eq!(metric(&s, "tandem_room_drift_corrections_total"), 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn host_reports_that_are_too_early_stale_or_not_comparable_are_not_corrections() {
    let dir = TempDir::new("sync-drift");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let mut host = join(&s, "drift-ignored", "host", 0.0).await;

    // Playing as of now: for 1 s reports may lag the state; 500 ms off is ignored.
    let st = command(
        &mut [&mut host],
        json!({"action":"play","position":10.0}),
        0.0,
    )
    .await
    .remove(0);
    report(&host, &st, 0.5, "playing").await;
    let (before, _) = host.until_snapshot().await;
    assert!(
        of_type(&before, "playback.state").is_empty(),
        "inside the settling second: {before:?}"
    );

    // Playing for 5 s; a report about an older state (seq), or one that says it is
    // buffering / paused while the room plays, is no drift.
    let old = st.clone();
    let st = command(
        &mut [&mut host],
        json!({"action":"play","position":20.0}),
        5000.0,
    )
    .await
    .remove(0);
    report(&host, &old, 3.0, "playing").await;
    report(&host, &st, 3.0, "buffering").await;
    report(&host, &st, 3.0, "paused").await;
    let (before, _) = host.until_snapshot().await;
    assert!(
        of_type(&before, "playback.state").is_empty(),
        "stale or not comparable: {before:?}"
    );

    // Control: the same 3 s drift about the current state while playing does correct.
    report(&host, &st, 3.0, "playing").await;
    let corr = host.wait_type("playback.state").await;
    assert_eq!(corr["reason"], "correction");
    assert_eq!(metric(&s, "tandem_room_drift_corrections_total"), 1.0);
    s.shutdown().await;
}

#[tokio::test]
async fn while_paused_the_host_threshold_is_1s() {
    let dir = TempDir::new("sync-drift");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let mut host = join(&s, "drift-paused", "host", 1234.5).await;
    let st = command(
        &mut [&mut host],
        json!({"action":"pause","position":50.0}),
        5000.0,
    )
    .await
    .remove(0);
    assert_eq!(st["paused"], true);

    // 600 ms would correct a playing room; paused, it is under the 1 s seek threshold.
    report(&host, &st, 0.6, "paused").await;
    let (before, welcome) = host.until_snapshot().await;
    assert!(
        of_type(&before, "playback.state").is_empty(),
        "600 ms while paused: {before:?}"
    );
    assert_eq!(welcome["room"]["playback"]["position"], 50.0);

    report(&host, &st, 1.5, "paused").await;
    let corr = host.wait_type("playback.state").await;
    assert_eq!(corr["reason"], "correction");
    assert_eq!(corr["paused"], true);
    assert_near(
        corr["position"].as_f64().unwrap(),
        51.5,
        1e-9,
        "paused correction",
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_drifting_viewer_gets_a_sync_hint_and_the_room_does_not_move() {
    let dir = TempDir::new("sync-drift");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let room = "drift-viewer";
    let mut host = join(&s, room, "host", 0.0).await;
    let mut v1 = join(&s, room, "v1", -3000.0).await;
    let mut v2 = join(&s, room, "v2", 1234.5).await;
    let states = command(
        &mut [&mut host, &mut v1, &mut v2],
        json!({"action":"play","position":30.0,"rate":1.5}),
        5000.0,
    )
    .await;
    let seq0 = states[0]["seq"].as_u64().unwrap();

    // Within the threshold: no hint.
    report(&v1, &states[1], -0.015, "playing").await;
    let (before, _) = v1.until_snapshot().await;
    assert!(
        of_type(&before, "sync.hint").is_empty(),
        "15 ms: {before:?}"
    );

    // 200 ms ahead: a nudge, with the drift as the server sees it.
    report(&v1, &states[1], 0.2, "playing").await;
    let h = v1.wait_type("sync.hint").await;
    assert_eq!(h["action"], "nudge", "{h}");
    assert_near(h["drift_ms"].as_f64().unwrap(), 200.0, 15.0, "v1 drift_ms");

    // 2.5 s behind: past the 1 s seek threshold, a seek.
    report(&v2, &states[2], -2.5, "playing").await;
    let h = v2.wait_type("sync.hint").await;
    assert_eq!(h["action"], "seek", "{h}");
    assert_near(
        h["drift_ms"].as_f64().unwrap(),
        -2500.0,
        15.0,
        "v2 drift_ms",
    );

    // A hint is for its viewer only, and a viewer never moves the room.
    let (before, welcome) = host.until_snapshot().await;
    assert!(of_type(&before, "sync.hint").is_empty(), "host: {before:?}");
    assert!(
        of_type(&before, "playback.state").is_empty(),
        "host: {before:?}"
    );
    assert_eq!(welcome["room"]["playback"]["seq"].as_u64(), Some(seq0));
    let (before, _) = v1.until_snapshot().await;
    assert!(
        of_type(&before, "sync.hint").is_empty(),
        "v1 got v2's hint: {before:?}"
    );
    assert_eq!(metric(&s, "tandem_room_sync_hints_total"), 2.0);
    assert_eq!(metric(&s, "tandem_room_drift_corrections_total"), 0.0);
    s.shutdown().await;
}

// ---- idle / away -------------------------------------------------------------------

fn is_status(v: &Value, user: &str, status: &str) -> bool {
    v["type"] == "presence.update" && v["member"]["id"] == user && v["member"]["status"] == status
}

/// The host loads a video; returns the waiting state it got.
async fn load(host: &mut Client) -> Value {
    host.send(
        json!({"type":"playback.command","action":"load","position":0.0,
        "media":{"url":"/media/x.webm"},"at":host.local_now()}),
    )
    .await;
    let st = host
        .wait_for(|v| v["type"] == "playback.state" && v["reason"] == "command")
        .await;
    assert_eq!(st["waiting"], true, "{st}");
    st
}

async fn ready(c: &Client) {
    c.send(json!({"type":"playback.report","position":0.0,"state":"ready","at":c.local_now()}))
        .await;
}

/// The barrier fired: `playback.state reason=ready`, playing, starting in the future.
async fn started(c: &mut Client) -> Value {
    let st = c
        .wait_for(|v| v["type"] == "playback.state" && v["reason"] == "ready")
        .await;
    assert_eq!(st["paused"], false);
    assert_eq!(st["waiting"], false);
    st
}

/// The barrier is still waiting (asserted through a snapshot, not a sleep).
async fn still_waiting(c: &mut Client) {
    let (before, welcome) = c.until_snapshot().await;
    assert!(
        !before.iter().any(|v| v["reason"] == "ready"),
        "the barrier fired: {before:?}"
    );
    assert_eq!(welcome["room"]["playback"]["waiting"], true);
}

// The ready barrier's own timeout is 60 s in these tests, longer than any wait for an
// event (10 s): a barrier that fires did so because nobody else was waited for.
fn no_barrier_timeout(c: &mut Config) {
    c.rooms.ready_timeout_ms = 60000;
}

#[tokio::test]
async fn a_member_silent_for_idle_after_ms_is_idle_not_waited_for_and_active_again() {
    let dir = TempDir::new("sync-idle");
    let idle_ms = 400.0;
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(|c| c.rooms.idle_after_ms = 400)
        .config(no_barrier_timeout)
        .spawn()
        .await;
    let room = "idle";
    let mut host = Client::connect(
        &s.ws_url(room, &s.room_token(room, "host", false)),
        0.0,
        None,
    )
    .await;
    let v = Client::connect(&s.ws_url(room, &s.room_token(room, "v", false)), 0.0, None).await;
    let joined = now_ms();
    let me = v.welcome["room"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "v")
        .unwrap()
        .clone();
    assert_eq!(me["status"], "active");

    // No report from v: idle, after idle_after_ms and not before.
    host.wait_for(|m| is_status(m, "v", "idle")).await;
    let after = now_ms() - joined;
    assert!(
        after >= idle_ms - 60.0,
        "idle after {after} ms; idle_after_ms is {idle_ms}"
    );

    // The host (idle too by now) reports and is active; its load waits only for itself.
    host.send(
        json!({"type":"playback.report","position":0.0,"state":"paused","at":host.local_now()}),
    )
    .await;
    host.wait_for(|m| is_status(m, "host", "active")).await;
    load(&mut host).await;
    ready(&host).await;
    started(&mut host).await;

    // v reports again: active.
    v.send(json!({"type":"playback.report","position":0.0,"state":"paused","at":v.local_now()}))
        .await;
    let back = host.wait_for(|m| is_status(m, "v", "active")).await;
    assert_eq!(back["member"]["connected"], true);
    s.shutdown().await;
}

#[tokio::test]
async fn a_hidden_member_is_away_not_waited_for_and_active_when_visible() {
    let dir = TempDir::new("sync-idle");
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(no_barrier_timeout)
        .spawn()
        .await;
    let room = "away";
    let mut host = Client::connect(
        &s.ws_url(room, &s.room_token(room, "host", false)),
        0.0,
        None,
    )
    .await;
    let mut v = Client::connect(&s.ws_url(room, &s.room_token(room, "v", false)), 0.0, None).await;

    // Control: an active member is waited for.
    load(&mut host).await;
    ready(&host).await;
    still_waiting(&mut host).await;
    ready(&v).await;
    started(&mut host).await;

    // Hidden: away, and a load no longer waits for it.
    v.send(json!({"type":"client.visibility","hidden":true}))
        .await;
    let u = host.wait_for(|m| is_status(m, "v", "away")).await;
    assert_eq!(u["member"]["connected"], true);
    load(&mut host).await;
    ready(&host).await;
    started(&mut host).await;

    // Visible again: active, and waited for again.
    v.send(json!({"type":"client.visibility","hidden":false}))
        .await;
    host.wait_for(|m| is_status(m, "v", "active")).await;
    v.wait_for(|m| is_status(m, "v", "active")).await;
    load(&mut host).await;
    ready(&host).await;
    still_waiting(&mut host).await;
    ready(&v).await;
    started(&mut host).await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_member_hidden_or_lost_while_the_barrier_waits_is_no_longer_waited_for() {
    let dir = TempDir::new("sync-idle");
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(no_barrier_timeout)
        .spawn()
        .await;
    let room = "away-mid-barrier";
    let mut host = Client::connect(
        &s.ws_url(room, &s.room_token(room, "host", false)),
        0.0,
        None,
    )
    .await;
    let v = Client::connect(&s.ws_url(room, &s.room_token(room, "v", false)), 0.0, None).await;
    let w = Client::connect(&s.ws_url(room, &s.room_token(room, "w", false)), 0.0, None).await;

    load(&mut host).await;
    ready(&host).await;
    still_waiting(&mut host).await;
    // v switches tabs while the video loads: the barrier stops waiting for v ...
    v.send(json!({"type":"client.visibility","hidden":true}))
        .await;
    host.wait_for(|m| is_status(m, "v", "away")).await;
    still_waiting(&mut host).await; // ... but still for w
    // ... and w's connection drops (no close frame: it is within its grace period).
    drop(w);
    let u = host
        .wait_for(|m| m["type"] == "presence.update" && m["member"]["id"] == "w")
        .await;
    assert_eq!(u["member"]["connected"], false);
    started(&mut host).await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_barrier_with_nobody_to_wait_for_starts_at_once() {
    let dir = TempDir::new("sync-idle");
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(no_barrier_timeout)
        .spawn()
        .await;
    let mut host = Client::connect(
        &s.ws_url("alone", &s.room_token("alone", "host", false)),
        0.0,
        None,
    )
    .await;
    // A host whose tab is hidden loads (say, from a keyboard shortcut): nobody non-idle
    // is connected, so nobody's `ready` is awaited.
    host.send(json!({"type":"client.visibility","hidden":true}))
        .await;
    host.wait_for(|m| is_status(m, "host", "away")).await;
    load(&mut host).await;
    started(&mut host).await;
    s.shutdown().await;
}
