//! What the SFU reads of a video payload without decoding it: whether a packet
//! starts a key frame (where a viewer may switch to a simulcast encoding), and
//! the picture size a key frame announces (the `layers` event). One look at the
//! payload descriptor per packet, on the publisher's worker, not per viewer.
//! Also the bit reader and H.264 SPS parser the recorder shares.

/// The video codecs whose payloads are read here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    Vp9,
    H264,
    Av1,
}

impl VideoCodec {
    pub fn from_mime(mime: &str) -> Option<Self> {
        let m = mime.to_ascii_lowercase();
        match m.strip_prefix("video/")? {
            "vp8" => Some(Self::Vp8),
            "vp9" => Some(Self::Vp9),
            "h264" => Some(Self::H264),
            "av1" => Some(Self::Av1),
            _ => None,
        }
    }
}

/// What one packet says about its frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameStart {
    /// The packet starts a key frame: a decoder can begin here.
    pub keyframe: bool,
    /// The size the key frame announces, when this packet carries it.
    pub size: Option<(u32, u32)>,
}

/// Reads a payload's start: key frame or not, and the size when present.
pub fn frame_start(codec: VideoCodec, payload: &[u8]) -> FrameStart {
    match codec {
        VideoCodec::Vp8 => vp8(payload),
        VideoCodec::Vp9 => vp9(payload),
        VideoCodec::H264 => h264(payload),
        VideoCodec::Av1 => av1(payload),
    }
    .unwrap_or_default()
}

/// RFC 7741 §4.2: the descriptor, then on a partition start (S=1, PID=0) the VP8
/// frame tag, whose P bit is 0 on key frames (RFC 6386 §9.1), then the start
/// code and the 14-bit width and height.
fn vp8(p: &[u8]) -> Option<FrameStart> {
    let b0 = *p.first()?;
    let mut i = 1;
    if b0 & 0x80 != 0 {
        let x = *p.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            i += if *p.get(i)? & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1;
        }
        if x & 0x30 != 0 {
            i += 1;
        }
    }
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    if !start || *p.get(i)? & 0x01 != 0 {
        return Some(FrameStart::default());
    }
    let f = p.get(i..i + 10);
    let size = f.filter(|f| f[3..6] == [0x9d, 0x01, 0x2a]).map(|f| {
        (
            u32::from(u16::from_le_bytes([f[6], f[7]]) & 0x3fff),
            u32::from(u16::from_le_bytes([f[8], f[9]]) & 0x3fff),
        )
    });
    Some(FrameStart {
        keyframe: true,
        size,
    })
}

/// draft-ietf-payload-vp9 §4.2: a key frame's first packet has B=1 and P=0 (and
/// is the lowest spatial layer); its scalability structure (V=1) carries sizes.
fn vp9(p: &[u8]) -> Option<FrameStart> {
    let b0 = *p.first()?;
    let (i_bit, p_bit, l_bit, f_bit, b_bit, v_bit) = (
        b0 & 0x80 != 0,
        b0 & 0x40 != 0,
        b0 & 0x20 != 0,
        b0 & 0x10 != 0,
        b0 & 0x08 != 0,
        b0 & 0x02 != 0,
    );
    let mut i = 1;
    if i_bit {
        i += if *p.get(i)? & 0x80 != 0 { 2 } else { 1 };
    }
    let mut spatial = 0;
    if l_bit {
        spatial = *p.get(i)? >> 5 & 0x07;
        i += if f_bit { 1 } else { 2 };
    }
    if f_bit && p_bit {
        // Flexible mode: up to three reference indices, each with an N bit.
        for _ in 0..3 {
            let r = *p.get(i)?;
            i += 1;
            if r & 0x01 == 0 {
                break;
            }
        }
    }
    if !(b_bit && !p_bit && spatial == 0) {
        return Some(FrameStart::default());
    }
    let mut size = None;
    if v_bit {
        let ss = *p.get(i)?;
        let layers = usize::from(ss >> 5) + 1;
        if ss & 0x10 != 0 {
            // Y: a width and a height per spatial layer; the largest is the picture.
            for l in 0..layers {
                let at = i + 1 + 4 * l;
                let w = u32::from(u16::from_be_bytes([*p.get(at)?, *p.get(at + 1)?]));
                let h = u32::from(u16::from_be_bytes([*p.get(at + 2)?, *p.get(at + 3)?]));
                size = Some((w, h));
            }
        }
    }
    Some(FrameStart {
        keyframe: true,
        size,
    })
}

/// RFC 6184: an IDR slice or an SPS (browsers send SPS and PPS right before an
/// IDR), alone, in a STAP-A, or at the start of an FU-A.
fn h264(p: &[u8]) -> Option<FrameStart> {
    let b0 = *p.first()?;
    let mut out = FrameStart::default();
    let nal = |n: &[u8], out: &mut FrameStart| match n.first().map(|b| b & 0x1f) {
        Some(5) => out.keyframe = true,
        Some(7) => {
            out.keyframe = true;
            out.size = out.size.or_else(|| h264_sps_size(n));
        }
        _ => {}
    };
    match b0 & 0x1f {
        1..=23 => nal(p, &mut out),
        24 => {
            let mut rest = p.get(1..)?;
            while rest.len() >= 2 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let Some(n) = rest.get(2..2 + size) else {
                    break;
                };
                nal(n, &mut out);
                rest = &rest[2 + size..];
            }
        }
        28 => {
            let h = *p.get(1)?;
            if h & 0x80 != 0 && matches!(h & 0x1f, 5 | 7) {
                out.keyframe = true;
            }
        }
        _ => {}
    }
    Some(out)
}

/// The AV1 RTP payload format §4.4: N=1 marks the first packet of a coded video
/// sequence, which starts with a key frame.
fn av1(p: &[u8]) -> Option<FrameStart> {
    let b0 = *p.first()?;
    let keyframe = b0 & 0x08 != 0;
    if !keyframe || b0 & 0x80 != 0 {
        // Not a sequence's start, or it continues an OBU from the last packet.
        return Some(FrameStart {
            keyframe,
            size: None,
        });
    }
    // The first OBU element (with a length unless W = 1) is the sequence
    // header that starts a coded video sequence.
    let size = (|| {
        let w = (b0 >> 4) & 0x03;
        let mut rest = p.get(1..)?;
        if w != 1 {
            let (len, n) = leb128(rest)?;
            rest = rest.get(n..n.checked_add(usize::try_from(len).ok()?)?)?;
        }
        let header = *rest.first()?;
        if (header >> 3) & 0x0f != 1 {
            return None;
        }
        let hl = 1 + usize::from(header & 0x04 != 0);
        let mut body = rest.get(hl..)?;
        if header & 0x02 != 0 {
            let (len, n) = leb128(body)?;
            body = body.get(n..n.checked_add(usize::try_from(len).ok()?)?)?;
        }
        av1_sequence_header(body).map(|s| (s.width, s.height))
    })();
    Some(FrameStart { keyframe, size })
}

/// An unsigned LEB128 number (AV1's `leb128()`): (value, bytes read).
pub fn leb128(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for i in 0..8 {
        let b = *data.get(i)?;
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// What the av1C box and CODECS string need from a sequence header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Av1SequenceHeader {
    pub profile: u8,
    pub level: u8,
    pub tier: bool,
    pub reduced_still_picture_header: bool,
    pub width: u32,
    pub height: u32,
    pub high_bitdepth: bool,
    pub twelve_bit: bool,
    pub monochrome: bool,
    pub subsampling_x: bool,
    pub subsampling_y: bool,
    pub chroma_sample_position: u8,
}

impl Av1SequenceHeader {
    pub fn bit_depth(&self) -> u8 {
        match (self.high_bitdepth, self.twelve_bit) {
            (false, _) => 8,
            (true, false) => 10,
            (true, true) => 12,
        }
    }
}

/// Parses a sequence header OBU's payload (AV1 spec 5.5).
pub fn av1_sequence_header(body: &[u8]) -> Option<Av1SequenceHeader> {
    let mut r = BitReader::new(body);
    let mut s = Av1SequenceHeader {
        profile: r.bits(3)? as u8,
        ..Default::default()
    };
    r.bits(1)?; // still_picture
    s.reduced_still_picture_header = r.bits(1)? == 1;
    if s.reduced_still_picture_header {
        s.level = r.bits(5)? as u8;
    } else {
        let mut decoder_model_info = false;
        let mut buffer_delay_len = 0;
        if r.bits(1)? == 1 {
            // timing_info
            r.bits(32)?;
            r.bits(32)?;
            if r.bits(1)? == 1 {
                r.uvlc()?;
            }
            decoder_model_info = r.bits(1)? == 1;
            if decoder_model_info {
                buffer_delay_len = r.bits(5)? + 1;
                r.bits(32)?;
                r.bits(5)?;
                r.bits(5)?;
            }
        }
        let initial_display_delay = r.bits(1)? == 1;
        let ops = r.bits(5)? + 1;
        for i in 0..ops {
            r.bits(12)?;
            let level = r.bits(5)? as u8;
            let tier = if level > 7 { r.bits(1)? == 1 } else { false };
            if i == 0 {
                s.level = level;
                s.tier = tier;
            }
            if decoder_model_info && r.bits(1)? == 1 {
                r.bits(buffer_delay_len)?;
                r.bits(buffer_delay_len)?;
                r.bits(1)?;
            }
            if initial_display_delay && r.bits(1)? == 1 {
                r.bits(4)?;
            }
        }
    }
    let wb = r.bits(4)? + 1;
    let hb = r.bits(4)? + 1;
    s.width = r.bits(wb)? + 1;
    s.height = r.bits(hb)? + 1;
    if !s.reduced_still_picture_header && r.bits(1)? == 1 {
        r.bits(4)?;
        r.bits(3)?;
    }
    r.bits(3)?; // 128x128 superblock, filter intra, intra edge filter
    if !s.reduced_still_picture_header {
        r.bits(4)?; // interintra, masked, warped, dual filter
        let order_hint = r.bits(1)? == 1;
        if order_hint {
            r.bits(2)?;
        }
        let force_sct = if r.bits(1)? == 1 { 2 } else { r.bits(1)? };
        if force_sct > 0 && r.bits(1)? == 0 {
            r.bits(1)?;
        }
        if order_hint {
            r.bits(3)?;
        }
    }
    r.bits(3)?; // superres, cdef, restoration
    // color_config
    s.high_bitdepth = r.bits(1)? == 1;
    if s.profile == 2 && s.high_bitdepth {
        s.twelve_bit = r.bits(1)? == 1;
    }
    s.monochrome = if s.profile == 1 {
        false
    } else {
        r.bits(1)? == 1
    };
    let (mut cp, mut tc, mut mc) = (2, 2, 2);
    if r.bits(1)? == 1 {
        cp = r.bits(8)?;
        tc = r.bits(8)?;
        mc = r.bits(8)?;
    }
    if s.monochrome {
        s.subsampling_x = true;
        s.subsampling_y = true;
        return Some(s);
    }
    if cp == 1 && tc == 13 && mc == 0 {
        return Some(s); // sRGB: 4:4:4
    }
    r.bits(1)?; // color_range
    match s.profile {
        0 => {
            s.subsampling_x = true;
            s.subsampling_y = true;
        }
        1 => {}
        _ => {
            if s.bit_depth() == 12 {
                s.subsampling_x = r.bits(1)? == 1;
                if s.subsampling_x {
                    s.subsampling_y = r.bits(1)? == 1;
                }
            } else {
                s.subsampling_x = true;
            }
        }
    }
    if s.subsampling_x && s.subsampling_y {
        s.chroma_sample_position = r.bits(2)? as u8;
    }
    Some(s)
}

/// Width and height from an H.264 SPS NAL unit (with its header byte).
pub fn h264_sps_size(sps: &[u8]) -> Option<(u32, u32)> {
    // Remove emulation prevention bytes (00 00 03).
    let mut rbsp = Vec::with_capacity(sps.len());
    let mut zeros = 0;
    for &b in sps.get(1..)? {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        rbsp.push(b);
    }
    let mut r = BitReader::new(&rbsp);
    let profile = r.bits(8)?;
    r.bits(16)?; // constraint flags, level
    r.ue()?; // sps id
    let mut chroma_format = 1;
    if matches!(
        profile,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format = r.ue()?;
        if chroma_format == 3 {
            r.bits(1)?;
        }
        r.ue()?;
        r.ue()?;
        r.bits(1)?;
        if r.bits(1)? == 1 {
            let lists = if chroma_format != 3 { 8 } else { 12 };
            for i in 0..lists {
                if r.bits(1)? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256) % 256;
                        }
                        last = if next == 0 { last } else { next };
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bits(1)?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return None;
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bits(1)?;
    let w_mbs = r.ue()? + 1;
    let h_units = r.ue()? + 1;
    let frame_mbs_only = r.bits(1)?;
    if frame_mbs_only == 0 {
        r.bits(1)?;
    }
    r.bits(1)?; // direct_8x8_inference
    let (mut cl, mut cr, mut ct, mut cb) = (0, 0, 0, 0);
    if r.bits(1)? == 1 {
        cl = r.ue()?;
        cr = r.ue()?;
        ct = r.ue()?;
        cb = r.ue()?;
    }
    let (sub_w, sub_h) = match chroma_format {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    let crop_x = if chroma_format == 0 { 1 } else { sub_w };
    let crop_y = (if chroma_format == 0 { 1 } else { sub_h }) * (2 - frame_mbs_only);
    let width = (w_mbs * 16).checked_sub((cl + cr) * crop_x)?;
    let height = (h_units * 16 * (2 - frame_mbs_only)).checked_sub((ct + cb) * crop_y)?;
    (width > 0 && height > 0 && width <= 16384 && height <= 16384).then_some((width, height))
}

/// An MSB-first bit reader that answers `None` past the end.
pub struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        BitReader { data, pos: 0 }
    }

    pub fn bits(&mut self, n: u32) -> Option<u32> {
        if n > 32 {
            return None;
        }
        let mut v: u64 = 0;
        for _ in 0..n {
            let byte = *self.data.get(self.pos / 8)?;
            let bit = (byte >> (7 - (self.pos % 8))) & 1;
            v = (v << 1) | u64::from(bit);
            self.pos += 1;
        }
        u32::try_from(v).ok()
    }

    pub fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bits(1)? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        u32::try_from((1u64 << zeros) - 1 + u64::from(rest)).ok()
    }

    pub fn se(&mut self) -> Option<i64> {
        let k = i64::from(self.ue()?);
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }

    pub fn uvlc(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bits(1)? == 0 {
            zeros += 1;
            if zeros >= 32 {
                return None;
            }
        }
        let rest = self.bits(zeros)?;
        u32::try_from((1u64 << zeros) - 1 + u64::from(rest)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_key_frame_and_size() {
        // Descriptor with X, I (15-bit picture id), then a key frame tag and 640x480.
        let p = [
            0x90, 0x80, 0x81, 0x23, 0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01,
        ];
        let f = frame_start(VideoCodec::Vp8, &p);
        assert!(f.keyframe);
        assert_eq!(f.size, Some((640, 480)));
        // The same frame's second packet (S=0) and a delta frame (P=1) are not starts.
        let mut cont = p;
        cont[0] = 0x80;
        assert!(!frame_start(VideoCodec::Vp8, &cont).keyframe);
        let mut delta = p;
        delta[4] = 0x11;
        assert!(!frame_start(VideoCodec::Vp8, &delta).keyframe);
    }

    #[test]
    fn h264_idr_in_stap_a_and_fu_a() {
        // STAP-A with a (truncated, unparsable) SPS and a PPS: a key frame, no size.
        let stap = [24u8, 0, 2, 0x67, 0x42, 0, 1, 0x68];
        assert!(frame_start(VideoCodec::H264, &stap).keyframe);
        assert!(frame_start(VideoCodec::H264, &[28, 0x85, 0xaa]).keyframe);
        assert!(!frame_start(VideoCodec::H264, &[28, 0x05, 0xaa]).keyframe);
        assert!(!frame_start(VideoCodec::H264, &[0x41, 0x9a]).keyframe);
        // A STAP-A whose length runs past the end is read as far as it goes.
        assert!(!frame_start(VideoCodec::H264, &[24, 0xff, 0xff, 0x65]).keyframe);
    }

    #[test]
    fn vp9_and_av1_starts() {
        // VP9: I=0, P=0, B=1, V=1 with one layer and Y: 320x180.
        let p = [0x0a, 0x18, 0x01, 0x40, 0x00, 0xb4];
        let f = frame_start(VideoCodec::Vp9, &p);
        assert!(f.keyframe);
        assert_eq!(f.size, Some((320, 180)));
        assert!(!frame_start(VideoCodec::Vp9, &[0x48]).keyframe);
        assert!(frame_start(VideoCodec::Av1, &[0x18]).keyframe);
        assert!(!frame_start(VideoCodec::Av1, &[0x10]).keyframe);
    }

    #[test]
    fn garbage_is_no_key_frame_and_no_panic() {
        for len in 0..24 {
            for seed in 0..64u32 {
                let data: Vec<u8> = (0..len)
                    .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 97) >> 7) as u8)
                    .collect();
                for codec in [
                    VideoCodec::Vp8,
                    VideoCodec::Vp9,
                    VideoCodec::H264,
                    VideoCodec::Av1,
                ] {
                    let _ = frame_start(codec, &data);
                }
            }
        }
    }
}
