//! `cargo xtask build`: one release build of every binary and test binary, so the
//! test suite, the demo and `run` reuse it instead of building again.

use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::{command, workspace};

pub fn build() -> Result<()> {
    // Binaries, test binaries and examples in one invocation get one feature
    // resolution, the one `cargo test --workspace` uses (dev-dependencies
    // included). Separate `cargo build --bins` and `cargo test --no-run` runs
    // resolve features differently and compile most crates twice.
    command::step("building release binaries and test binaries");
    let mut build = workspace::cargo();
    build
        .args([
            "build",
            "--release",
            "--workspace",
            "--bins",
            "--tests",
            "--examples",
        ])
        .args(workspace::HOST_EXCLUDES);
    command::run(&mut build)
}

/// A command running the workspace binary `name` as [`build`] built it. Running
/// `cargo run -p <crate>` instead would resolve features for that crate alone and
/// rebuild its dependencies. When there is no such binary (the crate does not
/// define it), it is `cargo run`, so cargo says what is missing.
pub fn built_binary(package: &str, name: &str) -> Result<Command> {
    let path: PathBuf = workspace::release_dir()?.join(name);
    if path.is_file() {
        return Ok(Command::new(path));
    }
    let mut run = workspace::cargo();
    run.args(["run", "--release", "-p", package, "--bin", name, "--"]);
    Ok(run)
}
