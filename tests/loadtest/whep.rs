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
            ..Default::default()
        },
        bare_duration: Duration::from_millis(200),
        progress: false,
        layers: Default::default(),
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

/// Simulcast (issue 15): the publisher sends q, h and f; three viewers pin one
/// each through the WHEP `layer` extension and receive that encoding alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_mode_simulcast_pinned_viewers_receive_their_encoding() {
    let _media = media_lock().await;
    let app = spawn_app().await;
    let mut cfg = WhepConfig {
        bare_duration: Duration::ZERO,
        ..small_run(&app, "lt-simulcast", 3, VideoCodec::Vp8)
    };
    cfg.publish.simulcast = 3;
    cfg.publish.keyframe_interval_s = 1.0;
    cfg.layers.pin = vec!["q".into(), "h".into(), "f".into()];
    let r = whep::run(&cfg).await.expect("the whep run completes");
    let table = tandem_loadtest::report::table("whep", &whep::rows(&r));
    println!("{table}");

    assert_eq!(r.viewers_connected, 3, "{table}\n{:?}", r.setup_errors);
    let sim = r.simulcast.as_ref().expect("simulcast figures");
    assert_eq!(sim.rids, ["q", "h", "f"], "{table}");
    assert_eq!(sim.layer_requests, 3, "{table}");
    assert_eq!(sim.layer_request_errors, 0, "{table}");
    assert_eq!(sim.pins_not_reached, 0, "{table}");
    for (pin, rid) in ["q", "h", "f"].iter().enumerate() {
        let g = sim
            .groups
            .iter()
            .find(|g| g.group == format!("pinned {rid}"))
            .unwrap_or_else(|| panic!("a group pinned to {rid}: {table}"));
        assert_eq!(g.viewers, 1, "{table}");
        assert!(g.window_packets[pin] > 30, "{rid} arrived: {table}");
        assert_eq!(g.viewers_off_pin, 0, "{rid} alone: {table}");
        let others: u64 = (0..4)
            .filter(|k| *k != pin)
            .map(|k| g.window_packets[k])
            .sum();
        assert_eq!(others, 0, "no other encoding for {rid}: {table}");
    }
    // A pin moves a viewer only at the pinned encoding's key frame.
    assert_eq!(sim.changes_not_on_keyframe, 0, "{table}");
    assert!(r.loss.lost * 100 <= r.loss.expected, "{table}");
    app.wait_sessions(0, Duration::from_secs(10)).await;
    app.shutdown().await;
}

/// The switch mode: two viewers alternate between q and f; switches are asked,
/// arrive, and the server counts them (the times are measured, not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_mode_simulcast_switches_are_timed() {
    let _media = media_lock().await;
    let app = spawn_app().await;
    let mut cfg = WhepConfig {
        bare_duration: Duration::ZERO,
        ..small_run(&app, "lt-switch", 2, VideoCodec::Vp8)
    };
    cfg.duration = Duration::from_secs(4);
    cfg.publish.simulcast = 3;
    cfg.publish.keyframe_interval_s = 1.0;
    cfg.layers.switches = 2;
    cfg.layers.switch_every = Duration::from_secs(1);
    let r = whep::run(&cfg).await.expect("the whep run completes");
    let table = tandem_loadtest::report::table("whep", &whep::rows(&r));
    println!("{table}");

    assert_eq!(r.viewers_connected, 2, "{table}\n{:?}", r.setup_errors);
    let sim = r.simulcast.as_ref().expect("simulcast figures");
    assert_eq!(sim.layer_request_errors, 0, "{table}");
    let s = sim.switch.as_ref().expect("switch figures");
    assert_eq!(s.between, ("q".to_string(), "f".to_string()), "{table}");
    assert!(s.asked > 0, "{table}");
    assert!(s.completed > 0, "switches arrived: {table}");
    assert!(
        sim.server
            .switches_by_reason
            .get("request")
            .is_some_and(|n| *n > 0.0),
        "the server counted requested switches: {table}"
    );
    assert!(sim.changes > 0, "{table}");
    app.wait_sessions(0, Duration::from_secs(10)).await;
    app.shutdown().await;
}
