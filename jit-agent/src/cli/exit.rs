//! jitctl's documented exit codes.

use crate::api::proto::ErrorKind;

/// The command did what was asked (a request left pending counts).
pub const OK: u8 = 0;
/// The agent failed; nothing was changed.
pub const INTERNAL: u8 = 1;
/// The command line was wrong (clap uses 2 as well).
pub const USAGE: u8 = 2;
/// Refused: not allowed for this user, or the policy forbids it.
pub const REFUSED: u8 = 3;
/// No such request or grant.
pub const NOT_FOUND: u8 = 4;
/// The agent could not be reached.
pub const UNREACHABLE: u8 = 5;
/// A policy file is invalid, or the audit log failed verification.
pub const INVALID: u8 = 6;

pub fn for_kind(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::BadRequest => USAGE,
        ErrorKind::Forbidden | ErrorKind::Policy | ErrorKind::Conflict => REFUSED,
        ErrorKind::NotFound => NOT_FOUND,
        ErrorKind::Internal => INTERNAL,
    }
}

/// The table printed by `jitctl --help`.
pub const HELP: &str = "\
Exit codes:
  0  done (a request waiting for approval counts as done)
  1  the agent failed; nothing was changed
  2  wrong command line or malformed request
  3  refused: not allowed for you, or the policy forbids it
  4  no such request or grant
  5  cannot reach the agent (is jit-agent running? see --socket)
  6  invalid policy file, or the audit log failed verification";
