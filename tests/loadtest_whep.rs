//! `tandem-loadtest whep` on a small load against a server in this process: one
//! publisher, five viewers, real ICE/DTLS/SRTP; the report must hold sane values.

mod common;

use std::time::Duration;

use tandem_loadtest::client::PublishOptions;
use tandem_loadtest::whep::{self, WhepConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_mode_reports_packets_latency_and_no_loss() {
    let _media = common::media_lock().await;
    let app = common::spawn_app().await;
    let cfg = WhepConfig {
        base: app.base.clone(),
        stream: "lt-small".into(),
        publish_token: app.publish_token("lt-small"),
        subscribe_token: app.subscribe_token("lt-small"),
        // The server runs in this process: CPU figures include the clients, the
        // test only checks that they are measured.
        server_pid: Some(std::process::id()),
        viewers: 5,
        ramp_per_s: 20.0,
        threads: 1,
        duration: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(20),
        publish: PublishOptions {
            video_bitrate_bps: 1_000_000,
            fps: 30,
            keyframe_interval_s: 2.0,
            audio: true,
            pacing_factor: 2.5,
        },
        bare_duration: Duration::from_millis(200),
        progress: false,
    };
    let r = whep::run(&cfg).await.expect("the whep run completes");
    let table = tandem_loadtest::report::table("whep", &whep::rows(&r));
    println!("{table}");

    assert_eq!(r.viewers_connected, 5, "{table}\n{:?}", r.setup_errors);
    assert_eq!(r.viewers_failed, 0, "{table}");
    // ~30 fps × 4 packets + 50 audio packets a second, to each of 5 viewers.
    assert!(r.packets_in_per_s > 100.0, "{table}");
    assert!(r.packets_out_per_s > 4.0 * r.packets_in_per_s, "{table}");
    assert!(
        r.packets_received_per_s > 4.0 * r.packets_in_per_s,
        "{table}"
    );
    assert!(r.loss.expected > 1000, "{table}");
    assert!(
        r.loss.lost * 100 <= r.loss.expected,
        "loss should be ≈ 0 on loopback: {table}"
    );
    assert!(r.latency.count > 1000, "{table}");
    assert!(
        r.latency.p50_ms > 0.0 && r.latency.p50_ms < 1000.0,
        "{table}"
    );
    assert!(r.latency.p99_ms >= r.latency.p50_ms, "{table}");
    // Every measured packet also carries the kernel's stamp of its arrival in the
    // viewer's socket, which comes before the viewer thread reads it.
    let socket = &r.latency_at_socket;
    assert_eq!(socket.count, r.latency.count, "{table}");
    assert!(
        socket.p50_ms > 0.0 && socket.p50_ms <= r.latency.p50_ms,
        "{table}"
    );
    // The server's own share, read from its histogram: a bucket bound, never above
    // what the clients measured end to end plus a bucket's width.
    assert!(r.server_forwarding_delay_mean_ms > 0.0, "{table}");
    assert!(
        r.server_forwarding_delay_p99_le_ms
            .is_some_and(|p99| p99 >= r.server_forwarding_delay_mean_ms),
        "{table}"
    );
    assert_eq!(
        r.keyframe_wait.count, 5,
        "every viewer saw a key frame: {table}"
    );
    assert!(r.keyframe_wait.p99_ms < 5000.0, "{table}");
    let server = r
        .server
        .as_ref()
        .expect("CPU of the server process measured");
    assert!(server.total_us_per_forwarded > 0.0, "{table}");
    let bare = r
        .bare_udp_sendmmsg
        .as_ref()
        .expect("bare UDP limit measured");
    assert!(bare.ops > 0 && bare.total_us_per_op > 0.0, "{table}");
    // Sessions were ended by the tool (DELETE): nothing is left in the SFU.
    app.wait_sessions(0, Duration::from_secs(10)).await;
    app.shutdown().await;
}
