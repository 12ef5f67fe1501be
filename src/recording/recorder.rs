//! STUB
use super::store::Store;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tandem_media::kinds::MediaKind;
use tandem_media::{TapCodec, TapPacket};
pub struct RecorderConfig {
    pub part_target: Duration,
    pub segment_target: Duration,
}
impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            part_target: Duration::from_secs(1),
            segment_target: Duration::from_secs(4),
        }
    }
}
#[derive(Debug, Clone, Default)]
pub struct RecorderStats {
    pub bytes_written: u64,
    pub fragments: u64,
    pub segments: u64,
    pub dropped_frames: u64,
    pub duration: Duration,
}
#[derive(Debug, Clone)]
pub struct Finished {
    pub duration: Duration,
    pub codecs: String,
    pub bytes: u64,
}
pub struct Recorder {
    _s: Arc<dyn Store>,
}
impl Recorder {
    pub fn new(store: Arc<dyn Store>, _c: RecorderConfig) -> Self {
        Self { _s: store }
    }
    pub fn track_opened(&mut self, _k: MediaKind, _c: &[TapCodec]) {}
    pub fn packet(&mut self, _p: TapPacket) -> io::Result<()> {
        Ok(())
    }
    pub fn publisher_left(&mut self) -> io::Result<()> {
        Ok(())
    }
    pub fn tick(&mut self, _n: Instant) -> io::Result<()> {
        Ok(())
    }
    pub fn finish(&mut self) -> io::Result<Option<Finished>> {
        Ok(None)
    }
    pub fn take_keyframe_request(&mut self) -> bool {
        false
    }
    pub fn stats(&self) -> RecorderStats {
        RecorderStats::default()
    }
    pub fn codecs(&self) -> Option<String> {
        None
    }
    pub fn last_keyframe_segment(&self) -> Option<String> {
        None
    }
}
