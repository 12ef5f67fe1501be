//! The media core: one worker's sessions as a sans-IO state machine, in the
//! manner of str0m. Inputs arrive with the time they happened; what must go out
//! is written into an [`Egress`] the caller provides. No clock, socket, channel
//! or runtime is touched here, so the tests drive it in memory with a virtual
//! clock; the shell around it is `crate::worker`.
//!
//! - [`egress`]: the [`Egress`] sink and what passes through it ([`Forward`], [`Event`]).
//! - [`forward`]: the packet path: fan-out, NACKs from the cache, sender reports.
//! - [`machine`]: [`Core`], the sessions, their routes, timers and lifecycle.

pub mod egress;
pub mod forward;
pub mod machine;

#[cfg(test)]
mod tests;

pub use egress::{Egress, Event, Forward, TcpDrop};
pub use machine::{Core, MAX_HANDOVER_AGE, NewSession};
