//! jitgate agent library: the data plane (`gate`) and the control plane.

pub mod audit;
pub mod gate;
pub mod store;

