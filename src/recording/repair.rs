//! On server start: finish a recording a crash (kill -9) left open.
//!
//! The recorder appends a fragment to the open segment file first and then
//! replaces `recording.json`, so after a crash the state lists only complete
//! parts and the segment file may carry one fragment more, possibly half
//! written. Repair cuts the open segment file back to its listed parts,
//! closes that segment as the last one, and rewrites both playlists with
//! `#EXT-X-ENDLIST`. A finished recording is left alone.
//!
//! Imports [`super::store`], [`super::playlist`] and the summary type of
//! [`super::recorder`].

use std::io;
use std::time::Duration;

use super::playlist::{INDEX, INIT, MASTER, RecordingState, STATE};
use super::recorder::Finished;
use super::store::Store;

/// Finishes an unfinished recording; answers what the recording is, or
/// `None` when the folder holds no recording state (nothing was recorded).
pub fn repair(store: &dyn Store) -> io::Result<Option<Finished>> {
    let json = match store.get(STATE) {
        Ok(json) => json,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut state: RecordingState =
        serde_json::from_slice(&json).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if !state.finished {
        if let Some(open) = &state.open {
            let listed = open.bytes();
            match store.get(&open.name) {
                Ok(data) if data.len() as u64 > listed => store.truncate(&open.name, listed)?,
                Ok(_) => {}
                // Listed parts whose file is gone: nothing to keep of it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => state.open = None,
                Err(e) => return Err(e),
            }
        }
        state.finish();
        let json = serde_json::to_vec(&state).map_err(io::Error::other)?;
        store.put(STATE, &json)?;
        store.put(INDEX, state.media_playlist().as_bytes())?;
        store.put(MASTER, state.multivariant_playlist().as_bytes())?;
    }
    let init = store.get(INIT).map(|d| d.len() as u64).unwrap_or(0);
    Ok(Some(Finished {
        duration: Duration::from_secs_f64(state.duration().max(0.0)),
        codecs: state.codecs.clone(),
        bytes: init + state.bytes(),
    }))
}
