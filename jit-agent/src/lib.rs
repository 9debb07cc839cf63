//! jitgate agent library: the data plane (`gate`) and the control plane.

pub mod api;
pub mod audit;
pub mod cli;
pub mod daemon;
pub mod gate;
pub mod lifecycle;
pub mod metrics;
pub mod policy;
pub mod store;
