//! Recording and replay (STUB for integration; replaced by the recording core).
pub mod live;
pub mod recorder;
pub mod repair;
pub mod store;
pub mod thumbnail;

pub use recorder::{Finished, Recorder, RecorderConfig, RecorderStats};
pub use store::{LocalStore, Store};
