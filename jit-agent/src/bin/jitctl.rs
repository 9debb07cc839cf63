//! jitctl: the command line for jitgate. See `jitctl --help`.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = jit_agent::cli::args::Cli::parse();
    std::process::ExitCode::from(jit_agent::cli::run::run(cli))
}
