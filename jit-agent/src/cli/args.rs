//! jitctl's command line; the doc comments are the --help text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Default agent socket.
pub const DEFAULT_SOCKET: &str = "/run/jitgate/api.sock";

/// jitctl: ask for, approve and manage just-in-time network access.
///
/// Access is always temporary: a grant opens one user's source address to a
/// target for a bounded time, enforced by the kernel, then closes by itself.
#[derive(Debug, Parser)]
#[command(name = "jitctl", version, after_help = super::exit::HELP)]
pub struct Cli {
    /// Path of the agent's API socket.
    #[arg(long, global = true, env = "JITGATE_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the agent's state and who you are to it.
    Status,
    /// Ask for access to a target; it starts once approved (if the role
    /// needs approval) and ends by itself.
    Request {
        /// Target name from the policy (see `jitctl policy show`).
        target: String,
        /// How long, e.g. 30m or 2h (default: the role's default).
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// Source address the access is for (default: your only source
        /// address in the policy).
        #[arg(long = "from", value_name = "ADDR")]
        source: Option<String>,
        /// Reason or ticket, recorded in the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Approve someone else's pending request.
    Approve {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a pending request.
    Deny {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Withdraw your own pending request.
    Cancel { id: u64 },
    /// Admin: give a user access at once, without approvals.
    Grant {
        /// User name from the policy.
        user: String,
        target: String,
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        #[arg(long = "from", value_name = "ADDR")]
        source: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Admin: make many grants in one call, all or none.
    ///
    /// FILE (or `-` for standard input) holds a JSON array of grants, each
    /// with the fields of `jitctl grant`: {"user": "alice", "target": "plc",
    /// "source": "10.1.0.5", "duration": "30m", "reason": "..."}; `source`
    /// and `duration` may be left out. If any grant is refused, none is made
    /// and the error names the first one refused. At most 1,000 grants, in
    /// at most 64 KiB of JSON.
    GrantBatch {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Admin: end any grant now (or refuse a pending request).
    Revoke {
        id: u64,
        #[arg(long)]
        reason: Option<String>,
    },
    /// End your own grant early.
    Release { id: u64 },
    /// Lengthen your grant, within the role's maximum.
    Extend {
        id: u64,
        /// How much longer, e.g. 15m.
        #[arg(long, value_name = "DURATION")]
        by: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// List requests and grants (your own unless --all).
    List {
        /// Everyone's (approvers and admins).
        #[arg(long)]
        all: bool,
        /// Include ended grants and closed requests.
        #[arg(long)]
        history: bool,
    },
    /// Show one request or grant in full.
    Show { id: u64 },
    /// Follow events live (requests, approvals, grants, expiry, denials).
    Watch,
    /// Check, reload or show the policy.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Read or verify the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file or directory without an agent; prints every
    /// error with file:line:column.
    Check { path: PathBuf },
    /// Admin: make the agent load its policy again (as SIGHUP does).
    Reload,
    /// Show the policy the agent enforces.
    Show,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the last audit records.
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
    },
    /// Check the hash chain of the audit log; exits 6 if it was tampered with.
    Verify {
        /// Verify this file directly instead of asking the agent.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}
