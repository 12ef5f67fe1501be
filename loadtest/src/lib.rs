//! tandem-loadtest as a library: the load modes and their report, so integration
//! tests can drive the same code the binary runs. The WHIP/WHEP client lives in
//! the `tandem-client` crate (the server's cluster edge uses it too); its modules
//! are re-exported here under their old paths.

pub mod bare;
pub mod call;
pub mod delay;
pub mod enroll;
pub mod netns;
pub mod procstat;
pub mod report;
pub mod server;
pub mod sync;
pub mod whep;

pub use tandem_client::{client, media, rxtime, stats};

/// Prints webrtc-rs's own `log` records to stderr when `TANDEM_LOADTEST_RTC_LOG` names
/// a level (`debug`, `trace`, …): the way to see why a peer does not connect.
pub fn init_rtc_log() {
    struct Stderr;
    impl log::Log for Stderr {
        fn enabled(&self, _: &log::Metadata) -> bool {
            true
        }
        fn log(&self, r: &log::Record) {
            eprintln!("[rtc {} {}] {}", r.level(), r.target(), r.args());
        }
        fn flush(&self) {}
    }
    static LOGGER: Stderr = Stderr;
    if let Ok(level) = std::env::var("TANDEM_LOADTEST_RTC_LOG")
        && let Ok(filter) = level.parse::<log::LevelFilter>()
        && log::set_logger(&LOGGER).is_ok()
    {
        log::set_max_level(filter);
    }
}
