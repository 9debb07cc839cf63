//! The engine: requests and grants in memory, and every transition between
//! them. Pure logic: it reads a [`Clock`] and a [`Policy`], and returns
//! records and audit events for others to persist and enforce.
//!
//! Every operation either refuses with a [`Refusal`] and changes nothing, or
//! changes the records and returns the audit events of the change. A store
//! that must make changes durable before acknowledging them can clone the
//! engine, apply the operation to the clone, persist the records named by
//! the events' ids, and only then swap the clone in.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::audit::{AuditAction, AuditEvent};
use super::clock::{duration_ns, Clock, Now};
use super::error::{fmt_wall, Refusal, RoleRefusal};
use super::state::{
    Actor, ApprovalRecord, Closed, Grant, GrantRule, GrantState, Origin, Records, Request,
    RequestState,
};
use super::table::Table;
use crate::policy::{format_duration, format_local, Policy, Role, Target, User};

/// Longest reason or ticket text accepted.
pub const MAX_REASON_CHARS: usize = 1024;

/// What someone asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRequest {
    /// The policy user access is for.
    pub user: String,
    /// The target.
    pub target: String,
    /// The address the user will connect from.
    pub source: IpAddr,
    /// How long; the role's default_duration if not given.
    pub duration: Option<Duration>,
    /// The role to use; chosen among the user's roles if not given.
    pub role: Option<String>,
    /// Reason or ticket.
    pub reason: Option<String>,
}

/// The result of an operation and the audit events it produced, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome<T> {
    /// What the operation produced.
    pub value: T,
    /// One event per transition.
    pub events: Vec<AuditEvent>,
}

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// It waits for approvals.
    Pending(Request),
    /// No approval was needed: access is active.
    Active(Grant),
}

impl fmt::Display for Requested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requested::Pending(r) => {
                let roles = r.approver_roles.join(" or ");
                if r.approvals_needed == 1 {
                    write!(f, "target {} needs approval by role {roles}", r.target)?;
                } else {
                    write!(
                        f,
                        "target {} needs {} approvals by role {roles}",
                        r.target, r.approvals_needed
                    )?;
                }
                write!(
                    f,
                    "; your request is pending as #{} until {}",
                    r.id,
                    fmt_wall(&r.pending_until_wall)
                )
            }
            Requested::Active(g) => describe_grant(f, g),
        }
    }
}

fn describe_grant(f: &mut fmt::Formatter<'_>, g: &Grant) -> fmt::Result {
    write!(
        f,
        "grant #{} is active: {} from {} until {} ({})",
        g.id,
        g.target,
        g.source,
        fmt_wall(&g.expires_wall),
        format_duration(g.length)
    )?;
    if g.cut_by_window {
        write!(f, ", cut at the close of role {}'s time window", g.role)?;
    }
    Ok(())
}

/// What an approval did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approved {
    /// Recorded; more approvals are needed.
    Recorded(Request),
    /// It was the last one needed: access is active.
    Activated(Grant),
}

impl fmt::Display for Approved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Approved::Recorded(r) => write!(
                f,
                "approval recorded; request #{} needs {} more",
                r.id,
                r.approvals_missing()
            ),
            Approved::Activated(g) => describe_grant(f, g),
        }
    }
}

/// What a policy reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reapplied {
    /// Grants the new policy does not allow; revoked.
    pub revoked: Vec<Grant>,
    /// Pending requests the new policy does not allow; cancelled.
    pub cancelled: Vec<Request>,
    /// Pending requests the new policy lets through with the approvals they
    /// have; now active.
    pub activated: Vec<Grant>,
}

/// Which records [`Engine::list`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this user's.
    pub user: Option<String>,
    /// Also requests and grants that have ended.
    pub include_closed: bool,
}

/// Records, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing<'a> {
    /// Requests.
    pub requests: Vec<&'a Request>,
    /// Grants.
    pub grants: Vec<&'a Grant>,
}

/// The request and grant behind an id; one or both exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shown<'a> {
    /// The request with this id.
    pub request: Option<&'a Request>,
    /// The grant with this id.
    pub grant: Option<&'a Grant>,
}

/// Why stored records could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// Two requests with one id.
    #[error("two stored requests have id #{id}")]
    DuplicateRequest {
        /// The id.
        id: u64,
    },
    /// Two grants with one id.
    #[error("two stored grants have id #{id}")]
    DuplicateGrant {
        /// The id.
        id: u64,
    },
}

/// Requests and grants, and the rules for moving between states.
#[derive(Clone)]
pub struct Engine {
    policy: Arc<Policy>,
    clock: Arc<dyn Clock>,
    requests: Table<Request>,
    grants: Table<Grant>,
    next_id: u64,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("requests", &self.requests.len())
            .field("grants", &self.grants.len())
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

/// The role a request is made under and what it takes.
struct Plan<'p> {
    role: &'p Role,
    duration: Duration,
    needs_approval: bool,
}

fn normalize_reason(reason: Option<String>) -> Result<Option<String>, Refusal> {
    let Some(r) = reason else { return Ok(None) };
    let r = r.trim();
    if r.is_empty() {
        return Ok(None);
    }
    if r.chars().count() > MAX_REASON_CHARS {
        return Err(Refusal::ReasonTooLong {
            limit: MAX_REASON_CHARS,
        });
    }
    Ok(Some(r.to_owned()))
}

fn outside_window(role: &Role, now: Now) -> Refusal {
    let next = role.windows.next_opening(now.wall);
    Refusal::OutsideWindow {
        role: role.name.clone(),
        windows: role
            .windows
            .windows()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
        next_opening: next.map(|(t, _)| t),
        next_opening_local: next.map(|(t, tz)| format_local(t, tz)),
    }
}

fn find_user<'p>(policy: &'p Policy, name: &str) -> Result<&'p User, Refusal> {
    policy.user(name).ok_or_else(|| Refusal::UnknownUser {
        user: name.to_owned(),
    })
}

fn find_role<'p>(policy: &'p Policy, name: &str) -> Result<&'p Role, Refusal> {
    policy.role(name).ok_or_else(|| Refusal::UnknownRole {
        role: name.to_owned(),
    })
}

fn wall_diff(later: DateTime<Utc>, earlier: DateTime<Utc>) -> Duration {
    (later - earlier).to_std().unwrap_or(Duration::ZERO)
}

impl Engine {
    /// An empty engine.
    pub fn new(policy: Arc<Policy>, clock: Arc<dyn Clock>) -> Engine {
        Engine {
            policy,
            clock,
            requests: Table::default(),
            grants: Table::default(),
            next_id: 1,
        }
    }

    /// Rebuilds an engine from stored records.
    ///
    /// Boot-clock times from an earlier boot mean nothing now; such pending
    /// requests and active grants are re-timed from their wall-clock
    /// deadlines, the only clock that spans a reboot. After restoring, run
    /// [`Engine::expire_due`], [`Engine::timeout_pending`] and, if the
    /// policy may have changed, [`Engine::reapply_policy`].
    pub fn restore(
        policy: Arc<Policy>,
        clock: Arc<dyn Clock>,
        records: Records,
    ) -> Result<Engine, RestoreError> {
        let now = Now::of(clock.as_ref());
        let boot_id = clock.boot_id();
        let mut engine = Engine::new(policy, clock);
        let mut max_id = 0;
        for mut r in records.requests {
            max_id = max_id.max(r.id);
            if r.state == RequestState::Pending && r.boot_id != boot_id {
                r.pending_until_boot_ns = now.boot_after(wall_diff(r.pending_until_wall, now.wall));
                r.boot_id.clone_from(&boot_id);
            }
            if engine.requests.insert(r.clone()).is_some() {
                return Err(RestoreError::DuplicateRequest { id: r.id });
            }
        }
        for mut g in records.grants {
            max_id = max_id.max(g.id);
            if g.state == GrantState::Active && g.boot_id != boot_id {
                g.expires_boot_ns = now.boot_after(wall_diff(g.expires_wall, now.wall));
                g.activated_boot_ns = g.expires_boot_ns.saturating_sub(duration_ns(g.length));
                g.boot_id.clone_from(&boot_id);
            }
            if engine.grants.insert(g.clone()).is_some() {
                return Err(RestoreError::DuplicateGrant { id: g.id });
            }
        }
        engine.next_id = records.next_id.max(max_id.saturating_add(1)).max(1);
        Ok(engine)
    }

    /// Everything a store needs to rebuild this engine.
    pub fn records(&self) -> Records {
        Records {
            next_id: self.next_id,
            requests: self.requests.values().cloned().collect(),
            grants: self.grants.values().cloned().collect(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The next id to be handed out.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// A reading of the engine's clock.
    pub fn now(&self) -> Now {
        Now::of(self.clock.as_ref())
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn event(
        now: Now,
        actor: Actor,
        id: u64,
        (user, role, target): (&str, &str, &str),
        reason: Option<String>,
        action: AuditAction,
    ) -> AuditEvent {
        AuditEvent {
            wall: now.wall,
            boot_ns: now.boot_ns,
            actor,
            id,
            user: user.to_owned(),
            role: role.to_owned(),
            target: target.to_owned(),
            reason,
            action,
        }
    }

    fn request_event(
        r: &Request,
        now: Now,
        actor: Actor,
        reason: Option<String>,
        action: AuditAction,
    ) -> AuditEvent {
        Self::event(
            now,
            actor,
            r.id,
            (&r.user, &r.role, &r.target),
            reason,
            action,
        )
    }

    fn grant_event(
        g: &Grant,
        now: Now,
        actor: Actor,
        reason: Option<String>,
        action: AuditAction,
    ) -> AuditEvent {
        Self::event(
            now,
            actor,
            g.id,
            (&g.user, &g.role, &g.target),
            reason,
            action,
        )
    }

    fn activated_event(g: &Grant, now: Now, actor: Actor) -> AuditEvent {
        Self::grant_event(
            g,
            now,
            actor,
            g.reason.clone(),
            AuditAction::Activated {
                source: g.source,
                rules: g.rules.clone(),
                origin: g.origin.clone(),
                expires_wall: g.expires_wall,
                expires_boot_ns: g.expires_boot_ns,
                length: g.length,
                cut_by_window: g.cut_by_window,
            },
        )
    }

    /// The checks every way to access shares: who, what, from where, under
    /// which role. Returns the candidate roles in the user's order.
    fn candidates<'p>(
        policy: &'p Policy,
        req: &AccessRequest,
    ) -> Result<(&'p User, &'p Target, Vec<&'p Role>), Refusal> {
        let user = find_user(policy, &req.user)?;
        let target = policy.target(&req.target).ok_or_else(|| {
            // Suggest only among targets the user can reach.
            let reachable = user
                .roles
                .iter()
                .filter_map(|r| policy.role(r))
                .flat_map(|r| r.targets.iter().map(String::as_str));
            Refusal::UnknownTarget {
                target: req.target.clone(),
                suggestion: crate::policy::suggest_name(&req.target, reachable),
            }
        })?;
        if !user.may_connect_from(req.source) {
            return Err(Refusal::SourceNotAllowed {
                user: user.name.clone(),
                address: req.source,
                allowed: user.source_prefixes.clone(),
            });
        }
        let roles = match &req.role {
            Some(r) => {
                let role = find_role(policy, r)?;
                if !user.holds(r) {
                    return Err(Refusal::RoleNotHeld {
                        user: user.name.clone(),
                        role: r.clone(),
                    });
                }
                if !role.reaches(&target.name) {
                    return Err(Refusal::RoleDoesNotReach {
                        role: r.clone(),
                        target: target.name.clone(),
                    });
                }
                vec![role]
            }
            None => {
                let roles: Vec<&Role> = policy.roles_reaching(user, &target.name).collect();
                if roles.is_empty() {
                    return Err(Refusal::TargetNotAllowed {
                        user: user.name.clone(),
                        target: target.name.clone(),
                        roles: user.roles.clone(),
                    });
                }
                roles
            }
        };
        Ok((user, target, roles))
    }

    /// Refuses access that is already granted or requested.
    fn check_duplicates(&self, user: &str, target: &str, source: IpAddr) -> Result<(), Refusal> {
        if let Some(g) = self.grants.live_for(user, target, source) {
            return Err(Refusal::AlreadyGranted {
                id: g.id,
                user: g.user.clone(),
                target: g.target.clone(),
                address: g.source,
                until: g.expires_wall,
            });
        }
        if let Some(r) = self.requests.live_for(user, target, source) {
            return Err(Refusal::AlreadyRequested {
                id: r.id,
                user: r.user.clone(),
                target: r.target.clone(),
                address: r.source,
            });
        }
        Ok(())
    }

    fn plan<'p>(
        role: &'p Role,
        req: &AccessRequest,
        reason: &Option<String>,
        now: Now,
        admin: bool,
    ) -> Result<Plan<'p>, Refusal> {
        let duration = req.duration.unwrap_or(role.default_duration);
        if duration.is_zero() {
            return Err(Refusal::DurationZero);
        }
        if duration > role.max_duration {
            return Err(Refusal::DurationTooLong {
                role: role.name.clone(),
                requested: duration,
                max: role.max_duration,
            });
        }
        if role.reason_required && reason.is_none() {
            return Err(Refusal::ReasonRequired {
                role: role.name.clone(),
            });
        }
        if role
            .windows
            .open_until(now.wall, now.wall_after(duration))
            .is_none()
        {
            return Err(outside_window(role, now));
        }
        Ok(Plan {
            role,
            duration,
            needs_approval: !admin && role.approval.is_some(),
        })
    }

    /// Picks the role: one that activates at once if any, else one that
    /// needs approval, in the user's order of roles.
    fn choose<'p>(
        user: &User,
        roles: Vec<&'p Role>,
        req: &AccessRequest,
        reason: &Option<String>,
        now: Now,
        admin: bool,
    ) -> Result<Plan<'p>, Refusal> {
        let mut plans = Vec::new();
        let mut refusals = Vec::new();
        for role in roles {
            match Self::plan(role, req, reason, now, admin) {
                Ok(p) => plans.push(p),
                Err(r) => refusals.push(RoleRefusal {
                    role: role.name.clone(),
                    refusal: r,
                }),
            }
        }
        if let Some(i) = plans.iter().position(|p| !p.needs_approval) {
            return Ok(plans.swap_remove(i));
        }
        if !plans.is_empty() {
            return Ok(plans.swap_remove(0));
        }
        if refusals.len() == 1 {
            return Err(refusals.remove(0).refusal);
        }
        Err(Refusal::NoRoleFits {
            user: user.name.clone(),
            reasons: refusals,
        })
    }

    /// Builds an active grant starting now, cut at the role window's close.
    #[expect(clippy::too_many_arguments, reason = "a grant has this many parts")]
    fn make_grant(
        &self,
        id: u64,
        user: &str,
        role: &Role,
        target: &Target,
        source: IpAddr,
        duration: Duration,
        reason: Option<String>,
        origin: Origin,
        now: Now,
    ) -> Result<Grant, Refusal> {
        let wanted_end = now.wall_after(duration);
        let open_until = role
            .windows
            .open_until(now.wall, wanted_end)
            .ok_or_else(|| outside_window(role, now))?;
        let length = duration.min(wall_diff(open_until, now.wall));
        Ok(Grant {
            id,
            user: user.to_owned(),
            role: role.name.clone(),
            target: target.name.clone(),
            source,
            rules: target
                .rules
                .iter()
                .map(|r| GrantRule::new(source, r))
                .collect(),
            reason,
            origin,
            activated_wall: now.wall,
            activated_boot_ns: now.boot_ns,
            expires_boot_ns: now.boot_after(length),
            expires_wall: now.wall_after(length),
            length,
            boot_id: self.clock.boot_id(),
            cut_by_window: length < duration,
            state: GrantState::Active,
            ended: None,
        })
    }

    /// A user asks for access. It is active at once if the role needs no
    /// approval, and pending otherwise.
    pub fn request(&mut self, req: AccessRequest) -> Result<Outcome<Requested>, Refusal> {
        let now = self.now();
        let policy = Arc::clone(&self.policy);
        let reason = normalize_reason(req.reason.clone())?;
        let (user, target, roles) = Self::candidates(&policy, &req)?;
        self.check_duplicates(&user.name, &target.name, req.source)?;
        let plan = Self::choose(user, roles, &req, &reason, now, false)?;
        let approval = plan.role.approval.clone();
        let ttl = policy.gate().pending_ttl;
        let id = self.next_id;
        let mut request = Request {
            id,
            user: user.name.clone(),
            role: plan.role.name.clone(),
            target: target.name.clone(),
            source: req.source,
            duration: plan.duration,
            reason: reason.clone(),
            requested_wall: now.wall,
            requested_boot_ns: now.boot_ns,
            boot_id: self.clock.boot_id(),
            pending_until_boot_ns: now.boot_after(ttl),
            pending_until_wall: now.wall_after(ttl),
            approver_roles: approval
                .as_ref()
                .map(|a| a.approver_roles.clone())
                .unwrap_or_default(),
            approvals_needed: approval.as_ref().map_or(0, |a| a.approvals_needed),
            approvals: Vec::new(),
            state: RequestState::Pending,
            closed: None,
        };
        let actor = Actor::User(user.name.clone());
        let requested = Self::request_event(
            &request,
            now,
            actor.clone(),
            reason.clone(),
            AuditAction::Requested {
                source: request.source,
                duration: request.duration,
                approvals_needed: request.approvals_needed,
                approver_roles: request.approver_roles.clone(),
                pending_until: request.pending_until_wall,
            },
        );
        if plan.needs_approval {
            self.alloc_id();
            self.requests.insert(request.clone());
            return Ok(Outcome {
                value: Requested::Pending(request),
                events: vec![requested],
            });
        }
        let grant = self.make_grant(
            id,
            &user.name,
            plan.role,
            target,
            req.source,
            plan.duration,
            reason,
            Origin::NoApprovalNeeded,
            now,
        )?;
        self.alloc_id();
        request.state = RequestState::Approved;
        request.closed = Some(Closed {
            by: Actor::System,
            wall: now.wall,
            reason: Some("no approval needed".to_owned()),
        });
        let activated = Self::activated_event(&grant, now, actor);
        self.requests.insert(request);
        self.grants.insert(grant.clone());
        Ok(Outcome {
            value: Requested::Active(grant),
            events: vec![requested, activated],
        })
    }

    fn pending(&self, id: u64, now: Now) -> Result<&Request, Refusal> {
        let r = self.requests.get(id).ok_or(Refusal::NoSuchRequest { id })?;
        if r.state != RequestState::Pending {
            return Err(Refusal::RequestNotPending { id, state: r.state });
        }
        if now.boot_ns >= r.pending_until_boot_ns {
            return Err(Refusal::RequestTimedOut {
                id,
                until: r.pending_until_wall,
            });
        }
        Ok(r)
    }

    /// Whether a stored request is still allowed by the policy in force.
    fn recheck<'p>(
        policy: &'p Policy,
        r: &Request,
    ) -> Result<(&'p User, &'p Role, &'p Target), String> {
        let user = policy
            .user(&r.user)
            .ok_or_else(|| format!("user {} is no longer in the policy", r.user))?;
        let role = policy
            .role(&r.role)
            .ok_or_else(|| format!("role {} no longer exists", r.role))?;
        if !user.holds(&r.role) {
            return Err(format!("{} no longer holds role {}", r.user, r.role));
        }
        let target = policy
            .target(&r.target)
            .ok_or_else(|| format!("target {} no longer exists", r.target))?;
        if !role.reaches(&r.target) {
            return Err(format!(
                "role {} no longer reaches target {}",
                r.role, r.target
            ));
        }
        if !user.may_connect_from(r.source) {
            return Err(format!(
                "{} is no longer in {}'s source_prefixes",
                r.source, r.user
            ));
        }
        if r.duration > role.max_duration {
            return Err(format!(
                "the requested {} exceeds role {}'s max_duration {}",
                format_duration(r.duration),
                r.role,
                format_duration(role.max_duration)
            ));
        }
        if role.reason_required && r.reason.is_none() {
            return Err(format!("role {} now requires a reason", r.role));
        }
        Ok((user, role, target))
    }

    /// An approver approves a pending request. The last approval needed
    /// activates it; the access window starts then.
    pub fn approve(
        &mut self,
        id: u64,
        approver: &str,
        note: Option<String>,
    ) -> Result<Outcome<Approved>, Refusal> {
        let now = self.now();
        let policy = Arc::clone(&self.policy);
        let note = normalize_reason(note)?;
        let r = self.pending(id, now)?;
        let approver_user = find_user(&policy, approver)?;
        if approver_user.name == r.user {
            return Err(Refusal::SelfApproval { id });
        }
        let role = find_role(&policy, &r.role)?;
        if !policy.can_approve(approver_user, role) {
            return Err(Refusal::NotApprover {
                user: approver_user.name.clone(),
                role: role.name.clone(),
                approver_roles: role
                    .approval
                    .as_ref()
                    .map_or_else(|| r.approver_roles.clone(), |a| a.approver_roles.clone()),
            });
        }
        if r.approvals.iter().any(|a| a.approver == approver_user.name) {
            return Err(Refusal::AlreadyApproved {
                id,
                user: approver_user.name.clone(),
                missing: r.approvals_missing(),
            });
        }
        let needed = role.approval.as_ref().map_or(0, |a| a.approvals_needed);
        let mut updated = r.clone();
        updated.approvals_needed = needed;
        updated.approvals.push(ApprovalRecord {
            approver: approver_user.name.clone(),
            wall: now.wall,
            reason: note.clone(),
        });
        let actor = Actor::User(approver_user.name.clone());
        let approved_event = Self::request_event(
            &updated,
            now,
            actor.clone(),
            note,
            AuditAction::Approved {
                approvals: updated.approvals.len() as u32,
                needed,
            },
        );
        if updated.approvals_missing() > 0 {
            self.requests.insert(updated.clone());
            return Ok(Outcome {
                value: Approved::Recorded(updated),
                events: vec![approved_event],
            });
        }
        let (user, role, target) =
            Self::recheck(&policy, &updated).map_err(|why| Refusal::NoLongerAllowed { id, why })?;
        let approvers = updated
            .approvals
            .iter()
            .map(|a| a.approver.clone())
            .collect();
        let grant = self
            .make_grant(
                id,
                &user.name,
                role,
                target,
                updated.source,
                updated.duration,
                updated.reason.clone(),
                Origin::Approved { approvers },
                now,
            )
            .map_err(|_| Refusal::ApprovalOutsideWindow {
                id,
                role: role.name.clone(),
                next_opening_local: role
                    .windows
                    .next_opening(now.wall)
                    .map(|(t, tz)| format_local(t, tz)),
            })?;
        updated.state = RequestState::Approved;
        updated.closed = Some(Closed {
            by: actor.clone(),
            wall: now.wall,
            reason: None,
        });
        let activated = Self::activated_event(&grant, now, actor);
        self.requests.insert(updated);
        self.grants.insert(grant.clone());
        Ok(Outcome {
            value: Approved::Activated(grant),
            events: vec![approved_event, activated],
        })
    }

    fn close_request(
        &mut self,
        id: u64,
        state: RequestState,
        by: Actor,
        reason: Option<String>,
        now: Now,
    ) -> (Request, AuditEvent) {
        let action = match state {
            RequestState::Denied => AuditAction::Denied,
            RequestState::TimedOut => AuditAction::TimedOut,
            _ => AuditAction::Cancelled,
        };
        let r = self
            .requests
            .modify(id, |r| {
                r.state = state;
                r.closed = Some(Closed {
                    by: by.clone(),
                    wall: now.wall,
                    reason: reason.clone(),
                });
            })
            .expect("caller checked the request exists")
            .clone();
        let event = Self::request_event(&r, now, by, reason, action);
        (r, event)
    }

    /// An approver (or admin) refuses a pending request.
    pub fn deny(
        &mut self,
        id: u64,
        by: &str,
        reason: Option<String>,
    ) -> Result<Outcome<Request>, Refusal> {
        let now = self.now();
        let reason = normalize_reason(reason)?;
        let policy = Arc::clone(&self.policy);
        let r = self.pending(id, now)?;
        let user = find_user(&policy, by)?;
        if user.name == r.user {
            return Err(Refusal::SelfDenial { id });
        }
        let role = find_role(&policy, &r.role)?;
        if !user.admin && !policy.can_approve(user, role) {
            return Err(Refusal::NotApprover {
                user: user.name.clone(),
                role: role.name.clone(),
                approver_roles: r.approver_roles.clone(),
            });
        }
        let by = Actor::User(user.name.clone());
        let (r, event) = self.close_request(id, RequestState::Denied, by, reason, now);
        Ok(Outcome {
            value: r,
            events: vec![event],
        })
    }

    /// The requester (or an admin) withdraws a pending request.
    pub fn cancel(
        &mut self,
        id: u64,
        by: &str,
        reason: Option<String>,
    ) -> Result<Outcome<Request>, Refusal> {
        let now = self.now();
        let reason = normalize_reason(reason)?;
        let policy = Arc::clone(&self.policy);
        let r = self.requests.get(id).ok_or(Refusal::NoSuchRequest { id })?;
        if r.state != RequestState::Pending {
            return Err(Refusal::RequestNotPending { id, state: r.state });
        }
        let user = find_user(&policy, by)?;
        if user.name != r.user && !user.admin {
            return Err(Refusal::NotRequester {
                id,
                requester: r.user.clone(),
            });
        }
        let by = Actor::User(user.name.clone());
        let (r, event) = self.close_request(id, RequestState::Cancelled, by, reason, now);
        Ok(Outcome {
            value: r,
            events: vec![event],
        })
    }

    /// An admin grants access directly, without approval. Everything else
    /// the policy says still holds: the user's roles and source prefixes,
    /// the role's max_duration and windows. The reason is mandatory.
    pub fn grant(&mut self, admin: &str, req: AccessRequest) -> Result<Outcome<Grant>, Refusal> {
        let now = self.now();
        let policy = Arc::clone(&self.policy);
        let admin_user = find_user(&policy, admin)?;
        if !admin_user.admin {
            return Err(Refusal::NotAdmin {
                user: admin_user.name.clone(),
                action: "grant access directly",
            });
        }
        let admin_name = admin_user.name.clone();
        let reason = normalize_reason(req.reason.clone())?.ok_or(Refusal::AdminReasonRequired)?;
        let (user, target, roles) = Self::candidates(&policy, &req)?;
        self.check_duplicates(&user.name, &target.name, req.source)?;
        let plan = Self::choose(user, roles, &req, &Some(reason.clone()), now, true)?;
        let grant = self.make_grant(
            self.next_id,
            &user.name,
            plan.role,
            target,
            req.source,
            plan.duration,
            Some(reason),
            Origin::Admin {
                admin: admin_name.clone(),
            },
            now,
        )?;
        self.alloc_id();
        let event = Self::activated_event(&grant, now, Actor::User(admin_name));
        self.grants.insert(grant.clone());
        Ok(Outcome {
            value: grant,
            events: vec![event],
        })
    }

    fn active(&self, id: u64, now: Now) -> Result<&Grant, Refusal> {
        let g = self.grants.get(id).ok_or(Refusal::NoSuchGrant { id })?;
        if g.state != GrantState::Active {
            return Err(Refusal::GrantNotActive { id, state: g.state });
        }
        if !g.in_force_at(now.boot_ns) {
            return Err(Refusal::GrantRanOut {
                id,
                until: g.expires_wall,
            });
        }
        Ok(g)
    }

    fn end_grant(
        &mut self,
        id: u64,
        state: GrantState,
        by: Actor,
        reason: Option<String>,
        now: Now,
    ) -> (Grant, AuditEvent) {
        let action = match state {
            GrantState::Released => AuditAction::Released,
            GrantState::Expired => AuditAction::Expired,
            _ => AuditAction::Revoked,
        };
        let g = self
            .grants
            .modify(id, |g| {
                g.state = state;
                g.ended = Some(Closed {
                    by: by.clone(),
                    wall: now.wall,
                    reason: reason.clone(),
                });
            })
            .expect("caller checked the grant exists")
            .clone();
        let event = Self::grant_event(&g, now, by, reason, action);
        (g, event)
    }

    /// An admin ends a grant.
    pub fn revoke(
        &mut self,
        id: u64,
        admin: &str,
        reason: Option<String>,
    ) -> Result<Outcome<Grant>, Refusal> {
        let now = self.now();
        let reason = normalize_reason(reason)?;
        let policy = Arc::clone(&self.policy);
        let user = find_user(&policy, admin)?;
        if !user.admin {
            return Err(Refusal::NotAdmin {
                user: user.name.clone(),
                action: "revoke grants",
            });
        }
        let by = Actor::User(user.name.clone());
        self.active(id, now)?;
        let (g, event) = self.end_grant(id, GrantState::Revoked, by, reason, now);
        Ok(Outcome {
            value: g,
            events: vec![event],
        })
    }

    /// The holder ends their grant early.
    pub fn release(&mut self, id: u64, holder: &str) -> Result<Outcome<Grant>, Refusal> {
        let now = self.now();
        let policy = Arc::clone(&self.policy);
        let user = find_user(&policy, holder)?;
        let g = self.active(id, now)?;
        if g.user != user.name {
            return Err(Refusal::NotHolder {
                id,
                holder: g.user.clone(),
                user: user.name.clone(),
            });
        }
        let by = Actor::User(user.name.clone());
        let (g, event) = self.end_grant(id, GrantState::Released, by, None, now);
        Ok(Outcome {
            value: g,
            events: vec![event],
        })
    }

    /// The holder (or an admin) makes a grant last `by` longer. The total,
    /// from activation, never exceeds the role's max_duration; the new end
    /// is cut at the close of the role's window.
    pub fn extend(
        &mut self,
        id: u64,
        by_user: &str,
        by: Duration,
        reason: Option<String>,
    ) -> Result<Outcome<Grant>, Refusal> {
        let now = self.now();
        let reason = normalize_reason(reason)?;
        let policy = Arc::clone(&self.policy);
        let user = find_user(&policy, by_user)?;
        let g = self.active(id, now)?;
        if g.user != user.name && !user.admin {
            return Err(Refusal::NotHolder {
                id,
                holder: g.user.clone(),
                user: user.name.clone(),
            });
        }
        if by.is_zero() {
            return Err(Refusal::DurationZero);
        }
        let role = find_role(&policy, &g.role)?;
        if role.reason_required && reason.is_none() {
            return Err(Refusal::ReasonRequired {
                role: role.name.clone(),
            });
        }
        let total = g.length.saturating_add(by);
        if total > role.max_duration {
            return Err(Refusal::ExtendBeyondMax {
                id,
                role: role.name.clone(),
                by,
                total,
                max: role.max_duration,
                remaining: role.max_duration.saturating_sub(g.length),
            });
        }
        let wanted_boot = g.expires_boot_ns.saturating_add(duration_ns(by));
        let wanted_from_now = Duration::from_nanos(wanted_boot - now.boot_ns);
        let open_until = role
            .windows
            .open_until(now.wall, now.wall_after(wanted_from_now))
            .ok_or_else(|| outside_window(role, now))?;
        let from_now = wanted_from_now.min(wall_diff(open_until, now.wall));
        let new_expiry = now.boot_after(from_now);
        if new_expiry <= g.expires_boot_ns {
            let tz = role.windows.windows().first().map(|w| w.tz);
            return Err(Refusal::ExtendBlockedByWindow {
                id,
                role: role.name.clone(),
                closes: tz.map_or_else(|| fmt_wall(&open_until), |tz| format_local(open_until, tz)),
            });
        }
        let previous_expires_wall = g.expires_wall;
        let actor = Actor::User(user.name.clone());
        let g = self
            .grants
            .modify(id, |g| {
                g.length = g
                    .length
                    .saturating_add(Duration::from_nanos(new_expiry - g.expires_boot_ns));
                g.expires_boot_ns = new_expiry;
                g.expires_wall = now.wall_after(from_now);
                g.cut_by_window = from_now < wanted_from_now;
            })
            .expect("checked above")
            .clone();
        let event = Self::grant_event(
            &g,
            now,
            actor,
            reason,
            AuditAction::Extended {
                previous_expires_wall,
                expires_wall: g.expires_wall,
                expires_boot_ns: g.expires_boot_ns,
                length: g.length,
                cut_by_window: g.cut_by_window,
            },
        );
        Ok(Outcome {
            value: g,
            events: vec![event],
        })
    }

    /// Ends every active grant whose boot-clock expiry has passed.
    pub fn expire_due(&mut self) -> Outcome<Vec<Grant>> {
        let now = self.now();
        let due = self.grants.due(now.boot_ns);
        let mut out = Outcome {
            value: Vec::new(),
            events: Vec::new(),
        };
        for id in due {
            let (g, e) = self.end_grant(id, GrantState::Expired, Actor::System, None, now);
            out.value.push(g);
            out.events.push(e);
        }
        out
    }

    /// Times out every pending request older than the pending TTL.
    pub fn timeout_pending(&mut self) -> Outcome<Vec<Request>> {
        let now = self.now();
        let due = self.requests.due(now.boot_ns);
        let mut out = Outcome {
            value: Vec::new(),
            events: Vec::new(),
        };
        for id in due {
            let reason = Some("not approved in time".to_owned());
            let (r, e) = self.close_request(id, RequestState::TimedOut, Actor::System, reason, now);
            out.value.push(r);
            out.events.push(e);
        }
        out
    }

    /// Why the policy in force no longer allows an active grant, if it does not.
    fn grant_disallowed(&self, g: &Grant, now: Now) -> Option<String> {
        let as_request = Request {
            id: g.id,
            user: g.user.clone(),
            role: g.role.clone(),
            target: g.target.clone(),
            source: g.source,
            duration: Duration::ZERO,
            reason: g.reason.clone(),
            requested_wall: g.activated_wall,
            requested_boot_ns: g.activated_boot_ns,
            boot_id: g.boot_id.clone(),
            pending_until_boot_ns: 0,
            pending_until_wall: g.activated_wall,
            approver_roles: Vec::new(),
            approvals_needed: 0,
            approvals: Vec::new(),
            state: RequestState::Approved,
            closed: None,
        };
        let (_, role, target) = match Self::recheck(&self.policy, &as_request) {
            Ok(x) => x,
            Err(why) => return Some(why),
        };
        let rules: Vec<GrantRule> = target
            .rules
            .iter()
            .map(|r| GrantRule::new(g.source, r))
            .collect();
        if rules != g.rules {
            return Some(format!(
                "target {}'s addresses, protocol or ports changed",
                g.target
            ));
        }
        if g.length > role.max_duration {
            return Some(format!(
                "the grant lasts {}, more than role {}'s max_duration {}",
                format_duration(g.length),
                role.name,
                format_duration(role.max_duration)
            ));
        }
        if !role.windows.is_always() {
            let end = now.wall_after(g.remaining_at(now.boot_ns));
            if role
                .windows
                .open_until(now.wall, end)
                .is_none_or(|open| open < end)
            {
                return Some(format!(
                    "role {}'s time windows no longer cover the rest of the grant",
                    role.name
                ));
            }
        }
        None
    }

    /// Puts a new policy in force. Grants it does not allow are revoked and
    /// pending requests it does not allow are cancelled, each with its own
    /// audit event. Pending requests keep only approvals from users who may
    /// still approve; one that now has all the approvals it needs (or needs
    /// none) is activated if its role's window is open. Grants in force stay
    /// as they are otherwise: they were approved under the policy of their
    /// time.
    pub fn reapply_policy(&mut self, policy: Arc<Policy>) -> Outcome<Reapplied> {
        self.policy = policy;
        let now = self.now();
        let mut out = Outcome {
            value: Reapplied::default(),
            events: Vec::new(),
        };
        let active: Vec<u64> = self.grants.live().map(|g| g.id).collect();
        for id in active {
            let why = self
                .grants
                .get(id)
                .and_then(|g| self.grant_disallowed(g, now));
            if let Some(why) = why {
                let reason = Some(format!("policy reload: {why}"));
                let (g, e) = self.end_grant(id, GrantState::Revoked, Actor::System, reason, now);
                out.value.revoked.push(g);
                out.events.push(e);
            }
        }
        let pending: Vec<u64> = self.requests.live().map(|r| r.id).collect();
        for id in pending {
            let Some(r) = self.requests.get(id) else {
                continue;
            };
            let (role, target) = match Self::recheck(&self.policy, r) {
                Err(why) => {
                    let reason = Some(format!("policy reload: {why}"));
                    let (r, e) =
                        self.close_request(id, RequestState::Cancelled, Actor::System, reason, now);
                    out.value.cancelled.push(r);
                    out.events.push(e);
                    continue;
                }
                Ok((_, role, target)) => (role.clone(), target.clone()),
            };
            let mut updated = r.clone();
            updated.approvals.retain(|a| {
                self.policy
                    .user(&a.approver)
                    .is_some_and(|u| u.name != updated.user && self.policy.can_approve(u, &role))
            });
            updated.approver_roles = role
                .approval
                .as_ref()
                .map(|a| a.approver_roles.clone())
                .unwrap_or_default();
            updated.approvals_needed = role.approval.as_ref().map_or(0, |a| a.approvals_needed);
            if updated.approvals_missing() == 0 {
                let origin = if role.approval.is_none() {
                    Origin::NoApprovalNeeded
                } else {
                    Origin::Approved {
                        approvers: updated
                            .approvals
                            .iter()
                            .map(|a| a.approver.clone())
                            .collect(),
                    }
                };
                let made = self.make_grant(
                    id,
                    &updated.user,
                    &role,
                    &target,
                    updated.source,
                    updated.duration,
                    updated.reason.clone(),
                    origin,
                    now,
                );
                if let Ok(grant) = made {
                    updated.state = RequestState::Approved;
                    updated.closed = Some(Closed {
                        by: Actor::System,
                        wall: now.wall,
                        reason: Some("policy reload: approvals suffice".to_owned()),
                    });
                    out.events
                        .push(Self::activated_event(&grant, now, Actor::System));
                    self.grants.insert(grant.clone());
                    out.value.activated.push(grant);
                }
            }
            self.requests.insert(updated);
        }
        out
    }

    /// The request with this id.
    pub fn request_by_id(&self, id: u64) -> Option<&Request> {
        self.requests.get(id)
    }

    /// The grant with this id.
    pub fn grant_by_id(&self, id: u64) -> Option<&Grant> {
        self.grants.get(id)
    }

    /// What an id names.
    pub fn show(&self, id: u64) -> Option<Shown<'_>> {
        let shown = Shown {
            request: self.requests.get(id),
            grant: self.grants.get(id),
        };
        (shown.request.is_some() || shown.grant.is_some()).then_some(shown)
    }

    /// All requests, by id.
    pub fn requests(&self) -> impl Iterator<Item = &Request> {
        self.requests.values()
    }

    /// All grants, by id.
    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values()
    }

    /// Pending requests.
    pub fn pending_requests(&self) -> impl Iterator<Item = &Request> {
        self.requests.live()
    }

    /// Active grants (including any whose expiry is yet to be processed).
    pub fn active_grants(&self) -> impl Iterator<Item = &Grant> {
        self.grants.live()
    }

    /// Takes back grants and requests made since the store was last
    /// written, for a batch that is refused as a whole. Their ids stay used.
    pub fn discard_new(&mut self, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            self.grants.remove(id);
            self.requests.remove(id);
        }
    }

    /// Number of pending requests.
    pub fn pending_count(&self) -> usize {
        self.requests.live_count()
    }

    /// Number of active grants.
    pub fn active_count(&self) -> usize {
        self.grants.live_count()
    }

    /// Requests and grants matching a filter.
    pub fn list(&self, filter: &ListFilter) -> Listing<'_> {
        let mine = |u: &str| filter.user.as_deref().is_none_or(|f| f == u);
        Listing {
            requests: if filter.include_closed {
                self.requests.values().filter(|r| mine(&r.user)).collect()
            } else {
                self.requests.live().filter(|r| mine(&r.user)).collect()
            },
            grants: if filter.include_closed {
                self.grants.values().filter(|g| mine(&g.user)).collect()
            } else {
                self.grants.live().filter(|g| mine(&g.user)).collect()
            },
        }
    }

    /// The earliest boot-clock time at which [`Engine::expire_due`] or
    /// [`Engine::timeout_pending`] has work, so the agent can sleep until then.
    pub fn next_deadline_boot_ns(&self) -> Option<u64> {
        let grants = self.grants.next_deadline();
        let requests = self.requests.next_deadline();
        grants.into_iter().chain(requests).min()
    }

    /// Forgets requests and grants that ended more than `keep` ago (wall
    /// clock) and returns their ids, so a store can delete them too. The
    /// audit log keeps their history.
    pub fn prune(&mut self, keep: Duration) -> Vec<u64> {
        let now = self.now();
        let cutoff = chrono::Duration::from_std(keep)
            .ok()
            .and_then(|k| now.wall.checked_sub_signed(k))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        let old = |c: &Option<Closed>| c.as_ref().is_some_and(|c| c.wall < cutoff);
        // Only records that ended before the cutoff can go: the indexes
        // give them without a scan of the whole history.
        let mut ids = std::collections::BTreeSet::new();
        for id in self.requests.ended_before(cutoff) {
            let Some(r) = self.requests.get(id) else {
                continue;
            };
            // A request that became a grant goes with its grant.
            let keep = r.state == RequestState::Approved
                && self.grants.get(id).is_some_and(|g| !old(&g.ended));
            if !keep {
                ids.insert(id);
            }
        }
        for id in self.grants.ended_before(cutoff) {
            ids.insert(id);
        }
        for id in &ids {
            self.requests.remove(*id);
            self.grants.remove(*id);
        }
        ids.into_iter().collect()
    }
}
