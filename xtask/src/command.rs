//! Running external programs: echoed when they do work, quiet when they only probe.

use std::{
    ffi::OsStr,
    process::{Command, ExitCode, ExitStatus, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// Prints a step heading, so a long run reads as a list of what was done.
pub fn step(message: impl std::fmt::Display) {
    eprintln!("==> {message}");
}

/// The command line as a shell would show it, for logs and error messages.
pub fn display(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` with inherited stdio and returns its exit status.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    eprintln!("$ {}", display(cmd));
    cmd.status()
        .with_context(|| format!("starting `{}`", display(cmd)))
}

/// Runs `cmd` with inherited output and no stdin (CI has none), and fails unless it
/// exits successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd.stdin(Stdio::null()))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout; on failure the error carries stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

/// Shorthand for `Command::new(program).args(args)`.
pub fn cmd<S: AsRef<OsStr>>(
    program: impl AsRef<OsStr>,
    args: impl IntoIterator<Item = S>,
) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// Passes a child's exit status on as xtask's own.
pub fn exit_code(status: ExitStatus) -> ExitCode {
    match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    }
}
