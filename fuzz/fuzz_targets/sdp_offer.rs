//! The SDP checker fed arbitrary text, as a WHIP publisher's and a WHEP viewer's
//! offer: it must answer every body with an offer or an error, never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_media::SessionKind;
use tandem_media::sdp::check_offer;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = check_offer(text, SessionKind::Publisher);
        let _ = check_offer(text, SessionKind::Viewer);
    }
});
