//! Per-stream track state: the sequence-number and timestamp offsets that keep
//! what viewers see continuous across a publisher reconnect, and the recent
//! packets a viewer's NACK is answered from.

use std::time::Instant;

/// Rewrites one track's sequence numbers and timestamps from the current
/// publisher's numbering to the stream's, once per packet (not per viewer).
#[derive(Debug, Clone)]
pub struct Continuity {
    clock_rate: u32,
    /// Offsets of the current publisher; `None` until its first packet.
    offsets: Option<(u16, u32)>,
    /// The last packet sent out: (sequence, timestamp, when).
    last_out: Option<(u16, u32, Instant)>,
}

impl Continuity {
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: clock_rate.max(1),
            offsets: None,
            last_out: None,
        }
    }

    /// A new publisher takes over: its first packet continues where the last one stopped.
    pub fn rebase(&mut self, clock_rate: u32) {
        self.clock_rate = clock_rate.max(1);
        self.offsets = None;
    }

    /// Another source takes over mid-stream (a tap moving to another simulcast
    /// layer): its first packet continues the numbering `skipped` sequence
    /// numbers on, so a depacketizer sees the hole and drops the frame the
    /// old source left unfinished instead of joining it to the new one.
    pub fn switch_source(&mut self, skipped: u16) {
        self.offsets = None;
        if let Some((seq, ts, at)) = self.last_out {
            self.last_out = Some((seq.wrapping_add(skipped), ts, at));
        }
    }

    /// Maps a publisher's (sequence, timestamp) to the stream's.
    pub fn map(&mut self, seq: u16, ts: u32, now: Instant) -> (u16, u32) {
        let (seq_off, ts_off) = *self.offsets.get_or_insert_with(|| match self.last_out {
            None => (0, 0),
            Some((last_seq, last_ts, at)) => {
                // Advance the timestamp by the wall time the stream was silent, so a
                // player's clock does not jump backwards or stall.
                let elapsed = now.saturating_duration_since(at).as_secs_f64();
                let gap = ((elapsed * self.clock_rate as f64) as u64).max(1) as u32;
                (
                    last_seq.wrapping_add(1).wrapping_sub(seq),
                    last_ts.wrapping_add(gap).wrapping_sub(ts),
                )
            }
        });
        let out = (seq.wrapping_add(seq_off), ts.wrapping_add(ts_off));
        // Only advance on packets newer than the last (retransmissions and reordering
        // must not pull the base backwards).
        let newer = match self.last_out {
            None => true,
            Some((last_seq, _, _)) => out.0.wrapping_sub(last_seq) < 0x8000 && out.0 != last_seq,
        };
        if newer {
            self.last_out = Some((out.0, out.1, now));
        }
        out
    }

    /// Rewrites a publisher packet's header into the stream's numbering, once per
    /// packet (not per viewer). Header extensions go: their ids are negotiated per
    /// leg, so the publisher's mean nothing to viewers.
    pub fn rewrite(&mut self, header: &mut rtc::rtp::header::Header, now: Instant) {
        let (seq, ts) = self.map(header.sequence_number, header.timestamp, now);
        header.sequence_number = seq;
        header.timestamp = ts;
        header.extension = false;
        header.extension_profile = 0;
        header.extensions.clear();
        header.padding = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn first_publisher_passes_through() {
        let mut c = Continuity::new(90_000);
        let t0 = Instant::now();
        assert_eq!(c.map(100, 5000, t0), (100, 5000));
        assert_eq!(c.map(101, 8000, t0), (101, 8000));
    }

    #[test]
    fn reconnect_continues_numbering() {
        let mut c = Continuity::new(90_000);
        let t0 = Instant::now();
        c.map(65534, 1000, t0);
        c.map(65535, 4000, t0);
        c.rebase(90_000);
        // The new publisher starts somewhere random, one second later.
        let (seq, ts) = c.map(17, 999_999, t0 + Duration::from_secs(1));
        assert_eq!(seq, 0); // 65535 + 1, wrapped
        assert_eq!(ts, 4000 + 90_000);
        assert_eq!(
            c.map(18, 999_999 + 3000, t0 + Duration::from_secs(1)),
            (1, 97_000)
        );
    }

    #[test]
    fn a_switched_source_continues_after_a_hole() {
        let mut c = Continuity::new(90_000);
        let t0 = Instant::now();
        c.map(100, 5000, t0);
        c.switch_source(1);
        // The other source's numbering is unrelated; 10 ms later.
        let (seq, ts) = c.map(7, 123, t0 + Duration::from_millis(10));
        assert_eq!(seq, 102, "one number skipped");
        assert_eq!(ts, 5000 + 900);
        assert_eq!(c.map(8, 3123, t0), (103, 8900));
    }

    #[test]
    fn late_retransmission_does_not_move_the_base() {
        let mut c = Continuity::new(48_000);
        let t0 = Instant::now();
        c.map(10, 0, t0);
        c.map(12, 960, t0);
        assert_eq!(c.map(11, 480, t0), (11, 480));
        c.rebase(48_000);
        assert_eq!(c.map(500, 0, t0).0, 13);
    }
}

/// Recent packets of one track in the stream's numbering, shared by every viewer
/// on a worker: a viewer's NACK is answered from here (RFC 4585 retransmission),
/// so no viewer keeps its own copy of the stream.
pub struct RetransmitCache {
    slots: Vec<Option<rtc::rtp::Packet>>,
    mask: usize,
}

impl RetransmitCache {
    /// `size` is rounded up to a power of two.
    pub fn new(size: usize) -> Self {
        let size = size.max(1).next_power_of_two();
        Self {
            slots: (0..size).map(|_| None).collect(),
            mask: size - 1,
        }
    }

    /// Keeps a packet; the clone shares the payload and allocates nothing.
    pub fn insert(&mut self, packet: &rtc::rtp::Packet) {
        let slot = packet.header.sequence_number as usize & self.mask;
        self.slots[slot] = Some(packet.clone());
    }

    pub fn get(&self, seq: u16) -> Option<&rtc::rtp::Packet> {
        self.slots[seq as usize & self.mask]
            .as_ref()
            .filter(|p| p.header.sequence_number == seq)
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn packet(seq: u16) -> rtc::rtp::Packet {
        let mut p = rtc::rtp::Packet::default();
        p.header.sequence_number = seq;
        p.payload = bytes::Bytes::from_static(b"payload");
        p
    }

    #[test]
    fn finds_recent_packets_and_forgets_overwritten_ones() {
        let mut cache = RetransmitCache::new(4);
        for seq in 65534..=65535u16 {
            cache.insert(&packet(seq));
        }
        for seq in 0..3u16 {
            cache.insert(&packet(seq));
        }
        assert!(cache.get(2).is_some());
        assert!(cache.get(65535).is_some());
        // 65534 shared its slot with 2 and was overwritten.
        assert!(cache.get(65534).is_none());
        assert!(cache.get(3).is_none());
    }
}
