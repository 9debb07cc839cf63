//! The grant lifecycle told as a story against `policies/example.toml`,
//! through the public API only: request, approvals, activation, extension,
//! expiry, a policy reload, and the audit trail of it all.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use jit_agent::lifecycle::{
    AccessRequest, AuditAction, AuditEvent, Engine, GrantState, ManualClock, Refusal, Requested,
};
use jit_agent::policy::{Policy, Protocol};

fn example() -> Arc<Policy> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/example.toml");
    Arc::new(Policy::load(path).unwrap_or_else(|e| panic!("{e}")))
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("parses")
        .with_timezone(&Utc)
}

fn ask(user: &str, target: &str, minutes: Option<u64>, reason: Option<&str>) -> AccessRequest {
    AccessRequest {
        user: user.into(),
        target: target.into(),
        source: "10.1.0.5".parse::<IpAddr>().expect("address parses"),
        duration: minutes.map(|m| Duration::from_secs(m * 60)),
        role: None,
        reason: reason.map(str::to_owned),
    }
}

#[test]
fn a_dba_gets_approved_access_that_expires() {
    // Tuesday 2025-03-25, 10:00 in Berlin.
    let clock = ManualClock::new(at("2025-03-25T09:00:00Z"));
    let mut engine = Engine::new(example(), Arc::new(clock.clone()));
    let mut audit: Vec<AuditEvent> = Vec::new();

    let refused = engine
        .request(ask("alice", "db-prod", Some(300), Some("CHG-42")))
        .unwrap_err();
    assert_eq!(
        refused.to_string(),
        "requested 5h exceeds role dba's max_duration 4h"
    );

    let out = engine
        .request(ask("alice", "db-prod", Some(120), Some("CHG-42")))
        .expect("request accepted");
    audit.extend(out.events.clone());
    let Requested::Pending(request) = &out.value else {
        panic!("dba needs approval")
    };
    assert!(
        out.value.to_string().starts_with(
            "target db-prod needs approval by role dba-leads; your request is pending as #1"
        ),
        "{}",
        out.value
    );

    assert!(matches!(
        engine.approve(request.id, "alice", None),
        Err(Refusal::SelfApproval { .. })
    ));
    assert!(matches!(
        engine.approve(request.id, "dave", None),
        Err(Refusal::NotApprover { .. })
    ));
    clock.advance(Duration::from_secs(5 * 60));
    let out = engine
        .approve(request.id, "bob", Some("looks fine".into()))
        .expect("approved");
    audit.extend(out.events.clone());
    let grant = engine.grant_by_id(request.id).expect("active").clone();
    assert_eq!(grant.state, GrantState::Active);
    assert_eq!(grant.activated_wall, at("2025-03-25T09:05:00Z"));
    assert_eq!(grant.expires_wall, at("2025-03-25T11:05:00Z"));
    let rule = grant.rules[0];
    assert_eq!(grant.rules.len(), 1);
    assert_eq!(rule.source.to_string(), "10.1.0.5");
    assert_eq!(rule.dst.to_string(), "10.20.5.0/24");
    assert_eq!(rule.protocol, Protocol::Tcp);
    assert_eq!(rule.ports.map(|p| (p.start, p.end)), Some((5432, 5432)));

    clock.advance(Duration::from_secs(60 * 60));
    let out = engine
        .extend(
            grant.id,
            "alice",
            Duration::from_secs(3 * 3600),
            Some("CHG-42 overran".into()),
        )
        .unwrap_err();
    assert!(
        out.to_string().contains("at most 2h more is possible"),
        "{out}"
    );
    let out = engine
        .extend(
            grant.id,
            "alice",
            Duration::from_secs(3600),
            Some("CHG-42 overran".into()),
        )
        .expect("extended");
    audit.extend(out.events.clone());
    assert_eq!(out.value.expires_wall, at("2025-03-25T12:05:00Z"));

    clock.advance(Duration::from_secs(2 * 3600));
    let out = engine.expire_due();
    audit.extend(out.events.clone());
    assert_eq!(out.value.len(), 1);

    let trail: Vec<(&str, String)> = audit
        .iter()
        .map(|e| (e.action.name(), e.actor.to_string()))
        .collect();
    assert_eq!(
        trail,
        [
            ("requested", "alice".to_owned()),
            ("approved", "bob".to_owned()),
            ("activated", "bob".to_owned()),
            ("extended", "alice".to_owned()),
            ("expired", "jitgate".to_owned()),
        ]
    );
    assert!(audit
        .iter()
        .all(|e| e.id == 1 && e.user == "alice" && e.target == "db-prod"));
    assert_eq!(audit[0].reason.as_deref(), Some("CHG-42"));
    assert_eq!(audit[3].reason.as_deref(), Some("CHG-42 overran"));
    // One JSON object per line, ready for the audit log.
    for e in &audit {
        let line = serde_json::to_string(e).expect("serializes");
        assert!(!line.contains('\n'));
        let back: AuditEvent = serde_json::from_str(&line).expect("reads back");
        assert_eq!(&back, e);
    }
    assert!(matches!(audit[2].action, AuditAction::Activated { .. }));
}

#[test]
fn hardware_access_needs_two_approvals_inside_office_hours() {
    // Friday 2025-03-28, 17:00 in Berlin (CET).
    let clock = ManualClock::new(at("2025-03-28T16:00:00Z"));
    let mut engine = Engine::new(example(), Arc::new(clock.clone()));
    let out = engine
        .request(ask("bob", "bmc", Some(90), None))
        .expect("accepted");
    let id = match out.value {
        Requested::Pending(r) => r.id,
        Requested::Active(_) => panic!("hardware needs approval"),
    };
    engine.approve(id, "carol", None).expect("first approval");
    clock.advance(Duration::from_secs(30 * 60));
    engine
        .approve(id, "dave", None)
        .expect("second approval activates");
    let g = engine.grant_by_id(id).expect("active");
    // Activated at 17:30, cut at 18:00 instead of running to 19:00.
    assert_eq!(g.length, Duration::from_secs(30 * 60));
    assert!(g.cut_by_window);

    // On Saturday the role is closed until Monday 08:00, which by then is CEST.
    clock.advance(Duration::from_secs(20 * 3600));
    engine.expire_due();
    let err = engine.request(ask("bob", "bmc", None, None)).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("the next one opens at 2025-03-31 08:00 CEST (Europe/Berlin)"),
        "{err}"
    );
}

#[test]
fn reloading_a_stricter_policy_revokes_with_an_audit_record_each() {
    let clock = ManualClock::new(at("2025-03-25T09:00:00Z"));
    let policy = example();
    let mut engine = Engine::new(Arc::clone(&policy), Arc::new(clock.clone()));
    engine
        .request(ask("alice", "web-prod-ssh", None, None))
        .expect("oncall needs no approval");
    engine
        .request(ask("dave", "web-prod-ssh", None, None))
        .expect("oncall needs no approval");
    engine
        .request(ask("carol", "prod-ping", None, None))
        .expect("oncall needs no approval");

    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/example.toml"
    ))
    .expect("example readable");
    let stricter = text.replace("ports = [22]", "ports = [2222]");
    let stricter =
        Arc::new(Policy::parse("stricter.toml", &stricter).unwrap_or_else(|e| panic!("{e}")));
    let out = engine.reapply_policy(stricter);
    let revoked: Vec<&str> = out.value.revoked.iter().map(|g| g.user.as_str()).collect();
    assert_eq!(revoked, ["alice", "dave"]);
    assert_eq!(out.events.len(), 2);
    assert!(out.events.iter().all(|e| e.action.name() == "revoked"
        && e.reason.as_deref()
            == Some("policy reload: target web-prod-ssh's addresses, protocol or ports changed")));
    assert_eq!(
        engine.active_grants().count(),
        1,
        "carol's ping is untouched"
    );
}
