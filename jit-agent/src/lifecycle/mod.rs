//! The grant lifecycle: requests, approvals, grants and how they end.
//!
//! Pure logic: no I/O and no kernel. The [`Engine`] holds requests and grants
//! keyed by id, applies the policy's rules to every transition, and returns
//! the records and [`AuditEvent`]s for the store, the audit log and the data
//! plane to act on.
//!
//! Rules, in one place:
//! - A request is made under one of the user's roles that reaches the
//!   target, from a source address inside the user's `source_prefixes`, for
//!   at most the role's `max_duration`, inside the role's windows.
//! - A role without approval activates at once. Otherwise the request is
//!   pending until it has `approvals_needed` approvals from distinct users,
//!   each marked `approver = true` and holding one of the role's
//!   `approver_roles`, never the requester. It times out after the gate's
//!   `pending_ttl`.
//! - Access starts at activation, not at the request, and is cut at the
//!   close of the role's window.
//! - The holder may release it early or extend it; the total from
//!   activation never exceeds `max_duration`.
//! - An admin may grant directly (with a reason, without approval, otherwise
//!   within the policy), and revoke anything.
//! - Grants are timed on the boot clock, windows on the wall clock; see
//!   [`clock`].

pub mod audit;
pub mod clock;
mod engine;
mod error;
pub mod state;
mod table;

#[cfg(test)]
mod tests;

pub use audit::{AuditAction, AuditEvent};
pub use clock::{Clock, ManualClock, Now, SystemClock};
pub use engine::{
    AccessRequest, Approved, Engine, ListFilter, Listing, Outcome, Reapplied, Requested,
    RestoreError, Shown, MAX_REASON_CHARS,
};
pub use error::{Refusal, RefusalKind, RoleRefusal};
pub use state::{
    Actor, ApprovalRecord, Closed, Grant, GrantRule, GrantState, Origin, Records, Request,
    RequestState,
};
