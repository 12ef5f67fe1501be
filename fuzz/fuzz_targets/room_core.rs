//! The room core fed arbitrary client frames from four connections, with joins,
//! leaves, evictions and timer ticks (the script format is `RoomFuzz::run`'s; an
//! input starting with `!` runs with small limits). It checks that every message
//! the room sends is a JSON object with a `type` and that broadcasts are numbered
//! one by one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_signaling::fuzzing::RoomFuzz;

fuzz_target!(|data: &[u8]| {
    let script = String::from_utf8_lossy(data);
    RoomFuzz::new(script.starts_with('!')).run(&script);
});
