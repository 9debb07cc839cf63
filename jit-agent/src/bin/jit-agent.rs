//! jit-agent: loads the XDP gate, keeps grants, serves jitctl and metrics.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// The jitgate agent.
///
/// It loads the XDP gate onto the policy's interfaces, pins it under bpffs
/// (so enforcement and expiry go on if the agent stops or crashes), and
/// serves jitctl on a Unix socket and Prometheus metrics over HTTP.
#[derive(Debug, Parser)]
#[command(name = "jit-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent in the foreground (systemd: Type=notify not needed).
    Run {
        /// Policy file, or directory whose *.toml files are merged.
        #[arg(long, short, env = "JITGATE_POLICY", default_value = "/etc/jitgate")]
        policy: PathBuf,
        /// Also log the XDP program's per-packet diagnostics (costly; off
        /// by default, and compiled out of the packet path when off).
        #[arg(long)]
        debug_bpf: bool,
    },
    /// Remove the gate: detach its programs and delete its pins. Every
    /// grant ends; protected prefixes become reachable as without jitgate.
    /// Stop the agent first.
    Detach {
        /// Policy whose gate.bpffs_dir to clear.
        #[arg(
            long,
            short,
            env = "JITGATE_POLICY",
            default_value = "/etc/jitgate",
            conflicts_with = "pin_dir"
        )]
        policy: PathBuf,
        /// Clear this pin directory instead.
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    jit_agent::daemon::logging::init();
    let result = match cli.command {
        Command::Run { policy, debug_bpf } => jit_agent::daemon::run(&policy, debug_bpf),
        Command::Detach { policy, pin_dir } => {
            jit_agent::daemon::detach(&policy, pin_dir.as_deref())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jit-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
