//! Recording of live streams (issue 14). Module map:
//! - [`thumbnail`]: a JPEG of one key frame, decoded by ffmpeg as a child process.
//!
//! (Minimal module file from the replay-page branch; the recorder's branch brings the rest.)

pub mod thumbnail;
