//! Watch Together rooms over WebSocket: clock sync, playback state, presence, chat.
//! Knows nothing of media; the server asks it through the traits it defines.
//!
//! Module map, from the leaves up (a module imports only modules listed above it;
//! the leaves import none of their siblings):
//! - Leaves, the shared vocabulary:
//!   - [`config`]: the `[rooms]` limits and timings.
//!   - [`wire`]: the protocol's client messages (SYNC_PROTOCOL.md v1).
//!   - [`clock`]: server time and the clock-offset filter.
//!   - [`playback`]: the playback state, its extrapolation, the ready barrier.
//!   - [`chat`]: the [`chat::ChatStore`] seam, rate limits, blocked words.
//!   - [`broker`]: the multi-node seam ([`broker::InProcessBroker`] by default).
//!   - [`metrics`]: Prometheus instruments.
//!   - `identity`: who connects ([`Identity`]), well-formed room ids.
//!   - `frame`: what a connection's writer is handed, framing once per broadcast.
//!   - `trim`: gives freed heap back to the OS after a burst of joins or leaves.
//! - `server_msg`: every message the server sends, typed, serialised once.
//! - `peer`: what one node tells another about a room (several nodes), its encoding.
//! - `core`: the room's sans-IO core: `Room::handle(now, input)` leaves effects in
//!   an outbox; one file per message family (members, resume, playback, chat,
//!   moderation). No clock, no tokio, no sockets.
//! - `link`: a member's socket shared by the room (direct writes) and the connection.
//! - `event`: what reaches a room's task (joins, messages, typed database results).
//! - `state`: what all rooms share (limits, store, broker, metrics, the registry).
//! - `room`: the room task, the shell around the core: channel, timers, clock,
//!   database calls, socket writes; owning a room of several nodes, its lease, its
//!   log in the broker and its members on other nodes.
//! - `relay`: several nodes: the task that stands for a room owned by another node
//!   and serves this node's members of it.
//! - `rooms`: [`Rooms`], the registry: creates room tasks (or relays), hands them
//!   joins, takes what other nodes send ([`Rooms::deliver`]).
//! - `conn`: one WebSocket connection (reader, drains what would have blocked).
//! - `fuzzing` (feature `fuzzing` only, hidden): drives the core for the `fuzz/`
//!   crate's `room_core` target; nothing else imports it.

pub mod broker;
pub mod chat;
pub mod clock;
pub mod config;
pub mod metrics;
pub mod playback;
pub mod wire;

mod conn;
mod core;
mod event;
mod frame;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod identity;
mod link;
mod peer;
mod relay;
mod room;
mod rooms;
mod server_msg;
mod state;
mod trim;

pub use crate::core::Refused;
pub use broker::{Broker, BrokerError, BrokerFut, InProcessBroker, Lease, Owner, Restored};
pub use chat::{ChatStore, MemoryStore};
pub use config::RoomsConfig;
pub use identity::{Identity, valid_room_id};
pub use link::WsUpgrade;
pub use metrics::Metrics;
pub use rooms::Rooms;

/// The module map above, held against the code: what each module names of its
/// siblings (`crate::x`), read from the source.
#[cfg(test)]
mod imports {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    /// Module name → the sibling modules it names.
    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                files.push((name, std::fs::read_to_string(&path).unwrap()));
            } else if path.is_dir() {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                let mut all = String::new();
                for f in std::fs::read_dir(&path).unwrap() {
                    all += &std::fs::read_to_string(f.unwrap().path()).unwrap();
                }
                files.push((name, all));
            }
        }
        let mut g = BTreeMap::new();
        for (name, text) in files {
            let mut uses = BTreeSet::new();
            for (i, _) in text.match_indices("crate::") {
                let rest = &text[i + "crate::".len()..];
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                if end > 0 && rest[..end] != name {
                    uses.insert(rest[..end].to_string());
                }
            }
            g.insert(name, uses);
        }
        g
    }

    #[test]
    fn every_import_points_one_way() {
        let g = graph();
        // Depth-first search for an edge back onto the current path.
        fn visit<'a>(
            g: &'a BTreeMap<String, BTreeSet<String>>,
            m: &'a str,
            path: &mut Vec<&'a str>,
            done: &mut BTreeSet<&'a str>,
        ) {
            if let Some(i) = path.iter().position(|p| *p == m) {
                panic!("import circle: {}", path[i..].join(" -> ") + " -> " + m);
            }
            if !done.insert(m) {
                return;
            }
            path.push(m);
            for next in g.get(m).into_iter().flatten() {
                visit(g, next, path, done);
            }
            path.pop();
        }
        let mut done = BTreeSet::new();
        for m in g.keys() {
            visit(&g, m, &mut Vec::new(), &mut done);
        }
        assert!(g.contains_key("core") && g.contains_key("room"), "{g:?}");
    }

    #[test]
    fn the_leaves_import_no_sibling() {
        let g = graph();
        for leaf in [
            "config", "wire", "clock", "playback", "chat", "broker", "metrics", "identity",
            "frame", "trim",
        ] {
            assert_eq!(g[leaf], BTreeSet::new(), "{leaf}");
        }
    }

    #[test]
    fn the_core_reads_no_clock_and_uses_no_tokio() {
        let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
        for f in std::fs::read_dir(core).unwrap() {
            let path = f.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for banned in ["tokio", "Instant", "SystemTime", "now_ms", "crate::link"] {
                assert!(!text.contains(banned), "{} names {banned}", path.display());
            }
        }
    }
}
