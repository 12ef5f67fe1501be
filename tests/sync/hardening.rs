//! Issue 11 hardening tests: the sync WebSocket (items 1, 11 close codes, 14b).
//!
//! Most probes here speak WebSocket over a raw TCP socket: a client that writes and
//! never reads (a small receive buffer, so the server's writes back up at once) is
//! something no WebSocket library lets a test be.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// Sum of the samples of `key` (a metric name, or a name with its labels) in the
/// server's Prometheus text; 0 when absent.
fn metric(s: &TestApp, key: &str) -> f64 {
    s.registry_metrics()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(k, _)| *k == key)
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .sum()
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after [`WAIT`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A masked client frame (RFC 6455 §5.2): FIN, `opcode`, `payload`.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x80 | opcode];
    let n = payload.len();
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(&MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    f
}

fn text_frame(v: &Value) -> Vec<u8> {
    frame(0x1, v.to_string().as_bytes())
}

/// A WebSocket client on a raw TCP socket whose receive buffer is `rcvbuf` bytes.
struct Raw {
    rd: Reader,
    wr: OwnedWriteHalf,
}

/// The read half of a [`Raw`] client.
struct Reader {
    rd: OwnedReadHalf,
    /// Bytes read; those before `pos` are parsed.
    buf: Vec<u8>,
    pos: usize,
}

impl Raw {
    async fn connect(s: &TestApp, room: &str, user: &str, rcvbuf: u32) -> Raw {
        let addr = s.running.as_ref().unwrap().http_addr;
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(rcvbuf).unwrap();
        // Little in flight: the server reads what a flood left until its EOF, so
        // that its close frame is not thrown away by a reset.
        sock.set_send_buffer_size(64 * 1024).unwrap();
        let mut tcp = sock.connect(addr).await.unwrap();
        let req = format!(
            "GET /v1/rooms/{room}/ws?token={} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            s.room_token(room, user, false)
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
                .await
                .expect("upgrade answer")
                .unwrap();
            assert!(n > 0, "connection closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        buf.drain(..end);
        let (rd, wr) = tcp.into_split();
        Raw {
            rd: Reader { rd, buf, pos: 0 },
            wr,
        }
    }
}

impl Reader {
    /// The next server frame `(opcode, payload)`; `None` at EOF or a reset.
    async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            // Parsed from `pos` and compacted now and then: a flood's answers are
            // megabytes of small frames, to be read before the server's drain
            // deadline (moving the buffer per frame was too slow for it).
            let b = &self.buf[self.pos..];
            if b.len() >= 2 {
                let (op, len7) = (b[0] & 0x0f, (b[1] & 0x7f) as usize);
                let (hdr, len) = match len7 {
                    126 if b.len() >= 4 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
                    127 if b.len() >= 10 => (
                        10,
                        u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (2, n),
                };
                if hdr != usize::MAX && b.len() >= hdr + len {
                    let payload = b[hdr..hdr + len].to_vec();
                    self.pos += hdr + len;
                    return Some((op, payload));
                }
            }
            self.buf.drain(..self.pos);
            self.pos = 0;
            let mut chunk = [0u8; 64 * 1024];
            match self.rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads frames until the close frame; its code (`None`: the connection ended
    /// without one). Also returns the text messages read before it.
    async fn close_code(&mut self) -> (Option<u16>, Vec<Value>) {
        let mut texts = Vec::new();
        let code = tokio::time::timeout(WAIT, async {
            while let Some((op, payload)) = self.read_frame().await {
                match op {
                    0x8 => {
                        return (payload.len() >= 2)
                            .then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    }
                    0x1 => texts.push(serde_json::from_slice(&payload).unwrap()),
                    _ => {}
                }
            }
            None
        })
        .await
        .expect("the server closes the connection");
        (code, texts)
    }
}

/// Writes `unit` over and over to `wr`, never reading, until the server stops taking
/// it (the write fails) or `cap` bytes were written; counts what was written.
fn flood(
    mut wr: OwnedWriteHalf,
    unit: Vec<u8>,
    cap: u64,
    written: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<OwnedWriteHalf> {
    // A batch of units per write: the flood is limited by the server, not syscalls.
    let batch: Vec<u8> = unit.repeat((16 * 1024 / unit.len()).max(1));
    tokio::spawn(async move {
        while written.load(Ordering::Relaxed) < cap {
            if wr.write_all(&batch).await.is_err() {
                break;
            }
            written.fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        wr
    })
}

const BUDGET: u64 = 64 * 1024;

/// The receive buffer of a client that does not read: small, so the server's
/// answers back up into its queue soon, but not tiny: with a 4 KiB window the
/// backlog it reads at the end crawled (delayed ACKs) past the server's drain
/// deadline, and the close frame behind it was dropped.
const SMALL_RCVBUF: u32 = 64 * 1024;
const QUEUED_BYTES: &str = "tandem_ws_queued_bytes";
const CLOSED_BACKLOG: &str = "tandem_ws_limit_closes_total{reason=\"queued_bytes\"}";

/// A server whose only per-connection outbound limit is a 64 KiB byte budget (the
/// frame-count `queue_depth` is out of reach) and whose room never pings.
async fn budget_server(dir: &TempDir) -> TestApp {
    TestApp::builder()
        .data_dir(dir.path())
        .config(|c| {
            c.rooms.max_queued_bytes_per_connection = 65536;
            c.rooms.queue_depth = 1000000;
            c.rooms.ping_burst = 0;
            c.rooms.ping_interval_ms = 600000;
            c.rooms.messages_per_second = 1000000.0;
            c.rooms.messages_burst = 1000000.0;
        })
        .spawn()
        .await
}

/// Floods `raw`'s server with `unit` until the server closes the connection for
/// `reason`, checking on the way that the bytes it queues stay within the budget;
/// then reads what the server sent and returns the close code.
async fn flood_until_closed(s: &TestApp, raw: Raw, unit: Vec<u8>, reason: &str) -> Option<u16> {
    // Before the fix the server took all of this (and queued its answers) without
    // closing: 24 MiB of 1-byte frames grew its RSS by 464 MB.
    const CAP: u64 = 48 * 1024 * 1024;
    let closes = format!("tandem_ws_limit_closes_total{{reason=\"{reason}\"}}");
    let before = metric(s, &closes);
    let Raw { mut rd, wr } = raw;
    let written = Arc::new(AtomicU64::new(0));
    let writer = flood(wr, unit, CAP, written.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut peak = 0.0f64;
    while metric(s, &closes) < before + 1.0 {
        peak = peak.max(metric(s, QUEUED_BYTES));
        assert!(
            !writer.is_finished(),
            "the server took {} bytes from a client that never reads without closing it",
            written.load(Ordering::Relaxed)
        );
        assert!(Instant::now() < deadline, "no close within 60 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Queued bytes: at most the budget plus the one frame that crossed it.
    assert!(peak <= (BUDGET + 1024) as f64, "queued {peak} bytes");
    assert!(written.load(Ordering::Relaxed) < CAP);
    // Reading again, the client finds the close frame after what was queued. (The
    // writer may be blocked in a write the server no longer reads: drop it.)
    writer.abort();
    let (code, _) = rd.close_code().await;
    // The connection task ended and gave back what it queued.
    until("the connection task ends", || {
        metric(s, "tandem_room_connections") == 0.0 && metric(s, QUEUED_BYTES) == 0.0
    })
    .await;
    code
}

// Item 1: a member that sends pings and never reads made the server queue every
// pong (RSS 137 MB -> 1.96 GB in 8.5 s). Now its queued bytes stop at
// `rooms.max_queued_bytes_per_connection` and it is closed with 1013.
#[tokio::test]
async fn ping_flood_from_a_member_that_never_reads_is_closed_at_the_byte_budget() {
    let dir = TempDir::new("h-ws");
    let s = budget_server(&dir).await;
    let mut raw = Raw::connect(&s, "pings", "p", SMALL_RCVBUF).await;
    raw.wr
        .write_all(&text_frame(&json!({"type":"hello"})))
        .await
        .unwrap();
    // Joined (the room's broadcasts would fill the budget too: wait for welcome).
    loop {
        let (op, text) = raw.rd.read_frame().await.expect("welcome");
        if op == 0x1 && serde_json::from_slice::<Value>(&text).unwrap()["type"] == "welcome" {
            break;
        }
    }
    let code = flood_until_closed(&s, raw, frame(0x9, &[b'p'; 125]), "queued_bytes").await;
    assert_eq!(code, Some(1013));
    assert!(metric(&s, CLOSED_BACKLOG) >= 1.0);
    s.shutdown().await;
}

// Item 1: before `hello` nothing drained the queue, and every bad frame got an
// `error` (24 MB of 1-byte frames -> +464 MB RSS). Now a few frames get an
// answer, then the connection is closed with 1008, whoever reads or not.
#[tokio::test]
async fn bad_frames_before_hello_get_a_few_errors_then_1008() {
    let dir = TempDir::new("h-ws");
    let s = budget_server(&dir).await;
    // A client that reads: a few `error`s, then the close.
    let mut raw = Raw::connect(&s, "early", "e", 1 << 20).await;
    for _ in 0..64 {
        raw.wr.write_all(&frame(0x1, b"x")).await.unwrap();
    }
    let (code, texts) = raw.rd.close_code().await;
    assert_eq!(code, Some(1008));
    assert!(!texts.is_empty() && texts.len() < 16, "{texts:?}");
    assert!(texts.iter().all(|t| t["type"] == "error"), "{texts:?}");

    // A client that never reads: the same close, after a bounded amount.
    let raw = Raw::connect(&s, "early", "f", SMALL_RCVBUF).await;
    let code = flood_until_closed(&s, raw, frame(0x1, b"x"), "pre_hello_frames").await;
    assert_eq!(code, Some(1008));
    // Pings before hello count too.
    let raw = Raw::connect(&s, "early", "g", SMALL_RCVBUF).await;
    flood_until_closed(&s, raw, frame(0x9, &[b'p'; 125]), "pre_hello_frames").await;
    assert!(
        metric(
            &s,
            "tandem_ws_limit_closes_total{reason=\"pre_hello_frames\"}"
        ) >= 3.0
    );
    s.shutdown().await;
}

// Item 1: the hello deadline still applies to a client that sends nothing.
#[tokio::test]
async fn the_hello_deadline_still_closes_a_silent_client() {
    let dir = TempDir::new("h-ws");
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(|c| c.rooms.hello_timeout_ms = 200)
        .spawn()
        .await;
    let mut raw = Raw::connect(&s, "quiet", "q", 1 << 20).await;
    let (code, texts) = raw.rd.close_code().await;
    assert_eq!(code, Some(1008));
    assert_eq!(texts.len(), 1);
    assert_eq!(texts[0]["type"], "error");
    s.shutdown().await;
}

// Item 11: a 70 KB frame was closed without 1009 (SYNC_PROTOCOL.md: "Largest
// accepted frame: 16 KiB (close code 1009 past that)"). Before and after hello.
#[tokio::test]
async fn a_70_kb_frame_is_closed_with_1009_before_and_after_hello() {
    let dir = TempDir::new("h-ws");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let big = frame(
        0x1,
        json!({"type":"chat.send","text":"y".repeat(70 * 1024),"client_msg_id":"b"})
            .to_string()
            .as_bytes(),
    );
    // Before hello, raw: the server must read (and drop) the rest of the frame or
    // its reset can overtake the close frame.
    let mut raw = Raw::connect(&s, "big", "a", 1 << 20).await;
    raw.wr.write_all(&big).await.unwrap();
    assert_eq!(raw.rd.close_code().await.0, Some(1009));
    // After hello, raw.
    let mut raw = Raw::connect(&s, "big", "b", 1 << 20).await;
    raw.wr
        .write_all(&text_frame(&json!({"type":"hello"})))
        .await
        .unwrap();
    raw.wr.write_all(&big).await.unwrap();
    let (code, texts) = raw.rd.close_code().await;
    assert_eq!(code, Some(1009), "{texts:?}");
    assert_eq!(texts[0]["type"], "welcome");
    // And with a WebSocket library client, both phases.
    let url = s.ws_url("big", &s.room_token("big", "c", false));
    let mut c = Client::open(&url, 0.0).await.unwrap();
    c.send_raw(Message::text("y".repeat(70 * 1024))).await;
    assert_eq!(c.closed().await, Some(1009));
    let mut c = Client::connect(&url, 0.0, None).await;
    c.send_raw(Message::text("y".repeat(70 * 1024))).await;
    assert_eq!(c.closed().await, Some(1009));
    s.shutdown().await;
}

// Item 14: a joining member received its own `presence.join` before `welcome`.
// `welcome` (which lists the members, the joiner included) is the first message
// after `hello`, the joiner never gets its own `presence.join`, the others do.
#[tokio::test]
async fn welcome_comes_first_and_the_joiner_gets_no_presence_join_of_its_own() {
    let dir = TempDir::new("h-ws");
    let s = TestApp::builder().data_dir(dir.path()).spawn().await;
    let mut a = Client::connect(
        &s.ws_url("order", &s.room_token("order", "a", false)),
        0.0,
        None,
    )
    .await;
    let mut b = Client::open(&s.ws_url("order", &s.room_token("order", "b", false)), 0.0)
        .await
        .unwrap();
    b.send(json!({"type":"hello"})).await;
    let first = b.next().await;
    assert_eq!(first["type"], "welcome", "first message: {first}");
    let me = first["session"].clone();
    assert!(
        first["room"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["session"] == me)
    );
    b.welcome = first;
    let (before, _) = b.until_snapshot().await;
    assert!(
        !before
            .iter()
            .any(|m| m["type"] == "presence.join" && m["member"]["session"] == me),
        "the joiner got its own presence.join: {before:?}"
    );
    let j = a.wait_type("presence.join").await;
    assert_eq!(j["member"]["session"], me);
    s.shutdown().await;
}

// Found while closing item 1: `time.ping` was answered by the connection task
// outside the per-connection message bucket, so a client that reads its pongs
// could make the server answer as fast as it sent. Past the burst the pings get
// `error rate_limited` (with `retry_after_ms`) instead of a pong.
#[tokio::test]
async fn time_pings_past_the_message_bucket_are_rate_limited() {
    let dir = TempDir::new("h-ws");
    let s = TestApp::builder()
        .data_dir(dir.path())
        .config(|c| {
            c.rooms.messages_per_second = 1.0;
            c.rooms.messages_burst = 10.0;
        })
        .spawn()
        .await;
    let url = s.ws_url("pings", &s.room_token("pings", "p", false));
    let mut c = Client::connect(&url, 0.0, None).await;
    for id in 0..40 {
        c.send(json!({"type":"time.ping","id":id,"t0":1.5})).await;
    }
    // One answer per ping, in order: pongs while the bucket lasts, then errors.
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 40 {
        let v = c
            .wait_for(|v| v["type"] == "time.pong" || v["type"] == "error")
            .await;
        if v["type"] == "time.pong" {
            pongs += 1;
        } else {
            assert_eq!(v["code"], "rate_limited", "{v}");
            assert_eq!(v["ref"], "time.ping", "{v}");
            assert!(v["retry_after_ms"].as_u64().unwrap() > 0, "{v}");
            limited += 1;
        }
    }
    // The bucket holds 10 and refills at 1/s: a slow machine may refill a few.
    assert!((10..=15).contains(&pongs), "{pongs} pongs of 40");
    s.shutdown().await;
}
