//! Errors of session requests, each naming what was wrong so the HTTP layer
//! can answer with the right status and a message the client can act on.

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum MediaError {
    /// The offer (or fragment) cannot be parsed or lacks something required.
    #[error("malformed SDP: {0}")]
    BadSdp(String),
    /// Nothing in the offer can be forwarded (no common codec, no media section).
    #[error("no usable media in the offer: {0}")]
    NoCommonCodec(String),
    /// A publisher is already live on this stream.
    #[error("stream '{0}' already has a live publisher")]
    StreamBusy(String),
    #[error("no such session")]
    UnknownSession,
    /// A `layer` request (WHEP extension) that names no encoding of the stream,
    /// or not the viewer's video section: nothing changed.
    #[error("{0}")]
    BadLayer(String),
    /// A configured limit was reached.
    #[error("at capacity: {0}")]
    AtCapacity(String),
    /// A per-holder limit (sessions per token or per user) was reached: the
    /// client should close sessions it no longer uses, or wait.
    #[error("{message}")]
    LimitReached {
        /// The configuration key of the limit, e.g. `media.max_sessions_per_token`.
        limit: &'static str,
        message: String,
        retry_after_secs: u64,
    },
    /// Another process holds the media port (another tandem, most likely).
    #[error(
        "media port {0}/udp is in use by another process (another tandem?): set TANDEM_MEDIA_PORT"
    )]
    PortInUse(u16),
    /// The server is shutting down.
    #[error("the media server is shutting down")]
    ShuttingDown,
    #[error("internal media error: {0}")]
    Internal(String),
}
