//! Developer tasks for jitgate, run as `cargo xtask <command>` (the alias lives in
//! `.cargo/config.toml`). Every command that builds or runs something first runs
//! `setup`, so one command is enough on a fresh Debian 12 machine.

mod bench;
mod build;
mod command;
mod demo;
mod preflight;
mod run;
mod setup;
mod test;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jitgate developer tasks. All of them need root.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what jitgate needs (nightly rust-src, bpf-linker, Debian packages),
    /// check the kernel and mount bpffs. Quick when everything is already there.
    Setup,
    /// Set up, then build every binary and every test binary once (release profile).
    Build,
    /// Set up, build, then run the whole test suite, privileged tests included.
    ///
    /// Arguments after `--` go to `cargo test`, e.g. `-- --test lab_smoke` or
    /// `-- lab -- --nocapture`. JITGATE_TEST_THREADS limits parallel tests.
    Test {
        /// Arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, then run the demo lab (the `jit-demo` binary of jit-tests).
    Demo {
        /// Arguments for the demo.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, then run `jit-agent` with the given arguments.
    Run {
        /// Arguments for `jit-agent`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, then run the benchmarks (the `jit-bench` binary of jit-tests).
    Bench {
        /// Arguments for the benchmarks.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::setup().map(|()| ExitCode::SUCCESS),
        Task::Build => setup::setup()
            .and_then(|()| build::build())
            .map(|()| ExitCode::SUCCESS),
        Task::Test { args } => test::test(&args),
        Task::Demo { args } => demo::demo(&args),
        Task::Run { args } => run::run(&args),
        Task::Bench { args } => bench::bench(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line.
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
