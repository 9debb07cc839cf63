//! Refusals: why the engine would not do what it was asked, said so that the
//! person asking knows what to do next.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ipnet::IpNet;

use super::state::{GrantState, RequestState};
use crate::policy::format_duration;

/// Why an operation was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The acting or named user is not in the policy.
    #[error("`{user}` is not a user in the policy")]
    UnknownUser {
        /// The name.
        user: String,
    },
    /// An admin-only operation by a non-admin.
    #[error("only admins may {action}, and {user} is not one")]
    NotAdmin {
        /// The user.
        user: String,
        /// What they tried, e.g. "grant access directly".
        action: &'static str,
    },
    /// No such target.
    #[error("there is no target {target}{}", did_you_mean(.suggestion))]
    UnknownTarget {
        /// The name asked for.
        target: String,
        /// A close name, if any.
        suggestion: Option<String>,
    },
    /// No such role.
    #[error("there is no role {role}")]
    UnknownRole {
        /// The name asked for.
        role: String,
    },
    /// A role named in the request that the user does not hold.
    #[error("{user} does not hold role {role}")]
    RoleNotHeld {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// A role named in the request that does not reach the target.
    #[error("role {role} does not reach target {target}")]
    RoleDoesNotReach {
        /// The role.
        role: String,
        /// The target.
        target: String,
    },
    /// None of the user's roles reaches the target.
    #[error("none of {user}'s roles ({}) reaches target {target}", list_or_none(.roles))]
    TargetNotAllowed {
        /// The user.
        user: String,
        /// The target.
        target: String,
        /// The user's roles.
        roles: Vec<String>,
    },
    /// The source address is outside the user's source prefixes.
    #[error("source address {address} is outside {user}'s source_prefixes ({})", nets(.allowed))]
    SourceNotAllowed {
        /// The user.
        user: String,
        /// The address asked for.
        address: IpAddr,
        /// The user's source prefixes.
        allowed: Vec<IpNet>,
    },
    /// Longer than the role allows.
    #[error("requested {} exceeds role {role}'s max_duration {}", format_duration(*.requested), format_duration(*.max))]
    DurationTooLong {
        /// The role.
        role: String,
        /// Asked for.
        requested: Duration,
        /// Allowed.
        max: Duration,
    },
    /// A zero duration.
    #[error("the requested duration is zero; ask for e.g. 30m")]
    DurationZero,
    /// The role needs a reason and none was given.
    #[error("role {role} requires a reason or ticket; give one with the request")]
    ReasonRequired {
        /// The role.
        role: String,
    },
    /// Admin grants skip approval, so they must say why.
    #[error("a direct grant skips approval, so it needs a reason or ticket")]
    AdminReasonRequired,
    /// An overlong reason.
    #[error("the reason is longer than {limit} characters; put a ticket number or a short note")]
    ReasonTooLong {
        /// Limit.
        limit: usize,
    },
    /// Outside the role's windows.
    #[error("role {role} may only be used inside its time windows ({windows}); {}", opening_text(.next_opening_local))]
    OutsideWindow {
        /// The role.
        role: String,
        /// The windows, described.
        windows: String,
        /// When the next window opens.
        next_opening: Option<DateTime<Utc>>,
        /// The same, in the window's zone, for people.
        next_opening_local: Option<String>,
    },
    /// The same access is already granted.
    #[error("{user} already holds grant #{id} for {target} from {address} until {}; extend it instead", fmt_wall(.until))]
    AlreadyGranted {
        /// The grant.
        id: u64,
        /// The user.
        user: String,
        /// The target.
        target: String,
        /// The source address.
        address: IpAddr,
        /// Its expiry.
        until: DateTime<Utc>,
    },
    /// The same access is already requested.
    #[error("{user} already has request #{id} pending for {target} from {address}")]
    AlreadyRequested {
        /// The request.
        id: u64,
        /// The user.
        user: String,
        /// The target.
        target: String,
        /// The source address.
        address: IpAddr,
    },
    /// No such request.
    #[error("there is no request #{id}")]
    NoSuchRequest {
        /// The id.
        id: u64,
    },
    /// No such grant.
    #[error("there is no grant #{id}")]
    NoSuchGrant {
        /// The id.
        id: u64,
    },
    /// The request was already decided.
    #[error("request #{id} is {state}, not pending")]
    RequestNotPending {
        /// The id.
        id: u64,
        /// Its state.
        state: RequestState,
    },
    /// The request's pending time is over (its time-out is being processed).
    #[error("request #{id} timed out at {}; make a new request", fmt_wall(.until))]
    RequestTimedOut {
        /// The id.
        id: u64,
        /// When it timed out.
        until: DateTime<Utc>,
    },
    /// The grant already ended.
    #[error("grant #{id} is {state}, not active")]
    GrantNotActive {
        /// The id.
        id: u64,
        /// Its state.
        state: GrantState,
    },
    /// The grant's time is up (its expiry is being processed).
    #[error("grant #{id} ran out at {}; request access again", fmt_wall(.until))]
    GrantRanOut {
        /// The id.
        id: u64,
        /// When it ran out.
        until: DateTime<Utc>,
    },
    /// Approving one's own request.
    #[error("you cannot approve your own request #{id}; another approver must")]
    SelfApproval {
        /// The request.
        id: u64,
    },
    /// Denying one's own request.
    #[error("you cannot deny your own request #{id}; cancel it instead")]
    SelfDenial {
        /// The request.
        id: u64,
    },
    /// Approving (or denying) without being an approver for the role.
    #[error("{user} may not approve requests for role {role}: that takes `approver = true` and one of the roles {}", .approver_roles.join(", "))]
    NotApprover {
        /// The user.
        user: String,
        /// The role of the request.
        role: String,
        /// Roles that may approve it.
        approver_roles: Vec<String>,
    },
    /// A second approval from the same user.
    #[error(
        "{user} has already approved request #{id}; it needs {missing} more from other approvers"
    )]
    AlreadyApproved {
        /// The request.
        id: u64,
        /// The user.
        user: String,
        /// Approvals still missing.
        missing: u32,
    },
    /// The last approval arrived outside the role's windows.
    #[error("request #{id} has its approvals, but role {role} is outside its time windows now; {} (the request stays pending)", opening_text(.next_opening_local))]
    ApprovalOutsideWindow {
        /// The request.
        id: u64,
        /// The role.
        role: String,
        /// When the next window opens, for people.
        next_opening_local: Option<String>,
    },
    /// The policy changed since the request was made and no longer allows it.
    #[error("request #{id} is no longer allowed by the policy: {why}")]
    NoLongerAllowed {
        /// The request.
        id: u64,
        /// What changed.
        why: String,
    },
    /// Releasing or extending someone else's grant.
    #[error("grant #{id} belongs to {holder}, not {user}")]
    NotHolder {
        /// The grant.
        id: u64,
        /// Its holder.
        holder: String,
        /// The user who tried.
        user: String,
    },
    /// Cancelling someone else's request.
    #[error("request #{id} was made by {requester}; only they or an admin may cancel it")]
    NotRequester {
        /// The request.
        id: u64,
        /// Who made it.
        requester: String,
    },
    /// Extending past the role's maximum.
    #[error("extending grant #{id} by {} would make it last {}, beyond role {role}'s max_duration {} counted from activation; {}", format_duration(*.by), format_duration(*.total), format_duration(*.max), remaining_text(*.remaining))]
    ExtendBeyondMax {
        /// The grant.
        id: u64,
        /// Its role.
        role: String,
        /// Asked for.
        by: Duration,
        /// Length it would have.
        total: Duration,
        /// The role's maximum.
        max: Duration,
        /// How much more is possible.
        remaining: Duration,
    },
    /// Extending past the role's window.
    #[error("grant #{id} already ends when role {role}'s time window closes, at {closes}")]
    ExtendBlockedByWindow {
        /// The grant.
        id: u64,
        /// Its role.
        role: String,
        /// When the window closes, for people.
        closes: String,
    },
    /// Several roles reach the target and each refuses.
    #[error("no role of {user}'s allows this: {}", role_reasons(.reasons))]
    NoRoleFits {
        /// The user.
        user: String,
        /// Why each role refused.
        reasons: Vec<RoleRefusal>,
    },
}

/// One role's reason for refusing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRefusal {
    /// The role.
    pub role: String,
    /// Its reason.
    pub refusal: Refusal,
}

/// Broad kinds of refusal, for exit codes and API status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// A named thing does not exist.
    NotFound,
    /// The actor may not do this.
    Forbidden,
    /// The request itself is wrong (duration, source, reason).
    Invalid,
    /// The record is in the wrong state, or the same thing exists already.
    Conflict,
    /// Not now: outside a time window.
    NotNow,
}

impl Refusal {
    /// The broad kind.
    pub fn kind(&self) -> RefusalKind {
        use Refusal::*;
        match self {
            UnknownUser { .. }
            | UnknownTarget { .. }
            | UnknownRole { .. }
            | NoSuchRequest { .. }
            | NoSuchGrant { .. } => RefusalKind::NotFound,
            NotAdmin { .. }
            | RoleNotHeld { .. }
            | RoleDoesNotReach { .. }
            | TargetNotAllowed { .. }
            | SourceNotAllowed { .. }
            | SelfApproval { .. }
            | SelfDenial { .. }
            | NotApprover { .. }
            | NotHolder { .. }
            | NotRequester { .. }
            | NoLongerAllowed { .. } => RefusalKind::Forbidden,
            DurationTooLong { .. }
            | DurationZero
            | ReasonRequired { .. }
            | AdminReasonRequired
            | ReasonTooLong { .. }
            | ExtendBeyondMax { .. } => RefusalKind::Invalid,
            AlreadyGranted { .. }
            | AlreadyRequested { .. }
            | RequestNotPending { .. }
            | RequestTimedOut { .. }
            | GrantNotActive { .. }
            | GrantRanOut { .. }
            | AlreadyApproved { .. } => RefusalKind::Conflict,
            OutsideWindow { .. } | ApprovalOutsideWindow { .. } | ExtendBlockedByWindow { .. } => {
                RefusalKind::NotNow
            }
            NoRoleFits { reasons, .. } => reasons
                .first()
                .map_or(RefusalKind::Forbidden, |r| r.refusal.kind()),
        }
    }
}

fn did_you_mean(s: &Option<String>) -> String {
    s.as_ref()
        .map_or_else(String::new, |s| format!("; did you mean {s}?"))
}

fn list_or_none(roles: &[String]) -> String {
    if roles.is_empty() {
        "none".to_owned()
    } else {
        roles.join(", ")
    }
}

fn nets(nets: &[IpNet]) -> String {
    if nets.is_empty() {
        return "none".to_owned();
    }
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn opening_text(local: &Option<String>) -> String {
    match local {
        Some(t) => format!("the next one opens at {t}"),
        None => "no window opens in the coming week".to_owned(),
    }
}

fn remaining_text(d: Duration) -> String {
    if d.is_zero() {
        "it cannot be extended further".to_owned()
    } else {
        format!("at most {} more is possible", format_duration(d))
    }
}

fn role_reasons(reasons: &[RoleRefusal]) -> String {
    reasons
        .iter()
        .map(|r| format!("role {}: {}", r.role, r.refusal))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Formats a wall-clock instant for messages.
pub(crate) fn fmt_wall(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}
