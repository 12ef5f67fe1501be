//! The few bytes of STUN the demultiplexer reads: is this a STUN message, and
//! which local ICE ufrag does its USERNAME name (RFC 8489, RFC 8445 §7.2.2).

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;

/// RFC 7983 demultiplexing: STUN messages start with a byte 0..=3 and carry the magic cookie.
pub fn is_stun(buf: &[u8]) -> bool {
    buf.len() >= 20 && buf[0] < 4 && buf[4..8] == MAGIC_COOKIE
}

/// The USERNAME attribute of a STUN message, if any.
pub fn username(buf: &[u8]) -> Option<&str> {
    if !is_stun(buf) {
        return None;
    }
    let body_len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    let end = (20 + body_len).min(buf.len());
    let mut at = 20;
    while at + 4 <= end {
        let kind = u16::from_be_bytes([buf[at], buf[at + 1]]);
        let len = u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize;
        let value_start = at + 4;
        if value_start + len > end {
            return None;
        }
        if kind == ATTR_USERNAME {
            return std::str::from_utf8(&buf[value_start..value_start + len]).ok();
        }
        at = value_start + len.div_ceil(4) * 4;
    }
    None
}

/// In a check sent to us, USERNAME is `<our ufrag>:<their ufrag>`.
pub fn local_ufrag(buf: &[u8]) -> Option<&str> {
    username(buf).and_then(|u| u.split(':').next())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attr = vec![0x00, 0x06];
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        msg.extend_from_slice(&MAGIC_COOKIE);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attr);
        msg
    }

    #[test]
    fn reads_local_ufrag() {
        let msg = binding_request("srvUfrag:cli");
        assert!(is_stun(&msg));
        assert_eq!(local_ufrag(&msg), Some("srvUfrag"));
    }

    #[test]
    fn rtp_and_truncated_input_are_not_stun() {
        assert!(!is_stun(&[0x80; 40]));
        let mut msg = binding_request("abc:def");
        msg.truncate(26);
        assert_eq!(username(&msg), None);
    }
}
