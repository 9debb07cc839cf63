//! Requests and grants: the records the engine keeps and a store persists.
//!
//! ```text
//!   request ──► Pending ──► Approved ──► (grant) Active ──► Expired
//!                  │                              │  ├───► Revoked
//!                  ├──► Denied                    │  └───► Released
//!                  ├──► Cancelled                 └── extend (stays Active)
//!                  └──► TimedOut
//!   admin grant ─────────────────────────► Active
//! ```
//!
//! A request that needs no approval is Approved at once. A grant made from a
//! request has the request's id, so `#17` names both.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::policy::{duration_serde, PortRange, Protocol, Rule, ZoneId};

/// Who made a transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// A policy user, by name.
    User(String),
    /// The agent itself: expiry, time-outs, policy reloads.
    System,
}

impl Actor {
    /// The user's name, if a user acted.
    pub fn user(&self) -> Option<&str> {
        match self {
            Actor::User(u) => Some(u),
            Actor::System => None,
        }
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::User(u) => f.write_str(u),
            Actor::System => f.write_str("jitgate"),
        }
    }
}

/// One kernel rule of a grant: everything the data plane needs to insert
/// it, without the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GrantRule {
    /// The holder's source address.
    pub source: IpAddr,
    /// Zone of `dst`, for per-zone counters.
    pub zone: ZoneId,
    /// Destination prefix.
    pub dst: IpNet,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination ports; `None` for protocols without ports.
    pub ports: Option<PortRange>,
}

impl GrantRule {
    /// A policy rule bound to a source address.
    pub fn new(source: IpAddr, rule: &Rule) -> GrantRule {
        GrantRule {
            source,
            zone: rule.zone,
            dst: rule.dst,
            protocol: rule.protocol,
            ports: rule.ports,
        }
    }
}

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting for approvals.
    Pending,
    /// Approved (or needing no approval); the grant with the same id exists.
    Approved,
    /// Refused by an approver or admin.
    Denied,
    /// Withdrawn by the requester or an admin, or by a policy reload.
    Cancelled,
    /// Not approved within the pending TTL.
    TimedOut,
}

impl std::fmt::Display for RequestState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Cancelled => "cancelled",
            RequestState::TimedOut => "timed out",
        })
    }
}

/// One approval of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// The approving user.
    pub approver: String,
    /// When.
    pub wall: DateTime<Utc>,
    /// Their note, if any.
    pub reason: Option<String>,
}

/// How a record was closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closed {
    /// Who closed it.
    pub by: Actor,
    /// When, wall clock.
    pub wall: DateTime<Utc>,
    /// Why, if given.
    pub reason: Option<String>,
}

/// A request for access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Id, shared with the grant it becomes.
    pub id: u64,
    /// The requesting user.
    pub user: String,
    /// The role it is made under.
    pub role: String,
    /// The target.
    pub target: String,
    /// The source address access is for.
    pub source: IpAddr,
    /// How long access should last once active.
    #[serde(with = "duration_serde")]
    pub duration: Duration,
    /// Reason or ticket.
    pub reason: Option<String>,
    /// When requested, wall clock.
    pub requested_wall: DateTime<Utc>,
    /// When requested, boot clock.
    pub requested_boot_ns: u64,
    /// The boot the boot-clock times belong to.
    pub boot_id: String,
    /// Pending until then, boot clock.
    pub pending_until_boot_ns: u64,
    /// Pending until then, wall clock (for display, and to re-time after a reboot).
    pub pending_until_wall: DateTime<Utc>,
    /// Roles whose holders (marked approver) may approve.
    pub approver_roles: Vec<String>,
    /// Distinct approvals needed; 0 if none.
    pub approvals_needed: u32,
    /// Approvals so far, from distinct users.
    pub approvals: Vec<ApprovalRecord>,
    /// State.
    pub state: RequestState,
    /// How it left `Pending`, once it has.
    pub closed: Option<Closed>,
}

impl Request {
    /// Approvals still missing.
    pub fn approvals_missing(&self) -> u32 {
        self.approvals_needed
            .saturating_sub(self.approvals.len() as u32)
    }
}

/// Where a grant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// In force.
    Active,
    /// Ran out.
    Expired,
    /// Ended by an admin or a policy reload.
    Revoked,
    /// Ended early by the holder.
    Released,
}

impl std::fmt::Display for GrantState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GrantState::Active => "active",
            GrantState::Expired => "expired",
            GrantState::Revoked => "revoked",
            GrantState::Released => "released",
        })
    }
}

/// How a grant came to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "via")]
pub enum Origin {
    /// The role needs no approval.
    NoApprovalNeeded,
    /// Approved by these users.
    Approved {
        /// The approvers, in order.
        approvers: Vec<String>,
    },
    /// Granted directly by an admin.
    Admin {
        /// The admin.
        admin: String,
    },
}

/// Access in force (or that was).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Id; the request's id when made from one.
    pub id: u64,
    /// The holder.
    pub user: String,
    /// The role it was granted under.
    pub role: String,
    /// The target.
    pub target: String,
    /// The holder's source address.
    pub source: IpAddr,
    /// The kernel rules, resolved when granted.
    pub rules: Vec<GrantRule>,
    /// Reason or ticket.
    pub reason: Option<String>,
    /// How it came to be.
    pub origin: Origin,
    /// When it became active, wall clock.
    pub activated_wall: DateTime<Utc>,
    /// When it became active, boot clock (of `boot_id`).
    pub activated_boot_ns: u64,
    /// When it ends, boot clock: this is what enforces it.
    pub expires_boot_ns: u64,
    /// When it ends as projected on the wall clock when last set; for
    /// display, and to re-time after a reboot.
    pub expires_wall: DateTime<Utc>,
    /// Activation to expiry, extensions included; never above the role's
    /// max_duration.
    #[serde(with = "duration_serde")]
    pub length: Duration,
    /// The boot the boot-clock times belong to.
    pub boot_id: String,
    /// Whether the end was cut to a role window's close.
    pub cut_by_window: bool,
    /// State.
    pub state: GrantState,
    /// How it ended, once it has.
    pub ended: Option<Closed>,
}

impl Grant {
    /// Whether the grant is active and its time has not run out at `boot_ns`.
    pub fn in_force_at(&self, boot_ns: u64) -> bool {
        self.state == GrantState::Active && boot_ns < self.expires_boot_ns
    }

    /// Time left at `boot_ns`.
    pub fn remaining_at(&self, boot_ns: u64) -> Duration {
        Duration::from_nanos(self.expires_boot_ns.saturating_sub(boot_ns))
    }
}

/// Everything a store keeps to rebuild an [`Engine`](super::Engine).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    /// The next id to hand out; ids are never reused, even after pruning.
    pub next_id: u64,
    /// Requests, any state.
    pub requests: Vec<Request>,
    /// Grants, any state.
    pub grants: Vec<Grant>,
}
