//! `cargo xtask run -- <args>`: the freshly built `jit-agent` with the given arguments.

use std::process::ExitCode;

use anyhow::Result;

use crate::{build, command, setup};

pub fn run(args: &[String]) -> Result<ExitCode> {
    setup::setup()?;
    build::build()?;
    let mut agent = build::built_binary("jit-agent", "jit-agent")?;
    agent.args(args);
    Ok(command::exit_code(command::status(&mut agent)?))
}
