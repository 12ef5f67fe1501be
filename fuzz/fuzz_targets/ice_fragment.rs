//! The trickle-ICE / ICE-restart fragment parser (a PATCH body) fed arbitrary
//! text; a restart's credentials are then written into a real offer and that
//! offer checked again, as a PATCH does.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_media::SessionKind;
use tandem_media::sdp::{check_offer, parse_fragment, restart_answer_fragment, with_credentials};

const OFFER: &str = include_str!("../../tests/support/chromium-offer-sendonly.sdp");

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = restart_answer_fragment(text);
    if let Ok(fragment) = parse_fragment(text)
        && let (Some(ufrag), Some(pwd)) = (&fragment.ufrag, &fragment.pwd)
    {
        let _ = check_offer(&with_credentials(OFFER, ufrag, pwd), SessionKind::Publisher);
    }
});
