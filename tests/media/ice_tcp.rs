//! ICE-TCP is the fallback for viewers whose UDP is blocked: the media port also
//! accepts TCP (RFC 6544 passive, RFC 4571 framing). These tests exist to prove
//! that a framed connectivity check on that port reaches the right session and is
//! answered with the client's address, and that a check naming no session gets
//! the connection closed rather than a reply.

use std::time::Duration;

use crate::support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAGIC: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// A Binding request as a controlling ICE agent sends it before nominating (regular
/// nomination, so no USE-CANDIDATE), with MESSAGE-INTEGRITY
/// keyed by the server's ice-pwd (RFC 8489 §14.5) and a FINGERPRINT.
fn binding_request(username: &str, password: &str, txid: [u8; 12]) -> Vec<u8> {
    let mut body = Vec::new();
    attr(&mut body, 0x0006, username.as_bytes()); // USERNAME
    attr(&mut body, 0x0024, &0x6e00_1eff_u32.to_be_bytes()); // PRIORITY
    attr(&mut body, 0x802A, &7u64.to_be_bytes()); // ICE-CONTROLLING
    let header = |len: usize| {
        let mut h = vec![0x00, 0x01];
        h.extend_from_slice(&(len as u16).to_be_bytes());
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&txid);
        h
    };
    // The integrity covers the header with a length that includes its own attribute.
    let mut msg = header(body.len() + 24);
    msg.extend_from_slice(&body);
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        password.as_bytes(),
    );
    let mac = ring::hmac::sign(&key, &msg);
    attr(&mut body, 0x0008, mac.as_ref());
    let mut msg = header(body.len() + 8);
    msg.extend_from_slice(&body);
    let crc = crc32(&msg) ^ 0x5354_554e;
    attr(&mut body, 0x8028, &crc.to_be_bytes());
    let mut msg = header(body.len());
    msg.extend_from_slice(&body);
    msg
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn sdp_attr<'a>(sdp: &'a str, name: &str) -> &'a str {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix(&format!("a={name}:")))
        .unwrap_or_else(|| panic!("answer has no a={name}"))
}

async fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.expect("frame length");
    let mut frame = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut frame).await.expect("frame body");
    frame
}

#[tokio::test]
async fn a_framed_check_on_the_media_port_is_answered_over_tcp() {
    let app = spawn_app().await;
    let resp = app
        .http
        .post(app.whep_url("tcp1"))
        .bearer_auth(app.subscribe_token("tcp1"))
        .header("content-type", "application/sdp")
        .body(CHROMIUM_RECVONLY_OFFER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let answer = resp.text().await.unwrap();
    assert!(
        answer.contains("tcptype passive"),
        "the answer offers a passive TCP candidate:\n{answer}"
    );
    let server_ufrag = sdp_attr(&answer, "ice-ufrag");
    let server_pwd = sdp_attr(&answer, "ice-pwd");
    let client_ufrag = sdp_attr(CHROMIUM_RECVONLY_OFFER, "ice-ufrag");

    let mut stream = TcpStream::connect(("127.0.0.1", app.media_port))
        .await
        .unwrap();
    let local = stream.local_addr().unwrap();
    let txid = [9u8; 12];
    let request = binding_request(&format!("{server_ufrag}:{client_ufrag}"), server_pwd, txid);
    let mut framed = (request.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&request);
    stream.write_all(&framed).await.unwrap();

    // Other frames may come first (the server's own checks on the new pair); the
    // answer is the Binding success response for our transaction.
    let reply = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let frame = read_frame(&mut stream).await;
            if frame.len() >= 20 && frame[0..2] == [0x01, 0x01] && frame[8..20] == txid {
                return frame;
            }
        }
    })
    .await
    .expect("the server answers the check within 10 s");
    // XOR-MAPPED-ADDRESS carries the address the server saw: our TCP socket.
    let mut at = 20;
    let mut mapped = None;
    while at + 4 <= reply.len() {
        let kind = u16::from_be_bytes([reply[at], reply[at + 1]]);
        let len = u16::from_be_bytes([reply[at + 2], reply[at + 3]]) as usize;
        if kind == 0x0020 {
            let port = u16::from_be_bytes([reply[at + 6], reply[at + 7]]) ^ 0x2112;
            mapped = Some(port);
        }
        at += 4 + len.div_ceil(4) * 4;
    }
    assert_eq!(mapped, Some(local.port()), "the server saw our TCP address");
    app.shutdown().await;
}

#[tokio::test]
async fn a_check_for_no_session_closes_the_connection() {
    let app = spawn_app().await;
    let mut stream = TcpStream::connect(("127.0.0.1", app.media_port))
        .await
        .unwrap();
    let request = binding_request("nosuchufrag:x", "0123456789abcdef0123456789", [1u8; 12]);
    let mut framed = (request.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&request);
    stream.write_all(&framed).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("the server closes the connection within 10 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "no reply, just EOF");
    assert_eq!(app.session_count(), 0);
    app.shutdown().await;
}
