//! `tandem-loadtest sync` on a small load against a server in this process: two rooms
//! of four clients with skewed, drifting clocks; the report must hold sane values.

use crate::support::*;
use std::time::Duration;

use tandem_loadtest::sync::{self, SyncConfig};

const SECRET: &str = "loadtest-sync-identity-secret-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_reports_fanout_latency_and_position_error() {
    let app = TestApp::builder()
        .config(|c| c.jwt_secret = SECRET.into())
        .spawn()
        .await;
    let cfg = SyncConfig {
        base: app.base.clone(),
        jwt_secret: SECRET.into(),
        server_pid: Some(std::process::id()),
        rooms: 2,
        members: 4,
        command_rate: 2.0,
        ramp_per_s: 100.0,
        duration: Duration::from_secs(5),
        skew_ms: 10_000.0,
        drift_ppm: 100.0,
        bare_duration: Duration::from_millis(200),
        ..SyncConfig::default()
    };
    let r = sync::run(&cfg).await.expect("the sync run completes");
    let table = tandem_loadtest::report::table("sync", &sync::rows(&r));
    println!("{table}");

    assert_eq!(r.clients_connected, 8, "{table}\n{:?}", r.connect_errors);
    assert!(r.commands_sent >= 4, "{table}");
    // Every member (host included) hears each command.
    assert!(
        r.fanout_latency.count >= 4 * r.commands_sent.saturating_sub(2),
        "{table}"
    );
    assert!(
        r.fanout_latency.p50_ms > 0.0 && r.fanout_latency.p99_ms < 1000.0,
        "{table}"
    );
    // The kernel stamped each message as it reached the member's socket, which
    // is never after the member read it.
    let socket = &r.fanout_latency_at_socket;
    assert!(socket.count > 0 && socket.p50_ms > 0.0, "{table}");
    assert!(
        socket.p50_ms <= r.fanout_latency.p50_ms && socket.p99_ms <= r.fanout_latency.p99_ms,
        "{table}"
    );
    assert!(
        r.fanout_complete_at_socket.count > 0
            && r.fanout_complete_at_socket.p99_ms <= r.fanout_complete.p99_ms,
        "{table}"
    );
    assert!(r.position_samples > 0, "{table}");
    // Clocks 10 s apart still agree on the position: correction works end to end.
    assert!(r.position_error.p50_ms < 200.0, "{table}");
    // Every client has a clock estimate, and it is the skew it was given (±10 s),
    // not something else: the error is far below the skew.
    assert_eq!(r.clock_offset_error.count, 8, "{table}");
    assert!(r.clock_offset_error.max_ms < 1000.0, "{table}");
    assert!(
        r.messages_received > 0 && r.avg_message_bytes > 20.0,
        "{table}"
    );
    let bare = r.bare_tcp_write.as_ref().expect("bare TCP limit measured");
    assert!(bare.ops > 0 && bare.total_us_per_op > 0.0, "{table}");
    // The server's own side of fan-out comes from its histogram.
    assert!(
        r.server_broadcast_passes >= r.commands_sent as f64,
        "{table}"
    );
    assert!(
        r.server_broadcast_pass_mean_ms
            .is_some_and(|m| m > 0.0 && m < 1000.0),
        "{table}"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_only_members_and_reactions_measure_fanout_alone() {
    let app = TestApp::builder()
        .config(|c| c.jwt_secret = SECRET.into())
        .spawn()
        .await;
    let cfg = SyncConfig {
        base: app.base.clone(),
        jwt_secret: SECRET.into(),
        server_pid: Some(std::process::id()),
        rooms: 1,
        members: 6,
        command_rate: 0.01,
        reaction_rate: 20.0,
        listen_only: true,
        duration: Duration::from_secs(3),
        bare_duration: Duration::from_millis(200),
        ..SyncConfig::default()
    };
    let r = sync::run(&cfg).await.expect("the sync run completes");
    let table = tandem_loadtest::report::table("sync", &sync::rows(&r));
    println!("{table}");

    assert_eq!(r.clients_connected, 6, "{table}\n{:?}", r.connect_errors);
    assert!(r.listen_only && r.reactions_sent >= 20, "{table}");
    // Each reaction reaches all six members; little else is sent (no commands fall
    // in the window, listeners send no clock pings or reports).
    assert!(
        r.messages_received >= 6 * r.reactions_sent.saturating_sub(6),
        "{table}"
    );
    assert!(r.server_broadcast_passes > 0.0, "{table}");
    assert!(r.messages_per_server_core_s > 0.0, "{table}");
    app.shutdown().await;
}
