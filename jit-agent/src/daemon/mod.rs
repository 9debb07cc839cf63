//! The agent daemon: wires policy, store, audit log, gate, API and metrics.

pub mod deadlines;
pub mod denied;
