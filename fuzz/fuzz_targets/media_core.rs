//! The media core fed arbitrary input: datagrams from the publisher's and the
//! viewer's bound addresses (handed to their peer connections) and from
//! unknown ones over UDP and ICE-TCP, media from another worker, viewer NACKs,
//! publisher RTP, trickle fragments and timer ticks (the record format is
//! `CoreFuzz::run`'s). Each input gets a fresh core and fresh sessions, so a
//! crash replays from its input alone.
//!
//! The offers are the core unit tests' minimal browser-shaped ones (BUNDLE, audio
//! and video, rtcp-mux, one codec each), not the Chromium offers of
//! tests/support: negotiating Chromium's 25 video codecs twice per input cost
//! about 190 ms under the sanitizer (5 inputs a second), and what follows the
//! negotiation does not depend on the codec list.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_media::fuzzing::CoreFuzz;

fn offer(direction: &str) -> String {
    format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
a=fingerprint:sha-256 36:2D:A1:C0:36:B5:33:F0:7C:16:21:CF:CC:17:9B:06:41:D5:9B:32:34:6C:6C:93:8D:13:26:5B:58:F5:1C:7E\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123456789\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=setup:actpass\r\na=rtcp-mux\r\na={direction}\r\na=rtpmap:111 opus/48000/2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=setup:actpass\r\na=rtcp-mux\r\na={direction}\r\na=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n"
    )
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static OFFERS: (String, String) = (offer("sendonly"), offer("recvonly"));
    }
    OFFERS.with(|(publisher, viewer)| CoreFuzz::new(publisher, viewer).run(data));
});
