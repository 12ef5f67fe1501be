//! tandem-media: the SFU. WHIP/WHEP sessions on webrtc-rs's sans-IO `rtc` stack,
//! driven by our own workers on one shared UDP port; packets forwarded, never decoded.

pub mod config;
pub mod error;
pub mod sfu;

pub use config::MediaConfig;
pub use error::MediaError;
pub use sfu::{PatchOutcome, SessionAnswer, SessionKind, SessionSummary, Sfu, StreamSummary};
