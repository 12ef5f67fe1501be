//! Recording: a stream's publisher packets (from a [`tandem_media::tap`])
//! become CMAF/fMP4 segments and HLS playlists in a folder, without
//! transcoding. This is the synchronous core; the shell (a thread per
//! recording fed by the tap, the API serving the files) lives elsewhere.
//! Formats, layout and crash behaviour: docs/RECORDING.md.
//!
//! Module map, from the leaves up (each imports only modules above it):
//! - [`store`]: the [`Store`] trait (object names, atomic `put`, growing
//!   `append`) and [`LocalStore`], a folder per recording.
//! - [`depacketize`]: RTP payloads → frames per codec (VP8, VP9, H.264, AV1,
//!   Opus), the reorder buffer, loss → wait for a key frame, key-frame info.
//! - [`fmp4`]: the init segment and `moof`+`mdat` fragments (`mp4-atom`).
//! - [`playlist`]: `recording.json` state, `index.m3u8` (LL-HLS while live,
//!   ENDLIST at the end) and `master.m3u8`.
//! - [`recorder`]: [`Recorder`], which ties the above together.
//! - [`repair`]: finishes a recording left open by a crash.

pub mod depacketize;
pub mod fmp4;
pub mod playlist;
pub mod recorder;
pub mod repair;
pub mod store;

pub use recorder::{Finished, Recorder, RecorderConfig, RecorderStats};
pub use repair::repair;
pub use store::{LocalStore, Store};

#[cfg(test)]
mod tests;
