//! `tandem-loadtest whep` on a small load against a server in this process: one
//! publisher, a few viewers, real ICE/DTLS/SRTP; the report must hold sane values,
//! with VP8 and with H.264.

use crate::support::*;
use std::time::Duration;

use tandem_loadtest::client::PublishOptions;
use tandem_loadtest::media::VideoCodec;
use tandem_loadtest::whep::{self, WhepConfig};

/// A small run of `viewers` against `app`, 1 Mbps of `codec` video and Opus.
fn small_run(app: &TestApp, stream: &str, viewers: usize, codec: VideoCodec) -> WhepConfig {
    WhepConfig {
        base: app.base.clone(),
        stream: stream.into(),
        publish_token: app.publish_token(stream),
        subscribe_token: app.subscribe_token(stream),
        // The server runs in this process: CPU figures include the clients, the
        // test only checks that they are measured.
        server_pid: Some(std::process::id()),
        viewers,
        ramp_per_s: 20.0,
        threads: 1,
        duration: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(20),
        publish: PublishOptions {
            codec,
            video_bitrate_bps: 1_000_000,
            fps: 30,
            keyframe_interval_s: 2.0,
            audio: true,
            pacing_factor: 2.5,
        },
        bare_duration: Duration::from_millis(200),
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_mode_reports_packets_latency_and_no_loss() {
    let _media = media_lock().await;
    let app = spawn_app().await;
    let cfg = small_run(&app, "lt-small", 5, VideoCodec::Vp8);
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
    // viewer's socket, which comes before the viewer thread reads it, packet by
    // packet, so at every percentile.
    let socket = &r.latency_at_socket;
    assert_eq!(socket.count, r.latency.count, "{table}");
    assert!(
        socket.p50_ms > 0.0 && socket.p50_ms <= r.latency.p50_ms,
        "{table}"
    );
    assert!(socket.p99_ms <= r.latency.p99_ms, "{table}");
    assert!(socket.p999_ms <= r.latency.p999_ms, "{table}");
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

/// OBS publishes H.264: the generator can too, and its viewers negotiate it from
/// the server's answer and recognise its key frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_mode_publishes_h264() {
    let _media = media_lock().await;
    let app = spawn_app().await;
    let cfg = WhepConfig {
        bare_duration: Duration::ZERO,
        ..small_run(&app, "lt-h264", 3, VideoCodec::H264)
    };
    let r = whep::run(&cfg).await.expect("the whep run completes");
    let table = tandem_loadtest::report::table("whep", &whep::rows(&r));
    println!("{table}");

    assert_eq!(r.codec, VideoCodec::H264);
    assert!(table.contains("H.264"), "{table}");
    assert_eq!(r.viewers_connected, 3, "{table}\n{:?}", r.setup_errors);
    assert!(
        r.packets_received_per_s > 2.0 * r.packets_in_per_s,
        "{table}"
    );
    assert!(r.loss.expected > 500, "{table}");
    assert!(r.loss.lost * 100 <= r.loss.expected, "{table}");
    // Only an H.264 IDR or SPS counts as a key frame for a viewer that negotiated
    // H.264 (its payload type says so); each viewer saw one.
    assert_eq!(r.keyframe_wait.count, 3, "{table}");
    assert!(
        r.latency.count > 500 && r.latency_at_socket.count > 500,
        "{table}"
    );
    app.wait_sessions(0, Duration::from_secs(10)).await;
    app.shutdown().await;
}
