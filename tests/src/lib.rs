//! jitgate's privileged integration tests (in `tests/`) and what they share: the
//! network-namespace [`lab`] and the way to find the workspace's binaries.
//!
//! Everything here needs root; `cargo xtask test` runs it as root after setting up
//! the machine.

pub mod agent;
pub mod bench;
pub mod http;
pub mod lab;
pub mod model;
pub mod packet;

use std::path::PathBuf;

/// The path of a workspace binary (`jit-agent`, `jitctl`): in `JITGATE_BIN_DIR` when
/// set (`cargo xtask test` sets it), else next to the running test binary's profile
/// directory (`target/<profile>/`, the parent of `deps/`).
pub fn bin_path(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("JITGATE_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let mut dir = exe
        .parent()
        .expect("the test binary is in a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}
