//! Restreaming: while a stream is live, each of its destinations (YouTube,
//! Twitch, Facebook, any RTMP(S) server) is one ffmpeg child process fed from
//! the stream over local RTP, so one destination's failure is one process's
//! failure and never touches the viewers or the other destinations.
//!
//! Module map, from the leaves up:
//! - [`supervisor`]: the sans-IO state machine of one destination (statuses,
//!   stall detection, backoff with jitter, failing fast on a refused key);
//!   events in, actions out, no clock reads.
//! - [`ffmpeg`]: the process shell: the SDP and command line per codec
//!   (H.264 copied, VP8/VP9/AV1 → H.264, Opus → AAC), `-progress` parsing,
//!   stderr classified and redacted (never the stream key).
//! - [`feed`]: the stream's tap in the SFU: packets queued at once, then sent
//!   as RTP over UDP on 127.0.0.1 to every destination's ffmpeg.
//! - [`manager`]: [`Restreams`], what the HTTP layer drives: per stream its
//!   destinations, one tokio task per destination running its supervisor,
//!   status changes broadcast, the node's limits, metrics.

pub mod feed;
pub mod ffmpeg;
pub mod manager;
pub mod supervisor;

use serde::Serialize;
use utoipa::ToSchema;

pub use manager::{RestreamMetrics, Restreams};

/// Where one destination pushes: what the HTTP layer resolved for a
/// connection of the instructor.
#[derive(Clone, Debug)]
pub struct DestinationSpec {
    pub connection_id: String,
    pub platform: String,
    pub target: Target,
}

/// A destination's push target.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// An `rtmp://` or `rtmps://` URL with the stream key in it: a secret
    /// (Debug shows only scheme and host).
    Url(String),
    /// The target could not be resolved (the platform refused, the connection
    /// needs reconnecting): the reason is the destination's `last_error` and
    /// its status `failed`.
    Unavailable(String),
    /// The destination already running for this connection, whatever its URL
    /// (the HTTP layer resolves a connection once per class: resolving again
    /// could create a second YouTube broadcast). Nothing when none runs.
    Keep,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Url(url) => f
                .debug_tuple("Url")
                .field(&ffmpeg::redact_url(url))
                .finish(),
            Target::Unavailable(reason) => f.debug_tuple("Unavailable").field(reason).finish(),
            Target::Keep => f.write_str("Keep"),
        }
    }
}

/// One destination as the API shows it (GET …/destinations, the SSE events).
#[derive(Clone, Debug, Serialize, ToSchema, PartialEq, Eq)]
pub struct DestinationStatus {
    pub connection_id: String,
    pub platform: String,
    pub status: Status,
    /// ffmpeg starts since the destination was set or last stayed live a while.
    pub attempts: u32,
    /// Why the last attempt ended (no URL path, no key: at most scheme://host).
    pub last_error: Option<String>,
    /// When `status` last changed (RFC 3339).
    pub since: String,
    /// Bytes ffmpeg has written to the destination since it was set.
    pub bytes_sent: u64,
}

/// A destination's state.
#[derive(Clone, Copy, Debug, Serialize, ToSchema, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not running (the stream is not live, or the destination was stopped).
    Idle,
    /// Starting: waiting for the publisher's media, or ffmpeg connecting.
    Connecting,
    /// ffmpeg's output is growing, video included: the destination receives
    /// the stream.
    Live,
    /// The last attempt ended (a stall, an exit, the server went away); the
    /// next starts after the backoff.
    Retrying,
    /// Given up: the server refused the key, or the target is unavailable.
    Failed,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Status::Idle,
        Status::Connecting,
        Status::Live,
        Status::Retrying,
        Status::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Idle => "idle",
            Status::Connecting => "connecting",
            Status::Live => "live",
            Status::Retrying => "retrying",
            Status::Failed => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let spec = DestinationSpec {
            connection_id: "c1".into(),
            platform: "youtube".into(),
            target: Target::Url("rtmps://a.rtmp.youtube.com/live2/abcd-efgh-ijkl".into()),
        };
        let shown = format!("{spec:?}");
        assert!(!shown.contains("abcd-efgh-ijkl"), "{shown}");
        assert!(shown.contains("rtmps://a.rtmp.youtube.com"), "{shown}");
    }

    #[test]
    fn statuses_serialise_in_snake_case() {
        let json: Vec<String> = Status::ALL
            .iter()
            .map(|s| serde_json::to_string(s).unwrap())
            .collect();
        assert_eq!(
            json,
            [
                "\"idle\"",
                "\"connecting\"",
                "\"live\"",
                "\"retrying\"",
                "\"failed\""
            ]
        );
        for s in Status::ALL {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}
