//! `cargo xtask build`: one release build of every binary and test binary, so the
//! test suite, the demo and `run` reuse it instead of building again.

use anyhow::Result;

use crate::{command, workspace};

pub fn build() -> Result<()> {
    command::step("building release binaries");
    let mut bins = workspace::cargo();
    bins.args(["build", "--release", "--workspace", "--bins"])
        .args(workspace::HOST_EXCLUDES);
    command::run(&mut bins)?;

    command::step("building release test binaries");
    let mut tests = workspace::cargo();
    tests
        .args(["test", "--release", "--workspace", "--no-run"])
        .args(workspace::HOST_EXCLUDES);
    command::run(&mut tests)
}
