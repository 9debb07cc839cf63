//! Where things are: the workspace root, its target directory, cargo and CARGO_HOME.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use crate::command;

/// Crates `--workspace` must skip: jit-ebpf and jit-ebpf-bench only build for the
/// bpfel target, and the build.rs of jit-agent and jit-tests build them that way.
pub const HOST_EXCLUDES: &[&str] = &["--exclude", "jit-ebpf", "--exclude", "jit-ebpf-bench"];

/// The workspace root (the parent of this crate).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// A `cargo` command run from the workspace root, with the same cargo that runs xtask.
pub fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// The directory holding release binaries, honouring CARGO_TARGET_DIR and cargo config.
pub fn release_dir() -> Result<PathBuf> {
    let mut metadata = cargo();
    metadata.args(["metadata", "--format-version", "1", "--no-deps"]);
    let json = command::output(&mut metadata)?;
    let value: serde_json::Value =
        serde_json::from_str(&json).context("parsing `cargo metadata` output")?;
    let target = value["target_directory"]
        .as_str()
        .context("`cargo metadata` printed no target_directory")?;
    Ok(Path::new(target).join("release"))
}

/// CARGO_HOME as rustup and cargo see it (`~/.cargo` unless overridden).
pub fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(Path::new(&home).join(".cargo"))
}

/// Puts `$CARGO_HOME/bin` first on PATH for this process and every child, so the
/// bpf-linker that `setup` installs is the one aya-build finds.
pub fn put_cargo_bin_on_path() -> Result<()> {
    let bin = cargo_home()?.join("bin");
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|dir| dir == bin) {
        return Ok(());
    }
    let joined = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path)))
        .context("building PATH")?;
    // xtask is single-threaded, so changing the environment cannot race a reader.
    env::set_var("PATH", joined);
    Ok(())
}
