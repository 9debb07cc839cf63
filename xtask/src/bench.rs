//! `cargo xtask bench -- <args>`: the benchmarks, the `jit-bench` binary of jit-tests.

use std::process::ExitCode;

use anyhow::Result;

use crate::{build, command, setup, workspace};

pub fn bench(args: &[String]) -> Result<ExitCode> {
    setup::setup()?;
    build::build()?;
    command::step("running the benchmarks");
    let mut bench = build::built_binary("jit-tests", "jit-bench")?;
    bench
        .args(args)
        .env("JITGATE_BIN_DIR", workspace::release_dir()?);
    Ok(command::exit_code(command::status(&mut bench)?))
}
