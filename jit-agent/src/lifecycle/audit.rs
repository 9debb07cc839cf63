//! Audit events: one per transition, saying who did what, when and why.
//!
//! These are plain values; the hash-chained log that stores them lives
//! elsewhere. Serialized, an event is one flat JSON object with an `event`
//! tag, e.g. `{"wall":"…","actor":{"user":"bob"},"id":17,…,"event":"approved",…}`.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::state::{Actor, GrantRule, Origin};
use crate::policy::duration_serde;

/// One transition of a request or grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When, wall clock.
    pub wall: DateTime<Utc>,
    /// When, boot clock.
    pub boot_ns: u64,
    /// Who.
    pub actor: Actor,
    /// The request or grant id.
    pub id: u64,
    /// Whose access it is.
    pub user: String,
    /// The role.
    pub role: String,
    /// The target.
    pub target: String,
    /// Why: the reason or ticket given with this transition, or the
    /// system's explanation.
    pub reason: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub action: AuditAction,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditAction {
    /// A request was made and waits for approval.
    Requested {
        /// Source address access is for.
        source: IpAddr,
        /// Requested duration.
        #[serde(with = "duration_serde")]
        duration: Duration,
        /// Approvals needed.
        approvals_needed: u32,
        /// Roles that may approve.
        approver_roles: Vec<String>,
        /// When it times out.
        pending_until: DateTime<Utc>,
    },
    /// An approval was given.
    Approved {
        /// Approvals so far.
        approvals: u32,
        /// Approvals needed.
        needed: u32,
    },
    /// A request was denied.
    Denied,
    /// A request was cancelled.
    Cancelled,
    /// A request was not approved in time.
    TimedOut,
    /// Access became active.
    Activated {
        /// Source address.
        source: IpAddr,
        /// The kernel rules.
        rules: Vec<GrantRule>,
        /// How it came to be.
        origin: Origin,
        /// Expiry, wall clock (projected).
        expires_wall: DateTime<Utc>,
        /// Expiry, boot clock.
        expires_boot_ns: u64,
        /// Activation to expiry.
        #[serde(with = "duration_serde")]
        length: Duration,
        /// Whether the end was cut to a role window's close.
        cut_by_window: bool,
    },
    /// A grant was extended.
    Extended {
        /// Expiry before, wall clock.
        previous_expires_wall: DateTime<Utc>,
        /// Expiry now, wall clock.
        expires_wall: DateTime<Utc>,
        /// Expiry now, boot clock.
        expires_boot_ns: u64,
        /// Activation to the new expiry.
        #[serde(with = "duration_serde")]
        length: Duration,
        /// Whether the new end was cut to a role window's close.
        cut_by_window: bool,
    },
    /// The holder ended a grant early.
    Released,
    /// An admin, or a policy reload, ended a grant.
    Revoked,
    /// A grant ran out.
    Expired,
}

impl AuditAction {
    /// The `event` tag, e.g. for metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            AuditAction::Requested { .. } => "requested",
            AuditAction::Approved { .. } => "approved",
            AuditAction::Denied => "denied",
            AuditAction::Cancelled => "cancelled",
            AuditAction::TimedOut => "timed_out",
            AuditAction::Activated { .. } => "activated",
            AuditAction::Extended { .. } => "extended",
            AuditAction::Released => "released",
            AuditAction::Revoked => "revoked",
            AuditAction::Expired => "expired",
        }
    }
}
