//! Recording: a stream's publisher packets (from a [`tandem_media::tap`])
//! become CMAF/fMP4 segments and HLS playlists in a folder, without
//! transcoding. The synchronous core (store … repair) is driven by a thin
//! shell ([`live`]): a thread per recording fed by the SFU's tap. The API that
//! serves the files is `crate::api::replay`. Formats, layout and crash
//! behaviour: docs/RECORDING.md.
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
//! - [`thumbnail`]: a JPEG of a key frame, by ffmpeg as a child process.
//! - [`live`]: the shell: the SFU's tap, a thread per recording, start and
//!   finish, the database's view, metrics.

pub mod depacketize;
pub mod fmp4;
pub mod playlist;
pub mod recorder;
pub mod repair;
pub mod store;
pub mod thumbnail;

pub mod live;

pub use recorder::{Finished, Recorder, RecorderConfig, RecorderStats};
pub use repair::repair;
pub use store::{LocalStore, Store};

#[cfg(test)]
mod tests;
