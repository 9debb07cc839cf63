//! `cargo xtask demo`: the self-contained demo lab, the `jit-demo` binary of jit-tests.

use std::process::ExitCode;

use anyhow::Result;

use crate::{build, command, setup, workspace};

pub fn demo(args: &[String]) -> Result<ExitCode> {
    setup::setup()?;
    build::build()?;
    command::step("running the demo");
    let mut demo = build::built_binary("jit-tests", "jit-demo")?;
    demo.args(args)
        .env("JITGATE_BIN_DIR", workspace::release_dir()?);
    Ok(command::exit_code(command::status(&mut demo)?))
}
