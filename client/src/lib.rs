//! tandem-client: tandem's own WHIP/WHEP client on webrtc-rs's sans-IO `rtc`.
//! The load generator (`tandem-loadtest`) runs hundreds of its peers per thread;
//! the server's cluster edge (`src/cluster/edge.rs`) uses one [`relay::Relay`]
//! per pulled stream. It never depends on the server (the server depends on it).
//!
//! Module map, from the leaves up:
//! - [`media`]: synthetic VP8/H.264/Opus payloads with a send-time trailer; key frame checks.
//! - [`rxtime`]: kernel receive timestamps (SO_TIMESTAMPNS) of UDP datagrams.
//! - [`stats`]: what a viewer counts (loss, order, layers, latency histograms).
//! - [`client`]: one peer (publisher or viewer) with its socket; a [`client::Driver`]
//!   runs many on one poll loop.
//! - [`relay`]: a WHEP pull from one server re-published over WHIP to another
//!   (the cluster edge), RTP passed through with its numbering.

pub mod client;
pub mod media;
pub mod relay;
pub mod rxtime;
pub mod stats;
