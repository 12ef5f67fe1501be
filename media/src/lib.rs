//! tandem-media: the SFU. WHIP/WHEP sessions on webrtc-rs's sans-IO `rtc` stack,
//! driven by our own workers on one shared UDP port; packets forwarded, never decoded.
//!
//! Module map, from the leaves up (each module imports only modules above it in
//! this list, so every import in the crate points one way):
//! - [`kinds`]: the shared vocabulary: [`SessionKind`], `MediaKind`, `Transport`.
//! - [`layers`]: simulcast vocabulary: encodings on offer, a viewer's layer request and layer.
//! - [`config`]: what the SFU needs to know (port, advertised addresses, limits).
//! - [`error`]: [`MediaError`], what can go wrong with a session request.
//! - [`metrics`]: Prometheus instruments of the packet path.
//! - [`tap`]: what a stream's taps (the recorder, the restream feed) are handed: codecs, packets.
//! - [`codec`]: key frames and picture sizes read from a video payload's first bytes.
//! - [`stun`]: the few bytes of STUN the demultiplexer reads (USERNAME).
//! - [`srtp`]: SRTP protection of forwarded RTP, straight into the send buffer.
//! - [`bwe`]: a viewer's bandwidth estimate (TWCC stamping and feedback into GCC, REMB).
//! - [`simulcast`]: which encoding a viewer gets: pin, caps, estimate, the timers.
//! - [`feedback`]: lets viewers' PLI/FIR/NACK through webrtc-rs; throttles keyframe requests.
//! - [`track`]: stream numbering continuous across publisher reconnects; the NACK cache.
//! - [`sdp`]: checks offers before any state is made; trickle/restart fragments.
//! - [`admission`]: sessions held per token, per user and in all; a session's slot.
//! - [`registry`]: what the handle and all workers share: sessions, ufrags, streams.
//! - [`session`]: one peer connection (built as ICE-lite answerer), publisher or viewer.
//! - [`core`]: the sans-IO media core of a worker: inputs with `now`, output into an `Egress`.
//! - [`udp`]: the media port's UDP sockets; datagrams batched into sendmmsg(2) calls.
//! - [`worker`]: the shell around the core: a thread, its socket, its channels.
//! - [`tcp`]: ICE-TCP (passive, RFC 4571 framing) on the same port number.
//! - [`sfu`]: [`Sfu`], the handle the HTTP layer calls.
//! - `fuzzing` (feature `fuzzing` only, hidden): drives the core for the `fuzz/`
//!   crate's `media_core` target; nothing else imports it.

pub mod admission;
pub mod bwe;
pub mod codec;
pub mod config;
pub mod core;
pub mod error;
pub mod feedback;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod kinds;
pub mod layers;
pub mod metrics;
pub mod registry;
pub mod sdp;
pub mod session;
pub mod sfu;
pub mod simulcast;
pub mod srtp;
pub mod stun;
pub mod tap;
pub mod tcp;
pub mod track;
pub mod udp;
pub mod worker;

pub use admission::SessionHolder;
pub use config::MediaConfig;
pub use error::MediaError;
pub use kinds::SessionKind;
pub use layers::{LayerInfo, LayerRequest, ViewerLayer};
pub use registry::{PatchOutcome, SessionAnswer, SessionObserver, SessionSummary, StreamSummary};
pub use sfu::Sfu;
pub use tap::{StreamTap, TapCodec, TapPacket, Taps};
