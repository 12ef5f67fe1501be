//! STUB
use super::recorder::Finished;
use super::store::Store;
use std::io;
pub fn repair(_s: &dyn Store) -> io::Result<Option<Finished>> {
    Ok(None)
}
