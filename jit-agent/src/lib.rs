//! jitgate agent library: the data plane (`gate`) and the control plane.

pub mod audit;
pub mod cli;
pub mod daemon;
pub mod api;
pub mod gate;
pub mod lifecycle;
pub mod policy;
pub mod metrics;
pub mod store;

