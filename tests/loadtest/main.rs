//! The load generator's modes (`tandem-loadtest enroll`, `sync`, `whep`) on small
//! loads against a server in this process: their reports must hold sane values.

#[path = "../support/mod.rs"]
mod support;

mod edge_hop;
mod enroll;
mod sync;
mod whep;
