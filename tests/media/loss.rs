//! Issue 2, "Prove it" item 3: loss on a viewer's leg. A UDP relay inside the
//! test sits between one aiortc viewer and the server and drops 5 % of the media
//! packets (RTP and RTCP, both directions; ICE and DTLS pass so the call sets up
//! as usual). The SFU must answer the viewer's NACKs from its packet cache: the
//! server's `tandem_retransmitted_packets_total` rises, packets the relay dropped
//! come through again, and the viewer keeps decoding without a stall.
//!
//! The viewer reaches the relay because it rewrites the candidates of the answer
//! it receives to the relay's port (`viewer.py --relay`); the server learns the
//! relay's upstream address from the ICE checks, as it would any NAT's.
//!
//! The relay also drops NACKs and retransmissions. A browser asks again for a
//! packet that is still missing (libwebrtc's NackRequester, every round trip);
//! aiortc asks only when a new gap appears, so a lost NACK used to stall its
//! decoder until the next loss, a second or more in about one run in five. The
//! viewer therefore runs with `--nack-retry-ms 100`, the browser's behaviour.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::support::*;
use tokio::net::UdpSocket;
use tokio::sync::Mutex;

#[derive(Default)]
struct RelayCounts {
    down_forwarded: AtomicU64,
    down_dropped: AtomicU64,
    up_forwarded: AtomicU64,
    up_dropped: AtomicU64,
    /// Generic NACKs (RTCP RTPFB, FMT 1) the viewer sent that the relay passed on;
    /// the RTCP header stays readable under SRTCP.
    up_nacks: AtomicU64,
    /// Generic NACKs going the other way: the server asking the client (a publisher
    /// behind the relay) to resend.
    down_nacks: AtomicU64,
    /// Downstream RTP packets by payload type (the header stays readable under SRTP).
    down_payload_types: std::sync::Mutex<std::collections::BTreeMap<u8, u64>>,
    /// (SSRC, sequence number) of RTP packets the relay dropped on the way down.
    down_lost: std::sync::Mutex<std::collections::HashSet<(u32, u16)>>,
    /// Dropped packets that came through later: the SFU's retransmissions.
    down_recovered: AtomicU64,
}

/// (SSRC, sequence number) of an RTP packet; both stay readable under SRTP.
fn rtp_id(packet: &[u8]) -> Option<(u32, u16)> {
    let is_rtp =
        packet.len() > 12 && (128..=191).contains(&packet[0]) && !(192..=223).contains(&packet[1]);
    is_rtp.then(|| {
        (
            u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
            u16::from_be_bytes([packet[2], packet[3]]),
        )
    })
}

/// A UDP relay: the viewer talks to `front`, the relay talks to the server from
/// its own `back` socket. Drops `loss` of RTP/RTCP packets (first byte 128–191,
/// RFC 7983) with a fixed-seed generator, so runs are comparable.
struct LossyRelay {
    front_port: u16,
    counts: Arc<RelayCounts>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LossyRelay {
    async fn start(server: SocketAddr, loss: f64) -> LossyRelay {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        back.connect(server).await.unwrap();
        let front_port = front.local_addr().unwrap().port();
        let counts = Arc::new(RelayCounts::default());
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let threshold = (loss * u32::MAX as f64) as u32;

        let up = {
            let (front, back, counts, client) =
                (front.clone(), back.clone(), counts.clone(), client.clone());
            tokio::spawn(async move {
                let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
                let mut buf = vec![0u8; 2048];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *client.lock().await = Some(from);
                    if is_media(&buf[..n]) && rng.next() < threshold {
                        counts.up_dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    counts.up_forwarded.fetch_add(1, Ordering::Relaxed);
                    if n > 1 && buf[1] == 205 && buf[0] & 0x1f == 1 {
                        counts.up_nacks.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = back.send(&buf[..n]).await;
                }
            })
        };
        let down = {
            let (front, back, counts, client) =
                (front.clone(), back.clone(), counts.clone(), client.clone());
            tokio::spawn(async move {
                let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
                let mut buf = vec![0u8; 2048];
                loop {
                    let n = match back.recv(&mut buf).await {
                        Ok(n) => n,
                        // ICMP port unreachable from an earlier send: keep going.
                        Err(_) => continue,
                    };
                    let Some(to) = *client.lock().await else {
                        continue;
                    };
                    let rtp = rtp_id(&buf[..n]);
                    if is_media(&buf[..n]) && rng.next() < threshold {
                        counts.down_dropped.fetch_add(1, Ordering::Relaxed);
                        if let Some(id) = rtp {
                            counts.down_lost.lock().unwrap().insert(id);
                        }
                        continue;
                    }
                    if let Some(id) = rtp
                        && counts.down_lost.lock().unwrap().remove(&id)
                    {
                        counts.down_recovered.fetch_add(1, Ordering::Relaxed);
                    }
                    counts.down_forwarded.fetch_add(1, Ordering::Relaxed);
                    if n > 1 && buf[1] == 205 && buf[0] & 0x1f == 1 {
                        counts.down_nacks.fetch_add(1, Ordering::Relaxed);
                    }
                    if is_media(&buf[..n]) && n > 12 && !(192..=223).contains(&buf[1]) {
                        *counts
                            .down_payload_types
                            .lock()
                            .unwrap()
                            .entry(buf[1] & 0x7f)
                            .or_default() += 1;
                    }
                    let _ = front.send_to(&buf[..n], to).await;
                }
            })
        };
        LossyRelay {
            front_port,
            counts,
            tasks: vec![up, down],
        }
    }
}

impl Drop for LossyRelay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn is_media(packet: &[u8]) -> bool {
    matches!(packet.first(), Some(128..=191))
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_percent_loss_is_repaired_by_retransmission() {
    let _guard = media_lock().await;
    let app = spawn_app().await;
    let server: SocketAddr = format!("127.0.0.1:{}", app.media_port).parse().unwrap();
    let relay = LossyRelay::start(server, 0.05).await;

    let mut publisher = PyPeer::publisher(&app, "lossy", &["--codec", "VP8"]);
    publisher
        .wait_event("connected", Duration::from_secs(30))
        .await;
    let retransmitted_before = app.metric("tandem_retransmitted_packets_total", &[]).await;
    let nacks_before = app
        .metric("tandem_rtcp_feedback_total", &[("type", "nack")])
        .await;

    let relay_addr = format!("127.0.0.1:{}", relay.front_port);
    let mut viewer = PyPeer::viewer(
        &app,
        "viewer-behind-relay",
        "lossy",
        &[
            "--relay",
            &relay_addr,
            "--nack-retry-ms",
            "100",
            "--frames",
            "300",
            "--audio-frames",
            "200",
            "--min-seconds",
            "15",
            "--duration",
            "120",
            "--hold",
        ],
    );
    viewer.wait_event("reached", Duration::from_secs(150)).await;
    // Read the server's counters while the viewer is still connected; they may be
    // updated periodically, so allow a few seconds for them to catch up.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (retransmitted, nacks) = loop {
        let text = app.metrics().await;
        let retransmitted =
            metric_value(&text, "tandem_retransmitted_packets_total", &[]) - retransmitted_before;
        let nacks =
            metric_value(&text, "tandem_rtcp_feedback_total", &[("type", "nack")]) - nacks_before;
        if (retransmitted > 0.0 && nacks > 0.0) || std::time::Instant::now() >= deadline {
            break (retransmitted, nacks);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let answer = viewer
        .events
        .iter()
        .find(|e| e["event"] == "answered")
        .and_then(|e| e["answer"].as_str())
        .unwrap_or_default()
        .to_string();
    let done = viewer.stop(Duration::from_secs(30)).await;
    let c = &relay.counts;
    let (down_dropped, down_forwarded) = (
        c.down_dropped.load(Ordering::Relaxed),
        c.down_forwarded.load(Ordering::Relaxed),
    );
    let feedback: Vec<&str> = answer
        .lines()
        .filter(|l| l.starts_with("a=rtcp-fb") || l.starts_with("a=rtpmap"))
        .collect();
    let report = format!(
        "answer's codecs and feedback: {feedback:?}\nviewer {done}\nrelay: down {down_forwarded} forwarded / {down_dropped} dropped, \
         up {} / {}; NACK packets passed upstream: {}; downstream RTP by payload type: {:?}\n\
         server: {retransmitted} retransmitted, {nacks} NACKs received; relay saw {} dropped packets again",
        c.up_forwarded.load(Ordering::Relaxed),
        c.up_dropped.load(Ordering::Relaxed),
        c.up_nacks.load(Ordering::Relaxed),
        c.down_payload_types.lock().unwrap(),
        c.down_recovered.load(Ordering::Relaxed),
    );
    eprintln!("{report}");

    assert_eq!(done["ok"], true, "the viewer reached its goals: {report}");
    assert!(
        down_dropped > 20,
        "the relay really dropped media: {report}"
    );
    assert!(
        c.up_nacks.load(Ordering::Relaxed) > 0,
        "the viewer NACKed the lost packets: {report}"
    );
    // What the SFU sent back: packets the relay had dropped came through again
    // (plain RFC 4585 retransmission: same SSRC and sequence number).
    let recovered = c.down_recovered.load(Ordering::Relaxed);
    assert!(
        recovered > 0 && retransmitted > 0.0,
        "the SFU retransmitted lost packets ({recovered} dropped packets came through again): {report}"
    );
    // Continuous decoding: every whole second after the first frame had frames,
    // and no gap between two decoded frames reached one second.
    let per_second: Vec<f64> = done["frames_per_second"]
        .as_array()
        .map(|a| a.iter().map(num).collect())
        .unwrap_or_default();
    let whole = &per_second[..per_second.len().saturating_sub(1)];
    assert!(
        whole.len() >= 14,
        "ran ≥ 15 s after the first frame: {report}"
    );
    assert!(
        whole.iter().all(|&n| n >= 10.0),
        "at least 10 decoded frames in every second (30 fps source): {per_second:?}\n{report}"
    );
    assert!(
        num(&done["max_gap_s"]) < 1.0,
        "no decoding stall of a second or more: {report}"
    );
    assert_eq!(done["delete_status"], 200, "{report}");
    // The server's own account of it (what operators see).
    assert!(
        nacks > 0.0,
        "tandem_rtcp_feedback_total{{type=\"nack\"}} counts the viewer's NACKs: {report}"
    );
    assert!(
        retransmitted > 0.0,
        "tandem_retransmitted_packets_total rises under loss: {report}"
    );

    let done = publisher.stop(Duration::from_secs(30)).await;
    assert_eq!(done["delete_status"], 200, "{done}");
    app.wait_sessions(0, Duration::from_secs(10)).await;
    drop(relay);
    app.shutdown().await;
}

/// The same relay on the ingest leg: the publisher's packets to the server lose
/// 5 %. The SFU must NACK the publisher (the NACKs cross the relay towards it)
/// and a viewer on a clean leg must keep decoding without a stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_loss_is_nacked_upstream_and_viewers_keep_decoding() {
    let _guard = media_lock().await;
    let app = spawn_app().await;
    let server: SocketAddr = format!("127.0.0.1:{}", app.media_port).parse().unwrap();
    let relay = LossyRelay::start(server, 0.05).await;
    let relay_addr = format!("127.0.0.1:{}", relay.front_port);
    let mut publisher = PyPeer::publisher(
        &app,
        "lossy-ingest",
        &["--codec", "VP8", "--relay", &relay_addr],
    );
    publisher
        .wait_event("connected", Duration::from_secs(30))
        .await;
    let mut viewer = PyPeer::viewer(
        &app,
        "clean-viewer",
        "lossy-ingest",
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
    let done = viewer.done(Duration::from_secs(150)).await;
    let c = &relay.counts;
    let report = format!(
        "viewer {done}\nrelay: up {} forwarded / {} dropped; NACKs from the server to the publisher: {}",
        c.up_forwarded.load(Ordering::Relaxed),
        c.up_dropped.load(Ordering::Relaxed),
        c.down_nacks.load(Ordering::Relaxed),
    );
    assert!(
        c.up_dropped.load(Ordering::Relaxed) > 20,
        "the relay dropped ingest media: {report}"
    );
    assert!(
        c.down_nacks.load(Ordering::Relaxed) > 0,
        "the SFU NACKed the publisher for the lost packets: {report}"
    );
    assert_eq!(done["ok"], true, "the viewer reached its goals: {report}");
    let per_second: Vec<f64> = done["frames_per_second"]
        .as_array()
        .map(|a| a.iter().map(num).collect())
        .unwrap_or_default();
    let whole = &per_second[..per_second.len().saturating_sub(1)];
    assert!(
        whole.len() >= 9 && whole.iter().all(|f| *f > 0.0),
        "frames in every second after the first: {per_second:?}: {report}"
    );
    publisher.stop(Duration::from_secs(20)).await;
    app.shutdown().await;
}
