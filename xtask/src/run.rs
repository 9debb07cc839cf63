//! `cargo xtask run -- <args>`: the freshly built `jit-agent` with the given arguments.

use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result};

use crate::{build, command, setup, workspace};

pub fn run(args: &[String]) -> Result<ExitCode> {
    setup::setup()?;
    build::build()?;
    let agent = workspace::release_dir()?.join("jit-agent");
    let mut run = Command::new(&agent);
    run.args(args);
    let status =
        command::status(&mut run).with_context(|| format!("running {}", agent.display()))?;
    Ok(command::exit_code(status))
}
