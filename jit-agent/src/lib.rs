//! jitgate agent library: the data plane (`gate`) and the control plane.

pub mod gate;

