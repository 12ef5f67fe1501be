//! What the SFU needs from the server's configuration.
//! Plain values, so the media crate needs no config library.

use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Address the media port binds to (UDP and ICE-TCP).
    pub bind: IpAddr,
    /// The one port every session uses. 0 picks a free port (tests).
    pub port: u16,
    /// Addresses advertised as host candidates.
    pub advertised_ips: Vec<IpAddr>,
    /// Worker threads, each with its own socket; 0 = one per core.
    pub workers: usize,
    pub max_sessions: usize,
    pub max_viewers_per_stream: usize,
    /// Sessions one media token (`jti`) may hold at once; 0 = no limit.
    pub max_sessions_per_token: usize,
    /// Sessions one user (`sub`, over all their tokens) may hold at once; 0 = no limit.
    pub max_sessions_per_user: usize,
    /// Share of `max_sessions` (percent) viewers may not take, kept for publishers.
    pub publisher_reserve_percent: usize,
    pub ice_tcp: bool,
    /// Packets queued from one worker to another before media is dropped.
    pub worker_queue_packets: usize,
    pub pli_interval: Duration,
    pub idle_timeout: Duration,
    /// A session whose client sent no STUN check for it within this long after
    /// creation is closed (the client never started ICE).
    pub ice_start_timeout: Duration,
    /// A session not connected (ICE and DTLS done) this long after creation is closed.
    pub connect_timeout: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            advertised_ips: vec![IpAddr::from([127, 0, 0, 1])],
            workers: 0,
            max_sessions: 2000,
            max_viewers_per_stream: 1000,
            max_sessions_per_token: 8,
            max_sessions_per_user: 16,
            publisher_reserve_percent: 5,
            ice_tcp: true,
            worker_queue_packets: 2048,
            pli_interval: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(30),
            ice_start_timeout: Duration::from_millis(5000),
            connect_timeout: Duration::from_secs(20),
        }
    }
}

impl MediaConfig {
    /// Sessions of `max_sessions` only publishers may take: `publisher_reserve_percent`
    /// of it, at least one when the percentage is not 0, and never all of them
    /// (a server of one session takes whoever comes first).
    pub fn publisher_reserve(&self) -> usize {
        if self.publisher_reserve_percent == 0 {
            return 0;
        }
        (self.max_sessions * self.publisher_reserve_percent / 100)
            .max(1)
            .min(self.max_sessions.saturating_sub(1))
    }

    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publisher_reserve_is_a_share_of_at_least_one_but_never_all() {
        let with = |max_sessions, publisher_reserve_percent| MediaConfig {
            max_sessions,
            publisher_reserve_percent,
            ..Default::default()
        };
        assert_eq!(MediaConfig::default().publisher_reserve(), 100);
        assert_eq!(with(4, 5).publisher_reserve(), 1);
        assert_eq!(with(1, 5).publisher_reserve(), 0);
        assert_eq!(with(2, 50).publisher_reserve(), 1);
        assert_eq!(with(100, 0).publisher_reserve(), 0);
    }
}
