//! Property test of the grant lifecycle: random sequences of operations and
//! clock movements against the example policy. A refused operation changes
//! nothing; after every step the records keep the lifecycle's promises.
//!
//! More cases: `PROPTEST_CASES=5000 cargo test -p jit-agent --test lifecycle_props`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;

use jit_agent::lifecycle::{
    AccessRequest, Clock, Engine, GrantRule, GrantState, ManualClock, Origin, RequestState,
};
use jit_agent::policy::Policy;

const USERS: [&str; 6] = ["alice", "bob", "carol", "dave", "root", "mallory"];
const TARGETS: [&str; 5] = ["db-prod", "web-prod-ssh", "prod-ping", "bmc", "nowhere"];
const SOURCES: [&str; 3] = ["10.1.0.5", "2001:db8:1::5", "192.0.2.1"];

#[derive(Debug, Clone)]
enum Op {
    Request {
        user: usize,
        target: usize,
        source: usize,
        minutes: Option<u64>,
        reason: bool,
    },
    Grant {
        admin: usize,
        user: usize,
        target: usize,
        minutes: u64,
    },
    Approve {
        id: u64,
        user: usize,
    },
    Deny {
        id: u64,
        user: usize,
    },
    Cancel {
        id: u64,
        user: usize,
    },
    Revoke {
        id: u64,
        user: usize,
    },
    Release {
        id: u64,
        user: usize,
    },
    Extend {
        id: u64,
        user: usize,
        minutes: u64,
    },
    Advance {
        minutes: u64,
    },
    JumpWall {
        hours: i64,
    },
    Expire,
    Timeout,
}

fn op() -> impl Strategy<Value = Op> {
    let user = 0..USERS.len();
    let id = 1u64..12;
    prop_oneof![
        4 => (user.clone(), 0..TARGETS.len(), 0..SOURCES.len(), proptest::option::of(1u64..300), any::<bool>())
            .prop_map(|(user, target, source, minutes, reason)| Op::Request { user, target, source, minutes, reason }),
        1 => (user.clone(), user.clone(), 0..TARGETS.len(), 1u64..300)
            .prop_map(|(admin, user, target, minutes)| Op::Grant { admin, user, target, minutes }),
        4 => (id.clone(), user.clone()).prop_map(|(id, user)| Op::Approve { id, user }),
        1 => (id.clone(), user.clone()).prop_map(|(id, user)| Op::Deny { id, user }),
        1 => (id.clone(), user.clone()).prop_map(|(id, user)| Op::Cancel { id, user }),
        1 => (id.clone(), user.clone()).prop_map(|(id, user)| Op::Revoke { id, user }),
        1 => (id.clone(), user.clone()).prop_map(|(id, user)| Op::Release { id, user }),
        2 => (id, user, 1u64..120).prop_map(|(id, user, minutes)| Op::Extend { id, user, minutes }),
        3 => (1u64..240).prop_map(|minutes| Op::Advance { minutes }),
        1 => (-30i64..30).prop_map(|hours| Op::JumpWall { hours }),
        2 => Just(Op::Expire),
        1 => Just(Op::Timeout),
    ]
}

fn ask(
    user: usize,
    target: usize,
    source: usize,
    minutes: Option<u64>,
    reason: bool,
) -> AccessRequest {
    AccessRequest {
        user: USERS[user].into(),
        target: TARGETS[target].into(),
        source: SOURCES[source].parse::<IpAddr>().expect("address parses"),
        duration: minutes.map(|m| Duration::from_secs(m * 60)),
        role: None,
        reason: reason.then(|| "INC-1".to_owned()),
    }
}

/// Applies an op; returns whether it was accepted, and the event ids.
fn apply(e: &mut Engine, clock: &ManualClock, op: &Op) -> (bool, Vec<u64>) {
    fn ids<T>(
        r: Result<jit_agent::lifecycle::Outcome<T>, jit_agent::lifecycle::Refusal>,
    ) -> (bool, Vec<u64>) {
        match r {
            Ok(o) => {
                assert!(!o.events.is_empty(), "an accepted operation is audited");
                (true, o.events.iter().map(|e| e.id).collect())
            }
            Err(refusal) => {
                assert!(!refusal.to_string().is_empty());
                (false, Vec::new())
            }
        }
    }
    match op {
        Op::Request {
            user,
            target,
            source,
            minutes,
            reason,
        } => ids(e.request(ask(*user, *target, *source, *minutes, *reason))),
        Op::Grant {
            admin,
            user,
            target,
            minutes,
        } => ids(e.grant(USERS[*admin], ask(*user, *target, 0, Some(*minutes), true))),
        Op::Approve { id, user } => ids(e.approve(*id, USERS[*user], None)),
        Op::Deny { id, user } => ids(e.deny(*id, USERS[*user], None)),
        Op::Cancel { id, user } => ids(e.cancel(*id, USERS[*user], None)),
        Op::Revoke { id, user } => ids(e.revoke(*id, USERS[*user], None)),
        Op::Release { id, user } => ids(e.release(*id, USERS[*user])),
        Op::Extend { id, user, minutes } => ids(e.extend(
            *id,
            USERS[*user],
            Duration::from_secs(minutes * 60),
            Some("more".into()),
        )),
        Op::Advance { minutes } => {
            clock.advance(Duration::from_secs(minutes * 60));
            (true, Vec::new())
        }
        Op::JumpWall { hours } => {
            clock.jump_wall(chrono::Duration::hours(*hours));
            (true, Vec::new())
        }
        Op::Expire => {
            let out = e.expire_due();
            let now = clock.boot_ns();
            assert!(
                e.active_grants().all(|g| g.expires_boot_ns > now),
                "expire_due left a due grant"
            );
            (true, out.events.iter().map(|e| e.id).collect())
        }
        Op::Timeout => {
            let out = e.timeout_pending();
            (true, out.events.iter().map(|e| e.id).collect())
        }
    }
}

fn check(e: &Engine, policy: &Policy) {
    let mut keys = BTreeSet::new();
    for g in e.active_grants() {
        assert!(
            keys.insert((&g.user, &g.target, g.source)),
            "two active grants for one access"
        );
        let user = policy.user(&g.user).expect("holder exists");
        let role = policy.role(&g.role).expect("role exists");
        let target = policy.target(&g.target).expect("target exists");
        assert!(user.holds(&role.name) && role.reaches(&target.name));
        assert!(user.may_connect_from(g.source));
        assert!(
            g.length <= role.max_duration,
            "grant #{} lasts {:?}",
            g.id,
            g.length
        );
        assert!(!g.length.is_zero());
        assert_eq!(
            g.expires_boot_ns - g.activated_boot_ns,
            u64::try_from(g.length.as_nanos()).expect("fits"),
            "the length is what the boot clock enforces"
        );
        let rules: Vec<GrantRule> = target
            .rules
            .iter()
            .map(|r| GrantRule::new(g.source, r))
            .collect();
        assert_eq!(g.rules, rules);
        assert!(
            role.windows.contains(g.activated_wall),
            "grant #{} activated outside its window",
            g.id
        );
        match &g.origin {
            Origin::Approved { approvers } => {
                let distinct: BTreeSet<&String> = approvers.iter().collect();
                assert_eq!(distinct.len(), approvers.len(), "approvers are distinct");
                let needed = role.approval.as_ref().map_or(0, |a| a.approvals_needed) as usize;
                assert!(approvers.len() >= needed);
                for a in approvers {
                    assert_ne!(a, &g.user, "nobody approves their own request");
                    assert!(policy.can_approve(policy.user(a).expect("approver exists"), role));
                }
            }
            Origin::NoApprovalNeeded => assert!(role.approval.is_none()),
            Origin::Admin { admin } => assert!(policy.user(admin).is_some_and(|u| u.admin)),
        }
    }
    let mut pending = BTreeSet::new();
    for r in e.pending_requests() {
        assert!(
            pending.insert((&r.user, &r.target, r.source)),
            "two pending requests for one access"
        );
        assert!(r.approvals_missing() > 0 || r.approvals_needed == 0);
        assert!(r.approvals.iter().all(|a| a.approver != r.user));
    }
    for r in e.requests() {
        match r.state {
            RequestState::Pending => assert!(r.closed.is_none()),
            RequestState::Approved => assert!(
                e.grant_by_id(r.id).is_some(),
                "an approved request has its grant"
            ),
            _ => assert!(r.closed.is_some()),
        }
    }
    for g in e.grants() {
        assert_eq!(g.state == GrantState::Active, g.ended.is_none());
    }
}

fn monday_morning() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-03-24T08:00:00Z")
        .expect("parses")
        .with_timezone(&Utc)
}

proptest! {
    #[test]
    fn random_operations_keep_the_lifecycle_sound(ops in proptest::collection::vec(op(), 1..60)) {
        let text = include_str!("../../policies/example.toml");
        let policy = Arc::new(Policy::parse("example.toml", text).expect("example is valid"));
        let clock = ManualClock::new(monday_morning());
        let mut e = Engine::new(Arc::clone(&policy), Arc::new(clock.clone()));
        for op in &ops {
            let before = e.records();
            let (accepted, ids) = apply(&mut e, &clock, op);
            if !accepted {
                prop_assert_eq!(&before, &e.records(), "a refused {:?} changed records", op);
            }
            for id in ids {
                prop_assert!(e.show(id).is_some(), "event for unknown id #{}", id);
            }
            check(&e, &policy);
        }
        // Whatever happened, the records rebuild the same engine.
        let restored = Engine::restore(Arc::clone(&policy), Arc::new(clock.clone()), e.records()).expect("restores");
        prop_assert_eq!(restored.records(), e.records());
    }
}
