//! tandem-media: the SFU. WHIP/WHEP sessions on webrtc-rs's sans-IO `rtc` stack,
//! driven by our own workers on one shared UDP port; packets forwarded, never decoded.
//!
//! Module map:
//! - [`config`]: what the SFU needs to know (port, advertised addresses, limits).
//! - [`error`]: [`MediaError`], what can go wrong with a session request.
//! - [`feedback`]: lets viewers' PLI/FIR/NACK through webrtc-rs to the SFU.
//! - [`sdp`]: checks offers before any state is made; trickle/restart fragments.
//! - [`stun`]: the few bytes of STUN the demultiplexer reads (USERNAME).
//! - [`track`]: stream numbering that stays continuous across publisher reconnects.
//! - [`session`]: one peer connection (built as ICE-lite answerer) and its state.
//! - [`worker`]: a thread with its own socket on the media port; owns sessions,
//!   demultiplexes, forwards.
//! - [`srtp`]: SRTP protection of forwarded RTP, straight into the send batch.
//! - [`udp`]: outgoing datagrams batched into sendmmsg(2) calls.
//! - [`tcp`]: ICE-TCP (passive, RFC 4571 framing) on the same port number.
//! - [`sfu`]: [`Sfu`], the handle the HTTP layer calls, and the shared registries.
//! - [`metrics`]: Prometheus instruments of the packet path.

pub mod config;
pub mod error;
pub mod feedback;
pub mod metrics;
pub mod sdp;
pub mod session;
pub mod sfu;
pub mod srtp;
pub mod stun;
pub mod tcp;
pub mod track;
pub mod udp;
pub mod worker;

pub use config::MediaConfig;
pub use error::MediaError;
pub use sfu::{
    PatchOutcome, SessionAnswer, SessionHolder, SessionKind, SessionObserver, SessionSummary, Sfu,
    StreamSummary,
};
