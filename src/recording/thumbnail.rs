//! STUB
use std::io;
use std::path::Path;
pub async fn render(_ffmpeg: &Path, _init: &[u8], _segment: &[u8], _out: &Path) -> io::Result<()> {
    Ok(())
}
