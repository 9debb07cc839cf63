//! The local API: JSON lines over a Unix socket, callers identified by
//! SO_PEERCRED.

pub mod client;
pub mod proto;
pub mod server;
pub mod view;
