//! Tests of every transition and refusal of the engine.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::*;
use crate::policy::Policy;

pub(crate) const POLICY: &str = r#"
[gate]
interfaces = ["eth0"]
pending_ttl = "1h"

[zones.prod]
prefixes = ["10.20.0.0/16", "2001:db8:20::/48"]

[zones.mgmt]
prefixes = ["10.99.0.0/24"]

[targets.db]
prefixes = ["10.20.5.0/24"]
protocol = "tcp"
ports = [5432]

[targets.web]
zone = "prod"
protocol = "tcp"
ports = [22, "8000-8100"]

[targets.bmc]
zone = "mgmt"
protocol = "tcp"
ports = [443]

[targets.ops-box]
prefixes = ["10.20.7.7/32"]
protocol = "udp"
ports = [161]

[roles.dev]
targets = ["web"]
max_duration = "2h"
default_duration = "30m"

[roles.dba]
targets = ["db"]
max_duration = "4h"
default_duration = "1h"
reason_required = true
approval = { required = true, approver_roles = ["dba-leads"], approvals_needed = 2 }

[roles.dba-leads]
targets = ["db"]
max_duration = "1h"

[roles.ops]
targets = ["ops-box"]
max_duration = "1h"
approval = { required = true, approver_roles = ["ops"] }

[roles.hw]
targets = ["bmc"]
max_duration = "4h"
approval = { required = true, approver_roles = ["dba-leads"] }
windows = [{ days = ["mon-fri"], start = "08:00", end = "18:00", tz = "Europe/Berlin" }]

[roles.night]
targets = ["bmc"]
max_duration = "4h"
windows = [{ days = ["sun"], start = "01:00", end = "04:00", tz = "Europe/Berlin" }]

[users.alice]
accounts = ["alice", 1001]
roles = ["dev", "dba"]
source_prefixes = ["10.1.0.0/24", "2001:db8:1::/64"]

[users.bob]
accounts = ["bob"]
roles = ["dba-leads"]
source_prefixes = ["10.1.0.0/24"]
approver = true

[users.carol]
accounts = ["carol"]
roles = ["dba", "dba-leads"]
source_prefixes = ["10.1.0.0/24"]
approver = true

[users.ivan]
accounts = ["ivan"]
roles = ["dba-leads"]
source_prefixes = ["10.1.0.0/24"]
approver = true

[users.dave]
accounts = ["dave"]
roles = ["dba-leads"]
source_prefixes = ["10.1.0.0/24"]

[users.erin]
accounts = ["erin"]
roles = ["hw", "night"]
source_prefixes = ["10.1.0.0/24"]

[users.frank]
accounts = ["frank"]
roles = ["ops"]
source_prefixes = ["10.1.0.0/24"]
approver = true

[users.gina]
accounts = ["gina"]
roles = ["ops"]
source_prefixes = ["10.1.0.0/24"]
approver = true

[users.root]
accounts = [0]
admin = true
"#;

/// Monday 2025-01-06, 10:00 in Berlin.
const MONDAY_10_BERLIN: &str = "2025-01-06T09:00:00Z";

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("test time parses")
        .with_timezone(&Utc)
}

fn policy(text: &str) -> Arc<Policy> {
    match Policy::parse("test.toml", text) {
        Ok(p) => Arc::new(p),
        Err(e) => panic!("test policy is invalid:\n{e}"),
    }
}

fn engine_at(wall: &str) -> (Engine, ManualClock) {
    let clock = ManualClock::new(utc(wall));
    let engine = Engine::new(policy(POLICY), Arc::new(clock.clone()));
    (engine, clock)
}

fn src() -> IpAddr {
    "10.1.0.5".parse().expect("address parses")
}

fn ask(user: &str, target: &str) -> AccessRequest {
    AccessRequest {
        user: user.into(),
        target: target.into(),
        source: src(),
        duration: None,
        role: None,
        reason: None,
    }
}

fn with_reason(mut r: AccessRequest, reason: &str) -> AccessRequest {
    r.reason = Some(reason.into());
    r
}

fn for_duration(mut r: AccessRequest, d: Duration) -> AccessRequest {
    r.duration = Some(d);
    r
}

fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

fn actions(events: &[AuditEvent]) -> Vec<&'static str> {
    events.iter().map(|e| e.action.name()).collect()
}

fn active(outcome: Outcome<Requested>) -> Grant {
    match outcome.value {
        Requested::Active(g) => g,
        Requested::Pending(r) => panic!("request #{} is pending, expected active", r.id),
    }
}

fn pending(outcome: Outcome<Requested>) -> Request {
    match outcome.value {
        Requested::Pending(r) => r,
        Requested::Active(g) => panic!("grant #{} is active, expected pending", g.id),
    }
}

/// alice asks for db, which needs two approvals.
fn pending_db(engine: &mut Engine) -> Request {
    pending(
        engine
            .request(with_reason(ask("alice", "db"), "INC-1"))
            .expect("request accepted"),
    )
}

#[test]
fn request_without_approval_is_active_at_once() {
    let (mut e, clock) = engine_at(MONDAY_10_BERLIN);
    let out = e.request(ask("alice", "web")).expect("granted");
    assert_eq!(actions(&out.events), ["requested", "activated"]);
    let g = active(out);
    assert_eq!(g.id, 1);
    assert_eq!(g.role, "dev");
    assert_eq!(g.length, mins(30), "the role's default_duration");
    assert_eq!(g.origin, Origin::NoApprovalNeeded);
    assert_eq!(g.expires_boot_ns, clock.boot_ns() + 30 * 60 * 1_000_000_000);
    assert_eq!(g.expires_wall, utc("2025-01-06T09:30:00Z"));
    assert!(!g.cut_by_window);
    // Two zone prefixes times two port ranges, all from alice's address.
    assert_eq!(g.rules.len(), 4);
    assert!(g.rules.iter().all(|r| r.source == src()));
    assert_eq!(
        e.request_by_id(1).map(|r| r.state),
        Some(RequestState::Approved)
    );
    assert_eq!(e.active_grants().count(), 1);
}

#[test]
fn request_needing_approval_is_pending_with_a_clear_message() {
    let (mut e, _) = engine_at(MONDAY_10_BERLIN);
    let out = e
        .request(with_reason(ask("alice", "db"), "INC-1"))
        .expect("accepted");
    assert_eq!(actions(&out.events), ["requested"]);
    let msg = out.value.to_string();
    assert!(
        msg.starts_with(
            "target db needs 2 approvals by role dba-leads; your request is pending as #1"
        ),
        "{msg}"
    );
    let r = pending(out);
    assert_eq!(r.approvals_needed, 2);
    assert_eq!(r.pending_until_wall, utc("2025-01-06T10:00:00Z"));
    assert_eq!(e.active_grants().count(), 0);
}

#[test]
fn approvals_come_from_distinct_approvers_and_the_window_starts_at_activation() {
    let (mut e, clock) = engine_at(MONDAY_10_BERLIN);
    let r = pending_db(&mut e);
    clock.advance(mins(10));
    let first = e.approve(r.id, "bob", Some("ok".into())).expect("approved");
    assert_eq!(actions(&first.events), ["approved"]);
    assert_eq!(
        first.value.to_string(),
        "approval recorded; request #1 needs 1 more"
    );

    let again = e.approve(r.id, "bob", None).unwrap_err();
    assert_eq!(
        again,
        Refusal::AlreadyApproved {
            id: 1,
            user: "bob".into(),
            missing: 1
        }
    );

    clock.advance(mins(20));
    let second = e.approve(r.id, "carol", None).expect("approved");
    assert_eq!(actions(&second.events), ["approved", "activated"]);
    let Approved::Activated(g) = second.value else {
        panic!("second approval should activate")
    };
    // Activated 30 minutes after the request; the hour starts then.
    assert_eq!(g.activated_wall, utc("2025-01-06T09:30:00Z"));
    assert_eq!(g.expires_wall, utc("2025-01-06T10:30:00Z"));
    assert_eq!(g.length, hours(1));
    assert_eq!(
        g.origin,
        Origin::Approved {
            approvers: vec!["bob".into(), "carol".into()]
        }
    );
    assert_eq!(g.reason.as_deref(), Some("INC-1"));
    assert_eq!(
        e.request_by_id(1).map(|r| r.state),
        Some(RequestState::Approved)
    );
    assert!(matches!(
        e.approve(1, "ivan", None),
        Err(Refusal::RequestNotPending {
            id: 1,
            state: RequestState::Approved
        })
    ));
}

#[test]
fn nobody_approves_their_own_request() {
    let (mut e, _) = engine_at(MONDAY_10_BERLIN);
    // ops approves ops: frank and gina approve each other, never themselves.
    let r = pending(e.request(ask("frank", "ops-box")).expect("accepted"));
    assert_eq!(
        e.approve(r.id, "frank", None),
        Err(Refusal::SelfApproval { id: r.id })
    );
    let out = e.approve(r.id, "gina", None).expect("approved");
    assert!(matches!(out.value, Approved::Activated(_)));
}

#[test]
fn only_approvers_holding_an_approver_role_may_approve() {
    let (mut e, _) = engine_at(MONDAY_10_BERLIN);
    let r = pending_db(&mut e);
    // dave holds dba-leads but is not marked approver.
    let err = e.approve(r.id, "dave", None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "dave may not approve requests for role dba: that takes `approver = true` and one of the roles dba-leads"
    );
    // frank is an approver, but for ops only.
    assert!(matches!(
        e.approve(r.id, "frank", None),
        Err(Refusal::NotApprover { .. })
    ));
    // Admins grant; they do not approve.
    assert!(matches!(
        e.approve(r.id, "root", None),
        Err(Refusal::NotApprover { .. })
    ));
    assert!(matches!(
        e.approve(r.id, "mallory", None),
        Err(Refusal::UnknownUser { .. })
    ));
    assert!(matches!(
        e.approve(99, "bob", None),
        Err(Refusal::NoSuchRequest { id: 99 })
    ));
    assert!(e
        .request_by_id(r.id)
        .is_some_and(|r| r.approvals.is_empty()));
}

#[test]
fn deny_by_an_approver_or_admin() {
    let (mut e, _) = engine_at(MONDAY_10_BERLIN);
    let r = pending_db(&mut e);
    assert_eq!(
        e.deny(r.id, "alice", None),
        Err(Refusal::SelfDenial { id: r.id })
    );
    assert!(matches!(
        e.deny(r.id, "dave", None),
        Err(Refusal::NotApprover { .. })
    ));
    let out = e
        .deny(r.id, "bob", Some("not during the freeze".into()))
        .expect("denied");
    assert_eq!(actions(&out.events), ["denied"]);
    assert_eq!(
        out.events[0].reason.as_deref(),
        Some("not during the freeze")
    );
    assert_eq!(out.value.state, RequestState::Denied);
    assert!(matches!(
        e.approve(r.id, "carol", None),
        Err(Refusal::RequestNotPending {
            state: RequestState::Denied,
            ..
        })
    ));

    let r2 = pending(
        e.request(with_reason(ask("carol", "db"), "x").tap_role("dba"))
            .expect("accepted"),
    );
    let out = e.deny(r2.id, "root", None).expect("admins may deny");
    assert_eq!(out.value.state, RequestState::Denied);
}

trait TapRole {
    fn tap_role(self, role: &str) -> Self;
}

impl TapRole for AccessRequest {
    fn tap_role(mut self, role: &str) -> Self {
        self.role = Some(role.into());
        self
    }
}

#[test]
fn cancel_by_the_requester_or_an_admin() {
    let (mut e, _) = engine_at(MONDAY_10_BERLIN);
    let r = pending_db(&mut e);
    assert!(matches!(
        e.cancel(r.id, "bob", None),
        Err(Refusal::NotRequester { .. })
    ));
    let out = e
        .cancel(r.id, "alice", Some("done elsewhere".into()))
        .expect("cancelled");
    assert_eq!(actions(&out.events), ["cancelled"]);
    assert_eq!(out.value.state, RequestState::Cancelled);
    assert!(matches!(
        e.cancel(r.id, "alice", None),
        Err(Refusal::RequestNotPending { .. })
    ));

    let r = pending_db(&mut e);
    assert_eq!(
        e.cancel(r.id, "root", None).map(|o| o.value.state),
        Ok(RequestState::Cancelled)
    );
}

#[test]
fn pending_requests_time_out() {
    let (mut e, clock) = engine_at(MONDAY_10_BERLIN);
    let r = pending_db(&mut e);
    clock.advance(mins(59));
    assert!(e.timeout_pending().value.is_empty());
    e.approve(r.id, "bob", None).expect("still in time");
    clock.advance(mins(1));
    // Due but not yet processed: approving is refused all the same.
    assert!(matches!(
        e.approve(r.id, "carol", None),
        Err(Refusal::RequestTimedOut { .. })
    ));
    let out = e.timeout_pending();
    assert_eq!(actions(&out.events), ["timed_out"]);
    assert_eq!(out.value[0].state, RequestState::TimedOut);
    assert_eq!(out.events[0].actor, Actor::System);
    assert!(e.timeout_pending().value.is_empty());
}

#[test]
fn refusals_say_what_to_do() {
    let (mut e, _) = engine_at(MONDAY_10_BERLIN);
    let msg = |r: Result<Outcome<Requested>, Refusal>| r.unwrap_err().to_string();
    assert_eq!(
        msg(e.request(for_duration(ask("alice", "web"), hours(4)))),
        "requested 4h exceeds role dev's max_duration 2h"
    );
    assert_eq!(
        msg(e.request(ask("alice", "db"))),
        "role dba requires a reason or ticket; give one with the request"
    );
    assert_eq!(
        msg(e.request(ask("alice", "bmc"))),
        "none of alice's roles (dev, dba) reaches target bmc"
    );
    assert_eq!(
        msg(e.request(ask("alice", "wbe"))),
        "there is no target wbe; did you mean web?"
    );
    assert_eq!(
        msg(e.request(ask("mallory", "web"))),
        "`mallory` is not a user in the policy"
    );
    let mut from_elsewhere = ask("alice", "web");
    from_elsewhere.source = "192.0.2.1".parse().expect("address");
    assert_eq!(
        msg(e.request(from_elsewhere)),
        "source address 192.0.2.1 is outside alice's source_prefixes (10.1.0.0/24, 2001:db8:1::/64)"
    );
    assert_eq!(
        msg(e.request(ask("alice", "web").tap_role("dba-leads"))),
        "alice does not hold role dba-leads"
    );
    assert_eq!(
        msg(e.request(ask("alice", "web").tap_role("dba"))),
        "role dba does not reach target web"
    );
    assert_eq!(
        msg(e.request(for_duration(ask("alice", "web"), Duration::ZERO))),
        "the requested duration is zero; ask for e.g. 30m"
    );
    assert!(matches!(
        e.request(with_reason(
            ask("alice", "web"),
            &"x".repeat(MAX_REASON_CHARS + 1)
        )),
        Err(Refusal::ReasonTooLong { .. })
    ));
    assert_eq!(e.requests().count(), 0, "refusals change nothing");
    assert_eq!(e.next_id(), 1, "refusals use up no ids");
}

#[test]
fn the_same_access_is_not_granted_or_requested_twice() {
    let (mut e, _) = engine_at(MONDAY_10_BERLIN);
    let g = active(e.request(ask("alice", "web")).expect("granted"));
    let err = e.request(ask("alice", "web")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "alice already holds grant #1 for web from 10.1.0.5 until 2025-01-06 09:30:00 UTC; extend it instead"
    );
    // From another address it is other access.
    let mut v6 = ask("alice", "web");
    v6.source = "2001:db8:1::5".parse().expect("address");
    e.request(v6).expect("a second source is separate access");
    e.release(g.id, "alice").expect("released");
    e.request(ask("alice", "web"))
        .expect("after release it may be requested again");

    let r = pending_db(&mut e);
    assert_eq!(
        e.request(with_reason(ask("alice", "db"), "again")),
        Err(Refusal::AlreadyRequested {
            id: r.id,
            user: "alice".into(),
            target: "db".into(),
            address: src()
        })
    );
}

#[test]
fn a_role_without_approval_is_preferred() {
    let (mut e, _) = engine_at(MONDAY_10_BERLIN);
    // carol holds dba (two approvals) and dba-leads (none); both reach db.
    let g = active(e.request(ask("carol", "db")).expect("granted"));
    assert_eq!(g.role, "dba-leads");
    assert_eq!(g.length, hours(1));
}

#[test]
fn admins_grant_directly_within_the_policy() {
    let (mut e, _) = engine_at(MONDAY_10_BERLIN);
    let req = for_duration(ask("alice", "db"), hours(2));
    assert_eq!(
        e.grant("root", req.clone()),
        Err(Refusal::AdminReasonRequired)
    );
    assert_eq!(
        e.grant("bob", with_reason(req.clone(), "x"))
            .unwrap_err()
            .to_string(),
        "only admins may grant access directly, and bob is not one"
    );
    let out = e
        .grant("root", with_reason(req, "INC-7 outage"))
        .expect("granted");
    assert_eq!(actions(&out.events), ["activated"]);
    assert_eq!(out.events[0].actor, Actor::User("root".into()));
    let g = out.value;
    assert_eq!(
        g.origin,
        Origin::Admin {
            admin: "root".into()
        }
    );
    assert_eq!(g.length, hours(2));
    assert!(
        e.request_by_id(g.id).is_none(),
        "a direct grant has no request"
    );
    // Still bounded by the role and the user's roles.
    assert!(matches!(
        e.grant(
            "root",
            with_reason(for_duration(ask("alice", "web"), hours(3)), "x")
        ),
        Err(Refusal::DurationTooLong { .. })
    ));
    assert!(matches!(
        e.grant("root", with_reason(ask("alice", "bmc"), "x")),
        Err(Refusal::TargetNotAllowed { .. })
    ));
}

#[test]
fn revoke_is_for_admins() {
    let (mut e, _) = engine_at(MONDAY_10_BERLIN);
    let g = active(e.request(ask("alice", "web")).expect("granted"));
    assert!(matches!(
        e.revoke(g.id, "alice", None),
        Err(Refusal::NotAdmin { .. })
    ));
    let out = e
        .revoke(g.id, "root", Some("left the team".into()))
        .expect("revoked");
    assert_eq!(actions(&out.events), ["revoked"]);
    assert_eq!(out.value.state, GrantState::Revoked);
    assert_eq!(
        e.revoke(g.id, "root", None),
        Err(Refusal::GrantNotActive {
            id: g.id,
            state: GrantState::Revoked
        })
    );
    assert_eq!(
        e.revoke(42, "root", None),
        Err(Refusal::NoSuchGrant { id: 42 })
    );
}

#[test]
fn release_is_for_the_holder() {
    let (mut e, _) = engine_at(MONDAY_10_BERLIN);
    let g = active(e.request(ask("alice", "web")).expect("granted"));
    assert_eq!(
        e.release(g.id, "bob").unwrap_err().to_string(),
        "grant #1 belongs to alice, not bob"
    );
    let out = e.release(g.id, "alice").expect("released");
    assert_eq!(actions(&out.events), ["released"]);
    assert_eq!(out.value.state, GrantState::Released);
    assert!(e.release(g.id, "alice").is_err());
}

#[test]
fn extensions_stay_within_max_duration_counted_from_activation() {
    let (mut e, clock) = engine_at(MONDAY_10_BERLIN);
    let g = active(e.request(ask("alice", "web")).expect("granted"));
    assert_eq!(g.length, mins(30));
    clock.advance(mins(20));
    let out = e.extend(g.id, "alice", hours(1), None).expect("extended");
    assert_eq!(actions(&out.events), ["extended"]);
    assert_eq!(out.value.length, mins(90));
    assert_eq!(out.value.expires_wall, utc("2025-01-06T10:30:00Z"));
    let err = e.extend(g.id, "alice", hours(1), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "extending grant #1 by 1h would make it last 2h30m, beyond role dev's max_duration 2h counted from activation; at most 30m more is possible"
    );
    e.extend(g.id, "root", mins(30), None)
        .expect("admins may extend");
    let err = e
        .extend(g.id, "alice", Duration::from_secs(1), None)
        .unwrap_err();
    assert!(
        err.to_string().ends_with("it cannot be extended further"),
        "{err}"
    );
    let g = e.grant_by_id(g.id).expect("grant exists").clone();
    assert_eq!(
        g.expires_wall,
        utc("2025-01-06T11:00:00Z"),
        "activation + max_duration"
    );
    assert!(matches!(
        e.extend(g.id, "bob", mins(1), None),
        Err(Refusal::NotHolder { .. })
    ));
    assert_eq!(
        e.extend(g.id, "alice", Duration::ZERO, None),
        Err(Refusal::DurationZero)
    );
}

#[test]
fn extending_a_role_with_reason_required_needs_a_reason() {
    let (mut e, _) = engine_at(MONDAY_10_BERLIN);
    let g = e
        .grant(
            "root",
            with_reason(for_duration(ask("alice", "db"), hours(1)), "INC-2"),
        )
        .expect("granted")
        .value;
    assert!(matches!(
        e.extend(g.id, "alice", mins(10), None),
        Err(Refusal::ReasonRequired { .. })
    ));
    e.extend(g.id, "alice", mins(10), Some("INC-2 still open".into()))
        .expect("extended");
}

#[test]
fn grants_expire_on_the_boot_clock() {
    let (mut e, clock) = engine_at(MONDAY_10_BERLIN);
    let g = active(e.request(ask("alice", "web")).expect("granted"));
    assert_eq!(e.next_deadline_boot_ns(), Some(g.expires_boot_ns));
    clock.advance(mins(29));
    assert!(e.expire_due().value.is_empty());
    clock.advance(mins(1));
    // Ran out but not yet processed: the holder cannot act on it.
    assert!(matches!(
        e.release(g.id, "alice"),
        Err(Refusal::GrantRanOut { .. })
    ));
    assert!(matches!(
        e.extend(g.id, "alice", mins(5), None),
        Err(Refusal::GrantRanOut { .. })
    ));
    let out = e.expire_due();
    assert_eq!(actions(&out.events), ["expired"]);
    assert_eq!(out.events[0].actor, Actor::System);
    assert_eq!(out.value[0].state, GrantState::Expired);
    assert!(e.expire_due().value.is_empty());
    assert_eq!(e.next_deadline_boot_ns(), None);
}

#[test]
fn a_wall_clock_jump_neither_extends_nor_shortens_a_grant() {
    let (mut e, clock) = engine_at(MONDAY_10_BERLIN);
    let g = active(e.request(ask("alice", "web")).expect("granted"));
    // Forward: a grant must not end early.
    clock.jump_wall(chrono::Duration::hours(5));
    assert!(e.expire_due().value.is_empty());
    // Backward: nor last longer.
    clock.jump_wall(chrono::Duration::hours(-10));
    clock.advance(mins(30));
    let out = e.expire_due();
    assert_eq!(out.value.len(), 1);
    assert_eq!(out.value[0].id, g.id);
}

#[test]
fn requests_outside_a_window_are_refused_with_the_next_opening() {
    // Saturday 2025-01-11, 12:00 UTC.
    let (mut e, _) = engine_at("2025-01-11T12:00:00Z");
    let err = e.request(ask("erin", "bmc").tap_role("hw")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "role hw may only be used inside its time windows (mon,tue,wed,thu,fri 08:00-18:00 Europe/Berlin); the next one opens at 2025-01-13 08:00 CET (Europe/Berlin)"
    );
    assert_eq!(err.kind(), RefusalKind::NotNow);
    // Without a role named, both of erin's roles refuse, and both say why.
    let err = e.request(ask("erin", "bmc")).unwrap_err();
    let Refusal::NoRoleFits { reasons, .. } = &err else {
        panic!("expected every role to refuse: {err}")
    };
    assert_eq!(reasons.len(), 2);
    assert!(
        err.to_string()
            .starts_with("no role of erin's allows this: role hw: "),
        "{err}"
    );
}

#[test]
fn grants_are_cut_at_the_window_end() {
    // Sunday 2025-01-12, 03:30 in Berlin; the night window closes at 04:00.
    let (mut e, _) = engine_at("2025-01-12T02:30:00Z");
    let g = active(
        e.request(for_duration(ask("erin", "bmc"), hours(2)))
            .expect("granted inside the window"),
    );
    assert_eq!(g.role, "night");
    assert_eq!(g.length, mins(30));
    assert!(g.cut_by_window);
    assert_eq!(g.expires_wall, utc("2025-01-12T03:00:00Z"));
    let err = e.extend(g.id, "erin", mins(30), None).unwrap_err();
    assert!(
        matches!(err, Refusal::ExtendBlockedByWindow { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("2025-01-12 04:00 CET"), "{err}");
}

#[test]
fn dst_spring_forward_cuts_at_the_real_window_end() {
    // Berlin, Sunday 2025-03-30, 01:30 CET. At 02:00 the clocks jump to 03:00.
    let (mut e, _) = engine_at("2025-03-30T00:30:00Z");
    let g = active(
        e.request(for_duration(ask("erin", "bmc"), hours(4)))
            .expect("granted"),
    );
    // 04:00 CEST is 02:00 UTC: an hour and a half of real time.
    assert_eq!(g.expires_wall, utc("2025-03-30T02:00:00Z"));
    assert_eq!(g.length, mins(90));
}

#[test]
fn dst_fall_back_cuts_at_the_real_window_end() {
    // Berlin, Sunday 2025-10-26, 01:30 CEST. At 03:00 the clocks go back to 02:00.
    let (mut e, _) = engine_at("2025-10-25T23:30:00Z");
    let g = active(
        e.request(for_duration(ask("erin", "bmc"), hours(4)))
            .expect("granted"),
    );
    // 04:00 CET is 03:00 UTC: three and a half hours of real time.
    assert_eq!(g.expires_wall, utc("2025-10-26T03:00:00Z"));
    assert_eq!(g.length, mins(210));
}

#[test]
fn the_last_approval_outside_the_window_is_refused_and_the_request_waits() {
    // Monday 17:30 in Berlin.
    let (mut e, clock) = engine_at("2025-01-06T16:30:00Z");
    let r = pending(
        e.request(ask("erin", "bmc").tap_role("hw"))
            .expect("accepted in the window"),
    );
    clock.advance(mins(45));
    let err = e.approve(r.id, "bob", None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "request #1 has its approvals, but role hw is outside its time windows now; the next one opens at 2025-01-07 08:00 CET (Europe/Berlin) (the request stays pending)"
    );
    let r = e.request_by_id(r.id).expect("still there");
    assert_eq!(r.state, RequestState::Pending);
    assert!(
        r.approvals.is_empty(),
        "the refused approval is not recorded"
    );
}

#[test]
fn an_approved_grant_inside_the_window_is_cut_at_its_close() {
    // Monday 17:00 in Berlin: approval at 17:15, window closes at 18:00.
    let (mut e, clock) = engine_at("2025-01-06T16:00:00Z");
    let r = pending(
        e.request(for_duration(ask("erin", "bmc").tap_role("hw"), hours(2)))
            .expect("accepted"),
    );
    clock.advance(mins(15));
    let Approved::Activated(g) = e.approve(r.id, "ivan", None).expect("approved").value else {
        panic!("one approval suffices for hw")
    };
    assert_eq!(g.length, mins(45));
    assert!(g.cut_by_window);
}

#[test]
fn reapplying_a_policy_revokes_what_it_no_longer_allows() {
    let (mut e, _) = engine_at(MONDAY_10_BERLIN);
    let web = active(e.request(ask("alice", "web")).expect("granted"));
    let lead = active(e.request(ask("bob", "db")).expect("granted"));
    let ops = pending(e.request(ask("frank", "ops-box")).expect("pending"));
    let db = pending_db(&mut e);
    e.approve(db.id, "bob", None).expect("first approval");

    // alice loses dev; dba needs one approval now; ops-box moves port.
    let text = POLICY
        .replace("roles = [\"dev\", \"dba\"]", "roles = [\"dba\"]")
        .replace(
            "approver_roles = [\"dba-leads\"], approvals_needed = 2",
            "approver_roles = [\"dba-leads\"], approvals_needed = 1",
        )
        .replace("ports = [161]", "ports = [162]");
    let out = e.reapply_policy(policy(&text));
    let revoked: Vec<u64> = out.value.revoked.iter().map(|g| g.id).collect();
    assert_eq!(revoked, [web.id]);
    assert_eq!(
        out.value.revoked[0]
            .ended
            .as_ref()
            .and_then(|c| c.reason.as_deref()),
        Some("policy reload: alice no longer holds role dev")
    );
    assert_eq!(
        out.value.activated.iter().map(|g| g.id).collect::<Vec<_>>(),
        [db.id]
    );
    assert!(
        out.value.cancelled.is_empty(),
        "ops' request only changed port, it is still allowed"
    );
    assert_eq!(actions(&out.events), ["revoked", "activated"]);
    assert!(e
        .grant_by_id(lead.id)
        .is_some_and(|g| g.state == GrantState::Active));
    assert!(e
        .request_by_id(ops.id)
        .is_some_and(|r| r.state == RequestState::Pending));
    // Approved under the new policy, the grant carries the new rules.
    let ops_grant = match e.approve(ops.id, "gina", None).expect("approved").value {
        Approved::Activated(g) => g,
        Approved::Recorded(_) => panic!("one approval suffices"),
    };
    assert_eq!(ops_grant.rules[0].ports.map(|p| p.start), Some(162));
}

#[test]
fn reapplying_a_policy_revokes_grants_whose_rules_changed_and_cancels_requests() {
    let (mut e, _) = engine_at(MONDAY_10_BERLIN);
    let lead = active(e.request(ask("bob", "db")).expect("granted"));
    let db = pending_db(&mut e);
    // db moves port; alice may no longer connect from 10.1.0.0/24.
    let text = POLICY.replace("ports = [5432]", "ports = [5433]").replace(
        "source_prefixes = [\"10.1.0.0/24\", \"2001:db8:1::/64\"]",
        "source_prefixes = [\"2001:db8:1::/64\"]",
    );
    let out = e.reapply_policy(policy(&text));
    assert_eq!(out.value.revoked.len(), 1);
    assert_eq!(out.value.revoked[0].id, lead.id);
    assert_eq!(
        out.value.revoked[0]
            .ended
            .as_ref()
            .and_then(|c| c.reason.as_deref()),
        Some("policy reload: target db's addresses, protocol or ports changed")
    );
    assert_eq!(out.value.cancelled.len(), 1);
    assert_eq!(out.value.cancelled[0].id, db.id);
    assert_eq!(
        out.events
            .iter()
            .map(|e| (e.id, e.action.name(), e.actor.clone()))
            .collect::<Vec<_>>(),
        [
            (lead.id, "revoked", Actor::System),
            (db.id, "cancelled", Actor::System)
        ]
    );
}

#[test]
fn reapplying_a_policy_with_a_shorter_max_or_a_new_window_revokes() {
    let (mut e, _) = engine_at(MONDAY_10_BERLIN);
    let g = active(
        e.request(for_duration(ask("alice", "web"), hours(2)))
            .expect("granted"),
    );
    let shorter = POLICY.replace(
        "max_duration = \"2h\"\ndefault_duration = \"30m\"",
        "max_duration = \"1h\"\ndefault_duration = \"30m\"",
    );
    let out = e.reapply_policy(policy(&shorter));
    assert_eq!(
        out.value.revoked.iter().map(|g| g.id).collect::<Vec<_>>(),
        [g.id]
    );

    let g = active(
        e.request(for_duration(ask("alice", "web"), hours(1)))
            .expect("granted"),
    );
    let windowed = shorter.replace(
        "max_duration = \"1h\"\ndefault_duration = \"30m\"",
        "max_duration = \"1h\"\ndefault_duration = \"30m\"\nwindows = [{ days = [\"sat\"], start = \"08:00\", end = \"18:00\", tz = \"UTC\" }]",
    );
    let out = e.reapply_policy(policy(&windowed));
    assert_eq!(
        out.value.revoked.iter().map(|g| g.id).collect::<Vec<_>>(),
        [g.id]
    );
    assert!(out.value.revoked[0]
        .ended
        .as_ref()
        .and_then(|c| c.reason.as_deref())
        .is_some_and(|r| r.contains("time windows")));
}

#[test]
fn records_restore_the_engine() {
    let (mut e, clock) = engine_at(MONDAY_10_BERLIN);
    let g = active(e.request(ask("alice", "web")).expect("granted"));
    let r = pending_db(&mut e);
    e.approve(r.id, "bob", None).expect("approved once");
    let json = serde_json::to_string(&e.records()).expect("records serialize");
    let records: Records = serde_json::from_str(&json).expect("records deserialize");
    let mut restored =
        Engine::restore(e.policy().clone(), Arc::new(clock.clone()), records).expect("restored");
    assert_eq!(restored.records(), e.records());
    assert_eq!(restored.next_id(), e.next_id());
    // The restored engine goes on where the old one stopped.
    restored
        .approve(r.id, "carol", None)
        .expect("second approval");
    assert_eq!(restored.active_grants().count(), 2);
    clock.advance(mins(30));
    assert_eq!(
        restored
            .expire_due()
            .value
            .iter()
            .map(|g| g.id)
            .collect::<Vec<_>>(),
        [g.id]
    );
}

#[test]
fn after_a_reboot_grants_are_re_timed_from_the_wall_clock() {
    let (mut e, clock) = engine_at(MONDAY_10_BERLIN);
    let g = active(e.request(ask("alice", "web")).expect("granted"));
    let r = pending_db(&mut e);
    let records = e.records();
    clock.reboot(mins(10), "boot-2");
    let mut restored =
        Engine::restore(e.policy().clone(), Arc::new(clock.clone()), records).expect("restored");
    let rg = restored.grant_by_id(g.id).expect("grant restored");
    assert_eq!(rg.boot_id, "boot-2");
    assert_eq!(
        rg.expires_boot_ns,
        clock.boot_ns() + 20 * 60 * 1_000_000_000
    );
    assert_eq!(
        rg.length,
        mins(30),
        "the length counted against max_duration stays"
    );
    let rr = restored.request_by_id(r.id).expect("request restored");
    assert_eq!(
        rr.pending_until_boot_ns,
        clock.boot_ns() + 50 * 60 * 1_000_000_000
    );
    clock.advance(mins(20));
    assert_eq!(restored.expire_due().value.len(), 1);
}

#[test]
fn restore_refuses_duplicate_ids() {
    let (mut e, clock) = engine_at(MONDAY_10_BERLIN);
    e.request(ask("alice", "web")).expect("granted");
    let mut records = e.records();
    records.grants.push(records.grants[0].clone());
    assert_eq!(
        Engine::restore(e.policy().clone(), Arc::new(clock), records).unwrap_err(),
        RestoreError::DuplicateGrant { id: 1 }
    );
}

#[test]
fn audit_events_are_flat_json_and_round_trip() {
    let (mut e, _) = engine_at(MONDAY_10_BERLIN);
    let out = e
        .request(with_reason(ask("alice", "web"), "deploy"))
        .expect("granted");
    for event in &out.events {
        let json = serde_json::to_value(event).expect("serializes");
        assert_eq!(json["event"], event.action.name());
        assert_eq!(json["user"], "alice");
        assert_eq!(json["reason"], "deploy");
        let back: AuditEvent = serde_json::from_value(json).expect("deserializes");
        assert_eq!(&back, event);
    }
    let json = serde_json::to_value(&out.events[1]).expect("serializes");
    assert_eq!(json["length"], "30m");
    assert_eq!(json["origin"]["via"], "no_approval_needed");
    assert_eq!(json["actor"]["user"], "alice");
}

#[test]
fn list_show_and_prune() {
    let (mut e, clock) = engine_at(MONDAY_10_BERLIN);
    let g = active(e.request(ask("alice", "web")).expect("granted"));
    let r = pending(e.request(ask("frank", "ops-box")).expect("pending"));
    let mine = e.list(&ListFilter {
        user: Some("alice".into()),
        include_closed: false,
    });
    assert_eq!(mine.grants.len(), 1);
    assert!(mine.requests.is_empty(), "alice's request became a grant");
    let all = e.list(&ListFilter::default());
    assert_eq!((all.requests.len(), all.grants.len()), (1, 1));
    let shown = e.show(g.id).expect("shown");
    assert!(shown.request.is_some() && shown.grant.is_some());
    assert!(e.show(99).is_none());

    e.release(g.id, "alice").expect("released");
    clock.advance(hours(2));
    assert_eq!(e.prune(hours(1)), [g.id]);
    assert!(e.show(g.id).is_none());
    assert!(e.request_by_id(r.id).is_some(), "pending requests are kept");
    assert_eq!(e.next_id(), 3, "ids are not reused");
}

#[test]
fn refusal_kinds() {
    assert_eq!(Refusal::NoSuchGrant { id: 1 }.kind(), RefusalKind::NotFound);
    assert_eq!(
        Refusal::SelfApproval { id: 1 }.kind(),
        RefusalKind::Forbidden
    );
    assert_eq!(Refusal::DurationZero.kind(), RefusalKind::Invalid);
    assert_eq!(
        Refusal::RequestNotPending {
            id: 1,
            state: RequestState::Denied
        }
        .kind(),
        RefusalKind::Conflict
    );
}

/// The live indexes must give what a scan of every record gives, through
/// grants, extensions, releases, revocations, expiries, requests, approvals,
/// timeouts and prunes.
#[test]
fn the_live_indexes_agree_with_a_full_scan() {
    fn check(e: &Engine) {
        let scan_active: Vec<u64> = e
            .grants()
            .filter(|g| g.state == GrantState::Active)
            .map(|g| g.id)
            .collect();
        let scan_pending: Vec<u64> = e
            .requests()
            .filter(|r| r.state == RequestState::Pending)
            .map(|r| r.id)
            .collect();
        assert_eq!(
            e.active_grants().map(|g| g.id).collect::<Vec<_>>(),
            scan_active
        );
        assert_eq!(
            e.pending_requests().map(|r| r.id).collect::<Vec<_>>(),
            scan_pending
        );
        assert_eq!(e.active_count(), scan_active.len());
        assert_eq!(e.pending_count(), scan_pending.len());
        let scan_next = e
            .grants()
            .filter(|g| g.state == GrantState::Active)
            .map(|g| g.expires_boot_ns)
            .chain(
                e.requests()
                    .filter(|r| r.state == RequestState::Pending)
                    .map(|r| r.pending_until_boot_ns),
            )
            .min();
        assert_eq!(e.next_deadline_boot_ns(), scan_next);
    }
    let (mut e, clock) = engine_at(MONDAY_10_BERLIN);
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut made = 0u32;
    for step in 0..2_000u32 {
        let source: IpAddr = format!("10.1.0.{}", next() % 20).parse().expect("address");
        let roll = next() % 10;
        let ids: Vec<u64> = e.grants().map(|g| g.id).collect();
        let pick = |n: u64| ids.get((n as usize) % ids.len().max(1)).copied();
        match roll {
            0..=2 => {
                let mut req = for_duration(ask("alice", "web"), mins(1 + next() % 30));
                req.source = source;
                made += u32::from(e.request(req).is_ok());
            }
            3 => {
                let mut req = with_reason(ask("root", "web"), "maintenance");
                req.user = "alice".into();
                req.source = source;
                made += u32::from(e.grant("root", req).is_ok());
            }
            4 => {
                let mut req = ask("frank", "ops-box");
                req.source = source;
                let _ = e.request(req);
            }
            5 => {
                let first = e.pending_requests().next().map(|r| r.id);
                if let Some(r) = first {
                    let _ = e.approve(r, "gina", None);
                }
            }
            6 => {
                if let Some(id) = pick(next()) {
                    let _ = e.extend(id, "alice", mins(5), None);
                }
            }
            7 => {
                if let Some(id) = pick(next()) {
                    let _ = e.revoke(id, "root", Some("test".into()));
                }
            }
            8 => {
                if let Some(id) = pick(next()) {
                    let _ = e.release(id, "alice");
                }
            }
            _ => {
                clock.advance(Duration::from_secs(next() % 600));
                let _ = e.expire_due();
                let _ = e.timeout_pending();
                if step % 7 == 0 {
                    // What a scan of every record (the rule as first written) prunes.
                    let cutoff = e.now().wall - chrono::Duration::minutes(30);
                    let old = |c: &Option<Closed>| c.as_ref().is_some_and(|c| c.wall < cutoff);
                    let mut expected: Vec<u64> = e
                        .requests()
                        .filter(|r| {
                            !(r.state == RequestState::Pending
                                || !old(&r.closed)
                                || (r.state == RequestState::Approved
                                    && e.grant_by_id(r.id).is_some_and(|g| !old(&g.ended))))
                        })
                        .map(|r| r.id)
                        .chain(
                            e.grants()
                                .filter(|g| g.state != GrantState::Active && old(&g.ended))
                                .map(|g| g.id),
                        )
                        .collect();
                    expected.sort_unstable();
                    expected.dedup();
                    assert_eq!(e.prune(mins(30)), expected, "step {step}");
                }
            }
        }
        check(&e);
    }
    assert!(made > 200, "the walk made {made} grants");
}

#[test]
fn discarded_grants_leave_no_trace_but_keep_their_ids_used() {
    let (mut e, _clock) = engine_at(MONDAY_10_BERLIN);
    let g = e
        .grant("root", with_reason(ask("alice", "web"), "batch"))
        .expect("granted")
        .value;
    e.discard_new([g.id]);
    assert!(e.show(g.id).is_none());
    assert_eq!(e.active_count(), 0);
    let again = e
        .grant("root", with_reason(ask("alice", "web"), "batch"))
        .expect("the same access can be granted again")
        .value;
    assert!(again.id > g.id, "ids are not reused");
}
