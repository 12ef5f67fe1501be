//! SDP checks made before any state exists (so a bad offer changes nothing), the
//! codecs tandem forwards, and trickle-ICE / ICE-restart fragments (RFC 8840).

use crate::error::MediaError;
use crate::kinds::{MediaKind, SessionKind};

/// Codecs forwarded end to end (H.264 only in packetization-mode 1).
pub const FORWARDED_CODECS: &[&str] = &["opus", "vp8", "vp9", "h264", "av1"];

/// One `m=` section of an offer, as far as the SFU cares.
#[derive(Debug, Clone)]
pub struct OfferedMedia {
    pub kind: MediaKind,
    pub mid: Option<String>,
    pub direction: Direction,
    /// Lower-case codec names from `a=rtpmap`, in offer order.
    pub codecs: Vec<String>,
    pub rejected: bool,
    /// Position among all the offer's `m=` lines (the WHEP `mediaId`).
    pub index: usize,
    /// Simulcast encodings sent (`a=simulcast:send`, in its order; each with
    /// an `a=rid:… send`). Empty without simulcast.
    pub rids: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn client_sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }
    fn client_receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

#[derive(Debug, Clone)]
pub struct CheckedOffer {
    pub media: Vec<OfferedMedia>,
}

impl CheckedOffer {
    pub fn has(&self, kind: MediaKind) -> bool {
        self.media.iter().any(|m| m.kind == kind && !m.rejected)
    }
}

/// Validates an offer for a publisher or viewer; the error names what is wrong.
pub fn check_offer(sdp: &str, kind: SessionKind) -> Result<CheckedOffer, MediaError> {
    let sdp = sdp.trim_start_matches('\u{feff}');
    if sdp.trim().is_empty() {
        return Err(MediaError::BadSdp(
            "the body is empty; send the SDP offer".into(),
        ));
    }
    if !sdp.starts_with("v=0") {
        return Err(MediaError::BadSdp("an SDP offer starts with 'v=0'".into()));
    }
    let mut session_ufrag = false;
    let mut session_pwd = false;
    let mut session_fingerprint = false;
    let mut media: Vec<OfferedMedia> = Vec::new();
    let mut media_ufrag: Vec<bool> = Vec::new();
    let mut media_pwd: Vec<bool> = Vec::new();
    let mut media_fingerprint: Vec<bool> = Vec::new();
    let mut bundle_only: Vec<bool> = Vec::new();
    let mut others = 0usize;
    let mut in_other = false;
    let mut m_lines = 0usize;
    // Per audio/video section: `a=rid:… send` ids, and the `a=simulcast` send list.
    let mut rid_lines: Vec<Vec<String>> = Vec::new();
    let mut simulcast: Vec<Option<Vec<String>>> = Vec::new();
    for (n, raw) in sdp.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let bytes = line.as_bytes();
        if bytes.len() < 2 || bytes[1] != b'=' || !bytes[0].is_ascii_lowercase() {
            return Err(MediaError::BadSdp(format!(
                "line {} is not '<letter>=<value>': '{}'",
                n + 1,
                truncate(line, 40)
            )));
        }
        let value = &line[2..];
        match bytes[0] {
            b'm' => {
                let mut parts = value.split_whitespace();
                let kind = parts.next().unwrap_or("");
                let port = parts.next().unwrap_or("");
                if parts.next().is_none() {
                    return Err(MediaError::BadSdp(format!(
                        "line {}: m= needs '<media> <port> <proto> <fmt>...'",
                        n + 1
                    )));
                }
                m_lines += 1;
                let kind = match kind {
                    "audio" => Some(MediaKind::Audio),
                    "video" => Some(MediaKind::Video),
                    _ => None,
                };
                match kind {
                    Some(kind) => {
                        in_other = false;
                        media.push(OfferedMedia {
                            kind,
                            mid: None,
                            direction: Direction::SendRecv,
                            codecs: Vec::new(),
                            rejected: port == "0" && !sdp.contains("a=bundle-only"),
                            index: m_lines - 1,
                            rids: Vec::new(),
                        });
                        rid_lines.push(Vec::new());
                        simulcast.push(None);
                        media_ufrag.push(false);
                        media_pwd.push(false);
                        media_fingerprint.push(false);
                        bundle_only.push(false);
                    }
                    None => {
                        in_other = true;
                        others += 1;
                    }
                }
            }
            b'a' => {
                let (attr, arg) = value.split_once(':').unwrap_or((value, ""));
                let current = (!in_other).then(|| media.len().checked_sub(1)).flatten();
                // Malformed transport attributes are refused wherever they are:
                // the peer connection cannot use them, and a session built on
                // them would hold its slot (and a publisher its stream) until it
                // timed out.
                match attr {
                    "ice-ufrag" => check_ice_credential(n, "ice-ufrag", arg, 4)?,
                    "ice-pwd" => check_ice_credential(n, "ice-pwd", arg, 22)?,
                    "fingerprint" => check_fingerprint(n, arg)?,
                    "setup" => check_setup(n, arg)?,
                    _ => {}
                }
                match (attr, current) {
                    ("ice-ufrag", None) if !in_other => session_ufrag = true,
                    ("ice-pwd", None) if !in_other => session_pwd = true,
                    ("fingerprint", None) if !in_other => session_fingerprint = true,
                    ("ice-ufrag", Some(i)) => media_ufrag[i] = true,
                    ("ice-pwd", Some(i)) => media_pwd[i] = true,
                    ("fingerprint", Some(i)) => media_fingerprint[i] = true,
                    ("bundle-only", Some(i)) => bundle_only[i] = true,
                    ("mid", Some(i)) => media[i].mid = Some(arg.to_string()),
                    ("sendrecv", Some(i)) => media[i].direction = Direction::SendRecv,
                    ("sendonly", Some(i)) => media[i].direction = Direction::SendOnly,
                    ("recvonly", Some(i)) => media[i].direction = Direction::RecvOnly,
                    ("inactive", Some(i)) => media[i].direction = Direction::Inactive,
                    ("rid", Some(i)) => {
                        let mut parts = arg.split_whitespace();
                        let id = parts.next().unwrap_or("");
                        let dir = parts.next().unwrap_or("");
                        if !valid_rid(id) || !matches!(dir, "send" | "recv") {
                            return Err(MediaError::BadSdp(format!(
                                "line {}: a=rid needs '<id> send|recv' with an id of 1 to 16 \
                                 letters, digits, '-' or '_' (RFC 8851)",
                                n + 1
                            )));
                        }
                        if dir == "send" {
                            rid_lines[i].push(id.to_string());
                        }
                    }
                    ("simulcast", Some(i)) => {
                        simulcast[i] = Some(simulcast_send_list(n, arg)?);
                    }
                    ("rtpmap", Some(i)) => {
                        let name = arg
                            .split_whitespace()
                            .nth(1)
                            .and_then(|enc| enc.split('/').next())
                            .unwrap_or("")
                            .to_ascii_lowercase();
                        if name.is_empty() {
                            return Err(MediaError::BadSdp(format!(
                                "line {}: a=rtpmap needs '<pt> <name>/<clock>'",
                                n + 1
                            )));
                        }
                        media[i].codecs.push(name);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    for (i, list) in simulcast.into_iter().enumerate() {
        let Some(list) = list else { continue };
        if list.is_empty() {
            continue;
        }
        if media[i].kind != MediaKind::Video {
            return Err(MediaError::BadSdp(format!(
                "media section {}: simulcast is for video only",
                media[i].index + 1
            )));
        }
        if kind == SessionKind::Viewer {
            return Err(MediaError::BadSdp(
                "a WHEP offer receives one encoding: send no a=simulcast:send (choose a layer \
                 with the layer extension instead)"
                    .into(),
            ));
        }
        if list.len() > crate::layers::MAX_ENCODINGS {
            return Err(MediaError::BadSdp(format!(
                "media section {}: {} simulcast encodings offered; tandem takes up to {}",
                media[i].index + 1,
                list.len(),
                crate::layers::MAX_ENCODINGS
            )));
        }
        if let Some(missing) = list.iter().find(|r| !rid_lines[i].contains(r)) {
            return Err(MediaError::BadSdp(format!(
                "media section {}: a=simulcast names rid '{missing}' without an 'a=rid:{missing} send'",
                media[i].index + 1
            )));
        }
        media[i].rids = list;
    }
    if media.is_empty() {
        return Err(if others > 0 {
            MediaError::NoCommonCodec("the offer has no audio or video section".into())
        } else {
            MediaError::BadSdp("the offer has no media section (m=)".into())
        });
    }
    // ICE credentials and the DTLS fingerprint may be at session level or in the
    // media section (RFC 8839 §5.4, RFC 8122 §5); a `bundle-only` section carries
    // none and uses its bundle's (RFC 8843 §7.1.3), and a disabled one (port 0)
    // needs none. Every other section needs them.
    for i in (0..media.len()).filter(|&i| !bundle_only[i] && !media[i].rejected) {
        let section = i + 1;
        if !(session_ufrag || media_ufrag[i]) {
            return Err(MediaError::BadSdp(format!(
                "missing a=ice-ufrag (media section {section}): ICE credentials are required"
            )));
        }
        if !(session_pwd || media_pwd[i]) {
            return Err(MediaError::BadSdp(format!(
                "missing a=ice-pwd (media section {section}): ICE credentials are required"
            )));
        }
        if !(session_fingerprint || media_fingerprint[i]) {
            return Err(MediaError::BadSdp(format!(
                "missing a=fingerprint (media section {section}): DTLS-SRTP is required"
            )));
        }
    }
    let wanted = |m: &OfferedMedia| match kind {
        SessionKind::Publisher => m.direction.client_sends(),
        SessionKind::Viewer => m.direction.client_receives(),
    };
    if !media.iter().any(|m| !m.rejected && wanted(m)) {
        return Err(MediaError::NoCommonCodec(match kind {
            SessionKind::Publisher => {
                "no audio/video section is sendonly or sendrecv (WHIP publishes)".into()
            }
            SessionKind::Viewer => {
                "no audio/video section is recvonly or sendrecv (WHEP receives)".into()
            }
        }));
    }
    let usable = media.iter().any(|m| {
        !m.rejected
            && wanted(m)
            && m.codecs
                .iter()
                .any(|c| FORWARDED_CODECS.contains(&c.as_str()))
    });
    if !usable {
        let offered: Vec<&str> = media
            .iter()
            .flat_map(|m| m.codecs.iter().map(String::as_str))
            .collect();
        return Err(MediaError::NoCommonCodec(format!(
            "offered codecs [{}]; tandem forwards opus, VP8, VP9, H264 (packetization-mode=1), AV1",
            offered.join(", ")
        )));
    }
    Ok(CheckedOffer { media })
}

/// A rid (RFC 8851 §10: `rid-id = 1*(alpha-numeric / "-" / "_")`), at most 16
/// characters here (browsers use one).
fn valid_rid(id: &str) -> bool {
    (1..=16).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The send list of `a=simulcast:send q;h;f` (RFC 8853): rids in order; `~`
/// (paused at start) is accepted and the rid kept; alternatives (`a,b`) keep
/// their first. An `a=simulcast` with only `recv` gives an empty list.
fn simulcast_send_list(line: usize, arg: &str) -> Result<Vec<String>, MediaError> {
    let mut parts = arg.split_whitespace();
    let mut out = Vec::new();
    while let Some(dir) = parts.next() {
        let list = parts.next().ok_or_else(|| {
            MediaError::BadSdp(format!(
                "line {}: a=simulcast needs 'send <rid>;<rid>…'",
                line + 1
            ))
        })?;
        if dir != "send" {
            continue;
        }
        for alt in list.split(';') {
            let first = alt.split(',').next().unwrap_or("").trim_start_matches('~');
            if !valid_rid(first) {
                return Err(MediaError::BadSdp(format!(
                    "line {}: a=simulcast lists '{}', not a rid",
                    line + 1,
                    truncate(alt, 20)
                )));
            }
            if !out.iter().any(|r| r == first) {
                out.push(first.to_string());
            }
        }
    }
    Ok(out)
}

/// `a=ice-ufrag` / `a=ice-pwd`: RFC 8839 §5.4 asks for 4 (ufrag) or 22 (pwd) to
/// 256 ice-chars. Only the length and "visible ASCII" are enforced, so a client
/// with a slightly unusual alphabet still works (Chromium sends 4 + 24
/// characters, Firefox 8 + 32, aiortc 4 + 22).
fn check_ice_credential(
    line: usize,
    attr: &str,
    value: &str,
    min: usize,
) -> Result<(), MediaError> {
    let value = value.trim();
    let visible = value.bytes().all(|b| b.is_ascii_graphic());
    if value.len() < min || value.len() > 256 || !visible {
        return Err(MediaError::BadSdp(format!(
            "line {}: a={attr} must be {min} to 256 visible characters (RFC 8839), got {} characters",
            line + 1,
            value.len()
        )));
    }
    Ok(())
}

/// `a=fingerprint:<hash-func> <XX:XX:...>` (RFC 8122 §5) with a digest of the
/// length its hash function makes.
fn check_fingerprint(line: usize, value: &str) -> Result<(), MediaError> {
    let bad = |why: &str| {
        Err(MediaError::BadSdp(format!(
            "line {}: a=fingerprint {why}; expected e.g. 'a=fingerprint:sha-256 AB:CD:...'",
            line + 1
        )))
    };
    let (hash, digest) = match value.trim().split_once(' ') {
        Some((h, d)) => (h, d.trim()),
        None => return bad("has no digest"),
    };
    let bytes = match hash.to_ascii_lowercase().as_str() {
        "sha-1" => 20,
        "sha-224" => 28,
        "sha-256" => 32,
        "sha-384" => 48,
        "sha-512" => 64,
        "md5" | "md2" => 16,
        _ => return bad("names an unknown hash function"),
    };
    let pairs: Vec<&str> = digest.split(':').collect();
    let hex = pairs
        .iter()
        .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !hex || pairs.len() != bytes {
        return bad(&format!("is not {bytes} hex bytes separated by ':'"));
    }
    Ok(())
}

/// `a=setup` (RFC 8842 §5.2): the server answers `passive` (it is the DTLS
/// server and never connects out), so the client must be able to be active.
fn check_setup(line: usize, value: &str) -> Result<(), MediaError> {
    match value.trim() {
        "actpass" | "active" => Ok(()),
        "passive" => Err(MediaError::BadSdp(format!(
            "line {}: a=setup:passive cannot work: the server is passive too (ICE-lite, DTLS \
             server); offer a=setup:actpass or a=setup:active",
            line + 1
        ))),
        other => Err(MediaError::BadSdp(format!(
            "line {}: a=setup:{} is not actpass or active",
            line + 1,
            truncate(other, 20)
        ))),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A trickle-ICE fragment (`application/trickle-ice-sdpfrag`, RFC 8840).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IceFragment {
    pub ufrag: Option<String>,
    pub pwd: Option<String>,
    /// `(mid, candidate-attribute-value)` pairs.
    pub candidates: Vec<(Option<String>, String)>,
    pub end_of_candidates: bool,
}

pub fn parse_fragment(frag: &str) -> Result<IceFragment, MediaError> {
    let mut out = IceFragment::default();
    let mut mid: Option<String> = None;
    let mut lines = 0;
    for (n, raw) in frag.lines().enumerate() {
        let line = raw.trim_end_matches('\r').trim();
        if line.is_empty() {
            continue;
        }
        lines += 1;
        // Bytes, not `&line[1..2]`: a line starting with a multi-byte character
        // has no char boundary at 1 (found by the `ice_fragment` fuzz target).
        if line.len() < 2 || line.as_bytes()[1] != b'=' {
            return Err(MediaError::BadSdp(format!(
                "fragment line {} is not '<letter>=<value>'",
                n + 1
            )));
        }
        if let Some(rest) = line.strip_prefix("a=") {
            let (attr, arg) = rest.split_once(':').unwrap_or((rest, ""));
            match attr {
                "ice-ufrag" => out.ufrag = Some(arg.trim().to_string()),
                "ice-pwd" => out.pwd = Some(arg.trim().to_string()),
                "mid" => mid = Some(arg.trim().to_string()),
                "candidate" => {
                    if arg.split_whitespace().count() < 8 {
                        return Err(MediaError::BadSdp(format!(
                            "fragment line {}: a=candidate needs 8 fields",
                            n + 1
                        )));
                    }
                    out.candidates.push((mid.clone(), arg.trim().to_string()));
                }
                "end-of-candidates" => out.end_of_candidates = true,
                _ => {}
            }
        }
    }
    if lines == 0 {
        return Err(MediaError::BadSdp("the fragment is empty".into()));
    }
    if out.ufrag.is_some() != out.pwd.is_some() {
        return Err(MediaError::BadSdp(
            "an ICE restart fragment needs both a=ice-ufrag and a=ice-pwd".into(),
        ));
    }
    Ok(out)
}

/// The offer with its ICE credentials replaced: what the client's ICE restart
/// means for the full description the peer connection negotiates.
pub fn with_credentials(offer: &str, ufrag: &str, pwd: &str) -> String {
    let mut out = String::with_capacity(offer.len() + 16);
    for line in offer.split_inclusive('\n') {
        let trimmed = line.trim_end_matches(['\r', '\n']);
        let ending = &line[trimmed.len()..];
        if trimmed.starts_with("a=ice-ufrag:") {
            out.push_str("a=ice-ufrag:");
            out.push_str(ufrag);
            out.push_str(ending);
        } else if trimmed.starts_with("a=ice-pwd:") {
            out.push_str("a=ice-pwd:");
            out.push_str(pwd);
            out.push_str(ending);
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The first value of `a=<attr>:` in a description.
pub fn attribute<'a>(sdp: &'a str, attr: &str) -> Option<&'a str> {
    sdp.lines().find_map(|l| {
        l.trim_end_matches('\r')
            .strip_prefix("a=")
            .and_then(|rest| rest.strip_prefix(attr))
            .and_then(|rest| rest.strip_prefix(':'))
    })
}

/// The server's answer to an ICE restart (RFC 9725 §4.4.2): new credentials, then each
/// media section's mid with the server's candidates.
pub fn restart_answer_fragment(answer: &str) -> String {
    let mut out = String::new();
    if answer.contains("a=ice-lite") {
        out.push_str("a=ice-lite\r\n");
    }
    if let Some(u) = attribute(answer, "ice-ufrag") {
        out.push_str(&format!("a=ice-ufrag:{u}\r\n"));
    }
    if let Some(p) = attribute(answer, "ice-pwd") {
        out.push_str(&format!("a=ice-pwd:{p}\r\n"));
    }
    for line in answer.lines().map(|l| l.trim_end_matches('\r')) {
        if line.starts_with("m=") || line.starts_with("a=mid:") || line.starts_with("a=candidate:")
        {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("a=end-of-candidates\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
a=fingerprint:sha-256 36:2D:A1:C0:36:B5:33:F0:7C:16:21:CF:CC:17:9B:06:41:D5:9B:32:34:6C:6C:93:8D:13:26:5B:58:F5:1C:7E\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123456789\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n";

    #[test]
    fn accepts_a_publisher_offer() {
        let offer = check_offer(OFFER, SessionKind::Publisher).unwrap();
        assert!(offer.has(MediaKind::Audio) && offer.has(MediaKind::Video));
        assert_eq!(offer.media[1].codecs, vec!["vp8"]);
    }

    #[test]
    fn sendonly_offer_cannot_view() {
        let err = check_offer(OFFER, SessionKind::Viewer).unwrap_err();
        assert!(matches!(err, MediaError::NoCommonCodec(_)), "{err}");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = check_offer("", SessionKind::Publisher)
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        let e = check_offer("hello", SessionKind::Publisher)
            .unwrap_err()
            .to_string();
        assert!(e.contains("v=0"), "{e}");
        let no_fp = OFFER
            .lines()
            .filter(|l| !l.starts_with("a=fingerprint"))
            .map(|l| format!("{l}\r\n"))
            .collect::<String>();
        let e = check_offer(&no_fp, SessionKind::Publisher)
            .unwrap_err()
            .to_string();
        assert!(e.contains("fingerprint"), "{e}");
        let g722 = OFFER
            .replace("opus/48000/2", "G722/8000")
            .replace("VP8/90000", "H263/90000");
        let e = check_offer(&g722, SessionKind::Publisher).unwrap_err();
        assert!(
            matches!(e, MediaError::NoCommonCodec(ref m) if m.contains("g722")),
            "{e}"
        );
    }

    #[test]
    fn transport_attributes_are_checked_where_they_are() {
        // Session-level credentials and fingerprint (the fixture) are enough.
        assert!(check_offer(OFFER, SessionKind::Publisher).is_ok());
        let active = OFFER.replace("a=sendonly\r\n", "a=sendonly\r\na=setup:active\r\n");
        assert!(check_offer(&active, SessionKind::Publisher).is_ok());
        let passive = OFFER.replace("a=sendonly\r\n", "a=sendonly\r\na=setup:passive\r\n");
        let e = check_offer(&passive, SessionKind::Publisher).unwrap_err();
        assert!(e.to_string().contains("a=setup:passive"), "{e}");
        let short = OFFER.replace("a=ice-pwd:0123456789abcdef0123456789", "a=ice-pwd:0123");
        let e = check_offer(&short, SessionKind::Publisher).unwrap_err();
        assert!(e.to_string().contains("ice-pwd"), "{e}");
        let bad_fp = OFFER.replace("sha-256 36:2D", "sha-256 36:ZZ");
        let e = check_offer(&bad_fp, SessionKind::Publisher).unwrap_err();
        assert!(e.to_string().contains("fingerprint"), "{e}");
        let unknown_hash = OFFER.replace("sha-256 36:2D", "sha-999 36:2D");
        assert!(check_offer(&unknown_hash, SessionKind::Publisher).is_err());
    }

    #[test]
    fn bundle_only_sections_use_their_bundles_transport() {
        // Credentials in the first (bundle tag) section only; the second is
        // bundle-only (port 0) and carries none, as RFC 8843 has it.
        let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=ice-ufrag:abcd\r\n\
a=ice-pwd:0123456789abcdef0123456789\r\n\
a=fingerprint:sha-256 36:2D:A1:C0:36:B5:33:F0:7C:16:21:CF:CC:17:9B:06:41:D5:9B:32:34:6C:6C:93:8D:13:26:5B:58:F5:1C:7E\r\n\
a=setup:actpass\r\na=rtpmap:111 opus/48000/2\r\n\
m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=bundle-only\r\na=mid:1\r\na=sendonly\r\na=rtpmap:96 VP8/90000\r\n";
        assert!(check_offer(offer, SessionKind::Publisher).is_ok());
        // Without bundle-only the second section needs its own.
        let unbundled = offer
            .replace("m=video 0", "m=video 9")
            .replace("a=bundle-only\r\n", "");
        let e = check_offer(&unbundled, SessionKind::Publisher).unwrap_err();
        assert!(e.to_string().contains("media section 2"), "{e}");
    }

    #[test]
    fn fragments() {
        let f = parse_fragment("a=ice-ufrag:new1\r\na=ice-pwd:pwdpwdpwdpwdpwdpwdpwdpwd\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\n").unwrap();
        assert_eq!(f.ufrag.as_deref(), Some("new1"));
        assert_eq!(f.candidates.len(), 1);
        assert_eq!(f.candidates[0].0.as_deref(), Some("0"));
        assert!(f.end_of_candidates);
        assert!(parse_fragment("").is_err());
        assert!(parse_fragment("a=ice-ufrag:x\r\n").is_err());
    }

    #[test]
    fn a_fragment_line_starting_with_a_multibyte_character_is_refused_not_a_panic() {
        // The `ice_fragment` fuzz target's crash, minimised: 'Œ' is two bytes.
        let e = parse_fragment("\u{152}=x\r\n").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn credentials_are_replaced_everywhere() {
        let o = with_credentials(OFFER, "zz", "yy");
        assert!(o.contains("a=ice-ufrag:zz\r\n") && o.contains("a=ice-pwd:yy\r\n"));
        assert!(!o.contains("abcd"));
    }
}
